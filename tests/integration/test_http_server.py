"""The engine's connections under clients that misbehave or go away, on real loopback sockets:
malformed and oversized requests, clients that disconnect mid-response, HTTP/2 rapid reset,
protocol switches, pipelining, and what the upstream pool looks like afterwards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import h11
import pytest
import trio

from tests.integration.http_support import (
    H1_SERVICE,
    H2_SERVICE,
    H1Upstream,
    H2Upstream,
    MiB,
    ProxyUnderTest,
    StaticResolver,
    front_proxy,
    listen_tcp,
    pattern,
    run,
    run_proxy,
)
from ztunnel_py.http import connection
from ztunnel_py.http.connection import MAX_PENDING_HANDLERS, ServerStream, serve_http
from ztunnel_py.http.message import Headers, ResponseHead
from ztunnel_py.model.http import Backend, Route

pytestmark = pytest.mark.timeout(60)

H1 = H1_SERVICE
H2 = H2_SERVICE


@pytest.fixture
async def h1(nursery: trio.Nursery) -> H1Upstream:
    return await H1Upstream().serve(nursery)


@pytest.fixture
async def h2up(nursery: trio.Nursery) -> H2Upstream:
    return await H2Upstream().serve(nursery)


@pytest.fixture
async def proxy(h1: H1Upstream, h2up: H2Upstream) -> AsyncIterator[ProxyUnderTest]:
    async with front_proxy(h1, h2up) as put:
        yield put


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, read until the proxy closes (bounded)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(data)
        if half_close:
            await stream.send_eof()
        out = bytearray()
        try:
            async for chunk in stream:
                out += chunk
        except trio.BrokenResourceError:
            pass
        await stream.aclose()
        return bytes(out)


async def eventually(check: object, limit: float = 5.0) -> None:
    with trio.fail_after(limit):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.02)


# malformed and oversized requests


@pytest.mark.parametrize(
    "wire",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ],
)
async def test_malformed_request_is_400_and_a_clean_close(
    proxy: ProxyUnderTest, h1: H1Upstream, wire: bytes
) -> None:
    reply = await exchange(proxy.port, wire)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply
    assert b"connection: close" in reply.lower()
    assert reply.endswith(b"\r\n\r\nBad Request")
    assert h1.requests == []


async def status_code(proxy: ProxyUnderTest, *args: str) -> bytes:
    proc = await run(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args, f"{proxy.url}/echo"
    )
    return proc.stdout


async def test_oversized_headers_are_431_with_curl(proxy: ProxyUnderTest) -> None:
    big = "x" * (61 * 1024)
    assert await status_code(proxy, "-H", f"X-Big: {big}") == b"431"
    headers = " ".join(f"-H X-H{i}:v" for i in range(101)).split()
    assert await status_code(proxy, *headers) == b"431"
    # 100 fields in all (curl adds Host, User-Agent and Accept) are fine
    headers = " ".join(f"-H X-H{i}:v" for i in range(97)).split()
    assert await status_code(proxy, *headers) == b"200"


async def test_oversized_headers_over_http2_refuse_only_that_stream(proxy: ProxyUnderTest) -> None:
    # over our 60 KiB; curl (nghttp2) sends no header block over 64 KiB at all
    big = "x" * 62000
    assert await status_code(proxy, "--http2-prior-knowledge", "-H", f"X-Big: {big}") == b"431"


async def test_a_post_to_no_route_does_not_wedge_the_connection(nursery: trio.Nursery) -> None:
    """A local reply before the request body was read: the rest of the body must not leave
    the connection stuck (the reader blocked on a stream nobody reads)."""
    async with run_proxy(StaticResolver([], {})) as proxy:
        body = pattern(4 * MiB)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)

            async def upload() -> None:
                # the proxy may close before taking it all
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(head + body)

            async with trio.open_nursery() as n:
                n.start_soon(upload)
                reply = bytearray()
                try:
                    async for chunk in stream:
                        reply += chunk
                except trio.BrokenResourceError:
                    pass
        assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n"), reply[:200]
        # closed, as Envoy does when it answered before the request ended
        logs = await proxy.log.wait_for(1)
        assert logs[0].flags_text == "NR"


# clients that go away


@pytest.mark.parametrize("prefix", ["", "/h2"])
async def test_http1_client_gone_mid_response_frees_the_upstream(
    proxy: ProxyUnderTest, h1: H1Upstream, h2up: H2Upstream, prefix: str
) -> None:
    up = h2up if prefix else h1
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stream.send_all(
            b"GET %s/bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (prefix.encode(), 64 * MiB)
        )
        got = 0
        while got < 256 * 1024:
            got += len(await stream.receive_some(65536))
        # an abrupt close, as a killed client leaves it
        stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        await stream.aclose()
    logs = await proxy.log.wait_for(1)
    assert "DC" in logs[0].response_flags
    if prefix:
        # the upstream stream was reset, the HTTP/2 connection stays pooled and healthy
        await eventually(lambda: proxy.pool.connection_count == 1)
    else:
        # an HTTP/1.1 exchange cannot be abandoned: its connection is closed
        await eventually(lambda: up.open == 0)
        await eventually(lambda: proxy.pool.connection_count == 0)
    proc = await run("curl", "-sS", f"{proxy.url}{prefix}/echo")
    assert json.loads(proc.stdout)["path"] == "/echo"
    assert up.connections == 1 if prefix else up.connections == 2


async def test_http1_client_gone_while_the_upstream_thinks(
    proxy: ProxyUnderTest, h1: H1Upstream
) -> None:
    """The client leaves before any response: the proxy notices at once (not when the slow
    upstream answers) and gives the upstream connection up."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stream.send_all(b"GET /delay/30000 HTTP/1.1\r\nHost: a\r\n\r\n")
        await eventually(lambda: len(h1.requests) == 1)
        await stream.aclose()
    logs = await proxy.log.wait_for(1, limit=3)
    assert "DC" in logs[0].response_flags
    await eventually(lambda: proxy.pool.connection_count == 0)


