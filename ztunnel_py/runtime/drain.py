"""Graceful shutdown of a proxy process, as ztunnel drains on SIGTERM (docs/istio-compat.md,
"Draining and upgrades").

Draining starts on the first SIGTERM/SIGINT or on POST /quitquitquit:

1. readiness turns false, enrollment stops, and every listener stops accepting and is closed
   at once, so a new agent bound to the same ports (SO_REUSEPORT) gets every new connection;
2. inbound HBONE connections get a graceful GOAWAY: the streams they carry continue, peers
   open new ones elsewhere;
3. established connections run on until they end by themselves or the termination deadline
   passes (`AgentConfig.termination_deadline`); whatever is left then is closed.

The process exits as soon as the last connection ended. A second signal skips the wait.

`Drain` is the shared primitive: accept loops run inside `accepting()`, every accepted
connection inside `holding()`; `Shutdown` waits in `wait_idle()`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import trio

__all__ = ["Drain", "Shutdown"]

log = logging.getLogger("ztunnel_py.drain")


class Drain:
    """Whether draining started, and how many connections it still waits for."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self._accepting: set[trio.CancelScope] = set()
        self._held = 0
        self._released = trio.lowlevel.ParkingLot()

    @property
    def active(self) -> int:
        """Connections still open."""
        return self._held

    def start(self) -> None:
        """Stop every accept loop; idempotent."""
        self.started.set()
        for scope in self._accepting:
            scope.cancel()

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        """Run an accept loop (or anything that takes on new work) until draining starts: the
        body is cancelled then, or at once if it already started."""
        scope = trio.CancelScope()
        if self.started.is_set():
            scope.cancel()
        self._accepting.add(scope)
        try:
            with scope:
                yield
        finally:
            self._accepting.discard(scope)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """One connection in progress: `wait_idle` waits for it."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held:
                self._released.unpark_all()

    async def wait_idle(self) -> None:
        """Return once no connection is open."""
        while self._held:
            await self._released.park()


class Shutdown:
    """Turns shutdown requests into a drain, then `stop()` (which cancels the process's tasks).

    `request()` may be called from anywhere in the trio thread (a signal loop, an admin
    handler); `run()` is the task that carries the drain out.
    """

    def __init__(
        self,
        drain: Drain,
        deadline: float,
        *,
        on_drain: Callable[[], object],
        stop: Callable[[], None],
    ) -> None:
        self.drain = drain
        self.deadline = deadline
        self._on_drain = on_drain
        self._stop = stop
        self._requested = trio.Event()

    def request(self, why: str) -> None:
        if not self._requested.is_set():
            log.info("%s: draining", why)
            self._requested.set()
            return
        log.info("%s again: closing %s now", why, _open(self.drain.active))
        self._stop()

    async def run(self) -> None:
        await self._requested.wait()
        self._on_drain()
        self.drain.start()
        log.info(
            "listeners closed; waiting up to %g s for %s to end",
            self.deadline,
            _open(self.drain.active),
        )
        with trio.move_on_after(self.deadline) as waited:
            await self.drain.wait_idle()
        if waited.cancelled_caught:
            log.info("termination deadline passed: closing %s", _open(self.drain.active))
        else:
            log.info("all connections ended")
        self._stop()


def _open(count: int) -> str:
    return f"{count} open connection{'' if count == 1 else 's'}"
