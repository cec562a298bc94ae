"""The DNS proxy's sockets in a pod, and forwarding upstream: trio around `resolver`.

Per enrolled pod (`PodDns`), inside its network namespace:

- UDP on 127.0.0.1:15053 and [::1]:15053, each with IP(V6)_RECVORIGDSTADDR: a query the
  capture programs assigned here still carries the address the pod sent it to (its resolver,
  `<resolver>:53`), which every datagram's ancillary data reports. The answer must come from
  that address and port, or the pod's resolver (which `connect`s its UDP socket) never sees it,
  so it is sent from a transparent socket bound to `<resolver>:53` in the pod's netns (one per
  resolver address, kept while the pod is enrolled). A query sent to 15053 itself is answered
  from there.
- TCP on the same addresses (transparent listeners: an accepted connection's local address is
  the resolver's, so its answers need nothing special), two-byte length-prefixed messages, any
  number per connection, 5 s for each to arrive (ztunnel's request timeout).

Each query: parsed (malformed ones get FORMERR when their header is readable, else nothing),
the pod's workload looked up (unknown: SERVFAIL, as ztunnel), answered by `MeshResolver`, or
forwarded. Forwarding goes to the upstream resolvers (ztunnel's: the agent's own resolv.conf,
without its search list: the pod's resolver already applied it) from a socket inside the pod's
netns carrying the agent's mark, so the upstream sees the pod as the client and the capture
programs let it pass: over UDP first, again over TCP when the upstream truncates, one
resolver after the other, `UPSTREAM_TIMEOUT` each; no answer at all is SERVFAIL. The
upstream's answer is relayed with the client's id. Answers over UDP are cut to 512 bytes (or
the query's EDNS size) with TC set, so the client retries over TCP and gets them whole.

Every query counts in `istio_dns_requests_total`, forwarded ones also in the upstream families
(`DnsMetrics`); each is logged at debug level on the `ztunnel_py.dns` logger with ztunnel's
DNS access-log fields.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import trio

from ztunnel_py.dnsproxy.resolver import (
    TCP_LIMIT,
    BadQuery,
    MeshResolver,
    encode,
    parse_query,
    server_failure,
    udp_limit,
)
from ztunnel_py.linux.netns import NetnsError
from ztunnel_py.model import IPAddress, Workload
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import DNS_PORT
from ztunnel_py.telemetry.metrics import DnsMetrics
from ztunnel_py.transport.podsockets import PodNetns

log = logging.getLogger("ztunnel_py.dns")

DNS_UPSTREAM_PORT = 53
UPSTREAM_TIMEOUT = 5.0
TCP_REQUEST_TIMEOUT = 5.0
# queries of one pod being answered at once; more are dropped (the client retries)
MAX_INFLIGHT = 256
MAX_DATAGRAM = 65535
# setsockopt / cmsg: the original destination of a datagram (linux/in.h, linux/in6.h)
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
_ANCILLARY = socket.CMSG_SPACE(28)
LOCALHOSTS = ("127.0.0.1", "::1")


class DnsConfigError(Exception):
    """The upstream resolvers cannot be read; the message says what to fix."""


def read_nameservers(path: Path) -> list[IPAddress]:
    """The `nameserver` lines of a resolv.conf (the search list is the pod's business)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DnsConfigError(f"cannot read the upstream resolvers from {path}: {e}") from e
    servers: list[IPAddress] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(ipaddress.ip_address(fields[1].split("%")[0]))
            except ValueError:
                log.warning("%s: ignoring nameserver %r: not an IP address", path, fields[1])
    if not servers:
        raise DnsConfigError(f"{path} names no nameserver: queries could not be forwarded")
    return servers


def _original_destination(ancdata: Sequence[tuple[int, int, bytes]]) -> SocketAddr | None:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack_from("!H", data, 2)[0]
            return SocketAddr(socket.inet_ntop(socket.AF_INET, data[4:8]), port)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            port = struct.unpack_from("!H", data, 2)[0]
            return SocketAddr(socket.inet_ntop(socket.AF_INET6, data[8:24]), port)
    return None


@dataclass(slots=True)
class UpstreamResolvers:
    """The DNS servers queries are forwarded to (and ServiceEntry host names resolved with)."""

    servers: list[IPAddress]
    port: int = DNS_UPSTREAM_PORT
    timeout: float = UPSTREAM_TIMEOUT

    async def forward(
        self, netns: PodNetns, query: dns.message.Message
    ) -> dns.message.Message | None:
        """The first server's answer (over TCP when it truncated over UDP), asked from inside
        `netns`; None if none answered in time."""
        for server in self.servers:
            address = (str(server), self.port)
            with trio.move_on_after(self.timeout):
                try:
                    response = await _exchange_udp(netns, query, address)
                    if response.flags & dns.flags.TC:
                        response = await _exchange_tcp(netns, query, address)
                    return response
                except (OSError, EOFError, NetnsError, dns.exception.DNSException, ValueError) as e:
                    log.debug("DNS upstream %s failed: %s", SocketAddr(*address), e)
        return None

    async def resolve_host(self, netns: PodNetns, hostname: str, version: int) -> IPAddress | None:
        """An address of `hostname`, of IP `version` if it has one, else of the other family
        (how an endpoint known by name is reached); None when it does not resolve."""
        for family in (4, 6) if version == 4 else (6, 4):
            rdtype = dns.rdatatype.A if family == 4 else dns.rdatatype.AAAA
            response = await self.forward(netns, dns.message.make_query(hostname, rdtype))
            if response is None:
                continue
            for rrset in response.answer:
                if rrset.rdtype == rdtype:
                    return ipaddress.ip_address(next(iter(rrset)).to_text())
        return None


@dataclass(slots=True)
class DnsProxy:
    """What every pod's DNS proxy shares: the resolver, the upstreams and the metrics."""

    resolver: MeshResolver
    upstreams: UpstreamResolvers
    metrics: DnsMetrics

    def dump(self, pods: dict[str, list[str]]) -> dict[str, Any]:
        """The `dns` section of /config_dump: the settings, each pod's sockets, and every
        name the proxy answers with its addresses."""
        entries = []
        for service in sorted(self.resolver.state.services(), key=lambda s: s.key):
            if not self.resolver.answerable(service):
                continue
            addresses = [str(v.address) for v in service.vips] or [
                str(a) for w in self.resolver.state.service_workloads(service) for a in w.addresses
            ]
            entries.append(
                {
                    "hostname": service.hostname,
                    "namespace": service.namespace,
                    "addresses": addresses,
                    "headless": not service.vips,
                }
            )
        return {
            "domain": self.resolver.domain.to_text(omit_final_dot=True),
            "searchDomains": [
                n.to_text(omit_final_dot=True) for n in self.resolver.search_domains("<ns>")
            ],
            "preferredNamespace": self.resolver.preferred_namespace,
            "upstreams": [
                str(SocketAddr(ip, self.upstreams.port)) for ip in self.upstreams.servers
            ],
            "ttlSeconds": 30,
            "pods": pods,
            "entries": entries,
        }


@dataclass(slots=True)
class PodDns:
    """One enrolled pod's DNS proxy: its sockets and how queries are answered."""

    proxy: DnsProxy
    netns: PodNetns
    workload: Callable[[], Workload | None]
    udp: list[trio.socket.SocketType] = field(default_factory=list)
    tcp: list[trio.socket.SocketType] = field(default_factory=list)
    # resolver address -> the transparent socket answers from it leave by
    _replies: dict[SocketAddr, trio.socket.SocketType] = field(default_factory=dict)
    _inflight: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(MAX_INFLIGHT)
    )

    def open(self) -> None:
        """Bind the pod's DNS sockets (IPv6 ones only where the pod has ::1); NetnsError if
        IPv4 cannot be served."""
        for host in LOCALHOSTS:
            try:
                udp = self.netns.datagram(host, DNS_PORT)
            except NetnsError:
                if host == LOCALHOSTS[0]:
                    self.close()
                    raise
                log.debug("no IPv6 loopback in the pod: DNS over IPv6 is not proxied")
                continue
            self.udp.append(udp)
            if udp.family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
            else:
                udp.setsockopt(socket.IPPROTO_IP, IP_RECVORIGDSTADDR, 1)
            try:
                self.tcp.append(self.netns.listener(host, DNS_PORT, reuseport=False))
            except NetnsError:
                self.close()
                raise

    def close(self) -> None:
        for sock in (*self.udp, *self.tcp, *self._replies.values()):
            sock.close()
        self.udp.clear()
        self.tcp.clear()
        self._replies.clear()

    def addresses(self) -> list[str]:
        return [
            f"{'udp' if s in self.udp else 'tcp'} {SocketAddr(*s.getsockname()[:2])}"
            for s in (*self.udp, *self.tcp)
        ]

    # --- UDP -----------------------------------------------------------------------------------

    async def serve_udp(self, sock: trio.socket.SocketType) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    wire, ancdata, _, address = await sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
                except OSError as e:
                    log.debug("DNS receive failed: %s", e)
                    continue
                peer = cast(tuple[object, ...], address)  # (host, port[, flow, scope])
                query = object()  # a resolver sends A and AAAA at once, from one port
                try:
                    self._inflight.acquire_on_behalf_of_nowait(query)
                except trio.WouldBlock:
                    log.debug("DNS query from %s dropped: %d queries in flight", peer, MAX_INFLIGHT)
                    continue
                target = _original_destination(ancdata)
                nursery.start_soon(self._udp_query, sock, wire, peer, target, query)

    async def _udp_query(
        self,
        sock: trio.socket.SocketType,
        wire: bytes,
        peer: tuple[object, ...],
        target: SocketAddr | None,
        query: object,
    ) -> None:
        try:
            answer = await self.answer(wire, "udp", udp=True)
            if answer is None:
                return
            local = sock.getsockname()
            if target is None or (str(target.ip), target.port) == (local[0], local[1]):
                await sock.sendto(answer, peer)
            else:
                await self._reply_socket(target).sendto(answer, peer)
        except (OSError, NetnsError) as e:
            log.debug("DNS answer to %s not sent: %s", peer, e)
        except Exception:
            # One query's failure must never stop the pod's DNS (or the agent).
            log.exception("DNS query from %s failed", peer)
        finally:
            self._inflight.release_on_behalf_of(query)

    def _reply_socket(self, target: SocketAddr) -> trio.socket.SocketType:
        sock = self._replies.get(target)
        if sock is None:
            sock = self.netns.datagram(str(target.ip), target.port, transparent=True)
            self._replies[target] = sock
        return sock

    # --- TCP -----------------------------------------------------------------------------------

    async def serve_tcp_connection(self, sock: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(sock)
        buffer = b""
        while True:
            with trio.move_on_after(TCP_REQUEST_TIMEOUT) as timer:
                while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                    chunk = await stream.receive_some(TCP_LIMIT)
                    if not chunk:
                        return
                    buffer += chunk
            if timer.cancelled_caught:
                return
            size = int.from_bytes(buffer[:2], "big")
            wire, buffer = buffer[2 : 2 + size], buffer[2 + size :]
            answer = await self.answer(wire, "tcp", udp=False)
            if answer is None:
                return
            await stream.send_all(len(answer).to_bytes(2, "big") + answer)

    # --- one query -----------------------------------------------------------------------------

    async def answer(self, wire: bytes, protocol: str, *, udp: bool) -> bytes | None:
        """The answer to one query on the wire (None: send nothing)."""
        try:
            query = parse_query(wire)
        except BadQuery as e:
            log.debug("DNS %s query rejected: %s", protocol, e)
            return None if e.response is None else e.response.to_wire()
        limit = udp_limit(query) if udp else TCP_LIMIT
        client = self.workload()
        question = query.question[0]
        qtype = dns.rdatatype.to_text(question.rdtype)
        metrics = self.proxy.metrics
        if client is None:
            metrics.request(metrics.labels(qtype, protocol, "", ""))
            _access_log(None, qtype, question.name.to_text(), "unknown source", 0)
            return encode(server_failure(query), limit)
        labels = metrics.labels(qtype, protocol, client.canonical_name, client.canonical_revision)
        metrics.request(labels)
        resolution = self.proxy.resolver.resolve(client, query)
        if resolution.response is not None:
            _access_log(
                client, qtype, question.name.to_text(), resolution.result, resolution.records
            )
            return encode(resolution.response, limit)
        started = time.monotonic()
        response = await self.proxy.upstreams.forward(self.netns, query)
        metrics.forwarded(labels, time.monotonic() - started, response is None)
        if response is None:
            _access_log(client, qtype, question.name.to_text(), "forwarding failed", 0)
            return encode(server_failure(query), limit)
        count = sum(len(rrset) for rrset in response.answer)
        _access_log(client, qtype, question.name.to_text(), "forwarded", count)
        response.id = query.id
        return encode(response, limit)


async def _exchange_udp(
    netns: PodNetns, query: dns.message.Message, address: tuple[str, int]
) -> dns.message.Message:
    family_any = "::" if ":" in address[0] else "0.0.0.0"
    with netns.datagram(family_any, 0) as sock:
        await sock.connect(address)
        await sock.send(query.to_wire())
        while True:
            wire = await sock.recv(MAX_DATAGRAM)
            try:
                response = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue  # not an answer: keep waiting for the real one
            if response.id == query.id and response.flags & dns.flags.QR:
                return response


async def _exchange_tcp(
    netns: PodNetns, query: dns.message.Message, address: tuple[str, int]
) -> dns.message.Message:
    # the caller's deadline bounds the whole exchange, the connect included
    sock = await netns.connect(address, connect_timeout=UPSTREAM_TIMEOUT)
    async with trio.SocketStream(sock) as stream:
        wire = query.to_wire()
        await stream.send_all(len(wire).to_bytes(2, "big") + wire)
        buffer = b""
        while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
            chunk = await stream.receive_some(TCP_LIMIT)
            if not chunk:
                raise EOFError("the upstream closed the TCP connection")
            buffer += chunk
        return dns.message.from_wire(buffer[2 : 2 + int.from_bytes(buffer[:2], "big")])


def _access_log(
    client: Workload | None, qtype: str, domain: str, result: str, endpoints: int
) -> None:
    log.debug(
        "src.workload=%s src.namespace=%s query=%s domain=%s result=%s endpoints=%d",
        client.name if client else "unknown",
        client.namespace if client else "unknown",
        qtype,
        domain,
        result,
        endpoints,
    )
