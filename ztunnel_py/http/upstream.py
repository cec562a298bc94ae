"""Pooled upstream HTTP connections, keyed by endpoint and protocol.

An HTTP/1.1 connection carries one request at a time and goes back to the pool when its
exchange is complete and the connection is reusable; an HTTP/2 connection carries up to the
peer's concurrency limit at once. Concurrent first requests to one HTTP/2 endpoint share one
dial (a per-key lock), so a burst does not open a connection per request. Connections idle for
`idle_timeout` are closed. How a connection is made (an HBONE tunnel for a waypoint, a TCP
connection for a sidecar) is the target's `connect`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import trio

from ztunnel_py.http.connection import ClientConnection, ClientStream, StreamError
from ztunnel_py.http.message import RequestHead
from ztunnel_py.transport.relay import ByteStream

log = logging.getLogger(__name__)

__all__ = ["UpstreamConnectError", "UpstreamPool", "UpstreamTarget"]

DEFAULT_IDLE_TIMEOUT = 300.0


class UpstreamConnectError(Exception):
    """No connection to the endpoint could be made (Envoy's `UF`)."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One endpoint as the engine reaches it."""

    key: Hashable
    # "ip:port", for logs and %UPSTREAM_HOST%
    address: str
    http2: bool
    connect: Callable[[], Awaitable[ByteStream]] = field(compare=False, hash=False)
    # whatever the app wants back in telemetry (e.g. the destination workload)
    info: Any = field(default=None, compare=False, hash=False)


class UpstreamPool:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = 10.0,
    ) -> None:
        self._nursery = nursery
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._conns: dict[tuple[Hashable, bool], list[ClientConnection]] = {}
        self._locks: dict[tuple[Hashable, bool], trio.Lock] = {}
        self._reaper_started = False

    @property
    def connection_count(self) -> int:
        """Connections open now (a protocol switch takes one out of the pool)."""
        return sum(1 for conns in self._conns.values() for c in conns if not c.closed)

    def _available(self, key: tuple[Hashable, bool]) -> ClientConnection | None:
        conns = self._conns.get(key)
        if not conns:
            return None
        live = [c for c in conns if not c.closed]
        if len(live) != len(conns):
            self._conns[key] = live
        for c in live:
            if c.available:
                return c
        return None

    async def _connect(self, target: UpstreamTarget) -> ClientConnection:
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await target.connect()
        except trio.TooSlowError:
            raise UpstreamConnectError(f"connect to {target.address} timed out") from None
        except UpstreamConnectError:
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise UpstreamConnectError(f"connect to {target.address} failed: {e}") from None
        conn = ClientConnection(stream, http2=target.http2)
        await self._nursery.start(self._run, conn, (target.key, target.http2))
        if not self._reaper_started:
            self._reaper_started = True
            self._nursery.start_soon(self._reap)
        return conn

    async def _run(
        self,
        conn: ClientConnection,
        key: tuple[Hashable, bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the connection while it is pooled; it leaves the pool when it ends."""
        self._conns.setdefault(key, []).append(conn)
        try:
            await conn.run(task_status=task_status)
        finally:
            conns = self._conns.get(key)
            if conns is not None and conn in conns:
                conns.remove(conn)
                if not conns:
                    del self._conns[key]

    async def open_stream(
        self, target: UpstreamTarget, head: RequestHead, *, end_stream: bool
    ) -> ClientStream:
        """A stream to `target` carrying `head`: on a pooled connection when one is free."""
        key = (target.key, target.http2)
        conn = self._available(key)
        if conn is None:
            if target.http2:
                lock = self._locks.setdefault(key, trio.Lock())
                async with lock:
                    conn = self._available(key) or await self._connect(target)
            else:
                conn = await self._connect(target)
        try:
            return await conn.open_stream(head, end_stream=end_stream)
        except StreamError:
            # the pooled connection died under us: one fresh try
            conn = await self._connect(target)
            return await conn.open_stream(head, end_stream=end_stream)

    def _all(self) -> list[ClientConnection]:
        return [c for conns in self._conns.values() for c in conns]

    async def _reap(self) -> None:
        while True:
            await trio.sleep(min(self._idle_timeout, 30.0))
            now = trio.current_time()
            for c in self._all():
                if not c.closed and not c.streams and now - c.last_used > self._idle_timeout:
                    # it leaves the pool when its reader ends
                    self._nursery.start_soon(c.aclose)
            for key in [k for k, lock in self._locks.items() if k not in self._conns]:
                if not self._locks[key].locked():
                    del self._locks[key]

    async def aclose(self) -> None:
        for c in self._all():
            await c.aclose()
