"""The xDS handler of agents and waypoints: workload xDS updates into `ProxyState`, readiness
held until synced.

The xDS client knows only the `XdsHandler` protocol; this is the proxies' implementation. Each
type subscribed registers a readiness task at construction, so the agent reports not ready
until the control plane's first answer of every type has been applied and ACKed.
"""

from __future__ import annotations

from ztunnel_py.admin.readiness import Readiness
from ztunnel_py.protocol.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, WORKLOAD_TYPES
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.xds.client import SHORT_TYPE
from ztunnel_py.xds.convert import DecodedResponse


class StateFeed:
    """Applies Address and Authorization deltas to one `ProxyState`."""

    def __init__(self, state: ProxyState, readiness: Readiness | None = None) -> None:
        self.state = state
        self._readiness = readiness
        self._tasks: dict[str, str] = {}
        if readiness is not None:
            for type_url in WORKLOAD_TYPES:
                self._tasks[type_url] = readiness.register(f"xds {SHORT_TYPE[type_url]}")

    def apply(self, update: DecodedResponse) -> None:
        removed = update.removed
        if update.type_url == ADDRESS_TYPE:
            self.state.apply_delta(
                workloads=update.workloads,
                services=update.services,
                removed_workloads=removed,
                removed_services=removed,
            )
        elif update.type_url == AUTHORIZATION_TYPE:
            self.state.apply_delta(policies=update.policies, removed_policies=removed)

    def synced(self, type_url: str) -> None:
        task = self._tasks.get(type_url)
        if task is not None and self._readiness is not None:
            self._readiness.mark_ready(task)
