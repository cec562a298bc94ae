"""Sans-IO HTTP/1.1 codecs (server and client), speaking the engine's events.

Parsing, framing and the keep-alive state machine are ours, with h11's rules (RFC 9110/9112 as
h11 0.16 applies them, so the wire behaviour is what it was when this module sat on h11): h11
costs about a fifth of a proxied request's CPU, as it builds and validates an event object per
message part and walks a generic state machine, and every request is parsed and written twice.
Heads are decoded once as latin-1 text and checked with one regular expression per line; what
is checked, and how strictly:

- request line `method SP target SP HTTP/d.d` (method a token, target visible ASCII), status
  line `HTTP/d.d SP 3DIGIT [SP reason]`; a head must not start with an empty line;
- fields `name ":" OWS value OWS` (name a token, no control characters or bare CR/LF in
  values; obsolete line folding is unfolded); HTTP/1.1 requests need exactly one `Host`;
- framing: `Transfer-Encoding` only `chunked` and only once; `Content-Length` digits (at most
  20), repeated or comma-listed values must agree (they become one field); chunk sizes of at
  most 20 hex digits, chunk extensions ignored, trailers parsed as fields;
- an incomplete head (or chunk line) over 60 KiB is `431`; anything malformed is an error;
- what we send is checked the same way (a field that could split the message is an error).

On top, what a proxy needs:

- limits as Envoy applies them: the request head may take up to 60 KiB and 100 fields, else the
  server codec reports `BadRequest(431)`; malformed input is `BadRequest(400)`;
- exchange numbering (1, 3, 5, ...) so a driver handles HTTP/1.1 like HTTP/2 streams;
- request framing on the client side: a body of unknown length (from an HTTP/2 peer) goes
  chunked; a response of unknown length goes chunked to an HTTP/1.1 client, and close-delimited
  (ending keep-alive) to an HTTP/1.0 one;
- keep-alive: after both messages of an exchange are complete the next one starts; `Connection:
  close` or HTTP/1.0 on either side ends it; a response finished before its request was fully
  received ends keep-alive (`must_close`), as the rest of that request cannot be told apart
  from the next one; a pipelined request waits in the buffer until the exchange is over;
- protocol switches (101 to an Upgrade, 2xx to CONNECT) become `Switched` with the bytes that
  arrived after the handshake; the connection then carries raw bytes.

Both codecs take bytes in (`receive_data`, `b""` for EOF) and queue bytes out (`data_to_send`).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from itertools import chain

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

# RFC 9110/9112 grammar as h11 writes it; patterns run on latin-1 text (re.ASCII: `\s` is
# ASCII whitespace only).
_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = r"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_FIELD_LINE = re.compile(rf"({_TOKEN}):[ \t]*({_FIELD_VALUE})[ \t]*", re.ASCII)
_NAME = re.compile(_TOKEN, re.ASCII)
_VALUE = re.compile(_FIELD_VALUE, re.ASCII)
_FIELD_BLOCK = re.compile(rf"(?:{_TOKEN}: {_FIELD_VALUE}\r\n)*", re.ASCII)
# a received field line in its common form (CRLF line end, no obsolete folding), in parts:
# name, whitespace, value, whitespace
_FIELD_PARTS = re.compile(rf"({_TOKEN}):([ \t]*)({_FIELD_VALUE})([ \t]*)\r\n", re.ASCII)
# fields that change a message's framing, keep-alive or protocol: a request without any of
# them needs none of the checks they take
_FRAMING_AND_CONNECTION = frozenset(
    {"content-length", "transfer-encoding", "connection", "upgrade"}
)
# header names `_encode_fields` has seen valid (bounded: a peer may send any names)
_VALID_NAMES: set[str] = set()
_MAX_VALID_NAMES = 1024
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])", re.ASCII)
_STATUS_LINE = re.compile(r"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?", re.ASCII)
_TARGET = re.compile(r"[\x21-\x7e]+", re.ASCII)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_FOLD = re.compile(r"[ \t]+")

# The two sides' states (h11's): a side sends its head (IDLE -> BODY; a server answering a
# request goes HEAD -> BODY), its body, and is DONE; MUST_CLOSE once keep-alive is off, CLOSED
# after its EOF; a client whose request proposed a switch waits in MIGHT_SWITCH until the
# server SWITCHED (or answered normally).
_IDLE = "IDLE"
_HEAD = "HEAD"
_BODY = "BODY"
_DONE = "DONE"
_MUST_CLOSE = "MUST_CLOSE"
_CLOSED = "CLOSED"
_MIGHT_SWITCH = "MIGHT_SWITCH"
_SWITCHED = "SWITCHED"
_ERROR = "ERROR"

# body framings
_LENGTH = "length"
_CHUNKED = "chunked"
_UNTIL_CLOSE = "until-close"

_UPGRADE = "upgrade"
_CONNECT = "connect"


class HttpCodecError(Exception):
    """A message cannot be sent in the connection's current state."""


