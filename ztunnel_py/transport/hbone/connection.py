"""The HBONE connection driver: the sans-IO core (`ztunnel_py.protocol.hbone`) over a
`tls.TlsTransport`, shared by client and server connections.

One connection runs three tasks: a reader (TLS records -> core -> streams), a writer and a
keepalive (PING after 10 s without input, then every 10 s; the connection is dropped after 20 s
without an answer, as ztunnel does).

Sending does not copy large payloads: the core queues them by reference and the sending task
encrypts them at once (`send_data` -> `_emit`), so the caller's buffer is free when
`send_all` returns; small frames are packed with their header into one TLS record. The sending
task then writes the ciphertext to the socket itself unless a send is already in flight, in which
case that send takes it along (everything encrypted meanwhile leaves in one socket write) and the
sender only waits while more than `_OUTPUT_HIGH_WATER` bytes are queued. The writer task sends
what other tasks produce (WINDOW_UPDATEs, PING answers, resets). Sending inline instead of handing
every chunk to the writer saves a task switch per message, which is most of the latency a Python
hop adds.

The connection is the `StreamHost` of its streams (see `stream`); the client and server
connections add opening and accepting CONNECT streams.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import trio

from ztunnel_py.model.identity import Identity
from ztunnel_py.protocol.hbone import (
    ConnectionTerminated,
    DataReceived,
    ErrorCodes,
    Event,
    GoAwayReceived,
    HboneClient,
    HboneCoreError,
    HboneServer,
    PingAcknowledged,
    StreamEnded,
    StreamReset,
    WindowOpened,
    error_name,
)
from ztunnel_py.transport.hbone.buffers import BufferPool, RecvBuffer
from ztunnel_py.transport.hbone.errors import HboneHandshakeError, HboneStreamError
from ztunnel_py.transport.hbone.stream import HboneStream
from ztunnel_py.transport.tls import TlsError, TlsTransport

__all__ = [
    "ALPN_H2",
    "HBONE_CIPHER_SUITES",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_TIMEOUT",
    "HboneConnection",
    "closed_on_failure",
    "no_delay",
    "secure_handshake",
]

logger = logging.getLogger(__name__)

ALPN_H2 = "h2"
# The TLS 1.3 suites HBONE accepts (ztunnel's); checked after the handshake (see
# identity/tls.py for why not before).
HBONE_CIPHER_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 20.0
# Senders wait once this much output is queued for the writer (the socket is not keeping up).
_OUTPUT_HIGH_WATER = 1024 * 1024
# How long closing may spend delivering a final GOAWAY and close_notify.
_CLOSE_GRACE = 0.5

_Peer = TypeVar("_Peer")


class HboneConnection:
    """What client and server connections share: tasks, flow, keepalive, termination."""

    def __init__(
        self,
        tls: TlsTransport,
        core: HboneClient | HboneServer,
        peer_identity: Identity | None,
        *,
        keepalive_interval: float,
        keepalive_timeout: float,
        drain: trio.Event | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.tls = tls
        self.peer_identity = peer_identity
        # When a certificate the connection was set up with expires (trio clock): from then
        # on it takes no new stream, and it closes once its open streams are done.
        self.expires_at = expires_at
        # When the connection last became idle (no stream), None while it carries streams.
        self.idle_since: float | None = trio.current_time()
        self.closed_reason: str | None = None
        self._core = core
        self._buffers = BufferPool()
        self._streams: dict[int, HboneStream] = {}
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
        return len(self._streams)

    def _track(self, stream: HboneStream) -> None:
        self._streams[stream.stream_id] = stream
        self.idle_since = None

    def _stream_failure(self, detail: str) -> HboneStreamError:
        if self.closed_reason is not None:
            return HboneStreamError(f"HBONE connection lost: {self.closed_reason}")
        return HboneStreamError(detail)

    # -- the stream host (see `stream.StreamHost`) ---------------------------------------

    def send_data(self, stream_id: int, data: memoryview) -> int:
        try:
            sent = self._core.send_data(stream_id, data)
        except HboneCoreError as e:
            raise self._stream_failure(str(e)) from None
        if sent:
            # The caller flushes next: no need to wake the writer.
            self._emit(wake_writer=False)
        return sent

    def end_stream(self, stream_id: int) -> None:
        try:
            self._core.end_stream(stream_id)
        except HboneCoreError as e:
            raise self._stream_failure(str(e)) from None
        self._emit()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self._core.reset_stream(stream_id, error_code)
        self._emit()

    def send_window(self, stream_id: int) -> int:
        return self._core.send_window(stream_id)

    def consumed(self, stream_id: int, size: int) -> None:
        if size and not self.is_closed:
            self._core.acknowledge_received_data(stream_id, size)
            # Only a quarter window's worth queues a WINDOW_UPDATE.
            if self._core.bytes_to_send:
                self._emit()

    def detach(self, stream: HboneStream) -> None:
        if self._streams.pop(stream.stream_id, None) is not None and not self._streams:
            self.idle_since = trio.current_time()
            if self._core.is_draining:
                self._terminate("all streams done after GOAWAY")

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

    def flush_nowait(self) -> bool:
        """Send the ciphertext queued so far as far as the socket takes it now; the writer
        task sends the rest. False while more than `_OUTPUT_HIGH_WATER` stays queued."""
        if not self._flushing and not self.is_closed:
            try:
                self.tls.flush_nowait()
            except (TlsError, trio.ClosedResourceError) as e:
                self._terminate(str(e))
                return True
            if self.tls.pending_output:
                self._writer_lot.unpark()
        return self.tls.pending_output <= _OUTPUT_HIGH_WATER

    # -- output --------------------------------------------------------------------------

    def _emit(self, *, wake_writer: bool = True) -> None:
        """Encrypt the core's queued output now; the writer sends it unless the caller is
        about to `flush` itself.

        Encrypting in the task that produced the frames consumes large DATA payloads (queued by
        reference) before the caller reuses its buffer, without copying them.
        """
        try:
            for buffer in self._core.buffers_to_send():
                self.tls.encrypt(buffer)
        except (TlsError, trio.ClosedResourceError) as e:
            self._terminate(str(e))
            return
        if wake_writer:
            self._writer_lot.unpark()

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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run reader, writer and keepalive until the connection ends; then close TLS."""
        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                nursery.start_soon(self._guard, self._writer)
                nursery.start_soon(self._guard, self._reader)
                nursery.start_soon(self._guard, self._keepalive)
                if self._drain is not None:
                    nursery.start_soon(self._guard, self._goaway_on_drain)
                if self.expires_at is not None:
                    nursery.start_soon(self._guard, self._retire_at_expiry)
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
            for buffer in self._core.buffers_to_send():
                self.tls.encrypt(buffer)
            await self.tls.flush()

    def _terminate(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        logger.debug("HBONE connection closing: %s", reason)
        error = HboneStreamError(f"HBONE connection lost: {reason}")
        for stream in list(self._streams.values()):
            stream.fail(error)
        self._streams.clear()
        self._drained_lot.unpark_all()
        if self._pong is not None:
            self._pong.set()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def _goaway_on_drain(self) -> None:
        """Once draining starts: retire the connection."""
        assert self._drain is not None
        await self._drain.wait()
        self._retire("draining")

    async def _retire_at_expiry(self) -> None:
        """Once a certificate of the connection expires: retire the connection."""
        assert self.expires_at is not None
        await trio.sleep_until(self.expires_at)
        logger.debug("HBONE connection retired: a certificate expired")
        self._retire("certificate expired")

    def _retire(self, reason: str) -> None:
        """A graceful GOAWAY: open streams go on, the peer opens new ones elsewhere; the
        connection closes when its last stream is done."""
        if self.is_closed or self._core.is_draining:
            return
        self._core.close(ErrorCodes.NO_ERROR, reason)
        self._emit()
        if not self._streams:
            self._terminate(f"{reason}: no open streams")

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
        pool = self._buffers
        core = self._core
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
            self._dispatch(core.receive_data(space[:count]), buffer)
            offset += count
            if core.bytes_to_send:
                self._emit()
            if count == len(buffer.view):
                pool.grow()

    async def _keepalive(self) -> None:
        while True:
            idle = trio.current_time() - self._last_input
            if idle < self._keepalive_interval:
                await trio.sleep(self._keepalive_interval - idle)
                continue
            # Idle: give bulk-transfer memory back, then check the peer is still there.
            self._buffers.trim()
            self.tls.trim()
            self._pong = trio.Event()
            self._core.ping(os.urandom(8))
            self._emit()
            with trio.move_on_after(self._keepalive_timeout):
                await self._pong.wait()
            if self._pong is not None and not self._pong.is_set():
                self._terminate(f"no answer to PING within {self._keepalive_timeout:g}s")
                return
            self._last_input = trio.current_time()

    # -- events --------------------------------------------------------------------------

    def _dispatch(self, events: list[Event], buffer: RecvBuffer) -> None:
        streams = self._streams
        for event in events:
            if isinstance(event, DataReceived):
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.consumed(event.stream_id, len(event.data))
                else:
                    stream.deliver_data(event.data, buffer)
            elif isinstance(event, WindowOpened):
                self._on_window(event.stream_id)
            elif isinstance(event, StreamEnded):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.deliver_eof()
            elif isinstance(event, StreamReset):
                self._on_reset(event)
            elif isinstance(event, PingAcknowledged):
                if self._pong is not None:
                    self._pong.set()
            elif isinstance(event, GoAwayReceived):
                logger.debug("HBONE peer sent GOAWAY (last stream %d)", event.last_stream_id)
                # Draining: close once the last stream is done.
                if not self._streams:
                    self._terminate("peer sent GOAWAY")
            elif isinstance(event, ConnectionTerminated):
                self._on_terminated(event)
            else:
                self._on_request_event(event)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        self._terminate(event.reason)

    def _on_window(self, stream_id: int) -> None:
        if stream_id == 0:
            for stream in list(self._streams.values()):
                stream.window_opened()
            return
        waiting = self._streams.get(stream_id)
        if waiting is not None:
            waiting.window_opened()

    def _on_reset(self, event: StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        name = error_name(event.error_code)
        reason = (
            f"stream reset by peer ({name})"
            if event.remote
            else f"stream reset after a protocol error ({name})"
        )
        stream.fail(HboneStreamError(reason, error_code=event.error_code))

    def _on_request_event(self, event: Event) -> None:
        """Role-specific: CONNECT requests (server) or responses (client)."""

    async def aclose(self) -> None:
        """Close now: GOAWAY, then close_notify, then the socket. Open streams fail."""
        if not self.is_closed:
            self._core.close()
            self._terminate("closed locally")
        await self._done.wait()


def no_delay(sock: trio.socket.SocketType) -> None:
    """TCP_NODELAY, as ztunnel sets on every socket: small frames (WINDOW_UPDATE, PING,
    request/response traffic) must not wait for Nagle."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def secure_handshake(
    tls: TlsTransport, verify_peer: Callable[[bytes | None], _Peer], side: str
) -> _Peer:
    """TLS handshake, ALPN h2, an AES-GCM suite, then `verify_peer(peer_leaf_der)`, all before
    any HTTP/2 byte.

    `verify_peer` returns the peer's identity or raises to refuse it; `side` names the peer in
    the error ("server", "client"). Raises `HboneHandshakeError` (or `TlsError`).
    """
    await tls.handshake()
    if tls.alpn_protocol != ALPN_H2:
        raise HboneHandshakeError(
            f"peer did not negotiate ALPN {ALPN_H2!r} (got {tls.alpn_protocol!r}); "
            "is it an HBONE endpoint?"
        )
    if tls.cipher not in HBONE_CIPHER_SUITES:
        raise HboneHandshakeError(
            f"peer negotiated cipher suite {tls.cipher}; HBONE allows only "
            f"{', '.join(HBONE_CIPHER_SUITES)}"
        )
    try:
        return verify_peer(tls.peer_leaf_der())
    except Exception as e:
        raise HboneHandshakeError(f"{side} identity rejected: {e}") from e


@contextlib.asynccontextmanager
async def closed_on_failure(tls: TlsTransport) -> AsyncIterator[None]:
    """Connection setup on `tls`: any failure closes it, TLS errors as `HboneHandshakeError`."""
    try:
        yield
    except TlsError as e:
        await tls.aclose()
        raise HboneHandshakeError(e.reason) from e
    except BaseException:
        await tls.aclose()
        raise
