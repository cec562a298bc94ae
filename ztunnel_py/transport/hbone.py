"""Trio driver for HBONE: the sans-IO core (`ztunnel_py.protocol.hbone`) over `tls.TlsTransport`.

One connection runs three tasks: a reader (TLS records -> core -> streams), a writer and a
keepalive (PING after 10 s without input, then every 10 s; the connection is dropped after 20 s
without an answer; reference 2.5).

Received DATA is not copied. The reader decrypts into a buffer from a small per-connection
pool; each stream queues slices of it and the buffer goes back to the pool once every slice was
consumed. `HboneStream.receive_some` therefore returns a view that is valid until the next
`receive_some` (or `aclose`) on that stream; `bytes(view)` it to keep it longer. Bytes are
acknowledged to the peer (flow control) as they are handed out, so a reader that stops reading
stops the peer at the 4 MiB stream window.

Sending does not copy large payloads either: the core queues them by reference and the sending
task encrypts them at once (`emit`), so the caller's buffer is free when `send_all` returns;
small frames are packed with their header into one TLS record. The sending task then writes the
ciphertext to the socket itself unless a send is already in flight, in which case that send
takes it along (everything encrypted meanwhile leaves in one socket write) and `send_all` only
waits while more than `_OUTPUT_HIGH_WATER` bytes are queued. The writer task sends what other
tasks produce (WINDOW_UPDATEs, PING answers, resets). Sending inline instead of handing every
chunk to the writer saves a task switch per message, which is most of the latency a Python
hop adds (performance.md 2.4).

Client: `connect_hbone` (TLS, peer identity, HTTP/2 SETTINGS) -> `HboneClientConnection`,
whose `open_stream` sends a CONNECT and returns the tunnel once the server answered 200.
Server: `serve_hbone_connection` runs one accepted connection and calls the handler with an
`HboneRequest` per CONNECT, each in its own task.

Identity checks run right after the TLS handshake and before any HTTP/2 byte is read or written;
a failed check closes the connection.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ztunnel_py.model.identity import Identity
from ztunnel_py.protocol import hbone as proto
from ztunnel_py.transport.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsError, TlsTransport

__all__ = [
    "HboneClientConnection",
    "HboneError",
    "HboneHandshakeError",
    "HboneRequest",
    "HboneStatusError",
    "HboneStream",
    "HboneStreamError",
    "HboneUnavailableError",
    "connect_hbone",
    "serve_hbone_connection",
]

logger = logging.getLogger(__name__)

Bytes = bytes | bytearray | memoryview
Header = tuple[str, str]
ServerVerifier = Callable[[bytes | None, Sequence[Identity]], Identity]
ClientVerifier = Callable[[bytes | None], Identity]
Handler = Callable[["HboneRequest"], Awaitable[None]]

ALPN_H2 = "h2"
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 20.0
# Senders wait once this much output is queued for the writer (the socket is not keeping up).
_OUTPUT_HIGH_WATER = 1024 * 1024
# Receive buffers start small (an idle tunnel costs little) and grow x4 on every read that
# fills one, up to 1 MiB: large reads are what makes Python TLS fast (performance.md 2.2).
_RECEIVE_MIN = 64 * 1024
_RECEIVE_MAX = 1024 * 1024
_POOLED_BUFFERS = 4
# How long closing may spend delivering a final GOAWAY and close_notify.
_CLOSE_GRACE = 0.5
_EMPTY = memoryview(b"")


class HboneError(Exception):
    """Base of the HBONE driver's errors; `reason` says what happened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HboneHandshakeError(HboneError):
    """The connection could not be set up: TLS, peer identity, ALPN or HTTP/2 preface."""


class HboneUnavailableError(HboneError):
    """This connection takes no new streams (closed, draining, or at its stream limit)."""


class HboneStatusError(HboneError):
    """The server answered the CONNECT with a status other than 200."""

    def __init__(self, status: int, headers: Sequence[Header] = ()) -> None:
        super().__init__(f"HBONE CONNECT was answered with status {status}")
        self.status = status
        self.headers = tuple(headers)


