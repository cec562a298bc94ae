"""Trio drivers for the HTTP codecs: connections and the streams (exchanges) they carry.

`ServerConnection` serves one downstream connection (HTTP/1.1, or HTTP/2 with prior knowledge,
told apart by the client's first bytes) and runs a handler per request, given a `ServerStream`;
`ClientConnection` is one upstream connection opening `ClientStream`s. Each connection runs one
reader task that feeds the codec and routes its events to the streams' inboxes; writes go out
under a lock right after each codec call. Bytes taken from a codec are always written whole
(the write is shielded from cancellation): a cut frame or an HPACK block that never arrives
would break the connection for every stream on it.

Backpressure: an HTTP/1.1 reader waits while a stream's inbox is full, so a slow consumer stops
reading from the socket; an HTTP/2 reader cannot stop for one stream, so its inboxes are
unbounded and bounded instead by flow control: received DATA is acknowledged only when the
stream's consumer takes it (`read_body`), or when the stream is given up (what it still held
is acknowledged then, so the connection's window never shrinks for good).

HTTP/1.1 server connections read the next request only once the current response is complete
(h11 would hold a pipelined request anyway), which is also what lets a protocol switch (101 to
an Upgrade, 2xx to CONNECT) hand the raw connection to the handler with no reader racing it.
While a response is being made the reader still watches for the client closing the connection
(a request that cannot switch protocols only): the handler is cancelled then, as Envoy resets a
request whose downstream went away, instead of running on for nobody. A connection that must
not be reused (the response ended before the request did, `Connection: close`, a 400 or 431)
is closed the way Envoy does after a response the client may still be sending to: the write
side is shut, input is read and dropped for up to `LINGER` seconds, then the socket closes.
Closing with unread input would make the kernel answer with a reset, which can destroy the
response before the client read it.

Over a stream that reports arriving input without a reader (`WatchesInput`: an HBONE stream,
the waypoint's downstream), a complete HTTP/1.1 request that can switch no protocol is handled
in the reader's own task: nothing is left to read for it, and the stream's callback does the
watching for the client's close. This saves a task and two scheduler rounds per request; a
request with a body still arriving, or one behind which input is already waiting, gets a task.
The upstream side does the same over such a stream (the waypoint's pooled HTTP/1.1 upstreams):
while an exchange is open, its consumer reads the connection itself when it needs the next part
of the response (`receive_head`, `read_body`), so the response wakes the handler directly, not
a reader task that wakes the handler in turn; the reader task only reads while the connection
is idle in the pool, and only once the stream's callback reported input there (the upstream's
close, or bytes nobody asked for).

Errors: a stream reset by the peer, or whose connection ended, raises `StreamError` from its
reads and writes. Each request handler runs in its own cancel scope (one run in the reader's
task, in the reader's: only the connection ending cancels it, and that ends the reader too): a
reset stream cancels its handler, and an HTTP/2 connection refuses new streams
(REFUSED_STREAM) while `MAX_PENDING_HANDLERS` handlers are still running, so resetting streams
cannot pile up work;
a connection that resets most of its streams before any response is closed with GOAWAY
ENHANCE_YOUR_CALM (the HTTP/2 rapid-reset pattern, CVE-2023-44487).

`reset()` gives a stream up: it aborts the exchange if it is still open (HTTP/2 RST_STREAM,
HTTP/1.1 closes the connection, the only way to abort there) and frees what the stream holds;
on a finished exchange it only frees, so a complete HTTP/1.1 connection stays reusable.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
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
from ztunnel_py.transport.relay import (
    ByteStream,
    ReceiveWoken,
    SendsNowait,
    WakesReceiver,
    WatchesInput,
)

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
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
# Envoy's delayed_close_timeout: how long a closing HTTP/1.1 connection drains its input
LINGER = 1.0
# Envoy's stream_idle_timeout: how long one write may wait for a peer that does not read
WRITE_TIMEOUT = 300.0
_SOCKET_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class StreamError(Exception):
    """The stream cannot go on: reset by the peer, refused, or its connection ended."""

    def __init__(
        self, reason: str, *, refused: bool = False, code: int = 0, reset: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        # the peer never processed the request (REFUSED_STREAM, or a stream above a GOAWAY's
        # last stream id): retrying it elsewhere is safe
        self.refused = refused
        self.code = code
        # the peer reset the stream (RST_STREAM); False when the connection ended under it
        self.reset = reset


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
        self._inbox: deque[_Inbox] = deque()
        self._limit = _H1_INBOX if conn.is_h1 else math.inf
        # how the consumer reads the connection itself (see `ClientConnection.pull`), if it does
        self._pull: Callable[[], Awaitable[None]] | None = None
        # the reader put the last item in (`_fail`) / the consumer gave the stream up
        self._inbox_ended = False
        self._given_up = False
        # set when the inbox changes: a consumer waits for an item, an HTTP/1.1 reader for room
        self._inbox_changed: trio.Event | None = None
        self.trailers: Headers | None = None
        # the consumer read the end of the received message
        self.read_done = False
        # the connection saw the end of the received message / sent the end of ours
        self.received_end = False
        self.sent_end = False
        self.error: StreamError | None = None
        # the peer went away (reset the stream or ended the connection), not we
        self.peer_gone = False
        self.body_bytes_in = 0
        self.body_bytes_out = 0

    # the reader's side of the inbox (a deque and an event rather than a memory channel: an item
    # already there is taken without a trip through the scheduler)

    def _notify(self) -> None:
        changed, self._inbox_changed = self._inbox_changed, None
        if changed is not None:
            changed.set()

    async def _put(self, item: _Inbox) -> None:
        # without a checkpoint unless an HTTP/1.1 inbox is full: the events of one read land
        # together, so a consumer sees a body's last bytes and its end at once (`at_end`)
        while len(self._inbox) >= self._limit and not (self._given_up or self._inbox_ended):
            changed = self._inbox_changed = self._inbox_changed or trio.Event()
            await changed.wait()
        if self._given_up or self._inbox_ended:
            if isinstance(item, DataReceived):
                # nobody will read it: hand its flow-control window back at once
                self._conn.acknowledge_soon(self.stream_id, item.flow_controlled)
            return
        self._inbox.append(item)
        self._notify()

    def _fail(self, error: StreamError) -> None:
        if self.error is not None:
            return
        self.error = error
        self.received_end = True
        self._inbox_ended = True
        self._notify()

    def _release(self) -> None:
        """The consumer is done with the stream: acknowledge what it never read and let the
        reader drop whatever still arrives for it."""
        unread = sum(item.flow_controlled for item in self._inbox if isinstance(item, DataReceived))
        self._inbox.clear()
        self._given_up = True
        self._notify()
        self._conn.acknowledge_soon(self.stream_id, unread)

    # the consumer's side

    async def _take(self) -> _Inbox:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._inbox:
            if self._inbox_ended or self._given_up:
                raise self.error or StreamError("stream closed")
            if self._pull is not None:
                await self._pull()
                continue
            changed = self._inbox_changed = self._inbox_changed or trio.Event()
            await changed.wait()
        item = self._inbox.popleft()
        if self._limit != math.inf:
            # an HTTP/1.1 reader may be waiting for room
            self._notify()
        return item

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

    @property
    def body_ready(self) -> bool:
        """Something of the received body (or its end) can be read without waiting."""
        return bool(self._inbox)

    @property
    def at_end(self) -> bool:
        """Only the end of the received message is left to read: the next `read_body` returns
        None at once (and sets `trailers`)."""
        return (
            self.received_end
            and self.error is None
            and not self.read_done
            and len(self._inbox) == 1
        )

    async def send_data(self, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Send body bytes; with `end_stream` they end the message (for HTTP/2 in the same
        frame, so a client counting Content-Length bytes does not see the body complete before
        the stream)."""
        if self.error is not None:
            raise self.error
        if end_stream:
            if self.sent_end:
                return
            self.sent_end = True
        elif not data:
            return
        self.body_bytes_out += len(data)
        await self._conn.send_data(self, data, end_stream)

    async def send_end(self, trailers: Headers | None = None) -> None:
        if self.error is not None:
            raise self.error
        if not self.sent_end:
            self.sent_end = True
            await self._conn.send_end(self, trailers)

    def reset(self) -> None:
        """Give the stream up: abort the exchange if it is still open (HTTP/2 RST_STREAM;
        HTTP/1.1 closes the connection), and free what the stream holds."""
        self._conn.reset(self)


