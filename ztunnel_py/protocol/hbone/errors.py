"""Errors of the sans-IO HBONE core.

Receiving never raises: bad input becomes a `ConnectionTerminated` event (see `events`). The
methods that send raise `HboneCoreError` subclasses when the connection or stream cannot do what
was asked in its current state. (The trio driver has its own `HboneError` hierarchy, which is
what applications see.)
"""

from __future__ import annotations

__all__ = [
    "ConnectionClosedError",
    "HboneCoreError",
    "ProtocolViolation",
    "StreamClosedError",
    "StreamLimitError",
]


class HboneCoreError(Exception):
    """Base of the errors the HBONE core raises when asked to send."""


class ConnectionClosedError(HboneCoreError):
    """The connection is terminated, or draining after a GOAWAY: no new streams."""


class StreamClosedError(HboneCoreError):
    """The stream is unknown, reset, or already closed in the direction asked for."""


class StreamLimitError(HboneCoreError):
    """No stream is available on this connection (concurrency limit or stream ids exhausted)."""


class ProtocolViolation(Exception):
    """The peer broke the protocol badly enough to end the connection (a connection error).

    Raised while parsing input and turned by the core into a GOAWAY with `code` and a
    `ConnectionTerminated` event; never leaves the core. `goaway_queued` is true when h2 already
    queued the GOAWAY itself.
    """

    def __init__(self, code: int, reason: str, *, goaway_queued: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.goaway_queued = goaway_queued
