"""Abusive HBONE clients over real TLS on loopback: the server bounds its work and cuts them off.

The attacker holds a valid mesh certificate (a compromised pod) and speaks HTTP/2 through the
sans-IO client core, so it can send what a well-behaved client never would.
"""

from __future__ import annotations

import socket

import trio

from tests.integration.hbone_support import (
    TcpApp,
    client_ctx,
    dial,
    echo_handler,
    hbone_server,
    tcp_connect,
)
from ztunnel_py.protocol.hbone import ConnectionTerminated, ErrorCodes, Event, HboneClient
from ztunnel_py.transport.hbone import HboneRequest
from ztunnel_py.transport.tls import TlsError, TlsTransport


class RawClient:
    """An HBONE client that frames whatever it is told to, over TLS."""

    def __init__(self, tls: TlsTransport) -> None:
        self.tls = tls
        self.core = HboneClient()
        self.terminated: ConnectionTerminated | None = None

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        tls = TlsTransport(await tcp_connect(address), client_ctx(), server_side=False)
        await tls.handshake()
        client = cls(tls)
        await client.flush()
        while not client.core.peer_settings_received:
            client.feed(await tls.receive_some())
        return client

    def feed(self, data: bytes | memoryview) -> list[Event]:
        events = self.core.receive_data(data)
        for event in events:
            if isinstance(event, ConnectionTerminated):
                self.terminated = event
        return events

    async def flush(self) -> None:
        await self.tls.send_all(self.core.data_to_send())

    async def read_until_closed(self) -> None:
        try:
            while data := await self.tls.receive_some():
                self.feed(data)
        except (TlsError, trio.BrokenResourceError):
            pass


async def test_rapid_reset_flood_is_bounded_and_cut_with_enhance_your_calm() -> None:
    app = TcpApp()
    handlers_started = 0

    async def handler(request: HboneRequest) -> None:
        nonlocal handlers_started
        if request.authority == "10.0.0.2:80":
            await echo_handler(request)
            return
        handlers_started += 1
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            await sock.connect(app.address)
            await request.respond(200)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, hbone_server(handler) as server:
            await nursery.start(app.run)
            # A well-behaved client with a tunnel open on the same server.
            good = await dial(server.address, nursery)
            tunnel = await good.open_stream("10.0.0.2:80")

            attacker = await RawClient.connect(server.address)
            nursery.start_soon(attacker.read_until_closed)
            sent = 0
            while sent < 3000 and attacker.terminated is None:
                for _ in range(100):
                    attacker.core.reset_stream(attacker.core.start_connect("10.0.0.1:80"))
                sent += 100
                try:
                    await attacker.flush()
                except (TlsError, trio.BrokenResourceError):
                    break
            with trio.fail_after(10):
                while attacker.terminated is None:
                    await trio.sleep(0.01)
            assert attacker.terminated.remote
            assert attacker.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
            # The reset streams cost next to no work: their handlers were cancelled first.
            assert app.accepted <= 20, app.accepted
            assert handlers_started <= 500

            # The server still serves: the open tunnel never noticed, a new client gets in.
            await tunnel.send_all(b"still here")
            assert bytes(await tunnel.receive_some()) == b"still here"
            fresh = await dial(server.address, nursery)
            stream = await fresh.open_stream("10.0.0.2:80")
            await stream.send_all(b"hello")
            assert bytes(await stream.receive_some()) == b"hello"
            await good.aclose()
            await fresh.aclose()
            nursery.cancel_scope.cancel()