class _ProtocolError(Exception):
    """The peer's bytes break the protocol (`status`: what a server answers)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _reason(head: ResponseHead) -> str:
    """The reason phrase: the head's, else the standard one (`404 Not Found`)."""
    if head.reason:
        return head.reason
    try:
        return HTTPStatus(head.status).phrase
    except ValueError:
        return ""


def _tokens(fields: list[tuple[str, str]], name: str) -> list[str]:
    """The comma-separated, lower-cased values of every field `name` (h11's get_comma_header)."""
    out: list[str] = []
    for n, v in fields:
        if n == name:
            out.extend(t for t in (p.strip() for p in v.lower().split(",")) if t)
    return out


def _normalized(fields: list[tuple[str, str]], error: type[Exception]) -> list[tuple[str, str]]:
    """`fields` with Content-Length and Transfer-Encoding checked and normalized (one
    Content-Length; `chunked` the only transfer coding); raises `error`."""
    length: str | None = None
    chunked = False
    out: list[tuple[str, str]] | None = None
    for i, (n, v) in enumerate(fields):
        if n == "content-length":
            values = {p.strip() for p in v.split(",")}
            if len(values) != 1:
                raise error("conflicting Content-Length headers")
            value = values.pop()
            if not _DIGITS.fullmatch(value):
                raise error("bad Content-Length")
            if length is None:
                length = value
                if value != v and out is None:
                    out = fields[:i]
                if out is not None:
                    out.append((n, value))
                continue
            if length != value:
                raise error("conflicting Content-Length headers")
            if out is None:
                out = fields[:i]
            continue
        if n == "transfer-encoding":
            if chunked:
                raise error("multiple Transfer-Encoding headers")
            if v.lower() != "chunked":
                raise error("Only Transfer-Encoding: chunked is supported")
            chunked = True
            if v != "chunked" and out is None:
                out = fields[:i]
            if out is not None:
                out.append((n, "chunked"))
            continue
        if out is not None:
            out.append((n, v))
    return fields if out is None else out


def _plain_length(fields: list[tuple[str, str]]) -> int | None:
    """The Content-Length (-1: none) of fields with no field of framing, keep-alive or protocol
    but at most one plain Content-Length (most responses): their framing and keep-alive need
    none of `_normalized`'s or `_keep_alive`'s checks. None for any other fields."""
    length = -1
    for n, v in fields:
        if n in _FRAMING_AND_CONNECTION:
            if n != "content-length" or length >= 0 or _DIGITS.fullmatch(v) is None:
                return None
            length = int(v)
    return length


def _response_framing(fields: list[tuple[str, str]], plain: int | None) -> tuple[str, int]:
    """A response's body framing from its fields, or from `_plain_length`'s answer (`plain`)
    when they had one."""
    if plain is None:
        return _framing(fields, is_request=False)
    return (_LENGTH, plain) if plain >= 0 else (_UNTIL_CLOSE, 0)


def _split_head(text: str) -> tuple[str, str]:
    """A head's start line (without its line end) and its field block."""
    start, _, block = text.partition("\n")
    return start.removesuffix("\r"), block


def _parse_block(block: str) -> list[tuple[str, str]]:
    """A field block (after the start line, or trailers) up to and including the blank line
    that ends it -> lower-case names and values. The common form is taken apart by one pass of
    `_FIELD_PARTS` and proven valid by what the matches cover; anything else (a bare LF,
    obsolete line folding, a bad line) goes line by line, which also finds the fault."""
    parts = _FIELD_PARTS.findall(block)
    # a match lies within one line and ends with its CRLF, and cannot take in the blank line:
    # covering all but the blank line's CRLF, the matches are every line whole
    covered = sum(map(len, chain.from_iterable(parts))) + 3 * len(parts)
    if covered + 2 == len(block) and block.endswith("\r\n"):
        return [(n.lower(), v) for n, _, v, _ in parts]
    lines = block.split("\n")
    del lines[-2:]
    return _parse_fields([line.removesuffix("\r") for line in lines])