class ServerStream(_Stream):
    """One request received, and the response to it."""

    def __init__(
        self,
        conn: _Connection,
        stream_id: int,
        request: RequestHead,
        no_body: bool,
        cancel_scope: trio.CancelScope,
    ) -> None:
        super().__init__(conn, stream_id)
        self.request = request
        # cancelled when the stream is reset or its connection ends: the handler's scope
        self.cancel_scope = cancel_scope
        if no_body:
            self.read_done = self.received_end = True
        self.response_started = False
        self.done = trio.Event()

    async def send_head(
        self, head: ResponseHead, end_stream: bool = False, *, flush: bool = True
    ) -> None:
        """Send the response head. Without `flush` it waits in the codec for the body sent next
        (one write for both): only when that send follows without waiting."""
        if self.error is not None:
            raise self.error
        if head.status >= 200:
            self.response_started = True
        if end_stream:
            self.sent_end = True
        await self._conn.send_response_head(self, head, end_stream, flush)

    async def switch(self, head: ResponseHead) -> tuple[ByteStream, bytes]:
        """Accept an HTTP/1.1 protocol switch (101 to an Upgrade, 2xx to CONNECT): returns the
        raw connection and the bytes the client already sent after its request."""
        self.response_started = True
        self.sent_end = True
        return await self._conn.switch(self, head)


