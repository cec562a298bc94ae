"""The directory source on real files: adds, changes and deletes reach a new snapshot well
within a second; a burst of writes makes few snapshots; broken files change nothing."""

from __future__ import annotations

import os
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


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    store = ConfigStore(report=False)
    w = Watched(tmp_path, store)
    store.subscribe(w.on_snapshot)
    source = DirectorySource(tmp_path, store)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        yield w
    finally:
        stop.set()
        thread.join(5)


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
