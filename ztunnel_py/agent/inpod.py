"""In-pod proxies: one set of listeners per enrolled pod, inside that pod's network namespace.

The enrollment server hands each pod's netns fd to the `PodManager`, which opens the pod's
listeners there (15008 HBONE, 15006 plaintext, 15001 outbound, 15080 SOCKS5 on 127.0.0.1) and
serves them until the pod is unenrolled. An Add for a known pod with the same netns is a no-op;
with a different netns (the sandbox was recreated) the old proxy is drained and replaced.

Only a Del for the pod, or its network namespace being gone, takes a pod's capture off. A
snapshot that leaves out a pod whose namespace is still in use (a named namespace or a process
in it) keeps the pod enrolled and says so in the log: removing the capture of a running pod
would send its traffic across the network in clear. (Istio keeps a pod's redirection when
ztunnel drops it, so there the traffic fails closed; here the agent owns the capture.)

Every listener counts its open connections against its own cap and the agent's
(`--max-connections-per-listener`, `--max-connections`; `transport/accept.py` resets what is
over a cap and rides out a process out of descriptors).

A sidecar proxy (`sidecar.py`) uses the same manager for its one pod, with `redirected=True`:
iptables REDIRECT brings the pod's connections to ordinary (not transparent) listeners and the
original destination comes from SO_ORIGINAL_DST; nothing is persisted (`persist=False`).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from ztunnel_py.agent import persist
from ztunnel_py.agent.enroll import EnrollRefused
from ztunnel_py.agent.proxy.accounting import POLICY_CHANGE
from ztunnel_py.agent.proxy.http import SidecarHttp
from ztunnel_py.agent.proxy.inbound import Inbound
from ztunnel_py.agent.proxy.outbound import Outbound, Ready
from ztunnel_py.agent.proxy.policies import PolicyCompiler
from ztunnel_py.agent.proxy.socks5 import serve_socks5
from ztunnel_py.config import AgentConfig
from ztunnel_py.dnsproxy.server import DnsProxy, PodDns
from ztunnel_py.identity.manager import CertificateManager
from ztunnel_py.linux.netns import NetnsError
from ztunnel_py.model.address import IPAddress, SocketAddr, canonical_ip
from ztunnel_py.model.ports import (
    CAPTURE_PORTS,
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT,
    SOCKS5_PORT,
)
from ztunnel_py.policy.rbac import Connection
from ztunnel_py.protocol.zds import PodInfo
from ztunnel_py.redirect.maps import PodCounters, PodSettings, RedirectError
from ztunnel_py.runtime.drain import Drain
from ztunnel_py.state.mesh import ProxyState, StateChange
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.telemetry.peererrors import PeerErrors
from ztunnel_py.telemetry.requests import RequestMetrics
from ztunnel_py.transport.accept import ConnectionLimit, serve_connections
from ztunnel_py.transport.podsockets import (
    PodNetns,
    local_destination,
    original_destination,
)
from ztunnel_py.transport.tls import HandshakeLimit

log = logging.getLogger("ztunnel_py.inpod")


@dataclass(slots=True)
class TrackedConnection:
    direction: str
    src: str
    original_dst: str
    protocol: str
    # inbound only: what authorization judged, and how to close the connection
    authz: Connection | None = None
    scope: trio.CancelScope | None = None


class Capture(Protocol):
    """Transparent capture of a pod's traffic (the BPF `Redirector`); blocking calls."""

    def pod_interface(self, netns_fd: int) -> tuple[str, list[str]]:
        """The pod's default-route interface and its IPs."""
        ...

    def enroll(
        self, netns_fd: int, ifname: str, pod_ips: Sequence[str], settings: PodSettings
    ) -> int: ...

    def register_listener(self, pod_id: int, port: int, listener_fd: int) -> None: ...

    def register_dns_listener(self, pod_id: int, listener_fd: int, ipv6: bool) -> None: ...

    def unenroll(self, netns_fd: int, ifname: str) -> None: ...

    def forget(self, pod_id: int) -> None: ...

    def enrolled_pods(self) -> set[int]: ...

    def all_counters(self) -> dict[int, PodCounters]: ...


