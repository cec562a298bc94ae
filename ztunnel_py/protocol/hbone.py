"""Sans-IO HBONE core: HTTP/2 CONNECT tunnels, bytes in, events out (reference section 2.3-2.5).

`HboneClient` opens CONNECT streams, `HboneServer` accepts and answers them. Both turn received
bytes into `Event`s (`receive_data`) and queue the bytes to write (`data_to_send`, or
`buffers_to_send` without copying payloads); neither does any I/O. The trio driver lives in
`ztunnel_py.transport.hbone`.

Why DATA frames bypass h2. Stock h2 4.4.1 `repr()`s every received frame for a trace log line,
and hyperframe's repr hex-encodes the whole DATA payload: 78% of decode time at 1 MiB frames
(performance.md 2.3). So this module splits the incoming byte stream into frames itself:

- DATA payloads are handed out as slices of the caller's buffer (no copy), padding is stripped,
  and receive windows are accounted here. WINDOW_UPDATE frames are written here when the
  application acknowledges consumed bytes. h2 only ever sees a zero-length DATA frame carrying
  END_STREAM (so its stream state machine stays right), or a zero-length stand-in for DATA on a
  stream we do not consider open (so h2 decides between RST_STREAM and a connection error).
- Outgoing DATA frames (9-byte header + payload) are written here too, sized up to the peer's
  max frame size, against send windows tracked here; large payloads are queued by reference.
- WINDOW_UPDATE and GOAWAY frames never reach h2. h2 never sends DATA for us, so its outbound
  windows never shrink; WINDOW_UPDATEs fed to it would push them past 2^31-1 after 2 GiB and h2
  would kill the connection with FLOW_CONTROL_ERROR. And h2 refuses every frame once a GOAWAY
  was sent or received, which would make graceful draining impossible.
- Everything else (SETTINGS, HEADERS/CONTINUATION, RST_STREAM, PING, PRIORITY, unknown frames)
  goes to h2 in order, batched.

Settings are ztunnel's (reference 2.5): 4 MiB stream and 16 MiB connection windows, 1 MiB
frames, header lists of 16 KiB (client) / 64 KiB (server), 200 concurrent streams advertised by
the server, push disabled.

Errors. Bad input never raises: it yields `ConnectionTerminated` (with a reason) and a GOAWAY in
`data_to_send()`; later input is ignored. Malformed requests (bad pseudo-headers, oversized
header lists, too many streams) are connection errors, as h2 treats them. The methods that send
raise only the `HboneError` subclasses documented on them, or `ValueError` for invalid
arguments.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

__all__ = [
    "CLIENT_MAX_HEADER_LIST_SIZE",
    "CONNECTION_WINDOW",
    "MAX_FRAME_SIZE",
    "SERVER_MAX_CONCURRENT_STREAMS",
    "SERVER_MAX_HEADER_LIST_SIZE",
    "STREAM_WINDOW",
    "ConnectRequest",
    "ConnectionClosedError",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCodes",
    "Event",
    "GoAwayReceived",
    "HboneClient",
    "HboneError",
    "HboneServer",
    "PingAcknowledged",
    "RequestRejected",
    "Response",
    "StreamClosedError",
    "StreamEnded",
    "StreamLimitError",
    "StreamReset",
    "WindowOpened",
    "format_authority",
    "parse_authority",
]

Bytes = bytes | bytearray | memoryview
Header = tuple[str, str]

# ztunnel's HTTP/2 settings (reference 2.5).
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024
CLIENT_MAX_HEADER_LIST_SIZE = 16 * 1024
SERVER_MAX_HEADER_LIST_SIZE = 64 * 1024
SERVER_MAX_CONCURRENT_STREAMS = 200
DEFAULT_MAX_STREAMS_PER_CONNECTION = 100

# A WINDOW_UPDATE goes out once a quarter of a window was consumed: the sender keeps at least
# three quarters of its window while the update travels, at one small frame per quarter window.
_STREAM_UPDATE_THRESHOLD = STREAM_WINDOW // 4
_CONNECTION_UPDATE_THRESHOLD = CONNECTION_WINDOW // 4

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_RFC_DEFAULT_WINDOW = 65535
_RFC_DEFAULT_FRAME_SIZE = 16384
_MAX_WINDOW = 2**31 - 1
_MAX_STREAM_ID = 2**31 - 1

# Frame types this module looks at (RFC 9113 section 6).
_DATA, _HEADERS, _PUSH_PROMISE, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    0x0,
    0x1,
    0x5,
    0x7,
    0x8,
    0x9,
)
_FLAG_END_STREAM = 0x1
_FLAG_END_HEADERS = 0x4
_FLAG_PADDED = 0x8

# A frame header is a 24-bit length, an 8-bit type, 8-bit flags and a 31-bit stream id; packing
# (length << 8 | type) as one 32-bit word makes it a single struct call.
_FRAME_HEADER = struct.Struct(">IBI")
# DATA payloads at least this large are queued by reference instead of copied.
_ZERO_COPY_MIN = 16 * 1024
_U32 = struct.Struct(">I")
_GOAWAY_FIXED = struct.Struct(">II")

# Parser states.
_S_PREFACE, _S_HEADER, _S_BODY, _S_PADLEN, _S_PAYLOAD, _S_PADDING = range(6)
# What a frame body in _S_BODY is for.
_BODY_H2, _BODY_WINDOW_UPDATE, _BODY_GOAWAY = range(3)

_CONNECTION_SPECIFIC_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


# --- errors -------------------------------------------------------------------------------


class HboneError(Exception):
    """Base of the errors the HBONE core raises when asked to send."""


class ConnectionClosedError(HboneError):
    """The connection is terminated, or draining after a GOAWAY: no new streams."""


class StreamClosedError(HboneError):
    """The stream is unknown, reset, or already closed in the direction asked for."""


class StreamLimitError(HboneError):
    """No stream is available on this connection (concurrency limit or stream ids exhausted)."""


class _ConnectionError(Exception):
    """Internal: a connection error found while parsing; turned into GOAWAY + event."""

    def __init__(self, code: int, reason: str, *, goaway_queued: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.goaway_queued = goaway_queued


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base of everything `receive_data` returns."""


