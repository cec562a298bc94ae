"""The HTTP/1.1 server over an HBONE stream (the waypoint's downstream), over real TLS on
loopback: complete requests are handled in the connection's own task, and the stream tells it
when the client goes away meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.integration.hbone_support import dial, hbone_server
from ztunnel_py.http.connection import RequestHandler, ServerStream, serve_http
from ztunnel_py.http.message import Headers, ResponseHead
from ztunnel_py.transport.hbone import HboneRequest, HboneStream


class Server:
    """Answers each request with its method, path and body; `/wait` waits until cancelled."""

    def __init__(self) -> None:
        self.cancelled = trio.Event()
        self.waiting = trio.Event()
        self.tasks: set[object] = set()

    async def handle(self, s: ServerStream) -> None:
        self.tasks.add(trio.lowlevel.current_task())
        if s.request.path == "/wait":
            self.waiting.set()
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled.set()
        body = bytearray(f"{s.request.method} {s.request.path} ".encode())
        while (chunk := await s.read_body()) is not None:
            body += chunk
        head = ResponseHead(200, Headers([("content-length", str(len(body)))]))
        await s.send_head(head)
        await s.send_data(bytes(body), end_stream=True)


@asynccontextmanager
async def client(handle: RequestHandler) -> AsyncIterator[HboneStream]:
    """An HBONE stream to a server running `serve_http(handle)` on each CONNECT."""

    async def hbone(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        await serve_http(stream, handle, idle_timeout=30.0)

    with trio.fail_after(10):
        async with hbone_server(hbone) as hs, trio.open_nursery() as nursery:
            conn = await dial(hs.address, nursery)
            yield await conn.open_stream("10.0.0.1:80")
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def read_until(stream: HboneStream, end: bytes) -> bytes:
    got = b""
    while not got.endswith(end):
        data = await stream.receive_some()
        assert data, f"closed after {got!r}"
        got += bytes(data)
    return got


async def test_keepalive_and_pipelined_requests_are_answered_in_order() -> None:
    server = Server()
    async with client(server.handle) as stream:
        await stream.send_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_until(stream, b"GET /one ")).startswith(b"HTTP/1.1 200")
        # two at once, the second with a body (it goes to a task of its own)
        await stream.send_all(
            b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        )
        got = await read_until(stream, b"POST /three hello")
        assert got.index(b"GET /two ") < got.index(b"POST /three hello")
        assert got.count(b"HTTP/1.1 200") == 2
    # the requests without a body ran in the connection's task, the one with a body in another
    assert len(server.tasks) == 2


@pytest.mark.parametrize("how", ["half-close", "reset"])
async def test_a_client_gone_while_the_handler_waits_cancels_it(how: str) -> None:
    server = Server()
    async with client(server.handle) as stream:
        await stream.send_all(b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
        await server.waiting.wait()
        if how == "reset":
            stream.reset()
        else:
            await stream.send_eof()
        await server.cancelled.wait()


async def test_the_next_request_arriving_early_does_not_end_the_exchange() -> None:
    """A pipelined request that arrives while the handler works is answered after it, not
    taken for the client leaving."""
    server = Server()
    release = trio.Event()

    async def handle(s: ServerStream) -> None:
        if s.request.path == "/slow":
            await release.wait()
        await server.handle(s)

    async with client(handle) as stream:
        await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(0.1)
        await stream.send_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(0.1)
        release.set()
        got = await read_until(stream, b"GET /next ")
        assert got.index(b"GET /slow ") < got.index(b"GET /next ")
        assert not server.cancelled.is_set()
