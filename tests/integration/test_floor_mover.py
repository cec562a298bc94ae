"""The floor relay's data path (`bench.floor.Mover`) over real loopback TCP: bytes both ways
intact, a slow reader stalls the direction instead of losing bytes, half-closes are passed on,
a reset ends both sides, and every descriptor is released."""

from __future__ import annotations

import contextlib
import os
import socket

import trio

from ztunnel_py.bench.floor import Mover


async def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return client, server


async def relayed(mover: Mover) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A client and a server whose connection runs through the mover (two legs, as a relay)."""
    client, relay_in = await tcp_pair()
    relay_out, server = await tcp_pair()
    mover.add(relay_in, relay_out)
    return client, server


async def receive_all(sock: trio.socket.SocketType, delay: float = 0.0) -> bytes:
    data = bytearray()
    while chunk := await sock.recv(65536):
        data += chunk
        await trio.sleep(delay)
    return bytes(data)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_bytes_both_ways_half_closes_and_a_stalled_reader() -> None:
    mover = Mover()
    before = open_fds()
    client, server = await relayed(mover)
    request, response = os.urandom(100), os.urandom(8 * 1024 * 1024)
    with client, server:
        await client.send(request)
        client.shutdown(socket.SHUT_WR)  # the client's end passes through as a half-close
        assert await receive_all(server) == request
        got: list[bytes] = []

        async def read_slowly() -> None:  # the server's 8 MiB outrun the reader: stalls
            got.append(await receive_all(client, delay=0.002))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            view = memoryview(response)
            while view:
                view = view[await server.send(view) :]
            server.shutdown(socket.SHUT_WR)
        assert got == [response]
    with trio.fail_after(5):
        while open_fds() > before:  # the relay's two sockets and four pipe ends are closed
            await trio.sleep(0.01)
    assert mover.failed == 0


async def test_a_reset_ends_both_sides() -> None:
    mover = Mover()
    client, server = await relayed(mover)
    with client, server:
        await client.send(b"x")
        assert await server.recv(1) == b"x"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # an RST
        with trio.fail_after(5):
            with contextlib.suppress(ConnectionResetError):
                assert await server.recv(1) == b""
    assert mover.failed == 1
