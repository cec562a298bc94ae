"""Events the HTTP codecs produce, the same for HTTP/1.1 and HTTP/2, servers and clients.

Events as data (h11's style): a codec turns received bytes into a list of these, and the driver
dispatches on their type. Every event names its stream: HTTP/2's stream id, or for HTTP/1.1 a
number per request/response exchange on the connection (1, 3, 5, ... like a client's HTTP/2
stream ids), so a driver treats both versions alike.

A message is a head, any number of `DataReceived`, and an end: `MessageEnded` (with trailers
when the peer sent some). `StreamReset` ends a stream abruptly; `ConnectionEnded` ends every
stream. `BadRequest` is what a server codec reports instead of a request it cannot accept: the
status to answer (400 malformed, 431 headers too large) and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztunnel_py.http.message import Headers, RequestHead, ResponseHead

__all__ = [
    "BadRequest",
    "ConnectionEnded",
    "DataReceived",
    "Event",
    "InformationalReceived",
    "MessageEnded",
    "RequestReceived",
    "ResponseReceived",
    "StreamReset",
    "Switched",
    "WindowOpened",
]


@dataclass(slots=True)
class RequestReceived:
    stream_id: int
    head: RequestHead
    # no body follows (HTTP/2 END_STREAM on HEADERS; HTTP/1.1 without a body)
    end_stream: bool


@dataclass(slots=True)
class ResponseReceived:
    stream_id: int
    head: ResponseHead
    end_stream: bool


@dataclass(slots=True)
class InformationalReceived:
    """A 1xx response (100 Continue, 103 Early Hints; 101 comes as `Switched`)."""

    stream_id: int
    head: ResponseHead


@dataclass(slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    # HTTP/2: bytes to acknowledge once consumed (padding included); 0 for HTTP/1.1
    flow_controlled: int = 0


@dataclass(slots=True)
class MessageEnded:
    stream_id: int
    trailers: Headers | None = None


@dataclass(slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    # True when the peer reset it; False when the codec did (a stream-level protocol error)
    remote: bool = True


@dataclass(slots=True)
class WindowOpened:
    """HTTP/2 flow control: more may be sent on `stream_id` (0: the whole connection)."""

    stream_id: int


@dataclass(slots=True)
class Switched:
    """HTTP/1.1 switched protocols (101 to an Upgrade, 2xx to CONNECT): the connection now
    carries raw bytes; `trailing` were received after the handshake."""

    stream_id: int
    head: ResponseHead | None
    trailing: bytes


@dataclass(slots=True)
class BadRequest:
    stream_id: int
    status: int
    reason: str


@dataclass(slots=True)
class ConnectionEnded:
    # empty for an orderly close; otherwise what went wrong (protocol error, GOAWAY reason)
    reason: str = ""
    error: bool = False


Event = (
    RequestReceived
    | ResponseReceived
    | InformationalReceived
    | DataReceived
    | MessageEnded
    | StreamReset
    | WindowOpened
    | Switched
    | BadRequest
    | ConnectionEnded
)
