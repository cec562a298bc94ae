"""ztunnel's local-config file as the control plane's only source, for development: it serves,
over xDS, the same file an agent could load with LOCAL_XDS_PATH, and tells the CA which
identities each node hosts (the `node`, `namespace`, `serviceAccount` and `trustDomain` of
its workloads).

The file is parsed with the agent's own parser (strict: every problem reported, unknown keys
rejected) and re-read when it changes; a broken edit is logged and the previous snapshot stays
in force, so a typo never revokes every node's certificates.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ztunnel_py.controlplane.snapshot import EMPTY_SNAPSHOT, MeshSnapshot
from ztunnel_py.model import Identity, Workload
from ztunnel_py.xds.localconfig import ConfigError, load_local_config

log = logging.getLogger("ztunnel_py.controlplane.localconfig")


class LocalConfigSource:
    """A `SnapshotSource` for the xDS server and a `WorkloadRegistry` for the CA."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._snapshot = EMPTY_SNAPSHOT
        self._nodes: dict[str, frozenset[Identity]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._subscribers: list[Callable[[MeshSnapshot], None]] = []
        self._lock = threading.Lock()

    def current(self) -> MeshSnapshot:
        return self._snapshot

    def identities_on_node(self, node: str) -> frozenset[Identity]:
        return self._nodes.get(node, frozenset())

    def subscribe(self, callback: Callable[[MeshSnapshot], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True if a new snapshot was published."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as e:
            stamp = (-1, -1, -1)
            if stamp != self._stamp:
                log.error("%s: %s; keeping the previous configuration", self.path, e.strerror)
            self._stamp = stamp
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_local_config(self.path)
        except ConfigError as e:
            log.error("%s; keeping the previous configuration", e)
            return False
        old = self._snapshot
        workloads = {w.uid: w for w in config.workloads}
        services = {s.key: s for s in config.services}
        policies = {p.key: p for p in config.policies}
        if (workloads, services, policies) == (old.workloads, old.services, old.policies):
            return False
        snapshot = MeshSnapshot(old.version + 1, workloads, services, policies)
        self._nodes = _nodes(config.workloads)
        self._snapshot = snapshot
        log.info(
            "loaded %s: version %d, %d workloads, %d services, %d policies",
            self.path,
            snapshot.version,
            len(workloads),
            len(services),
            len(policies),
        )
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(snapshot)
            except Exception:
                log.exception("snapshot subscriber %r failed", callback)
        return True

    def watch(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Poll the file until `stop` is set (run it in a thread)."""
        self.reload_if_changed()
        while not stop.wait(interval):
            self.reload_if_changed()


def _nodes(workloads: tuple[Workload, ...]) -> dict[str, frozenset[Identity]]:
    """node -> identities of the workloads on it (workloads without a node are on none)."""
    nodes: dict[str, set[Identity]] = {}
    for w in workloads:
        if w.node:
            nodes.setdefault(w.node, set()).add(w.identity)
    return {node: frozenset(ids) for node, ids in nodes.items()}
