"""What the HBONE core reports: everything `receive_data` returns is an `Event`.

Events are plain frozen data. A server sees `ConnectRequest` / `RequestRejected` /
`RequestRefused`, a client sees `Response`; both see the stream and connection events.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectRequest",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "Header",
    "PingAcknowledged",
    "RequestRefused",
    "RequestRejected",
    "Response",
    "StreamEnded",
    "StreamReset",
    "WindowOpened",
]

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of everything `receive_data` returns."""


@dataclass(frozen=True, slots=True)
class ConnectRequest(Event):
    """Server: a valid CONNECT arrived; answer it with `HboneServer.respond`.

    It holds one of the connection's MAX_CONCURRENT_STREAMS slots until the application calls
    `HboneServer.finish_request`, even once the stream is closed or reset.
    """

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
class RequestRefused(Event):
    """Server: a request was refused with RST_STREAM before the application saw it."""

    stream_id: int
    error_code: int
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