def _parse_fields(lines: list[str]) -> list[tuple[str, str]]:
    """Field lines -> lower-case names and values."""
    if any(line[:1] in (" ", "\t") for line in lines):
        lines = _unfold(lines)
    out: list[tuple[str, str]] = []
    match = _FIELD_LINE.fullmatch
    for line in lines:
        m = match(line)
        if m is None:
            raise _ProtocolError(f"illegal header line: {line.encode('latin-1')!r}")
        out.append((m[1].lower(), m[2]))
    return out


def _unfold(lines: list[str]) -> list[str]:
    """Obsolete line folding: a line starting with whitespace continues the previous one."""
    out: list[str] = []
    for line in lines:
        m = _FOLD.match(line)
        if m is None:
            out.append(line)
        elif not out:
            raise _ProtocolError("continuation line at start of headers")
        else:
            out[-1] += " " + line[m.end() :]
    return out


def _encode_fields(fields: list[tuple[str, str]], out: list[str]) -> None:
    """Append `name: value\\r\\n` for each field, refusing what could break the message.

    Names are checked against those already seen valid (a few dozen in practice), values
    together with one match: once every name is a token (no colon, no whitespace), the block
    parses as field lines with exactly one CRLF per field only if no value holds a CR, LF or
    NUL (a CRLF inside a value would add one). The field at fault is then found field by
    field."""
    names_ok = True
    for n, _ in fields:
        if n not in _VALID_NAMES:
            if _NAME.fullmatch(n) is None:
                names_ok = False
                break
            if len(_VALID_NAMES) < _MAX_VALID_NAMES:
                _VALID_NAMES.add(n)
    if names_ok:
        block = "".join([f"{n}: {v}\r\n" for n, v in fields])
        if _FIELD_BLOCK.fullmatch(block) is not None and block.count("\r\n") == len(fields):
            out.append(block)
            return
    name_ok, value_ok = _NAME.fullmatch, _VALUE.fullmatch
    for n, v in fields:
        if name_ok(n) is None:
            raise HttpCodecError(f"Illegal header name {n!r}")
        if value_ok(v) is None:
            raise HttpCodecError(f"Illegal header value {v!r}")
        out.append(f"{n}: {v}\r\n")


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as e:
        raise HttpCodecError(f"not representable in HTTP/1.1: {e}") from None


def _keep_alive(fields: list[tuple[str, str]], version: str) -> bool:
    return "close" not in _tokens(fields, "connection") and version >= "1.1"


def _framing(fields: list[tuple[str, str]], *, is_request: bool) -> tuple[str, int]:
    """A message's body framing from its (normalized) fields (no-body statuses and methods
    are the caller's)."""
    length = -1
    for n, v in fields:
        if n == "transfer-encoding":
            return _CHUNKED, 0
        if n == "content-length" and length < 0:
            length = int(v)
    if length >= 0:
        return _LENGTH, length
    return (_LENGTH, 0) if is_request else (_UNTIL_CLOSE, 0)


