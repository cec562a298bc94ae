"""`HboneStream`: one CONNECT tunnel as a trio-style, half-closeable byte stream.

Users see trio's stream interface: `receive_some`, `send_all`, `send_eof`,
`wait_send_all_might_not_block`, `aclose`, plus `reset` (abort) and `peer_identity`.

Between a stream and its connection runs a small internal API, in two halves:

- `StreamHost` is what a stream asks of its connection: queue DATA and push it out, half-close,
  reset, acknowledge consumed bytes (flow control), and detach the stream once it is done.
- The connection delivers to the stream through the methods under "called by the connection"
  below: data, end of stream, a response (client), a send window that opened, a failure, or a
  non-200 answer that ends the stream before it carried anything (`discard`).

Received DATA is not copied: the stream queues slices of the connection's receive buffers
(see `buffers`). `receive_some` therefore returns a view that is valid until the next
`receive_some` (or `aclose`) on that stream; `bytes(view)` it to keep it longer. Bytes are
acknowledged to the peer as they are handed out, so a reader that stops reading stops the peer at
the 4 MiB stream window.
"""

from __future__ import annotations

import contextlib
import operator
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from ztunnel_py.model.identity import Identity
from ztunnel_py.protocol.hbone import ErrorCodes, Header
from ztunnel_py.transport.hbone.buffers import RecvBuffer
from ztunnel_py.transport.hbone.errors import HboneStreamError
from ztunnel_py.transport.relay import InputWatch, ReceiveWoken

__all__ = ["HboneStream", "StreamHost"]

Bytes = bytes | bytearray | memoryview

# A single send_all hands the connection at most this much at a time, then flushes it to the
# socket before encrypting more: it bounds the ciphertext one large send can pile up.
SEND_CHUNK = 1024 * 1024
_EMPTY = memoryview(b"")


class StreamHost(Protocol):
    """What a stream needs from its connection (implemented by the connection driver)."""

    @property
    def peer_identity(self) -> Identity | None:
        """The identity the peer proved in the TLS handshake."""

    def send_data(self, stream_id: int, data: memoryview) -> int:
        """Queue and encrypt as much of `data` as the flow-control windows allow; returns how
        much that was (0: wait for `window_opened`). Raises `HboneStreamError`."""

    async def flush(self) -> None:
        """Send what was encrypted so far (or wait while too much is queued)."""

    def flush_nowait(self) -> bool:
        """Send what was encrypted so far as far as the socket takes it now, the rest later
        (without waiting); False when too much is queued already (the caller should wait)."""

    def end_stream(self, stream_id: int) -> None:
        """Send END_STREAM. Raises `HboneStreamError`."""

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Send RST_STREAM; a no-op if the stream is already gone."""

    def send_window(self, stream_id: int) -> int:
        """How much `send_data` would accept now."""

    def consumed(self, stream_id: int, size: int) -> None:
        """The stream's user consumed `size` received bytes: give the peer window back."""

    def detach(self, stream: HboneStream) -> None:
        """The stream is done (or broken): stop delivering to it."""


