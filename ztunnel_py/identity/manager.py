"""The certificate manager: one certificate per workload identity, fetched, cached and rotated.

Modelled on ztunnel's `SecretManager` (docs/istio-compat.md, "CA"):
- one state per identity: Initializing (first request in flight), Available (a valid certificate),
  Unavailable (no valid certificate; the last error is kept and shown);
- `fetch` returns the cached certificate, or waits for the identity's in-flight request: concurrent
  callers share one CSR. In the Unavailable state it fails at once, as ztunnel does, while the
  background retry goes on;
- every identity has a worker task that rotates its certificate at half-life, retries failures
  with exponential backoff (500 ms doubling, jitter 0.2, capped at 150 s, never past the current
  certificate's expiry) and keeps the old certificate while it is valid;
- `ca_reachable()` (called when the channel to the CA or the control plane connects again after
  an outage) restarts every failing identity's backoff: each retries within its first step
  (400-600 ms) instead of waiting out a delay grown during the outage. A 150 s outage otherwise
  left new connections failing for up to 2 more minutes after the CA came back;
- at most 8 CSRs are in flight; waiting requests go in priority order (a connection needing a
  certificate now, then prefetch, then rotation).

Certificate times are wall-clock (they come from X.509); sleeps are computed from them.
"""

from __future__ import annotations

import base64
import enum
import heapq
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from ztunnel_py.identity.caclient import CaError, CertificateSigner
from ztunnel_py.identity.pki import (
    CertificateError,
    WorkloadCertificate,
    generate_key,
    key_to_pem,
    load_certificate,
    make_csr,
)
from ztunnel_py.model.identity import Identity
from ztunnel_py.transport.backoff import Backoff

log = logging.getLogger("ztunnel_py.identity.manager")

MAX_CONCURRENT_FETCHES = 8
MIN_REFRESH_DELAY = 1.0


class CertState(enum.Enum):
    INITIALIZING = "Initializing"
    AVAILABLE = "Available"
    UNAVAILABLE = "Unavailable"


class Priority(enum.IntEnum):
    """Lower value goes first."""

    REAL_TIME = 0
    WARMUP = 1
    BACKGROUND = 2


class IdentityError(Exception):
    """No certificate can be provided for an identity now (ztunnel's IDENTITY_ERROR)."""


def retry_backoff(rng: random.Random | None = None) -> Backoff:
    """ztunnel's certificate retry schedule: 500 ms doubling, jitter 0.2, capped at 150 s."""
    return Backoff(0.5, 150.0, jitter=0.2, rng=rng or random.Random())


@dataclass(order=True)
class _Ticket:
    """A place in the limiter's queue; its priority can be raised while waiting."""

    priority: int
    seq: int
    granted: trio.Event = field(default_factory=trio.Event, compare=False)