class _Codec:
    """The machinery both codecs share: receive buffer, the two sides' states, body reading
    and writing. `_client`/`_server` are the requester's and the responder's states."""

    _we_serve = False

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        # where the search for the end of a head resumes
        self._search = 0
        self._out: list[bytes] = []
        self._stream_id = 1
        self.switched = False
        self.must_close = False
        self._closed = False
        # the head was reported with end_stream=True: the end of its message adds nothing
        self._skip_end = False
        self._client = _IDLE
        self._server = _IDLE
        self._keep_alive = True
        self._proposals: set[str] = set()
        # the current exchange's request method, and the peer's HTTP version
        self._method = ""
        self._their_version = ""
        # the message being received: framing, bytes left (length) or in the chunk (chunked)
        self._in = _LENGTH
        self._in_left = 0
        self._in_trailer = False
        self._in_crlf = b""
        # the message being sent
        self._send_framing = _LENGTH
        self._send_left = 0

    @property
    def stream_id(self) -> int:
        """The current exchange's number."""
        return self._stream_id

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def has_input(self) -> bool:
        """Bytes received and not yet parsed (a pipelined request held back), or the EOF."""
        return bool(self._buf) or self._eof

    @property
    def idle(self) -> bool:
        """Between exchanges, able to start a new one."""
        return (
            not self._closed
            and not self.switched
            and not self.must_close
            and self._client is _IDLE
            and self._server is _IDLE
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def _ours(self) -> str:
        return self._server if self._we_serve else self._client

    @property
    def _theirs(self) -> str:
        return self._client if self._we_serve else self._server

    def _set_ours(self, state: str) -> None:
        if self._we_serve:
            self._server = state
        else:
            self._client = state

    def _set_theirs(self, state: str) -> None:
        if self._we_serve:
            self._client = state
        else:
            self._server = state

    def _settle(self) -> None:
        """h11's state-triggered transitions, until nothing changes."""
        while True:
            before = (self._client, self._server)
            client, server = before
            if self._proposals and client is _DONE:
                client = _MIGHT_SWITCH
            if not self._proposals and client is _MIGHT_SWITCH:
                client = _DONE
            if not self._keep_alive:
                client = _MUST_CLOSE if client is _DONE else client
                server = _MUST_CLOSE if server is _DONE else server
            if client is _MIGHT_SWITCH and server is _SWITCHED:
                client = _SWITCHED
            elif (client is _CLOSED and server in (_DONE, _IDLE)) or (
                client is _ERROR and server is _DONE
            ):
                server = _MUST_CLOSE
            elif (server is _CLOSED and client in (_DONE, _IDLE)) or (
                server is _ERROR and client is _DONE
            ):
                client = _MUST_CLOSE
            self._client, self._server = client, server
            if (client, server) == before:
                return

    def _check(self, stream_id: int) -> None:
        if stream_id != self._stream_id:
            raise HttpCodecError(f"stream {stream_id} is not the current exchange")

    def _maybe_next_cycle(self) -> None:
        if self._client is _DONE and self._server is _DONE:
            self._client = self._server = _IDLE
            self._method = ""
            self._stream_id += 2
            self._skip_end = False
        elif _MUST_CLOSE in (self._client, self._server):
            self.must_close = True
        elif self._we_serve and self._server is _DONE:
            # answered before the request was received whole: the rest of it cannot be told
            # apart from a next request, and reading it all could take forever
            self.must_close = True

    def _their_head(self, fields: list[tuple[str, str]], version: str, *, plain: bool) -> None:
        """The peer's version and keep-alive from its head; `plain`: the head has no
        `Connection` field (only the version can end keep-alive)."""
        self._their_version = version
        if version < "1.1" if plain else not _keep_alive(fields, version):
            self._keep_alive = False

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        try:
            self._feed(data)
        except _ProtocolError as e:
            return [self._refuse(e)]
        return self.next_events()

    def next_events(self) -> list[Event]:
        """Events from bytes already received (after an exchange ends, the next message may be
        buffered)."""
        events: list[Event] = []
        try:
            while not self._closed:
                theirs = self._theirs
                if theirs is _IDLE or theirs is _HEAD:
                    text = self._head_text()
                    if text is None:
                        if not self._buf and self._eof:
                            if theirs is _HEAD:
                                raise _ProtocolError("peer closed the connection before a response")
                            self._set_theirs(_CLOSED)
                            self._settle()
                            events.append(ConnectionEnded())
                            self._closed = True
                            break
                        self._start_line_missing()
                        break
                    if self._their_start(text, events):
                        break
                elif theirs is _BODY:
                    if not self._read_body(events):
                        break
                else:
                    if self._idle_input() == "closed":
                        events.append(ConnectionEnded())
                        self._closed = True
                    break
        except _ProtocolError as e:
            events.append(self._refuse(e))
        return events

    def _their_start(self, text: str, events: list[Event]) -> bool:
        """Their message's head (`text`, without the blank line): its event, True when reading
        stops (a request refused, a protocol switched)."""
        raise NotImplementedError

    def _refuse(self, e: _ProtocolError) -> Event:
        """The event that ends the connection on their protocol error; the codec is closed."""
        raise NotImplementedError

    def _feed(self, data: bytes) -> None:
        if data:
            if self._eof:
                raise _ProtocolError("received data after the connection was closed")
            self._buf += data
        else:
            self._eof = True

    def _head_text(self) -> str | None:
        """The text of a head complete in the buffer, up to and including the blank line that
        ends it (taken from the buffer), else None; "" when the buffer starts with an empty
        line."""
        buf = self._buf
        if buf[:1] == b"\n":
            del buf[:1]
            return ""
        if buf[:2] == b"\r\n":
            del buf[:2]
            return ""
        m = _BLANK_LINE.search(buf, self._search)
        if m is None:
            self._search = max(0, len(buf) - 2)
            return None
        end = m.end()
        text = buf[:end].decode("latin-1")
        del buf[:end]
        self._search = 0
        return text

    def _start_line_missing(self) -> None:
        """No complete head yet: refuse input that cannot become one, or wait for more."""
        if self._buf and self._buf[0] < 0x21:
            raise _ProtocolError("illegal request line")
        self._need_data()

    def _need_data(self) -> None:
        """Nothing more can be read from the buffer: check it may wait for more."""
        if len(self._buf) > MAX_HEADER_BYTES:
            raise _ProtocolError("Receive buffer too long", 431)
        if self._eof:
            raise _ProtocolError("peer unexpectedly closed connection")

    def _start_body(self, framing: str, length: int) -> None:
        self._search = 0
        self._in, self._in_left = framing, length
        self._in_trailer = False
        self._in_crlf = b""

    def _read_body(self, events: list[Event]) -> bool:
        """Body events from the buffer; True when the message ended (its end appended),
        False when more bytes are needed."""
        buf = self._buf
        sid = self._stream_id
        if self._in is _LENGTH:
            if self._in_left and buf:
                data = bytes(buf[: self._in_left])
                del buf[: len(data)]
                self._in_left -= len(data)
                events.append(DataReceived(sid, data))
            if self._in_left:
                if self._eof:
                    raise _ProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                return False
            self._message_ended(None, events)
            return True
        if self._in is _UNTIL_CLOSE:
            if buf:
                events.append(DataReceived(sid, bytes(buf)))
                buf.clear()
            if self._eof:
                self._message_ended(None, events)
                return True
            return False
        return self._read_chunked(events)

    def _read_chunked(self, events: list[Event]) -> bool:
        buf = self._buf
        while True:
            if self._in_trailer:
                text = self._head_text()
                if text is None:
                    self._need_data()
                    return False
                trailers = _normalized(_parse_block(text), _ProtocolError) if text else None
                self._message_ended(trailers, events)
                return True
            if self._in_crlf:
                want = self._in_crlf
                got = bytes(buf[: len(want)])
                if not got:
                    break
                if got != want[: len(got)]:
                    raise _ProtocolError(f"malformed chunk footer: {got!r} (expected {want!r})")
                del buf[: len(got)]
                self._in_crlf = want[len(got) :]
                if self._in_crlf:
                    break
            if self._in_left == 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                line = bytes(buf[: end + 2])
                m = _CHUNK_LINE.fullmatch(line)
                if m is None:
                    raise _ProtocolError(f"illegal chunk header: {line!r}")
                del buf[: end + 2]
                self._in_left = int(m[1], 16)
                if self._in_left == 0:
                    self._in_trailer = True
                    continue
            if not buf:
                break
            data = bytes(buf[: self._in_left])
            del buf[: len(data)]
            self._in_left -= len(data)
            if self._in_left == 0:
                self._in_crlf = b"\r\n"
            events.append(DataReceived(self._stream_id, data))
        if self._eof:
            raise _ProtocolError(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        self._need_data()
        return False

    def _message_ended(self, trailers: list[tuple[str, str]] | None, events: list[Event]) -> None:
        self._set_theirs(_DONE)
        self._settle()
        sid, skip = self._stream_id, self._skip_end
        self._their_end()
        self._maybe_next_cycle()
        if not skip:
            events.append(MessageEnded(sid, Headers.trusted(trailers) if trailers else None))

    def _their_end(self) -> None:
        """Their message ended (before the next cycle may start)."""

    def _idle_input(self) -> str:
        """With nothing to parse in their state: "paused" (bytes wait for the next exchange or
        a switch), "closed" (their EOF), "wait" (more bytes needed). Raises for bytes where
        none may come."""
        theirs = self._theirs
        if theirs in (_MIGHT_SWITCH, _SWITCHED):
            return "paused"
        if theirs is _DONE:
            if self._buf:
                return "paused"
        elif theirs in (_MUST_CLOSE, _CLOSED) and self._buf:
            raise _ProtocolError("Got data when expecting EOF")
        if self._eof:
            self._set_theirs(_CLOSED)
            self._settle()
            return "closed"
        return "wait"

    # -- sending -------------------------------------------------------------------------------

    def _fail_send(self, reason: str) -> HttpCodecError:
        self._set_ours(_ERROR)
        self._settle()
        return HttpCodecError(reason)

    def _start_sending(self, framing: str, length: int) -> None:
        self._send_framing, self._send_left = framing, length

    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        self._check(stream_id)
        if not data:
            return
        if self._ours is not _BODY:
            raise self._fail_send(f"can't send data in state {self._ours}")
        chunk = data if isinstance(data, bytes) else bytes(data)
        if self._send_framing is _LENGTH:
            self._send_left -= len(chunk)
            if self._send_left < 0:
                raise self._fail_send("Too much data for declared Content-Length")
            self._out.append(chunk)
        elif self._send_framing is _CHUNKED:
            self._out += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self._out.append(chunk)

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        """End the outgoing message, with trailers when the framing allows them (chunked)."""
        self._check(stream_id)
        if self._ours is not _BODY:
            raise self._fail_send(f"can't end a message in state {self._ours}")
        if self._send_framing is _LENGTH:
            if self._send_left:
                raise self._fail_send("Too little data for declared Content-Length")
        elif self._send_framing is _CHUNKED:
            out = ["0\r\n"]
            if trailers and (not self._we_serve or self._their_version == "1.1"):
                _encode_fields(_normalized(trailers.items(), HttpCodecError), out)
            out.append("\r\n")
            self._out.append(_latin1("".join(out)))
        self._set_ours(_DONE)
        self._settle()
        self._maybe_next_cycle()


class H1Server(_Codec):
    """The server side of one HTTP/1.1 connection."""

    _we_serve = True

    def __init__(self, *, scheme: str = "http") -> None:
        super().__init__()
        self._scheme = scheme

    def _refuse(self, e: _ProtocolError) -> BadRequest:
        self._client = _ERROR
        self._settle()
        self.must_close = True
        self._closed = True
        reason = "request headers too large" if e.status == 431 else e.reason
        return BadRequest(self._stream_id, 431 if e.status == 431 else 400, reason)

    def _their_start(self, text: str, events: list[Event]) -> bool:
        """A request head: its event (True when it was refused and reading stops)."""
        if not text:
            raise _ProtocolError("no request line received")
        start, block = _split_head(text)
        m = _REQUEST_LINE.fullmatch(start)
        if m is None:
            raise _ProtocolError(f"illegal request line: {start.encode('latin-1')!r}")
        method, target, version = m[1], m[2], m[3]
        fields = _parse_block(block)
        # most requests carry no field of framing or connection: one pass finds that out, and
        # one more collects what a request needs (Host, the rest, the size), not one each
        plain = not any(n in _FRAMING_AND_CONNECTION for n, _ in fields)
        if not plain:
            fields = _normalized(fields, _ProtocolError)
        authority = ""
        hosts = 0
        rest: list[tuple[str, str]] = []
        # the fields arrived whole, so h11-style bounds on incomplete heads never saw them:
        # they are measured here, as Envoy measures its header map (names and values, the
        # method and path included)
        size = len(method) + len(target)
        for n, v in fields:
            size += len(n) + len(v)
            if n == "host":
                hosts += 1
                if hosts == 1:
                    authority = v
            else:
                rest.append((n, v))
        if version == "1.1" and hosts == 0:
            raise _ProtocolError("Missing mandatory Host: header")
        if hosts > 1:
            raise _ProtocolError("Found multiple Host: headers")
        # the client's head is taken: the exchange has started whatever we answer
        self._client, self._server = _BODY, _HEAD
        self._method = method
        if method == "CONNECT":
            self._proposals.add(_CONNECT)
        if not plain and _tokens(fields, "upgrade"):
            self._proposals.add(_UPGRADE)
        self._their_head(fields, version, plain=plain)
        self._settle()
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
        if target.startswith(("http://", "https://")):
            # absolute form: the authority is in the target (RFC 9112 section 3.2.2)
            _scheme, _, after = target.partition("://")
            slash = after.find("/")
            authority = after if slash < 0 else after[:slash]
            target = "/" if slash < 0 else after[slash:]
        if method == "CONNECT":
            authority = target
        head = RequestHead(
            method,
            target,
            authority,
            Headers.trusted(rest),
            self._scheme,
            "HTTP/1.0" if version == "1.0" else "HTTP/1.1",
            len(text),
        )
        framing, length = (_LENGTH, 0) if plain else _framing(fields, is_request=True)
        self._start_body(framing, length)
        end = framing is _LENGTH and length == 0 and method != "CONNECT"
        self._skip_end = end
        events.append(RequestReceived(self._stream_id, head, end))
        return False

    def send_headers(self, stream_id: int, head: ResponseHead, end_stream: bool = False) -> None:
        """Send a response head (a 1xx is informational; 101 switches protocols)."""
        self._check(stream_id)
        headers = head.headers
        status = head.status
        if status < 200 or status == 204:
            headers = headers.copy()
            drop_body_framing(headers, status)
        fields = headers.items()
        if status < 200:
            self._send_informational(head, fields)
            return
        method = self._method
        no_body_allowed = method == "HEAD" or status in (204, 304)
        if end_stream and not no_body_allowed and not _has_framing(fields):
            fields.append(("content-length", "0"))
        # a malformed head is refused as it is (the state stays), a head the state does not
        # allow breaks the connection
        if status >= 1000:
            raise HttpCodecError(f"a final status is 200-999, not {status}")
        plain = _plain_length(fields)
        if plain is None:
            fields = _normalized(fields, HttpCodecError)
        connect_2xx = method == "CONNECT" and 200 <= status < 300
        need_close = False
        # what the body is sent with, unless it has none
        sending = (_LENGTH, 0)
        if not (status in (204, 304) or connect_2xx):
            # the framing a GET would have (a HEAD response mirrors it)
            sending = _response_framing(fields, plain)
            if sending[0] is not _LENGTH:
                fields = [f for f in fields if f[0] not in ("content-length", "transfer-encoding")]
                if self._their_version < "1.1":
                    # close-delimited for an HTTP/1.0 client
                    need_close = method != "HEAD"
                    sending = (_UNTIL_CLOSE, 0)
                else:
                    fields.append(("transfer-encoding", "chunked"))
                    sending = (_CHUNKED, 0)
        if not self._keep_alive or need_close:
            tokens = set(_tokens(fields, "connection"))
            tokens.discard("keep-alive")
            tokens.add("close")
            fields = [f for f in fields if f[0] != "connection"]
            fields.append(("connection", ", ".join(sorted(tokens))))
            self._keep_alive = False
        elif plain is None and not _keep_alive(fields, "1.1"):
            self._keep_alive = False
        out = [f"HTTP/1.1 {status} {_reason(head)}\r\n"]
        _encode_fields(fields, out)
        out.append("\r\n")
        data = _latin1("".join(out))
        head.wire_size = len(data)
        if self._server is not _HEAD and self._server is not _IDLE:
            raise self._fail_send(f"can't send a response in state {self._server}")
        if connect_2xx and _CONNECT in self._proposals:
            self._server = _SWITCHED
        else:
            self._proposals.clear()
            self._server = _BODY
            self._start_sending(*((_LENGTH, 0) if method == "HEAD" else sending))
        self._settle()
        self._out.append(data)
        if connect_2xx:
            return
        if end_stream:
            self.send_end(stream_id)

    def _send_informational(self, head: ResponseHead, fields: list[tuple[str, str]]) -> None:
        if head.status < 100:
            raise HttpCodecError(f"an informational status is 100-199, not {head.status}")
        out = [f"HTTP/1.1 {head.status} {_reason(head)}\r\n"]
        _encode_fields(_normalized(fields, HttpCodecError), out)
        out.append("\r\n")
        data = _latin1("".join(out))
        if self._server is not _HEAD:
            raise self._fail_send(f"can't send an informational response in state {self._server}")
        if head.status == 101 and _UPGRADE not in self._proposals:
            raise self._fail_send("a 101 answers a request proposing an Upgrade only")
        if head.status == 101:
            self._server = _SWITCHED
            self._settle()
        self._out.append(data)

    def accept_switch(self, stream_id: int) -> bytes:
        """After a 2xx to CONNECT: the connection now carries raw bytes; returns bytes the
        client sent after its request."""
        self._check(stream_id)
        self.switched = True
        return bytes(self._buf)

    def send_switch(self, stream_id: int, head: ResponseHead) -> bytes:
        """Answer an Upgrade with 101: returns bytes the client sent after its request."""
        self.send_headers(stream_id, head)
        return self.accept_switch(stream_id)


def _has_framing(fields: list[tuple[str, str]]) -> bool:
    return any(n in ("content-length", "transfer-encoding") for n, _ in fields)


class H1Client(_Codec):
    """The client side of one HTTP/1.1 connection (to an upstream)."""

    def _refuse(self, e: _ProtocolError) -> ConnectionEnded:
        self._server = _ERROR
        self._settle()
        self._closed = True
        return ConnectionEnded(f"malformed response: {e.reason}", error=True)

    def _their_start(self, text: str, events: list[Event]) -> bool:
        """A response head: its event (True when the connection switched protocols)."""
        if not text:
            raise _ProtocolError("no response line received")
        start, block = _split_head(text)
        m = _STATUS_LINE.fullmatch(start)
        if m is None:
            raise _ProtocolError(f"illegal status line: {start.encode('latin-1')!r}")
        version, status, reason = m[1], int(m[2]), m[3] or ""
        fields = _parse_block(block)
        plain = _plain_length(fields)
        if plain is None:
            fields = _normalized(fields, _ProtocolError)
        head = ResponseHead(status, Headers.trusted(fields), reason)
        if status < 200:
            if status < 100:
                raise _ProtocolError(f"an informational status is 100-199, not {status}")
            if self._server is not _HEAD:
                raise _ProtocolError("can't handle an informational response before a request")
            self._their_version = version
            if status == 101:
                if _UPGRADE not in self._proposals:
                    raise _ProtocolError("101 to a request that proposed no Upgrade")
                self._server = _SWITCHED
                self._settle()
                self.switched = True
                events.append(Switched(self._stream_id, head, bytes(self._buf)))
                return True
            events.append(InformationalReceived(self._stream_id, head))
            return False
        method = self._method
        self._their_head(fields, version, plain=plain is not None)
        if method == "CONNECT" and 200 <= status < 300 and _CONNECT in self._proposals:
            self._server = _SWITCHED
            self._settle()
            self.switched = True
            events.append(Switched(self._stream_id, head, bytes(self._buf)))
            return True
        self._proposals.clear()
        self._server = _BODY
        self._settle()
        if status in (204, 304) or method == "HEAD" or (method == "CONNECT" and status < 300):
            framing, length = _LENGTH, 0
        else:
            framing, length = _response_framing(fields, plain)
        self._start_body(framing, length)
        end = framing is _LENGTH and length == 0
        self._skip_end = end
        events.append(ResponseReceived(self._stream_id, head, end))
        return False

    def _their_end(self) -> None:
        if self._client is not _DONE and self._client is not _MUST_CLOSE:
            # answered before the request was sent whole: the rest cannot follow
            self.must_close = True

    def send_headers(self, stream_id: int, head: RequestHead, end_stream: bool = False) -> None:
        """Send a request head. A body of unknown length is sent chunked."""
        self._check(stream_id)
        fields = head.headers.items()
        # one pass finds the names that matter here: Host and those of framing or connection
        special = [n for n, _ in fields if n in _FRAMING_AND_CONNECTION or n == "host"]
        fields.insert(0, ("host", head.authority))
        if "host" in special:
            raise HttpCodecError("Found multiple Host: headers")
        if (
            not end_stream
            and "content-length" not in special
            and "transfer-encoding" not in special
            and head.method != "CONNECT"
        ):
            fields.append(("transfer-encoding", "chunked"))
            special.append("transfer-encoding")
        # as when receiving: a request with no field of framing or connection skips their checks
        plain = not special
        if not plain:
            fields = _normalized(fields, HttpCodecError)
        method, target = head.method, head.path
        if _NAME.fullmatch(method) is None:
            raise HttpCodecError("Illegal method characters")
        if _TARGET.fullmatch(target) is None:
            raise HttpCodecError("Illegal target characters")
        out = [f"{method} {target} HTTP/1.1\r\n"]
        _encode_fields(fields, out)
        out.append("\r\n")
        if self._client is not _IDLE:
            raise self._fail_send(f"can't send a request in state {self._client}")
        self._out.append(_latin1("".join(out)))
        self._method = method
        if method == "CONNECT":
            self._proposals.add(_CONNECT)
        if not plain:
            if _tokens(fields, "upgrade"):
                self._proposals.add(_UPGRADE)
            if not _keep_alive(fields, "1.1"):
                self._keep_alive = False
        self._client = _BODY
        if self._server is _IDLE:
            self._server = _HEAD
        self._start_sending(*((_LENGTH, 0) if plain else _framing(fields, is_request=True)))
        self._settle()
        if end_stream:
            self.send_end(stream_id)
