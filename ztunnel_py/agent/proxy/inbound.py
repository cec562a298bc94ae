"""Inbound: HBONE on 15008 and plaintext on 15006, into one enrolled pod's application.

HBONE, as ztunnel does it: TLS with the pod's certificate and a required client certificate
from our trust domain, then per CONNECT: the authority must name this pod (400 otherwise), L4
authorization (401), a connection to the application (503 if it fails), and only then 200 and
the byte relay. Plaintext: the original destination is the accepted socket's local address (with
BPF capture) or its SO_ORIGINAL_DST (behind a sidecar's iptables REDIRECT);
authorization runs with no peer identity, so STRICT mTLS denies it. Anyone who reaches the pod
can open plaintext connections, so one with no byte either way for `plaintext_idle_timeout`
(1 h by default, Envoy's TCP idle timeout) is closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import trio

from ztunnel_py.agent.proxy.accounting import Tracker, carry_enforced
from ztunnel_py.agent.proxy.policies import PolicyCompiler
from ztunnel_py.identity.manager import CertificateManager
from ztunnel_py.identity.tls import server_context, verify_client_identity
from ztunnel_py.model import IPAddress, Service, SocketAddr, Workload
from ztunnel_py.model.address import canonical_ip
from ztunnel_py.model.ports import HBONE_PORT, POD_LISTENER_PORTS
from ztunnel_py.policy.rbac import Connection, Decision
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.accesslog import connection_failed
from ztunnel_py.telemetry.labels import TrafficLabels
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.telemetry.peererrors import PeerErrors
from ztunnel_py.transport.hbone import (
    HboneHandshakeError,
    HboneRequest,
    HboneStreamError,
    serve_hbone_connection,
)
from ztunnel_py.transport.podsockets import PodNetns, local_destination
from ztunnel_py.transport.relay import SocketByteStream, relay, splice_relay
from ztunnel_py.transport.tls import HandshakeLimit

log = logging.getLogger("ztunnel_py.inbound")

DESTINATION = "destination"


def authority_target(authority: str) -> tuple[IPAddress, int] | None:
    """The IP and port a CONNECT authority names; None for hostnames and malformed input."""
    try:
        target = SocketAddr.parse(authority, what="authority")
    except ValueError:
        return None
    return target.ip, target.port


def _not_opened(error: BaseException) -> str:
    """Why a tunnel never opened, for the access log."""
    if isinstance(error, trio.Cancelled):
        return "the client reset the stream or closed the connection before the tunnel opened"
    if isinstance(error, HboneStreamError):
        return f"the client went away before the tunnel opened: {error}"
    return f"the tunnel could not open: {error}"


class Inbound:
    """The inbound side of one enrolled pod."""

    def __init__(
        self,
        pod_uid: str,
        netns: PodNetns,
        state: ProxyState,
        certs: CertificateManager,
        metrics: Metrics,
        trust_domain: str,
        connect_timeout: timedelta,
        workload_wait: timedelta,
        track: Tracker,
        preserve_source: bool,
        original_destination: Callable[[trio.socket.SocketType], tuple[str, int]] = (
            local_destination
        ),
        drain: trio.Event | None = None,
        plaintext_idle_timeout: timedelta | None = None,
        handshakes: HandshakeLimit | None = None,
        peer_errors: PeerErrors | None = None,
        policies: PolicyCompiler | None = None,
    ) -> None:
        self.pod_uid = pod_uid
        # The agent's policy compiles (off the event loop), shared by every pod.
        self.policies = policies if policies is not None else PolicyCompiler(state)
        # The agent's bound on TLS handshakes in progress, shared by every pod.
        self.handshakes = handshakes
        # The agent's record of what misbehaving clients did (rate-limited), shared too.
        self.peer_errors = peer_errors
        # Set when the process drains: HBONE connections GOAWAY and end with their streams.
        self.drain = drain
        # Bind upstream sockets to the client's IP so the app sees it; only with capture on,
        # whose egress program brings the app's replies back to the agent.
        self.preserve_source = preserve_source
        self.netns = netns
        self.state = state
        self.certs = certs
        self.metrics = metrics
        self.trust_domain = trust_domain
        self.connect_timeout = connect_timeout.total_seconds()
        self.workload_wait = workload_wait.total_seconds()
        self.track = track
        self.original_destination = original_destination
        self.plaintext_idle_timeout = (
            plaintext_idle_timeout.total_seconds() if plaintext_idle_timeout else None
        )

    async def _connect_app(
        self, src_ip: IPAddress, dst_ip: IPAddress, port: int
    ) -> trio.socket.SocketType:
        spoof = self.preserve_source and src_ip != dst_ip and src_ip.version == dst_ip.version
        return await self.netns.connect(
            (str(dst_ip), port),
            bind_ip=str(src_ip) if spoof else None,
            connect_timeout=self.connect_timeout,
        )

    async def _authorize(self, workload: Workload, authz: Connection, what: str) -> Decision:
        """Evaluate the workload's policies; log denials and what dry-run policies would do."""
        decision = (await self.policies.policies_for(workload)).evaluate(authz)
        for dry in decision.dry_run_matches:
            log.info("dry-run policy %s would %s %s", dry.policy_key, dry.action.name, what)
        if not decision.allowed:
            log.info("denied %s: %s", what, decision.reason)
        return decision

    def _judged_now(self, workload: Workload, authz: Connection) -> Callable[[], Awaitable[bool]]:
        """Call right after `_authorize`: whether the connection is still allowed later, once it
        is tracked. Unchanged state keeps the decision; after a change it is judged again, by
        the current policies of the pod's current workload."""
        judged_at = self.state.version

        async def still_allowed() -> bool:
            if self.state.version == judged_at:
                return True
            current = self.state.workload_by_uid(workload.uid) or workload
            decision = (await self.policies.policies_for(current)).evaluate(authz)
            if not decision.allowed:
                log.info("denied after a policy change: %s (%s)", authz, decision.reason)
            return decision.allowed

        return still_allowed

    async def workload(self) -> Workload:
        """This pod's workload; waits briefly for the state to learn it after enrollment."""
        with trio.move_on_after(self.workload_wait):
            while True:
                w = self.state.workload_by_uid(self.pod_uid)
                if w is not None:
                    return w
                await trio.sleep(0.05)
        raise LookupError(f"pod {self.pod_uid} is enrolled but unknown to the mesh state")

    # --- HBONE (15008) -------------------------------------------------------------------------

    async def serve_hbone(self, sock: trio.socket.SocketType) -> None:
        peer = sock.getpeername()
        try:
            workload = await self.workload()
            cert = await self.certs.fetch(workload.identity)
        except Exception as e:
            connection_failed(str(SocketAddr(*peer[:2])), str(HBONE_PORT), DESTINATION, str(e))
            sock.close()
            return
        td = workload.trust_domain or self.trust_domain

        async def on_request(req: HboneRequest) -> None:
            await self._on_connect(workload, req, peer)

        with contextlib.suppress(HboneHandshakeError):  # reported through `events`
            await serve_hbone_connection(
                sock,
                server_context(cert),
                verify_client=lambda der: verify_client_identity(der, td),
                handler=on_request,
                handshakes=self.handshakes,
                drain=self.drain,
                events=self.peer_errors,
            )

    async def _on_connect(
        self, workload: Workload, req: HboneRequest, peer: tuple[str, int]
    ) -> None:
        src_ip = canonical_ip(ipaddress.ip_address(peer[0]))
        src_addr = str(SocketAddr(src_ip, peer[1]))
        target = authority_target(req.authority)
        if target is None:
            connection_failed(src_addr, req.authority, DESTINATION, "malformed authority")
            await req.respond(400)
            return
        dst_ip, dst_port = target
        if dst_ip not in workload.addresses or dst_port in POD_LISTENER_PORTS:
            connection_failed(
                src_addr, req.authority, DESTINATION, f"authority {req.authority} is not this pod"
            )
            await req.respond(400)
            return
        source = self.state.workload_by_ip(src_ip)
        labels = TrafficLabels.build(
            DESTINATION,
            source=source,
            source_identity=req.peer_identity,
            destination=workload,
            destination_service=self._guess_service(workload, dst_port),
            mtls=True,
        )
        conn = self.metrics.open(
            labels, src_addr, str(SocketAddr(dst_ip, HBONE_PORT)), req.authority
        )
        authz = Connection(src_ip, req.peer_identity, dst_ip, dst_port)
        app: trio.socket.SocketType | None = None
        # Until the tunnel opens, whatever ends the request (an answer, the client resetting the
        # stream, which cancels this task, or its connection closing) closes the app socket and
        # the connection's books: counted and logged once.
        try:
            decision = await self._authorize(
                workload, authz, f"{req.peer_identity} -> {req.authority}"
            )
            still_allowed = self._judged_now(workload, authz)
            if not decision.allowed:
                conn.close("DENY", decision.reason)
                await req.respond(401)
                return
            try:
                app = await self._connect_app(src_ip, dst_ip, dst_port)
            except (OSError, trio.TooSlowError) as e:
                conn.close("CONNECT", f"cannot connect to {req.authority}: {e}")
                await req.respond(503)
                return
            stream = await req.respond(200)
        except BaseException as e:
            if app is not None:
                app.close()
            conn.close("CONNECT", _not_opened(e))
            raise
        assert stream is not None and app is not None
        await carry_enforced(
            conn,
            relay(stream, SocketByteStream(app)),
            self.track,
            ("inbound", src_addr, req.authority, "HBONE"),
            authz,
            still_allowed,
        )

    def _guess_service(self, workload: Workload, port: int) -> Service | None:
        for key, ports in workload.services.items():
            if port in ports.values():
                return self.state.service_by_key(key)
        return None

    # --- plaintext (15006) ---------------------------------------------------------------------

    async def serve_plaintext(self, sock: trio.socket.SocketType) -> None:
        peer = sock.getpeername()
        local = self.original_destination(sock)
        src_ip = canonical_ip(ipaddress.ip_address(peer[0]))
        dst_ip = canonical_ip(ipaddress.ip_address(local[0]))
        src_addr, dst_addr = str(SocketAddr(src_ip, peer[1])), str(SocketAddr(dst_ip, local[1]))
        try:
            workload = await self.workload()
        except LookupError as e:
            connection_failed(src_addr, dst_addr, DESTINATION, str(e))
            sock.close()
            return
        if local[1] in POD_LISTENER_PORTS:
            connection_failed(src_addr, dst_addr, DESTINATION, "self-call refused")
            sock.close()
            return
        source = self.state.workload_by_ip(src_ip)
        labels = TrafficLabels.build(
            DESTINATION,
            source=source,
            destination=workload,
            destination_service=self._guess_service(workload, local[1]),
        )
        conn = self.metrics.open(labels, src_addr, dst_addr)
        authz = Connection(src_ip, None, dst_ip, local[1])
        try:
            decision = await self._authorize(workload, authz, f"plaintext {src_addr} -> {dst_addr}")
            still_allowed = self._judged_now(workload, authz)
        except BaseException as e:
            sock.close()
            conn.close("CONNECT", _not_opened(e))
            raise
        if not decision.allowed:
            sock.close()
            conn.close("DENY", decision.reason)
            return
        try:
            app = await self._connect_app(src_ip, dst_ip, local[1])
        except (OSError, trio.TooSlowError) as e:
            sock.close()
            conn.close("CONNECT", f"cannot connect to {dst_addr}: {e}")
            return
        await carry_enforced(
            conn,
            splice_relay(sock, app, idle_timeout=self.plaintext_idle_timeout),
            self.track,
            ("inbound", src_addr, dst_addr, "TCP"),
            authz,
            still_allowed,
        )
