"""Retry schedules: the shared `Backoff`, and the certificate manager's early retry when the CA
is reachable again (on trio's virtual clock, with the in-process CA)."""

from __future__ import annotations

import random
from datetime import timedelta

import trio
import trio.testing

from ztunnel_py.identity.caclient import CaError, LocalCaClient
from ztunnel_py.identity.manager import CertificateManager, CertState, retry_backoff
from ztunnel_py.identity.pki import CertificateAuthority
from ztunnel_py.model import Identity
from ztunnel_py.transport.backoff import Backoff

IDENTITY = Identity("cluster.local", "demo", "sa0")


def test_without_jitter_the_delay_doubles_exactly_up_to_the_cap() -> None:
    backoff = Backoff(0.02, 15.0)
    assert [backoff.next_delay() for _ in range(12)] == [
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.28,
        2.56,
        5.12,
        10.24,
        15.0,
        15.0,
    ]
    backoff.reset()
    assert backoff.next_delay() == 0.02


def test_certificate_retries_double_with_jitter_up_to_the_cap() -> None:
    backoff = retry_backoff(random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    nominal = [min(0.5 * 2**i, 150.0) for i in range(12)]
    for delay, base in zip(delays, nominal, strict=True):
        assert base * 0.8 <= delay <= min(base * 1.2, 150.0)
    assert len(set(delays)) == len(delays)  # jittered: no two alike
    backoff.reset()
    assert 0.4 <= backoff.next_delay() <= 0.6


class FlakyCa:
    """The in-process CA behind a switch (down: every request fails as an unreachable CA
    does); can hold requests in flight at a gate."""

    def __init__(self) -> None:
        self.ca = LocalCaClient(CertificateAuthority.create("cluster.local"))
        self.down = True
        self.calls: list[float] = []
        self.gate: trio.Event | None = None

    async def sign(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        self.calls.append(trio.current_time())
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise CaError("UNAVAILABLE", "failed to connect to all addresses")
        return await self.ca.sign(csr_pem, identity, ttl)


async def until_available(manager: CertificateManager) -> None:
    # fetch() fails at once while the identity is Unavailable (as ztunnel's): poll the state.
    while manager.state(IDENTITY) is not CertState.AVAILABLE:
        await trio.sleep(0.01)


def grown() -> Backoff:
    """The certificate schedule after a long outage: next delay 64 s (+- 20 %)."""
    backoff = retry_backoff()
    for _ in range(7):
        backoff.next_delay()
    return backoff


async def test_a_reachable_ca_cuts_a_grown_backoff_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ca = FlakyCa()
    manager = CertificateManager(ca, timedelta(hours=1), backoff=grown)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.prefetch(IDENTITY)
        await trio.sleep(1)
        assert manager.state(IDENTITY) is CertState.UNAVAILABLE and len(ca.calls) == 1
        ca.down = False
        back = trio.current_time()
        manager.ca_reachable()
        await until_available(manager)
        assert len(ca.calls) == 2
        # Retried within the first step of a fresh schedule (500 ms +- 20 %), not after 64 s.
        assert 0.4 <= ca.calls[1] - back <= 0.6
        nursery.cancel_scope.cancel()


async def test_reachable_while_the_failing_request_was_under_way_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ca = FlakyCa()
    ca.gate = trio.Event()
    manager = CertificateManager(ca, timedelta(hours=1), backoff=grown)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.prefetch(IDENTITY)
        await trio.testing.wait_all_tasks_blocked()
        manager.ca_reachable()  # the channel reconnected just as this request failed
        await trio.testing.wait_all_tasks_blocked()
        ca.gate.set()
        ca.gate = None
        await trio.sleep(0.1)
        assert manager.state(IDENTITY) is CertState.UNAVAILABLE
        ca.down = False
        with trio.fail_after(1):
            await until_available(manager)
        nursery.cancel_scope.cancel()


async def test_reachable_changes_nothing_for_identities_that_have_a_certificate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ca = FlakyCa()
    ca.down = False
    manager = CertificateManager(ca, timedelta(hours=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        cert = await manager.fetch(IDENTITY)
        manager.ca_reachable()
        await trio.sleep(60)
        assert len(ca.calls) == 1 and manager.get(IDENTITY) is cert
        nursery.cancel_scope.cancel()
