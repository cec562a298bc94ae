"""Sans-IO HTTP/2 codecs (server and client) over h2, speaking the engine's events.

h2 does framing, HPACK, stream states and flow-control bookkeeping; this module maps its events
to the engine's (pseudo-headers into `RequestHead`/`ResponseHead`, trailers into
`MessageEnded`) and applies the proxy's limits:

- at most `MAX_HEADERS` fields and `MAX_HEADER_BYTES` (RFC 9113 accounting) per request head,
  else the server codec reports `BadRequest(431)` for that stream only; HPACK refuses header
  lists beyond twice that before decoding them whole;
- SETTINGS as Envoy's HTTP/2 defaults for a proxy: 100 concurrent streams per connection,
  1 MiB stream windows, 16 KiB frames;
- received DATA is acknowledged (WINDOW_UPDATE) only when the driver says it was consumed
  (`acknowledge`), so a slow upstream slows the sender instead of filling memory;
- sending respects the peer's windows: `send_data` sends what fits and returns how much it took;
  a `WindowOpened` event tells the driver when to continue.

A protocol error h2 detects ends the connection (h2 has queued the GOAWAY) and is reported as
`ConnectionEnded(error=True)`.

GOAWAY frames bypass h2, both ways: h2 treats a GOAWAY sent or received as the end of the
connection and refuses every later frame, which would cut the streams a graceful GOAWAY lets
finish (a server restarting, a client done opening streams). Received, a GOAWAY with NO_ERROR
makes the connection `draining`: no new streams, and on the client side the streams the peer
says it never processed end with `StreamReset(REFUSED_STREAM)` so they can be retried
elsewhere; any other code ends the connection. Sent, `close()` with NO_ERROR writes the GOAWAY
here and refuses streams the peer opens after it.
"""

from __future__ import annotations

import contextlib
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ztunnel_py.http.events import (
    BadRequest,
    ConnectionEnded,
    DataReceived,
    Event,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    WindowOpened,
)
from ztunnel_py.http.h1 import MAX_HEADER_BYTES, MAX_HEADERS, HttpCodecError
from ztunnel_py.http.message import (
    Headers,
    RequestHead,
    ResponseHead,
    drop_body_framing,
    strip_hop_by_hop,
)
from ztunnel_py.protocol.hbone.connection import BoundedH2Connection

__all__ = ["PREFACE", "H2Client", "H2Server"]


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
_DEFAULT_WINDOW = 65535
_FRAME_HEADER = 9
_GOAWAY = 0x7
_GOAWAY_FIXED = struct.Struct(">II")
# a longer GOAWAY (debug data beyond the default frame size) goes to h2, which refuses it
_MAX_GOAWAY = 16384
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM

_Raw = list[tuple[bytes, bytes]]


def _decode(raw: _Raw) -> tuple[dict[str, str], list[tuple[str, str]]]:
    pseudo: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    for n, v in raw:
        name = n.decode("latin-1")
        if name.startswith(":"):
            pseudo[name] = v.decode("latin-1")
        else:
            fields.append((name, v.decode("latin-1")))
    return pseudo, fields


def _encode(headers: Headers) -> _Raw:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


