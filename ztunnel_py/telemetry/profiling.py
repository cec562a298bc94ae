"""Profiling on demand: a CPU profile of N seconds and a memory snapshot, one at a time.

What ztunnel's `/debug/pprof/profile` and `/debug/pprof/heap` answer for Rust, the Python way,
for the agent and waypoint admin ports (15000) and the control plane's monitoring port (15014).

**CPU** (`cpu_profile`): a statistical sampler thread wakes `hz` times a second (100, pprof's
rate), reads every other thread's Python stack (`sys._current_frames`) and that thread's CPU
clock (`pthread_getcpuclockid`), and charges the CPU time the thread used since the previous
sample to the stack it is in now. A thread that used no CPU (trio waiting in epoll, a worker
parked on a queue) adds nothing, so the profile shows where CPU goes, not where threads wait.
Chosen over cProfile because cProfile is a tracing profiler: it calls a hook on every Python
call and return of the profiled thread (the data plane runs 1.5-2x slower under it), it can only
be installed by the thread itself (Python 3.11 has no `setprofile_all_threads`), and its cost
grows with the request rate; the sampler's cost is fixed by `hz` (a stack walk per thread per
tick, well under 1% of a core at 100 Hz) whatever the load. The result is in the folded-stack
format (`root;caller;callee microseconds` per line) that flamegraph.pl, speedscope and
inferno read (py-spy's `--format raw`), or a text summary of the hottest functions. One bias
to read it with: the sampler needs the GIL to read a stack, and gets it when the thread lets go
of it, so the event loop's thread is seen more often at the calls that release it (epoll, socket
and TLS calls); the CPU of a short burst of Python before such a call is charged to that call.
An out-of-process sampler (py-spy) has no such bias but needs ptrace rights and a binary we do
not ship; this one is always there.

**Memory** (`heap_snapshot`): tracemalloc only sees allocations made while it traces, and
tracing costs memory and allocation speed, so unless the process already traces
(`PYTHONTRACEMALLOC`), it is started for `seconds`, snapshotted and stopped again: the report
shows the allocations made in that window that are still alive, grouped by source line, with
the process's traced total and peak.

Both are bounded (`MAX_SECONDS`) and share one lock (`ProfilerBusy` when one runs: the admin
answers 409), since tracemalloc is process-wide and two samplers would only skew each other.
Callers pass a `threading.Event` to end a profile early (the admin sets it when the request is
cancelled). Blocking: call from a thread (trio: `to_thread.run_sync`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType

MAX_SECONDS = 60.0
DEFAULT_SECONDS = 10.0
DEFAULT_HZ = 100
MAX_HZ = 1000
DEFAULT_TOP = 25
MAX_TOP = 500
_MAX_DEPTH = 128  # frames kept per stack, innermost first dropped last
_TRACE_FRAMES = 1  # tracemalloc frames per allocation: the allocating line is what we group by

_lock = threading.Lock()


class ProfilerBusy(Exception):
    """Another profile or snapshot of this process is running."""


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    if not _lock.acquire(blocking=False):
        raise ProfilerBusy("a profile is already running")
    try:
        yield
    finally:
        _lock.release()


class BadProfileRequest(ValueError):
    """A query parameter out of range or not a number."""


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    seconds: float = DEFAULT_SECONDS
    hz: int = DEFAULT_HZ
    top: int = DEFAULT_TOP
    format: str = "folded"  # CPU: folded | text


def parse_request(query: Mapping[str, str]) -> ProfileRequest:
    """`?seconds=&hz=&top=&format=` (each optional) checked against the bounds."""
    unknown = sorted(set(query) - {"seconds", "hz", "top", "format"})
    if unknown:
        raise BadProfileRequest(f"unknown parameter {unknown[0]!r}: use seconds, hz, top, format")
    seconds = _number(query, "seconds", float, DEFAULT_SECONDS, 0.1, MAX_SECONDS)
    hz = int(_number(query, "hz", int, DEFAULT_HZ, 1, MAX_HZ))
    top = int(_number(query, "top", int, DEFAULT_TOP, 1, MAX_TOP))
    fmt = query.get("format", "folded")
    if fmt not in ("folded", "text"):
        raise BadProfileRequest(f"format must be folded or text, not {fmt!r}")
    return ProfileRequest(seconds, hz, top, fmt)


def _number(
    query: Mapping[str, str],
    name: str,
    kind: Callable[[str], float],
    default: float,
    low: float,
    high: float,
) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadProfileRequest(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise BadProfileRequest(f"{name} must be between {low} and {high}, not {raw}")
    return value


@dataclass(slots=True)
class CpuProfile:
    seconds: float  # wall time sampled
    samples: int  # ticks taken
    # folded stack (outermost first, `;`-joined, thread name first) -> CPU nanoseconds
    stacks: Counter[str] = field(default_factory=Counter)

    @property
    def cpu_ns(self) -> int:
        return sum(self.stacks.values())

    def folded(self) -> str:
        """One `stack microseconds` line per stack, heaviest first."""
        return "".join(f"{stack} {max(1, ns // 1000)}\n" for stack, ns in self.stacks.most_common())

    def text(self, top: int) -> str:
        """The `top` functions by self and by total (inclusive) CPU time, pprof's `-top` view."""
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for stack, ns in self.stacks.items():
            frames = stack.split(";")[1:]  # the thread name is not a function
            if frames:
                own[frames[-1]] += ns
            for frame in set(frames):
                total[frame] += ns
        cpu = self.cpu_ns or 1
        lines = [
            f"CPU profile: {self.seconds:.1f} s wall, {self.samples} samples, "
            f"{self.cpu_ns / 1e6:.1f} ms CPU ({self.cpu_ns / 1e7 / self.seconds:.1f}% of a core)",
            "",
            f"{'self ms':>9} {'self%':>6} {'total ms':>9} {'total%':>6}  function",
        ]
        for frame, ns in own.most_common(top):
            lines.append(
                f"{ns / 1e6:9.1f} {100 * ns / cpu:5.1f}% {total[frame] / 1e6:9.1f} "
                f"{100 * total[frame] / cpu:5.1f}%  {frame}"
            )
        return "\n".join(lines) + "\n"


