"""Relays on real loopback sockets: TCP -> HBONE -> TCP, and the splice passthrough."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.lowlevel

from tests.integration.hbone_support import dial, hbone_server, tcp_connect
from ztunnel_py.transport.hbone import HboneClientConnection, HboneRequest
from ztunnel_py.transport.relay import RelayError, SocketByteStream, relay, splice_relay

MiB = 1024 * 1024


async def listen() -> tuple[trio.socket.SocketType, tuple[str, int]]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()


async def serve(
    listener: trio.socket.SocketType,
    handle: Callable[[trio.socket.SocketType], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    while True:
        sock, _ = await listener.accept()
        nursery.start_soon(handle, sock)


async def recv_all(sock: trio.socket.SocketType) -> bytes:
    out = bytearray()
    while chunk := await sock.recv(256 * 1024):
        out += chunk
    return bytes(out)


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


class Backend:
    """A TCP server: hashes what it receives until EOF, then answers with the hex digest."""

    def __init__(self) -> None:
        self.received: list[int] = []

    async def handle(self, sock: trio.socket.SocketType) -> None:
        with sock:
            digest = hashlib.sha256()
            size = 0
            while chunk := await sock.recv(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
            self.received.append(size)
            await send_all(sock, digest.hexdigest().encode())


class Mesh:
    """client TCP -> relay -> HBONE client -> HBONE server -> relay -> backend TCP."""

    def __init__(self, backend: tuple[str, int], conn: HboneClientConnection) -> None:
        self.backend = backend
        self.conn = conn
        self.outbound_counts: list[tuple[int, int]] = []
        self.inbound_counts: list[tuple[int, int]] = []
        self.errors: list[RelayError] = []

    async def inbound(self, request: HboneRequest) -> None:
        upstream = await tcp_connect(self.backend)
        stream = await request.respond(200)
        assert stream is not None
        try:
            self.inbound_counts.append(await relay(stream, SocketByteStream(upstream)))
        except RelayError as e:
            self.errors.append(e)

    async def outbound(self, client: trio.socket.SocketType) -> None:
        stream = await self.conn.open_stream("127.0.0.1:1")
        try:
            self.outbound_counts.append(await relay(SocketByteStream(client), stream))
        except RelayError as e:
            self.errors.append(e)


async def test_tcp_over_hbone_round_trip_with_half_close() -> None:
    payload = os.urandom(32 * MiB + 12345)
    backend = Backend()
    back_listener, back_address = await listen()
    front_listener, front_address = await listen()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, back_listener, backend.handle, nursery)
            mesh: Mesh | None = None

            async def inbound(request: HboneRequest) -> None:
                assert mesh is not None
                await mesh.inbound(request)

            async with hbone_server(inbound) as server:
                mesh = Mesh(back_address, await dial(server.address, nursery))
                nursery.start_soon(serve, front_listener, mesh.outbound, nursery)
                client = await tcp_connect(front_address)
                await send_all(client, payload)
                client.shutdown(socket.SHUT_WR)
                answer = await recv_all(client)
                client.close()
                assert answer == hashlib.sha256(payload).hexdigest().encode()
                while not mesh.inbound_counts or not mesh.outbound_counts:
                    await trio.sleep(0.01)
                assert backend.received == [len(payload)]
                assert mesh.outbound_counts == [(len(payload), 64)]
                assert mesh.inbound_counts == [(len(payload), 64)]
                assert mesh.errors == []
                await mesh.conn.aclose()
            nursery.cancel_scope.cancel()


async def test_server_speaks_first_and_half_closes() -> None:
    got: list[bytes] = []

    async def banner_backend(sock: trio.socket.SocketType) -> None:
        with sock:
            await send_all(sock, b"220 ready\r\n")
            sock.shutdown(socket.SHUT_WR)
            got.append(await recv_all(sock))

    back_listener, back_address = await listen()
    front_listener, front_address = await listen()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, back_listener, banner_backend, nursery)
            mesh: Mesh | None = None

            async def inbound(request: HboneRequest) -> None:
                assert mesh is not None
                await mesh.inbound(request)

            async with hbone_server(inbound) as server:
                mesh = Mesh(back_address, await dial(server.address, nursery))
                nursery.start_soon(serve, front_listener, mesh.outbound, nursery)
                client = await tcp_connect(front_address)
                assert await recv_all(client) == b"220 ready\r\n"
                # The backend's EOF did not close our direction.
                await send_all(client, b"QUIT\r\n")
                client.shutdown(socket.SHUT_WR)
                assert await recv_all(client) == b""
                client.close()
                while not got:
                    await trio.sleep(0.01)
                assert got == [b"QUIT\r\n"]
                await mesh.conn.aclose()
            nursery.cancel_scope.cancel()


async def test_backend_reset_reaches_the_client_as_a_reset() -> None:
    async def rude_backend(sock: trio.socket.SocketType) -> None:
        await sock.recv(1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" + bytes(4))
        sock.close()

    back_listener, back_address = await listen()
    front_listener, front_address = await listen()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, back_listener, rude_backend, nursery)
            mesh: Mesh | None = None

            async def inbound(request: HboneRequest) -> None:
                assert mesh is not None
                await mesh.inbound(request)

            async with hbone_server(inbound) as server:
                mesh = Mesh(back_address, await dial(server.address, nursery))
                nursery.start_soon(serve, front_listener, mesh.outbound, nursery)
                client = await tcp_connect(front_address)
                await send_all(client, b"hello")
                # The backend's reset travels as RST_STREAM and comes out as a TCP reset.
                with pytest.raises(ConnectionResetError):
                    await recv_all(client)
                client.close()
                while len(mesh.errors) < 2:
                    await trio.sleep(0.01)
                reasons = sorted(e.reason for e in mesh.errors)
                assert any("reset" in r for r in reasons), reasons
                # The HBONE connection itself is unharmed.
                assert mesh.conn.is_ready
                await mesh.conn.aclose()
            nursery.cancel_scope.cancel()


async def test_relay_returns_counts_and_closes_both() -> None:
    a_near, a_far = trio.socket.socketpair()
    b_near, b_far = trio.socket.socketpair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            result: list[tuple[int, int]] = []

            async def run() -> None:
                result.append(await relay(SocketByteStream(a_near), SocketByteStream(b_near)))

            nursery.start_soon(run)
            await send_all(a_far, b"x" * 100_000)
            a_far.shutdown(socket.SHUT_WR)
            assert await recv_all(b_far) == b"x" * 100_000
            await send_all(b_far, b"y" * 777)
            b_far.shutdown(socket.SHUT_WR)
            assert await recv_all(a_far) == b"y" * 777
        assert result == [(100_000, 777)]
        assert a_near.fileno() == -1 and b_near.fileno() == -1


async def test_a_slow_reader_gets_every_byte_in_order() -> None:
    # The destination's socket buffer fills, so writes that take part of a chunk (and the
    # waits for the rest) are exercised, not only writes that take it whole.
    payload = os.urandom(8 * MiB + 4321)
    a_near, a_far = trio.socket.socketpair()
    b_near, b_far = trio.socket.socketpair()
    b_far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay, SocketByteStream(a_near), SocketByteStream(b_near))

            async def write() -> None:
                await send_all(a_far, payload)
                a_far.shutdown(socket.SHUT_WR)

            nursery.start_soon(write)
            received = bytearray()
            while chunk := await b_far.recv(7000):
                received += chunk
                if len(received) < MiB:
                    await trio.sleep(0.001)
            b_far.close()
            a_far.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


# --- splice ---------------------------------------------------------------------------------


async def test_splice_relay_integrity_half_close_and_counts() -> None:
    payload = os.urandom(64 * MiB)
    backend = Backend()
    back_listener, back_address = await listen()
    front_listener, front_address = await listen()
    counts: list[tuple[int, int]] = []

    async def passthrough(client: trio.socket.SocketType) -> None:
        counts.append(await splice_relay(client, await tcp_connect(back_address)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, back_listener, backend.handle, nursery)
            nursery.start_soon(serve, front_listener, passthrough, nursery)
            client = await tcp_connect(front_address)
            start = time.perf_counter()
            await send_all(client, payload)
            client.shutdown(socket.SHUT_WR)
            answer = await recv_all(client)
            elapsed = time.perf_counter() - start
            client.close()
            assert answer == hashlib.sha256(payload).hexdigest().encode()
            while not counts:
                await trio.sleep(0.01)
            assert counts == [(len(payload), 64)]
            nursery.cancel_scope.cancel()
    print(f"\nsplice relay, all in one process: {len(payload) * 8 / elapsed / 1e9:.2f} Gbit/s")


async def test_splice_relay_does_not_cork_small_messages() -> None:
    """Each 1-byte round trip goes through at once (SPLICE_F_MORE would hold it back)."""

    async def echo(sock: trio.socket.SocketType) -> None:
        with sock:
            while data := await sock.recv(1024):
                await send_all(sock, data)

    back_listener, back_address = await listen()
    front_listener, front_address = await listen()

    async def passthrough(client: trio.socket.SocketType) -> None:
        await splice_relay(client, await tcp_connect(back_address))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, back_listener, echo, nursery)
            nursery.start_soon(serve, front_listener, passthrough, nursery)
            client = await tcp_connect(front_address)
            slowest = 0.0
            for i in range(50):
                start = time.perf_counter()
                await client.send(bytes([i]))
                assert await client.recv(1) == bytes([i])
                slowest = max(slowest, time.perf_counter() - start)
            assert slowest < 0.2, f"a 1-byte round trip took {slowest:.3f}s"
            client.close()
            nursery.cancel_scope.cancel()


async def test_splice_relay_reports_a_reset() -> None:
    a_near, a_far = trio.socket.socketpair()
    b_near, b_far = trio.socket.socketpair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            errors: list[RelayError] = []

            async def run() -> None:
                try:
                    await splice_relay(a_near, b_near)
                except RelayError as e:
                    errors.append(e)

            nursery.start_soon(run)
            await send_all(a_far, b"data")
            assert await b_far.recv(4) == b"data"
            # The destination vanishes while the source keeps writing.
            b_far.close()
            with pytest.raises(OSError):
                for _ in range(1000):
                    await send_all(a_far, b"z" * 65536)
                    await trio.lowlevel.checkpoint()
            while not errors:
                await trio.sleep(0.01)
            assert errors[0].a_to_b >= 4
            a_far.close()


async def test_splice_relay_closes_a_connection_idle_either_way() -> None:
    a_near, a_far = trio.socket.socketpair()
    b_near, b_far = trio.socket.socketpair()
    ended: list[tuple[float, RelayError]] = []

    async def run() -> None:
        try:
            await splice_relay(a_near, b_near, idle_timeout=0.3)
        except RelayError as e:
            ended.append((trio.current_time(), e))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            # A byte every 0.1 s, one way or the other, keeps it open well past 0.3 s.
            for i in range(8):
                sender, receiver = (a_far, b_far) if i % 2 else (b_far, a_far)
                await send_all(sender, b"x")
                assert await receiver.recv(1) == b"x"
                last = trio.current_time()
                await trio.sleep(0.1)
            assert not ended
            while not ended:
                await trio.sleep(0.01)
    at, error = ended[0]
    assert 0.3 <= at - last < 0.6
    assert str(error) == "relay failed: no data either way for 0.3 s"
    assert (error.a_to_b, error.b_to_a) == (4, 4)
    assert await a_far.recv(1) == b"" and await b_far.recv(1) == b""
    a_far.close()
    b_far.close()


@asynccontextmanager
async def meshed(
    backend: Callable[[trio.socket.SocketType], Awaitable[None]],
) -> AsyncIterator[tuple[Mesh, trio.socket.SocketType]]:
    """A client socket through `Mesh` to `backend`, with the mesh for its counts."""
    back_listener, back_address = await listen()
    front_listener, front_address = await listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, back_listener, backend, nursery)
        box: list[Mesh] = []

        async def inbound(request: HboneRequest) -> None:
            await box[0].inbound(request)

        async with hbone_server(inbound) as server:
            box.append(Mesh(back_address, await dial(server.address, nursery)))
            nursery.start_soon(serve, front_listener, box[0].outbound, nursery)
            yield box[0], await tcp_connect(front_address)
            await box[0].conn.aclose()
        nursery.cancel_scope.cancel()


async def test_small_messages_to_a_slow_reader_arrive_in_order_and_counted() -> None:
    # Each side's HBONE reader hands data straight to the waiting relay's socket when it can;
    # a reader that lags makes those writes take part of a message, or none, so what follows
    # must queue behind the rest.
    rand = random.Random(7)
    messages = [rand.randbytes(rand.randint(1, 3000)) for _ in range(1000)]
    payload = b"".join(messages)

    async def backend(sock: trio.socket.SocketType) -> None:
        with sock:
            for i, message in enumerate(messages):
                await send_all(sock, message)
                if i % 100 == 0:
                    await trio.sleep(0.001)
            await recv_all(sock)

    with trio.fail_after(30):
        async with meshed(backend) as (mesh, client):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.shutdown(socket.SHUT_WR)
            received = bytearray()
            while chunk := await client.recv(5000):
                received += chunk
                if len(received) < len(payload) // 2:
                    await trio.sleep(0.0005)
            client.close()
            assert received == payload
            while not mesh.inbound_counts or not mesh.outbound_counts:
                await trio.sleep(0.01)
            assert mesh.outbound_counts == [(0, len(payload))]
            assert mesh.inbound_counts == [(0, len(payload))]
            assert mesh.errors == []
