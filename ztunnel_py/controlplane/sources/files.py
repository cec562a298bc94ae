"""A directory of Kubernetes YAML, watched by polling (no inotify: it works on every
filesystem, bind mounts and ConfigMap volumes included).

Every `*.yaml` / `*.yml` file below the directory is a source; hidden files and directories
are skipped (editors' temporary files, the `..data` directory of a ConfigMap volume, whose
symlinked files are followed). The watcher polls file stamps every `poll_interval`; once they
have been still for `debounce` (or changes have kept coming for `max_delay`), it reads the
changed files and hands them to the store in one `apply`, so a burst of writes makes one or two
snapshots. A deleted file removes its resources; an unreadable file, or a directory that has
disappeared, keeps what was served. Write files atomically (write elsewhere, then rename) so a
half-written file is never read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ztunnel_py.controlplane.resources import Diagnostic, Origin
from ztunnel_py.controlplane.sources.yamldocs import Parsed, parse_documents
from ztunnel_py.controlplane.store import ApplyResult, ConfigStore

log = logging.getLogger("ztunnel_py.controlplane.files")

SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 16 * 1024 * 1024

Stamp = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Scan:
    stamps: dict[str, Stamp]
    ok: bool


def scan(directory: Path) -> _Scan:
    """Stamps of every YAML file below `directory`; ok=False if the directory is unreadable."""
    stamps: dict[str, Stamp] = {}
    if not directory.is_dir():
        return _Scan(stamps, False)
    failed = False

    def on_error(error: OSError) -> None:
        nonlocal failed
        failed = True
        log.warning("cannot list %s: %s", error.filename, error.strerror)

    for root, dirs, files in os.walk(directory, onerror=on_error, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError:
                stamps[path] = (-1, -1, -1)
                continue
            stamps[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return _Scan(stamps, not failed)


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
    """Every YAML file below `directory`, parsed (for one-shot use: `controlplane validate`)."""
    return {path: read_file(path)[0] for path in sorted(scan(directory).stamps)}


class DirectorySource:
    def __init__(
        self,
        directory: Path,
        store: ConfigStore,
        *,
        poll_interval: float = 0.05,
        debounce: float = 0.1,
        max_delay: float = 0.5,
    ) -> None:
        self.directory = directory
        self.store = store
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.max_delay = max_delay
        # stamps of the contents the store has (a stamp of None: re-read at the next sync)
        self._applied: dict[str, Stamp | None] = {}

    def sync(self) -> ApplyResult | None:
        """Apply every change since the last sync now; None if nothing changed."""
        current = scan(self.directory)
        if not current.ok and not current.stamps:
            log.error(
                "cannot read the configuration directory %s: keeping the current configuration",
                self.directory,
            )
            return None
        changes: dict[str, Parsed | None] = {}
        for path, stamp in current.stamps.items():
            if path not in self._applied or self._applied[path] != stamp:
                parsed, read_stamp = read_file(path)
                changes[path] = parsed
                self._applied[path] = read_stamp
        if current.ok:
            for path in [p for p in self._applied if p not in current.stamps]:
                changes[path] = None
                del self._applied[path]
        if not changes:
            return None
        return self.store.apply(changes)

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set (run it in a thread), starting with a `sync`."""
        self.sync()
        # Start from "nothing seen": a change made between that sync and the first poll is
        # then noticed like any other (at worst one extra sync that finds nothing to do).
        last_seen: dict[str, Stamp] = {}
        first_change: float | None = None
        last_change = 0.0
        while not stop.wait(self.poll_interval):
            stamps = scan(self.directory).stamps
            now = time.monotonic()
            if stamps != last_seen:
                last_seen = stamps
                last_change = now
                if first_change is None:
                    first_change = now
            if first_change is None:
                continue
            if now - last_change >= self.debounce or now - first_change >= self.max_delay:
                first_change = None
                try:
                    self.sync()
                except Exception:
                    # The store never raises on bad input; this guards the watcher itself.
                    log.exception("applying changes from %s failed", self.directory)