class HboneStream:
    """One CONNECT tunnel: a bidirectional, half-closeable byte stream.

    One task may receive while another sends; two concurrent receivers (or senders) raise
    `trio.BusyResourceError`.
    """

    def __init__(self, host: StreamHost, stream_id: int) -> None:
        self._host = host
        self.stream_id = stream_id
        self.response_headers: tuple[Header, ...] = ()
        self._queue: deque[tuple[memoryview, RecvBuffer]] = deque()
        self._lease: RecvBuffer | None = None
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        self._error: HboneStreamError | None = None
        self._status: int | None = None
        # where a reader (or a client waiting for the CONNECT's answer) and a sender wait: a
        # parking lot each, kept for the stream's life, rather than a new event per wait
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()
        self._receiving = False
        # the receive in progress was asked to end early (`wake_receiver`)
        self._woken = False
        self._sending = False
        self._input_watch: InputWatch | None = None
        self._forward: Callable[[memoryview], int] | None = None

    @property
    def peer_identity(self) -> Identity | None:
        """The identity the peer proved in the TLS handshake."""
        return self._host.peer_identity

    @property
    def error(self) -> HboneStreamError | None:
        """Why the stream broke (reset, connection lost), or None."""
        return self._error

    # -- receiving -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> memoryview:
        """Next bytes from the peer (at most `max_bytes`); empty once the peer half-closed.

        The view is valid until the next `receive_some` or `aclose`. Raises `HboneStreamError`
        if the stream was reset or the connection lost before the peer's END_STREAM, and
        `ReceiveWoken` (taking nothing) when `wake_receiver` ended it early.
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
                await self._readers.park()
                if self._closed or self._woken:
                    break
        finally:
            self._receiving = False
            woken, self._woken = self._woken, False
        if self._closed:
            raise trio.ClosedResourceError("the HBONE stream was closed while receiving")
        if woken:
            raise ReceiveWoken
        view, buffer = self._queue[0]
        if max_bytes is not None and len(view) > max_bytes:
            self._queue[0] = (view[max_bytes:], buffer)
            view = view[:max_bytes]
            buffer.pin()
        else:
            self._queue.popleft()
        self._lease = buffer
        self._host.consumed(self.stream_id, len(view))
        return view

    def wake_receiver(self) -> None:
        """End the `receive_some` in progress with `ReceiveWoken` (see `relay.WakesReceiver`)."""
        if self._receiving:
            self._woken = True
            self._readers.unpark_all()

    def _release_lease(self) -> None:
        if self._lease is not None:
            self._lease.unpin()
            self._lease = None

    def _release_all(self) -> None:
        self._release_lease()
        unacknowledged = 0
        while self._queue:
            view, buffer = self._queue.popleft()
            unacknowledged += len(view)
            buffer.unpin()
        # Bytes never handed out still occupy the connection window: give them back.
        self._host.consumed(self.stream_id, unacknowledged)

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
            host = self._host
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the HBONE stream was closed while sending")
                if self._error is not None:
                    raise self._error
                try:
                    sent = host.send_data(self.stream_id, view[:SEND_CHUNK])
                except HboneStreamError as e:
                    raise self._error or e from None
                if sent:
                    view = view[sent:]
                    # Out to the socket before encrypting more.
                    await host.flush()
                elif view:
                    await self._wait_writable()
                if not view:
                    break
            if not sent:
                await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    def send_nowait(self, data: Bytes) -> int:
        """Take as much of `data` as the flow-control windows allow now, encrypted at once and
        pushed toward the socket without waiting; returns how much (0: use `send_all`, which
        waits for window or for the socket). What is taken is delivered in order even if the
        caller is cancelled next (see `relay.SendsNowait`)."""
        if self._sending:
            return 0
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("the HBONE stream is closed for sending")
        if self._error is not None:
            raise self._error
        host = self._host
        if not host.flush_nowait():
            # the socket is not keeping up: `send_all` waits for it
            return 0
        try:
            sent = host.send_data(self.stream_id, memoryview(data).cast("B")[:SEND_CHUNK])
        except HboneStreamError as e:
            raise self._error or e from None
        if sent:
            host.flush_nowait()
        return sent

    async def _wait_writable(self) -> None:
        await self._writers.park()

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
                self._host.end_stream(self.stream_id)
            except HboneStreamError as e:
                raise self._error or e from None
            self._eof_sent = True
            self._detach_if_finished()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Returns when `send_all` would find some window open (trio's stream interface)."""
        if self._closed:
            raise trio.ClosedResourceError("the HBONE stream is closed")
        while self._host.send_window(self.stream_id) == 0 and self._error is None:
            if self._closed or self._eof_sent:
                break
            await self._wait_writable()
        await trio.lowlevel.checkpoint()

    # -- closing -------------------------------------------------------------------------

    def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream (RST_STREAM) in both directions, dropping unread data: the peer
        sees an error, not an end of stream."""
        if self._closed:
            return
        self._host.reset_stream(self.stream_id, error_code)
        self._close()

    async def aclose(self) -> None:
        """Close gracefully, like closing a TCP socket: END_STREAM after the data sent so far
        (unless sent already), and RST_STREAM(CANCEL) if the peer was still sending."""
        if not self._closed:
            if not self._eof_sent and self._error is None:
                with contextlib.suppress(HboneStreamError):
                    self._host.end_stream(self.stream_id)
                    self._eof_sent = True
            if not self._eof_received:
                self._host.reset_stream(self.stream_id, ErrorCodes.CANCEL)
            self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        self._closed = True
        self._input_watch = None
        self._release_all()
        self._host.detach(self)
        self._wake()

    def forward_input(self, sink: Callable[[memoryview], int] | None) -> None:
        """Offer data that arrives while a reader waits to `sink` first (see
        `relay.ForwardsInput`): the relay's pump then sleeps through small messages, which go
        on from the connection's reader."""
        self._forward = sink

    def watch_input(self, callback: InputWatch | None) -> bool:
        """Call `callback` once when input arrives for `receive_some`; False if some is there
        already (see `relay.WatchesInput`): how an HTTP/1.1 server notices a client that went
        away while it answers, without a task reading meanwhile."""
        if callback is not None and (
            self._queue or self._eof_received or self._error or self._closed
        ):
            self._input_watch = None
            return False
        self._input_watch = callback
        return True

    def _input_arrived(self) -> None:
        callback = self._input_watch
        if callback is None:
            return
        self._input_watch = None
        if self._queue:
            callback(False, None)
        elif self._eof_received:
            callback(True, None)
        else:
            callback(False, self._error)

    def _wake(self) -> None:
        if self._readers:
            self._readers.unpark_all()
        if self._writers:
            self._writers.unpark_all()

    def _detach_if_finished(self) -> None:
        if self._eof_sent and self._eof_received:
            self._host.detach(self)

    # -- called by the connection --------------------------------------------------------

    def deliver_data(self, view: memoryview, buffer: RecvBuffer) -> None:
        """Queue received payload, a slice of `buffer` (pinned until consumed); or hand it to
        the forwarding sink first when a reader waits with nothing queued."""
        forward = self._forward
        if forward is not None and self._receiving and not self._queue:
            try:
                taken = forward(view)
            except Exception:
                # the reader meets the failure itself, with the data
                self._forward = None
                taken = 0
            if taken:
                self._host.consumed(self.stream_id, taken)
                if taken == len(view):
                    return
                view = view[taken:]
        buffer.pin()
        self._queue.append((view, buffer))
        if self._readers:
            self._readers.unpark_all()
        self._input_arrived()

    def deliver_eof(self) -> None:
        """The peer half-closed."""
        self._eof_received = True
        if self._readers:
            self._readers.unpark_all()
        self._input_arrived()
        self._detach_if_finished()

    def deliver_response(self, status: int, headers: tuple[Header, ...]) -> None:
        """Client: the server answered the CONNECT."""
        self._status = status
        self.response_headers = headers
        self._wake()

    def window_opened(self) -> None:
        """The send window may have grown: a waiting sender tries again."""
        if self._writers:
            self._writers.unpark_all()

    def fail(self, error: HboneStreamError) -> None:
        """The stream broke (reset, connection lost): pending and later calls raise `error`."""
        if self._error is None:
            self._error = error
        self._host.detach(self)
        self._wake()
        self._input_arrived()

    def discard(self) -> None:
        """The CONNECT was answered with a non-200 status: the stream ended before carrying
        anything (the core already closed it on the wire)."""
        if not self._closed:
            self._close()

    async def wait_for_response(self) -> int:
        """Client: wait for the server's answer to the CONNECT; returns its status.

        Raises `HboneStreamError` if the stream or connection broke first.
        """
        while self._status is None:
            if self._error is not None:
                raise self._error
            await self._readers.park()
        return self._status
