"""Trio drivers for the HTTP codecs: connections and the streams (exchanges) they carry.

`ServerConnection` serves one downstream connection (HTTP/1.1, or HTTP/2 with prior knowledge,
told apart by the client's first bytes) and runs a handler per request, given a `ServerStream`;
`ClientConnection` is one upstream connection opening `ClientStream`s. Each connection runs one
reader task that feeds the codec and routes its events to the streams' inboxes; writes go out
under a lock right after each codec call.

Backpressure: an HTTP/1.1 reader waits while a stream's inbox is full, so a slow consumer stops
reading from the socket; an HTTP/2 reader cannot stop for one stream, so its inboxes are
unbounded and bounded instead by flow control: received DATA is acknowledged only when the
stream's consumer takes it (`read_body`).

HTTP/1.1 server connections read the next request only once the current response is complete
(h11 would hold a pipelined request anyway), which is also what lets a protocol switch (101 to
an Upgrade, 2xx to CONNECT) hand the raw connection to the handler with no reader racing it.

Errors: a stream reset by the peer, or whose connection ended, raises `StreamError` from its
reads and writes. Each request handler runs in its own cancel scope: a reset stream cancels its
handler, and an HTTP/2 connection refuses new streams (REFUSED_STREAM) while
`MAX_PENDING_HANDLERS` handlers are still running, so resetting streams cannot pile up work
(the HTTP/2 rapid-reset pattern, CVE-2023-44487).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.errors
import trio

from ztunnel_py.http.events import (
    BadRequest,
    ConnectionEnded,
    DataReceived,
    Event,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    Switched,
    WindowOpened,
)
from ztunnel_py.http.h1 import H1Client, H1Server, HttpCodecError
from ztunnel_py.http.h2 import MAX_CONCURRENT_STREAMS, PREFACE, H2Client, H2Server
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
from ztunnel_py.transport.relay import ByteStream

log = logging.getLogger(__name__)

__all__ = [
    "BadRequestHandler",
    "ClientConnection",
    "ClientStream",
    "RequestHandler",
    "ServerConnection",
    "ServerStream",
    "StreamError",
]

_READ_SIZE = 64 * 1024
# HTTP/1.1: received body chunks a stream may hold before the reader stops reading
_H1_INBOX = 8
# HTTP/2: handlers (finished or reset streams included) one connection may have running
MAX_PENDING_HANDLERS = 2 * MAX_CONCURRENT_STREAMS
_REFUSED_STREAM = 7


class StreamError(Exception):
    """The stream cannot go on: reset by the peer, refused, or its connection ended."""

    def __init__(self, reason: str, *, refused: bool = False, code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        # the peer never saw the request through (REFUSED_STREAM, or the connection ended
        # before any response): retrying it elsewhere is safe
        self.refused = refused
        self.code = code


@dataclass(slots=True)
class _End:
    """The inbox's last item: the message ended (with trailers) or the stream failed."""

    trailers: Headers | None = None
    error: StreamError | None = None


_Inbox = DataReceived | _End | ResponseReceived | Switched