class _PriorityLimiter:
    """A semaphore whose waiters are served by priority, then arrival order."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._queue: list[_Ticket] = []
        self._order = itertools.count()

    def ticket(self, priority: Priority) -> _Ticket:
        return _Ticket(int(priority), next(self._order))

    def raise_priority(self, ticket: _Ticket, priority: Priority) -> None:
        if priority < ticket.priority and not ticket.granted.is_set():
            ticket.priority = int(priority)
            heapq.heapify(self._queue)

    @asynccontextmanager
    async def slot(self, ticket: _Ticket) -> AsyncIterator[None]:
        if self._free > 0 and not self._queue:
            self._free -= 1
            ticket.granted.set()
            await trio.lowlevel.checkpoint()
        else:
            heapq.heappush(self._queue, ticket)
            try:
                await ticket.granted.wait()
            except BaseException:
                if ticket.granted.is_set():
                    self._release()  # granted just as we were cancelled: pass it on
                else:
                    self._queue.remove(ticket)
                    heapq.heapify(self._queue)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if self._queue:
            heapq.heappop(self._queue).granted.set()  # hand the slot over directly
        else:
            self._free += 1


@dataclass
class _Entry:
    identity: Identity
    scope: trio.CancelScope
    state: CertState = CertState.INITIALIZING
    cert: WorkloadCertificate | None = None
    error: str = ""
    forgotten: bool = False
    changed: trio.Event = field(default_factory=trio.Event)
    ticket: _Ticket | None = None  # while a request waits for, or holds, a fetch slot

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class CertificateManager:
    """Fetches and rotates workload certificates; start `run` in a nursery before use."""

    def __init__(
        self,
        signer: CertificateSigner,
        ttl: timedelta,
        *,
        max_concurrent: int = MAX_CONCURRENT_FETCHES,
        backoff: Callable[[], Backoff] = retry_backoff,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._signer = signer
        self._ttl = ttl
        self._limiter = _PriorityLimiter(max_concurrent)
        self._new_backoff = backoff
        self._clock = clock
        self._entries: dict[Identity, _Entry] = {}
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        # `ca_reachable` calls so far, and the event the failing workers wait on
        self._reconnects = 0
        self._reachable = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the per-identity workers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._token = None
                for entry in self._entries.values():
                    entry.notify()  # waiters see the manager stopped

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        """A valid certificate for `identity`, requesting one if needed.

        Raises `IdentityError` if there is none: the CA refused or failed (Unavailable), or the
        identity was forgotten while waiting.
        """
        entry = self._entries.get(identity) or self._start(identity, Priority.REAL_TIME)
        if entry.ticket is not None:
            # Someone needs it now: a queued warm-up or rotation request jumps ahead.
            self._limiter.raise_priority(entry.ticket, Priority.REAL_TIME)
        while True:
            cert = entry.cert
            if cert is not None and not cert.expired(self._clock()):
                return cert
            if entry.forgotten:
                raise IdentityError(f"certificate for {identity} was dropped while waiting")
            if entry.state is CertState.UNAVAILABLE:
                raise IdentityError(f"no certificate for {identity}: {entry.error}")
            if self._nursery is None:
                raise IdentityError(f"no certificate for {identity}: the manager is stopped")
            await entry.changed.wait()

    def ca_reachable(self) -> None:
        """The CA can be reached again: failing identities retry now, with a fresh backoff.
        Thread-safe (gRPC's connectivity watcher calls it); a no-op unless `run` is running."""
        token = self._token
        if token is None:
            return
        with suppress(trio.RunFinishedError):  # the agent is stopping
            token.run_sync_soon(self._wake_failing)

    def _wake_failing(self) -> None:
        self._reconnects += 1
        self._reachable.set()
        self._reachable = trio.Event()

    def prefetch(self, identity: Identity) -> None:
        """Start fetching `identity` in the background (warm-up), if not already known."""
        if identity not in self._entries:
            self._start(identity, Priority.WARMUP)

    def forget(self, identity: Identity) -> None:
        """Drop the identity: stop rotating it and release its certificate."""
        entry = self._entries.pop(identity, None)
        if entry is not None:
            entry.forgotten = True
            entry.scope.cancel()
            entry.notify()
            log.info("forgot the certificate for %s", identity)

    def get(self, identity: Identity) -> WorkloadCertificate | None:
        """The cached certificate if valid now, without waiting or requesting."""
        entry = self._entries.get(identity)
        if entry is None or entry.cert is None or entry.cert.expired(self._clock()):
            return None
        return entry.cert

    def state(self, identity: Identity) -> CertState | None:
        entry = self._entries.get(identity)
        return entry.state if entry else None

    def dump(self) -> list[dict[str, Any]]:
        """The `certificates` section of /config_dump, sorted by identity (ztunnel's shape)."""
        out = []
        for identity in sorted(self._entries):
            entry = self._entries[identity]
            state = entry.state.value
            if entry.state is CertState.UNAVAILABLE:
                state = f"{state}: {entry.error}"
            chain: list[dict[str, str]] = []
            roots: list[dict[str, str]] = []
            if entry.state is CertState.AVAILABLE and entry.cert is not None:
                chain = [_dump_cert(pem) for pem in entry.cert.chain_pem]
                roots = [_dump_cert(pem) for pem in entry.cert.roots_pem]
            out.append(
                {"identity": str(identity), "state": state, "certChain": chain, "rootCerts": roots}
            )
        return out

    def _start(self, identity: Identity, priority: Priority) -> _Entry:
        if self._nursery is None:
            raise RuntimeError(
                "CertificateManager.run() must be running before certificates are used"
            )
        entry = _Entry(identity, trio.CancelScope())
        self._entries[identity] = entry
        self._nursery.start_soon(self._worker, entry, priority)
        return entry

    async def _worker(self, entry: _Entry, priority: Priority) -> None:
        backoff = self._new_backoff()
        with entry.scope:
            while True:
                reconnects = self._reconnects
                try:
                    cert = await self._request(entry, priority)
                except Exception as e:
                    # Whatever went wrong (CA refusal, bad answer, bug in a signer), this
                    # identity keeps being retried and the rest of the agent is unaffected.
                    if not isinstance(e, CaError | CertificateError):
                        log.error("unexpected error fetching %s", entry.identity, exc_info=e)
                    delay = self._failed(entry, e, backoff.next_delay())
                    if await self._reachable_within(delay, reconnects):
                        backoff.reset()
                        delay = backoff.next_delay()
                        log.info(
                            "the CA is reachable again: retrying %s in %.1fs", entry.identity, delay
                        )
                        await trio.sleep(delay)
                else:
                    backoff.reset()
                    entry.cert, entry.state, entry.error = cert, CertState.AVAILABLE, ""
                    entry.notify()
                    log.info(
                        "certificate for %s: serial %d, valid until %s, rotating at %s",
                        entry.identity,
                        cert.serial,
                        cert.not_after.isoformat(),
                        cert.refresh_at.isoformat(),
                    )
                    # The floor keeps a CA that issues certificates already past half-life (clock
                    # skew, backdating) from being asked again in a tight loop.
                    await trio.sleep(
                        max(MIN_REFRESH_DELAY, (cert.refresh_at - self._clock()).total_seconds())
                    )
                priority = Priority.BACKGROUND

    async def _reachable_within(self, delay: float, reconnects: int) -> bool:
        """Wait `delay` s; True as soon as the CA was reported reachable (also if that happened
        since `reconnects` was read, while the failed request was under way)."""
        if self._reconnects != reconnects:
            return True
        reachable = self._reachable
        with trio.move_on_after(max(0.0, delay)):
            await reachable.wait()
            return True
        return False

    def _failed(self, entry: _Entry, error: Exception, delay: float) -> float:
        """Record a failed request; returns how long to wait before the next attempt."""
        entry.error = str(error) or type(error).__name__
        now = self._clock()
        cert = entry.cert
        if cert is not None and not cert.expired(now):
            # Keep serving the old certificate; retry no later than it expires.
            delay = min(delay, (cert.not_after - now).total_seconds())
            log.warning(
                "renewing the certificate for %s failed (%s); keeping the current one until %s, "
                "retrying in %.1fs",
                entry.identity,
                entry.error,
                cert.not_after.isoformat(),
                delay,
            )
            return delay
        log.warning(
            "fetching the certificate for %s failed (%s); retrying in %.1fs",
            entry.identity,
            entry.error,
            delay,
        )
        entry.cert, entry.state = None, CertState.UNAVAILABLE
        entry.notify()
        return delay

    async def _request(self, entry: _Entry, priority: Priority) -> WorkloadCertificate:
        identity = entry.identity
        entry.ticket = self._limiter.ticket(priority)
        try:
            async with self._limiter.slot(entry.ticket):
                key = generate_key()
                chain = await self._signer.sign(make_csr(key, identity), identity, self._ttl)
        finally:
            entry.ticket = None
        cert = WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain)
        if cert.expired(self._clock()):
            raise CertificateError(
                f"CA issued a certificate that expired at {cert.not_after.isoformat()} "
                "(are the clocks in sync?)"
            )
        return cert


def _dump_cert(pem: str) -> dict[str, str]:
    cert = load_certificate(pem)
    return {
        # ztunnel puts the base64 of the PEM text here.
        "pem": base64.b64encode(pem.encode("ascii")).decode("ascii"),
        "serialNumber": str(cert.serial_number),
        "validFrom": _rfc3339(cert.not_valid_before_utc),
        "expirationTime": _rfc3339(cert.not_valid_after_utc),
    }


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