class _Codec:
    def __init__(self, client_side: bool) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            validate_outbound_headers=True,
        )
        self._conn = BoundedH2Connection(config=config)
        self._conn.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 2 * MAX_HEADER_BYTES,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # h2 applies MAX_HEADER_LIST_SIZE to its HPACK decoder only once the peer acknowledges
        # the setting, and these settings are installed as already in force: apply it now, or
        # header lists between HPACK's default 64 KiB and what we advertise would be connection
        # errors instead of a 431 for the one stream
        self._conn.decoder.max_header_list_size = 2 * MAX_HEADER_BYTES
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._closed = False
        # streams whose head was reported with end_stream=True (no StreamEnded to report)
        self._ended: set[int] = set()
        # the GOAWAY splitter: preface bytes still to pass, the frame header being read, bytes
        # of the current frame still to pass to h2, the GOAWAY body being read
        self._preface_left = 0 if client_side else len(PREFACE)
        self._header = bytearray()
        self._passing = 0
        self._goaway_body: bytearray | None = None
        self._goaway_length = 0
        self._goaway_out = b""
        self.goaway_received = False
        # the last stream the peer may open, once we sent a graceful GOAWAY
        self._goaway_last: int | None = None

    def data_to_send(self) -> bytes:
        out = self._conn.data_to_send()
        if self._goaway_out:
            out, self._goaway_out = out + self._goaway_out, b""
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def draining(self) -> bool:
        """A GOAWAY was sent or received: the open streams may finish, no new ones start."""
        return self.goaway_received or self._goaway_last is not None

    def receive_data(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        if not data:
            self._closed = True
            return [ConnectionEnded()]
        events: list[Event] = []
        for part in self._split(data):
            if isinstance(part, tuple):
                self._goaway_received(*part, events)
            else:
                try:
                    h2_events = self._conn.receive_data(part)
                except h2.exceptions.ProtocolError as e:
                    self._closed = True
                    events.append(ConnectionEnded(f"HTTP/2 protocol error: {e}", error=True))
                else:
                    for ev in h2_events:
                        self._translate(ev, events)
            if self._closed:
                break
        return events

    def _split(self, data: bytes) -> list[bytes | tuple[int, int]]:
        """`data` as byte runs for h2 and (last stream id, error code) of each GOAWAY, in
        order."""
        out: list[bytes | tuple[int, int]] = []
        run = bytearray()
        view = memoryview(data)
        while view:
            if self._preface_left or self._passing:
                n = min(self._preface_left or self._passing, len(view))
                run += view[:n]
                view = view[n:]
                if self._preface_left:
                    self._preface_left -= n
                else:
                    self._passing -= n
                continue
            body = self._goaway_body
            if body is not None:
                n = self._goaway_length - len(body)
                body += view[:n]
                view = view[n:]
                if len(body) == self._goaway_length:
                    if run:
                        out.append(bytes(run))
                        run = bytearray()
                    last, code = _GOAWAY_FIXED.unpack_from(body)
                    out.append((last & 0x7FFFFFFF, code))
                    self._goaway_body = None
                continue
            header = self._header
            n = _FRAME_HEADER - len(header)
            header += view[:n]
            view = view[n:]
            if len(header) < _FRAME_HEADER:
                break
            length = int.from_bytes(header[:3], "big")
            stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if header[3] == _GOAWAY and stream_id == 0 and 8 <= length <= _MAX_GOAWAY:
                self._goaway_body = bytearray()
                self._goaway_length = length
            else:
                run += header
                self._passing = length
            self._header = bytearray()
        if run:
            out.append(bytes(run))
        return out

    def _goaway_received(self, last: int, code: int, events: list[Event]) -> None:
        name = _code_name(code)
        if code != h2.errors.ErrorCodes.NO_ERROR:
            self._closed = True
            events.append(ConnectionEnded(f"GOAWAY {name}", error=True))
            return
        self.goaway_received = True
        conn = self._conn
        mine = 1 if conn.config.client_side else 0
        for sid in sorted(conn.streams):
            if sid > last and sid % 2 == mine and not conn.streams[sid].closed:
                # the peer never processed it: safe to retry elsewhere
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                self._ended.discard(sid)
                events.append(StreamReset(sid, _REFUSED_STREAM, remote=True))

    def _translate(self, ev: h2.events.Event, events: list[Event]) -> None:
        if isinstance(ev, h2.events.DataReceived):
            assert ev.stream_id is not None
            events.append(
                DataReceived(ev.stream_id, ev.data or b"", ev.flow_controlled_length or 0)
            )
        elif isinstance(ev, h2.events.TrailersReceived):
            assert ev.stream_id is not None
            _pseudo, fields = _decode(list(ev.headers or []))
            self._ended.add(ev.stream_id)
            events.append(MessageEnded(ev.stream_id, Headers.trusted(fields)))
        elif isinstance(ev, h2.events.StreamEnded):
            assert ev.stream_id is not None
            if ev.stream_id in self._ended:
                self._ended.discard(ev.stream_id)
            else:
                events.append(MessageEnded(ev.stream_id))
        elif isinstance(ev, h2.events.StreamReset):
            assert ev.stream_id is not None
            self._ended.discard(ev.stream_id)
            events.append(
                StreamReset(ev.stream_id, int(ev.error_code or 0), remote=bool(ev.remote_reset))
            )
        elif isinstance(ev, h2.events.WindowUpdated):
            events.append(WindowOpened(ev.stream_id or 0))
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            # a new INITIAL_WINDOW_SIZE may open every stream's window
            events.append(WindowOpened(0))
        else:
            self._translate_head(ev, events)

    def _translate_head(self, ev: h2.events.Event, events: list[Event]) -> None:
        raise NotImplementedError

    # sending

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Send as much of `data` as the windows allow (all of it when `end_stream` fits);
        returns the count taken. With `end_stream`, the stream ends only once all is sent."""
        conn = self._conn
        total = len(data)
        sent = 0
        try:
            while sent < total:
                room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if room <= 0:
                    return sent
                n = min(room, total - sent)
                last = end_stream and sent + n == total
                conn.send_data(stream_id, bytes(data[sent : sent + n]), end_stream=last)
                sent += n
            if end_stream and total == 0:
                conn.end_stream(stream_id)
        except h2.exceptions.ProtocolError as e:
            raise HttpCodecError(str(e)) from None
        return sent

    def send_window(self, stream_id: int) -> int:
        try:
            return min(
                self._conn.local_flow_control_window(stream_id),
                self._conn.max_outbound_frame_size,
            )
        except h2.exceptions.ProtocolError:
            return 0

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        try:
            if trailers:
                self._conn.send_headers(stream_id, _encode(trailers), end_stream=True)
            else:
                self._conn.end_stream(stream_id)
        except h2.exceptions.ProtocolError as e:
            raise HttpCodecError(str(e)) from None

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """RST_STREAM, unless the stream is already closed."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.reset_stream(stream_id, error_code)
        self._ended.discard(stream_id)

    def acknowledge(self, stream_id: int, count: int) -> None:
        """`count` received bytes were consumed: let the peer send that much more."""
        if count <= 0:
            return
        # on a stream closed meanwhile h2 still hands the connection window back
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.acknowledge_received_data(count, stream_id)

    def close(self, error_code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """GOAWAY. NO_ERROR: no new streams, open ones may finish; any other code ends the
        connection."""
        if error_code != h2.errors.ErrorCodes.NO_ERROR:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.close_connection(error_code)
            self._closed = True
            return
        if self.draining and not self.goaway_received:
            return
        last = self._conn.highest_inbound_stream_id
        self._goaway_last = last
        frame = _GOAWAY_FIXED.pack(last, error_code)
        self._goaway_out += len(frame).to_bytes(3, "big") + bytes([_GOAWAY, 0]) + bytes(4) + frame

    @property
    def open_stream_count(self) -> int:
        return int(self._conn.open_outbound_streams + self._conn.open_inbound_streams)


class H2Server(_Codec):
    """The server side of one HTTP/2 connection (prior knowledge: the client's preface first)."""

    def __init__(self, *, scheme: str = "http") -> None:
        super().__init__(client_side=False)
        self._scheme = scheme

    def _translate_head(self, ev: h2.events.Event, events: list[Event]) -> None:
        if not isinstance(ev, h2.events.RequestReceived):
            return
        sid = ev.stream_id
        assert sid is not None
        if self._goaway_last is not None and sid > self._goaway_last:
            self.reset(sid, _REFUSED_STREAM)
            if ev.stream_ended:
                self._ended.add(sid)
            return
        pseudo, fields = _decode(list(ev.headers or []))
        headers = Headers.trusted(fields)
        if len(fields) > MAX_HEADERS or headers.size() > MAX_HEADER_BYTES:
            if ev.stream_ended:
                self._ended.add(sid)
            events.append(
                BadRequest(
                    sid,
                    431,
                    f"{len(fields)} request headers of {headers.size()} bytes "
                    f"(limits {MAX_HEADERS}, {MAX_HEADER_BYTES})",
                )
            )
            return
        method = pseudo.get(":method", "")
        authority = pseudo.get(":authority") or headers.get("host") or ""
        headers.remove("host")
        head = RequestHead(
            method,
            pseudo.get(":path", ""),
            authority,
            headers,
            pseudo.get(":scheme", self._scheme),
            "HTTP/2",
        )
        end = bool(ev.stream_ended)
        if end:
            self._ended.add(sid)
        events.append(RequestReceived(sid, head, end))

    def send_headers(self, stream_id: int, head: ResponseHead, end_stream: bool = False) -> None:
        headers = head.headers.copy()
        strip_hop_by_hop(headers)
        drop_body_framing(headers, head.status)
        headers.remove("te")
        raw = [(b":status", str(head.status).encode()), *_encode(headers)]
        try:
            self._conn.send_headers(stream_id, raw, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            raise HttpCodecError(str(e)) from None


class H2Client(_Codec):
    """The client side of one HTTP/2 connection (to an upstream)."""

    def __init__(self) -> None:
        super().__init__(client_side=True)

    def _translate_head(self, ev: h2.events.Event, events: list[Event]) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            sid = ev.stream_id
            assert sid is not None
            pseudo, fields = _decode(list(ev.headers or []))
            end = bool(ev.stream_ended)
            if end:
                self._ended.add(sid)
            status = int(pseudo.get(":status", "0") or 0)
            events.append(ResponseReceived(sid, ResponseHead(status, Headers.trusted(fields)), end))
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            sid = ev.stream_id
            assert sid is not None
            pseudo, fields = _decode(list(ev.headers or []))
            status = int(pseudo.get(":status", "0") or 0)
            events.append(InformationalReceived(sid, ResponseHead(status, Headers.trusted(fields))))

    @property
    def can_open(self) -> bool:
        """A new stream fits under the peer's concurrency limit and no GOAWAY was received."""
        conn = self._conn
        return (
            not self._closed
            and not self.draining
            and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams
        )

    def send_headers(self, head: RequestHead, end_stream: bool = False) -> int:
        """Open a stream with a request head; returns its id."""
        headers = head.headers.copy()
        strip_hop_by_hop(headers)
        sid = self._conn.get_next_available_stream_id()
        if head.method == "CONNECT":
            raw = [(b":method", b"CONNECT"), (b":authority", head.authority.encode("latin-1"))]
        else:
            raw = [
                (b":method", head.method.encode("latin-1")),
                (b":scheme", head.scheme.encode("latin-1")),
                (b":authority", head.authority.encode("latin-1")),
                (b":path", head.path.encode("latin-1")),
            ]
        raw.extend(_encode(headers))
        try:
            self._conn.send_headers(sid, raw, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            raise HttpCodecError(str(e)) from None
        return sid
