"""Shared pieces of the HTTP engine's integration tests: the proxy on a loopback listener, a
static resolver, and upstream servers built on other implementations (h11, h2, grpcio) so the
engine is never tested only against itself.

Upstream behaviours are chosen by path, the way httpbin does it:

- `/echo` (any method): 200 with JSON `{method, path, headers, body_len, sha256}` of what
  arrived, after reading the whole body;
- `/status/<code>`: that status with a short body;
- `/flaky`: 503 while `fail_next` > 0 (counting down), then 200;
- `/delay/<ms>`: 200 after that long;
- `/bytes/<n>`: n bytes of a fixed pattern (`pattern(n)`), chunked/streamed, with trailers
  `x-sha256` on HTTP/2 and on HTTP/1.1 when the request says `te: trailers`;
- `/reset-before`: the connection (HTTP/1.1) or stream (HTTP/2) is reset before any response;
- `/reset-mid`: a 200 promising 10 MiB, 64 KiB of it, then a reset;
- `/ws` (HTTP/1.1 with `Upgrade: websocket`): 101, then echoes raw bytes upper-cased.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from concurrent import futures
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h11
import trio

from ztunnel_py.http.connection import ServerStream, serve_http
from ztunnel_py.http.filter import Downstream, Filter, FilterChain, RequestContext
from ztunnel_py.http.proxy import HttpProxy
from ztunnel_py.http.upstream import UpstreamPool, UpstreamTarget
from ztunnel_py.model.http import Backend, MatchKind, PathMatch, Rewrite, Route, RouteMatch

MiB = 1024 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


def pattern(n: int) -> bytes:
    """n bytes that are not all alike, so a reordered or cut body shows."""
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


def rst(stream: trio.SocketStream) -> None:
    """Close with a TCP RST: the peer sees an error, not an orderly end."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    stream.socket.close()


async def listen_tcp(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Any]) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


@dataclass
class Upstream:
    """What an upstream server saw."""

    port: int = 0
    connections: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    fail_next: int = 0
    # connections currently open
    open: int = 0
    # HTTP/2: streams the client reset
    resets: int = 0
    # body bytes written by /bytes
    sent: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# HTTP/1.1 upstream on h11


