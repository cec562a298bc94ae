"""The accept loop on real loopback listeners: it rides out a process with no descriptor left,
and resets connections over a listener's or the process's cap."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
from collections.abc import Iterator
from functools import partial

import pytest
import trio

from ztunnel_py.transport.accept import ConnectionLimit, serve_connections


async def listen() -> tuple[trio.socket.SocketType, tuple[str, int]]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()


def accept_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ztunnel_py.transport.accept"]


@contextlib.contextmanager
def no_descriptor_left() -> Iterator[None]:
    """Every descriptor the process may open is in use until the block ends (the soft limit is
    lowered to just above the highest open one, and the holes below it filled)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = [os.open("/dev/null", os.O_RDONLY)]
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 4, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.dup(fillers[0]))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_accept_waits_out_emfile_and_then_serves_the_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener, address = await listen()
    served: list[bytes] = []

    async def handler(sock: trio.socket.SocketType) -> None:
        served.append(await sock.recv(16))

    clients = [socket.create_connection(address) for _ in range(3)]
    try:
        for i, client in enumerate(clients):
            client.sendall(b"client %d" % i)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                serve = partial(serve_connections, name="test port")
                nursery.start_soon(serve, listener, handler, nursery, ())
                with caplog.at_level(logging.WARNING), no_descriptor_left():
                    await trio.sleep(0.5)  # several accept attempts, each failing with EMFILE
                assert served == []
                assert accept_warnings(caplog) == [
                    "test port: cannot accept connections: Too many open files; "
                    "retrying every 0.1 s"
                ]
                while len(served) < 3:
                    await trio.sleep(0.01)
                assert sorted(served) == [b"client 0", b"client 1", b"client 2"]
                nursery.cancel_scope.cancel()
    finally:
        for client in clients:
            client.close()
        listener.close()


async def test_connections_over_a_cap_are_reset_until_one_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    process = ConnectionLimit("the process", 3)
    listener_a, address_a = await listen()
    listener_b, address_b = await listen()

    async def greet(sock: trio.socket.SocketType) -> None:
        await sock.send(b"hello")
        while await sock.recv(1024):
            pass

    async def dial(address: tuple[str, int]) -> trio.socket.SocketType | None:
        """A connection the server greeted, or None if it was reset (on connect, when the
        server was quick, or on the first read)."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await sock.connect(address)
            if await sock.recv(16) == b"hello":
                return sock
        except ConnectionResetError:
            pass
        sock.close()
        return None

    with trio.fail_after(10), caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            for name, listener in (("a", listener_a), ("b", listener_b)):
                limits = (ConnectionLimit(f"listener {name}", 2), process)
                serve = partial(serve_connections, name=f"port {name}")
                nursery.start_soon(serve, listener, greet, nursery, limits)
            a = [await dial(address_a) for _ in range(3)]
            assert [s is not None for s in a] == [True, True, False]  # listener a is full
            b = [await dial(address_b) for _ in range(2)]
            assert [s is not None for s in b] == [True, False]  # the process is full
            assert (process.open, process.cap) == (3, 3)
            first = a[0]
            assert first is not None
            first.close()  # one ends: its slots are free again
            while process.open == 3:
                await trio.sleep(0.01)
            again = await dial(address_b)
            assert again is not None
            nursery.cancel_scope.cancel()
    for sock in [*a, *b, again, listener_a, listener_b]:
        if sock is not None:
            sock.close()
    assert accept_warnings(caplog) == [
        "port a: refused a connection: 2 connections of listener a are open (the limit)",
        "port b: refused a connection: 3 connections of the process are open (the limit)",
    ]


def test_a_cap_must_admit_a_connection() -> None:
    with pytest.raises(ValueError, match="'listener a' must be at least 1, not 0"):
        ConnectionLimit("listener a", 0)