def cpu_profile(request: ProfileRequest, stop: threading.Event | None = None) -> CpuProfile:
    """Sample every other thread for `request.seconds` (or until `stop` is set)."""
    with _exclusive():
        return _sample(request, stop or threading.Event())


def _sample(request: ProfileRequest, stop: threading.Event) -> CpuProfile:
    me = threading.get_ident()
    interval = 1.0 / request.hz
    started = time.monotonic()
    deadline = started + request.seconds
    profile = CpuProfile(seconds=0.0, samples=0)
    last_cpu: dict[int, int] = {}
    names: dict[int, str] = {}
    while True:
        # One stretch under the GIL: every thread in `_current_frames` is alive until we let go
        # of it, so its CPU clock id is valid while we read it.
        frames = sys._current_frames()
        for ident, frame in frames.items():
            if ident == me:
                continue
            try:
                cpu = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
            except OSError:
                continue
            previous = last_cpu.get(ident)
            last_cpu[ident] = cpu
            if previous is None or cpu <= previous:
                continue
            name = names.get(ident)
            if name is None:
                name = names[ident] = _thread_name(ident)
            profile.stacks[f"{name};{_folded(frame)}"] += cpu - previous
        profile.samples += 1
        for gone in last_cpu.keys() - frames.keys():
            del last_cpu[gone]
        now = time.monotonic()
        if now >= deadline or stop.wait(min(interval, deadline - now)):
            break
    profile.seconds = time.monotonic() - started
    return profile


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return f"thread:{thread.name}"
    return f"thread:{ident}"