class HboneStreamError(HboneError, trio.BrokenResourceError):
    """The stream broke: reset by the peer or locally, or its connection was lost.

    A `trio.BrokenResourceError`, as trio's own streams report a broken stream.

    `retryable` is true when the peer refused the stream before processing it (GOAWAY or
    REFUSED_STREAM): the request can safely go out on another connection.
    """

    def __init__(self, reason: str, *, error_code: int | None = None) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.retryable = error_code == proto.ErrorCodes.REFUSED_STREAM


def _error_name(code: int) -> str:
    try:
        return proto.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


# --- receive buffers ------------------------------------------------------------------------


class _RecvBuffer:
    """A receive buffer and how many queued stream slices still point into it."""

    __slots__ = ("detached", "pins", "view")

    def __init__(self, size: int) -> None:
        self.view = memoryview(bytearray(size))
        self.pins = 0
        # True once the reader moved on to another buffer: the last unpin recycles this one.
        self.detached = False


class _BufferPool:
    __slots__ = ("_free", "size")

    def __init__(self) -> None:
        self._free: list[_RecvBuffer] = []
        self.size = _RECEIVE_MIN

    def get(self) -> _RecvBuffer:
        while self._free:
            buffer = self._free.pop()
            if len(buffer.view) == self.size:
                return buffer
        return _RecvBuffer(self.size)

    def put(self, buffer: _RecvBuffer) -> None:
        buffer.detached = False
        if len(buffer.view) == self.size and len(self._free) < _POOLED_BUFFERS:
            self._free.append(buffer)

    def unpin(self, buffer: _RecvBuffer) -> None:
        buffer.pins -= 1
        if buffer.pins == 0 and buffer.detached:
            self.put(buffer)

    def grow(self) -> None:
        """A read filled a whole buffer: more was waiting, use larger buffers from now on."""
        self.size = min(self.size * 4, _RECEIVE_MAX)

    def trim(self) -> None:
        self._free.clear()
        self.size = _RECEIVE_MIN


# --- streams --------------------------------------------------------------------------------


