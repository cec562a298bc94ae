"""A directory of Kubernetes YAML, watched with inotify.

Every `*.yaml` / `*.yml` file below the directory is a source; hidden files and directories
are skipped (editors' temporary files, the `..data` directory of a ConfigMap volume, whose
symlinked files are followed). Symbolic links to directories are followed too, except one that
leads back to a directory it is in (a loop): that one is refused, reported as an error of its
path (in `/debug/config` and `controlplane validate`) and logged once.

The watcher sleeps on inotify watches of every directory of the tree; when one reports a
change and the tree has then been still for `debounce` (or changes have kept coming for
`max_delay`), it rescans the tree (watching new directories), reads the changed files and hands
them to the store in one `apply`, so a burst of writes makes one or two snapshots. Idle, it
costs nothing: no file is looked at until something changes. Because a symlinked file's target
may live outside the tree (or on a filesystem without inotify, such as a network mount), a full
rescan also runs every `resync` seconds. A deleted file removes its resources; an unreadable
file, or a directory that has disappeared, keeps what was served. Write files atomically (write
elsewhere, then rename) so a half-written file is never read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ztunnel_py.controlplane.resources import Diagnostic, Origin
from ztunnel_py.controlplane.sources.yamldocs import Parsed, parse_documents
from ztunnel_py.controlplane.store import ApplyResult, ConfigStore
from ztunnel_py.linux.inotify import IN_Q_OVERFLOW, Inotify

log = logging.getLogger("ztunnel_py.controlplane.files")

SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 16 * 1024 * 1024

Stamp = tuple[int, int, int]
_LOOP: Stamp = (-2, -2, -2)  # the stamp of a refused symlink loop


@dataclass(frozen=True, slots=True)
class _Scan:
    stamps: dict[str, Stamp]
    ok: bool
    directories: list[str] = field(default_factory=list)
    # refused symbolic links: path -> the directory it leads back to
    loops: dict[str, str] = field(default_factory=dict)


def scan(directory: Path) -> _Scan:
    """Stamps of every YAML file below `directory`, the directories walked and the refused
    symlink loops; ok=False if some directory could not be listed."""
    stamps: dict[str, Stamp] = {}
    directories: list[str] = []
    loops: dict[str, str] = {}
    failed = False

    def visit(path: str, ancestors: dict[tuple[int, int], str]) -> None:
        nonlocal failed
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            failed = True
            log.warning("cannot list %s: %s", path, e.strerror)
            return
        directories.append(path)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                st = os.stat(entry.path) if is_dir or entry.name.endswith(SUFFIXES) else None
            except FileNotFoundError:
                continue  # removed meanwhile, or a dangling link
            except OSError:
                if entry.name.endswith(SUFFIXES):
                    stamps[entry.path] = (-1, -1, -1)
                continue
            if st is None:
                continue
            if is_dir:
                identity = (st.st_dev, st.st_ino)
                if identity in ancestors:
                    loops[entry.path] = ancestors[identity]
                    continue
                visit(entry.path, {**ancestors, identity: entry.path})
            else:
                stamps[entry.path] = (st.st_ino, st.st_mtime_ns, st.st_size)

    try:
        top = os.stat(directory)
    except OSError:
        return _Scan(stamps, False)
    if not os.path.isdir(directory):
        return _Scan(stamps, False)
    visit(str(directory), {(top.st_dev, top.st_ino): str(directory)})
    return _Scan(stamps, not failed, directories, loops)


def _loop_problem(path: str, target: str) -> Parsed:
    problem = (
        f"symbolic link loop: {path} leads back to {target}, a directory it is in; not "
        "followed (remove the link or point it elsewhere)"
    )
    return Parsed((), Diagnostic(Origin(path), "", problem))


def read_file(path: str) -> tuple[Parsed, Stamp | None]:
    """A file's documents and the stamp of what was read; never raises."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > MAX_FILE_BYTES:
                problem = f"file is larger than {MAX_FILE_BYTES} bytes"
                return Parsed((), Diagnostic(Origin(path), "", problem)), None
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return Parsed(()), None
    except OSError as e:
        problem = f"cannot read the file: {e.strerror or e}"
        return Parsed((), Diagnostic(Origin(path), "", problem)), None
    return parse_documents(data, path), (st.st_ino, st.st_mtime_ns, st.st_size)


