"""The small HTTP/1.1 server under the admin, metrics and readiness endpoints (h11 on trio).

Each connection runs in its own task with deadlines on reading a request and on writing a
response, so a slow or silent client only ever holds its own connection; a connection that sends
nothing (new, or between keep-alive requests) is closed after `Limits.idle_timeout`. Malformed
requests get a 400 and a clean close; a handler that raises gets a 500. Past
`Limits.max_connections`, a new connection takes the place of the oldest idle one (so idle
connections, which cost a client nothing to open, can never lock out a kubelet's probe, which
sends its request at once); only when every connection is busy with a request does a new one
get a 503. Handlers are plain async functions from `Request` to `Response`, routed by
exact path and method (HEAD is served by the GET handler, without the body). A response body
can also be streamed (`Response.stream`), each chunk written under the send deadline.
"""

from __future__ import annotations

import contextlib
import http
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from ztunnel_py.model.address import SocketAddr

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    # called once the response has been written (e.g. to start a shutdown it announced)
    on_sent: Callable[[], None] | None = field(default=None, compare=False)
    # a body written as it is produced (chunked), instead of `body`
    stream: AsyncGenerator[bytes, None] | None = field(default=None, compare=False)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method] = handler

    def paths(self) -> list[tuple[str, str]]:
        return [(m, p) for p, methods in self._routes.items() for m in methods]

    async def dispatch(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            return Response.text(404, f"no such endpoint: {request.path}\n")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            return Response.text(405, f"method {request.method} not allowed; use {allowed}\n")
        return await handler(request)


@dataclass(frozen=True, slots=True)
class Limits:
    idle_timeout: float = 2.0  # for the first byte of a request (new or kept-alive connection)
    request_timeout: float = 10.0  # to receive the rest of the request
    send_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 128
    linger: float = 1.0  # how long an error close waits for the client to finish sending


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def serve_http(
    router: Router,
    address: SocketAddr,
    *,
    name: str,
    limits: Limits | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind `address`, report the listeners through `task_status`, serve until cancelled."""
    listeners = await trio.open_tcp_listeners(address.port, host=str(address.host))
    for listener in listeners:
        host, port = listener.socket.getsockname()[:2]
        log.info("%s listening on %s", name, SocketAddr(host, port))
    server = _Server(router, limits or Limits(), name)
    await trio.serve_listeners(server.handle, listeners, task_status=task_status)


class _Server:
    def __init__(self, router: Router, limits: Limits, name: str) -> None:
        self.router = router
        self.limits = limits
        self.name = name
        self.active = 0
        self.evicted = 0
        # Connections waiting for the first byte of a request, oldest first, by their scope.
        self._idle: dict[int, trio.CancelScope] = {}

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.active += 1
        try:
            if self.active > self.limits.max_connections:
                if not self._idle:
                    await self._refuse(stream, conn, 503, "too many connections")
                    return
                self._idle.pop(next(iter(self._idle))).cancel()
                self.evicted += 1
            await self._serve(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away; nothing to tell it
        except Exception:
            # A bug in one exchange (say a handler's on_sent) must not stop the server.
            log.exception("%s: connection failed", self.name)
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        while True:
            try:
                request = await self._receive(stream, conn)
            except _BadRequest as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._refuse(stream, conn, e.status, str(e))
                return
            if request is None:
                return
            response = await self._respond(request)
            if not await self._send(stream, conn, response, False, request.method == "HEAD"):
                return
            if response.on_sent is not None:
                response.on_sent()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _first_bytes(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Wait for the next request to start, at most `idle_timeout` and only while no new
        connection needs the room; False if it did not."""
        if conn.trailing_data[0]:
            return True  # pipelined after the previous request
        scope = trio.CancelScope(deadline=trio.current_time() + self.limits.idle_timeout)
        self._idle[id(scope)] = scope
        try:
            with scope:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                return bool(data)
        finally:
            self._idle.pop(id(scope), None)
        return False

    async def _receive(self, stream: trio.SocketStream, conn: h11.Connection) -> Request | None:
        """The next whole request; None when the client closed or idled out between requests."""
        if not await self._first_bytes(stream, conn):
            return None
        request: h11.Request | None = None
        body = bytearray()
        with trio.move_on_after(self.limits.request_timeout):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise _BadRequest(e.error_status_hint, f"bad request: {e}") from None
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                    await self._expect_body(stream, conn, event)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.limits.max_body_bytes:
                        raise _BadRequest(413, "request body too large")
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    return _request(request, bytes(body))
                else:
                    return None  # ConnectionClosed (or PAUSED, which a server never sees here)
        raise _BadRequest(408, "request not received in time")

    async def _expect_body(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
    ) -> None:
        """Refuse an announced oversized body up front; answer `Expect: 100-continue`."""
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.limits.max_body_bytes:
                raise _BadRequest(413, "request body too large")
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))

    async def _refuse(
        self, stream: trio.SocketStream, conn: h11.Connection, status: int, message: str
    ) -> None:
        """Send an error and close cleanly: half-close, then drain what the client still sends
        for a moment, so unread request bytes do not turn our close into a reset that would
        destroy the error response in flight."""
        if not await self._send(stream, conn, Response.text(status, f"{message}\n"), True):
            return
        await stream.send_eof()
        with trio.move_on_after(self.limits.linger):
            drained = 0
            while drained < self.limits.max_body_bytes:
                data = await stream.receive_some(65536)
                if not data:
                    break
                drained += len(data)

    async def _respond(self, request: Request) -> Response:
        try:
            return await self.router.dispatch(request)
        except Exception:
            log.exception("%s: handler for %s %s failed", self.name, request.method, request.path)
            return Response.text(500, "internal error; see the agent's log\n")

    async def _send(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        response: Response,
        close: bool,
        head: bool = False,
    ) -> bool:
        """Write `response`; False if it could not be written in time."""
        headers = [("content-type", response.content_type), ("cache-control", "no-cache")]
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        reason = http.HTTPStatus(response.status).phrase.encode()
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.stream is not None:
            async with contextlib.aclosing(response.stream) as chunks:
                if not head:
                    async for chunk in chunks:
                        data += conn.send(h11.Data(data=chunk))
                        if not await self._write(stream, data):
                            return False
                        data = b""
        elif response.body and not head:
            data += conn.send(h11.Data(data=response.body))
        return await self._write(stream, data + conn.send(h11.EndOfMessage()))

    async def _write(self, stream: trio.SocketStream, data: bytes) -> bool:
        with trio.move_on_after(self.limits.send_timeout):
            await stream.send_all(data)
            return True
        return False


def _request(event: h11.Request, body: bytes) -> Request:
    target = event.target.decode("latin-1")
    parts = urlsplit(target)
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(
        method=event.method.decode("latin-1"),
        path=parts.path or "/",
        query=parse_qs(parts.query, keep_blank_values=True),
        headers=headers,
        body=body,
    )