def _folded(frame: FrameType | None) -> str:
    names: list[str] = []
    while frame is not None and len(names) < _MAX_DEPTH:
        code = frame.f_code
        names.append(f"{code.co_qualname} ({_short(code.co_filename)}:{code.co_firstlineno})")
        frame = frame.f_back
    names.reverse()
    # Readers split the count off at the last space, so the spaces in a frame may stay.
    return ";".join(names)


def _short(filename: str) -> str:
    """`ztunnel_py/agent/proxy/inbound.py`, `trio/_core/_run.py`: from the package root on."""
    for marker in ("/site-packages/", "/dist-packages/", "/lib/python3."):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    at = filename.rfind("/ztunnel_py/")
    return filename[at + 1 :] if at >= 0 else filename


@dataclass(frozen=True, slots=True)
class HeapSnapshot:
    seconds: float  # how long tracemalloc traced before the snapshot (0: it was already on)
    traced_bytes: int
    peak_bytes: int
    # (file:line, bytes alive, allocations alive), largest first
    top: list[tuple[str, int, int]]
    total_bytes: int  # all lines, not just the top
    total_count: int

    def text(self) -> str:
        window = (
            f"traced for {self.seconds:.1f} s" if self.seconds else "tracemalloc was already on"
        )
        lines = [
            f"heap snapshot ({window}): {self.total_bytes / 1024:.1f} KiB in "
            f"{self.total_count} live allocations made while tracing; "
            f"traced now {self.traced_bytes / 1024:.1f} KiB, peak {self.peak_bytes / 1024:.1f} KiB",
            "",
            f"{'KiB':>10} {'count':>8} {'avg B':>7}  allocated at",
        ]
        for where, size, count in self.top:
            lines.append(f"{size / 1024:10.1f} {count:8} {size // max(count, 1):7}  {where}")
        return "\n".join(lines) + "\n"


def heap_snapshot(request: ProfileRequest, stop: threading.Event | None = None) -> HeapSnapshot:
    """Trace allocations for `request.seconds` (unless already tracing), then report the top
    `request.top` source lines by bytes still alive."""
    with _exclusive():
        return _snapshot(request, stop or threading.Event())


def _snapshot(request: ProfileRequest, stop: threading.Event) -> HeapSnapshot:
    already = tracemalloc.is_tracing()
    started = time.monotonic()
    if not already:
        tracemalloc.start(_TRACE_FRAMES)
    try:
        if not already:
            stop.wait(request.seconds)
        snapshot = tracemalloc.take_snapshot()
        traced, peak = tracemalloc.get_traced_memory()
    finally:
        if not already:
            tracemalloc.stop()
    snapshot = snapshot.filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    stats = snapshot.statistics("lineno")
    top = [
        (f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}", s.size, s.count)
        for s in stats[: request.top]
    ]
    return HeapSnapshot(
        seconds=0.0 if already else time.monotonic() - started,
        traced_bytes=traced,
        peak_bytes=peak,
        top=top,
        total_bytes=sum(s.size for s in stats),
        total_count=sum(s.count for s in stats),
    )


PROFILE_PATH = "/debug/pprof/profile"
HEAP_PATH = "/debug/pprof/heap"


def respond(path: str, query: Mapping[str, str], stop: threading.Event) -> tuple[int, str]:
    """(status, text) answering `PROFILE_PATH` or `HEAP_PATH` with `query`; blocking for the
    profile's duration. 400 for a bad parameter, 409 while another profile runs."""
    try:
        request = parse_request(query)
        if path == HEAP_PATH:
            return 200, heap_snapshot(request, stop).text()
        profile = cpu_profile(request, stop)
    except BadProfileRequest as e:
        return 400, f"{e}\n"
    except ProfilerBusy as e:
        return 409, f"{e}; try again when it is done\n"
    return 200, profile.text(request.top) if request.format == "text" else profile.folded()
