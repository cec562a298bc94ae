"""HTTP/2 framing done by hand, so DATA (and the frames that pace it) never go through h2.

Why. Stock h2 4.4.1 `repr()`s every frame it receives for a trace log line, and hyperframe's
repr hex-encodes the whole DATA payload: measured, that is 78% of HBONE decode time with 1 MiB
frames, paid even with logging off. So this module splits the incoming byte stream into frames
itself and writes outgoing DATA itself:

- Incoming DATA payloads are handed to the connection core as slices of the caller's buffer (no
  copy), padding stripped; the core accounts receive windows. h2 only ever sees a zero-length
  DATA frame carrying END_STREAM (so its stream state machine stays right), or a zero-length
  stand-in for DATA on a stream the core does not consider open (so h2 decides between
  RST_STREAM and a connection error).
- Outgoing DATA frames (9-byte header + payload) are written here, sized to the peer's max frame
  size; payloads of 16 KiB or more are queued by reference, smaller ones travel in one buffer
  with their header (one TLS record, not two).
- WINDOW_UPDATE and GOAWAY frames never reach h2 either way. h2 never sends DATA for us, so its
  outbound windows never shrink: WINDOW_UPDATEs fed to it would push them past 2^31-1 after
  2 GiB and h2 would kill the connection with FLOW_CONTROL_ERROR. And h2 refuses every frame once
  a GOAWAY was sent or received, which would make graceful draining impossible.
- Everything else (SETTINGS, HEADERS/CONTINUATION, RST_STREAM, PING, PRIORITY, unknown frames)
  goes to h2 whole and in order; the core batches consecutive ones into one h2 call.

`FrameSplitter` is the incoming half: it reports frames to a `FrameSink` (the connection core).
`OutputQueue` is the outgoing half. Neither knows about streams or windows.
"""

from __future__ import annotations

import struct
from typing import Protocol

from h2.errors import ErrorCodes

from ztunnel_py.protocol.hbone.errors import ProtocolViolation
from ztunnel_py.protocol.hbone.settings import MAX_FRAME_SIZE

__all__ = [
    "FLAG_END_STREAM",
    "MAX_STREAM_ID",
    "PREFACE",
    "Bytes",
    "FrameSink",
    "FrameSplitter",
    "OutputQueue",
    "empty_data_frame",
]

Bytes = bytes | bytearray | memoryview

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID = 2**31 - 1

# Frame types this module looks at (RFC 9113 section 6).
_DATA, _HEADERS, _PUSH_PROMISE, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    0x0,
    0x1,
    0x5,
    0x7,
    0x8,
    0x9,
)
FLAG_END_STREAM = 0x1
_FLAG_END_HEADERS = 0x4
_FLAG_PADDED = 0x8

# A frame header is a 24-bit length, an 8-bit type, 8-bit flags and a 31-bit stream id; packing
# (length << 8 | type) as one 32-bit word makes it a single struct call.
_FRAME_HEADER = struct.Struct(">IBI")
# DATA payloads at least this large are queued by reference instead of copied.
_ZERO_COPY_MIN = 16 * 1024
_U32 = struct.Struct(">I")
_GOAWAY_FIXED = struct.Struct(">II")
_MAX_WINDOW_INCREMENT = 2**31 - 1
# What a HEADERS frame may carry besides its header block: pad length, padding, priority.
_HEADERS_FRAME_EXTRA = 1 + 255 + 5

# Parser states.
_S_PREFACE, _S_HEADER, _S_BODY, _S_PADLEN, _S_PAYLOAD, _S_PADDING = range(6)
# What a frame body in _S_BODY is for.
_BODY_H2, _BODY_WINDOW_UPDATE, _BODY_GOAWAY = range(3)


def empty_data_frame(stream_id: int, flags: int) -> bytes:
    """A zero-length DATA frame: what h2 is shown in place of a DATA frame."""
    return _FRAME_HEADER.pack(_DATA, flags, stream_id)


# --- incoming -----------------------------------------------------------------------------