class ClientStream(_Stream):
    """One request sent upstream, and its response. `on_release` (set by whoever opened it, the
    upstream pool) runs once when the stream is given up, or its connection switched
    protocols."""

    def __init__(self, conn: ClientConnection, stream_id: int) -> None:
        super().__init__(conn, stream_id)
        self.response_seen = False
        self.on_release: Callable[[], None] | None = None
        if conn.pulls:
            self._pull = conn.pull
            # what one read brought is held whatever its size: the consumer reads again only
            # once it took all of it
            self._limit = math.inf

    def _release(self) -> None:
        super()._release()
        self._released()

    def _released(self) -> None:
        callback, self.on_release = self.on_release, None
        if callback is not None:
            callback()

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
            raise StreamError("response ended before its head")
        raise StreamError(f"unexpected {type(item).__name__} before a response head")

    def raw(self) -> tuple[ByteStream, bytes]:
        """After `Switched`: the raw upstream connection (the reader has stopped); the stream
        is released, the connection is no longer HTTP."""
        self._released()
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
        # a task is writing (`flush`); the others wait in `_writers`. A flag and a parking lot
        # rather than a trio.Lock: the uncontended flush, one or two per request, then costs
        # no lock bookkeeping
        self._writing = False
        self._writers = trio.lowlevel.ParkingLot()
        # how the stream takes bytes without waiting, if it can (see `_write`)
        self._send_nowait = stream.send_nowait if isinstance(stream, SendsNowait) else None
        self.streams: dict[int, _Stream] = {}
        self._window = trio.Event()
        self.closed = False
        self.reason = ""
        self._raw_taken = False
        # how the reader is made to look at its state again (`_wake_reader`): a stream that
        # can end a receive early is asked to while `_reading`; any other stream's receive
        # runs in `_read_scope`, cancelled
        self._wakes = stream if isinstance(stream, WakesReceiver) else None
        self._reading = False
        self._read_scope: trio.CancelScope | None = None
        # where flushes that cannot wait for the caller run (a reset from synchronous code)
        self._nursery: trio.Nursery | None = None
        self._flush_pending = False

    @property
    def protocol(self) -> str:
        return "HTTP/1.1" if self.is_h1 else "HTTP/2"

    async def flush(self) -> None:
        # Taken and written by one task at a time, shielded: bytes a codec handed out must
        # reach the socket whole and in order. A write that makes no progress for
        # `WRITE_TIMEOUT` (a peer that stopped reading) ends the connection, as does one on a
        # closed connection. Uncontended (the common case) nothing waits, and nothing to write
        # costs nothing: most flushes come after codec calls that queued no bytes.
        if self._writing:
            with trio.CancelScope(shield=True):
                while self._writing:
                    await self._writers.park()
                await self._write_taken(self.codec.data_to_send())
            return
        data = self.codec.data_to_send()
        if data:
            await self._write_taken(data)

    async def _write_taken(self, data: bytes) -> None:
        self._writing = True
        try:
            await self._write(data)
        finally:
            self._writing = False
            if self._writers:
                self._writers.unpark()

    async def _write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        try:
            if self._send_nowait is not None:
                # what the stream takes at once needs no shield (it is delivered whatever
                # happens to us) and costs no trip through the scheduler: usually all of it
                taken = self._send_nowait(data)
                if taken == len(data):
                    return
                data = data[taken:]
            with trio.CancelScope(
                shield=True, deadline=trio.current_time() + WRITE_TIMEOUT
            ) as scope:
                await self._stream.send_all(data)
        except _SOCKET_ERRORS as e:
            self.end_all(f"connection lost while writing: {e!r}")
            raise StreamError("connection lost") from None
        if scope.cancelled_caught:
            self.end_all(f"connection lost while writing: no progress in {WRITE_TIMEOUT:g} s")
            raise StreamError("connection lost")

    def _flush_soon(self) -> None:
        """Write what the codec holds from a task of our own (callers that cannot wait)."""
        if self._flush_pending or self._nursery is None or self._raw_taken:
            return
        self._flush_pending = True

        async def flush() -> None:
            self._flush_pending = False
            with contextlib.suppress(StreamError):
                await self.flush()

        try:
            self._nursery.start_soon(flush)
        except RuntimeError:
            # the connection's tasks are gone: so is the connection
            self._flush_pending = False

    async def acknowledge(self, stream_id: int, count: int) -> None:
        codec = self.codec
        if isinstance(codec, (H2Server, H2Client)):
            codec.acknowledge(stream_id, count)
            # h2 queues a WINDOW_UPDATE once enough was consumed; send it now, as nothing else
            # may be written while the peer waits for it
            with contextlib.suppress(StreamError):
                await self.flush()

    def acknowledge_soon(self, stream_id: int, count: int) -> None:
        codec = self.codec
        if count > 0 and isinstance(codec, (H2Server, H2Client)) and not self.closed:
            codec.acknowledge(stream_id, count)
            self._flush_soon()

    async def send_data(self, s: _Stream, data: bytes | memoryview, end: bool = False) -> None:
        codec = self.codec
        if isinstance(codec, (H1Server, H1Client)):
            try:
                codec.send_data(s.stream_id, data)
                if end:
                    codec.send_end(s.stream_id)
            except HttpCodecError as e:
                raise StreamError(str(e)) from None
            await self.flush()
            if end:
                self._retire_if_done(s)
            return
        view = memoryview(data)
        if end and not view:
            await self.send_end(s, None)
            return
        while view:
            if s.error is not None:
                raise s.error
            # taken before the codec looks at the window: a WINDOW_UPDATE that arrives while
            # we flush sets this event, not a later one
            window = self._window
            try:
                n = codec.send_data(s.stream_id, view, end_stream=end)
            except HttpCodecError as e:
                raise StreamError(str(e)) from None
            view = view[n:]
            await self.flush()
            if view and n == 0:
                if self.closed:
                    raise StreamError(self.reason or "connection closed")
                await window.wait()
        if end:
            self._retire_if_done(s)

    async def send_end(self, s: _Stream, trailers: Headers | None) -> None:
        try:
            self.codec.send_end(s.stream_id, trailers)
        except HttpCodecError as e:
            raise StreamError(str(e)) from None
        await self.flush()
        self._retire_if_done(s)

    async def send_response_head(
        self, s: _Stream, head: ResponseHead, end: bool, flush: bool = True
    ) -> None:
        codec = self.codec
        assert isinstance(codec, (H1Server, H2Server))
        try:
            codec.send_headers(s.stream_id, head, end)
        except HttpCodecError as e:
            raise StreamError(str(e)) from None
        if flush or end:
            await self.flush()
        if end:
            self._retire_if_done(s)

    def reset(self, s: _Stream) -> None:
        complete = s.sent_end and s.received_end and s.error is None
        # out first: what follows is our doing, not the peer's (`peer_gone`)
        self.streams.pop(s.stream_id, None)
        if not complete:
            s._fail(StreamError("reset locally"))
            codec = self.codec
            if isinstance(codec, (H2Server, H2Client)):
                codec.reset(s.stream_id)
                self._flush_soon()
                # a sender waiting for window on this stream must see the reset
                self._wake_senders()
            else:
                codec.must_close = True
                # ending the connection wakes its reader, which closes it
                self.end_all("exchange aborted")
        s._release()

    def _retire_if_done(self, s: _Stream) -> None:
        if s.sent_end and s.received_end:
            self.streams.pop(s.stream_id, None)

    def _wake_senders(self) -> None:
        self._window.set()
        self._window = trio.Event()

    def _wake_reader(self) -> None:
        if self._reading:
            assert self._wakes is not None
            self._wakes.wake_receiver()
        elif self._read_scope is not None:
            self._read_scope.cancel()

    def end_all(self, reason: str) -> None:
        self.closed = True
        self.reason = self.reason or reason
        for s in list(self.streams.values()):
            s.peer_gone = True
            s._fail(StreamError(reason))
            if isinstance(s, ServerStream):
                s.cancel_scope.cancel()
        self.streams.clear()
        self._wake_senders()
        self._wake_reader()

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
        return self.take_raw()[0], trailing

    def take_raw(self) -> tuple[ByteStream, bytes]:
        self._raw_taken = True
        # the connection is the caller's now: never pooled, never closed by us
        self.closed = True
        self._wake_reader()
        return self._stream, b""

    async def dispatch(self, ev: Event) -> None:
        if isinstance(ev, WindowOpened):
            self._wake_senders()
            return
        sid = getattr(ev, "stream_id", None)
        s = self.streams.get(sid) if sid is not None else None
        if s is None:
            if isinstance(ev, DataReceived) and sid is not None:
                # a stream given up or refused: its DATA still counts against the connection
                self.acknowledge_soon(sid, ev.flow_controlled)
            return
        if isinstance(ev, DataReceived):
            await s._put(ev)
        elif isinstance(ev, MessageEnded):
            await s._put(_End(trailers=ev.trailers))
            s.received_end = True
            self._retire_if_done(s)
        elif isinstance(ev, StreamReset):
            s.peer_gone = True
            s._fail(
                StreamError(
                    f"stream reset by peer (error code {ev.error_code})",
                    refused=ev.error_code == _REFUSED_STREAM,
                    code=ev.error_code,
                    reset=True,
                )
            )
            self.streams.pop(s.stream_id, None)
            self._wake_senders()
            if isinstance(s, ServerStream):
                s.cancel_scope.cancel()
        elif isinstance(ev, ResponseReceived):
            assert isinstance(s, ClientStream)
            s.response_seen = True
            await s._put(ev)
            if ev.end_stream:
                s.received_end = True
                self._retire_if_done(s)
        elif isinstance(ev, Switched):
            # the connection carries raw bytes now and is the switched stream's consumer's to
            # take: never pooled again, never closed by us
            self._raw_taken = True
            self.closed = True
            await s._put(ev)

    async def _receive(self) -> bytes | None:
        """One read: the bytes, b"" when the peer closed; None when the reader was woken
        (`_wake_reader`), or the socket failed: the connection is ended then (a reset must not
        pass for the clean end of a close-delimited body)."""
        wakes = self._wakes
        if wakes is not None:
            self._reading = True
            try:
                return bytes(await self._stream.receive_some(_READ_SIZE))
            except ReceiveWoken:
                return None
            except _SOCKET_ERRORS as e:
                self.end_all(f"connection lost: {e}")
                return None
            finally:
                self._reading = False
        with trio.CancelScope() as scope:
            self._read_scope = scope
            try:
                return bytes(await self._stream.receive_some(_READ_SIZE))
            except _SOCKET_ERRORS as e:
                self.end_all(f"connection lost: {e}")
            finally:
                self._read_scope = None
        return None

    async def aclose(self) -> None:
        self.end_all("connection closed")
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(*_SOCKET_ERRORS),
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
        # HTTP/1.1: bytes received while a response was being made (a pipelined request)
        self._held = b""
        # HTTP/1.1 over a stream that reports input without a reader: complete requests are
        # handled in the reader's task (`_run_inline`), the next one to run is kept here
        self._watch = (
            stream if isinstance(codec, H1Server) and isinstance(stream, WatchesInput) else None
        )
        self._inline: ServerStream | None = None
        # the reader's own scope: the cancel scope of the handlers it runs inline (cancelled
        # only as the connection ends, which ends the reader as well)
        self._loop_scope = trio.CancelScope()
        # the idle timeout: a timer task per connection, cancelled as the connection ends,
        # rather than a deadline moved on every read
        self._last_active = trio.current_time()
        self._idle_scope = trio.CancelScope()
        # HTTP/2 abuse accounting: streams opened, and reset by the client before a response
        self.opened = 0
        self.early_resets = 0

    async def run(self, initial: bytes = b"") -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._idle_timeout != math.inf:
                nursery.start_soon(self._idle_timer)
            try:
                with self._loop_scope:
                    await self.flush()
                    if initial:
                        await self._feed(initial)
                    await self._read_loop()
            except StreamError:
                pass
            finally:
                if not self._raw_taken:
                    self.end_all(self.reason or "connection closed")
        self._nursery = None
        if self._raw_taken:
            return
        if isinstance(self.codec, H1Server):
            await self._linger()
        await self.aclose()

    async def _linger(self) -> None:
        """Shut our side, drop what the client still sends (bounded), so the kernel does not
        answer unread input with a reset that could destroy our last response."""
        with trio.move_on_after(LINGER), contextlib.suppress(*_SOCKET_ERRORS):
            await self._stream.send_eof()
            while await self._stream.receive_some(_READ_SIZE):
                pass

    async def _read_loop(self) -> None:
        codec = self.codec
        while not self.closed:
            current = self._current
            if isinstance(codec, H1Server) and current is not None:
                if current.done.is_set():
                    # the exchange is over
                    if self._raw_taken or codec.switched or codec.must_close:
                        return
                    self._current = None
                    held, self._held = self._held, b""
                    await self._dispatch_events(
                        codec.receive_data(held) if held else codec.next_events()
                    )
                    continue
                if current.received_end:
                    await self._await_response(current)
                    continue
                # the request body is still arriving; the handler may finish first
                data = await self._receive()
            else:
                if self._idle_timeout != math.inf and not self.streams:
                    self._last_active = trio.current_time()
                data = await self._receive()
            if data is None:
                continue
            await self._feed(data)

    async def _idle_timer(self) -> None:
        """End the connection once it has had no request open for the idle timeout (Envoy's
        idle_timeout): from the end of the last exchange, or the last bytes read while none
        was open."""
        idle = self._idle_timeout
        deadline = self._last_active + idle
        with self._idle_scope:
            while True:
                await trio.sleep_until(deadline)
                now = trio.current_time()
                if self.streams:
                    # a request is open: no idle time counts until it is over
                    deadline = now + idle
                    continue
                deadline = self._last_active + idle
                if now >= deadline:
                    self.end_all("idle timeout")
                    return

    def end_all(self, reason: str) -> None:
        super().end_all(reason)
        self._idle_scope.cancel()

    async def _await_response(self, current: ServerStream) -> None:
        """Wait for the response to the request received whole, watching for the client
        closing the connection meanwhile. A request that may switch protocols is not watched:
        what follows it belongs to the new protocol.

        The read goes on after the exchange if the connection stays open (the idle timer
        counts from the exchange's end then): it returns the client's next request, or its
        close, without a wakeup in between."""
        head = current.request
        if self._held or head.method == "CONNECT" or "upgrade" in head.headers:
            await current.done.wait()
            return
        data = await self._receive()
        if data is None:
            return
        if not data:
            if current.done.is_set():
                # the client closed the connection after the exchange
                await self._feed(data)
            else:
                self.end_all(self.reason or "client closed the connection before the response")
            return
        # the next request (pipelined, or sent after this response): kept for when this
        # exchange is over (usually over already: no wait then, a wait would cost a trip
        # through the scheduler)
        self._held = data
        if not current.done.is_set():
            await current.done.wait()

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
        await self._check_abuse()
        inline, self._inline = self._inline, None
        if inline is not None:
            await self._run_inline(inline)

    async def _check_abuse(self) -> None:
        """Close an HTTP/2 connection that resets most of its streams before any response (as
        Envoy does since CVE-2023-44487: at least 100 streams, more than half reset early)."""
        codec = self.codec
        if (
            isinstance(codec, H2Server)
            and not self.closed
            and self.opened >= 100
            and 2 * self.early_resets > self.opened
        ):
            log.warning(
                "closing HTTP/2 connection: %d of %d streams reset before a response",
                self.early_resets,
                self.opened,
            )
            codec.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            with contextlib.suppress(StreamError):
                await self.flush()
            self.end_all("too many streams reset by the client (ENHANCE_YOUR_CALM)")

    def _start(self, ev: RequestReceived) -> None:
        codec = self.codec
        assert self._nursery is not None
        if isinstance(codec, H2Server) and self._pending >= MAX_PENDING_HANDLERS:
            codec.reset(ev.stream_id, _REFUSED_STREAM)
            return
        self.opened += 1
        inline = (
            self._watch is not None
            and ev.end_stream
            and ev.head.method != "CONNECT"
            and "upgrade" not in ev.head.headers
        )
        scope = self._loop_scope if inline else trio.CancelScope()
        s = ServerStream(self, ev.stream_id, ev.head, ev.end_stream, scope)
        self.streams[ev.stream_id] = s
        if isinstance(codec, H1Server):
            self._current = s
        self._pending += 1
        if inline:
            # run in this task once the events at hand are dispatched (`_dispatch_events`)
            self._inline = s
            return
        self._nursery.start_soon(self._run_handler, s)

    async def _run_inline(self, s: ServerStream) -> None:
        """Run the handler of a complete HTTP/1.1 request in the reader's task, unless input
        is there already (the next request, or the client's close: the task path reads it as
        before). Nothing is left to read for this request, and the stream tells us if the
        client goes away meanwhile (what `_await_response` would read), so the task per
        request and its wakeups are saved."""
        watch = self._watch
        assert watch is not None and self._nursery is not None
        if not watch.watch_input(self._client_input):
            s.cancel_scope = trio.CancelScope()
            self._nursery.start_soon(self._run_handler, s)
            return
        try:
            await self._run_handler(s, inline=True)
        finally:
            watch.watch_input(None)

    def _client_input(self, eof: bool, error: Exception | None) -> None:
        # as `_await_response` acts on what it reads while a response is being made; data is
        # the next request, read once this exchange is over (the watch ends with it)
        if error is not None:
            self.end_all(f"connection lost: {error}")
        elif eof:
            self.end_all(self.reason or "client closed the connection before the response")

    async def _run_handler(self, s: ServerStream, *, inline: bool = False) -> None:
        try:
            if inline:
                # in the reader's scope, which is the stream's
                await self._handler(s)
            else:
                with s.cancel_scope:
                    await self._handler(s)
        except StreamError:
            pass
        except Exception:
            log.exception("request handler failed")
        finally:
            self._pending -= 1
            if not s.sent_end:
                # the handler gave up without finishing the response
                s.reset()
            else:
                if not s.received_end and isinstance(self.codec, H2Server):
                    # answered before the request ended: ask the client to stop sending
                    # (RFC 9113 section 8.1)
                    self.codec.reset(s.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                self.streams.pop(s.stream_id, None)
                s._release()
            s.done.set()
            if self._idle_timeout != math.inf:
                # idle time counts from the end of the last request (`_idle_timer`)
                self._last_active = trio.current_time()
            if self.is_h1:
                self._exchange_done()
            with contextlib.suppress(StreamError):
                await self.flush()

    def _exchange_done(self) -> None:
        """HTTP/1.1: the reader waits on the finished exchange. It must look again if the
        connection is over or a pipelined request is already buffered; if not, its read waiting
        for the client (`_await_response`) simply goes on, now under the idle timeout."""
        codec = self.codec
        assert isinstance(codec, H1Server)
        if self.closed or self._raw_taken or codec.switched or codec.must_close or codec.has_input:
            self._wake_reader()

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
    with trio.move_on_after(idle_timeout):
        while len(buf) < len(PREFACE) and PREFACE.startswith(buf):
            try:
                chunk = bytes(await stream.receive_some(_READ_SIZE))
            except _SOCKET_ERRORS:
                chunk = b""
            if not chunk:
                break
            buf += chunk
    codec: H1Server | H2Server = (
        H2Server(scheme=scheme) if buf.startswith(PREFACE) else H1Server(scheme=scheme)
    )
    conn = ServerConnection(
        stream, codec, handler, on_bad_request=on_bad_request, idle_timeout=idle_timeout
    )
    if not buf:
        # closed, or silent for the whole idle timeout, before a first byte
        await conn.aclose()
        return
    await conn.run(buf)


class ClientConnection(_Connection):
    """One upstream connection; `run` reads until it ends (start it in a nursery).

    HTTP/1.1 over a stream that reports arriving input (`WatchesInput`, an HBONE stream)
    `pulls`: the open exchange's consumer reads the connection itself, and the reader task
    only reads what arrives while the connection is idle (see the module docstring)."""

    def __init__(self, stream: ByteStream, *, http2: bool) -> None:
        super().__init__(stream, H2Client() if http2 else H1Client())
        self.last_used = self.created = trio.current_time()
        # streams opened so far
        self.opened = 0
        # takes no new stream (its request or age limit was reached); closed once idle
        self.retiring = False
        self._watch = stream if not http2 and isinstance(stream, WatchesInput) else None
        self.pulls = self._watch is not None
        # input arrived while idle: the reader task reads it before the connection is reused
        self._idle_input = False
        # what the reader task of a pulling connection waits on
        self._reader_wakeup: trio.Event | None = None

    @property
    def available(self) -> bool:
        """Can take one more request now."""
        codec = self.codec
        if self.closed or self.retiring:
            return False
        if isinstance(codec, H1Client):
            return codec.idle and not self.streams and not self._idle_input
        assert isinstance(codec, H2Client)
        return codec.can_open

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                with contextlib.suppress(StreamError):
                    await self.flush()
                if self.pulls:
                    self._watch_idle()
                task_status.started()
                if self.pulls:
                    await self._read_idle()
                else:
                    await self._read_loop()
            finally:
                if not self._raw_taken:
                    self.end_all(self.reason or "upstream connection closed")
        self._nursery = None
        if not self._raw_taken:
            await self.aclose()

    async def _read_loop(self) -> None:
        codec = self.codec
        while not self.closed:
            data = await self._receive()
            if data is None:
                continue
            if await self._feed(data):
                return
            try:
                await self.flush()
            except StreamError:
                return
            if self.streams:
                continue
            if isinstance(codec, H1Client) and codec.must_close:
                return
            if isinstance(codec, H2Client) and codec.draining:
                return

    async def _feed(self, data: bytes) -> bool:
        """Act on received bytes (`b""`: the peer closed); True once the connection switched
        protocols (the bytes after that are not ours to read)."""
        for ev in self.codec.receive_data(data):
            if isinstance(ev, ConnectionEnded):
                self.end_all(ev.reason or "upstream closed the connection")
            else:
                await self.dispatch(ev)
            if isinstance(ev, Switched):
                return True
        return False

    async def pull(self) -> None:
        """Read for the open exchange's consumer (a pulling connection) and act on the bytes:
        the events land in the stream's inbox, or the connection ends."""
        if self.closed:
            raise StreamError(self.reason or "connection closed")
        data = await self._receive()
        if data is not None and await self._feed(data):
            # switched: the connection is the consumer's now, the reader task ends
            self._wake_idle_reader()

    async def _read_idle(self) -> None:
        """The reader task of a pulling connection: reads only input that arrived while no
        exchange was open (the upstream closing, or bytes nobody asked for), and returns when
        the connection ends or must close once its exchange is over."""
        codec = self.codec
        assert isinstance(codec, H1Client)
        while not self.closed and not (codec.must_close and not self.streams):
            if not self._idle_input:
                wakeup = self._reader_wakeup = trio.Event()
                await wakeup.wait()
                continue
            data = await self._receive()
            if data is not None:
                await self._feed(data)
            self._idle_input = False
            self._watch_idle()

    def _watch_idle(self) -> None:
        """With no exchange open, have the stream report input (the reader task reads it); or
        wake the reader task when the connection is done."""
        assert self._watch is not None and isinstance(self.codec, H1Client)
        if self.streams:
            return
        if self.closed or self.codec.must_close:
            self._wake_idle_reader()
        elif not self._watch.watch_input(self._input_while_idle):
            self._input_while_idle(False, None)

    def _input_while_idle(self, eof: bool, error: Exception | None) -> None:
        self._idle_input = True
        self._wake_idle_reader()

    def _wake_idle_reader(self) -> None:
        if self._reader_wakeup is not None:
            self._reader_wakeup.set()

    def _wake_reader(self) -> None:
        super()._wake_reader()
        self._wake_idle_reader()

    def _retire_if_done(self, s: _Stream) -> None:
        super()._retire_if_done(s)
        if self.pulls and not self.streams:
            self._watch_idle()

    async def open_stream(self, head: RequestHead, *, end_stream: bool) -> ClientStream:
        codec = self.codec
        self.last_used = trio.current_time()
        if self._watch is not None:
            if self._idle_input:
                # the reader task is reading what arrived on the idle connection (usually the
                # upstream closing it): it cannot carry this request
                raise StreamError("upstream sent input while idle", refused=True)
            # this exchange's consumer reads from now on
            self._watch.watch_input(None)
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
        self.opened += 1
        s.sent_end = end_stream
        await self.flush()
        return s