@dataclass(frozen=True, slots=True)
class ConnectRequest(Event):
    """Server: a valid CONNECT arrived; answer it with `HboneServer.respond`."""

    stream_id: int
    authority: str
    headers: tuple[Header, ...]


@dataclass(frozen=True, slots=True)
class RequestRejected(Event):
    """Server: a request was answered by the core itself (bad method or authority)."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Response(Event):
    """Client: the response to a CONNECT. Any status but 200 closes the stream."""

    stream_id: int
    status: int
    headers: tuple[Header, ...]


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Payload bytes for a stream: a slice of the buffer given to `receive_data` (no copy).

    Valid only as long as that buffer is. Acknowledge the bytes with `acknowledge_received_data`
    once consumed, or the peer runs out of window.
    """

    stream_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer half-closed the stream (END_STREAM): no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The stream is gone: reset by the peer (`remote`) or by this core on a stream error."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class WindowOpened(Event):
    """Send window grew: stream 0 means the connection (or every stream), else that stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged(Event):
    """The peer answered one of our PINGs."""

    data: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """Graceful GOAWAY: streams up to `last_stream_id` continue, no new ones may be opened.

    Our streams above `last_stream_id` were refused; each got a `StreamReset(REFUSED_STREAM)`.
    """

    last_stream_id: int
    error_code: int
    debug_data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """Terminal: the connection is unusable; flush `data_to_send()` (it may hold a GOAWAY)."""

    error_code: int
    reason: str
    remote: bool


# --- authority ----------------------------------------------------------------------------


def parse_authority(authority: str) -> tuple[str, int]:
    """Split a CONNECT `:authority` into (host, port); IPv6 hosts come back without brackets.

    Accepts `1.2.3.4:80`, `[fd00::1]:80` and `name.example:80`. Raises `ValueError` saying why
    anything else is refused.
    """
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0 or authority[close + 1 : close + 2] != ":":
            raise ValueError(f"authority {authority!r} is not '[IPv6]:port'")
        host, port_text = authority[1:close], authority[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"authority {authority!r} has an invalid IPv6 address") from None
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            raise ValueError(f"authority {authority!r} has no port")
        if not host:
            raise ValueError(f"authority {authority!r} has no host")
        if ":" in host:
            raise ValueError(f"authority {authority!r}: an IPv6 host must be in brackets")
        if not _valid_host(host):
            raise ValueError(f"authority {authority!r} has an invalid host")
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"authority {authority!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def format_authority(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets, as CONNECT wants it."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _valid_host(host: str) -> bool:
    if len(host) > 253:
        return False
    if host[-1].isdigit():
        # A name whose last label is numeric can only be an IPv4 address.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return all(_HOST_LABEL.match(label) for label in host.removesuffix(".").split("."))


def _validate_headers(headers: Sequence[Header]) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        lname = name.lower()
        if not _TOKEN.match(lname):
            raise ValueError(f"invalid header name {name!r}")
        if lname in _CONNECTION_SPECIFIC_HEADERS:
            raise ValueError(f"header {name!r} is connection-specific and not allowed in HTTP/2")
        if any(c in value for c in "\r\n\0") or value != value.strip(" \t"):
            raise ValueError(f"invalid value for header {name!r}")
        out.append((lname, value))
    return out


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "replace")


# --- output -------------------------------------------------------------------------------


class _Output:
    """Queued output as a list of segments: our own frames are packed into one small buffer,
    large DATA payloads stay references to the caller's buffer (no copy on the hot path)."""

    __slots__ = ("_segments", "_size", "_small")

    def __init__(self) -> None:
        self._small = bytearray()
        self._segments: list[Bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: Bytes) -> None:
        self._small += data
        self._size += len(data)

    def frame_header(self, length: int, ftype: int, flags: int, stream_id: int) -> None:
        self._small += _FRAME_HEADER.pack(length << 8 | ftype, flags, stream_id)
        self._size += 9

    def append_payload(self, view: memoryview) -> None:
        if len(view) < _ZERO_COPY_MIN:
            # Small payloads travel with their header: one TLS record, not two.
            self.append(view)
            return
        if self._small:
            self._segments.append(self._small)
            self._small = bytearray()
        self._segments.append(view)
        self._size += len(view)

    def take(self) -> list[Bytes]:
        if self._small:
            self._segments.append(self._small)
            self._small = bytearray()
        segments = self._segments
        self._segments = []
        self._size = 0
        return segments


