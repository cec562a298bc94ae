"""The profiler core (telemetry/profiling.py) on real threads: where CPU goes, what a snapshot
holds, the bounds and the one-at-a-time rule."""

from __future__ import annotations

import threading
import time
import tracemalloc

import pytest

from ztunnel_py.telemetry import profiling
from ztunnel_py.telemetry.profiling import ProfileRequest


def spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(500))


def nap(stop: threading.Event) -> None:
    stop.wait(30)


def test_cpu_goes_to_the_busy_thread_and_not_to_the_sleeping_one() -> None:
    stop = threading.Event()
    busy = threading.Thread(target=spin, args=(stop,), name="busy")
    idle = threading.Thread(target=nap, args=(stop,), name="idle")
    busy.start()
    idle.start()
    try:
        profile = profiling.cpu_profile(ProfileRequest(seconds=0.6))
    finally:
        stop.set()
        busy.join()
        idle.join()
    assert 0.55 < profile.seconds < 1.5 and profile.samples > 10
    by_thread: dict[str, int] = {}
    for stack, ns in profile.stacks.items():
        thread = stack.split(";", 1)[0]
        by_thread[thread] = by_thread.get(thread, 0) + ns
    assert by_thread.get("thread:busy", 0) > 0.8 * profile.cpu_ns
    # waiting costs no CPU, so the idle thread is (next to) absent from a CPU profile
    assert by_thread.get("thread:idle", 0) < 0.01 * profile.cpu_ns
    folded = profile.folded()
    heaviest = folded.splitlines()[0]
    stack, micros = heaviest.rsplit(" ", 1)
    assert stack.startswith("thread:busy;") and ";spin (" in stack and "test_profiling.py:" in stack
    assert int(micros) > 100_000
    text = profile.text(top=3)
    assert text.startswith("CPU profile: 0.") and "spin.<locals>.<genexpr>" in text


def test_a_stop_event_ends_a_profile_early() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    profiling.cpu_profile(ProfileRequest(seconds=30), stop)
    assert time.monotonic() - started < 2


def test_a_heap_snapshot_shows_the_lines_that_allocated_while_it_traced() -> None:
    kept: list[bytearray] = []
    stop = threading.Event()

    def allocate() -> None:
        while not stop.is_set() and len(kept) < 2000:
            kept.append(bytearray(4096))
            time.sleep(0.0005)

    worker = threading.Thread(target=allocate)
    worker.start()
    try:
        snapshot = profiling.heap_snapshot(ProfileRequest(seconds=0.5, top=5))
    finally:
        stop.set()
        worker.join()
    where, size, count = snapshot.top[0]
    assert "tests/unit/test_profiling.py:" in where and count > 50
    assert size > 200 * 4096  # the 4 KiB buffers still alive
    assert snapshot.total_bytes >= size and snapshot.peak_bytes >= snapshot.traced_bytes > 0
    assert "KiB" in snapshot.text() and where in snapshot.text()
    assert not tracemalloc.is_tracing()  # started for the snapshot, stopped after it


def test_one_profile_at_a_time() -> None:
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    first = threading.Thread(
        target=lambda: results.append(
            profiling.respond(profiling.PROFILE_PATH, {"seconds": "5"}, stop)
        )
    )
    first.start()
    time.sleep(0.2)
    try:
        status, text = profiling.respond(profiling.HEAP_PATH, {"seconds": "1"}, threading.Event())
        assert status == 409 and "already running" in text
    finally:
        stop.set()
        first.join()
    assert results[0][0] == 200
    # once it is done, the next one runs
    again = profiling.respond(profiling.PROFILE_PATH, {"seconds": "0.1"}, threading.Event())
    assert again[0] == 200


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"seconds": "61"}, "seconds must be between 0.1 and 60.0, not 61"),
        ({"seconds": "soon"}, "seconds must be a number, not 'soon'"),
        ({"hz": "0"}, "hz must be between 1 and 1000, not 0"),
        ({"top": "2.5"}, "top must be a number, not '2.5'"),
        ({"format": "pprof"}, "format must be folded or text, not 'pprof'"),
        ({"duration": "5"}, "unknown parameter 'duration'"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(query: dict[str, str], message: str) -> None:
    status, text = profiling.respond(profiling.PROFILE_PATH, query, threading.Event())
    assert status == 400 and message in text
