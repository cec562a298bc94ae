"""Sans-IO HBONE core: HTTP/2 CONNECT tunnels, bytes in, events out.

`HboneClient` opens CONNECT streams, `HboneServer` accepts and answers them. Both turn received
bytes into `Event`s (`receive_data`) and queue the bytes to write (`data_to_send`, or
`buffers_to_send` without copying payloads); neither does any I/O. The trio driver that runs them
over TLS is `ztunnel_py.transport.hbone`.

The package, along its seams:

- `events`: what `receive_data` returns.
- `errors`: what the sending methods raise (`HboneCoreError` and its subclasses).
- `settings`: ztunnel's HTTP/2 settings and the abuse limits.
- `authority`: the CONNECT `:authority` and header rules.
- `framing`: the frames that bypass h2 (DATA, WINDOW_UPDATE, GOAWAY) and why.
- `connection`: what client and server share (streams, flow control, GOAWAY, PING).
- `client`, `server`: the two roles.
"""

from h2.errors import ErrorCodes

from ztunnel_py.protocol.hbone.client import HboneClient
from ztunnel_py.protocol.hbone.connection import error_name
from ztunnel_py.protocol.hbone.errors import (
    ConnectionClosedError,
    HboneCoreError,
    StreamClosedError,
    StreamLimitError,
)
from ztunnel_py.protocol.hbone.events import (
    ConnectionTerminated,
    ConnectRequest,
    DataReceived,
    Event,
    GoAwayReceived,
    Header,
    PingAcknowledged,
    RequestRefused,
    RequestRejected,
    Response,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from ztunnel_py.protocol.hbone.server import HboneServer
from ztunnel_py.protocol.hbone.settings import (
    CLIENT_MAX_HEADER_LIST_SIZE,
    CONNECTION_WINDOW,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    MAX_FRAME_SIZE,
    SERVER_MAX_CONCURRENT_STREAMS,
    SERVER_MAX_HEADER_LIST_SIZE,
    STREAM_WINDOW,
)

__all__ = [
    "CLIENT_MAX_HEADER_LIST_SIZE",
    "CONNECTION_WINDOW",
    "DEFAULT_MAX_STREAMS_PER_CONNECTION",
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
    "HboneCoreError",
    "HboneServer",
    "Header",
    "PingAcknowledged",
    "RequestRefused",
    "RequestRejected",
    "Response",
    "StreamClosedError",
    "StreamEnded",
    "StreamLimitError",
    "StreamReset",
    "WindowOpened",
    "error_name",
]
