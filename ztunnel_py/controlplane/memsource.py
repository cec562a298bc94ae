"""`MemorySnapshotSource`: a `SnapshotSource` whose snapshots are set in process.

For a control plane without a configuration source, for benchmarks and for tests: `set` (or
`replace`) swaps the snapshot and notifies subscribers in the calling thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from ztunnel_py.controlplane.snapshot import EMPTY_SNAPSHOT, MeshSnapshot, WaypointScope
from ztunnel_py.model import Authorization, Service, Workload
from ztunnel_py.model.http import HttpService

log = logging.getLogger(__name__)

Subscriber = Callable[[MeshSnapshot], None]


class MemorySnapshotSource:
    def __init__(self, snapshot: MeshSnapshot = EMPTY_SNAPSHOT) -> None:
        self._lock = threading.Lock()
        self._snapshot = snapshot
        self._subscribers: list[Subscriber] = []

    def current(self) -> MeshSnapshot:
        return self._snapshot

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def set(self, snapshot: MeshSnapshot) -> None:
        with self._lock:
            self._snapshot = snapshot
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(snapshot)
            except Exception:
                log.exception("snapshot subscriber %r failed", callback)

    def replace(
        self,
        *,
        workloads: Mapping[str, Workload] | None = None,
        services: Mapping[str, Service] | None = None,
        policies: Mapping[str, Authorization] | None = None,
        http_services: Mapping[str, HttpService] | None = None,
        waypoints: Mapping[str, WaypointScope] | None = None,
    ) -> MeshSnapshot:
        """Set the next version with the given parts replaced (the others kept); returns it."""
        with self._lock:
            old = self._snapshot
        snapshot = MeshSnapshot(
            version=old.version + 1,
            workloads=dict(old.workloads if workloads is None else workloads),
            services=dict(old.services if services is None else services),
            policies=dict(old.policies if policies is None else policies),
            http_services=dict(old.http_services if http_services is None else http_services),
            waypoints=dict(old.waypoints if waypoints is None else waypoints),
        )
        self.set(snapshot)
        return snapshot
