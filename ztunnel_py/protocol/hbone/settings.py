"""The HTTP/2 settings and abuse limits of an HBONE connection.

The settings are ztunnel's: 4 MiB stream and 16 MiB connection receive windows, DATA frames up
to 1 MiB, header lists up to 16 KiB (client) / 64 KiB (server), 200 concurrent streams advertised
by the server, server push disabled. An HBONE client uses at most 100 streams per connection
before it opens another one.

The abuse limits close a connection with GOAWAY ENHANCE_YOUR_CALM, as Envoy and the Rust h2
crate (ztunnel's HTTP/2 stack) did after the HTTP/2 "rapid reset" attack (CVE-2023-44487), where
a client opens streams and resets them at once: each reset stream leaves the server with work
(a handler, an upstream connection) while no longer counting against MAX_CONCURRENT_STREAMS.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_MAX_HEADER_LIST_SIZE",
    "CONNECTION_WINDOW",
    "DEFAULT_MAX_STREAMS_PER_CONNECTION",
    "MAX_FRAME_SIZE",
    "MAX_LOCAL_ERROR_RESETS",
    "PREMATURE_RESET_MAX_LIFETIME",
    "PREMATURE_RESET_MIN_REQUESTS",
    "SERVER_MAX_CONCURRENT_STREAMS",
    "SERVER_MAX_HEADER_LIST_SIZE",
    "STREAM_WINDOW",
]

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024
CLIENT_MAX_HEADER_LIST_SIZE = 16 * 1024
SERVER_MAX_HEADER_LIST_SIZE = 64 * 1024
SERVER_MAX_CONCURRENT_STREAMS = 200
DEFAULT_MAX_STREAMS_PER_CONNECTION = 100

# Envoy's rule for premature resets: once a connection carried PREMATURE_RESET_MIN_REQUESTS
# requests, it is closed when at least half of them were premature: reset by the client before
# they were answered and within PREMATURE_RESET_MAX_LIFETIME seconds of arriving (a client
# giving up on a slow upstream is not an attack).
PREMATURE_RESET_MIN_REQUESTS = 500
PREMATURE_RESET_MAX_LIFETIME = 1.0
# The Rust h2 crate's bound on streams a server resets because the client misbehaved on them
# (malformed requests, streams beyond the limit, flow-control errors): past it, the client is
# abusive and the connection is closed.
MAX_LOCAL_ERROR_RESETS = 1024