class H1Upstream(Upstream):
    async def serve(self, nursery: trio.Nursery) -> H1Upstream:
        self.port = await listen_tcp(nursery, self._connection)
        return self

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await self._next(stream, conn)
                if not isinstance(req, h11.Request):
                    return
                if not await self._exchange(stream, conn, req):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            self.open -= 1
            if stream.socket.fileno() >= 0:
                await stream.aclose()

    async def _next(self, stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(256 * 1024))
                continue
            assert isinstance(ev, h11.Event) or ev is h11.PAUSED
            return ev  # type: ignore[return-value]

    async def _exchange(
        self, stream: trio.SocketStream, conn: h11.Connection, req: h11.Request
    ) -> bool:
        path = req.target.decode()
        headers: dict[str, str] = {}
        for n, v in req.headers:
            name = n.decode()
            headers[name] = f"{headers[name]}, {v.decode()}" if name in headers else v.decode()
        self.requests.append((req.method.decode(), path, headers))

        async def send(*events: h11.Event) -> None:
            for ev in events:
                data = conn.send(ev)
                if data:
                    await stream.send_all(data)

        if path.startswith("/ws") and headers.get("upgrade") == "websocket":
            await self._next(stream, conn)  # EndOfMessage
            await send(
                h11.InformationalResponse(
                    status_code=101, headers=[("connection", "Upgrade"), ("upgrade", "websocket")]
                )
            )
            early, _ = conn.trailing_data
            if early:
                await stream.send_all(bytes(early).upper())
            async for chunk in stream:
                await stream.send_all(bytes(chunk).upper())
            return False
        if path == "/reset-before":
            rst(stream)
            return False
        digest = hashlib.sha256()
        size = 0
        while True:
            ev = await self._next(stream, conn)
            if isinstance(ev, h11.Data):
                digest.update(ev.data)
                size += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                return False
        if path.startswith("/echo"):
            body = json.dumps(
                {
                    "method": req.method.decode(),
                    "path": path,
                    "headers": headers,
                    "body_len": size,
                    "sha256": digest.hexdigest(),
                }
            ).encode()
            await send(
                h11.Response(
                    status_code=200,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        elif path.startswith("/status/"):
            code = int(path.split("/")[2])
            body = b"" if code in (204, 304) else b"status"
            await send(
                h11.Response(status_code=code, headers=[("content-length", str(len(body)))]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        elif path == "/flaky":
            status = 503 if self.fail_next > 0 else 200
            self.fail_next = max(0, self.fail_next - 1)
            body = b"try again" if status == 503 else b"finally"
            await send(
                h11.Response(status_code=status, headers=[("content-length", str(len(body)))]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        elif path.startswith("/delay/"):
            await trio.sleep(int(path.split("/")[2]) / 1000)
            await send(
                h11.Response(status_code=200, headers=[("content-length", "7")]),
                h11.Data(data=b"delayed"),
                h11.EndOfMessage(),
            )
        elif path.startswith("/bytes/") and req.method == b"HEAD":
            await send(
                h11.Response(status_code=200, headers=[("content-length", path.split("/")[2])]),
                h11.EndOfMessage(),
            )
        elif path.startswith("/bytes/"):
            n = int(path.split("/")[2])
            body = pattern(n)
            trailers = "trailers" in headers.get("te", "")
            await send(h11.Response(status_code=200, headers=[("content-type", "x/bytes")]))
            for i in range(0, n, 64 * 1024):
                await send(h11.Data(data=body[i : i + 64 * 1024]))
                self.sent += len(body[i : i + 64 * 1024])
            end = [("x-sha256", hashlib.sha256(body).hexdigest())] if trailers else []
            await send(h11.EndOfMessage(headers=end))
        elif path == "/reset-mid":
            await send(
                h11.Response(status_code=200, headers=[("content-length", str(10 * MiB))]),
                h11.Data(data=pattern(64 * 1024)),
            )
            rst(stream)
            return False
        else:
            await send(
                h11.Response(status_code=404, headers=[("content-length", "0")]),
                h11.EndOfMessage(),
            )
        return True


# HTTP/2 (prior knowledge) upstream on h2


class H2Upstream(Upstream):
    async def serve(self, nursery: trio.Nursery) -> H2Upstream:
        self.port = await listen_tcp(nursery, self._connection)
        return self

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        lock = trio.Lock()
        window = trio.Event()
        bodies: dict[int, tuple[Any, int, dict[str, str]]] = {}

        async def flush() -> None:
            async with lock:
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)

        async def send_body(sid: int, data: bytes, trailers: list[tuple[str, str]]) -> None:
            nonlocal window
            view = memoryview(data)
            while view:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    await window.wait()
                    continue
                conn.send_data(sid, bytes(view[:room]))
                view = view[room:]
                await flush()
            if trailers:
                conn.send_headers(sid, trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            await flush()

        async def respond_or_reset(
            sid: int, path: str, digest: Any, size: int, headers: dict[str, str]
        ) -> None:
            # the proxy resets streams it gives up: that ends this response
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                await respond(sid, path, digest, size, headers)

        async def respond(
            sid: int, path: str, digest: Any, size: int, headers: dict[str, str]
        ) -> None:
            if path.startswith("/echo"):
                body = json.dumps(
                    {
                        "method": headers[":method"],
                        "path": path,
                        "headers": headers,
                        "body_len": size,
                        "sha256": digest.hexdigest(),
                    }
                ).encode()
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json")])
                await send_body(sid, body, [])
            elif path.startswith("/status/") and path.split("/")[2] in ("204", "304"):
                conn.send_headers(sid, [(":status", path.split("/")[2])], end_stream=True)
                await flush()
            elif path.startswith("/status/"):
                conn.send_headers(sid, [(":status", path.split("/")[2])])
                await send_body(sid, b"status", [])
            elif path.startswith("/delay/"):
                await trio.sleep(int(path.split("/")[2]) / 1000)
                conn.send_headers(sid, [(":status", "200")])
                await send_body(sid, b"delayed", [])
            elif path.startswith("/bytes/") and headers[":method"] == "HEAD":
                conn.send_headers(sid, [(":status", "200")], end_stream=True)
                await flush()
            elif path.startswith("/bytes/"):
                body = pattern(int(path.split("/")[2]))
                conn.send_headers(sid, [(":status", "200")])
                await send_body(sid, body, [("x-sha256", hashlib.sha256(body).hexdigest())])
            elif path == "/reset-mid":
                conn.send_headers(sid, [(":status", "200"), ("content-length", str(10 * MiB))])
                conn.send_data(sid, pattern(16 * 1024))
                await flush()
                conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                await flush()
            else:
                conn.send_headers(sid, [(":status", "404")], end_stream=True)
                await flush()

        try:
            async with trio.open_nursery() as nursery:
                await flush()
                async for chunk in stream:
                    for ev in conn.receive_data(bytes(chunk)):
                        if isinstance(ev, h2.events.RequestReceived):
                            assert ev.stream_id is not None
                            headers = dict(ev.headers or [])
                            path = headers[":path"]
                            self.requests.append((headers[":method"], path, headers))
                            if path == "/reset-before":
                                conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                                continue
                            if path == "/refuse":
                                conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                                continue
                            bodies[ev.stream_id] = (hashlib.sha256(), 0, headers)
                        elif isinstance(ev, h2.events.DataReceived):
                            assert ev.stream_id is not None
                            conn.acknowledge_received_data(
                                ev.flow_controlled_length or 0, ev.stream_id
                            )
                            if ev.stream_id in bodies:
                                digest, size, headers = bodies[ev.stream_id]
                                digest.update(ev.data or b"")
                                bodies[ev.stream_id] = (digest, size + len(ev.data or b""), headers)
                        elif isinstance(ev, h2.events.StreamEnded):
                            assert ev.stream_id is not None
                            if ev.stream_id in bodies:
                                digest, size, headers = bodies.pop(ev.stream_id)
                                nursery.start_soon(
                                    respond_or_reset,
                                    ev.stream_id,
                                    headers[":path"],
                                    digest,
                                    size,
                                    headers,
                                )
                        elif isinstance(
                            ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)
                        ):
                            window.set()
                            window = trio.Event()
                        elif isinstance(ev, h2.events.StreamReset):
                            bodies.pop(ev.stream_id or 0, None)
                            self.resets += 1
                            window.set()
                            window = trio.Event()
                    await flush()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.open -= 1
            await stream.aclose()


# gRPC upstream on grpcio (its own threads)

ECHO_SERVICE = "test.Echo"


def _ident(b: bytes) -> bytes:
    return b


class _EchoHandler(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if method == f"/{ECHO_SERVICE}/Say":

            def say(request: bytes, context: grpc.ServicerContext) -> bytes:
                context.set_trailing_metadata((("x-trailer", "said"),))
                return b"echo:" + request

            return grpc.unary_unary_rpc_method_handler(say, _ident, _ident)
        if method == f"/{ECHO_SERVICE}/Count":

            def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                for i in range(int(request.decode())):
                    yield str(i).encode()

            return grpc.unary_stream_rpc_method_handler(count, _ident, _ident)
        if method == f"/{ECHO_SERVICE}/Slow":

            def slow(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                for i in range(int(request.decode())):
                    time.sleep(0.05)
                    yield str(i).encode()

            return grpc.unary_stream_rpc_method_handler(slow, _ident, _ident)
        if method == f"/{ECHO_SERVICE}/Fail":

            def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no " + request.decode())
                raise AssertionError("abort returns no value")

            return grpc.unary_unary_rpc_method_handler(fail, _ident, _ident)
        return None


@dataclass
class GrpcUpstream(Upstream):
    server: Any = None


@contextmanager
def grpc_upstream() -> Iterator[GrpcUpstream]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_EchoHandler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield GrpcUpstream(port=port, server=server)
    finally:
        server.stop(grace=None)


# The proxy under test


@dataclass
class StaticResolver:
    """The same routes for every request, and endpoints (address, HTTP/2?) per backend
    service."""

    table: Sequence[Route]
    endpoints: dict[str, list[tuple[str, bool]]]
    port: int = 80

    def routes(self, ctx: RequestContext) -> Sequence[Route]:
        ctx.port = self.port
        ctx.service = "test/front"
        return self.table

    def target(
        self, ctx: RequestContext, backend: Backend, exclude: Collection[str], *, http1: bool
    ) -> UpstreamTarget | None:
        candidates = [
            (addr, h2) for addr, h2 in self.endpoints.get(backend.service, []) if not (http1 and h2)
        ]
        if not candidates:
            return None
        fresh = [c for c in candidates if c[0] not in exclude] or candidates
        address, http2 = fresh[0]
        host, _, port = address.rpartition(":")

        async def connect() -> trio.SocketStream:
            return await trio.open_tcp_stream(host, int(port))

        return UpstreamTarget((address, http2), address, http2, connect)


class LogFilter(Filter):
    """Keeps every finished request's context, as an access log would see it."""

    name = "test-log"

    def __init__(self) -> None:
        self.done: list[RequestContext] = []
        self.event = trio.Event()

    def on_log(self, ctx: RequestContext) -> None:
        self.done.append(ctx)
        self.event.set()
        self.event = trio.Event()

    async def wait_for(self, count: int, limit: float = 5.0) -> list[RequestContext]:
        with trio.fail_after(limit):
            while len(self.done) < count:
                await self.event.wait()
        return self.done


@dataclass
class ProxyUnderTest:
    port: int
    proxy: HttpProxy
    pool: UpstreamPool
    log: LogFilter
    handlers: list[ServerStream] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def run_proxy(
    resolver: StaticResolver,
    filters: Sequence[Filter] = (),
    *,
    idle_timeout: float = math.inf,
    rand: Callable[[], float] | None = None,
) -> AsyncIterator[ProxyUnderTest]:
    log = LogFilter()
    async with trio.open_nursery() as nursery:
        pool = UpstreamPool(nursery)
        kwargs: dict[str, Any] = {"rand": rand} if rand is not None else {}
        proxy = HttpProxy(FilterChain([log, *filters]), resolver, pool, **kwargs)
        put = ProxyUnderTest(0, proxy, pool, log)

        async def handle(stream: trio.SocketStream) -> None:
            peer = stream.socket.getpeername()

            async def handler(s: ServerStream) -> None:
                put.handlers.append(s)
                await proxy.handle(s, Downstream(None, f"{peer[0]}:{peer[1]}", "test", mtls=False))

            await serve_http(stream, handler, idle_timeout=idle_timeout)

        put.port = await listen_tcp(nursery, handle)
        try:
            yield put
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


H1_SERVICE = "test/h1"
H2_SERVICE = "test/h2"


@asynccontextmanager
async def front_proxy(h1: H1Upstream, h2: H2Upstream) -> AsyncIterator[ProxyUnderTest]:
    """The proxy most tests use: `/h2/...` to the HTTP/2 upstream (the prefix stripped), the
    rest to the HTTP/1.1 one, Istio's default retry policy."""
    routes = [
        Route(
            "h2",
            matches=(RouteMatch(path=PathMatch(MatchKind.PREFIX, "/h2")),),
            rewrite=Rewrite(prefix="/"),
            backends=(Backend(H2_SERVICE, 80),),
        ),
        Route("h1", backends=(Backend(H1_SERVICE, 80),)),
    ]
    endpoints = {H1_SERVICE: [(h1.address, False)], H2_SERVICE: [(h2.address, True)]}
    async with run_proxy(StaticResolver(routes, endpoints)) as put:
        yield put


async def run(
    *argv: str, limit: float = 20.0, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """A client process, bounded in time; its output captured."""
    with trio.fail_after(limit):
        return await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False, stdin=stdin
        )
