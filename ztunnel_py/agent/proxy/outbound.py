"""Outbound: a connection from a pod (captured on 15001 or asked for over SOCKS5) to a destination.

Decides where the connection goes (docs/istio-compat.md, "Outbound decision"): a service or
workload with a waypoint goes to the waypoint (`:authority` the original destination);
a service VIP picks a healthy endpoint; a mesh workload (HBONE) gets an HBONE tunnel from a
socket created inside the source pod's netns, so the source IP stays the pod's; a workload
without HBONE or an unknown destination gets plain TCP passthrough (refused under the mesh
config's outboundTrafficPolicy REGISTRY_ONLY, `agent/meshconfig.py`). An endpoint known only by
host name (a ServiceEntry's, `resolution: DNS`) is resolved when the connection is made, as
ztunnel's on-demand DNS does: an address of the original destination's family first.

A waypoint that refuses a destination (400: not served by it) while this agent routes that
destination to it means one of the two has applied a push the other has not yet (a
`use-waypoint` label just added or removed; each applies it within milliseconds of the other):
the connection is routed again once, `WAYPOINT_RETRY_DELAY` later, so a label change fails no
new connection either way.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import trio

from ztunnel_py.agent.proxy.accounting import Tracker, carry
from ztunnel_py.identity.manager import CertificateManager
from ztunnel_py.identity.tls import client_context, verify_server_identity
from ztunnel_py.model import IPAddress, Service, SocketAddr, TunnelProtocol, Workload
from ztunnel_py.model.address import canonical_ip
from ztunnel_py.model.ports import HBONE_PORT, POD_LISTENER_PORTS
from ztunnel_py.model.workload import GatewayAddress, NamespacedHostname
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.accesslog import connection_failed
from ztunnel_py.telemetry.labels import SOURCE, TrafficLabels
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.transport.hbone import (
    HboneClientConnection,
    HboneError,
    HboneHandshakeError,
    HboneStatusError,
    HboneStream,
    connect_hbone,
)
from ztunnel_py.transport.podsockets import PodNetns
from ztunnel_py.transport.pool import HbonePool, PoolKey
from ztunnel_py.transport.relay import ByteStream, SocketByteStream, relay, splice_relay

log = logging.getLogger("ztunnel_py.outbound")

_rng = random.Random()
# how long a connection refused by its waypoint waits before it is routed again (see above)
WAYPOINT_RETRY_DELAY = 0.2


class OutboundError(Exception):
    """The destination could not be reached; `flag` is the Istio response flag to report."""

    def __init__(
        self,
        message: str,
        flag: str = "CONNECT",
        refused: bool = False,
        *,
        waypoint_refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.flag = flag
        self.refused = refused
        # a waypoint answered that it does not serve the destination (see the module docstring)
        self.waypoint_refused = waypoint_refused


@dataclass(slots=True)
class Route:
    """Where a connection goes: HBONE to a workload (or a waypoint), or plain TCP."""

    dst_ip: IPAddress
    dst_port: int
    workload: Workload | None
    service: Service | None
    hbone: bool
    # through a waypoint: the CONNECT names the original destination, not the waypoint
    via_waypoint: SocketAddr | None = None
    # an endpoint known by name only: `dst_ip` is the original destination until resolved
    hostname: str = ""

    @property
    def hbone_port(self) -> int:
        """Where the tunnel goes: a waypoint's HBONE port, or every agent's 15008."""
        return self.dst_port if self.via_waypoint is not None else HBONE_PORT

    @property
    def authority(self) -> str:
        if self.via_waypoint is not None:
            return str(self.via_waypoint)
        return str(SocketAddr(self.dst_ip, self.dst_port))


def _via_waypoint(
    state: ProxyState,
    waypoint: GatewayAddress,
    original: SocketAddr,
    service: Service | None,
    what: str,
) -> Route:
    """HBONE to the waypoint's 15008 with the original destination as `:authority` (ztunnel's
    outbound steps 2 and 5). A waypoint that cannot be found fails the connection: traffic that
    must be seen by a waypoint never goes around it."""
    picked = state.waypoint_endpoint(waypoint, _rng)
    if picked is None:
        raise OutboundError(f"waypoint of {what} not found (no healthy endpoint)", "CONNECT")
    workload, port = picked
    ip = _address_for(workload, original.ip.version)
    return Route(ip, port, workload, service, True, via_waypoint=original)


def route(
    state: ProxyState,
    dst_ip: IPAddress,
    dst_port: int,
    network: str = "",
    source: Workload | None = None,
) -> Route:
    """Resolve the original destination to an upstream: a service VIP to its waypoint when it
    has one, else to one of its endpoints; a workload IP to its workload waypoint (unless the
    caller is that waypoint) or to that workload; anything else to itself (passthrough)."""
    service = state.service_by_vip(dst_ip, network)
    original = SocketAddr(dst_ip, dst_port)
    if service is not None:
        if service.waypoint is not None and not _is_waypoint_itself(
            state, service.waypoint, source
        ):
            return _via_waypoint(state, service.waypoint, original, service, service.hostname)
        picked = state.select_endpoint(service, dst_port, _rng)
        if picked is None:
            raise OutboundError(f"no healthy upstream for {service.hostname}:{dst_port}", "CONNECT")
        workload, target_port = picked
        if not workload.addresses and workload.hostname:
            return Route(dst_ip, target_port, workload, service, False, hostname=workload.hostname)
        ip = _address_for(workload, dst_ip.version)
        return Route(ip, target_port, workload, service, _is_hbone(workload))
    target = state.workload_by_ip(dst_ip, network)
    if target is None:
        return Route(dst_ip, dst_port, None, None, False)
    if target.waypoint is not None and not _is_waypoint_itself(state, target.waypoint, source):
        return _via_waypoint(state, target.waypoint, original, None, target.name)
    return Route(dst_ip, dst_port, target, None, _is_hbone(target))


def _is_waypoint_itself(
    state: ProxyState, waypoint: GatewayAddress, source: Workload | None
) -> bool:
    """Whether `source` is (one of the pods of) that waypoint: its own traffic never goes back
    to it (ztunnel's `check_from_waypoint`)."""
    if source is None:
        return False
    dest = waypoint.destination
    if isinstance(dest, NamespacedHostname):
        return f"{dest.namespace}/{dest.hostname}" in source.services
    return dest.address in source.addresses


def _is_hbone(workload: Workload) -> bool:
    return workload.tunnel_protocol is TunnelProtocol.HBONE


def _address_for(workload: Workload, version: int) -> IPAddress:
    for ip in workload.addresses:
        if ip.version == version:
            return ip
    if not workload.addresses:
        raise OutboundError(f"workload {workload.uid} has no address", "CONNECT")
    return workload.addresses[0]


def baggage(workload: Workload) -> str:
    """W3C baggage describing a workload, keys as ztunnel sends them (docs/istio-compat.md,
    "CONNECT request")."""
    pairs = [
        ("k8s.cluster.name", workload.cluster_id),
        ("k8s.namespace.name", workload.namespace),
        (f"k8s.{workload.workload_type or 'deployment'}.name", workload.workload_name),
        ("service.name", workload.canonical_name),
        ("service.version", workload.canonical_revision),
    ]
    return ",".join(f"{k}={v}" for k, v in pairs if v)


def traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


Ready = Callable[[OutboundError | None], Awaitable[None]]
# (the source pod's netns, a host name, the preferred IP version) -> an address, or None
HostResolver = Callable[[PodNetns, str, int], Awaitable[IPAddress | None]]


class Outbound:
    """Opens upstreams for the pods of this node; the pool and certificates are per agent."""

    def __init__(
        self,
        state: ProxyState,
        certs: CertificateManager,
        pool: HbonePool,
        metrics: Metrics,
        connect_timeout: timedelta,
        connections: trio.Nursery,
        resolve_host: HostResolver | None = None,
        registry_only: Callable[[], bool] = lambda: False,
    ) -> None:
        self.state = state
        self.resolve_host = resolve_host
        # outboundTrafficPolicy REGISTRY_ONLY, as the mesh config says now
        self.registry_only = registry_only
        self.certs = certs
        self.pool = pool
        self.metrics = metrics
        self.connect_timeout = connect_timeout.total_seconds()
        # HBONE connections outlive the request that dialled them: their tasks live here.
        self.connections = connections

    async def proxy(
        self,
        source: Workload,
        netns: PodNetns,
        client: trio.socket.SocketType,
        dst_ip: IPAddress,
        dst_port: int,
        *,
        ready: Ready | None = None,
        track: Tracker | None = None,
        initial: bytes = b"",
    ) -> None:
        """Carry one client connection to its destination, then close both ends.

        `ready` is told the outcome of opening the upstream before any byte is relayed (SOCKS5
        answers the client then); `initial` holds bytes the client already sent (pipelined
        after its SOCKS5 request), forwarded first.
        """
        peer = client.getpeername()
        client_addr = SocketAddr(canonical_ip(ipaddress.ip_address(peer[0])), peer[1])
        src_text = str(client_addr)
        dst_text = str(SocketAddr(dst_ip, dst_port))
        try:
            if dst_ip.is_loopback and dst_port in POD_LISTENER_PORTS:
                raise OutboundError(f"refusing a self-call to {dst_text}")
            rt = await self._route(source, netns, dst_ip, dst_port)
        except OutboundError as e:
            connection_failed(src_text, dst_text, SOURCE, str(e))
            if ready is not None:
                await ready(e)
            client.close()
            return
        began = time.monotonic()
        hbone: HboneStream | None = None
        tcp: trio.socket.SocketType | None = None
        error: OutboundError | None = None
        try:
            hbone, tcp = await self._open(source, netns, rt, client_addr)
        except OutboundError as e:
            error = e
        if error is not None and error.waypoint_refused:
            await trio.sleep(WAYPOINT_RETRY_DELAY)
            error = None
            try:
                rt = await self._route(source, netns, dst_ip, dst_port)
                hbone, tcp = await self._open(source, netns, rt, client_addr)
            except OutboundError as e:
                error = e
        labels = TrafficLabels.build(
            SOURCE,
            source=source,
            # Over HBONE the agent is about to present the source's certificate.
            source_identity=source.identity if rt.hbone else None,
            destination=rt.workload,
            destination_service=rt.service,
            mtls=rt.hbone,
        )
        upstream_addr = str(SocketAddr(rt.dst_ip, rt.hbone_port if rt.hbone else rt.dst_port))
        conn = self.metrics.open(
            labels, src_text, upstream_addr, rt.authority if rt.hbone else None, started=began
        )
        if error is not None:
            conn.close(error.flag, str(error))
            if ready is not None:
                await ready(error)
            client.close()
            return
        if ready is not None:
            await ready(None)
        untrack = (
            track("outbound", src_text, dst_text, "HBONE" if rt.hbone else "TCP") if track else None
        )

        async def transfer() -> tuple[int, int]:
            if hbone is not None:
                if initial:
                    await hbone.send_all(initial)
                return await relay(SocketByteStream(client), hbone)
            assert tcp is not None
            if initial:
                await SocketByteStream(tcp).send_all(initial)
            return await splice_relay(client, tcp)

        await carry(conn, transfer(), a_is_peer=False, untrack=untrack, already_sent=len(initial))

    async def _route(
        self, source: Workload, netns: PodNetns, dst_ip: IPAddress, dst_port: int
    ) -> Route:
        rt = route(self.state, dst_ip, dst_port, source=source)
        if rt.workload is None and rt.service is None and self.registry_only():
            raise OutboundError(
                f"{SocketAddr(dst_ip, dst_port)} is neither a service nor a workload of the mesh "
                "(outboundTrafficPolicy REGISTRY_ONLY)",
                "DENY",
            )
        if rt.hostname:
            rt.dst_ip = await self._resolve(netns, rt.hostname, dst_ip.version)
        return rt

    async def _open(
        self, source: Workload, netns: PodNetns, rt: Route, client_addr: SocketAddr
    ) -> tuple[HboneStream | None, trio.socket.SocketType | None]:
        """The route's upstream: (an HBONE stream, None) or (None, a TCP socket)."""
        if rt.hbone:
            return await self._open_hbone(source, netns, rt, client_addr), None
        return None, await self._open_tcp(netns, rt)

    async def open_upstream(
        self,
        source: Workload,
        netns: PodNetns,
        workload: Workload,
        ip: IPAddress | None,
        port: int,
        service: Service | None,
    ) -> ByteStream:
        """A byte stream from `source`'s pod to one endpoint, for a proxy that already chose it
        (the sidecar's HTTP engine; `ip` None: the endpoint is known by host name only): an
        HBONE tunnel when the endpoint is in the mesh, else plain TCP. `OutboundError` when it
        cannot be opened."""
        if ip is None:
            ip = await self._resolve(netns, workload.hostname, 4)
        rt = Route(ip, port, workload, service, _is_hbone(workload))
        if rt.hbone:
            return await self._open_hbone(source, netns, rt, None)
        return SocketByteStream(await self._open_tcp(netns, rt))

    async def _resolve(self, netns: PodNetns, hostname: str, version: int) -> IPAddress:
        if self.resolve_host is None:
            raise OutboundError(f"cannot resolve {hostname}: no DNS resolvers configured")
        with trio.move_on_after(self.connect_timeout):
            ip = await self.resolve_host(netns, hostname, version)
            if ip is not None:
                return ip
        raise OutboundError(f"cannot resolve {hostname}", "CONNECT")

    async def _open_tcp(self, netns: PodNetns, rt: Route) -> trio.socket.SocketType:
        try:
            return await netns.connect(
                (str(rt.dst_ip), rt.dst_port), connect_timeout=self.connect_timeout
            )
        except (OSError, trio.TooSlowError) as e:
            raise OutboundError(
                f"cannot connect to {rt.authority}: {e}", refused=isinstance(e, OSError)
            ) from e

    async def _open_hbone(
        self,
        source: Workload,
        netns: PodNetns,
        rt: Route,
        client_addr: SocketAddr | None,
    ) -> HboneStream:
        """A CONNECT stream to the route's workload, on a pooled HBONE connection."""
        assert rt.workload is not None
        src_identity = source.identity
        expected = self.state.upstream_identities(rt.workload, rt.service)
        src_ip = _address_for(source, rt.dst_ip.version)
        upstream = SocketAddr(rt.dst_ip, rt.hbone_port)
        key = PoolKey(src_identity, frozenset(expected), upstream, src_ip, netns.inode)
        try:
            cert = await self.certs.fetch(src_identity)
        except Exception as e:
            raise OutboundError(f"no certificate for {src_identity}: {e}", "IDENTITY_ERROR") from e

        async def dial() -> HboneClientConnection:
            sock = await netns.connect(
                (str(rt.dst_ip), rt.hbone_port), connect_timeout=self.connect_timeout
            )
            return await connect_hbone(
                sock,
                client_context(cert),
                expected_identities=expected,
                verify=verify_server_identity,
                nursery=self.connections,
                not_after=cert.not_after,
            )

        forwarded = [f'for="{client_addr}"'] if client_addr is not None else []
        if rt.service is not None:
            forwarded.append(f"host={rt.service.hostname}")
        headers = [("baggage", baggage(source))]
        if forwarded:
            headers.append(("forwarded", ";".join(forwarded)))
        headers.append(("traceparent", traceparent()))
        try:
            return await self.pool.stream(key, dial, rt.authority, headers)
        except HboneStatusError as e:
            flag = "DENY" if e.status == 401 else "CONNECT"
            raise OutboundError(
                f"upstream answered HTTP {e.status}",
                flag,
                waypoint_refused=e.status == 400 and rt.via_waypoint is not None,
            ) from e
        except trio.TooSlowError as e:
            raise OutboundError(f"timed out connecting to {upstream}") from e
        except HboneHandshakeError as e:
            raise OutboundError(
                f"HBONE handshake with {rt.dst_ip} failed: {e}", "TLS_FAILURE"
            ) from e
        except (HboneError, OSError) as e:
            raise OutboundError(f"cannot connect to {upstream}: {e}") from e
