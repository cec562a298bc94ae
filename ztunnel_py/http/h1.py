"""Sans-IO HTTP/1.1 codecs (server and client) over h11, speaking the engine's events.

h11 does the parsing, framing and keep-alive state; this module adds what a proxy needs on top:

- limits as Envoy applies them: the request head may take up to 60 KiB and 100 fields, else the
  server codec reports `BadRequest(431)`; malformed input is `BadRequest(400)`;
- exchange numbering (1, 3, 5, ...) so a driver handles HTTP/1.1 like HTTP/2 streams;
- request framing on the client side: h11 sends no body without `Content-Length` or
  `Transfer-Encoding`, so a body of unknown length (from an HTTP/2 peer) goes chunked;
- keep-alive: after both messages of an exchange are complete the next one starts; a response
  finished before its request was fully received ends keep-alive (`must_close`), as the rest of
  that request cannot be told apart from the next one;
- protocol switches (101 to an Upgrade, 2xx to CONNECT) become `Switched` with the bytes that
  arrived after the handshake; the connection then carries raw bytes.

Both codecs take bytes in (`receive_data`, `b""` for EOF) and queue bytes out (`data_to_send`).
"""

from __future__ import annotations

from http import HTTPStatus

import h11

from ztunnel_py.http.events import (
    BadRequest,
    ConnectionEnded,
    DataReceived,
    Event,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
    Switched,
)
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead, drop_body_framing

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "H1Client", "H1Server", "HttpCodecError"]

# Envoy's defaults (max_request_headers_kb 60, max_headers_count 100).
MAX_HEADER_BYTES = 60 * 1024
MAX_HEADERS = 100


class HttpCodecError(Exception):
    """A message cannot be sent in the connection's current state."""


