"""`ztunnel-py waypoint run`: wiring of the L7 proxy on the shared proxy runtime.

The process runs inside its own pod's network namespace (a waypoint pod is never captured by a
node agent: it speaks HBONE itself, as Envoy waypoints do) and:

- gets its certificate (`spiffe://<td>/ns/<ns>/sa/<service account>`) from the CA and its
  configuration over Delta ADS: the workload API (where services and endpoints are) plus our
  L7 types (`HttpService`, `HttpAuthorization`, `HttpAuthentication`), scoped by the control
  plane to its Gateway;
- accepts HBONE on 15008 (TLS 1.3 with a client certificate of the mesh's trust domain; the
  client's identity is the request's source principal). Each CONNECT names where the client was
  going (`:authority` = service VIP:port, or pod IP:port for a workload waypoint). A destination
  this waypoint does not serve is refused (400). A TCP port (app protocol `tcp`/`tls`) is
  proxied at L4 after the L4 part of its policies; every other port runs HTTP/1.1 or HTTP/2
  (prior knowledge) through the filter engine: tracing, user AUTHN filters, JWT authentication
  (RequestAuthentication), user AUTHZ filters, authorization, faults, then routing, retries and
  timeouts, mirroring, with metrics and the access log at the end (and a span, when the
  service's telemetry names a tracing provider: `telemetry/spans.py`); each destination (service,
  subset, port) is a cluster with its DestinationRule traffic policy (load balancing, circuit
  breakers, outlier detection), shown in `/config_dump` (`clusters`);
- opens HBONE (pooled per destination) to the chosen endpoint's node agent with
  `:authority = <pod IP>:<target port>`; the destination agent sees the waypoint's identity.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ztunnel_py.config import AgentConfig
from ztunnel_py.dnsproxy.server import DnsConfigError, UpstreamResolvers, read_nameservers
from ztunnel_py.http.connection import ServerStream, serve_http
from ztunnel_py.http.filter import (
    Downstream,
    Filter,
    FilterChain,
    FilterError,
    LocalReply,
    RequestContext,
    load_filter,
)
from ztunnel_py.http.filters.authz import AuthorizationFilter
from ztunnel_py.http.filters.fault import FaultFilter
from ztunnel_py.http.filters.jwt import JwtAuthnFilter
from ztunnel_py.http.filters.telemetry import TelemetryFilter
from ztunnel_py.http.filters.tracing import TracingFilter
from ztunnel_py.http.mesh import MeshResolver
from ztunnel_py.http.mirror import MirrorOutcome, Mirrors, shadow_authority
from ztunnel_py.http.proxy import HttpProxy
from ztunnel_py.http.upstream import UpstreamPool
from ztunnel_py.identity.tls import (
    client_context,
    server_context,
    verify_client_identity,
    verify_server_identity,
)
from ztunnel_py.model import Identity, IPAddress, Service, TunnelProtocol, Workload
from ztunnel_py.model.address import SocketAddr, canonical_ip
from ztunnel_py.model.http import FilterConfig, FilterPhase
from ztunnel_py.model.ports import HBONE_PORT
from ztunnel_py.model.telemetry import TracingProvider
from ztunnel_py.model.workload import (
    AppProtocol,
    GatewayAddress,
    NamespacedHostname,
    WorkloadStatus,
    pod_uid,
)
from ztunnel_py.policy.rbac import Connection
from ztunnel_py.runtime.proxy import ProxyRuntime, prepare, run_proxy
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.accesslog import connection_failed
from ztunnel_py.telemetry.labels import WAYPOINT, TrafficLabels
from ztunnel_py.telemetry.peererrors import PeerErrors
from ztunnel_py.telemetry.requests import Peer, RequestLabels, RequestMetrics
from ztunnel_py.telemetry.spans import AttributeValue, SpanExporters
from ztunnel_py.transport.hbone import (
    HboneClientConnection,
    HboneError,
    HboneHandshakeError,
    HboneRequest,
    connect_hbone,
    serve_hbone_connection,
)
from ztunnel_py.transport.podsockets import PodNetns
from ztunnel_py.transport.pool import HbonePool, PoolKey
from ztunnel_py.transport.relay import ByteStream, RelayError, SocketByteStream, relay
from ztunnel_py.transport.tls import HandshakeLimit
from ztunnel_py.waypoint.feed import WaypointFeed
from ztunnel_py.xds.convert import WORKLOAD_DECODERS
from ztunnel_py.xds.l7convert import L7_DECODERS

log = logging.getLogger("ztunnel_py.waypoint")
# destination workloads whose telemetry Peer is kept (the dict is emptied past this)
_MAX_PEERS = 4096


class Unavailable(Filter):
    """Stands in for a user filter that cannot be loaded (Istio's FAIL_CLOSE): every request it
    would have seen gets a 500 naming it, rather than skipping a filter that may enforce
    something."""

    name = "unavailable"

    def __init__(self, filter_name: str, reason: str) -> None:
        self.filter_name = filter_name
        self.reason = reason

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        return LocalReply(
            500, f"filter {self.filter_name} unavailable", details="filter_config_not_found"
        )


@dataclass(frozen=True, slots=True)
class WaypointIdentity:
    gateway: str
    namespace: str
    service_account: str
    trust_domain: str
    # this waypoint's own Service hostname, as GatewayAddresses name it
    hostname: str

    @property
    def identity(self) -> Identity:
        return Identity(self.trust_domain, self.namespace, self.service_account)

    def serves(self, waypoint: GatewayAddress | None, own_ips: Sequence[IPAddress]) -> bool:
        """Whether a service's or workload's `waypoint` is this one (hostname or address form)."""
        if waypoint is None:
            return False
        dest = waypoint.destination
        if isinstance(dest, NamespacedHostname):
            return dest.namespace == self.namespace and dest.hostname == self.hostname
        return dest.address in own_ips


def main(args: argparse.Namespace) -> int:
    gateway = args.gateway_name or args.service_account
    prepared = prepare(
        args,
        "waypoint",
        capture=False,
        proxy_type="waypoint",
        node_metadata=(("GATEWAY_NAME", gateway), ("GATEWAY_NAMESPACE", args.pod_namespace)),
    )
    if isinstance(prepared, int):
        return prepared
    config, levels, state = prepared
    me = WaypointIdentity(
        gateway=gateway,
        namespace=args.pod_namespace,
        service_account=args.service_account,
        trust_domain=config.trust_domain,
        hostname=f"{gateway}.{args.pod_namespace}.svc.{args.domain_suffix}",
    )
    try:
        listen = SocketAddr.parse(args.hbone_address, what="--hbone-address")
    except ValueError as e:
        print(f"ztunnel-py waypoint run: {e}", file=sys.stderr)
        return 2
    l7 = L7State()
    waypoint = Waypoint(config, state, l7, me)
    try:
        trio.run(
            lambda: run_proxy(
                config,
                state,
                levels,
                lambda rt: waypoint.start(rt, listen),
                feed=lambda readiness: WaypointFeed(state, l7, readiness),
                decoders={**WORKLOAD_DECODERS, **L7_DECODERS},
            )
        )
    finally:
        # the spans of the last requests
        waypoint.spans.shutdown()
    return 0


async def _dial(ip: IPAddress, port: int) -> trio.socket.SocketType:
    """A TCP connection; the caller bounds the time it may take."""
    sock = trio.socket.socket(trio.socket.AF_INET6 if ip.version == 6 else trio.socket.AF_INET)
    try:
        await sock.connect((str(ip), port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Chains:
    """Filter chains per service, rebuilt when the L7 configuration changes."""

    version: int = -1
    by_service: dict[str, HttpProxy] = field(default_factory=dict)


class Waypoint:
    def __init__(
        self, config: AgentConfig, state: ProxyState, l7: L7State, me: WaypointIdentity
    ) -> None:
        self.config = config
        self.state = state
        self.l7 = l7
        self.me = me
        self._chains = _Chains()
        self._rng = random.Random()
        # id(workload) -> (the workload, its Peer) for the destination's telemetry
        self._destination_peers: dict[int, tuple[Workload, Peer]] = {}
        # Istio names a proxy's spans by its cluster, `<workload>.<namespace>`
        self.spans = SpanExporters(f"{me.gateway}.{me.namespace}", self._collector_addresses)
        # resolving ServiceEntry endpoints known by name, from the waypoint's own netns
        self.own_netns = PodNetns.own()
        self.upstreams_dns: UpstreamResolvers | None = None
        try:
            self.upstreams_dns = UpstreamResolvers(read_nameservers(config.dns_resolv_conf))
        except DnsConfigError as e:
            log.warning("%s: ServiceEntry endpoints known by name cannot be reached", e)

    # --- startup ------------------------------------------------------------------------------

    async def start(self, rt: ProxyRuntime, listen: SocketAddr) -> None:
        self.rt = rt
        self.hbone_pool: HbonePool = rt.pool
        self.handshakes = HandshakeLimit()
        self.peer_errors = PeerErrors(rt.metrics)
        self.upstreams = UpstreamPool(
            rt.nursery, connect_timeout=self.config.connect_timeout.total_seconds()
        )
        self.request_metrics = RequestMetrics(rt.registry)
        self.resolver = MeshResolver(self.state, self.l7, self._connect_endpoint)
        self.mirrors = Mirrors(rt.nursery, self.upstreams, self.resolver, self._record_mirror)
        self.jwt = JwtAuthnFilter(
            lambda ctx: self.l7.jwt_rules_for(ctx.service) if ctx.service else ()
        )
        self.authz = AuthorizationFilter(self._policies)
        self.fault = FaultFilter()
        rt.dump.add_sections(self.l7.dump)
        rt.dump.add_sections(self.resolver.dump)
        rt.dump.add_sections(self.mirrors.dump)
        rt.certs.prefetch(self.me.identity)
        listener = trio.socket.socket(
            trio.socket.AF_INET6 if listen.ip.version == 6 else trio.socket.AF_INET
        )
        listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        if listen.ip.version == 6:
            listener.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 0)
        await listener.bind((str(listen.ip), listen.port))
        listener.listen(1024)
        log.info(
            "waypoint %s/%s (%s) serving HBONE on %s",
            self.me.namespace,
            self.me.gateway,
            self.me.identity,
            listen,
        )
        rt.nursery.start_soon(self._accept, listener)

    async def _accept(self, listener: trio.socket.SocketType) -> None:
        async with trio.open_nursery() as nursery:
            with self.rt.drain.accepting():
                while True:
                    try:
                        sock, _ = await listener.accept()
                    except OSError as e:
                        # out of descriptors or buffers: back off, keep the listener
                        log.warning("accept on 15008 failed: %s", e)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._serve_connection, sock)
            listener.close()

    # --- inbound HBONE ------------------------------------------------------------------------

    async def _serve_connection(self, sock: trio.socket.SocketType) -> None:
        with self.rt.drain.holding():
            peer = sock.getpeername()
            try:
                cert = await self.rt.certs.fetch(self.me.identity)
            except Exception as e:
                connection_failed(
                    str(SocketAddr(peer[0], peer[1])), str(HBONE_PORT), WAYPOINT, str(e)
                )
                sock.close()
                return
            td = self.me.trust_domain
            with contextlib.suppress(HboneHandshakeError):  # reported through `events`
                await serve_hbone_connection(
                    sock,
                    server_context(cert),
                    verify_client=lambda der: verify_client_identity(der, td),
                    handler=self._on_connect,
                    handshakes=self.handshakes,
                    drain=self.rt.drain.started,
                    events=self.peer_errors,
                )

    async def _on_connect(self, req: HboneRequest) -> None:
        peer_ip = canonical_ip(ipaddress.ip_address(req.peer_address[0]))
        peer = str(SocketAddr(peer_ip, req.peer_address[1]))
        try:
            target = SocketAddr.parse(req.authority, what="authority")
        except ValueError:
            connection_failed(peer, req.authority, WAYPOINT, "authority is not IP:PORT")
            await req.respond(400)
            return
        service = self.state.service_by_vip(target.ip)
        workload = None if service is not None else self.state.workload_by_ip(target.ip)
        if not self._serves(service, workload):
            connection_failed(
                peer, req.authority, WAYPOINT, f"{req.authority} is not served by this waypoint"
            )
            await req.respond(400)
            return
        downstream = Downstream(
            peer_identity=req.peer_identity,
            peer_address=peer,
            destination=req.authority,
            baggage=_baggage(req.header("baggage")),
        )
        protocol = service.app_protocol(target.port) if service is not None else AppProtocol.UNKNOWN
        if protocol in (AppProtocol.TCP, AppProtocol.TLS):
            await self._proxy_tcp(req, downstream, service, workload, target, peer_ip)
            return
        stream = await req.respond(200)
        if stream is None:
            return
        proxy = self._proxy_for(service.key if service is not None else "")

        async def handle(s: ServerStream) -> None:
            await proxy.handle(s, downstream)

        await serve_http(stream, handle, idle_timeout=3600.0)

    def _serves(self, service: Service | None, workload: Workload | None) -> bool:
        own = self.state.workload_by_uid(self._own_uid())
        own_ips = own.addresses if own is not None else ()
        if service is not None:
            return self.me.serves(service.waypoint, own_ips)
        return workload is not None and self.me.serves(workload.waypoint, own_ips)

    def _own_uid(self) -> str:
        return pod_uid(self.config.pod_namespace, self.config.pod_name)

    # --- the filter chain -----------------------------------------------------------------------

    def _proxy_for(self, service: str) -> HttpProxy:
        chains = self._chains
        if chains.version != self.l7.version:
            chains.version = self.l7.version
            chains.by_service.clear()
        proxy = chains.by_service.get(service)
        if proxy is None:
            config = self.l7.service(service)
            user = self._user_filters(config.filters if config is not None else ())
            # Istio's WasmPlugin phases: AUTHN before authentication, AUTHZ before
            # authorization, STATS before telemetry, unspecified last, before the router.
            telemetry = config.telemetry if config is not None else None
            tracing = TracingFilter(
                telemetry.tracing if telemetry is not None else None,
                spans=self.spans,
                tags=self._span_tags,
            )
            chain = FilterChain(
                [
                    tracing,
                    *user[FilterPhase.AUTHN],
                    self.jwt,
                    *user[FilterPhase.AUTHZ],
                    self.authz,
                    self.fault,
                    *user[FilterPhase.STATS],
                    TelemetryFilter(
                        self.request_metrics,
                        reporter=WAYPOINT,
                        source=self._source_peer,
                        destination=self._destination_peer,
                        service=self._service_of,
                        config=telemetry,
                    ),
                    *user[FilterPhase.UNSPECIFIED],
                ]
            )
            proxy = chains.by_service[service] = HttpProxy(
                chain, self.resolver, self.upstreams, mirrors=self.mirrors
            )
        return proxy

    def _user_filters(self, configs: Sequence[FilterConfig]) -> dict[FilterPhase, list[Filter]]:
        """The service's user filters by phase; the control plane sent them in chain order."""
        out: dict[FilterPhase, list[Filter]] = {phase: [] for phase in FilterPhase}
        for fc in configs:
            try:
                made: Filter = load_filter(fc.name, fc.config)
            except FilterError as e:
                if fc.fail_open:
                    log.error("skipping HTTP filter %s (%s, fail open): %s", fc.name, fc.origin, e)
                    continue
                log.error(
                    "HTTP filter %s (%s) unavailable, failing closed: %s", fc.name, fc.origin, e
                )
                made = Unavailable(fc.name, str(e))
            out[fc.phase].append(made)
        return out

    def _policies(self, ctx: Any) -> Any:
        return self.l7.policies_for(ctx.service) if ctx.service else None

    def _service_of(self, ctx: RequestContext) -> Service | None:
        return self.state.service_by_key(ctx.service) if ctx.service else None

    def _source_peer(self, ctx: Any) -> Peer:
        # the same for every request of a connection while the workload state stays the same
        down: Downstream = ctx.downstream
        version = self.state.version
        known = down.state.get("source_peer")
        if known is not None and known[0] == version:
            peer: Peer = known[1]
            return peer
        if down.baggage:
            peer = Peer.from_baggage(dict(down.baggage), down.peer_identity)
        else:
            host = SocketAddr.parse(down.peer_address).ip
            peer = Peer.of(self.state.workload_by_ip(host), down.peer_identity)
        down.state["source_peer"] = (version, peer)
        return peer

    def _record_mirror(self, ctx: Any, outcome: MirrorOutcome) -> None:
        """A mirrored copy in the request metrics, under the shadow host (`-shadow`) so the
        service's own counts stay the clients' requests (see `http/mirror.py`)."""
        info = outcome.target.info
        service = self.state.service_by_key(ctx.service) if ctx.service else None
        # the copy's own authority already carries the suffix
        host = shadow_authority(service.hostname) if service is not None else ctx.request.authority
        labels = RequestLabels(
            reporter=WAYPOINT,
            source=self._source_peer(ctx),
            destination=Peer.of(info if isinstance(info, Workload) else None, None),
            service=None,
            service_host=host,
            request_protocol="http",
            response_code=outcome.status,
            grpc_response_status="",
            response_flags="-",
            mtls=ctx.downstream.peer_identity is not None,
        )
        self.request_metrics.record(
            labels, outcome.duration_ms, outcome.request_bytes, outcome.response_bytes
        )

    def _destination_peer(self, ctx: Any) -> Peer:
        workload = ctx.upstream_info if isinstance(ctx.upstream_info, Workload) else None
        if workload is None:
            return Peer.of(None, None)
        # workloads are immutable: each one's Peer is made once (kept by identity, as hashing a
        # workload would cost more than making its Peer)
        known = self._destination_peers.get(id(workload))
        if known is not None and known[0] is workload:
            return known[1]
        if len(self._destination_peers) > _MAX_PEERS:
            self._destination_peers.clear()
        peer = Peer.of(workload, None)
        self._destination_peers[id(workload)] = (workload, peer)
        return peer

    # --- tracing --------------------------------------------------------------------------------

    def _span_tags(self, ctx: RequestContext) -> dict[str, AttributeValue]:
        """istiod's tags of a waypoint's spans: the waypoint's own, and the peers'."""
        tags: dict[str, AttributeValue] = {
            "istio.canonical_service": self.me.gateway,
            "istio.canonical_revision": "latest",
            "istio.mesh_id": self.me.trust_domain,
            "istio.namespace": self.me.namespace,
            "istio.cluster_id": self.config.cluster_id,
        }
        for side, peer in (
            ("source", self._source_peer(ctx)),
            ("destination", self._destination_peer(ctx)),
        ):
            tags[f"istio.{side}_workload"] = peer.workload
            tags[f"istio.{side}_namespace"] = peer.namespace
            tags[f"istio.{side}_principal"] = peer.principal
            tags[f"istio.{side}_canonical_service"] = peer.canonical_service
            tags[f"istio.{side}_canonical_revision"] = peer.canonical_revision
            tags[f"istio.{side}_app"] = peer.app
            tags[f"istio.{side}_app_version"] = peer.version
            tags[f"istio.{side}_cluster_id"] = peer.cluster
        return tags

    def _collector_addresses(self, provider: TracingProvider) -> list[str]:
        """Where a tracing provider's collector is: its service's endpoints (the waypoint is
        not captured, so it dials a pod, not a service address), else the host as written."""
        service = self.state.service_by_key(provider.service)
        if service is None:
            host = provider.service.partition("/")[2] or provider.service
            return [str(SocketAddr.parse(f"{host}:{provider.port}", hostname=True))]
        out = []
        for workload, port in self.state.endpoints(service, provider.port):
            if workload.status is WorkloadStatus.HEALTHY and workload.addresses:
                out.append(str(SocketAddr(workload.addresses[0], port)))
        if not out and not service.vips:
            out.append(f"{service.hostname}:{provider.port}")
        return sorted(out)

    # --- upstream -------------------------------------------------------------------------------

    async def _connect_endpoint(
        self, workload: Workload, ip: IPAddress | None, port: int, service: Service | None
    ) -> ByteStream:
        """An HBONE tunnel to `ip:port` through the endpoint's node agent, pooled; plain TCP
        to an endpoint outside the mesh (a ServiceEntry's), whose host name (`ip` None) is
        resolved first."""
        timeout = self.config.connect_timeout.total_seconds()
        if ip is None:
            with trio.move_on_after(timeout):
                ip = await self._resolve(workload.hostname)
            if ip is None:
                raise OSError(f"cannot resolve {workload.hostname} in time")
        address = ip
        if workload.tunnel_protocol is not TunnelProtocol.HBONE:
            try:
                with trio.fail_after(timeout):
                    return SocketByteStream(await _dial(address, port))
            except trio.TooSlowError as e:
                raise OSError(f"timed out connecting to {SocketAddr(address, port)}") from e
        cert = await self.rt.certs.fetch(self.me.identity)
        expected = self.state.upstream_identities(workload, service)
        upstream = SocketAddr(address, HBONE_PORT)
        key = PoolKey(self.me.identity, frozenset(expected), upstream, None)

        async def dial() -> HboneClientConnection:
            with trio.fail_after(timeout):
                sock = await _dial(address, HBONE_PORT)
            return await connect_hbone(
                sock,
                client_context(cert),
                expected_identities=expected,
                verify=verify_server_identity,
                nursery=self.rt.nursery,
                not_after=cert.not_after,
            )

        try:
            return await self.hbone_pool.stream(key, dial, str(SocketAddr(address, port)), ())
        except (HboneError, trio.TooSlowError) as e:
            raise OSError(f"HBONE to {upstream} failed: {e}") from e

    async def _resolve(self, hostname: str) -> IPAddress:
        """A ServiceEntry endpoint's address, by name, from this pod's resolvers."""
        if self.upstreams_dns is None:
            raise OSError(f"cannot resolve {hostname}: no DNS resolvers configured")
        ip = await self.upstreams_dns.resolve_host(self.own_netns, hostname, 4)
        if ip is None:
            raise OSError(f"cannot resolve {hostname}")
        return ip

    async def _proxy_tcp(
        self,
        req: HboneRequest,
        downstream: Downstream,
        service: Service | None,
        workload: Workload | None,
        target: SocketAddr,
        peer_ip: IPAddress,
    ) -> None:
        """A TCP port: the L4 part of the waypoint's policies, then bytes both ways."""
        key = service.key if service is not None else ""
        policies = self.l7.policies_for(key)
        decision = policies.evaluate(Connection(peer_ip, req.peer_identity, target.ip, target.port))
        labels = TrafficLabels.build(
            WAYPOINT,
            source=self.state.workload_by_ip(peer_ip),
            source_identity=req.peer_identity,
            destination=workload,
            destination_service=service,
            mtls=True,
        )
        conn = self.rt.metrics.open(labels, downstream.peer_address, str(target), req.authority)
        if not decision.allowed:
            conn.close("DENY", decision.reason)
            await req.respond(401)
            return
        picked = None
        if service is not None:
            found = self.state.select_endpoint(service, target.port, self._rng)
            if found is not None:
                picked = found
        elif workload is not None:
            picked = (workload, target.port)
        if picked is None:
            conn.close("CONNECT", f"no healthy upstream for {req.authority}")
            await req.respond(503)
            return
        endpoint, port = picked
        # IPv4 first; none for an endpoint known by name (resolved on connecting)
        ip = next(
            (a for a in endpoint.addresses if a.version == 4),
            endpoint.addresses[0] if endpoint.addresses else None,
        )
        try:
            upstream = await self._connect_endpoint(endpoint, ip, port, service)
        except OSError as e:
            conn.close("CONNECT", str(e))
            await req.respond(503)
            return
        stream = await req.respond(200)
        if stream is None:
            await upstream.aclose()
            conn.close("CONNECT", "the client went away")
            return
        started = time.monotonic()
        try:
            sent, received = await relay(stream, upstream)
            conn.add_bytes(sent=received, recv=sent)
            conn.close()
        except RelayError as e:
            conn.close("CONNECT", f"relay failed after {time.monotonic() - started:.1f}s: {e}")


def _baggage(header: str | None) -> dict[str, str]:
    """W3C baggage members (`k=v,k=v`) as a dict; malformed members are skipped."""
    out: dict[str, str] = {}
    for member in (header or "").split(","):
        key, sep, value = member.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.split(";", 1)[0].strip()
    return out