class _Stream:
    """What server and client streams share: an inbox of received events, and writes."""

    def __init__(self, conn: _Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        limit = _H1_INBOX if conn.is_h1 else math.inf
        self._inbox_in, self._inbox_out = trio.open_memory_channel[_Inbox](limit)
        self.trailers: Headers | None = None
        # the consumer read the end of the received message
        self.read_done = False
        # the connection saw the end of the received message / sent the end of ours
        self.received_end = False
        self.sent_end = False
        self.error: StreamError | None = None
        self.body_bytes_in = 0
        self.body_bytes_out = 0
        self.cancel_scope = trio.CancelScope()

    # the reader's side of the inbox

    async def _put(self, item: _Inbox) -> None:
        try:
            if self._conn.is_h1:
                await self._inbox_in.send(item)
            else:
                self._inbox_in.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _fail(self, error: StreamError) -> None:
        if self.error is not None:
            return
        self.error = error
        self.received_end = True
        self._inbox_in.close()

    # the consumer's side

    async def _take(self) -> _Inbox:
        try:
            return await self._inbox_out.receive()
        except trio.EndOfChannel:
            raise self.error or StreamError("stream closed") from None

    async def read_body(self) -> bytes | None:
        """The next chunk of the received body; None at its end (trailers in `trailers`)."""
        if self.read_done:
            return None
        item = await self._take()
        if isinstance(item, DataReceived):
            self.body_bytes_in += len(item.data)
            if item.flow_controlled:
                await self._conn.acknowledge(self.stream_id, item.flow_controlled)
            return item.data
        if isinstance(item, _End):
            self.read_done = True
            self.trailers = item.trailers
            return None
        raise StreamError(f"unexpected {type(item).__name__} in a message body")

    async def send_data(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            raise self.error
        if data:
            self.body_bytes_out += len(data)
            await self._conn.send_data(self, data)

    async def send_end(self, trailers: Headers | None = None) -> None:
        if self.error is not None:
            raise self.error
        if not self.sent_end:
            self.sent_end = True
            await self._conn.send_end(self, trailers)

    def reset(self) -> None:
        """Abort the stream (HTTP/2 RST_STREAM; HTTP/1.1 can only close the connection)."""
        self._conn.reset(self)


class ServerStream(_Stream):
    """One request received, and the response to it."""

    def __init__(
        self, conn: _Connection, stream_id: int, request: RequestHead, no_body: bool
    ) -> None:
        super().__init__(conn, stream_id)
        self.request = request
        if no_body:
            self.read_done = self.received_end = True
        self.response_started = False
        self.done = trio.Event()

    async def send_head(self, head: ResponseHead, end_stream: bool = False) -> None:
        if self.error is not None:
            raise self.error
        if head.status >= 200:
            self.response_started = True
        if end_stream:
            self.sent_end = True
        await self._conn.send_response_head(self, head, end_stream)

    async def switch(self, head: ResponseHead) -> tuple[ByteStream, bytes]:
        """Accept an HTTP/1.1 protocol switch (101 to an Upgrade, 2xx to CONNECT): returns the
        raw connection and the bytes the client already sent after its request."""
        self.response_started = True
        self.sent_end = True
        return await self._conn.switch(self, head)


class ClientStream(_Stream):
    """One request sent upstream, and its response."""

    def __init__(self, conn: _Connection, stream_id: int) -> None:
        super().__init__(conn, stream_id)
        self.response_seen = False

    async def receive_head(self) -> ResponseHead | Switched:
        """The final response head (1xx skipped), or `Switched` after a protocol switch."""
        item = await self._take()
        if isinstance(item, ResponseReceived):
            if item.end_stream:
                self.read_done = True
            return item.head
        if isinstance(item, Switched):
            return item
        if isinstance(item, _End):
            self.read_done = True
            raise StreamError("response ended before its head", refused=not self.response_seen)
        raise StreamError(f"unexpected {type(item).__name__} before a response head")

    def raw(self) -> tuple[ByteStream, bytes]:
        """After `Switched`: the raw upstream connection (the reader has stopped)."""
        return self._conn.take_raw()


RequestHandler = Callable[[ServerStream], Awaitable[None]]
BadRequestHandler = Callable[[int, str, str], Awaitable[None]]


class _Connection:
    """The reader/writer machinery around one codec."""

    def __init__(
        self, stream: ByteStream, codec: H1Server | H2Server | H1Client | H2Client
    ) -> None:
        self._stream = stream
        self.codec = codec
        self.is_h1 = isinstance(codec, (H1Server, H1Client))
        self._send_lock = trio.Lock()
        self.streams: dict[int, _Stream] = {}
        self._window = trio.Event()
        self.closed = False
        self.reason = ""
        self._raw_taken = False

    @property
    def protocol(self) -> str:
        return "HTTP/1.1" if self.is_h1 else "HTTP/2"

    async def flush(self) -> None:
        data = self.codec.data_to_send()
        if not data:
            return
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.end_all(f"connection lost while writing: {e}")
                raise StreamError("connection lost") from None

    async def acknowledge(self, stream_id: int, count: int) -> None:
        codec = self.codec
        if isinstance(codec, (H2Server, H2Client)):
            codec.acknowledge(stream_id, count)
            # h2 queues a WINDOW_UPDATE once enough was consumed; send it now, as nothing else
            # may be written while the peer waits for it
            with contextlib.suppress(StreamError):
                await self.flush()

    async def send_data(self, s: _Stream, data: bytes | memoryview) -> None:
        codec = self.codec
        if isinstance(codec, (H1Server, H1Client)):
            try:
                codec.send_data(s.stream_id, data)
            except HttpCodecError as e:
                raise StreamError(str(e)) from None
            await self.flush()
            return
        view = memoryview(data)
        while view:
            if s.error is not None:
                raise s.error
            try:
                n = codec.send_data(s.stream_id, view)
            except HttpCodecError as e:
                raise StreamError(str(e)) from None
            view = view[n:]
            await self.flush()
            if view and n == 0:
                if self.closed:
                    raise StreamError(self.reason or "connection closed")
                await self._window.wait()

    async def send_end(self, s: _Stream, trailers: Headers | None) -> None:
        try:
            self.codec.send_end(s.stream_id, trailers)
        except HttpCodecError as e:
            raise StreamError(str(e)) from None
        await self.flush()
        self._retire_if_done(s)

    async def send_response_head(self, s: _Stream, head: ResponseHead, end: bool) -> None:
        codec = self.codec
        assert isinstance(codec, (H1Server, H2Server))
        try:
            codec.send_headers(s.stream_id, head, end)
        except HttpCodecError as e:
            raise StreamError(str(e)) from None
        await self.flush()
        if end:
            self._retire_if_done(s)

    def reset(self, s: _Stream) -> None:
        s._fail(StreamError("reset locally"))
        codec = self.codec
        if isinstance(codec, (H2Server, H2Client)):
            codec.reset(s.stream_id)
            self.streams.pop(s.stream_id, None)
        else:
            codec.must_close = True
            self.end_all("exchange aborted")

    def _retire_if_done(self, s: _Stream) -> None:
        if s.sent_end and s.received_end:
            self.streams.pop(s.stream_id, None)
            if isinstance(s, ServerStream):
                s.done.set()

    def end_all(self, reason: str) -> None:
        self.closed = True
        self.reason = self.reason or reason
        for s in list(self.streams.values()):
            refused = isinstance(s, ClientStream) and not s.response_seen
            s._fail(StreamError(reason, refused=refused))
            if isinstance(s, ServerStream):
                s.cancel_scope.cancel()
                s.done.set()
        self.streams.clear()
        self._window.set()

    async def switch(self, s: ServerStream, head: ResponseHead) -> tuple[ByteStream, bytes]:
        codec = self.codec
        if not isinstance(codec, H1Server):
            raise StreamError("protocol switches need HTTP/1.1")
        try:
            if head.status == 101:
                trailing = codec.send_switch(s.stream_id, head)
            else:
                codec.send_headers(s.stream_id, head)
                trailing = codec.accept_switch(s.stream_id)
        except HttpCodecError as e:
            raise StreamError(str(e)) from None
        await self.flush()
        self.streams.pop(s.stream_id, None)
        s.done.set()
        return self.take_raw()[0], trailing

    def take_raw(self) -> tuple[ByteStream, bytes]:
        self._raw_taken = True
        return self._stream, b""

    async def dispatch(self, ev: Event) -> None:
        if isinstance(ev, WindowOpened):
            self._window.set()
            self._window = trio.Event()
            return
        sid = getattr(ev, "stream_id", None)
        s = self.streams.get(sid) if sid is not None else None
        if s is None:
            return
        if isinstance(ev, DataReceived):
            await s._put(ev)
        elif isinstance(ev, MessageEnded):
            await s._put(_End(trailers=ev.trailers))
            s.received_end = True
            self._retire_if_done(s)
        elif isinstance(ev, StreamReset):
            s._fail(
                StreamError(
                    f"stream reset by peer (error code {ev.error_code})",
                    refused=ev.error_code == _REFUSED_STREAM,
                    code=ev.error_code,
                )
            )
            self.streams.pop(s.stream_id, None)
            if isinstance(s, ServerStream):
                s.cancel_scope.cancel()
                s.done.set()
        elif isinstance(ev, ResponseReceived):
            assert isinstance(s, ClientStream)
            s.response_seen = True
            await s._put(ev)
            if ev.end_stream:
                s.received_end = True
                self._retire_if_done(s)
        elif isinstance(ev, Switched):
            await s._put(ev)

    async def aclose(self) -> None:
        self.end_all("connection closed")
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self._stream.aclose()


class ServerConnection(_Connection):
    """One downstream connection: runs `handler` for every request until the connection ends."""

    def __init__(
        self,
        stream: ByteStream,
        codec: H1Server | H2Server,
        handler: RequestHandler,
        *,
        on_bad_request: BadRequestHandler | None = None,
        idle_timeout: float = math.inf,
    ) -> None:
        super().__init__(stream, codec)
        self._handler = handler
        self._on_bad_request = on_bad_request
        self._idle_timeout = idle_timeout
        self._pending = 0
        self._current: ServerStream | None = None
        # HTTP/2 abuse accounting: streams opened, and reset by the client before a response
        self.opened = 0
        self.early_resets = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, initial: bytes = b"") -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.flush()
                if initial:
                    await self._feed(initial)
                await self._read_loop()
            except StreamError:
                pass
            finally:
                self.end_all(self.reason or "connection closed")
        if not self._raw_taken:
            await self.aclose()

    async def _read_loop(self) -> None:
        codec = self.codec
        while not self.closed:
            current = self._current
            if isinstance(codec, H1Server) and current is not None and current.received_end:
                # wait for the response before reading on (see the module docstring)
                await current.done.wait()
                if self._raw_taken or codec.switched:
                    return
                if codec.must_close:
                    return
                self._current = None
                await self._dispatch_events(codec.next_events())
                continue
            timeout = self._idle_timeout if not self.streams else math.inf
            with trio.move_on_after(timeout) as idle:
                try:
                    data = bytes(await self._stream.receive_some(_READ_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    self.end_all(f"connection lost: {e}")
                    return
            if idle.cancelled_caught:
                self.end_all("idle timeout")
                return
            await self._feed(data)

    async def _feed(self, data: bytes) -> None:
        """Feed received bytes (`b""`: the peer closed) and act on the events."""
        await self._dispatch_events(self.codec.receive_data(data))

    async def _dispatch_events(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, RequestReceived):
                self._start(ev)
            elif isinstance(ev, BadRequest):
                await self._bad_request(ev)
            elif isinstance(ev, ConnectionEnded):
                self.end_all(ev.reason or "connection closed by peer")
            else:
                if isinstance(ev, StreamReset) and ev.stream_id in self.streams:
                    s = self.streams[ev.stream_id]
                    if isinstance(s, ServerStream) and not s.response_started:
                        self.early_resets += 1
                await self.dispatch(ev)
        await self.flush()
        self._check_abuse()

    def _check_abuse(self) -> None:
        """Close an HTTP/2 connection that resets most of its streams before any response (as
        Envoy does since CVE-2023-44487: at least 100 streams, more than half reset early)."""
        codec = self.codec
        if (
            isinstance(codec, H2Server)
            and self.opened >= 100
            and 2 * self.early_resets > self.opened
        ):
            log.warning(
                "closing HTTP/2 connection: %d of %d streams reset before a response",
                self.early_resets,
                self.opened,
            )
            codec.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self.end_all("too many streams reset by the client (ENHANCE_YOUR_CALM)")

    def _start(self, ev: RequestReceived) -> None:
        codec = self.codec
        assert self._nursery is not None
        if isinstance(codec, H2Server) and self._pending >= MAX_PENDING_HANDLERS:
            codec.reset(ev.stream_id, _REFUSED_STREAM)
            return
        self.opened += 1
        s = ServerStream(self, ev.stream_id, ev.head, ev.end_stream)
        self.streams[ev.stream_id] = s
        if isinstance(codec, H1Server):
            self._current = s
        self._pending += 1
        self._nursery.start_soon(self._run_handler, s)

    async def _run_handler(self, s: ServerStream) -> None:
        try:
            with s.cancel_scope:
                await self._handler(s)
        except StreamError:
            pass
        except Exception:
            log.exception("request handler failed")
        finally:
            self._pending -= 1
            if not s.sent_end and not self.closed:
                # the handler gave up without finishing the response
                s.reset()
            self.streams.pop(s.stream_id, None)
            s.done.set()

    async def _bad_request(self, ev: BadRequest) -> None:
        codec = self.codec
        assert isinstance(codec, (H1Server, H2Server))
        if self._on_bad_request is not None:
            await self._on_bad_request(ev.status, ev.reason, self.protocol)
        body = _STATUS_TEXT.get(ev.status, "Bad Request").encode()
        head = ResponseHead(
            ev.status,
            Headers([("content-length", str(len(body))), ("content-type", "text/plain")]),
        )
        try:
            if isinstance(codec, H1Server):
                head.headers.add("connection", "close")
                codec.send_headers(ev.stream_id, head)
                codec.send_data(ev.stream_id, body)
                codec.send_end(ev.stream_id)
                await self.flush()
                self.end_all(f"bad request: {ev.reason}")
            else:
                codec.send_headers(ev.stream_id, head)
                codec.send_data(ev.stream_id, body, end_stream=True)
        except HttpCodecError:
            self.end_all(f"bad request: {ev.reason}")


_STATUS_TEXT = {400: "Bad Request", 431: "Request Header Fields Too Large"}


async def serve_http(
    stream: ByteStream,
    handler: RequestHandler,
    *,
    scheme: str = "http",
    on_bad_request: BadRequestHandler | None = None,
    idle_timeout: float = math.inf,
) -> None:
    """Serve one downstream connection: HTTP/2 when it starts with the HTTP/2 preface (prior
    knowledge), HTTP/1.1 otherwise."""
    buf = b""
    while len(buf) < len(PREFACE) and PREFACE.startswith(buf):
        with trio.move_on_after(idle_timeout):
            try:
                chunk = bytes(await stream.receive_some(_READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if not chunk:
                break
            buf += chunk
            continue
        break
    codec: H1Server | H2Server = (
        H2Server(scheme=scheme) if buf.startswith(PREFACE) else H1Server(scheme=scheme)
    )
    conn = ServerConnection(
        stream, codec, handler, on_bad_request=on_bad_request, idle_timeout=idle_timeout
    )
    await conn.run(buf)


class ClientConnection(_Connection):
    """One upstream connection; `run` reads until it ends (start it in a nursery)."""

    def __init__(self, stream: ByteStream, *, http2: bool) -> None:
        super().__init__(stream, H2Client() if http2 else H1Client())
        self.last_used = trio.current_time()

    @property
    def available(self) -> bool:
        """Can take one more request now."""
        codec = self.codec
        if self.closed:
            return False
        if isinstance(codec, H1Client):
            return codec.idle and not self.streams
        assert isinstance(codec, H2Client)
        return codec.can_open

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.flush()
        except StreamError:
            task_status.started()
            return
        task_status.started()
        codec = self.codec
        while not self.closed:
            try:
                data = bytes(await self._stream.receive_some(_READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.end_all(f"upstream connection lost: {e}")
                break
            events = codec.receive_data(data)
            for ev in events:
                if isinstance(ev, ConnectionEnded):
                    self.end_all(ev.reason or "upstream closed the connection")
                else:
                    await self.dispatch(ev)
                if isinstance(ev, Switched):
                    return
            try:
                await self.flush()
            except StreamError:
                break
            if isinstance(codec, H1Client) and codec.must_close and not self.streams:
                break
        if not self._raw_taken:
            await self.aclose()

    async def open_stream(self, head: RequestHead, *, end_stream: bool) -> ClientStream:
        codec = self.codec
        self.last_used = trio.current_time()
        try:
            if isinstance(codec, H1Client):
                sid = codec.stream_id
                s = ClientStream(self, sid)
                self.streams[sid] = s
                codec.send_headers(sid, head, end_stream)
            else:
                assert isinstance(codec, H2Client)
                sid = codec.send_headers(head, end_stream)
                s = ClientStream(self, sid)
                self.streams[sid] = s
        except HttpCodecError as e:
            raise StreamError(str(e), refused=True) from None
        s.sent_end = end_stream
        await self.flush()
        return s