def load_directory(directory: Path) -> dict[str, Parsed]:
    """Every YAML file below `directory`, parsed, and each refused symlink loop as an error
    (for one-shot use: `controlplane validate`)."""
    found = scan(directory)
    files = {path: read_file(path)[0] for path in sorted(found.stamps)}
    return files | {path: _loop_problem(path, target) for path, target in found.loops.items()}


class DirectorySource:
    def __init__(
        self,
        directory: Path,
        store: ConfigStore,
        *,
        debounce: float = 0.1,
        max_delay: float = 0.5,
        resync: float = 10.0,
        stop_check: float = 0.25,
    ) -> None:
        self.directory = directory
        self.store = store
        self.debounce = debounce
        self.max_delay = max_delay
        self.resync = resync
        self.stop_check = stop_check  # how often `run` looks at its stop event
        # stamps of the contents the store has (a stamp of None: re-read at the next sync)
        self._applied: dict[str, Stamp | None] = {}
        self.directories: list[str] = []  # the directories of the last scan

    def sync(self) -> ApplyResult | None:
        """Apply every change since the last sync now; None if nothing changed."""
        current = scan(self.directory)
        self.directories = current.directories
        if not current.ok and not current.stamps:
            log.error(
                "cannot read the configuration directory %s: keeping the current configuration",
                self.directory,
            )
            return None
        changes: dict[str, Parsed | None] = {}
        for path, target in current.loops.items():
            if self._applied.get(path) != _LOOP:
                changes[path] = parsed = _loop_problem(path, target)
                assert parsed.error is not None
                log.error("%s", parsed.error.reason)
                self._applied[path] = _LOOP
        for path, stamp in current.stamps.items():
            if path not in self._applied or self._applied[path] != stamp:
                parsed, read_stamp = read_file(path)
                changes[path] = parsed
                self._applied[path] = read_stamp
        if current.ok:
            present = current.stamps.keys() | current.loops.keys()
            for path in [p for p in self._applied if p not in present]:
                changes[path] = None
                del self._applied[path]
        if not changes:
            return None
        return self.store.apply(changes)

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set (run it in a thread), starting with a `sync`."""
        with Inotify() as inotify:
            watches: dict[str, int] = {}
            self._sync_and_watch(inotify, watches)
            first_change: float | None = None
            last_change = 0.0
            next_resync = time.monotonic() + self.resync
            while not stop.is_set():
                now = time.monotonic()
                wait = min(self.stop_check, max(0.0, next_resync - now))
                if first_change is not None:
                    due = min(last_change + self.debounce, first_change + self.max_delay)
                    wait = min(wait, max(0.0, due - now))
                events = inotify.read(wait)
                now = time.monotonic()
                if events:
                    last_change = now
                    if first_change is None:
                        first_change = now
                    if any(e.mask & IN_Q_OVERFLOW for e in events):
                        log.warning("inotify lost events for %s: rescanning", self.directory)
                due_now = first_change is not None and (
                    now - last_change >= self.debounce or now - first_change >= self.max_delay
                )
                if due_now or now >= next_resync:
                    first_change = None
                    next_resync = now + self.resync
                    self._sync_and_watch(inotify, watches)

    def _sync_and_watch(self, inotify: Inotify, watches: dict[str, int]) -> None:
        """Sync, then watch the directories found (a missing one is watched once it exists
        again, at a resync). A directory that appeared since the last scan could have got
        files before its watch existed: sync again until no new directory turns up."""
        for _ in range(10):
            try:
                self.sync()
            except Exception:
                # The store never raises on bad input; this guards the watcher itself.
                log.exception("applying changes from %s failed", self.directory)
            wanted = set(self.directories)
            for path in [p for p in watches if p not in wanted]:
                wd = watches.pop(path)
                if wd not in watches.values():  # the same directory by another path
                    inotify.rm_watch(wd)
            added = False
            for path in sorted(wanted - watches.keys()):
                try:
                    watches[path] = inotify.add_watch(path)
                    added = True
                except OSError as e:
                    log.warning("cannot watch %s: %s; rescanned every %g s", path, e, self.resync)
            if not added:
                return
