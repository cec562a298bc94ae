"""The HBONE connection core shared by client and server: streams, flow control, GOAWAY, PING.

h2 runs the HTTP/2 state machine for HEADERS, SETTINGS, RST_STREAM and PING; `framing` keeps
DATA, WINDOW_UPDATE and GOAWAY away from it (that module says why), so flow control lives here:
receive windows are the peer's allowance as we advertised it, and a WINDOW_UPDATE goes out once a
quarter of a window was consumed (the sender keeps at least three quarters of its window while
the update travels, at one small frame per quarter window).

Errors. Bad input never raises: it yields `ConnectionTerminated` (with a reason) and a GOAWAY in
`data_to_send()`; later input is ignored. The methods that send raise only the `HboneCoreError`
subclasses documented on them, or `ValueError` for invalid arguments.
"""

from __future__ import annotations

import contextlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ztunnel_py.protocol.hbone.authority import decode_field
from ztunnel_py.protocol.hbone.errors import (
    ConnectionClosedError,
    ProtocolViolation,
    StreamClosedError,
)
from ztunnel_py.protocol.hbone.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PingAcknowledged,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from ztunnel_py.protocol.hbone.framing import (
    FLAG_END_STREAM,
    MAX_STREAM_ID,
    Bytes,
    FrameSplitter,
    OutputQueue,
    empty_data_frame,
)
from ztunnel_py.protocol.hbone.settings import (
    CONNECTION_WINDOW,
    MAX_FRAME_SIZE,
    STREAM_WINDOW,
)

__all__ = ["HboneConnectionCore", "StreamState", "error_name"]

_STREAM_UPDATE_THRESHOLD = STREAM_WINDOW // 4
_CONNECTION_UPDATE_THRESHOLD = CONNECTION_WINDOW // 4

_RFC_DEFAULT_WINDOW = 65535
_RFC_DEFAULT_FRAME_SIZE = 16384
_MAX_WINDOW = 2**31 - 1