class FrameSink(Protocol):
    """Where `FrameSplitter` reports frames, in wire order. Any method may raise
    `ProtocolViolation`, which ends the parse."""

    def on_h2_frame(self, frame: bytes) -> None:
        """A whole frame (or the client preface) for h2."""

    def on_data_header(self, stream_id: int, length: int, flags: int) -> bool:
        """A DATA frame starts (stream id is not 0). True: deliver its payload."""

    def on_data_payload(self, stream_id: int, data: memoryview) -> None:
        """Payload bytes of a delivered DATA frame (a slice of the input, maybe partial)."""

    def on_data_padding(self, stream_id: int, size: int) -> None:
        """A delivered DATA frame carries `size` flow-controlled bytes of padding."""

    def on_data_end_stream(self, stream_id: int) -> None:
        """A delivered DATA frame with END_STREAM is complete."""

    def on_window_update(self, stream_id: int, increment: int) -> None:
        """A WINDOW_UPDATE frame."""

    def on_goaway(self, stream_id: int, last_stream_id: int, code: int, debug: bytes) -> None:
        """A GOAWAY frame."""


class FrameSplitter:
    """Splits received bytes into frames for a `FrameSink`, copying only partial frame
    headers and non-DATA bodies that arrive split across reads.

    Enforces what framing alone decides: the client preface, our maximum frame size, the sizes
    of WINDOW_UPDATE and GOAWAY frames, DATA padding, and that nothing but CONTINUATION follows
    an unfinished header block (that one is left to h2).

    Header blocks are bounded by `max_header_list_size`: h2 buffers a block until its last
    CONTINUATION frame before decoding it, up to 64 frames of our 1 MiB maximum, so a client
    could park 64 MiB per connection in unfinished blocks (the CONTINUATION flood). A block is
    compressed and never needs more bytes than the header list it decodes to (each field of the
    list counts 32 bytes on top of its name and value), plus the padding and priority fields a
    HEADERS frame may carry: a longer one is refused as it arrives, with ENHANCE_YOUR_CALM.
    """

    __slots__ = (
        "_body_kind",
        "_data_left",
        "_deliver",
        "_frame_flags",
        "_frame_header",
        "_frame_length",
        "_frame_stream",
        "_halted",
        "_header_block_open",
        "_header_block_size",
        "_max_header_block",
        "_need",
        "_pad_left",
        "_sink",
        "_stash",
        "_state",
    )

    def __init__(self, sink: FrameSink, *, expect_preface: bool, max_header_list_size: int) -> None:
        self._sink = sink
        self._max_header_block = max_header_list_size + _HEADERS_FRAME_EXTRA
        self._header_block_size = 0
        self._state = _S_PREFACE if expect_preface else _S_HEADER
        self._need = len(PREFACE) if expect_preface else 9
        self._stash = bytearray()
        self._halted = False
        self._header_block_open = False
        self._frame_length = 0
        self._frame_flags = 0
        self._frame_stream = 0
        self._frame_header = b""
        self._body_kind = _BODY_H2
        self._deliver = False
        self._data_left = 0
        self._pad_left = 0

    def halt(self) -> None:
        """Ignore all further input (the connection ended)."""
        self._halted = True

    def feed(self, view: memoryview) -> None:
        """Parse `view`, reporting complete frames and DATA payload slices to the sink.

        Raises `ProtocolViolation` on a framing error (and whatever the sink raises).
        """
        pos = 0
        end = len(view)
        sink = self._sink
        while pos < end and not self._halted:
            state = self._state
            if state == _S_PAYLOAD:
                take = min(self._data_left, end - pos)
                if self._deliver:
                    sink.on_data_payload(self._frame_stream, view[pos : pos + take])
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
        if unit != PREFACE:
            raise ProtocolViolation(
                ErrorCodes.PROTOCOL_ERROR, "invalid HTTP/2 client preface (is the peer HBONE?)"
            )
        self._sink.on_h2_frame(PREFACE)
        self._expect(_S_HEADER, 9)

    def _on_frame_header(self, unit: memoryview) -> None:
        word, flags, stream_id = _FRAME_HEADER.unpack(unit)
        length = word >> 8
        ftype = word & 0xFF
        stream_id &= MAX_STREAM_ID
        if length > MAX_FRAME_SIZE:
            raise ProtocolViolation(
                ErrorCodes.FRAME_SIZE_ERROR,
                f"frame of {length} bytes exceeds the maximum frame size {MAX_FRAME_SIZE}",
            )
        self._frame_length = length
        self._frame_flags = flags
        self._frame_stream = stream_id
        if self._header_block_open:
            # Only CONTINUATION may follow an unfinished header block; h2 judges the rest.
            self._header_block_open = not (ftype == _CONTINUATION and flags & _FLAG_END_HEADERS)
            self._count_header_block(length)
            self._start_body(_BODY_H2, unit)
        elif ftype == _DATA:
            self._on_data_header()
        elif ftype == _WINDOW_UPDATE:
            if length != 4:
                raise ProtocolViolation(
                    ErrorCodes.FRAME_SIZE_ERROR, f"WINDOW_UPDATE frame of {length} bytes"
                )
            self._start_body(_BODY_WINDOW_UPDATE, unit)
        elif ftype == _GOAWAY:
            if length < 8:
                raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, f"GOAWAY frame of {length}")
            self._start_body(_BODY_GOAWAY, unit)
        else:
            if ftype in (_HEADERS, _PUSH_PROMISE):
                self._header_block_size = 0
                self._count_header_block(length)
                self._header_block_open = not flags & _FLAG_END_HEADERS
            self._start_body(_BODY_H2, unit)

    def _count_header_block(self, length: int) -> None:
        self._header_block_size += length
        if self._header_block_size > self._max_header_block:
            raise ProtocolViolation(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"a header block of {self._header_block_size} bytes exceeds the header list "
                f"limit of {self._max_header_block - _HEADERS_FRAME_EXTRA} bytes",
            )

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
            self._sink.on_h2_frame(self._frame_header + body)
        elif kind == _BODY_WINDOW_UPDATE:
            increment = _U32.unpack(body)[0] & _MAX_WINDOW_INCREMENT
            self._sink.on_window_update(self._frame_stream, increment)
        else:
            last, code = _GOAWAY_FIXED.unpack_from(body)
            self._sink.on_goaway(self._frame_stream, last & MAX_STREAM_ID, code, bytes(body[8:]))

    # DATA frames.

    def _on_data_header(self) -> None:
        stream_id = self._frame_stream
        length = self._frame_length
        if stream_id == 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "DATA frame on stream 0")
        self._deliver = self._sink.on_data_header(stream_id, length, self._frame_flags)
        if self._frame_flags & _FLAG_PADDED:
            if length == 0:
                raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "padded DATA frame is empty")
            self._expect(_S_PADLEN, 1)
        else:
            self._data_left = length
            self._pad_left = 0
            self._state = _S_PAYLOAD
            if length == 0:
                self._after_payload()

    def _on_pad_length(self, pad: int) -> None:
        if pad >= self._frame_length:
            raise ProtocolViolation(
                ErrorCodes.PROTOCOL_ERROR,
                f"DATA padding of {pad} bytes does not fit a {self._frame_length}-byte frame",
            )
        self._data_left = self._frame_length - 1 - pad
        self._pad_left = pad
        if self._deliver:
            self._sink.on_data_padding(self._frame_stream, pad + 1)
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
        if self._deliver and self._frame_flags & FLAG_END_STREAM:
            self._sink.on_data_end_stream(self._frame_stream)


