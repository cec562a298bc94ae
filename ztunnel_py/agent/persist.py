"""The agent's memory of enrolled pods across restarts.

A netns fd cannot outlive the process that holds it, so the agent records, for each enrolled
pod, its identity and its network namespace's (device, inode). A restarted agent finds each
namespace again by that inode among the named namespaces and the namespaces of running
processes, and re-enrolls the pod without the CNI plugin being called again. The same search
tells whether an enrolled pod still runs (`find_netns`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from ztunnel_py.protocol.zds import PodInfo

log = logging.getLogger("ztunnel_py.persist")

STATE_FILE = "enrolled-pods.json"
NETNS_DIRS = ("/run/netns", "/var/run/netns")


@dataclass(frozen=True, slots=True)
class EnrolledPod:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns_dev: int
    netns_ino: int

    @property
    def info(self) -> PodInfo:
        return PodInfo(self.uid, self.name, self.namespace, self.service_account)


_FIELDS = tuple(f.name for f in fields(EnrolledPod))


def save(state_dir: Path, pods: Iterable[EnrolledPod]) -> None:
    """Write the list atomically (a crash mid-write leaves the previous list)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    # Written on every enrollment change, so kept cheap: plain dicts, no deep copy, no indent.
    tmp.write_text(json.dumps([{f: getattr(p, f) for f in _FIELDS} for p in pods]))
    os.replace(tmp, path)


def load(state_dir: Path) -> list[EnrolledPod]:
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return [EnrolledPod(**entry) for entry in raw]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError) as e:
        log.error("ignoring unreadable %s (%s): pods must be enrolled again", path, e)
        return []


def _candidates() -> Iterator[str]:
    for directory in NETNS_DIRS:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        yield from (os.path.join(directory, n) for n in names)
    # Not this process: it holds pod namespaces itself (fds, sockets) and enters them briefly.
    own = str(os.getpid())
    for pid in os.listdir("/proc"):
        if pid.isdigit() and pid != own:
            yield f"/proc/{pid}/ns/net"


def find_netns(wanted: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Paths of the network namespaces with the given (device, inode) that still exist apart
    from this process: named (a bind mount) or the namespace of a running process."""
    found: dict[tuple[int, int], str] = {}
    for path in _candidates():
        if len(found) == len(wanted):
            break
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in wanted and key not in found:
            found[key] = path
    return found