@dataclass(slots=True)
class PodProxy:
    info: PodInfo
    netns: PodNetns
    ifname: str = ""
    pod_id: int | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    state: str = "Pending"
    connections: dict[int, TrackedConnection] = field(default_factory=dict)
    # sidecar mode: the HTTP engine for outbound HTTP ports
    http: SidecarHttp | None = None
    # the pod's DNS proxy (with DNS capture on)
    dns: PodDns | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def track(
        self,
        direction: str,
        src: str,
        dst: str,
        protocol: str,
        authz: Connection | None = None,
        scope: trio.CancelScope | None = None,
    ) -> Callable[[], None]:
        key = next(self._ids)
        self.connections[key] = TrackedConnection(direction, src, dst, protocol, authz, scope)

        def untrack() -> None:
            self.connections.pop(key, None)

        return untrack

    def dump(self, trust_domain: str) -> dict[str, Any]:
        conns: dict[str, list[dict[str, str]]] = {"inbound": [], "outbound": []}
        for c in self.connections.values():
            conns[c.direction].append(
                {
                    "src": c.src,
                    "originalDst": c.original_dst,
                    "actualDst": c.original_dst,
                    "protocol": c.protocol,
                }
            )
        return {
            "state": self.state,
            "connections": conns,
            "info": {
                "name": self.info.name,
                "namespace": self.info.namespace,
                "trustDomain": trust_domain,
                "serviceAccount": self.info.service_account,
            },
        }