async def test_http2_idle_time_counts_from_the_end_of_the_last_request(
    nursery: trio.Nursery,
) -> None:
    """Envoy's idle_timeout is time without an open request: an HTTP/2 connection whose one
    request outlasts the timeout is closed a whole timeout after its response, not at once."""

    async def handler(s: ServerStream) -> None:
        # ends between two of the idle timer's looks (at 0.3 s and 0.6 s)
        await trio.sleep(0.45)
        await s.send_head(ResponseHead(200, Headers([("content-length", "2")])))
        await s.send_data(b"ok", end_stream=True)

    async def serve(stream: trio.SocketStream) -> None:
        await serve_http(stream, handler, idle_timeout=0.3)

    port = await listen_tcp(nursery, serve)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")],
            end_stream=True,
        )
        await stream.send_all(conn.data_to_send())
        answered = None
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamEnded):
                    answered = trio.current_time()
            await stream.send_all(conn.data_to_send())
        assert answered is not None
        assert trio.current_time() - answered >= 0.25
        await stream.aclose()


async def test_http2_client_resets_a_stream_mid_response(
    proxy: ProxyUnderTest, h2up: H2Upstream
) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "a"),
                (":path", f"/h2/bytes/{64 * MiB}"),
            ],
            end_stream=True,
        )
        await stream.send_all(conn.data_to_send())
        got = 0
        while got < 512 * 1024:
            for ev in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(ev, h2.events.DataReceived):
                    got += len(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
            await stream.send_all(conn.data_to_send())
        conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        # the same connection goes on: a second request on it still works
        conn.send_headers(
            3,
            [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/h2/echo")],
            end_stream=True,
        )
        await stream.send_all(conn.data_to_send())
        body = b""
        done = False
        while not done:
            for ev in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id == 1:
                    continue  # what was in flight when the reset went out
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id == 3:
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 3)
                done = done or (isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 3)
            await stream.send_all(conn.data_to_send())
        assert json.loads(body)["path"] == "/echo"
        await stream.aclose()
    logs = await proxy.log.wait_for(2)
    assert "DC" in logs[0].response_flags
    # one pooled upstream connection, used for both
    assert h2up.connections == 1 and proxy.pool.connection_count == 1


async def test_http2_rapid_reset_is_bounded_and_ends_with_enhance_your_calm(
    proxy: ProxyUnderTest, h1: H1Upstream
) -> None:
    """CVE-2023-44487: streams opened and reset at once, as fast as the client can."""
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        goaway: h2.events.ConnectionTerminated | None = None
        for sid in range(1, 2 * 1000, 2):
            conn.send_headers(
                sid,
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "a"),
                    (":path", "/delay/5000"),
                ],
                end_stream=True,
            )
            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            try:
                await stream.send_all(conn.data_to_send())
            except trio.BrokenResourceError:
                break
            if sid % 64 == 1:
                with trio.move_on_after(0):
                    data = await stream.receive_some(65536)
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ConnectionTerminated):
                            goaway = ev
            if goaway is not None:
                break
        while goaway is None:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    goaway = ev
        await stream.aclose()
    assert goaway is not None, "no GOAWAY"
    assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    # every handler it started is gone, and few reached the upstream
    await eventually(lambda: all(s.done.is_set() for s in proxy.handlers))
    assert len(proxy.handlers) <= MAX_PENDING_HANDLERS
    assert len(h1.requests) <= len(proxy.handlers)
    # the proxy still serves others
    proc = await run("curl", "-sS", f"{proxy.url}/echo")
    assert json.loads(proc.stdout)["path"] == "/echo"