# --- the core -----------------------------------------------------------------------------


class _Stream:
    """A stream as long as it is open in at least one direction.

    `sending` stays true on a server stream until it is answered, but DATA may only go out once
    `answered` (a 200 was sent); client streams are answered from the start.
    """

    __slots__ = (
        "answered",
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


class _HboneConnection:
    """What client and server share: framing, flow control, GOAWAY, PING, output."""

    _client_side: bool

    def __init__(self, *, max_header_list_size: int, extra_settings: dict[int, int]) -> None:
        config = h2.config.H2Configuration(
            client_side=self._client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            validate_outbound_headers=True,
        )
        self._h2 = h2.connection.H2Connection(config)
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

        self._streams: dict[int, _Stream] = {}
        self._out = _Output()
        self._events: list[Event] = []
        self._closed = False
        self._goaway_sent = False
        self._goaway_received = False
        self._goaway_last_stream_id = _MAX_STREAM_ID

        # Flow control. Receive windows are the peer's allowance as we advertised it.
        self._conn_recv_window = CONNECTION_WINDOW
        self._conn_recv_unacked = 0
        self._conn_send_window = _RFC_DEFAULT_WINDOW
        self._peer_initial_window = _RFC_DEFAULT_WINDOW
        self._send_frame_size = _RFC_DEFAULT_FRAME_SIZE
        self._peer_settings_received = False

        # Parser.
        self._state = _S_PREFACE if not self._client_side else _S_HEADER
        self._need = len(_PREFACE) if not self._client_side else 9
        self._stash = bytearray()
        self._h2_run: list[bytes] = []
        self._header_block_open = False
        self._frame_length = 0
        self._frame_flags = 0
        self._frame_stream = 0
        self._frame_header = b""
        self._body_kind = _BODY_H2
        self._data_target: _Stream | None = None
        self._data_left = 0
        self._pad_left = 0

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
    def open_streams(self) -> int:
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
        self._pull_h2()
        return self._out.take()

    @property
    def bytes_to_send(self) -> int:
        """How many bytes are queued for `data_to_send`."""
        self._pull_h2()
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
            self._parse(memoryview(data).cast("B"))
            self._flush_h2_run()
        except _ConnectionError as e:
            self._fail(e.code, e.reason, goaway_queued=e.goaway_queued)
        self._events = []
        return events

    def _parse(self, view: memoryview) -> None:
        pos = 0
        end = len(view)
        while pos < end and not self._closed:
            state = self._state
            if state == _S_PAYLOAD:
                take = min(self._data_left, end - pos)
                target = self._data_target
                if target is not None:
                    self._events.append(DataReceived(target.stream_id, view[pos : pos + take]))
                pos += take
                self._data_left -= take
                if self._data_left == 0:
                    self._after_payload()
                continue
            if state == _S_PADDING:
                take = min(self._pad_left, end - pos)
                pos += take
                self._pad_left -= take
                if self._pad_left == 0:
                    self._end_data_frame()
                continue
            # The remaining states need a whole unit (preface, header, pad length, body).
            need = self._need
            if self._stash or end - pos < need:
                take = min(need - len(self._stash), end - pos)
                self._stash += view[pos : pos + take]
                pos += take
                if len(self._stash) < need:
                    return
                unit = memoryview(bytes(self._stash))
                self._stash.clear()
            else:
                unit = view[pos : pos + need]
                pos += need
            if state == _S_HEADER:
                self._on_frame_header(unit)
            elif state == _S_BODY:
                self._on_frame_body(unit)
            elif state == _S_PADLEN:
                self._on_pad_length(unit[0])
            else:
                self._on_preface(unit)

    def _expect(self, state: int, need: int) -> None:
        self._state = state
        self._need = need

    def _on_preface(self, unit: memoryview) -> None:
        if unit != _PREFACE:
            raise _ConnectionError(
                ErrorCodes.PROTOCOL_ERROR, "invalid HTTP/2 client preface (is the peer HBONE?)"
            )
        self._h2_run.append(_PREFACE)
        self._expect(_S_HEADER, 9)

    def _on_frame_header(self, unit: memoryview) -> None:
        word, flags, stream_id = _FRAME_HEADER.unpack(unit)
        length = word >> 8
        ftype = word & 0xFF
        stream_id &= _MAX_STREAM_ID
        if length > MAX_FRAME_SIZE:
            raise _ConnectionError(
                ErrorCodes.FRAME_SIZE_ERROR,
                f"frame of {length} bytes exceeds the maximum frame size {MAX_FRAME_SIZE}",
            )
        self._frame_length = length
        self._frame_flags = flags
        self._frame_stream = stream_id
        if self._header_block_open:
            # Only CONTINUATION may follow an unfinished header block; h2 judges the rest.
            self._header_block_open = not (ftype == _CONTINUATION and flags & _FLAG_END_HEADERS)
            self._start_body(_BODY_H2, unit)
        elif ftype == _DATA:
            self._on_data_header()
        elif ftype == _WINDOW_UPDATE:
            if length != 4:
                raise _ConnectionError(
                    ErrorCodes.FRAME_SIZE_ERROR, f"WINDOW_UPDATE frame of {length} bytes"
                )
            self._start_body(_BODY_WINDOW_UPDATE, unit)
        elif ftype == _GOAWAY:
            if length < 8:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, f"GOAWAY frame of {length}")
            self._start_body(_BODY_GOAWAY, unit)
        else:
            if ftype in (_HEADERS, _PUSH_PROMISE) and not flags & _FLAG_END_HEADERS:
                self._header_block_open = True
            self._start_body(_BODY_H2, unit)

    def _start_body(self, kind: int, header: memoryview) -> None:
        self._body_kind = kind
        self._frame_header = bytes(header)
        if self._frame_length == 0:
            self._on_frame_body(memoryview(b""))
        else:
            self._expect(_S_BODY, self._frame_length)

    def _on_frame_body(self, body: memoryview) -> None:
        self._expect(_S_HEADER, 9)
        kind = self._body_kind
        if kind == _BODY_H2:
            self._h2_run.append(self._frame_header + body)
            return
        self._flush_h2_run()
        if kind == _BODY_WINDOW_UPDATE:
            self._on_window_update(self._frame_stream, _U32.unpack(body)[0] & _MAX_WINDOW)
        else:
            self._on_goaway(body)

    # DATA frames: flow control and delivery happen here, never in h2.

    def _on_data_header(self) -> None:
        self._flush_h2_run()
        stream_id = self._frame_stream
        length = self._frame_length
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA frame on stream 0")
        if length > self._conn_recv_window:
            raise _ConnectionError(
                ErrorCodes.FLOW_CONTROL_ERROR,
                f"peer sent {length} bytes with {self._conn_recv_window} of connection window",
            )
        self._conn_recv_window -= length
        stream = self._streams.get(stream_id)
        if stream is not None and stream.receiving:
            if length > stream.recv_window:
                self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
                stream = None
            else:
                stream.recv_window -= length
        else:
            # Not a stream we receive on: let h2 decide (RST_STREAM or connection error) from a
            # zero-length stand-in that costs it no flow control.
            stream = None
            self._feed_h2(self._data_frame_header(self._frame_flags & _FLAG_END_STREAM))
        if stream is None:
            # The bytes still count against the connection window: return them at once.
            self._acknowledge_connection(length)
        self._data_target = stream
        if self._frame_flags & _FLAG_PADDED:
            if length == 0:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "padded DATA frame is empty")
            self._expect(_S_PADLEN, 1)
        else:
            self._data_left = length
            self._pad_left = 0
            self._state = _S_PAYLOAD
            if length == 0:
                self._after_payload()

    def _on_pad_length(self, pad: int) -> None:
        if pad >= self._frame_length:
            raise _ConnectionError(
                ErrorCodes.PROTOCOL_ERROR,
                f"DATA padding of {pad} bytes does not fit a {self._frame_length}-byte frame",
            )
        self._data_left = self._frame_length - 1 - pad
        self._pad_left = pad
        # Padding is flow-controlled but never reaches the application: credit it now.
        if self._data_target is not None:
            self._acknowledge_stream(self._data_target, pad + 1)
            self._acknowledge_connection(pad + 1)
        self._state = _S_PAYLOAD
        if self._data_left == 0:
            self._after_payload()

    def _after_payload(self) -> None:
        if self._pad_left:
            self._state = _S_PADDING
        else:
            self._end_data_frame()

    def _end_data_frame(self) -> None:
        self._expect(_S_HEADER, 9)
        target = self._data_target
        self._data_target = None
        if target is not None and self._frame_flags & _FLAG_END_STREAM:
            self._feed_h2(self._data_frame_header(_FLAG_END_STREAM))

    def _data_frame_header(self, flags: int) -> bytes:
        return _FRAME_HEADER.pack(_DATA, flags, self._frame_stream)

    # Frames handled here instead of h2.

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._conn_send_window += increment
            if self._conn_send_window > _MAX_WINDOW:
                raise _ConnectionError(
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

    def _on_goaway(self, body: memoryview) -> None:
        if self._frame_stream != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY frame on a stream")
        last, code = _GOAWAY_FIXED.unpack_from(body)
        last &= _MAX_STREAM_ID
        debug = bytes(body[8:])
        self._goaway_received = True
        if code != ErrorCodes.NO_ERROR:
            self._closed = True
            self._streams.clear()
            reason = f"peer sent GOAWAY {_error_name(code)}"
            if debug:
                reason += f": {_decode(debug)}"
            self._events.append(ConnectionTerminated(code, reason, remote=True))
            return
        local_parity = 1 if self._client_side else 0
        for stream_id in sorted(self._streams):
            if stream_id % 2 == local_parity and stream_id > last:
                del self._streams[stream_id]
                self._events.append(StreamReset(stream_id, ErrorCodes.REFUSED_STREAM, remote=True))
        self._events.append(GoAwayReceived(last, code, debug))

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
            raise _ConnectionError(_error_code(e), str(e), goaway_queued=True) from None
        self._pull_h2()
        for event in h2_events:
            self._on_h2_event(event)

    def _pull_h2(self) -> None:
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
            if self._streams.pop(event.stream_id, None) is not None:
                self._events.append(
                    StreamReset(event.stream_id, event.error_code, remote=event.remote_reset)
                )
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._on_remote_settings(event)
        elif isinstance(event, h2.events.PingAckReceived):
            self._events.append(PingAcknowledged(bytes(event.ping_data)))
        else:
            self._on_h2_message(event)

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
                    raise _ConnectionError(
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
        self._closed = True
        self._streams.clear()
        self._events.append(ConnectionTerminated(code, reason, remote=False))

    def _goaway(self, code: int, debug: bytes) -> None:
        last = self._h2.highest_inbound_stream_id
        self._out.frame_header(8 + len(debug), _GOAWAY, 0, 0)
        self._out.append(_GOAWAY_FIXED.pack(last, code))
        self._out.append(debug)
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

    def _acknowledge_stream(self, stream: _Stream, size: int) -> None:
        if not stream.receiving:
            return
        stream.recv_unacked += size
        if stream.recv_unacked >= _STREAM_UPDATE_THRESHOLD:
            stream.recv_window += stream.recv_unacked
            self._window_update(stream.stream_id, stream.recv_unacked)
            stream.recv_unacked = 0

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._pull_h2()
        self._out.frame_header(4, _WINDOW_UPDATE, 0, stream_id)
        self._out.append(_U32.pack(increment))

    # -- sending -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError("the HBONE connection is closed")

    def _sending_stream(self, stream_id: int) -> _Stream:
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
        self._pull_h2()
        out = self._out
        frame_size = self._send_frame_size
        offset = 0
        while offset < size:
            chunk = min(frame_size, size - offset)
            out.frame_header(chunk, _DATA, 0, stream_id)
            out.append_payload(view[offset : offset + chunk])
            offset += chunk
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
        self._closed = True
        self._streams.clear()


def _error_code(exc: h2.exceptions.ProtocolError) -> int:
    code = getattr(exc, "error_code", None)
    return int(code) if code is not None else int(ErrorCodes.PROTOCOL_ERROR)


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error 0x{code:x}"


def _split_headers(raw: Sequence[tuple[bytes, bytes]]) -> tuple[dict[str, str], tuple[Header, ...]]:
    pseudo: dict[str, str] = {}
    regular: list[Header] = []
    for name, value in raw:
        if name.startswith(b":"):
            pseudo[_decode(name)] = _decode(value)
        else:
            regular.append((_decode(name), _decode(value)))
    return pseudo, tuple(regular)


class HboneClient(_HboneConnection):
    """Client side: opens CONNECT streams (the outbound agent, the waypoint's upstream side)."""

    _client_side = True

    def __init__(self, *, max_streams: int = DEFAULT_MAX_STREAMS_PER_CONNECTION) -> None:
        super().__init__(
            max_header_list_size=CLIENT_MAX_HEADER_LIST_SIZE,
            extra_settings={h2.settings.SettingCodes.ENABLE_PUSH: 0},
        )
        self._max_streams = max_streams

    @property
    def available_streams(self) -> int:
        """How many more streams may be opened now: min(our limit, peer's
        MAX_CONCURRENT_STREAMS) minus open ones; 0 when closed, draining or out of stream ids."""
        if self._closed or self.is_draining:
            return 0
        if self._h2.highest_outbound_stream_id + 2 > _MAX_STREAM_ID:
            return 0
        limit = min(self._max_streams, self.peer_max_concurrent_streams)
        open_now: int = self._h2.open_outbound_streams
        return max(0, limit - open_now)

    def start_connect(self, authority: str, extra_headers: Sequence[Header] = ()) -> int:
        """Send `CONNECT` with `:authority` (no :scheme/:path) and `extra_headers`.

        Returns the new stream id; the answer comes as a `Response` event. Raises `ValueError`
        for a malformed authority or header, `ConnectionClosedError` when closed or draining,
        `StreamLimitError` when no stream is available.
        """
        self._check_open()
        if self.is_draining:
            raise ConnectionClosedError("the HBONE connection is draining after GOAWAY")
        parse_authority(authority)
        headers = [(":method", "CONNECT"), (":authority", authority)]
        headers += _validate_headers(extra_headers)
        if self.available_streams <= 0:
            raise StreamLimitError("no stream available on this HBONE connection")
        stream_id: int = self._h2.get_next_available_stream_id()
        self._pull_h2()
        self._h2.send_headers(stream_id, headers)
        self._pull_h2()
        self._streams[stream_id] = _Stream(
            stream_id, self._peer_initial_window, receiving=False, answered=True
        )
        return stream_id

    def _on_h2_message(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.ResponseReceived):
            return
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        pseudo, headers = _split_headers(event.headers)
        status_text = pseudo.get(":status", "")
        if not status_text.isdigit() or len(status_text) != 3:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        status = int(status_text)
        self._events.append(Response(stream_id, status, headers))
        if status == 200:
            stream.receiving = True
        else:
            # The tunnel was refused: free the stream on our side too.
            del self._streams[stream_id]
            self._h2_reset(stream_id, ErrorCodes.CANCEL)


class HboneServer(_HboneConnection):
    """Server side: validates CONNECT requests and answers them (the inbound HBONE listener)."""

    _client_side = False

    def __init__(self, *, max_concurrent_streams: int = SERVER_MAX_CONCURRENT_STREAMS) -> None:
        super().__init__(
            max_header_list_size=SERVER_MAX_HEADER_LIST_SIZE,
            extra_settings={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams
            },
        )

    def respond(self, stream_id: int, status: int, headers: Sequence[Header] = ()) -> None:
        """Answer a `ConnectRequest`. 200 opens the tunnel; any other status ends the stream
        (END_STREAM, no body) and tells the client to stop sending (RST_STREAM NO_ERROR).

        Raises `ValueError` for a status outside 200-599 or a bad header, `StreamClosedError`
        if the stream is gone or was answered already, `ConnectionClosedError`.
        """
        self._check_open()
        if not 200 <= status <= 599:
            raise ValueError(f"status {status} is not a final HTTP status")
        fields = [(":status", str(status)), *_validate_headers(headers)]
        stream = self._streams.get(stream_id)
        if stream is None or stream.answered or not self._h2_stream_can_respond(stream_id):
            raise StreamClosedError(f"stream {stream_id} cannot be answered")
        self._pull_h2()
        if status == 200:
            self._h2.send_headers(stream_id, fields)
            self._pull_h2()
            stream.answered = True
            return
        del self._streams[stream_id]
        self._reject(stream_id, fields, request_ended=not stream.receiving)

    def _h2_stream_can_respond(self, stream_id: int) -> bool:
        h2_stream = self._h2.streams.get(stream_id)
        return h2_stream is not None and not h2_stream.closed

    def _reject(
        self, stream_id: int, fields: list[tuple[str, str]], *, request_ended: bool
    ) -> None:
        self._h2.send_headers(stream_id, fields, end_stream=True)
        self._pull_h2()
        if not request_ended:
            self._h2_reset(stream_id, ErrorCodes.NO_ERROR)

    def _on_h2_message(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.RequestReceived):
            return
        stream_id = event.stream_id
        ended = event.stream_ended is not None
        if self._goaway_sent and stream_id > self._goaway_last_stream_id:
            self._h2_reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        pseudo, headers = _split_headers(event.headers)
        method = pseudo.get(":method", "")
        authority = pseudo.get(":authority", "")
        reason = ""
        if method != "CONNECT":
            reason = f"method {method!r} is not CONNECT"
        else:
            try:
                parse_authority(authority)
            except ValueError as e:
                reason = str(e)
        if reason:
            self._reject(stream_id, [(":status", "400")], request_ended=ended)
            self._events.append(RequestRejected(stream_id, 400, reason))
            return
        self._streams[stream_id] = _Stream(
            stream_id, self._peer_initial_window, receiving=True, answered=False
        )
        self._events.append(ConnectRequest(stream_id, authority, headers))