class PodManager:
    """Starts and stops per-pod proxies; the enrollment server's handler."""

    def __init__(
        self,
        config: AgentConfig,
        state: ProxyState,
        certs: CertificateManager,
        outbound: Outbound,
        metrics: Metrics,
        nursery: trio.Nursery,
        drain: Drain,
        capture: Capture | None,
        *,
        redirected: bool = False,
        persist: bool = True,
        request_metrics: RequestMetrics | None = None,
        dns: DnsProxy | None = None,
    ) -> None:
        """With `request_metrics` (sidecar mode), outbound connections to HTTP service ports
        go through the HTTP filter engine (`proxy/http.py`) instead of being relayed. With
        `dns`, every pod gets a DNS proxy and its port-53 traffic is captured into it."""
        self.config = config
        self.request_metrics = request_metrics
        self.capture = capture
        self.redirected = redirected
        self.original_destination = original_destination if redirected else local_destination
        self.persist = persist
        self.state = state
        self.certs = certs
        self.outbound = outbound
        self.metrics = metrics
        self.nursery = nursery
        self.drain = drain
        self.dns = dns
        self.pods: dict[str, PodProxy] = {}
        self.connections = ConnectionLimit("the agent", config.max_connections)
        self.handshakes = HandshakeLimit()
        self.peer_errors = PeerErrors(metrics)
        self.policies = PolicyCompiler(state)
        self._changed = trio.Event()
        state.subscribe(self._on_change)
        nursery.start_soon(self._recheck)

    def _on_change(self, change: StateChange) -> None:
        if change.policies or change.workloads:
            self._changed.set()

    async def _recheck(self) -> None:
        """After each change: compile every enrolled pod's policies (in a worker thread, so the
        next connection finds them ready), then close the open inbound connections they deny
        (late enforcement)."""
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            for pod in list(self.pods.values()):
                await self._recheck_pod(pod)

    async def _recheck_pod(self, pod: PodProxy) -> None:
        workload = self.state.workload_by_uid(pod.info.uid)
        if workload is not None:
            policies = await self.policies.policies_for(workload)
            for tracked in list(pod.connections.values()):
                if tracked.authz is None or tracked.scope is None:
                    continue
                decision = policies.evaluate(tracked.authz)
                if not decision.allowed:
                    log.info(
                        "closing %s -> %s: %s (%s)",
                        tracked.src,
                        tracked.original_dst,
                        POLICY_CHANGE,
                        decision.reason,
                    )
                    tracked.scope.cancel()

    # --- EnrollHandler ---------------------------------------------------------------------

    async def add_pod(self, info: PodInfo, netns_fd: int) -> None:
        await self.add(info, PodNetns(netns_fd, self.config.packet_mark))

    async def add(self, info: PodInfo, netns: PodNetns) -> None:
        """Start the pod's proxy in `netns` (which it then owns); EnrollRefused if it cannot."""
        existing = self.pods.get(info.uid)
        if existing is not None:
            if existing.netns.inode == netns.inode:
                netns.close()
                return
            log.info("pod %s has a new network namespace; replacing its proxy", info.uid)
            await self._remove(self.pods.pop(info.uid))
        pod = PodProxy(info, netns)
        if self.request_metrics is not None:
            pod.http = SidecarHttp(
                info.uid,
                netns,
                self.state,
                self.outbound,
                self.request_metrics,
                self.nursery,
                self.config.connect_timeout.total_seconds(),
            )
        try:
            listeners = self._listeners(netns)
        except NetnsError as e:
            netns.close()
            raise EnrollRefused(f"cannot start proxy for {info.uid}: {e}") from e
        if self.dns is not None:
            pod.dns = PodDns(self.dns, netns, partial(self.state.workload_by_uid, info.uid))
            try:
                pod.dns.open()
            except NetnsError as e:
                for s in listeners.values():
                    s.close()
                netns.close()
                raise EnrollRefused(f"cannot start the DNS proxy of {info.uid}: {e}") from e
        try:
            await self._capture(pod, listeners)
        except Exception as e:
            for s in listeners.values():
                s.close()
            if pod.dns is not None:
                pod.dns.close()
            netns.close()
            if not isinstance(e, (RedirectError, OSError)):
                # Not a refusal the kernel or the maps explained: a defect. Its traceback goes
                # to the agent's log and its type into the refusal, or it is untraceable.
                log.exception("pod %s: capture setup failed unexpectedly", info.uid)
                raise EnrollRefused(
                    f"cannot capture traffic of {info.uid}: {type(e).__name__}: {e}"
                ) from e
            raise EnrollRefused(f"cannot capture traffic of {info.uid}: {e}") from e
        self.pods[info.uid] = pod
        self._persist()
        self.nursery.start_soon(self._run, pod, listeners)
        workload = self.state.workload_by_uid(info.uid)
        if workload is not None:
            self.certs.prefetch(workload.identity)
        self.metrics.proxy_started()
        self._update_counts()
        log.info("enrolled pod %s (%s/%s)", info.uid, info.namespace, info.name)

    async def _capture(self, pod: PodProxy, listeners: dict[int, trio.socket.SocketType]) -> None:
        # Listeners exist before the programs are attached: captured traffic never finds the
        # pod without its proxy (and would be dropped, not leaked, if it did).
        if self.capture is None:
            return
        capture = self.capture
        ifname, ips = await trio.to_thread.run_sync(capture.pod_interface, pod.netns.fd)
        pod.ifname = ifname
        settings = PodSettings(dns_capture=pod.dns is not None)
        pod.pod_id = await trio.to_thread.run_sync(
            capture.enroll, pod.netns.fd, ifname, ips, settings
        )
        for port in CAPTURE_PORTS:
            capture.register_listener(pod.pod_id, port, listeners[port].fileno())
        for listener in pod.dns.tcp if pod.dns is not None else ():
            ipv6 = listener.family == socket.AF_INET6
            capture.register_dns_listener(pod.pod_id, listener.fileno(), ipv6)

    async def _remove(self, pod: PodProxy) -> None:
        """Stop the pod's proxy and take its capture programs off (best effort: the pod's
        netns may already be gone, and then its map entries are forgotten)."""
        if self.capture is not None and pod.pod_id is not None:
            capture, pod_id = self.capture, pod.pod_id
            try:
                await trio.to_thread.run_sync(capture.unenroll, pod.netns.fd, pod.ifname)
            except Exception as e:
                log.info("pod %s: removing capture failed (%s); forgetting it", pod.info.uid, e)
                await trio.to_thread.run_sync(capture.forget, pod_id)
        self._stop(pod)
        await self.outbound.pool.release(pod.netns.inode)

    async def restore(self) -> None:
        """Re-enroll the pods this agent had before it restarted (their netns still exist)."""
        saved = persist.load(self.config.state_dir)
        paths = persist.find_netns({(p.netns_dev, p.netns_ino) for p in saved})
        for entry in saved:
            path = paths.get((entry.netns_dev, entry.netns_ino))
            if path is None:
                log.info("pod %s: network namespace gone; not re-enrolled", entry.uid)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                await self.add_pod(entry.info, fd)
            except (OSError, EnrollRefused) as e:
                log.error("pod %s: re-enrollment after restart failed: %s", entry.uid, e)
        if self.capture is not None:
            known = {p.pod_id for p in self.pods.values()}
            for stale in self.capture.enrolled_pods() - known:
                await trio.to_thread.run_sync(self.capture.forget, stale)
        self._persist()
        log.info("restored %d of %d previously enrolled pods", len(self.pods), len(saved))

    def _persist(self) -> None:
        if not self.persist:
            return
        persist.save(
            self.config.state_dir,
            [
                persist.EnrolledPod(
                    p.info.uid,
                    p.info.name,
                    p.info.namespace,
                    p.info.service_account,
                    *p.netns.inode,
                )
                for p in self.pods.values()
            ],
        )

    async def del_pod(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is None:
            raise EnrollRefused(f"unknown pod {uid}: not enrolled on this node")
        await self._remove(pod)
        self._persist()
        log.info("unenrolled pod %s", uid)

    async def snapshot_sent(self, named: frozenset[str]) -> None:
        """Reconcile with the enrolling side's snapshot: a pod it did not name is removed only
        if its network namespace is gone (see the module doc)."""
        missing = {uid: pod for uid, pod in self.pods.items() if uid not in named}
        if not missing:
            return
        wanted = {pod.netns.inode for pod in missing.values()}
        running = await trio.to_thread.run_sync(persist.find_netns, wanted)
        for uid, pod in missing.items():
            if self.pods.get(uid) is not pod:
                continue  # removed or replaced meanwhile
            if pod.netns.inode in running:
                log.warning(
                    "pod %s (%s/%s) is missing from the enrollment snapshot but still runs "
                    "(its network namespace is in use): keeping it enrolled and captured; "
                    "only a delete for the pod removes it",
                    uid,
                    pod.info.namespace,
                    pod.info.name,
                )
                continue
            log.info(
                "pod %s is missing from the enrollment snapshot and its network namespace is "
                "gone: removing it",
                uid,
            )
            await self._remove(self.pods.pop(uid))
        self._persist()

    # --- internals -------------------------------------------------------------------------

    def _listeners(self, netns: PodNetns) -> dict[int, trio.socket.SocketType]:
        made: dict[int, trio.socket.SocketType] = {}
        try:
            for port in (HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT):
                made[port] = netns.listener("::", port, transparent=not self.redirected)
            made[SOCKS5_PORT] = netns.listener("127.0.0.1", SOCKS5_PORT, transparent=False)
        except NetnsError:
            for s in made.values():
                s.close()
            raise
        return made

    def _stop(self, pod: PodProxy) -> None:
        pod.cancel.cancel()
        self.metrics.proxy_stopped()
        self._update_counts()

    def _update_counts(self) -> None:
        active = sum(1 for p in self.pods.values() if p.state == "Up")
        self.metrics.set_proxy_counts(active, len(self.pods) - active)

    async def _run(self, pod: PodProxy, listeners: dict[int, trio.socket.SocketType]) -> None:
        inbound = Inbound(
            pod.info.uid,
            pod.netns,
            self.state,
            self.certs,
            self.metrics,
            self.config.trust_domain,
            self.config.connect_timeout,
            self.config.workload_wait,
            pod.track,
            preserve_source=self.capture is not None,
            original_destination=self.original_destination,
            drain=self.drain.started,
            plaintext_idle_timeout=self.config.plaintext_idle_timeout,
            handshakes=self.handshakes,
            peer_errors=self.peer_errors,
            policies=self.policies,
        )
        handlers: dict[int, Callable[[trio.socket.SocketType], Awaitable[None]]] = {
            HBONE_PORT: inbound.serve_hbone,
            INBOUND_PLAINTEXT_PORT: inbound.serve_plaintext,
            OUTBOUND_PORT: lambda s: self._outbound(pod, inbound, s),
            SOCKS5_PORT: lambda s: self._socks5(pod, inbound, s),
        }
        try:
            with pod.cancel:
                async with trio.open_nursery() as nursery:
                    for port, handle in handlers.items():
                        name = f"{pod.info.namespace}/{pod.info.name} port {port}"
                        nursery.start_soon(self._accept, name, listeners[port], handle)
                    if pod.dns is not None:
                        name = f"{pod.info.namespace}/{pod.info.name} DNS"
                        for udp in pod.dns.udp:
                            nursery.start_soon(pod.dns.serve_udp, udp)
                        for tcp in pod.dns.tcp:
                            handler = pod.dns.serve_tcp_connection
                            nursery.start_soon(self._accept, f"{name} TCP", tcp, handler)
                    pod.state = "Up"
                    self._update_counts()
        finally:
            for s in listeners.values():
                s.close()
            if pod.dns is not None:
                pod.dns.close()
            pod.netns.close()
            pod.state = "Stopped"

    async def _accept(
        self,
        name: str,
        listener: trio.socket.SocketType,
        handle: Callable[[trio.socket.SocketType], Awaitable[None]],
    ) -> None:
        limits = (ConnectionLimit(name, self.config.max_connections_per_listener), self.connections)
        async with trio.open_nursery() as nursery:
            with self.drain.accepting():
                await serve_connections(
                    listener, partial(self._serve, handle), nursery, limits, name=name
                )
            # Draining: new connections go to whoever else listens on the port (REUSEPORT),
            # or are refused; the accepted ones run on.
            listener.close()

    async def _serve(
        self,
        handle: Callable[[trio.socket.SocketType], Awaitable[None]],
        sock: trio.socket.SocketType,
    ) -> None:
        with self.drain.holding():
            await _guarded(handle, sock)

    async def _outbound(
        self, pod: PodProxy, inbound: Inbound, sock: trio.socket.SocketType
    ) -> None:
        host, port = self.original_destination(sock)
        source = await inbound.workload()
        ip = canonical_ip(ipaddress.ip_address(host))
        if pod.http is not None and pod.http.handles(self.state.service_by_vip(ip), port):
            peer = sock.getpeername()
            untrack = pod.track(
                "outbound", str(SocketAddr(peer[0], peer[1])), str(SocketAddr(ip, port)), "HTTP"
            )
            try:
                await pod.http.serve(sock, ip, port)
            finally:
                untrack()
            return
        await self.outbound.proxy(
            source,
            pod.netns,
            sock,
            ip,
            port,
            track=pod.track,
        )

    async def _socks5(self, pod: PodProxy, inbound: Inbound, sock: trio.socket.SocketType) -> None:
        source = await inbound.workload()

        async def connect(ip: IPAddress, port: int, ready: Ready, initial: bytes) -> None:
            await self.outbound.proxy(
                source, pod.netns, sock, ip, port, ready=ready, track=pod.track, initial=initial
            )

        await serve_socks5(sock, self.state, connect)

    def dump(self) -> dict[str, Any]:
        """The `workloadState` section: each pod's proxy, its connections and who it is (the
        trust domain of its workload's identity once the mesh state has it)."""
        out = {}
        for uid, pod in self.pods.items():
            workload = self.state.workload_by_uid(uid)
            domain = workload.identity.trust_domain if workload else self.config.trust_domain
            out[uid] = pod.dump(domain)
        return out

    def dns_dump(self) -> dict[str, Any]:
        """The `dns` section: the DNS proxy's settings and answers, and each pod's sockets."""
        if self.dns is None:
            return {"enabled": False}
        pods = {uid: p.dns.addresses() for uid, p in self.pods.items() if p.dns is not None}
        return {"enabled": True, **self.dns.dump(pods)}

    def capture_counters(self) -> list[tuple[str, str, PodCounters]]:
        """(namespace, name, counters) of every captured pod, for the metrics scrape; none
        when the map cannot be read (a scrape must not fail)."""
        if self.capture is None:
            return []
        try:
            counters = self.capture.all_counters()
        except RedirectError as e:
            log.warning("capture counters unreadable: %s", e)
            return []
        return [
            (pod.info.namespace, pod.info.name, counters[pod.pod_id])
            for pod in self.pods.values()
            if pod.pod_id in counters
        ]


async def _guarded(
    handle: Callable[[trio.socket.SocketType], Awaitable[None]], sock: trio.socket.SocketType
) -> None:
    # One connection's failure, expected or not, must never stop the pod's listener.
    try:
        await handle(sock)
    except (LookupError, OSError, trio.BrokenResourceError) as e:
        log.info("connection ended: %s", e)
    except Exception:
        log.exception("connection handler failed")
    finally:
        sock.close()
