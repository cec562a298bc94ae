"""HTTP/1.1 over HBONE streams, over real TLS on loopback. The server (the waypoint's
downstream): complete requests are handled in the connection's own task, and the stream tells it
when the client goes away meanwhile. The client (the waypoint's pooled upstreams): the response
is read by the exchange's consumer itself, and the connection's reader task reads only what
arrives while the connection is idle."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio

from tests.integration.hbone_support import dial, hbone_server
from ztunnel_py.http.connection import (
    ClientConnection,
    RequestHandler,
    ServerStream,
    StreamError,
    serve_http,
)
from ztunnel_py.http.events import Switched
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
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

    async def handle_stream(self, stream: HboneStream) -> None:
        await serve_http(stream, self.handle, idle_timeout=30.0)


@asynccontextmanager
async def tunnel(serve: Callable[[HboneStream], Awaitable[None]]) -> AsyncIterator[HboneStream]:
    """An HBONE stream to a server running `serve` on the stream of each CONNECT."""

    async def hbone(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        await serve(stream)

    with trio.fail_after(10):
        async with hbone_server(hbone) as hs, trio.open_nursery() as nursery:
            conn = await dial(hs.address, nursery)
            yield await conn.open_stream("10.0.0.1:80")
            await conn.aclose()
            nursery.cancel_scope.cancel()


def client(handle: RequestHandler) -> AbstractAsyncContextManager[HboneStream]:
    """An HBONE stream to a server running `serve_http(handle)` on each CONNECT."""

    async def serve(stream: HboneStream) -> None:
        await serve_http(stream, handle, idle_timeout=30.0)

    return tunnel(serve)


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


async def test_an_idle_connection_is_closed_after_the_idle_timeout_not_during_a_request() -> None:
    """The idle timeout counts from the end of the last exchange: a request open longer than
    the timeout is answered, and the connection then closes once idle for the timeout."""

    async def handle(s: ServerStream) -> None:
        await trio.sleep(0.6)
        body = b"slow"
        await s.send_head(ResponseHead(200, Headers([("content-length", str(len(body)))])))
        await s.send_data(body, end_stream=True)

    async def serve(stream: HboneStream) -> None:
        await serve_http(stream, handle, idle_timeout=0.3)

    async with tunnel(serve) as stream:
        await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        got = await read_until(stream, b"slow")
        assert got.startswith(b"HTTP/1.1 200")
        answered = trio.current_time()
        # nothing more from the client: the server ends the connection
        assert bytes(await stream.receive_some()) == b""
        assert 0.25 < trio.current_time() - answered < 2


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


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps each task takes."""

    def __init__(self) -> None:
        self.steps: Counter[trio.lowlevel.Task] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] += 1


@asynccontextmanager
async def upstream(
    serve: Callable[[HboneStream], Awaitable[None]],
) -> AsyncIterator[tuple[ClientConnection, trio.lowlevel.Task]]:
    """A pooled-style HTTP/1.1 upstream connection over an HBONE stream to `serve`, running;
    with its reader task."""
    async with tunnel(serve) as stream, trio.open_nursery() as nursery:
        conn = ClientConnection(stream, http2=False)
        await nursery.start(conn.run)
        (reader,) = nursery.child_tasks
        yield conn, reader
        await conn.aclose()


async def exchange(conn: ClientConnection, path: str) -> tuple[int, bytes]:
    up = await conn.open_stream(RequestHead("GET", path, "a"), end_stream=True)
    head = await up.receive_head()
    assert isinstance(head, ResponseHead)
    body = b""
    while (chunk := await up.read_body()) is not None:
        body += chunk
    up.reset()
    return head.status, body


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.01)


