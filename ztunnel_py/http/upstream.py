"""Pooled upstream HTTP connections, keyed by endpoint and protocol, within each cluster's
connection pool limits.

An HTTP/1.1 connection carries one request at a time and goes back to the pool when its
exchange is complete and the connection is reusable; an HTTP/2 connection carries up to the
peer's concurrency limit at once. Concurrent first requests to one HTTP/2 endpoint share one
dial (a per-key lock), so a burst does not open a connection per request. Connections idle for
their idle timeout are closed. How a connection is made (an HBONE tunnel for a waypoint, a TCP
connection for a sidecar) is the target's `connect`.

A target of a `Cluster` (the waypoint's) is held to its DestinationRule connection pool, as
Envoy's circuit breakers and connection pools do it:

- upstream requests in flight in the cluster over `max_requests`: `UpstreamOverflow` at once;
- no free connection to the endpoint and the cluster at `max_connections`: the request waits
  (pending) for a connection of the endpoint to free up, or for room for a new one; over
  `max_pending_requests` waiting: `UpstreamOverflow`. An endpoint without any connection may
  always open one (Envoy does the same, or requests for it could wait forever);
- a connection takes `max_requests_per_connection` requests at most and lives
  `max_connection_duration` at most (then it takes no new ones and closes once idle); it is
  closed after `idle_timeout` idle, and dialling it may take `connect_timeout`.

The pool keeps the cluster's counters (connections, pending, requests in flight overall and
per endpoint) from the moment a dial starts or a request asks for a stream until it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import trio

from ztunnel_py.http.cluster import Cluster
from ztunnel_py.http.connection import ClientConnection, ClientStream, StreamError
from ztunnel_py.http.message import RequestHead
from ztunnel_py.transport.relay import ByteStream

log = logging.getLogger(__name__)

__all__ = ["UpstreamConnectError", "UpstreamOverflow", "UpstreamPool", "UpstreamTarget"]

DEFAULT_IDLE_TIMEOUT = 300.0
_REAP_INTERVAL = 30.0


class UpstreamConnectError(Exception):
    """No connection to the endpoint could be made (Envoy's `UF`)."""


class UpstreamOverflow(Exception):
    """A circuit breaker of the endpoint's cluster is open (Envoy's `UO`)."""


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
    # the cluster whose limits apply and whose state the outcome updates (None: no limits)
    cluster: Cluster | None = field(default=None, compare=False, hash=False)


@dataclass(slots=True)
class _Settings:
    """A connection's lifetime limits, from its cluster's connection pool when it has one."""

    idle_timeout: float
    max_requests: int = 0
    max_duration: float | None = None

    def expired(self, conn: ClientConnection, now: float) -> bool:
        return self.max_duration is not None and now - conn.created >= self.max_duration


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
        self._settings: dict[ClientConnection, _Settings] = {}
        self._locks: dict[tuple[Hashable, bool], trio.Lock] = {}
        # dials in progress per key: a connection to come counts as the endpoint's
        self._dialing: dict[tuple[Hashable, bool], int] = {}
        # new HTTP/1.1 connections kept for the request that dialled them until it opened its
        # stream: a pending request must not take one first
        self._reserved: set[ClientConnection] = set()
        self._reaper_started = False
        self._reap_every = min(idle_timeout, _REAP_INTERVAL)
        # set (and replaced) whenever a stream or a connection ends: pending requests look again
        self._changed = trio.Event()

    @property
    def connection_count(self) -> int:
        """Connections open now (a protocol switch takes one out of the pool)."""
        return sum(1 for conns in self._conns.values() for c in conns if not c.closed)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _available(self, key: tuple[Hashable, bool]) -> ClientConnection | None:
        conns = self._conns.get(key)
        if not conns:
            return None
        live = [c for c in conns if not c.closed]
        if len(live) != len(conns):
            self._conns[key] = live
        now = trio.current_time()
        for c in live:
            settings = self._settings.get(c)
            if settings is not None and settings.expired(c, now):
                self._retire(c)
            if c.available and c not in self._reserved:
                return c
        return None

    def _retire(self, conn: ClientConnection) -> None:
        conn.retiring = True
        if not conn.streams and not conn.closed:
            self._nursery.start_soon(conn.aclose)

    async def _connect(self, target: UpstreamTarget) -> ClientConnection:
        cluster = target.cluster
        pool = cluster.policy.connection_pool if cluster is not None else None
        timeout = (pool.connect_timeout if pool else None) or self._connect_timeout
        key = (target.key, target.http2)
        if cluster is not None:
            cluster.connections += 1
            cluster.stats["upstream_cx_total"] += 1
        self._dialing[key] = self._dialing.get(key, 0) + 1
        try:
            try:
                with trio.fail_after(timeout):
                    stream = await target.connect()
            except BaseException as e:
                if cluster is not None:
                    cluster.connections -= 1
                    self._notify()
                if isinstance(e, trio.TooSlowError):
                    raise UpstreamConnectError(f"connect to {target.address} timed out") from None
                if isinstance(e, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                    raise UpstreamConnectError(f"connect to {target.address} failed: {e}") from None
                raise
            if cluster is not None:
                cluster.report_connected(target.address)
            conn = ClientConnection(stream, http2=target.http2)
            idle = (pool.idle_timeout if pool else None) or self._idle_timeout
            self._settings[conn] = _Settings(
                idle,
                pool.max_requests_per_connection if pool else 0,
                pool.max_connection_duration if pool else None,
            )
            self._reap_every = min(self._reap_every, idle)
            if not target.http2:
                self._reserved.add(conn)
            await self._nursery.start(self._run, conn, key, cluster)
        finally:
            # counted as a dial until it is in the pool
            left = self._dialing[key] - 1
            if left:
                self._dialing[key] = left
            else:
                del self._dialing[key]
        if not self._reaper_started:
            self._reaper_started = True
            self._nursery.start_soon(self._reap)
        return conn

    async def _run(
        self,
        conn: ClientConnection,
        key: tuple[Hashable, bool],
        cluster: Cluster | None,
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
            self._settings.pop(conn, None)
            self._reserved.discard(conn)
            if cluster is not None:
                cluster.connections -= 1
            self._notify()

    def _has_connection(self, key: tuple[Hashable, bool]) -> bool:
        """The endpoint has a connection, or one being made."""
        return bool(self._conns.get(key) or self._dialing.get(key))

    async def _dial(self, target: UpstreamTarget, key: tuple[Hashable, bool]) -> ClientConnection:
        if target.http2:
            lock = self._locks.setdefault(key, trio.Lock())
            async with lock:
                return self._available(key) or await self._connect(target)
        return await self._connect(target)

    async def _connection(
        self, target: UpstreamTarget, key: tuple[Hashable, bool]
    ) -> ClientConnection:
        """A connection that can take a stream now: pooled, new, or (at the cluster's
        connection limit) the first of this endpoint's to free up."""
        conn = self._available(key)
        if conn is not None:
            return conn
        cluster = target.cluster
        if cluster is None or cluster.can_connect() or not self._has_connection(key):
            return await self._dial(target, key)
        cluster.stats["upstream_cx_overflow"] += 1
        if not cluster.can_queue():
            cluster.stats["upstream_rq_pending_overflow"] += 1
            raise UpstreamOverflow(f"{cluster.name}: too many requests waiting for a connection")
        cluster.pending += 1
        try:
            while True:
                await self._changed.wait()
                conn = self._available(key)
                if conn is not None:
                    return conn
                if cluster.can_connect() or not self._has_connection(key):
                    return await self._dial(target, key)
        finally:
            cluster.pending -= 1

    async def open_stream(
        self, target: UpstreamTarget, head: RequestHead, *, end_stream: bool
    ) -> ClientStream:
        """A stream to `target` carrying `head`: on a pooled connection when one is free.
        `UpstreamOverflow` when the target's cluster is at its limits."""
        cluster = target.cluster
        if cluster is not None:
            # the request counts from now (waiting for a connection included), so concurrent
            # requests cannot all pass the check while their connections are being made
            if not cluster.can_request():
                cluster.stats["upstream_rq_overflow"] += 1
                raise UpstreamOverflow(f"{cluster.name}: too many requests in flight")
            cluster.request_started(target.address)
        try:
            stream, conn = await self._open(target, head, end_stream)
        except BaseException:
            if cluster is not None:
                cluster.request_ended(target.address)
            raise
        self._opened(conn, stream, target)
        return stream

    async def _open(
        self, target: UpstreamTarget, head: RequestHead, end_stream: bool
    ) -> tuple[ClientStream, ClientConnection]:
        key = (target.key, target.http2)
        conn = await self._connection(target, key)
        try:
            stream = await conn.open_stream(head, end_stream=end_stream)
        except StreamError:
            # the pooled connection died under us: one fresh try
            self._reserved.discard(conn)
            conn = await self._connect(target)
            try:
                stream = await conn.open_stream(head, end_stream=end_stream)
            finally:
                self._reserved.discard(conn)
        finally:
            self._reserved.discard(conn)
        return stream, conn

    def _opened(self, conn: ClientConnection, stream: ClientStream, target: UpstreamTarget) -> None:
        limits = self._settings.get(conn)
        if limits is not None and limits.max_requests and conn.opened >= limits.max_requests:
            conn.retiring = True
        cluster = target.cluster
        if cluster is not None:
            cluster.stats["upstream_rq_total"] += 1

        def released() -> None:
            if cluster is not None:
                cluster.request_ended(target.address)
            if conn.retiring:
                self._retire(conn)
            self._notify()

        stream.on_release = released

    def _all(self) -> list[ClientConnection]:
        return [c for conns in self._conns.values() for c in conns]

    async def _reap(self) -> None:
        while True:
            await trio.sleep(self._reap_every)
            now = trio.current_time()
            for c in self._all():
                settings = self._settings.get(c)
                idle = settings.idle_timeout if settings is not None else self._idle_timeout
                if not c.closed and not c.streams and now - c.last_used > idle:
                    # it leaves the pool when its reader ends
                    self._nursery.start_soon(c.aclose)
                elif settings is not None and settings.expired(c, now):
                    self._retire(c)
            for key in [k for k, lock in self._locks.items() if k not in self._conns]:
                if not self._locks[key].locked():
                    del self._locks[key]

    async def aclose(self) -> None:
        for c in self._all():
            await c.aclose()
