"""HBONE over trio: HTTP/2 CONNECT tunnels inside TLS 1.3, for the agent and the waypoint.

The sans-IO core (`ztunnel_py.protocol.hbone`) does the HTTP/2; this package runs it over a
`transport.tls.TlsTransport` (TLS on `ssl.MemoryBIO`) and gives each tunnel to its user as a
byte stream. Pooling client connections is `transport.pool`, on top of this package.

Serving (an agent's inbound 15008, a waypoint's downstream side)::

    async def handler(request: HboneRequest) -> None:
        # request.authority ("10.0.0.7:8080"), request.headers, request.header("baggage"),
        # request.peer_identity (the client's verified SPIFFE identity),
        # request.peer_address / request.local_address
        stream = await request.respond(200)  # or: await request.respond(401) -> None
        ...  # stream.receive_some() / send_all() / send_eof() / aclose()

    await serve_hbone_connection(
        accepted_socket, server_ssl_context, verify_client=check_identity, handler=handler
    )

`serve_hbone_connection` runs one accepted connection until it ends, each CONNECT's handler in
its own task. A handler that returns without answering gets a 503 sent for it; its stream is
reset once the handler returns. A handler whose stream is reset by the client, or whose
connection ends, before it answered is cancelled (it may be cancelled before its first
checkpoint, so release what it acquired in `finally`/`except`). Handlers that have not finished
count toward the connection's stream limit: CONNECTs beyond it are refused with RST_STREAM
(REFUSED_STREAM), and a client resetting most of its requests before they are answered is
disconnected with GOAWAY ENHANCE_YOUR_CALM.

Connecting (an agent's outbound side, a waypoint's upstream side)::

    conn = await connect_hbone(
        connected_socket, client_ssl_context,
        expected_identities=[server_identity], verify=verify_server_identity, nursery=nursery,
    )
    stream = await conn.open_stream("10.0.0.7:8080", [("baggage", "...")])

`HboneStream` is a half-closeable trio byte stream (`receive_some` returns a memoryview valid
until the next call). Errors: `HboneHandshakeError` (setup), `HboneStatusError` (the CONNECT got
another status), `HboneUnavailableError` (no new stream on this connection), `HboneStreamError`
(the tunnel broke; a `trio.BrokenResourceError`), all `HboneError`s.

Modules: `stream` (the byte stream and the internal stream <-> connection API), `connection`
(reader, writer, keepalive, termination), `client`, `server`, `buffers` (receive buffer reuse),
`errors`.
"""

from ztunnel_py.transport.hbone.client import HboneClientConnection, ServerVerifier, connect_hbone
from ztunnel_py.transport.hbone.connection import ALPN_H2, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT
from ztunnel_py.transport.hbone.errors import (
    HboneError,
    HboneHandshakeError,
    HboneStatusError,
    HboneStreamError,
    HboneUnavailableError,
)
from ztunnel_py.transport.hbone.server import (
    ClientVerifier,
    Handler,
    HboneRequest,
    serve_hbone_connection,
)
from ztunnel_py.transport.hbone.stream import HboneStream

__all__ = [
    "ALPN_H2",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_TIMEOUT",
    "ClientVerifier",
    "Handler",
    "HboneClientConnection",
    "HboneError",
    "HboneHandshakeError",
    "HboneRequest",
    "HboneStatusError",
    "HboneStream",
    "HboneStreamError",
    "HboneUnavailableError",
    "ServerVerifier",
    "connect_hbone",
    "serve_hbone_connection",
]
