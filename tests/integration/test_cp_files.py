"""The directory source on real files: adds, changes and deletes reach a new snapshot well
within a second; a burst of writes makes few snapshots; broken files change nothing; an idle
watch costs no CPU; symlink loops are refused with an error."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ztunnel_py.controlplane.snapshot import MeshSnapshot
from ztunnel_py.controlplane.sources.files import DirectorySource
from ztunnel_py.controlplane.store import ConfigStore

DEADLINE = 1.0


def pod(name: str, ip: str) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo}}\n"
        f"spec: {{nodeName: node-1}}\nstatus: {{podIP: {ip}}}\n"
    )


def write(path: Path, text: str) -> None:
    """Atomically, as the documentation asks (write elsewhere, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Watched:
    directory: Path
    store: ConfigStore
    snapshots: list[MeshSnapshot] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_snapshot(self, snapshot: MeshSnapshot) -> None:
        with self.cond:
            self.snapshots.append(snapshot)
            self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[MeshSnapshot], bool], timeout: float = DEADLINE
    ) -> float:
        """Seconds until the current snapshot satisfies `predicate`; fails after `timeout`."""
        start = time.monotonic()
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.store.current()), timeout)
        assert ok, f"not within {timeout}s: {self.store.current()}"
        return time.monotonic() - start


@contextlib.contextmanager
def watching(directory: Path) -> Iterator[Watched]:
    """A DirectorySource watching `directory` in its thread."""
    store = ConfigStore(report=False)
    w = Watched(directory, store)
    store.subscribe(w.on_snapshot)
    source = DirectorySource(directory, store)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        yield w
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    with watching(tmp_path) as w:
        yield w


def names(snapshot: MeshSnapshot) -> set[str]:
    return {w.name for w in snapshot.workloads.values()}


def test_add_change_delete(watched: Watched) -> None:
    write(watched.directory / "a.yaml", pod("a", "10.0.0.1"))
    assert watched.wait_for(lambda s: names(s) == {"a"}) < DEADLINE
    write(watched.directory / "sub" / "dir" / "b.yml", pod("b", "10.0.0.2"))
    watched.wait_for(lambda s: names(s) == {"a", "b"})
    write(watched.directory / "a.yaml", pod("a", "10.0.0.9"))
    watched.wait_for(
        lambda s: str(s.workloads["Kubernetes//Pod/demo/a"].addresses[0]) == "10.0.0.9"
    )
    (watched.directory / "a.yaml").unlink()
    watched.wait_for(lambda s: names(s) == {"b"})
    assert watched.store.identities_on_node("node-1")


def test_in_place_edit_is_seen(watched: Watched) -> None:
    path = watched.directory / "a.yaml"
    path.write_text(pod("a", "10.0.0.1"))
    watched.wait_for(lambda s: names(s) == {"a"})
    with open(path, "a") as f:
        f.write("---\n" + pod("b", "10.0.0.2"))
    watched.wait_for(lambda s: names(s) == {"a", "b"})


def test_ignored_files(watched: Watched) -> None:
    write(watched.directory / "notes.txt", pod("txt", "10.0.0.3"))
    write(watched.directory / ".hidden" / "x.yaml", pod("hidden", "10.0.0.4"))
    write(watched.directory / "real.yaml", pod("real", "10.0.0.5"))
    watched.wait_for(lambda s: names(s) == {"real"})
    time.sleep(0.3)
    assert names(watched.store.current()) == {"real"}


def test_broken_file_keeps_the_last_good_configuration(watched: Watched) -> None:
    write(watched.directory / "a.yaml", pod("a", "10.0.0.1"))
    watched.wait_for(lambda s: names(s) == {"a"})
    version = watched.store.current().version
    write(watched.directory / "a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a\n")
    deadline = time.monotonic() + DEADLINE
    while not watched.store.diagnostics() and time.monotonic() < deadline:
        time.sleep(0.02)
    (error,) = watched.store.diagnostics()
    assert error.origin.source == str(watched.directory / "a.yaml")
    assert error.reason.startswith("invalid YAML:")
    assert watched.store.current().version == version
    assert names(watched.store.current()) == {"a"}
    write(watched.directory / "a.yaml", pod("a", "10.0.0.2"))
    watched.wait_for(lambda s: str(next(iter(s.workloads.values())).addresses[0]) == "10.0.0.2")
    assert watched.store.diagnostics() == ()


