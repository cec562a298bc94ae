"""Sidecar mode's HTTP ports: outbound requests through the shared HTTP filter engine.

As istio-proxy does on the client side: a captured connection to a service port whose
application protocol is HTTP (`http`, `http2`, `grpc`) is served as HTTP rather than relayed as
bytes, so each request is routed on its own (the service's routes from the mesh state, else a
default route to the service), picks its endpoint, is retried and timed out as a waypoint would,
and is counted in `istio_requests_total{reporter="source"}` with an access log line. Upstream
requests travel in HBONE tunnels from the pod (its identity, its source address) to the chosen
endpoint, or in plain TCP to an endpoint outside the mesh. This is what makes the benchmark's
L7 comparison like with like: the same engine runs in the waypoint and in the sidecar.
"""

from __future__ import annotations

import random

import trio

from ztunnel_py.agent.proxy.outbound import Outbound, OutboundError
from ztunnel_py.http.connection import ServerStream, serve_http
from ztunnel_py.http.filter import Downstream, FilterChain, RequestContext
from ztunnel_py.http.filters.fault import FaultFilter
from ztunnel_py.http.filters.telemetry import TelemetryFilter
from ztunnel_py.http.filters.tracing import TracingFilter
from ztunnel_py.http.mesh import MeshResolver
from ztunnel_py.http.proxy import HttpProxy
from ztunnel_py.http.upstream import UpstreamPool
from ztunnel_py.model import IPAddress, Service, Workload
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.workload import AppProtocol
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.labels import SOURCE
from ztunnel_py.telemetry.requests import Peer, RequestMetrics
from ztunnel_py.transport.podsockets import PodNetns
from ztunnel_py.transport.relay import ByteStream, SocketByteStream

__all__ = ["HTTP_PROTOCOLS", "SidecarHttp"]

HTTP_PROTOCOLS = frozenset({AppProtocol.HTTP11, AppProtocol.HTTP2, AppProtocol.GRPC})

# A sidecar's HTTP connections from its app stay open this long without a request (Envoy's
# default idle timeout for HTTP connections is one hour).
_IDLE_TIMEOUT = 3600.0


class SidecarHttp:
    """The HTTP engine of one sidecar (one pod)."""

    def __init__(
        self,
        pod_uid: str,
        netns: PodNetns,
        state: ProxyState,
        outbound: Outbound,
        metrics: RequestMetrics,
        nursery: trio.Nursery,
        connect_timeout: float,
    ) -> None:
        self.pod_uid = pod_uid
        self.netns = netns
        self.state = state
        self.outbound = outbound
        self.l7 = L7State()
        self.upstreams = UpstreamPool(nursery, connect_timeout=connect_timeout)
        resolver = MeshResolver(state, self.l7, self._connect, rng=random.Random())
        chain = FilterChain(
            [
                TracingFilter(),
                FaultFilter(),
                TelemetryFilter(
                    metrics,
                    reporter=SOURCE,
                    source=self._source_peer,
                    destination=self._destination_peer,
                    service=lambda ctx: state.service_by_key(ctx.service) if ctx.service else None,
                ),
            ]
        )
        self.proxy = HttpProxy(chain, resolver, self.upstreams)

    @staticmethod
    def handles(service: Service | None, port: int) -> bool:
        return service is not None and service.app_protocol(port) in HTTP_PROTOCOLS

    async def serve(self, client: trio.socket.SocketType, dst_ip: IPAddress, dst_port: int) -> None:
        """Serve one captured connection from the app as HTTP, until it closes."""
        peer = client.getpeername()
        downstream = Downstream(
            peer_identity=None,
            peer_address=str(SocketAddr(peer[0], peer[1])),
            destination=str(SocketAddr(dst_ip, dst_port)),
            mtls=False,
        )

        async def handle(s: ServerStream) -> None:
            await self.proxy.handle(s, downstream)

        await serve_http(SocketByteStream(client), handle, idle_timeout=_IDLE_TIMEOUT)

    async def _connect(
        self, workload: Workload, ip: IPAddress | None, port: int, service: Service | None
    ) -> ByteStream:
        source = self.state.workload_by_uid(self.pod_uid)
        if source is None:
            raise OSError(f"pod {self.pod_uid} is unknown to the mesh state")
        try:
            return await self.outbound.open_upstream(
                source, self.netns, workload, ip, port, service
            )
        except OutboundError as e:
            raise OSError(str(e)) from e

    def _source_peer(self, ctx: RequestContext) -> Peer:
        source = self.state.workload_by_uid(self.pod_uid)
        return Peer.of(source, source.identity if source is not None else None)

    def _destination_peer(self, ctx: RequestContext) -> Peer:
        workload = ctx.upstream_info if isinstance(ctx.upstream_info, Workload) else None
        return Peer.of(workload, None)
