"""Shared pieces of the HBONE integration tests: certificates, a loopback HBONE server, dialing.

Everything is real: a CA from `identity.pki`, TLS contexts from `identity.tls`, TCP sockets on
127.0.0.1.
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import trio

from ztunnel_py.identity.pki import (
    CertificateAuthority,
    WorkloadCertificate,
    generate_key,
    key_to_pem,
    make_csr,
)
from ztunnel_py.identity.tls import (
    client_context,
    server_context,
    verify_client_identity,
    verify_server_identity,
)
from ztunnel_py.model import Identity
from ztunnel_py.transport.hbone import (
    HboneClientConnection,
    HboneHandshakeError,
    HboneRequest,
    connect_hbone,
    serve_hbone_connection,
)

TRUST_DOMAIN = "cluster.local"
SERVER_ID = Identity(TRUST_DOMAIN, "default", "server")
CLIENT_ID = Identity(TRUST_DOMAIN, "default", "client")


@functools.cache
def authority(trust_domain: str = TRUST_DOMAIN, name: str = "ztunnel-py") -> CertificateAuthority:
    return CertificateAuthority.create(trust_domain, org=name)


@functools.cache
def workload_cert(
    identity: Identity, ca_name: str = "ztunnel-py", ca_trust_domain: str | None = None
) -> WorkloadCertificate:
    """A certificate for `identity`, signed by the CA named `ca_name` of `ca_trust_domain`
    (default: the identity's own trust domain)."""
    key = generate_key()
    ca = authority(ca_trust_domain or identity.trust_domain, ca_name)
    chain = ca.sign_csr(make_csr(key, identity), identity, timedelta(hours=1))
    return WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain)


def client_ctx(identity: Identity = CLIENT_ID, ca_name: str = "ztunnel-py") -> ssl.SSLContext:
    return client_context(workload_cert(identity, ca_name))


def server_ctx(identity: Identity = SERVER_ID) -> ssl.SSLContext:
    return server_context(workload_cert(identity))


def verify_client(der: bytes | None) -> Identity:
    return verify_client_identity(der, TRUST_DOMAIN)


# Opens `count` connections to host:port and on each sends `mode`: "partial", the start of a
# ClientHello record (slowloris), or "hello", a whole real ClientHello, then never another
# byte; prints "held" once all are open and holds them until stdin closes.
SLOW_HANDSHAKES = """
import socket, ssl, sys
host, port, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
outgoing = ssl.MemoryBIO()
tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="x")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
payload = hello[:60] if mode == "partial" else hello
held = []
for _ in range(count):
    s = socket.create_connection((host, port))
    s.sendall(payload)
    held.append(s)
print("held", flush=True)
sys.stdin.read()
"""


async def tcp_connect(address: tuple[str, int]) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await sock.connect(address)
    return sock


async def dial(
    address: tuple[str, int],
    nursery: trio.Nursery,
    *,
    ctx: ssl.SSLContext | None = None,
    expected: Sequence[Identity] = (SERVER_ID,),
    **options: Any,
) -> HboneClientConnection:
    sock = await tcp_connect(address)
    return await connect_hbone(
        sock,
        ctx or client_ctx(),
        expected_identities=expected,
        verify=verify_server_identity,
        nursery=nursery,
        **options,
    )


@dataclass
class HboneServer:
    """A loopback HBONE listener; records what each accepted connection ended with."""

    address: tuple[str, int]
    accepted: int = 0
    handshake_errors: list[str] = field(default_factory=list)
    connections_done: int = 0
    requests: list[HboneRequest] = field(default_factory=list)


@asynccontextmanager
async def hbone_server(
    handler: Callable[[HboneRequest], Awaitable[None]],
    *,
    ctx: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[HboneServer]:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    server = HboneServer(address=listener.getsockname())
    context = ctx or server_ctx()

    async def recorded(request: HboneRequest) -> None:
        server.requests.append(request)
        await handler(request)

    async def serve_one(sock: trio.socket.SocketType) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await serve_hbone_connection(
                sock,
                context,
                verify_client=verify_client,
                handler=recorded,
                **options,
            )
        except HboneHandshakeError as e:
            server.handshake_errors.append(e.reason)
        finally:
            server.connections_done += 1

    async def accept_loop() -> None:
        while True:
            sock, _ = await listener.accept()
            server.accepted += 1
            nursery.start_soon(serve_one, sock)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            listener.close()


async def echo_handler(request: HboneRequest) -> None:
    """Answer 200 and echo every byte back, half-closing when the client does."""
    stream = await request.respond(200)
    assert stream is not None
    while True:
        data = await stream.receive_some()
        if not data:
            break
        await stream.send_all(data)
    await stream.send_eof()
    await stream.aclose()


class TcpProxy:
    """A loopback TCP forwarder between a client and a server, to break the path on purpose:
    `kill()` drops both sides at once (the peer "dies"), `freeze()` stops forwarding while
    keeping the sockets open (the peer hangs)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.frozen = trio.Event()
        self.killed = trio.Event()
        self._sockets: list[trio.socket.SocketType] = []

    def kill(self) -> None:
        for sock in self._sockets:
            # SO_LINGER 0 turns close into a RST, as when a process dies with data unsent.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" + bytes(4))
            sock.close()
        self.killed.set()

    def freeze(self) -> None:
        self.frozen.set()

    async def _pump(self, src: trio.socket.SocketType, dst: trio.socket.SocketType) -> None:
        buffer = bytearray(256 * 1024)
        try:
            while not self.frozen.is_set():
                count = await src.recv_into(buffer)
                if not count or self.frozen.is_set():
                    break
                view = memoryview(buffer)[:count]
                while view:
                    view = view[await dst.send(view) :]
            await self.frozen.wait()
        except (OSError, trio.ClosedResourceError):
            pass

    async def _serve(self, client: trio.socket.SocketType) -> None:
        upstream = await tcp_connect(self.target)
        self._sockets += [client, upstream]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream)
            nursery.start_soon(self._pump, upstream, client)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.address = listener.getsockname()
        task_status.started()
        with listener:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_killed, nursery)
                while True:
                    client, _ = await listener.accept()
                    nursery.start_soon(self._serve, client)

    async def _wait_killed(self, nursery: trio.Nursery) -> None:
        await self.killed.wait()
        nursery.cancel_scope.cancel()


@dataclass
class TcpApp:
    """An application behind an HBONE server: a TCP server on loopback that counts the
    connections it accepted and those whose other end closed."""

    address: tuple[str, int] = ("127.0.0.1", 0)
    accepted: int = 0
    closed: int = 0
    events: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(4096)
            self.address = listener.getsockname()
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    self.accepted += 1
                    nursery.start_soon(self._until_closed, conn)

    async def _until_closed(self, conn: trio.socket.SocketType) -> None:
        with conn:
            try:
                while await conn.recv(65536):
                    pass
            except OSError:
                pass
        self.closed += 1
