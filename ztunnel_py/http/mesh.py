"""Where a mesh proxy sends a request: its routes, and the endpoint each attempt goes to.

The engine's `Resolver` over the mesh state, for a waypoint and for a sidecar's HTTP ports alike.
The request's destination (`Downstream.destination`) is where the client was going: for a
waypoint the HBONE tunnel's `:authority` (ztunnel sends the original destination), for a sidecar
the captured connection's original destination. It is a service VIP and port, or a pod IP and
port (a workload waypoint). For a service, the routes are its `HttpService`'s (HTTPRoute /
VirtualService), or,
without any, one default route to the service itself on the same port (Envoy's `inbound-vip`
cluster); for a pod, one route to that pod.

Endpoints come from the workload API state: the backend service's healthy endpoints that take
the port (a subset narrows them to the workloads the control plane resolved for it), weighted by
capacity, avoiding endpoints an earlier attempt already tried while others remain (Envoy's
`previous_hosts` retry predicate, which istiod sets). The upstream protocol follows the port's
application protocol: HTTP/2 for `http2` and `grpc` ports, HTTP/1.1 for `http`, and the client's
own protocol when the port does not say (Istio's auto-detected ports), except that an upgrade
always goes over HTTP/1.1.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Awaitable, Callable, Collection, Sequence

from ztunnel_py.http.filter import RequestContext
from ztunnel_py.http.message import split_authority
from ztunnel_py.http.upstream import UpstreamTarget
from ztunnel_py.model import IPAddress, Service, Workload, WorkloadStatus
from ztunnel_py.model.http import Backend, Route
from ztunnel_py.model.workload import AppProtocol
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.transport.relay import ByteStream

__all__ = ["WORKLOAD_BACKEND", "Connector", "MeshResolver", "format_address"]

# The backend of a workload-addressed request's default route: the pod the client dialled.
WORKLOAD_BACKEND = ""

# How the waypoint reaches an endpoint: (workload, its address, target port, the service or
# None) -> a byte stream to the app (an HBONE tunnel to the workload's node agent).
Connector = Callable[[Workload, IPAddress, int, Service | None], Awaitable[ByteStream]]


def format_address(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class MeshResolver:
    def __init__(
        self,
        state: ProxyState,
        l7: L7State,
        connect: Connector,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._state = state
        self._l7 = l7
        self._connect = connect
        self._rng = rng or random.Random()
        self._defaults: dict[tuple[str, int], tuple[Route, ...]] = {}

    def _default(self, service: str, port: int) -> tuple[Route, ...]:
        routes = self._defaults.get((service, port))
        if routes is None:
            if len(self._defaults) > 4096:
                self._defaults.clear()
            route = Route("default", backends=(Backend(service, port),), origin="default")
            routes = self._defaults[(service, port)] = (route,)
        return routes

    def destination(self, ctx: RequestContext) -> tuple[Service | None, Workload | None, int]:
        """The service (or, for a workload waypoint, the workload) the client addressed."""
        host, port = split_authority(ctx.downstream.destination)
        ip = _ip(host)
        if ip is None or port is None:
            return None, None, 0
        service = self._state.service_by_vip(ip)
        if service is not None:
            return service, None, port
        return None, self._state.workload_by_ip(ip), port

    def routes(self, ctx: RequestContext) -> Sequence[Route]:
        service, workload, port = self.destination(ctx)
        ctx.port = port or None
        if service is not None:
            ctx.service = service.key
            config = self._l7.service(service.key)
            if config is not None and config.routes:
                return config.routes
            return self._default(service.key, port)
        if workload is not None:
            ctx.state["workload"] = workload
            return self._default(WORKLOAD_BACKEND, port)
        return ()

    def target(
        self, ctx: RequestContext, backend: Backend, exclude: Collection[str], *, http1: bool
    ) -> UpstreamTarget | None:
        service: Service | None = None
        if backend.service == WORKLOAD_BACKEND:
            workload = ctx.state.get("workload")
            if not isinstance(workload, Workload) or not workload.addresses:
                return None
            candidates = [(workload, backend.port)]
        else:
            service = self._state.service_by_key(backend.service)
            if service is None:
                return None
            candidates = [
                (w, port)
                for w, port in self._state.endpoints(service, backend.port)
                if w.status is WorkloadStatus.HEALTHY and w.capacity > 0 and w.addresses
            ]
            if backend.subset:
                config = self._l7.service(ctx.service) if ctx.service else None
                subset = self._l7.subset(config, backend.service, backend.subset)
                members = subset.workload_uids if subset is not None else frozenset()
                candidates = [(w, p) for w, p in candidates if w.uid in members]
        if not candidates:
            return None
        fresh = [
            (w, p) for w, p in candidates if format_address(self._address(w), p) not in exclude
        ]
        pool = fresh or candidates
        workload, port = self._rng.choices(pool, weights=[w.capacity for w, _ in pool])[0]
        ip = self._address(workload)
        http2 = not http1 and self._http2(service, backend.port, ctx)
        connect = self._connect

        async def dial() -> ByteStream:
            return await connect(workload, ip, port, service)

        return UpstreamTarget(
            key=(workload.uid, str(ip), port),
            address=format_address(ip, port),
            http2=http2,
            connect=dial,
            info=workload,
        )

    @staticmethod
    def _address(workload: Workload) -> IPAddress:
        for ip in workload.addresses:
            if ip.version == 4:
                return ip
        return workload.addresses[0]

    @staticmethod
    def _http2(service: Service | None, port: int, ctx: RequestContext) -> bool:
        protocol = service.app_protocol(port) if service is not None else AppProtocol.UNKNOWN
        if protocol in (AppProtocol.HTTP2, AppProtocol.GRPC):
            return True
        if protocol is AppProtocol.HTTP11:
            return False
        return ctx.request.version == "HTTP/2"
