"""The HTTP/2 settings of an HBONE connection.

The settings are ztunnel's: 4 MiB stream and 16 MiB connection receive windows, DATA frames up
to 1 MiB, header lists up to 16 KiB (client) / 64 KiB (server), 200 concurrent streams advertised
by the server, server push disabled. An HBONE client uses at most 100 streams per connection
before it opens another one.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_MAX_HEADER_LIST_SIZE",
    "CONNECTION_WINDOW",
    "DEFAULT_MAX_STREAMS_PER_CONNECTION",
    "MAX_FRAME_SIZE",
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