# protocol switches and pipelining


async def test_upgrade_passthrough_with_bytes_sent_early(
    proxy: ProxyUnderTest, h1: H1Upstream
) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"early bytes;"
        )
        got = b""
        while b"EARLY BYTES;" not in got:
            got += await stream.receive_some(65536)
        assert got.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in got.lower()
        for i in range(3):
            await stream.send_all(b"ping %d;" % i)
            want = b"PING %d;" % i
            echoed = b""
            while len(echoed) < len(want):
                echoed += await stream.receive_some(65536)
            assert echoed == want
        await stream.send_eof()
        assert await stream.receive_some(65536) == b""
        await stream.aclose()
    logs = await proxy.log.wait_for(1)
    assert logs[0].response is not None and logs[0].response.status == 101
    # the switched connection is not pooled
    assert proxy.pool.connection_count == 0


async def test_pipelined_requests_are_answered_in_order(proxy: ProxyUnderTest) -> None:
    wire = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    wire += b"GET /echo/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    reply = await exchange(proxy.port, wire)
    # read the answers the way a client would
    client = h11.Connection(h11.CLIENT)
    paths = []
    for i in range(6):
        client.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
        client.send(h11.EndOfMessage())
        if i == 0:
            client.receive_data(reply)
            client.receive_data(b"")
        body = b""
        while not isinstance(ev := client.next_event(), h11.EndOfMessage):
            if isinstance(ev, h11.Data):
                body += ev.data
        paths.append(json.loads(body)["path"])
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
    assert paths == [f"/echo/{i}" for i in range(5)] + ["/echo/last"]


async def test_expect_100_continue_upload(proxy: ProxyUnderTest, tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "body"
    path.write_bytes(pattern(2 * MiB))
    proc = await run(
        "curl",
        "-sS",
        "-v",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{path}",
        f"{proxy.url}/echo",
    )
    assert b"< HTTP/1.1 100 Continue" in proc.stderr
    echo = json.loads(proc.stdout)
    assert echo["sha256"] == hashlib.sha256(pattern(2 * MiB)).hexdigest()
    assert "expect" not in echo["headers"]


async def test_idle_client_connections_are_closed(nursery: trio.Nursery, h1: H1Upstream) -> None:
    async with run_proxy(
        StaticResolver([Route("a", backends=(Backend(H1, 80),))], {H1: [(h1.address, False)]}),
        idle_timeout=0.3,
    ) as proxy:
        start = trio.current_time()
        reply = await exchange(proxy.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert trio.current_time() - start < 3
        # silent from the start: closed as well
        assert await exchange(proxy.port, b"") == b""


async def test_a_client_that_stops_reading_is_cut_off(
    proxy: ProxyUnderTest, h1: H1Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that makes no progress for WRITE_TIMEOUT ends the connection: a client that
    never reads cannot hold the proxy and its upstream forever."""
    monkeypatch.setattr(connection, "WRITE_TIMEOUT", 0.5)
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        await stream.send_all(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (256 * MiB))
        logs = await proxy.log.wait_for(1, limit=15)
        assert "DC" in logs[0].response_flags
        await eventually(lambda: proxy.pool.connection_count == 0)
        assert h1.sent < 256 * MiB
        await stream.aclose()