# --- outgoing -----------------------------------------------------------------------------


class OutputQueue:
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
        """Bytes already framed (h2's output)."""
        self._small += data
        self._size += len(data)

    def data_frames(self, stream_id: int, view: memoryview, frame_size: int) -> None:
        """DATA frames without flags carrying all of `view`, each at most `frame_size`."""
        offset = 0
        size = len(view)
        while offset < size:
            chunk = min(frame_size, size - offset)
            self._frame_header(chunk, _DATA, 0, stream_id)
            self._append_payload(view[offset : offset + chunk])
            offset += chunk

    def window_update(self, stream_id: int, increment: int) -> None:
        self._frame_header(4, _WINDOW_UPDATE, 0, stream_id)
        self.append(_U32.pack(increment))

    def goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        self._frame_header(8 + len(debug), _GOAWAY, 0, 0)
        self.append(_GOAWAY_FIXED.pack(last_stream_id, code))
        self.append(debug)

    def take(self) -> list[Bytes]:
        """Everything queued, in order; the queue is empty afterwards."""
        if self._small:
            self._segments.append(self._small)
            self._small = bytearray()
        segments = self._segments
        self._segments = []
        self._size = 0
        return segments

    def _frame_header(self, length: int, ftype: int, flags: int, stream_id: int) -> None:
        self._small += _FRAME_HEADER.pack(length << 8 | ftype, flags, stream_id)
        self._size += 9

    def _append_payload(self, view: memoryview) -> None:
        if len(view) < _ZERO_COPY_MIN:
            # Small payloads travel with their header: one TLS record, not two.
            self.append(view)
            return
        if self._small:
            self._segments.append(self._small)
            self._small = bytearray()
        self._segments.append(view)
        self._size += len(view)
