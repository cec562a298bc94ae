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
capacity. Each backend (service, subset, port) is a `Cluster` with the traffic policy the
service's `HttpService` carries for it (DestinationRule; Istio's defaults otherwise): it picks
the endpoint (its load balancer, outlier detection, avoiding endpoints an earlier attempt
already tried while others remain) and holds the circuit breakers the upstream pool and the
router enforce. A consistent hash is computed once per request and cluster (a cookie the proxy
makes is added to the response). PASSTHROUGH sends the request to the address the client
dialled: a pod; a service address has no endpoint of its own. The upstream protocol follows the
port's
application protocol: HTTP/2 for `http2` and `grpc` ports, HTTP/1.1 for `http`, and the client's
own protocol when the port does not say (Istio's auto-detected ports), except that an upgrade
always goes over HTTP/1.1.

What every request would otherwise work out again from the same state (the destination an
`:authority` names, a backend's endpoints with their balancer addresses) is remembered until the
workload state or the L7 state changes (their `version`s), so a request costs a lookup.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.http.balancer import Endpoint, request_hash
from ztunnel_py.http.cluster import Cluster
from ztunnel_py.http.filter import RequestContext
from ztunnel_py.http.message import split_authority
from ztunnel_py.http.upstream import UpstreamTarget
from ztunnel_py.model import IPAddress, Service, Workload, WorkloadStatus
from ztunnel_py.model.http import (
    DEFAULT_TRAFFIC_POLICY,
    Backend,
    LoadBalancerKind,
    Route,
    TrafficPolicy,
)
from ztunnel_py.model.workload import AppProtocol
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.transport.relay import ByteStream

__all__ = ["WORKLOAD_BACKEND", "Connector", "MeshResolver", "format_address"]

# The backend of a workload-addressed request's default route: the pod the client dialled.
WORKLOAD_BACKEND = ""
# Clusters kept before idle ones (no request, connection or retry) are forgotten.
_MAX_CLUSTERS = 4096

# How the waypoint reaches an endpoint: (workload, its address (None: known by host name only,
# resolved by the connector), target port, the service or None) -> a byte stream to the app (an
# HBONE tunnel to the workload's node agent, or TCP to a workload outside the mesh).
Connector = Callable[[Workload, IPAddress | None, int, Service | None], Awaitable[ByteStream]]


def format_address(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _endpoint_address(workload: Workload, port: int) -> str:
    """How the load balancer names an endpoint: its address (IPv4 first), else its host name."""
    ip = MeshResolver._address(workload)
    return format_address(ip, port) if ip is not None else f"{workload.hostname}:{port}"


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Endpoints:
    """A backend's endpoints as the balancer sees them, by balancer address."""

    service: Service | None
    by_address: dict[str, tuple[Workload, int]]
    endpoints: list[Endpoint]
    # (address, HTTP/2) -> the target made for it
    targets: dict[tuple[str, bool], UpstreamTarget] = field(default_factory=dict)


class MeshResolver:
    def __init__(
        self,
        state: ProxyState,
        l7: L7State,
        connect: Connector,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._l7 = l7
        self._connect = connect
        self._rng = rng or random.Random()
        self._clock = clock
        self._defaults: dict[tuple[str, int], tuple[Route, ...]] = {}
        self._clusters: dict[tuple[str, str, int], Cluster] = {}
        # per-request work remembered for the state versions in `_memo_for`
        self._memo_for = (-1, -1)
        self._destinations: dict[str, tuple[Service | None, Workload | None, int]] = {}
        self._endpoint_sets: dict[tuple[str, str, str, int], _Endpoints] = {}

    def _fresh_memo(self) -> None:
        """Forget what was remembered for older state (and bound what is remembered)."""
        versions = (self._state.version, self._l7.version)
        if versions != self._memo_for or len(self._destinations) + len(self._endpoint_sets) > 4096:
            self._memo_for = versions
            self._destinations.clear()
            self._endpoint_sets.clear()

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
        self._fresh_memo()
        authority = ctx.downstream.destination
        found = self._destinations.get(authority)
        if found is None:
            found = self._destinations[authority] = self._look_up(authority)
        return found

    def _look_up(self, authority: str) -> tuple[Service | None, Workload | None, int]:
        host, port = split_authority(authority)
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

    def cluster(self, ctx: RequestContext, backend: Backend) -> Cluster:
        """The backend's cluster, with the policy the request's service has for it (a new
        cluster, with fresh state, when that policy changed)."""
        config = self._l7.service(ctx.service) if ctx.service else None
        policy: TrafficPolicy = (
            config.traffic_policy(backend.service, backend.subset, backend.port)
            if config is not None
            else DEFAULT_TRAFFIC_POLICY
        )
        key = (backend.service, backend.subset, backend.port)
        cluster = self._clusters.get(key)
        if cluster is None or cluster.policy != policy:
            if len(self._clusters) >= _MAX_CLUSTERS:
                for old in [k for k, c in self._clusters.items() if c.idle]:
                    del self._clusters[old]
            cluster = Cluster(backend.cluster, policy, rng=self._rng, clock=self._clock)
            self._clusters[key] = cluster
        return cluster

    def _candidates(
        self, ctx: RequestContext, backend: Backend, cluster: Cluster
    ) -> tuple[Service | None, list[tuple[Workload, int]]]:
        if backend.service == WORKLOAD_BACKEND:
            workload = ctx.state.get("workload")
            if not isinstance(workload, Workload) or not workload.addresses:
                return None, []
            return None, [(workload, backend.port)]
        service = self._state.service_by_key(backend.service)
        if service is None:
            return None, []
        if cluster.policy.load_balancer.kind is LoadBalancerKind.PASSTHROUGH:
            # the address the client dialled, as an ORIGINAL_DST cluster connects to it
            host, port = split_authority(ctx.downstream.destination)
            ip = _ip(host)
            dialled = self._state.workload_by_ip(ip) if ip is not None else None
            if dialled is None or port is None:
                return service, []
            return service, [(dialled, port)]
        candidates = [
            (w, port)
            for w, port in self._state.endpoints(service, backend.port)
            if w.status is WorkloadStatus.HEALTHY and w.capacity > 0 and (w.addresses or w.hostname)
        ]
        if backend.subset:
            config = self._l7.service(ctx.service) if ctx.service else None
            subset = self._l7.subset(config, backend.service, backend.subset)
            members = subset.workload_uids if subset is not None else frozenset()
            candidates = [(w, p) for w, p in candidates if w.uid in members]
        return service, candidates

    def _hash(self, ctx: RequestContext, cluster: Cluster) -> int | None:
        """The request's consistent hash for `cluster` (computed once per request)."""
        ch = cluster.policy.load_balancer.consistent_hash
        if ch is None:
            return None
        keys: dict[str, int | None] = ctx.state.setdefault("hash", {})
        if cluster.name not in keys:
            down = ctx.downstream
            source, _ = split_authority(down.peer_address)
            key, cookie = request_hash(
                ch, ctx.request, source, lambda: f"{down.peer_address}|{down.destination}"
            )
            if cookie is not None:
                ctx.upstream_response_headers.append(("set-cookie", cookie))
            keys[cluster.name] = key
        return keys[cluster.name]

    def _endpoint_set(self, ctx: RequestContext, backend: Backend, cluster: Cluster) -> _Endpoints:
        # remembered unless it depends on the request (a pod addressed directly, PASSTHROUGH)
        cacheable = (
            backend.service != WORKLOAD_BACKEND
            and cluster.policy.load_balancer.kind is not LoadBalancerKind.PASSTHROUGH
        )
        key = (ctx.service, backend.service, backend.subset, backend.port)
        if cacheable:
            self._fresh_memo()
            found = self._endpoint_sets.get(key)
            if found is not None:
                return found
        service, candidates = self._candidates(ctx, backend, cluster)
        by_address = {_endpoint_address(w, p): (w, p) for w, p in candidates}
        endpoints = [Endpoint(a, w.capacity) for a, (w, _) in by_address.items()]
        found = _Endpoints(service, by_address, endpoints)
        if cacheable:
            self._endpoint_sets[key] = found
        return found

    def target(
        self, ctx: RequestContext, backend: Backend, exclude: Collection[str], *, http1: bool
    ) -> UpstreamTarget | None:
        cluster = self.cluster(ctx, backend)
        found = self._endpoint_set(ctx, backend, cluster)
        service = found.service
        chosen = cluster.choose(found.endpoints, exclude, self._hash(ctx, cluster), self._clock())
        if chosen is None:
            return None
        http2 = not http1 and self._http2(service, backend.port, ctx)
        made = found.targets.get((chosen.address, http2))
        if made is not None and made.cluster is cluster:
            return made
        workload, port = found.by_address[chosen.address]
        ip = self._address(workload)
        connect = self._connect

        async def dial() -> ByteStream:
            return await connect(workload, ip, port, service)

        made = found.targets[(chosen.address, http2)] = UpstreamTarget(
            key=(cluster.name, workload.uid, str(ip or workload.hostname), port),
            address=chosen.address,
            http2=http2,
            connect=dial,
            info=workload,
            cluster=cluster,
        )
        return made

    def dump(self) -> dict[str, Any]:
        """`/config_dump` section `clusters`: each cluster's policy, counters and outlier
        detection state."""
        now = self._clock()
        return {"clusters": [c.dump(now) for _, c in sorted(self._clusters.items())]}

    @staticmethod
    def _address(workload: Workload) -> IPAddress | None:
        for ip in workload.addresses:
            if ip.version == 4:
                return ip
        return workload.addresses[0] if workload.addresses else None

    @staticmethod
    def _http2(service: Service | None, port: int, ctx: RequestContext) -> bool:
        protocol = service.app_protocol(port) if service is not None else AppProtocol.UNKNOWN
        if protocol in (AppProtocol.HTTP2, AppProtocol.GRPC):
            return True
        if protocol is AppProtocol.HTTP11:
            return False
        return ctx.request.version == "HTTP/2"