def _fields(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    # h11 lower-cases names already
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def _reason(head: ResponseHead) -> bytes:
    """The reason phrase: the head's, else the standard one (`404 Not Found`)."""
    if head.reason:
        return head.reason.encode("latin-1")
    try:
        return HTTPStatus(head.status).phrase.encode()
    except ValueError:
        return b""


def _has_framing(headers: Headers) -> bool:
    return "content-length" in headers or "transfer-encoding" in headers


class _Codec:
    def __init__(self, role: type[h11.SERVER] | type[h11.CLIENT]) -> None:
        self._conn = h11.Connection(role, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._out: list[bytes] = []
        self._stream_id = 1
        self.switched = False
        self.must_close = False
        self._closed = False
        # the head was reported with end_stream=True: h11's EndOfMessage adds nothing
        self._skip_end = False

    @property
    def stream_id(self) -> int:
        """The current exchange's number."""
        return self._stream_id

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, event: h11.Event) -> None:
        try:
            data = self._conn.send(event)
        except h11.LocalProtocolError as e:
            raise HttpCodecError(str(e)) from None
        if data:
            self._out.append(data)

    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        self._check(stream_id)
        if data:
            self._send(h11.Data(data=bytes(data)))

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        """End the outgoing message, with trailers when the framing allows them (chunked)."""
        self._check(stream_id)
        fields = _encode(trailers) if trailers and self._chunked_out() else []
        self._send(h11.EndOfMessage(headers=fields))
        self._maybe_next_cycle()

    def _chunked_out(self) -> bool:
        return False

    def _check(self, stream_id: int) -> None:
        if stream_id != self._stream_id:
            raise HttpCodecError(f"stream {stream_id} is not the current exchange")

    def _maybe_next_cycle(self) -> None:
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._stream_id += 2
            self._skip_end = False
        elif h11.MUST_CLOSE in (conn.our_state, conn.their_state):
            self.must_close = True
        elif conn.our_role is h11.SERVER and conn.our_state is h11.DONE:
            # answered before the request was received whole: the rest of it cannot be told
            # apart from a next request, and reading it all could take forever
            self.must_close = True

    def _end_received(self, ev: h11.EndOfMessage, events: list[Event]) -> None:
        sid, skip = self._stream_id, self._skip_end
        self._maybe_next_cycle()
        if not skip:
            trailers = Headers.trusted(_fields(list(ev.headers))) if ev.headers else None
            events.append(MessageEnded(sid, trailers))

    @property
    def has_input(self) -> bool:
        """Bytes received and not yet parsed (a pipelined request h11 held back)."""
        data, closed = self._conn.trailing_data
        return bool(data) or closed

    @property
    def idle(self) -> bool:
        """Between exchanges, able to start a new one."""
        return (
            not self._closed
            and not self.switched
            and not self.must_close
            and self._conn.our_state is h11.IDLE
            and self._conn.their_state is h11.IDLE
        )


class H1Server(_Codec):
    """The server side of one HTTP/1.1 connection."""

    def __init__(self, *, scheme: str = "http") -> None:
        super().__init__(h11.SERVER)
        self._scheme = scheme
        self._request_method = b""
        self._response_chunked = False

    def receive_data(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        self._conn.receive_data(data)
        return self.next_events()

    def next_events(self) -> list[Event]:
        """Events from bytes already received (after an exchange ends, the next request may be
        buffered)."""
        events: list[Event] = []
        conn = self._conn
        while not self._closed:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                status = 431 if e.error_status_hint == 431 else 400
                reason = "request headers too large" if status == 431 else str(e)
                events.append(BadRequest(self._stream_id, status, reason))
                self.must_close = True
                self._closed = True
                break
            if ev is h11.NEED_DATA:
                break
            if ev is h11.PAUSED:
                # the next request waits for this exchange's response, or a protocol switch
                break
            if isinstance(ev, h11.Request):
                if self._request(ev, events):
                    break
            elif isinstance(ev, h11.Data):
                events.append(DataReceived(self._stream_id, bytes(ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                self._end_received(ev, events)
            elif isinstance(ev, h11.ConnectionClosed):
                events.append(ConnectionEnded())
                self._closed = True
        return events

    def _request(self, ev: h11.Request, events: list[Event]) -> bool:
        fields = _fields(list(ev.headers))
        # h11 bounds only a head still incomplete; one that arrived whole is measured here, as
        # Envoy measures its header map (names and values, the method and path included)
        size = len(ev.method) + len(ev.target) + sum(len(n) + len(v) for n, v in fields)
        if len(fields) > MAX_HEADERS or size > MAX_HEADER_BYTES:
            events.append(
                BadRequest(
                    self._stream_id,
                    431,
                    f"{len(fields)} request headers of {size} bytes "
                    f"(limits {MAX_HEADERS}, {MAX_HEADER_BYTES})",
                )
            )
            self.must_close = True
            self._closed = True
            return True
        authority = ""
        rest: list[tuple[str, str]] = []
        for n, v in fields:
            if n == "host" and not authority:
                authority = v
            elif n != "host":
                rest.append((n, v))
        target = ev.target.decode("latin-1")
        if target.startswith(("http://", "https://")):
            # absolute form: the authority is in the target (RFC 9112 section 3.2.2)
            _scheme, _, after = target.partition("://")
            slash = after.find("/")
            authority = after if slash < 0 else after[:slash]
            target = "/" if slash < 0 else after[slash:]
        if ev.method == b"CONNECT":
            authority = target
        self._request_method = ev.method
        head = RequestHead(
            ev.method.decode("latin-1"),
            target,
            authority,
            Headers.trusted(rest),
            self._scheme,
            "HTTP/1.0" if ev.http_version == b"1.0" else "HTTP/1.1",
        )
        end = self._body_absent(head) and ev.method != b"CONNECT"
        self._skip_end = end
        events.append(RequestReceived(self._stream_id, head, end))
        return False

    @staticmethod
    def _body_absent(head: RequestHead) -> bool:
        h = head.headers
        if "transfer-encoding" in h:
            return False
        length = h.get("content-length")
        return length is None or length.strip() == "0"

    def send_headers(self, stream_id: int, head: ResponseHead, end_stream: bool = False) -> None:
        """Send a response head (a 1xx is informational; 101 switches protocols)."""
        self._check(stream_id)
        headers = head.headers
        if head.status < 200 or head.status == 204:
            headers = headers.copy()
            drop_body_framing(headers, head.status)
        fields = _encode(headers)
        reason = _reason(head)
        if head.status < 200:
            self._send(
                h11.InformationalResponse(status_code=head.status, headers=fields, reason=reason)
            )
            return
        no_body_allowed = self._request_method == b"HEAD" or head.status in (204, 304)
        if end_stream and not no_body_allowed and not _has_framing(head.headers):
            fields.append((b"content-length", b"0"))
        self._send(h11.Response(status_code=head.status, headers=fields, reason=reason))
        # h11 chunks a body of unknown length to an HTTP/1.1 client; only then can trailers go
        self._response_chunked = (
            not no_body_allowed
            and self._conn.their_http_version == b"1.1"
            and not any(n == b"content-length" for n, _ in fields)
        )
        if self._request_method == b"CONNECT" and 200 <= head.status < 300:
            return
        if end_stream:
            self.send_end(stream_id)

    def _chunked_out(self) -> bool:
        return self._response_chunked

    def accept_switch(self, stream_id: int) -> bytes:
        """After a 2xx to CONNECT: the connection now carries raw bytes; returns bytes the
        client sent after its request."""
        self._check(stream_id)
        data, _ = self._conn.trailing_data
        self.switched = True
        return bytes(data)

    def send_switch(self, stream_id: int, head: ResponseHead) -> bytes:
        """Answer an Upgrade with 101: returns bytes the client sent after its request."""
        self.send_headers(stream_id, head)
        return self.accept_switch(stream_id)


class H1Client(_Codec):
    """The client side of one HTTP/1.1 connection (to an upstream)."""

    def __init__(self) -> None:
        super().__init__(h11.CLIENT)
        self._request_chunked = False
        self._method = b""

    def receive_data(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        self._conn.receive_data(data)
        return self.next_events()

    def next_events(self) -> list[Event]:
        events: list[Event] = []
        conn = self._conn
        while not self._closed:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                events.append(ConnectionEnded(f"malformed response: {e}", error=True))
                self._closed = True
                break
            if ev is h11.NEED_DATA:
                break
            if ev is h11.PAUSED:
                break
            if isinstance(ev, h11.InformationalResponse):
                head = ResponseHead(
                    ev.status_code,
                    Headers.trusted(_fields(list(ev.headers))),
                    ev.reason.decode("latin-1"),
                )
                if ev.status_code == 101:
                    data, _ = conn.trailing_data
                    self.switched = True
                    events.append(Switched(self._stream_id, head, bytes(data)))
                    break
                events.append(InformationalReceived(self._stream_id, head))
            elif isinstance(ev, h11.Response):
                head = ResponseHead(
                    ev.status_code,
                    Headers.trusted(_fields(list(ev.headers))),
                    ev.reason.decode("latin-1"),
                )
                if self._method == b"CONNECT" and 200 <= ev.status_code < 300:
                    data, _ = conn.trailing_data
                    self.switched = True
                    events.append(Switched(self._stream_id, head, bytes(data)))
                    break
                length = head.headers.get("content-length")
                end = (
                    self._method == b"HEAD"
                    or ev.status_code in (204, 304)
                    or (
                        length is not None
                        and length.strip() == "0"
                        and "transfer-encoding" not in head.headers
                    )
                )
                self._skip_end = end
                events.append(ResponseReceived(self._stream_id, head, end))
            elif isinstance(ev, h11.Data):
                events.append(DataReceived(self._stream_id, bytes(ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                if self._conn.our_state is not h11.DONE:
                    # answered before the request was sent whole: the rest cannot follow
                    self.must_close = True
                self._end_received(ev, events)
            elif isinstance(ev, h11.ConnectionClosed):
                events.append(ConnectionEnded())
                self._closed = True
        return events

    def send_headers(self, stream_id: int, head: RequestHead, end_stream: bool = False) -> None:
        """Send a request head. A body of unknown length is sent chunked."""
        self._check(stream_id)
        fields = [(b"host", head.authority.encode("latin-1")), *_encode(head.headers)]
        self._request_chunked = False
        if not end_stream and not _has_framing(head.headers) and head.method != "CONNECT":
            fields.append((b"transfer-encoding", b"chunked"))
            self._request_chunked = True
        elif "transfer-encoding" in head.headers:
            self._request_chunked = True
        self._method = head.method.encode("latin-1")
        self._send(
            h11.Request(method=self._method, target=head.path.encode("latin-1"), headers=fields)
        )
        if end_stream:
            self.send_end(stream_id)

    def _chunked_out(self) -> bool:
        return self._request_chunked