def test_burst_of_100_writes_makes_few_snapshots(watched: Watched) -> None:
    write(watched.directory / "seed.yaml", pod("seed", "10.0.1.1"))
    watched.wait_for(lambda s: names(s) == {"seed"})
    before = len(watched.snapshots)
    start = time.monotonic()
    for i in range(100):
        write(watched.directory / f"pod-{i}.yaml", pod(f"p{i}", f"10.1.{i // 250}.{i % 250 + 1}"))
    written = time.monotonic() - start
    watched.wait_for(lambda s: len(s.workloads) == 101, timeout=DEADLINE + written)
    time.sleep(0.3)
    pushes = len(watched.snapshots) - before
    assert 1 <= pushes <= 5, f"{pushes} snapshots for 100 writes in {written:.2f}s"


def test_missing_directory_keeps_the_configuration(tmp_path: Path) -> None:
    directory = tmp_path / "config"
    write(directory / "a.yaml", pod("a", "10.0.0.1"))
    store = ConfigStore(report=False)
    source = DirectorySource(directory, store)
    source.sync()
    (directory / "a.yaml").rename(tmp_path / "a.yaml")
    directory.rmdir()
    assert source.sync() is None
    assert names(store.current()) == {"a"}


def cpu_seconds(during: float) -> float:
    """CPU time this process spends in `during` seconds while the test thread sleeps."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(during)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def test_an_idle_watch_of_5000_files_costs_no_cpu_and_still_sees_changes(tmp_path: Path) -> None:
    # Polling stat'ed every file every 50 ms: 25-50% of a core at this size.
    for i in range(5000):
        (tmp_path / f"f{i:04}.yaml").write_text("")
    with watching(tmp_path) as watched:
        time.sleep(0.5)  # the first scans are done
        assert cpu_seconds(2.0) < 0.05
        write(tmp_path / "f0042.yaml", pod("a", "10.0.0.1"))
        watched.wait_for(lambda s: names(s) == {"a"})


def test_a_symlink_loop_is_refused_with_a_clear_error_and_costs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "a" / "a.yaml", pod("a", "10.0.0.1"))
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "self").symlink_to(".")
    with watching(tmp_path) as watched:
        watched.wait_for(lambda s: names(s) == {"a"})
        time.sleep(0.5)
        assert cpu_seconds(1.0) < 0.05
        problems = {d.origin.source: d.reason for d in watched.store.diagnostics()}
        assert problems == {
            str(tmp_path / "a" / "up"): f"symbolic link loop: {tmp_path / 'a' / 'up'} leads "
            f"back to {tmp_path}, a directory it is in; not followed (remove the link or "
            "point it elsewhere)",
            str(tmp_path / "self"): f"symbolic link loop: {tmp_path / 'self'} leads back to "
            f"{tmp_path}, a directory it is in; not followed (remove the link or point it "
            "elsewhere)",
        }
        # Said once each, not at every scan.
        assert sum("symbolic link loop" in r.message for r in caplog.records) == 2
        (tmp_path / "self").unlink()
        (tmp_path / "a" / "up").unlink()
        deadline = time.monotonic() + DEADLINE
        while watched.store.diagnostics() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watched.store.diagnostics() == ()


def test_a_configmap_style_symlink_swap_is_seen(tmp_path: Path) -> None:
    # A ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>, and an
    # update swaps ..data atomically.
    for version, ip in (("..v1", "10.0.0.1"), ("..v2", "10.0.0.2")):
        write(tmp_path / version / "config.yaml", pod("a", ip))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    with watching(tmp_path) as watched:
        watched.wait_for(lambda s: names(s) == {"a"})
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        watched.wait_for(
            lambda s: str(s.workloads["Kubernetes//Pod/demo/a"].addresses[0]) == "10.0.0.2"
        )
