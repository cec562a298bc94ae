"""The errors HBONE connections and streams raise to their users."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ztunnel_py.protocol.hbone import ErrorCodes, Header

__all__ = [
    "HboneError",
    "HboneHandshakeError",
    "HboneStatusError",
    "HboneStreamError",
    "HboneUnavailableError",
]


class HboneError(Exception):
    """Base of the HBONE driver's errors; `reason` says what happened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HboneHandshakeError(HboneError):
    """The connection could not be set up: TLS, peer identity, ALPN or HTTP/2 preface."""


class HboneUnavailableError(HboneError):
    """This connection takes no new streams (closed, draining, or at its stream limit)."""


class HboneStatusError(HboneError):
    """The server answered the CONNECT with a status other than 200."""

    def __init__(self, status: int, headers: Sequence[Header] = ()) -> None:
        super().__init__(f"HBONE CONNECT was answered with status {status}")
        self.status = status
        self.headers = tuple(headers)


class HboneStreamError(HboneError, trio.BrokenResourceError):
    """The stream broke: reset by the peer or locally, or its connection was lost.

    A `trio.BrokenResourceError`, as trio's own streams report a broken stream.

    `retryable` is true when the peer refused the stream before processing it (GOAWAY or
    REFUSED_STREAM): the request can safely go out on another connection.
    """

    def __init__(self, reason: str, *, error_code: int | None = None) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.retryable = error_code == ErrorCodes.REFUSED_STREAM
