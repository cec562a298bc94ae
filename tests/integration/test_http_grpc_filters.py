"""gRPC through the engine with grpcio on both ends, user filters on live traffic, and bodies
that stream instead of being buffered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import trio

from tests.integration.http_support import (
    ECHO_SERVICE,
    GrpcUpstream,
    H1Upstream,
    MiB,
    ProxyUnderTest,
    StaticResolver,
    grpc_upstream,
    pattern,
    run,
    run_proxy,
)
from ztunnel_py.http.filter import Filter, LocalReply, RequestContext
from ztunnel_py.http.message import Headers
from ztunnel_py.model.http import Backend, MatchKind, PathMatch, Route, RouteMatch

pytestmark = pytest.mark.timeout(60)

GRPC = "test/grpc"
H1 = "test/h1"


@pytest.fixture
def grpc_server() -> Iterator[GrpcUpstream]:
    with grpc_upstream() as up:
        yield up


@pytest.fixture
async def proxy(grpc_server: GrpcUpstream) -> AsyncIterator[ProxyUnderTest]:
    routes = [
        Route(
            "grpc",
            matches=(RouteMatch(path=PathMatch(MatchKind.PREFIX, f"/{ECHO_SERVICE}")),),
            backends=(Backend(GRPC, 80),),
        )
    ]
    endpoints = {GRPC: [(grpc_server.address, True)]}
    async with run_proxy(StaticResolver(routes, endpoints)) as put:
        yield put


def _ident(b: bytes) -> bytes:
    return b


def call_unary(port: int, method: str, request: bytes) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(
            f"/{ECHO_SERVICE}/{method}", request_serializer=_ident, response_deserializer=_ident
        )
        response, call = stub.with_call(request, timeout=10)
        return response, tuple(call.trailing_metadata() or ())


def call_stream(port: int, count: int) -> list[bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_stream(
            f"/{ECHO_SERVICE}/Count", request_serializer=_ident, response_deserializer=_ident
        )
        return list(stub(str(count).encode(), timeout=10))


def call_error(port: int, method: str) -> tuple[grpc.StatusCode, str]:
    try:
        call_unary(port, method, b"x")
    except grpc.RpcError as e:
        return e.code(), e.details() or ""  # type: ignore[attr-defined]
    raise AssertionError("the call succeeded")


async def test_grpc_unary_and_server_streaming(proxy: ProxyUnderTest) -> None:
    response, trailers = await trio.to_thread.run_sync(call_unary, proxy.port, "Say", b"hi")
    assert response == b"echo:hi"
    assert ("x-trailer", "said") in trailers
    messages = await trio.to_thread.run_sync(call_stream, proxy.port, 50)
    assert messages == [str(i).encode() for i in range(50)]
    logs = await proxy.log.wait_for(2)
    assert [c.grpc_status for c in logs] == ["0", "0"]


def call_slow(port: int, count: int) -> list[bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_stream(
            f"/{ECHO_SERVICE}/Slow", request_serializer=_ident, response_deserializer=_ident
        )
        return list(stub(str(count).encode(), timeout=20))


async def test_grpc_server_draining_lets_the_call_in_flight_finish(
    proxy: ProxyUnderTest, grpc_server: GrpcUpstream
) -> None:
    """A gRPC server stopping with a grace period sends GOAWAY and finishes its calls: the
    stream through the proxy must come to its end, not be cut."""
    async with trio.open_nursery() as nursery:
        result: list[list[bytes]] = []

        async def slow() -> None:
            result.append(await trio.to_thread.run_sync(call_slow, proxy.port, 40))

        nursery.start_soon(slow)
        await trio.sleep(0.5)
        stopped = await trio.to_thread.run_sync(lambda: grpc_server.server.stop(grace=10))
        await trio.to_thread.run_sync(stopped.wait, 15)
    assert result == [[str(i).encode() for i in range(40)]]
    # the drained connection left the pool
    assert proxy.pool.connection_count == 0


async def test_grpc_errors_pass_through_with_their_status(proxy: ProxyUnderTest) -> None:
    code, details = await trio.to_thread.run_sync(call_error, proxy.port, "Fail")
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details == "no x"
    logs = await proxy.log.wait_for(1)
    # 9: FAILED_PRECONDITION, from the trailers-only response of the upstream
    assert logs[0].grpc_status == "9"


async def test_grpc_local_replies_are_trailers_only(proxy: ProxyUnderTest) -> None:
    code, _details = await trio.to_thread.run_sync(
        lambda: call_error_path(proxy.port, "/other.Service/Method")
    )
    # no route: Envoy's 404 maps to UNIMPLEMENTED
    assert code == grpc.StatusCode.UNIMPLEMENTED
    logs = await proxy.log.wait_for(1)
    assert logs[0].grpc_status == "12" and logs[0].flags_text == "NR"
    assert logs[0].response is not None and logs[0].response.status == 200


def call_error_path(port: int, path: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(path, request_serializer=_ident, response_deserializer=_ident)
        try:
            stub(b"x", timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""  # type: ignore[attr-defined]
    raise AssertionError("the call succeeded")


async def test_grpc_to_an_endpoint_that_is_gone(nursery: trio.Nursery) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    routes = [Route("grpc", backends=(Backend(GRPC, 80),))]
    async with run_proxy(
        StaticResolver(routes, {GRPC: [(address, True)]}), rand=lambda: 0.0
    ) as proxy:
        code, details = await trio.to_thread.run_sync(call_error, proxy.port, "Say")
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "upstream connect error" in details
        logs = await proxy.log.wait_for(1)
        assert logs[0].grpc_status == "14"


# filters on live traffic


class Stamp(Filter):
    """Adds a request header and a response header naming itself, in order."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        ctx.request.headers.add("x-chain", self.tag)
        return None

    async def on_response_headers(self, ctx: RequestContext) -> LocalReply | None:
        assert ctx.response is not None
        ctx.response.headers.add("x-chain-back", self.tag)
        return None


