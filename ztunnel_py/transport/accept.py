"""Accept loops that survive running out of resources, with caps on open connections.

`serve_connections` accepts from a listening trio socket and runs a handler per connection in
a nursery, closing the socket when the handler returns. It never ends on an accept error that
concerns capacity or a single connection:

- EMFILE/ENFILE (no descriptor left in the process or the system), ENOBUFS and ENOMEM: it logs,
  waits 100 ms and accepts again, as trio's `serve_listeners` does; meanwhile connections wait in
  the kernel's backlog. (An agent whose accept loop raised here exited, and every pod of its
  node dropped off the mesh until it was restarted.)
- errors about the connection being accepted (reset while it waited in the backlog, and the
  rest of the list trio's `SocketListener` ignores): the next one is accepted at once.

`ConnectionLimit`s cap how many accepted connections are open at once; a listener usually
counts against its own limit and one shared by the whole process. A connection arriving while
any of its limits is full is closed at once with a TCP reset (as Envoy treats connections over
its limits), which keeps the backlog draining and lets a flood on one listener take neither
every descriptor of the process nor every connection slot of the others.

Both conditions are logged at most every 10 s per listener, with how often they happened.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from ztunnel_py.transport.relay import close_with_reset

__all__ = ["ConnectionLimit", "serve_connections"]

log = logging.getLogger("ztunnel_py.transport.accept")

# accept(2) failing for lack of resources: retry after a pause (trio's serve_listeners' list).
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CAPACITY_PAUSE = 0.1
# accept(2) failing for the connection at hand only: accept the next one (trio's list).
_CONNECTION_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
LOG_PERIOD = 10.0

Handler = Callable[[trio.socket.SocketType], Awaitable[None]]


class ConnectionLimit:
    """At most `cap` connections open at once; `name` says whose in logs."""

    def __init__(self, name: str, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"connection limit {name!r} must be at least 1, not {cap}")
        self.name = name
        self.cap = cap
        self.open = 0

    @property
    def full(self) -> bool:
        return self.open >= self.cap


class _Throttled:
    """A warning logged at most once per `LOG_PERIOD`, counting the occurrences in between."""

    def __init__(self) -> None:
        self._last = -math.inf
        self._count = 0

    def warn(self, message: str, *args: object) -> None:
        self._count += 1
        now = trio.current_time()
        if now - self._last < LOG_PERIOD:
            return
        times = f" ({self._count} times in {LOG_PERIOD:g} s)" if self._count > 1 else ""
        log.warning(message + times, *args)
        self._last, self._count = now, 0


async def serve_connections(
    listener: trio.socket.SocketType,
    handler: Handler,
    nursery: trio.Nursery,
    limits: Sequence[ConnectionLimit] = (),
    *,
    name: str,
) -> NoReturn:
    """Accept connections on `listener` until cancelled; each runs `handler(sock)` in a task
    of `nursery` and counts against every one of `limits` until it ends. `name` (e.g. the
    pod and port) goes into the log lines."""
    starved, refused = _Throttled(), _Throttled()
    while True:
        try:
            sock, _ = await listener.accept()
        except OSError as e:
            if e.errno in CAPACITY_ERRNOS:
                starved.warn(
                    "%s: cannot accept connections: %s; retrying every %g s",
                    name,
                    os.strerror(e.errno),
                    CAPACITY_PAUSE,
                )
                await trio.sleep(CAPACITY_PAUSE)
                continue
            if e.errno in _CONNECTION_ERRNOS:
                continue
            raise
        full = next((limit for limit in limits if limit.full), None)
        if full is not None:
            close_with_reset(sock)
            refused.warn(
                "%s: refused a connection: %d connections of %s are open (the limit)",
                name,
                full.cap,
                full.name,
            )
            continue
        for limit in limits:
            limit.open += 1
        nursery.start_soon(_serve, handler, sock, limits)


async def _serve(
    handler: Handler, sock: trio.socket.SocketType, limits: Sequence[ConnectionLimit]
) -> None:
    try:
        await handler(sock)
    finally:
        sock.close()
        for limit in limits:
            limit.open -= 1
