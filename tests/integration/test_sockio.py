"""`sockio.recv_into` on real socket pairs: what trio's `recv_into` guarantees, kept."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from ztunnel_py.transport.sockio import recv_into


async def test_reads_what_is_there_waits_for_more_and_reports_the_end() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        buffer = memoryview(bytearray(64))
        await b.send(b"hello")
        assert await recv_into(a, buffer) == 5
        assert bytes(buffer[:5]) == b"hello"

        got: list[bytes] = []

        async def reader() -> None:
            count = await recv_into(a, buffer)
            got.append(bytes(buffer[:count]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # nothing to read: the reader waits, it does not spin or fail
            await b.send(b"world")
        assert got == [b"world"]

        b.shutdown(socket.SHUT_WR)
        assert await recv_into(a, buffer) == 0


@pytest.mark.parametrize("wait_first", [False, True])
async def test_a_cancelled_read_leaves_the_bytes_in_the_socket(wait_first: bool) -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        await b.send(b"kept")
        buffer = memoryview(bytearray(16))
        with trio.CancelScope() as scope:
            scope.cancel()
            await recv_into(a, buffer, wait_first=wait_first)
        assert scope.cancelled_caught
        assert await recv_into(a, buffer) == 4
        assert bytes(buffer[:4]) == b"kept"


async def test_a_read_that_finds_data_is_still_a_checkpoint() -> None:
    # A relay looping on reads that never wait must still let other tasks run and be
    # cancellable.
    a, b = trio.socket.socketpair()
    with a, b:
        await b.send(b"x" * 10)
        buffer = memoryview(bytearray(1))
        with trio.testing.assert_checkpoints():
            assert await recv_into(a, buffer) == 1


async def test_a_reset_raises_an_os_error() -> None:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        with client:
            await client.connect(listener.getsockname())
            server, _ = await listener.accept()
            with server:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                with pytest.raises(ConnectionResetError):
                    await recv_into(server, memoryview(bytearray(16)))


async def test_wait_first_still_reads_what_is_there_and_waits_for_more() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        buffer = memoryview(bytearray(64))
        await b.send(b"ready")
        with trio.testing.assert_checkpoints():
            assert await recv_into(a, buffer, wait_first=True) == 5
        assert bytes(buffer[:5]) == b"ready"

        got: list[int] = []

        async def reader() -> None:
            got.append(await recv_into(a, buffer, wait_first=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            b.shutdown(socket.SHUT_WR)
        assert got == [0]