class Gate(Filter):
    """Answers requests carrying `x-deny` itself."""

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        if "x-deny" in ctx.request.headers:
            return LocalReply(403, "RBAC: access denied", details="rbac_access_denied")
        return None


class Shout(Filter):
    """Upper-cases bodies both ways and appends a marker at their end."""

    async def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk.upper() + (b"|req-end" if end else b"")

    async def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk.upper() + (b"|resp-end" if end else b"")

    async def on_response_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        trailers.add("x-shouted", "yes")


class Broken(Filter):
    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        if ctx.request.path == "/boom":
            raise RuntimeError("filter bug")
        return None


@pytest.fixture
async def h1(nursery: trio.Nursery) -> H1Upstream:
    return await H1Upstream().serve(nursery)


async def test_filters_run_in_order_and_can_answer(h1: H1Upstream) -> None:
    chain = [Stamp("a"), Gate(), Stamp("b"), Broken()]
    routes = [Route("h1", backends=(Backend(H1, 80),))]
    async with run_proxy(StaticResolver(routes, {H1: [(h1.address, False)]}), chain) as proxy:
        proc = await run("curl", "-sS", "-v", f"{proxy.url}/echo")
        seen = json.loads(proc.stdout)["headers"]
        # request hooks in order
        assert seen["x-chain"] == "a, b"
        assert [
            line.split(b":", 1)[1].strip()
            for line in proc.stderr.splitlines()
            if line.lower().startswith(b"< x-chain-back:")
        ] == [b"b", b"a"]
        proc = await run("curl", "-sS", "-v", "-H", "x-deny: 1", f"{proxy.url}/echo")
        assert b"< HTTP/1.1 403 Forbidden" in proc.stderr
        assert proc.stdout == b"RBAC: access denied"
        # the response hooks ran on the local reply too
        assert b"< x-chain-back: a" in proc.stderr
        proc = await run("curl", "-sS", "-v", f"{proxy.url}/boom")
        assert b"< HTTP/1.1 500 " in proc.stderr
        logs = await proxy.log.wait_for(3)
        assert [c.details for c in logs[1:]] == ["rbac_access_denied", "filter_failed"]
    assert len(h1.requests) == 1


