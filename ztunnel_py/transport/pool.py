"""The HBONE connection pool, shaped like ztunnel's (`src/proxy/pool.rs`).

Tunnels to the same peer share HTTP/2 connections. A connection is keyed by (source identity,
expected destination identities, destination address, source IP, source network namespace): the
source IP is part of the key because the agent preserves it, so pods never share tunnels across
identities or addresses; the network namespace because the agent dials from inside each pod, as
ztunnel's per-pod proxies each have a pool of their own: a new pod given the address of one
deleted moments before must not be handed the old pod's connections, which live in a namespace
that is gone. `release` closes a pod's connections when it leaves.

- A connection takes new streams while it has fewer than min(100, the peer's
  MAX_CONCURRENT_STREAMS) open; then another connection to the same key is opened. (ztunnel
  retires a connection after 100 streams in total and has a TODO to reuse it once streams end;
  counting open streams is that reuse.)
- Concurrent first requests for a key dial once: a per-key lock serialises dialing.
- Connections that are not ready (GOAWAY received, closed) are skipped and dropped.
- A connection with no open stream for `idle_timeout` (default 5 minutes) is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ztunnel_py.model.address import IPAddress, SocketAddr
from ztunnel_py.model.identity import Identity
from ztunnel_py.transport.hbone import (
    HboneClientConnection,
    HboneStream,
    HboneStreamError,
    HboneUnavailableError,
)

__all__ = ["DEFAULT_IDLE_TIMEOUT", "HbonePool", "PoolKey"]

logger = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 300.0
Header = tuple[str, str]
Dialer = Callable[[], Awaitable[HboneClientConnection]]

# A refused stream (GOAWAY raced our CONNECT) is retried on another connection this many times.
_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Which connections a stream may share (ztunnel's `WorkloadKey`)."""

    source_identity: Identity
    destination_identities: frozenset[Identity]
    destination: SocketAddr
    source_ip: IPAddress | None
    # (device, inode) of the namespace dialed from; None for a process dialing from its own.
    source_netns: tuple[int, int] | None = None

    def __str__(self) -> str:
        ids = ",".join(sorted(str(i) for i in self.destination_identities))
        return f"{self.source_identity}@{self.source_ip or '*'} -> {self.destination} ({ids})"


class HbonePool:
    """HBONE client connections shared by key; run `run()` in a nursery for idle eviction."""

    def __init__(self, *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self._idle_timeout = idle_timeout
        self._connections: dict[PoolKey, list[HboneClientConnection]] = {}
        self._locks: dict[PoolKey, trio.Lock] = {}
        self._closed = False

    async def stream(
        self, key: PoolKey, dial: Dialer, authority: str, headers: Sequence[Header] = ()
    ) -> HboneStream:
        """A CONNECT tunnel to `authority` over a pooled connection for `key`.

        `dial()` opens a new connection when none for `key` has a free stream; concurrent
        callers for the same key wait for that one dial. Errors from `dial` and from
        `open_stream` (`HboneStatusError`, `HboneStreamError`...) propagate.
        """
        for _ in range(_MAX_ATTEMPTS):
            if self._closed:
                raise HboneUnavailableError("the HBONE pool is closed")
            conn = self._pick(key)
            if conn is None:
                conn = await self._dial_once(key, dial)
            try:
                # No checkpoint between `_pick`/`_dial_once` and here: the stream slot we saw
                # free is taken before any other task runs.
                return await conn.open_stream(authority, headers)
            except HboneUnavailableError:
                logger.debug("pooled HBONE connection to %s is unavailable, retrying", key)
            except HboneStreamError as e:
                if not e.retryable:
                    raise
                logger.debug("HBONE stream to %s refused (%s), retrying", key, e.reason)
        raise HboneUnavailableError(f"no usable HBONE connection to {key} after retries")

    def _pick(self, key: PoolKey) -> HboneClientConnection | None:
        connections = self._connections.get(key)
        if not connections:
            return None
        usable = [c for c in connections if c.is_ready]
        if len(usable) != len(connections):
            self._connections[key] = usable
        for conn in usable:
            if conn.available_streams > 0:
                return conn
        return None

    async def _dial_once(self, key: PoolKey, dial: Dialer) -> HboneClientConnection:
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                # Someone else may have dialed while we waited for the lock.
                conn = self._pick(key)
                if conn is not None:
                    return conn
                conn = await dial()
                if self._closed:
                    await conn.aclose()
                    raise HboneUnavailableError("the HBONE pool was closed while dialing")
                self._connections.setdefault(key, []).append(conn)
                logger.debug("new HBONE connection for %s", key)
                # A stream slot is taken right after the lock is released, before any wait.
                return conn
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close connections idle for longer than the idle timeout; runs until cancelled."""
        task_status.started()
        period = max(self._idle_timeout / 10, 0.01)
        while True:
            await trio.sleep(period)
            await self.evict_idle()

    async def evict_idle(self) -> None:
        """Drop closed connections and close those idle past the timeout."""
        now = trio.current_time()
        victims: list[HboneClientConnection] = []
        for key, connections in list(self._connections.items()):
            keep = []
            for conn in connections:
                idle_since = conn.idle_since
                if conn.is_closed:
                    continue
                if idle_since is not None and now - idle_since >= self._idle_timeout:
                    victims.append(conn)
                else:
                    keep.append(conn)
            if keep:
                self._connections[key] = keep
            else:
                del self._connections[key]
        for conn in victims:
            logger.debug("closing HBONE connection idle for %.0fs", self._idle_timeout)
            await conn.aclose()

    async def release(self, source_netns: tuple[int, int]) -> None:
        """Close every connection dialed from `source_netns` (its pod left this node): open
        streams on them end, and the namespace is not kept alive by our sockets."""
        victims: list[HboneClientConnection] = []
        for key in [k for k in self._connections if k.source_netns == source_netns]:
            victims.extend(self._connections.pop(key))
        for conn in victims:
            await conn.aclose()
        if victims:
            logger.debug("closed %d HBONE connections of a departed pod", len(victims))

    def dump(self) -> list[dict[str, Any]]:
        """The pool's state for debugging (config_dump style): keys and their connections."""
        now = trio.current_time()
        return [
            {
                "key": str(key),
                "connections": [
                    {
                        "peerIdentity": str(c.peer_identity) if c.peer_identity else None,
                        "ready": c.is_ready,
                        "activeStreams": c.active_streams,
                        "availableStreams": c.available_streams,
                        "peerMaxConcurrentStreams": c.peer_max_concurrent_streams,
                        "idleSeconds": (
                            round(now - c.idle_since, 3) if c.idle_since is not None else None
                        ),
                    }
                    for c in connections
                ],
            }
            for key, connections in self._connections.items()
        ]

    @property
    def connection_count(self) -> int:
        return sum(len(c) for c in self._connections.values())

    async def aclose(self) -> None:
        """Close every pooled connection; later `stream` calls fail."""
        self._closed = True
        connections = [c for group in self._connections.values() for c in group]
        self._connections.clear()
        for conn in connections:
            await conn.aclose()