async def test_an_upstream_response_is_read_by_its_consumer_not_the_reader_task() -> None:
    counter = StepCounter()
    async with upstream(Server().handle_stream) as (conn, reader):
        assert conn.pulls
        trio.lowlevel.add_instrument(counter)
        try:
            for path in ("/one", "/two", "/three"):
                assert await exchange(conn, path) == (200, f"GET {path} ".encode())
                assert conn.available
        finally:
            trio.lowlevel.remove_instrument(counter)
        # one connection carried the three exchanges, its reader task slept through them
        assert conn.opened == 3
        assert counter.steps[reader] == 0


async def test_an_upstream_closing_an_idle_connection_ends_it() -> None:
    async def serve_once(stream: HboneStream) -> None:
        await read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await trio.sleep(0.1)
        await stream.aclose()

    async with upstream(serve_once) as (conn, _):
        assert await exchange(conn, "/") == (200, b"ok")
        assert conn.available
        await until(lambda: conn.closed)
        assert not conn.available


async def test_bytes_an_idle_upstream_sends_unasked_end_the_connection() -> None:
    async def serve_garbage(stream: HboneStream) -> None:
        await read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await trio.sleep(0.1)
        await stream.send_all(b"garbage\r\n\r\n")
        await trio.sleep_forever()

    async with upstream(serve_garbage) as (conn, _):
        assert await exchange(conn, "/") == (200, b"ok")
        await until(lambda: conn.closed)
        assert "malformed response" in conn.reason
        with pytest.raises(StreamError):
            await conn.open_stream(RequestHead("GET", "/", "a"), end_stream=True)


async def test_a_connection_close_response_ends_the_connection_after_the_exchange() -> None:
    async def serve_close(stream: HboneStream) -> None:
        await read_until(stream, b"\r\n\r\n")
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )
        await trio.sleep_forever()

    async with upstream(serve_close) as (conn, _):
        assert await exchange(conn, "/") == (200, b"ok")
        await until(lambda: conn.closed)
        assert not conn.available


async def test_a_response_of_many_chunks_in_one_read_is_read_whole() -> None:
    """More body pieces in one read than an inbox holds: the consumer that read them takes
    them all, it does not wait for room it would have to make itself."""
    chunks = [f"piece {i};".encode() for i in range(50)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"

    async def serve_chunked(stream: HboneStream) -> None:
        while True:
            await read_until(stream, b"\r\n\r\n")
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)

    async with upstream(serve_chunked) as (conn, _):
        for _ in range(2):
            assert await exchange(conn, "/") == (200, b"".join(chunks))


async def test_a_consumer_giving_up_while_it_reads_the_response_ends_the_connection() -> None:
    async def serve_silent(stream: HboneStream) -> None:
        await read_until(stream, b"\r\n\r\n")
        await trio.sleep_forever()

    async with upstream(serve_silent) as (conn, _):
        up = await conn.open_stream(RequestHead("GET", "/", "a"), end_stream=True)
        with trio.move_on_after(0.1) as waited:
            await up.receive_head()
        assert waited.cancelled_caught
        up.reset()
        await until(lambda: conn.closed)
        assert not conn.available


async def test_a_switched_connection_is_the_consumers_and_its_reader_task_ends() -> None:
    async def serve_upgrade(stream: HboneStream) -> None:
        await read_until(stream, b"\r\n\r\n")
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n"
        )
        while data := await stream.receive_some():
            await stream.send_all(b"echo " + bytes(data))

    async with tunnel(serve_upgrade) as stream, trio.open_nursery() as nursery:
        conn = ClientConnection(stream, http2=False)
        await nursery.start(conn.run)
        head = RequestHead(
            "GET", "/", "a", Headers([("upgrade", "raw"), ("connection", "upgrade")])
        )
        up = await conn.open_stream(head, end_stream=True)
        switched = await up.receive_head()
        assert isinstance(switched, Switched)
        # the reader task is done (the nursery's only child was it); the stream is not closed
        with trio.fail_after(2):
            while nursery.child_tasks:
                await trio.sleep(0.01)
        raw, _ = up.raw()
        await raw.send_all(b"hi")
        assert bytes(await raw.receive_some()) == b"echo hi"