@pytest.mark.parametrize("http2", [False, True])
async def test_body_filters_edit_both_ways(h1: H1Upstream, http2: bool) -> None:
    routes = [Route("h1", backends=(Backend(H1, 80),))]
    async with run_proxy(StaticResolver(routes, {H1: [(h1.address, False)]}), [Shout()]) as proxy:
        version = "--http2-prior-knowledge" if http2 else "--http1.1"
        proc = await run(
            "curl",
            "-sS",
            version,
            "--data-binary",
            "hello world",
            "-H",
            "Content-Type: text/plain",
            f"{proxy.url}/echo",
        )
        assert proc.returncode == 0, proc.stderr
        # the upstream got the edited body, its length no longer what the client declared
        body = proc.stdout
        assert body.endswith(b"|resp-end")
        echo = json.loads(body[: -len(b"|resp-end")].lower())
        assert echo["body_len"] == len(b"HELLO WORLD|req-end")
        # the response, upper-cased by the filter, with its marker at the end
        proc = await run("curl", "-sS", version, "-H", "TE: trailers", f"{proxy.url}/bytes/100")
        assert proc.stdout == pattern(100).upper() + b"|resp-end"


# bodies stream, they are not buffered


@pytest.mark.parametrize("http2", [False, True])
async def test_a_slow_reader_slows_the_upstream(h1: H1Upstream, http2: bool) -> None:
    """A client that stops reading stops the upstream too (the proxy holds a bounded amount),
    and the whole body arrives intact once it reads again."""
    total = 64 * MiB
    routes = [Route("h1", backends=(Backend(H1, 80),))]
    async with run_proxy(StaticResolver(routes, {H1: [(h1.address, False)]})) as proxy:
        with trio.fail_after(40):
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 64 * 1024)
            path = f"/bytes/{total}"
            if http2:
                import h2.config
                import h2.connection
                import h2.events

                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                conn.send_headers(
                    1,
                    [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", path)],
                    end_stream=True,
                )
                await stream.send_all(conn.data_to_send())
            else:
                await stream.send_all(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
            # not reading: whatever the upstream manages to write piles up somewhere bounded
            await trio.sleep(1.5)
            stalled = h1.sent
            assert stalled < 16 * MiB, stalled
            await trio.sleep(0.5)
            assert h1.sent - stalled < 8 * MiB
            # now read it all
            received = 0
            digest_ok = True
            expected = pattern(total)
            if http2:
                done = False
                while not done:
                    for ev in conn.receive_data(await stream.receive_some(256 * 1024)):
                        if isinstance(ev, h2.events.DataReceived):
                            digest_ok &= ev.data == expected[received : received + len(ev.data)]
                            received += len(ev.data)
                            conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                        done = done or isinstance(ev, h2.events.StreamEnded)
                    await stream.send_all(conn.data_to_send())
            else:
                buf = bytearray()
                while b"\r\n0\r\n\r\n" not in buf[-64:]:
                    buf += await stream.receive_some(256 * 1024)
                head, _, chunked = bytes(buf).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                body = bytearray()
                view = memoryview(chunked)
                while True:
                    line_end = bytes(view[:20]).index(b"\r\n")
                    size = int(bytes(view[:line_end]), 16)
                    if size == 0:
                        break
                    body += view[line_end + 2 : line_end + 2 + size]
                    view = view[line_end + 4 + size :]
                received = len(body)
                digest_ok = bytes(body) == expected
            await stream.aclose()
    assert received == total and digest_ok