class HboneStream:
    """One CONNECT tunnel: a bidirectional, half-closeable byte stream.

    One task may receive while another sends; two concurrent receivers (or senders) raise
    `trio.BusyResourceError`.
    """

    def __init__(self, connection: _Connection, stream_id: int) -> None:
        self._conn = connection
        self.stream_id = stream_id
        self.response_headers: tuple[Header, ...] = ()
        self._queue: deque[tuple[memoryview, _RecvBuffer]] = deque()
        self._lease: _RecvBuffer | None = None
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        self._error: HboneStreamError | None = None
        self._status: int | None = None
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
        self._receiving = False
        self._sending = False

    @property
    def peer_identity(self) -> Identity | None:
        """The identity the peer proved in the TLS handshake."""
        return self._conn.peer_identity

    # -- receiving -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> memoryview:
        """Next bytes from the peer (at most `max_bytes`); empty once the peer half-closed.

        The view is valid until the next `receive_some` or `aclose`. Raises `HboneStreamError`
        if the stream was reset or the connection lost before the peer's END_STREAM.
        """
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._release_lease()
        if self._closed:
            raise trio.ClosedResourceError("the HBONE stream is closed")
        self._receiving = True
        try:
            if self._queue:
                await trio.lowlevel.checkpoint()
            while not self._queue:
                # The peer's direction ended cleanly even if ours broke afterwards.
                if self._eof_received:
                    await trio.lowlevel.checkpoint()
                    return _EMPTY
                if self._error is not None:
                    raise self._error
                self._readable = trio.Event()
                await self._readable.wait()
                if self._closed:
                    break
        finally:
            self._receiving = False
        if self._closed:
            raise trio.ClosedResourceError("the HBONE stream was closed while receiving")
        view, buffer = self._queue[0]
        if max_bytes is not None and len(view) > max_bytes:
            self._queue[0] = (view[max_bytes:], buffer)
            view = view[:max_bytes]
            buffer.pins += 1
        else:
            self._queue.popleft()
        self._lease = buffer
        self._conn.acknowledge(self.stream_id, len(view))
        return view

    def _release_lease(self) -> None:
        if self._lease is not None:
            self._conn.buffers.unpin(self._lease)
            self._lease = None

    def _release_all(self) -> None:
        self._release_lease()
        unacknowledged = 0
        while self._queue:
            view, buffer = self._queue.popleft()
            unacknowledged += len(view)
            self._conn.buffers.unpin(buffer)
        # Bytes never handed out still occupy the connection window: give them back.
        self._conn.acknowledge(self.stream_id, unacknowledged)

    # -- sending -------------------------------------------------------------------------

    async def send_all(self, data: Bytes) -> None:
        """Send all of `data`, waiting for flow-control window as needed.

        Raises `trio.ClosedResourceError` after `send_eof`/`aclose`, `HboneStreamError` if the
        stream or connection broke.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("the HBONE stream is closed for sending")
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            conn = self._conn
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the HBONE stream was closed while sending")
                if self._error is not None:
                    raise self._error
                try:
                    sent = conn.core.send_data(self.stream_id, view[:_OUTPUT_HIGH_WATER])
                except proto.HboneError as e:
                    raise self._error or conn.stream_failure(str(e)) from None
                if sent:
                    conn.emit(wake_writer=False)
                    view = view[sent:]
                    # Out to the socket before encrypting more: bounds the ciphertext a large
                    # send_all can pile up.
                    await conn.flush()
                elif view:
                    self._writable = trio.Event()
                    conn.window_waiters.add(self)
                    try:
                        await self._writable.wait()
                    finally:
                        conn.window_waiters.discard(self)
                if not view:
                    break
            if not sent:
                await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF after the data sent so far. Idempotent."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the HBONE stream is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._eof_sent:
            if self._error is not None:
                raise self._error
            try:
                self._conn.core.end_stream(self.stream_id)
            except proto.HboneError as e:
                raise self._error or self._conn.stream_failure(str(e)) from None
            self._eof_sent = True
            self._conn.emit()
            self._maybe_finished()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Returns when `send_all` would find some window open (trio's stream interface)."""
        if self._closed:
            raise trio.ClosedResourceError("the HBONE stream is closed")
        conn = self._conn
        while conn.core.send_window(self.stream_id) == 0 and self._error is None:
            if self._closed or self._eof_sent:
                break
            self._writable = trio.Event()
            conn.window_waiters.add(self)
            try:
                await self._writable.wait()
            finally:
                conn.window_waiters.discard(self)
        await trio.lowlevel.checkpoint()

    # -- closing -------------------------------------------------------------------------

    def reset(self, error_code: int = proto.ErrorCodes.CANCEL) -> None:
        """Abort the stream (RST_STREAM) in both directions, dropping unread data: the peer
        sees an error, not an end of stream."""
        if self._closed:
            return
        self._closed = True
        self._conn.core.reset_stream(self.stream_id, error_code)
        self._conn.emit()
        self._release_all()
        self._conn.forget(self)
        self._wake()

    async def aclose(self) -> None:
        """Close gracefully, like closing a TCP socket: END_STREAM after the data sent so far
        (unless sent already), and RST_STREAM(CANCEL) if the peer was still sending."""
        if not self._closed:
            conn = self._conn
            if not self._eof_sent and self._error is None:
                with contextlib.suppress(proto.HboneError):
                    conn.core.end_stream(self.stream_id)
                    self._eof_sent = True
            if not self._eof_received:
                conn.core.reset_stream(self.stream_id, proto.ErrorCodes.CANCEL)
            conn.emit()
            self._closed = True
            self._release_all()
            conn.forget(self)
            self._wake()
        await trio.lowlevel.checkpoint()

    # -- events from the connection ------------------------------------------------------

    def _wake(self) -> None:
        if self._readable is not None:
            self._readable.set()
        if self._writable is not None:
            self._writable.set()

    def _on_data(self, view: memoryview, buffer: _RecvBuffer) -> None:
        buffer.pins += 1
        self._queue.append((view, buffer))
        if self._readable is not None:
            self._readable.set()

    def _on_eof(self) -> None:
        self._eof_received = True
        if self._readable is not None:
            self._readable.set()
        self._maybe_finished()

    def _on_window(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def _fail(self, error: HboneStreamError) -> None:
        if self._error is None:
            self._error = error
        self._conn.forget(self)
        self._wake()

    def _maybe_finished(self) -> None:
        if self._eof_sent and self._eof_received:
            self._conn.forget(self)


# --- connections ----------------------------------------------------------------------------


class _Connection:
    """What client and server connections share: tasks, flow, keepalive, termination."""

    core: proto.HboneClient | proto.HboneServer

    def __init__(
        self,
        tls: TlsTransport,
        protocol: proto.HboneClient | proto.HboneServer,
        peer_identity: Identity | None,
        *,
        keepalive_interval: float,
        keepalive_timeout: float,
        drain: trio.Event | None = None,
    ) -> None:
        self.tls = tls
        self.core = protocol
        self.peer_identity = peer_identity
        self.buffers = _BufferPool()
        self.window_waiters: set[HboneStream] = set()
        self.streams: dict[int, HboneStream] = {}
        self.idle_since: float | None = trio.current_time()
        self.closed_reason: str | None = None
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._drain = drain
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drained_lot = trio.lowlevel.ParkingLot()
        self._flushing = False
        self._done = trio.Event()
        self._pong: trio.Event | None = None
        self._last_input = trio.current_time()
        self._tasks: trio.Nursery | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection ended; `closed_reason` says why."""
        return self.closed_reason is not None

    @property
    def active_streams(self) -> int:
        """Streams this connection still tracks (open in at least one direction)."""
        return len(self.streams)

    def forget(self, stream: HboneStream) -> None:
        self.window_waiters.discard(stream)
        if self.streams.pop(stream.stream_id, None) is not None and not self.streams:
            self.idle_since = trio.current_time()
            if self.core.is_draining:
                self._terminate("all streams done after GOAWAY")

    def track(self, stream: HboneStream) -> None:
        self.streams[stream.stream_id] = stream
        self.idle_since = None

    def stream_failure(self, detail: str) -> HboneStreamError:
        if self.closed_reason is not None:
            return HboneStreamError(f"HBONE connection lost: {self.closed_reason}")
        return HboneStreamError(detail)

    # -- output --------------------------------------------------------------------------

    def emit(self, *, wake_writer: bool = True) -> None:
        """Encrypt the core's queued output now; the writer sends it unless the caller is
        about to `flush` itself.

        Encrypting in the task that produced the frames consumes large DATA payloads (queued by
        reference) before the caller reuses its buffer, without copying them.
        """
        try:
            for buffer in self.core.buffers_to_send():
                self.tls.encrypt(buffer)
        except (TlsError, trio.ClosedResourceError) as e:
            self._terminate(str(e))
            return
        if wake_writer:
            self._writer_lot.unpark()

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.is_closed:
            self.core.acknowledge_received_data(stream_id, size)
            # Only a quarter window's worth queues a WINDOW_UPDATE.
            if self.core.bytes_to_send:
                self.emit()

    async def flush(self) -> None:
        """Send the ciphertext queued so far, from this task if nobody is sending.

        Sending inline saves the hop to the writer task (latency); if another task is sending
        already, it picks our bytes up, and we only wait while too much is queued
        (backpressure).
        """
        if self._flushing or self.is_closed:
            while self.tls.pending_output > _OUTPUT_HIGH_WATER and not self.is_closed:
                await self._drained_lot.park()
            await trio.lowlevel.checkpoint()
            return
        await self._flush()

    async def _flush(self) -> None:
        self._flushing = True
        try:
            await self.tls.flush()
        except (TlsError, trio.ClosedResourceError) as e:
            self._terminate(str(e))
        finally:
            self._flushing = False
            self._drained_lot.unpark_all()
            # Cancelled halfway: the writer sends the rest.
            if self.tls.pending_output:
                self._writer_lot.unpark()

    # -- tasks ---------------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run reader, writer and keepalive until the connection ends; then close TLS."""
        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                nursery.start_soon(self._guard, self._writer)
                nursery.start_soon(self._guard, self._reader)
                nursery.start_soon(self._guard, self._keepalive)
                if self._drain is not None:
                    nursery.start_soon(self._guard, self._goaway_on_drain)
                task_status.started()
        finally:
            self._terminate(self.closed_reason or "connection closed")
            with trio.move_on_after(_CLOSE_GRACE, shield=True):
                await self._final_flush()
                await self.tls.aclose()
            self._done.set()

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except (TlsError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
            self._terminate(str(e) or type(e).__name__)
        except Exception as e:
            logger.exception("HBONE connection task %s failed", task.__name__)
            self._terminate(f"internal error: {e!r}")

    async def _final_flush(self) -> None:
        with contextlib.suppress(TlsError, trio.BusyResourceError, trio.ClosedResourceError):
            for buffer in self.core.buffers_to_send():
                self.tls.encrypt(buffer)
            await self.tls.flush()

    def _terminate(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        logger.debug("HBONE connection closing: %s", reason)
        error = HboneStreamError(f"HBONE connection lost: {reason}")
        for stream in list(self.streams.values()):
            if not stream._eof_received or not stream._eof_sent:
                stream._fail(error)
        self.streams.clear()
        self._drained_lot.unpark_all()
        if self._pong is not None:
            self._pong.set()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def _goaway_on_drain(self) -> None:
        """Once draining starts: a graceful GOAWAY (open streams go on, the peer opens new ones
        elsewhere); the connection closes when its last stream is done."""
        assert self._drain is not None
        await self._drain.wait()
        self.core.close(proto.ErrorCodes.NO_ERROR, "draining")
        self.emit()
        if not self.streams:
            self._terminate("drained: no open streams")

    async def _writer(self) -> None:
        """Send ciphertext queued by tasks that did not send it themselves (frames produced
        by the reader, the keepalive, closing streams)."""
        tls = self.tls
        while True:
            if not tls.pending_output or self._flushing:
                await self._writer_lot.park()
                continue
            await self._flush()

    async def _reader(self) -> None:
        pool = self.buffers
        protocol = self.core
        buffer = pool.get()
        offset = 0
        while True:
            if buffer.pins == 0:
                # Every slice handed out so far was consumed: start over at the front.
                offset = 0
                if len(buffer.view) != pool.size:
                    buffer = pool.get()
            elif len(buffer.view) - offset < len(buffer.view) // 4:
                # Streams still hold slices of this buffer; it is recycled when they let go.
                buffer.detached = True
                buffer = pool.get()
                offset = 0
            # Reading after the slices still held packs small reads into one buffer.
            space = buffer.view[offset:]
            count = await self.tls.receive_into(space)
            if not count:
                self._terminate("peer closed the connection")
                return
            self._last_input = trio.current_time()
            self._dispatch(protocol.receive_data(space[:count]), buffer)
            offset += count
            if protocol.bytes_to_send:
                self.emit()
            if count == len(buffer.view):
                pool.grow()

    async def _keepalive(self) -> None:
        while True:
            idle = trio.current_time() - self._last_input
            if idle < self._keepalive_interval:
                await trio.sleep(self._keepalive_interval - idle)
                continue
            # Idle: give bulk-transfer memory back, then check the peer is still there.
            self.buffers.trim()
            self.tls.trim()
            self._pong = trio.Event()
            self.core.ping(os.urandom(8))
            self.emit()
            with trio.move_on_after(self._keepalive_timeout):
                await self._pong.wait()
            if self._pong is not None and not self._pong.is_set():
                self._terminate(f"no answer to PING within {self._keepalive_timeout:g}s")
                return
            self._last_input = trio.current_time()

    # -- events --------------------------------------------------------------------------

    def _dispatch(self, events: list[proto.Event], buffer: _RecvBuffer) -> None:
        streams = self.streams
        for event in events:
            if isinstance(event, proto.DataReceived):
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.stream_id, len(event.data))
                else:
                    stream._on_data(event.data, buffer)
            elif isinstance(event, proto.WindowOpened):
                self._on_window(event.stream_id)
            elif isinstance(event, proto.StreamEnded):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_eof()
            elif isinstance(event, proto.StreamReset):
                self._on_reset(event)
            else:
                self._on_event(event)

    def _on_window(self, stream_id: int) -> None:
        if stream_id == 0:
            for waiter in list(self.window_waiters):
                waiter._on_window()
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._on_window()

    def _on_reset(self, event: proto.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        name = _error_name(event.error_code)
        reason = (
            f"stream reset by peer ({name})"
            if event.remote
            else f"stream reset after a protocol error ({name})"
        )
        stream._fail(HboneStreamError(reason, error_code=event.error_code))

    def _on_event(self, event: proto.Event) -> None:
        if isinstance(event, proto.PingAcknowledged):
            if self._pong is not None:
                self._pong.set()
        elif isinstance(event, proto.GoAwayReceived):
            logger.debug("HBONE peer sent GOAWAY (last stream %d)", event.last_stream_id)
            self._on_goaway()
        elif isinstance(event, proto.ConnectionTerminated):
            self._terminate(event.reason)
        elif isinstance(event, proto.ConnectRequest | proto.Response | proto.RequestRejected):
            self._on_request_event(event)

    def _on_goaway(self) -> None:
        """Draining: close once the last stream is done."""
        if not self.streams:
            self._terminate("peer sent GOAWAY")

    def _on_request_event(self, event: proto.Event) -> None:
        """Role-specific: CONNECT requests (server) or responses (client)."""

    async def aclose(self) -> None:
        """Close now: GOAWAY, then close_notify, then the socket. Open streams fail."""
        if not self.is_closed:
            self.core.close()
            self._terminate("closed locally")
        await self._done.wait()


def _no_delay(sock: trio.socket.SocketType) -> None:
    """TCP_NODELAY, as ztunnel sets on every socket: small frames (WINDOW_UPDATE, PING,
    request/response traffic) must not wait for Nagle."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _check_alpn(tls: TlsTransport) -> None:
    if tls.alpn_protocol != ALPN_H2:
        raise HboneHandshakeError(
            f"peer did not negotiate ALPN {ALPN_H2!r} (got {tls.alpn_protocol!r}); "
            "is it an HBONE endpoint?"
        )


# --- client ---------------------------------------------------------------------------------


class HboneClientConnection(_Connection):
    """A client HBONE connection: opens CONNECT tunnels to one peer."""

    core: proto.HboneClient

    @property
    def is_ready(self) -> bool:
        """True while new streams may be opened (not closed, no GOAWAY)."""
        return not self.is_closed and not self.core.is_draining

    @property
    def available_streams(self) -> int:
        """How many more streams may be opened now (see `HboneClient.available_streams`)."""
        return 0 if self.is_closed else self.core.available_streams

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self.core.peer_max_concurrent_streams

    async def open_stream(self, authority: str, headers: Sequence[Header] = ()) -> HboneStream:
        """CONNECT to `authority` (`ip:port`) with `headers`; returns the tunnel after a 200.

        Waits for the answer without a time limit of its own (wrap it in `trio.fail_after`);
        cancelling resets the stream. Raises `HboneStatusError` for any other status,
        `HboneUnavailableError` if this connection takes no new stream, `HboneStreamError` if
        it breaks meanwhile, `ValueError` for a malformed authority or header.
        """
        if self.is_closed:
            raise HboneUnavailableError(f"HBONE connection is closed: {self.closed_reason}")
        try:
            stream_id = self.core.start_connect(authority, headers)
        except (proto.ConnectionClosedError, proto.StreamLimitError) as e:
            raise HboneUnavailableError(str(e)) from None
        stream = HboneStream(self, stream_id)
        self.track(stream)
        self.emit(wake_writer=False)
        try:
            await self.flush()
            while stream._status is None:
                if stream._error is not None:
                    raise stream._error
                stream._readable = trio.Event()
                await stream._readable.wait()
        except BaseException:
            stream.reset()
            raise
        if stream._status != 200:
            stream._closed = True
            stream._release_all()
            self.forget(stream)
            raise HboneStatusError(stream._status, stream.response_headers)
        return stream

    def _on_request_event(self, event: proto.Event) -> None:
        if isinstance(event, proto.Response):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._status = event.status
                stream.response_headers = event.headers
                stream._wake()


async def connect_hbone(
    sock: trio.socket.SocketType,
    ssl_context: ssl.SSLContext,
    *,
    expected_identities: Sequence[Identity],
    verify: ServerVerifier | None,
    nursery: trio.Nursery,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_streams: int = proto.DEFAULT_MAX_STREAMS_PER_CONNECTION,
) -> HboneClientConnection:
    """Set up a client HBONE connection on an already-connected socket.

    Runs the TLS handshake (no SNI), requires ALPN h2, then calls
    `verify(peer_leaf_der, expected_identities)` (e.g. `identity.tls.verify_server_identity`)
    before any HTTP/2 byte; it returns the peer identity or raises to refuse it. `verify=None`
    skips the identity check. Then exchanges HTTP/2 SETTINGS, so the peer's stream limit is
    known, and starts the connection's tasks in `nursery`. The whole setup is bounded by
    `handshake_timeout`. Raises `HboneHandshakeError`; the socket is closed on failure.
    """
    _no_delay(sock)
    tls = TlsTransport(sock, ssl_context, server_side=False, handshake_timeout=handshake_timeout)
    try:
        with trio.fail_after(handshake_timeout):
            await tls.handshake()
            _check_alpn(tls)
            identity = None
            if verify is not None:
                try:
                    identity = verify(tls.peer_leaf_der(), expected_identities)
                except Exception as e:
                    raise HboneHandshakeError(f"server identity rejected: {e}") from e
            conn = HboneClientConnection(
                tls,
                proto.HboneClient(max_streams=max_streams),
                identity,
                keepalive_interval=keepalive_interval,
                keepalive_timeout=keepalive_timeout,
            )
            await tls.send_all(conn.core.data_to_send())
            await _read_peer_settings(conn)
    except trio.TooSlowError:
        await tls.aclose()
        raise HboneHandshakeError(
            f"HBONE connection setup timed out after {handshake_timeout:g}s"
        ) from None
    except TlsError as e:
        await tls.aclose()
        raise HboneHandshakeError(e.reason) from e
    except BaseException:
        await tls.aclose()
        raise
    await nursery.start(conn._run)
    return conn


async def _read_peer_settings(conn: _Connection) -> None:
    """Read until the peer's SETTINGS arrived (before the connection's tasks start)."""
    buffer = conn.buffers.get()
    while not conn.core.peer_settings_received:
        if conn.is_closed:
            raise HboneHandshakeError(f"HTTP/2 setup failed: {conn.closed_reason}")
        count = await conn.tls.receive_into(buffer.view)
        if not count:
            raise HboneHandshakeError(
                "peer closed the connection right after the TLS handshake, before HTTP/2 "
                "SETTINGS (did it refuse our identity?)"
            )
        events = conn.core.receive_data(buffer.view[:count])
        for event in events:
            if isinstance(event, proto.ConnectionTerminated):
                await conn.tls.send_all(conn.core.data_to_send())
                raise HboneHandshakeError(f"HTTP/2 setup failed: {event.reason}")
        conn._dispatch(events, buffer)
        if buffer.pins:
            buffer.detached = True
            buffer = conn.buffers.get()
    if conn.core.bytes_to_send:
        await conn.tls.send_all(conn.core.data_to_send())


# --- server ---------------------------------------------------------------------------------


class HboneRequest:
    """A CONNECT request on an inbound HBONE connection, waiting for `respond`."""

    def __init__(
        self,
        connection: _ServerConnection,
        stream: HboneStream,
        authority: str,
        headers: tuple[Header, ...],
    ) -> None:
        self._conn = connection
        self._stream = stream
        self.authority = authority
        self.headers = headers
        self.peer_identity: Identity = connection.client_identity
        self.peer_address = connection.peer_address
        self.local_address = connection.local_address
        self.responded = False

    @property
    def stream_id(self) -> int:
        return self._stream.stream_id

    def header(self, name: str) -> str | None:
        """The first value of request header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def respond(self, status: int, headers: Sequence[Header] = ()) -> HboneStream | None:
        """Answer the CONNECT. 200 returns the tunnel; any other status ends the stream and
        returns None. Raises `HboneStreamError` if the client or connection went away."""
        await trio.lowlevel.checkpoint_if_cancelled()
        stream = self._respond(status, headers)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream

    def _respond(self, status: int, headers: Sequence[Header] = ()) -> HboneStream | None:
        if self.responded:
            raise RuntimeError(f"HBONE request on stream {self.stream_id} was already answered")
        self.responded = True
        stream = self._stream
        if stream._error is not None:
            raise stream._error
        try:
            self._conn.core.respond(stream.stream_id, status, headers)
        except proto.HboneError as e:
            raise self._conn.stream_failure(f"cannot answer the CONNECT: {e}") from None
        self._conn.emit()
        if status == 200:
            return stream
        stream._closed = True
        stream._release_all()
        self._conn.forget(stream)
        return None


class _ServerConnection(_Connection):
    core: proto.HboneServer

    def __init__(
        self,
        tls: TlsTransport,
        client_identity: Identity,
        handler: Handler,
        *,
        keepalive_interval: float,
        keepalive_timeout: float,
        max_concurrent_streams: int,
        drain: trio.Event | None,
    ) -> None:
        super().__init__(
            tls,
            proto.HboneServer(max_concurrent_streams=max_concurrent_streams),
            client_identity,
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            drain=drain,
        )
        self.client_identity = client_identity
        self.peer_address = _address(tls.socket.getpeername)
        self.local_address = _address(tls.socket.getsockname)
        self._handler = handler
        self._handlers: trio.Nursery | None = None

    async def serve(self) -> None:
        # The writer task sends our SETTINGS first thing.
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            await self._run()

    def _on_request_event(self, event: proto.Event) -> None:
        if isinstance(event, proto.ConnectRequest):
            stream = HboneStream(self, event.stream_id)
            self.track(stream)
            request = HboneRequest(self, stream, event.authority, event.headers)
            assert self._handlers is not None
            self._handlers.start_soon(self._handle, request)
        elif isinstance(event, proto.RequestRejected):
            logger.info("HBONE request rejected with %d: %s", event.status, event.reason)

    async def _handle(self, request: HboneRequest) -> None:
        try:
            await self._handler(request)
        except HboneStreamError as e:
            logger.debug("HBONE stream %d ended with an error: %s", request.stream_id, e)
        except Exception:
            logger.exception("HBONE handler failed for %s", request.authority)
        finally:
            if not request.responded and not self.is_closed:
                # A handler that returns without an answer must not leave the client hanging.
                with contextlib.suppress(HboneStreamError):
                    request._respond(503)
            request._stream.reset()


def _address(getter: Callable[[], Any]) -> tuple[str, int]:
    address = getter()
    return (str(address[0]), int(address[1]))


async def serve_hbone_connection(
    sock: trio.socket.SocketType,
    ssl_context: ssl.SSLContext,
    *,
    verify_client: ClientVerifier,
    handler: Handler,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_concurrent_streams: int = proto.SERVER_MAX_CONCURRENT_STREAMS,
    drain: trio.Event | None = None,
) -> None:
    """Serve one accepted TCP connection as an HBONE server until it closes.

    TLS handshake (the context requires a client certificate), ALPN h2, then
    `verify_client(peer_leaf_der)` returns the client identity or raises to refuse it; all
    before any HTTP/2 byte is processed. Each valid CONNECT runs `handler(request)` in its own
    task; a handler that returns without answering gets a 503 sent for it, and its stream is
    reset if still open. Raises `HboneHandshakeError` if the connection could not be set up
    (the socket is closed); returns normally when an established connection ends.

    Once `drain` is set the connection sends a graceful GOAWAY and ends when the streams it
    already carries are done.
    """
    _no_delay(sock)
    tls = TlsTransport(sock, ssl_context, server_side=True, handshake_timeout=handshake_timeout)
    try:
        await tls.handshake()
        _check_alpn(tls)
        try:
            identity = verify_client(tls.peer_leaf_der())
        except Exception as e:
            raise HboneHandshakeError(f"client identity rejected: {e}") from e
    except TlsError as e:
        await tls.aclose()
        raise HboneHandshakeError(e.reason) from e
    except BaseException:
        await tls.aclose()
        raise
    conn = _ServerConnection(
        tls,
        identity,
        handler,
        keepalive_interval=keepalive_interval,
        keepalive_timeout=keepalive_timeout,
        max_concurrent_streams=max_concurrent_streams,
        drain=drain,
    )
    await conn.serve()