def error_name(code: int) -> str:
    """An HTTP/2 error code by name (`CANCEL`), or in hex if it has none."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


class StreamState:
    """A stream as long as it is open in at least one direction.

    `sending` stays true on a server stream until it is answered, but DATA may only go out once
    `answered` (a 200 was sent); client streams are answered from the start. `opened_at` is
    when a server stream's request arrived (by the server's clock).
    """

    __slots__ = (
        "answered",
        "opened_at",
        "receiving",
        "recv_unacked",
        "recv_window",
        "send_window",
        "sending",
        "stream_id",
    )

    def __init__(
        self, stream_id: int, send_window: int, *, receiving: bool, answered: bool
    ) -> None:
        self.stream_id = stream_id
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        self.receiving = receiving
        self.sending = True
        self.answered = answered
        self.opened_at = 0.0


class BoundedH2Connection(h2.connection.H2Connection):
    """h2's connection, remembering how its last 1,024 closed streams ended instead of 65,536.

    h2 keeps that record so a frame still in flight on a stream it closed gets the right
    answer; a frame more than a thousand streams late is answered as for any unknown stream.
    A long-lived connection that carries a stream per proxied connection (a pooled HBONE
    connection between two agents does) would otherwise hold ~6.5 MB of records, growing for
    hours at a few connections a second: a soak run read it as a memory leak.
    """

    MAX_CLOSED_STREAMS = 1024


class HboneConnectionCore:
    """What client and server share. Subclasses set `_client_side` and handle requests or
    responses in `_on_h2_message`."""

    _client_side: bool

    def __init__(
        self,
        *,
        max_header_list_size: int,
        extra_settings: dict[int, int],
        validate_inbound_headers: bool = True,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=self._client_side,
            header_encoding=None,
            validate_inbound_headers=validate_inbound_headers,
            normalize_inbound_headers=True,
            validate_outbound_headers=True,
        )
        self._h2 = BoundedH2Connection(config)
        settings: dict[int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            **extra_settings,
        }
        # Initial values count as in force at once (no ACK wait): the peer can only send less
        # than they allow until it has seen them, never more.
        self._h2.local_settings = h2.settings.Settings(
            client=self._client_side,
            initial_values=settings,  # type: ignore[arg-type]
        )
        self._h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self._h2.decoder.max_header_list_size = max_header_list_size

        self._streams: dict[int, StreamState] = {}
        self._out = OutputQueue()
        self._events: list[Event] = []
        self._closed = False
        self._goaway_sent = False
        self._goaway_received = False
        self._goaway_last_stream_id = MAX_STREAM_ID

        # Flow control. Receive windows are the peer's allowance as we advertised it.
        self._conn_recv_window = CONNECTION_WINDOW
        self._conn_recv_unacked = 0
        self._conn_send_window = _RFC_DEFAULT_WINDOW
        self._peer_initial_window = _RFC_DEFAULT_WINDOW
        self._send_frame_size = _RFC_DEFAULT_FRAME_SIZE
        self._peer_settings_received = False

        self._frames = FrameSplitter(
            self,
            expect_preface=not self._client_side,
            max_header_list_size=max_header_list_size,
        )
        # Consecutive frames for h2, fed to it in one call.
        self._h2_run: list[bytes] = []

        self._h2.initiate_connection()
        self._pull_h2()
        # The connection window starts at 65535 whatever SETTINGS say: raise it explicitly.
        self._window_update(0, CONNECTION_WINDOW - _RFC_DEFAULT_WINDOW)

    # -- state ---------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection is terminated (error, error GOAWAY, or `close`)."""
        return self._closed

    @property
    def is_draining(self) -> bool:
        """True once a GOAWAY was sent or received: existing streams only."""
        return self._goaway_sent or self._goaway_received

    @property
    def stream_count(self) -> int:
        """Streams still open in at least one direction, as this core tracks them."""
        return len(self._streams)

    @property
    def peer_settings_received(self) -> bool:
        """True once the peer's first SETTINGS frame arrived (its limits are known)."""
        return self._peer_settings_received

    @property
    def peer_max_concurrent_streams(self) -> int:
        value: int = self._h2.remote_settings.max_concurrent_streams
        return value

    def send_window(self, stream_id: int) -> int:
        """How many bytes `send_data` would accept now on this stream (0 if it cannot send)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.sending or not stream.answered or self._closed:
            return 0
        return max(0, min(self._conn_send_window, stream.send_window))

    def data_to_send(self) -> bytes:
        """All queued output as one byte string (copies; see `buffers_to_send`)."""
        return b"".join(self.buffers_to_send())

    def buffers_to_send(self) -> list[Bytes]:
        """Queued output as buffers to write in order, without copying DATA payloads.

        Payloads of 16 KiB or more are views of the buffers given to `send_data`: write (or
        encrypt) them before those buffers change.
        """
        return self._out.take()

    @property
    def bytes_to_send(self) -> int:
        """How many bytes are queued for `data_to_send`."""
        return len(self._out)

    # -- receiving -----------------------------------------------------------------------

    def receive_data(self, data: Bytes) -> list[Event]:
        """Process bytes from the transport; returns the events they caused, in order.

        `DataReceived.data` slices reference `data`: keep `data` unchanged while they are used.
        Never raises on bad input: a protocol violation gives `ConnectionTerminated` and a
        GOAWAY to send; input after termination is ignored.
        """
        if self._closed:
            return []
        events: list[Event] = []
        self._events = events
        try:
            self._frames.feed(memoryview(data).cast("B"))
            self._flush_h2_run()
        except ProtocolViolation as e:
            self._fail(e.code, e.reason, goaway_queued=e.goaway_queued)
        self._events = []
        return events

    # The frame sink (see `framing.FrameSink`).

    def on_h2_frame(self, frame: bytes) -> None:
        self._h2_run.append(frame)

    def on_data_header(self, stream_id: int, length: int, flags: int) -> bool:
        """Flow control and delivery of DATA happen here, never in h2."""
        self._flush_h2_run()
        if length > self._conn_recv_window:
            raise ProtocolViolation(
                ErrorCodes.FLOW_CONTROL_ERROR,
                f"peer sent {length} bytes with {self._conn_recv_window} of connection window",
            )
        self._conn_recv_window -= length
        stream = self._streams.get(stream_id)
        if stream is not None and stream.receiving:
            if length <= stream.recv_window:
                stream.recv_window -= length
                return True
            self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
        else:
            # Not a stream we receive on: let h2 decide (RST_STREAM or connection error) from a
            # zero-length stand-in that costs it no flow control.
            self._feed_h2(empty_data_frame(stream_id, flags & FLAG_END_STREAM))
        # The bytes still count against the connection window: return them at once.
        self._acknowledge_connection(length)
        return False

    def on_data_payload(self, stream_id: int, data: memoryview) -> None:
        self._events.append(DataReceived(stream_id, data))

    def on_data_padding(self, stream_id: int, size: int) -> None:
        # Padding is flow-controlled but never reaches the application: credit it now.
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._acknowledge_stream(stream, size)
        self._acknowledge_connection(size)

    def on_data_end_stream(self, stream_id: int) -> None:
        self._feed_h2(empty_data_frame(stream_id, FLAG_END_STREAM))

    def on_window_update(self, stream_id: int, increment: int) -> None:
        self._flush_h2_run()
        if stream_id == 0:
            if increment == 0:
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._conn_send_window += increment
            if self._conn_send_window > _MAX_WINDOW:
                raise ProtocolViolation(
                    ErrorCodes.FLOW_CONTROL_ERROR, "connection send window exceeds 2^31-1"
                )
            self._events.append(WindowOpened(0))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # Closed streams may still get updates that were in flight.
        if increment == 0:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > _MAX_WINDOW:
            self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        self._events.append(WindowOpened(stream_id))

    def on_goaway(self, stream_id: int, last_stream_id: int, code: int, debug: bytes) -> None:
        self._flush_h2_run()
        if stream_id != 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "GOAWAY frame on a stream")
        self._goaway_received = True
        if code != ErrorCodes.NO_ERROR:
            self._end()
            reason = f"peer sent GOAWAY {error_name(code)}"
            if debug:
                reason += f": {decode_field(debug)}"
            self._events.append(ConnectionTerminated(code, reason, remote=True))
            return
        local_parity = 1 if self._client_side else 0
        for sid in sorted(self._streams):
            if sid % 2 == local_parity and sid > last_stream_id:
                del self._streams[sid]
                self._events.append(StreamReset(sid, ErrorCodes.REFUSED_STREAM, remote=True))
        self._events.append(GoAwayReceived(last_stream_id, code, debug))

    # h2 plumbing.

    def _feed_h2(self, frame: bytes) -> None:
        self._h2_run.append(frame)
        self._flush_h2_run()

    def _flush_h2_run(self) -> None:
        if not self._h2_run:
            return
        data = b"".join(self._h2_run)
        self._h2_run.clear()
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._pull_h2()
            raise ProtocolViolation(_error_code(e), str(e), goaway_queued=True) from None
        self._pull_h2()
        for event in h2_events:
            self._on_h2_event(event)

    def _pull_h2(self) -> None:
        # Called right after every call into h2 that may queue output, so `_out` always holds
        # everything queued, in order: the paths that queue DATA or hand output out (once or
        # twice per message) need no pull of their own, which would copy h2's empty buffer.
        data = self._h2.data_to_send()
        if data:
            self._out.append(data)

    def _on_h2_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.receiving = False
                if not stream.sending:
                    del self._streams[event.stream_id]
                self._events.append(StreamEnded(event.stream_id))
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                self._on_stream_reset(stream, event.error_code, event.remote_reset)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._on_remote_settings(event)
        elif isinstance(event, h2.events.PingAckReceived):
            self._events.append(PingAcknowledged(bytes(event.ping_data)))
        else:
            self._on_h2_message(event)

    def _on_stream_reset(self, stream: StreamState, error_code: int, remote: bool) -> None:
        """A stream this core tracked was reset (it is already forgotten)."""
        self._events.append(StreamReset(stream.stream_id, error_code, remote=remote))

    def _on_h2_message(self, event: h2.events.Event) -> None:
        """Role-specific h2 events (requests, responses); others are of no interest."""

    def _on_remote_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._peer_settings_received = True
        codes = h2.settings.SettingCodes
        window = event.changed_settings.get(codes.INITIAL_WINDOW_SIZE)
        if window is not None:
            delta = window.new_value - self._peer_initial_window
            self._peer_initial_window = window.new_value
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > _MAX_WINDOW:
                    raise ProtocolViolation(
                        ErrorCodes.FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE pushes a stream window past 2^31-1",
                    )
            if delta > 0:
                self._events.append(WindowOpened(0))
        frame_size = event.changed_settings.get(codes.MAX_FRAME_SIZE)
        if frame_size is not None:
            self._send_frame_size = frame_size.new_value

    # Errors.

    def _stream_error(self, stream_id: int, code: int) -> None:
        self._streams.pop(stream_id, None)
        self._h2_reset(stream_id, code)
        self._events.append(StreamReset(stream_id, code, remote=False))

    def _h2_reset(self, stream_id: int, code: int) -> None:
        # Already closed in h2 (e.g. a reset crossing ours): nothing left to reset.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, code)
        self._pull_h2()

    def _fail(self, code: int, reason: str, *, goaway_queued: bool = False) -> None:
        if self._closed:
            return
        if not goaway_queued:
            self._goaway(code, reason.encode("utf-8", "replace")[:256])
        self._end()
        self._events.append(ConnectionTerminated(code, reason, remote=False))

    def _end(self) -> None:
        """Terminated: no stream survives, later input is ignored."""
        self._closed = True
        self._streams.clear()
        self._frames.halt()

    def _goaway(self, code: int, debug: bytes) -> None:
        last = self._h2.highest_inbound_stream_id
        self._out.goaway(last, code, debug)
        self._goaway_sent = True
        self._goaway_last_stream_id = min(self._goaway_last_stream_id, last)

    # -- flow control --------------------------------------------------------------------

    def acknowledge_received_data(self, stream_id: int, size: int) -> None:
        """The application consumed `size` bytes of `DataReceived` on this stream.

        WINDOW_UPDATE frames are queued once a quarter of a window is consumed. Acknowledging
        for a closed stream still returns the bytes to the connection window.
        """
        if self._closed or size <= 0:
            return
        self._acknowledge_connection(size)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._acknowledge_stream(stream, size)

    def _acknowledge_connection(self, size: int) -> None:
        self._conn_recv_unacked += size
        if self._conn_recv_unacked >= _CONNECTION_UPDATE_THRESHOLD:
            self._conn_recv_window += self._conn_recv_unacked
            self._window_update(0, self._conn_recv_unacked)
            self._conn_recv_unacked = 0

    def _acknowledge_stream(self, stream: StreamState, size: int) -> None:
        if not stream.receiving:
            return
        stream.recv_unacked += size
        if stream.recv_unacked >= _STREAM_UPDATE_THRESHOLD:
            stream.recv_window += stream.recv_unacked
            self._window_update(stream.stream_id, stream.recv_unacked)
            stream.recv_unacked = 0

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._pull_h2()
        self._out.window_update(stream_id, increment)

    # -- sending -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError("the HBONE connection is closed")

    def _sending_stream(self, stream_id: int) -> StreamState:
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None or not stream.sending or not stream.answered:
            raise StreamClosedError(f"stream {stream_id} is not open for sending")
        return stream

    def send_data(self, stream_id: int, data: Bytes) -> int:
        """Queue as much of `data` as the send windows allow; returns how many bytes that was.

        0 means the window is closed: wait for `WindowOpened`. Frames are cut at the peer's max
        frame size. Large payloads are queued by reference (see `buffers_to_send`). Raises
        `StreamClosedError` or `ConnectionClosedError`.
        """
        stream = self._sending_stream(stream_id)
        view = memoryview(data).cast("B")
        size = min(len(view), self._conn_send_window, stream.send_window)
        if size <= 0:
            return 0
        self._out.data_frames(stream_id, view[:size], self._send_frame_size)
        self._conn_send_window -= size
        stream.send_window -= size
        return size

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side of the stream (END_STREAM).

        Raises `StreamClosedError` or `ConnectionClosedError`.
        """
        stream = self._sending_stream(stream_id)
        self._pull_h2()
        self._h2.end_stream(stream_id)
        self._pull_h2()
        stream.sending = False
        if not stream.receiving:
            del self._streams[stream_id]

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream with RST_STREAM. A no-op on a stream that is already gone."""
        if self._closed or self._streams.pop(stream_id, None) is None:
            return
        self._pull_h2()
        self._h2_reset(stream_id, error_code)

    def ping(self, data: bytes) -> None:
        """Send a PING with 8 bytes of opaque data; the answer is a `PingAcknowledged`."""
        self._check_open()
        self._pull_h2()
        self._h2.ping(data)
        self._pull_h2()

    def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """Send GOAWAY. With NO_ERROR the connection drains (open streams continue, no new
        ones); with an error code it is terminated at once. Idempotent once terminated."""
        if self._closed:
            return
        self._pull_h2()
        if error_code == ErrorCodes.NO_ERROR:
            if not self._goaway_sent:
                self._goaway(error_code, reason.encode("utf-8", "replace")[:256])
            return
        self._goaway(error_code, reason.encode("utf-8", "replace")[:256])
        self._end()


def _error_code(exc: h2.exceptions.ProtocolError) -> int:
    code = getattr(exc, "error_code", None)
    return int(code) if code is not None else int(ErrorCodes.PROTOCOL_ERROR)
