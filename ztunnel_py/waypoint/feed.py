"""The waypoint's xDS handler: the workload API into `ProxyState`, our L7 types into `L7State`.

Readiness waits for the first ACK of all five types, so a waypoint never answers requests with
routes or policies it has not received yet.
"""

from __future__ import annotations

from ztunnel_py.admin.readiness import Readiness
from ztunnel_py.model.authn import WaypointAuthentication
from ztunnel_py.model.http import HttpService
from ztunnel_py.model.policy import WaypointPolicy
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.xds.convert import DecodedResponse
from ztunnel_py.xds.l7convert import (
    AUTHENTICATION_TYPE,
    HTTP_SERVICE_TYPE,
    L7_TYPES,
    WAYPOINT_POLICY_TYPE,
)

__all__ = ["WaypointFeed"]


class WaypointFeed:
    def __init__(self, state: ProxyState, l7: L7State, readiness: Readiness | None) -> None:
        self._workloads = StateFeed(state, readiness)
        self.l7 = l7
        self._readiness = readiness
        self._tasks: dict[str, str] = {}
        if readiness is not None:
            for type_url in L7_TYPES:
                self._tasks[type_url] = readiness.register(f"xds {type_url.rsplit('.', 1)[-1]}")

    def apply(self, update: DecodedResponse) -> None:
        if update.type_url == HTTP_SERVICE_TYPE:
            services = [o for o in update.others if isinstance(o, HttpService)]
            self.l7.apply_services(services, update.removed)
        elif update.type_url == WAYPOINT_POLICY_TYPE:
            policies = [o for o in update.others if isinstance(o, WaypointPolicy)]
            self.l7.apply_policies(policies, update.removed)
        elif update.type_url == AUTHENTICATION_TYPE:
            authentications = [o for o in update.others if isinstance(o, WaypointAuthentication)]
            self.l7.apply_authentications(authentications, update.removed)
        else:
            self._workloads.apply(update)

    def synced(self, type_url: str) -> None:
        task = self._tasks.get(type_url)
        if task is None:
            self._workloads.synced(type_url)
        elif self._readiness is not None:
            self._readiness.mark_ready(task)
