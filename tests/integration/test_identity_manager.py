"""The certificate manager against the real CA server: sharing, limits, rotation, backoff."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.integration.ca_support import RunningCa, free_port, start_ca, write_workloads
from tests.unit.test_retry import grown
from ztunnel_py.controlplane.app import CA_SUBDIR, load_or_create_ca
from ztunnel_py.controlplane.nodeauth import TOKEN_FILE, NodeTokenStore
from ztunnel_py.identity.caclient import CertificateSigner, GrpcCaClient
from ztunnel_py.identity.manager import CertificateManager, CertState, IdentityError
from ztunnel_py.identity.pki import load_certificate
from ztunnel_py.model import Identity
from ztunnel_py.model.address import SocketAddr

NODE = "node-1"
ACCOUNTS = [f"sa{i}" for i in range(12)]


def ident(sa: str) -> Identity:
    return Identity("cluster.local", "demo", sa)


async def eventually(predicate: Callable[[], bool], within: float = 6.0) -> None:
    for _ in range(int(within / 0.05)):
        if predicate():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"condition not met within {within}s")


class Recorder:
    """Delegates to the real CA client; records calls and can hold them at a gate."""

    def __init__(self, inner: CertificateSigner) -> None:
        self.inner = inner
        self.calls: list[tuple[float, Identity]] = []
        self.in_flight = 0
        self.gate: trio.Event | None = None

    async def sign(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        self.calls.append((trio.current_time(), identity))
        self.in_flight += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            return await self.inner.sign(csr_pem, identity, ttl)
        finally:
            self.in_flight -= 1


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "local.yaml"
    write_workloads(path, {NODE: [("demo", sa) for sa in ACCOUNTS]})
    return path


@pytest.fixture
async def ca(tmp_path: Path, config: Path) -> AsyncIterator[RunningCa]:
    running = start_ca(tmp_path / "data", config)
    try:
        yield running
    finally:
        running.stop()


async def start_manager(
    nursery: trio.Nursery, signer: CertificateSigner, ttl: timedelta, **kw: Any
) -> CertificateManager:
    manager = CertificateManager(signer, ttl, **kw)
    await nursery.start(manager.run)
    return manager


async def test_concurrent_fetches_share_one_csr(ca: RunningCa) -> None:
    recorder = Recorder(ca.client(ca.token_file(NODE)))
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, recorder, timedelta(hours=1))
        serials: list[int] = []

        async def fetch() -> None:
            serials.append((await manager.fetch(ident("sa0"))).serial)

        async with trio.open_nursery() as fetchers:
            for _ in range(10):
                fetchers.start_soon(fetch)
        assert len(set(serials)) == 1 and len(serials) == 10
        assert len(recorder.calls) == 1
        assert (await manager.fetch(ident("sa0"))).serial == serials[0]
        assert len(recorder.calls) == 1
        nursery.cancel_scope.cancel()


async def test_at_most_eight_requests_in_flight(ca: RunningCa) -> None:
    recorder = Recorder(ca.client(ca.token_file(NODE)))
    recorder.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, recorder, timedelta(hours=1))
        async with trio.open_nursery() as fetchers:
            for sa in ACCOUNTS:
                fetchers.start_soon(manager.fetch, ident(sa))
            await trio.testing.wait_all_tasks_blocked()
            assert recorder.in_flight == 8
            recorder.gate.set()
        assert len(recorder.calls) == 12
        assert all(manager.state(ident(sa)) is CertState.AVAILABLE for sa in ACCOUNTS)
        nursery.cancel_scope.cancel()


async def test_waiting_requests_go_by_priority(ca: RunningCa) -> None:
    recorder = Recorder(ca.client(ca.token_file(NODE)))
    recorder.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, recorder, timedelta(hours=1), max_concurrent=1)
        async with trio.open_nursery() as fetchers:
            fetchers.start_soon(manager.fetch, ident("sa0"))
            await trio.testing.wait_all_tasks_blocked()
            manager.prefetch(ident("sa1"))
            await trio.testing.wait_all_tasks_blocked()
            fetchers.start_soon(manager.fetch, ident("sa2"))
            await trio.testing.wait_all_tasks_blocked()
            recorder.gate.set()
        with trio.fail_after(5):
            await manager.fetch(ident("sa1"))
        assert [i.service_account for _, i in recorder.calls] == ["sa0", "sa2", "sa1"]
        nursery.cancel_scope.cancel()


async def test_a_queued_prefetch_jumps_ahead_when_a_connection_needs_it(ca: RunningCa) -> None:
    recorder = Recorder(ca.client(ca.token_file(NODE)))
    recorder.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, recorder, timedelta(hours=1), max_concurrent=1)
        async with trio.open_nursery() as fetchers:
            fetchers.start_soon(manager.fetch, ident("sa0"))
            await trio.testing.wait_all_tasks_blocked()
            manager.prefetch(ident("sa1"))
            manager.prefetch(ident("sa2"))
            await trio.testing.wait_all_tasks_blocked()
            fetchers.start_soon(manager.fetch, ident("sa2"))
            await trio.testing.wait_all_tasks_blocked()
            recorder.gate.set()
        with trio.fail_after(5):
            await manager.fetch(ident("sa1"))
        assert [i.service_account for _, i in recorder.calls] == ["sa0", "sa2", "sa1"]
        nursery.cancel_scope.cancel()


async def test_waiters_are_released_when_the_manager_stops(ca: RunningCa) -> None:
    recorder = Recorder(ca.client(ca.token_file(NODE)))
    recorder.gate = trio.Event()
    errors: list[str] = []
    async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
        manager = await start_manager(nursery, recorder, timedelta(hours=1))

        async def waiter() -> None:
            try:
                await manager.fetch(ident("sa0"))
            except IdentityError as e:
                errors.append(str(e))

        outer.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert errors and "stopped" in errors[0]


async def test_rotates_at_half_life_and_keeps_the_old_one_meanwhile(ca: RunningCa) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, ca.client(ca.token_file(NODE)), timedelta(seconds=4))
        first = await manager.fetch(ident("sa0"))
        assert first.not_after - first.not_before == timedelta(seconds=4)
        await eventually(lambda: getattr(manager.get(ident("sa0")), "serial", 0) != first.serial)
        now = datetime.now(UTC)
        current = manager.get(ident("sa0"))
        assert current is not None
        assert now >= first.refresh_at - timedelta(milliseconds=50)
        assert not first.expired(now)  # rotated while the old one was still valid
        assert current.not_after > first.not_after
        assert manager.state(ident("sa0")) is CertState.AVAILABLE
        nursery.cancel_scope.cancel()


async def test_keeps_a_valid_certificate_while_the_ca_is_down(ca: RunningCa) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, ca.client(ca.token_file(NODE)), timedelta(seconds=4))
        first = await manager.fetch(ident("sa0"))
        ca.stop()
        await trio.sleep(max(0.0, (first.refresh_at - datetime.now(UTC)).total_seconds()) + 0.7)
        assert manager.get(ident("sa0")) is first  # renewal failed, old one kept
        assert await manager.fetch(ident("sa0")) is first
        assert manager.state(ident("sa0")) is CertState.AVAILABLE
        await trio.sleep(max(0.0, (first.not_after - datetime.now(UTC)).total_seconds()) + 0.5)
        assert manager.state(ident("sa0")) is CertState.UNAVAILABLE
        with pytest.raises(IdentityError, match="UNAVAILABLE"):
            await manager.fetch(ident("sa0"))
        assert manager.dump()[0]["state"].startswith("Unavailable: UNAVAILABLE")
        nursery.cancel_scope.cancel()


def offline_ca(tmp_path: Path) -> tuple[Path, int, GrpcCaClient]:
    """The data directory and port of a CA that is not running yet, and a client of it (the
    agent has the root already)."""
    data = tmp_path / "data"
    load_or_create_ca(data / CA_SUBDIR, "cluster.local")
    port = free_port()
    token = tmp_path / "token"
    token.write_text(NodeTokenStore(data / TOKEN_FILE).issue(NODE, timedelta(hours=1)))
    return (
        data,
        port,
        GrpcCaClient(SocketAddr("127.0.0.1", port), data / CA_SUBDIR / "root-cert.pem", token),
    )


async def test_backs_off_while_the_ca_is_down_then_recovers(tmp_path: Path, config: Path) -> None:
    data, port, client = offline_ca(tmp_path)
    recorder = Recorder(client)
    running: RunningCa | None = None
    try:
        async with trio.open_nursery() as nursery:
            manager = await start_manager(nursery, recorder, timedelta(hours=1))
            with pytest.raises(IdentityError, match="UNAVAILABLE"):
                await manager.fetch(ident("sa0"))
            await trio.sleep(1.2)
            running = start_ca(data, config, port=port)
            await eventually(lambda: manager.state(ident("sa0")) is CertState.AVAILABLE)
            cert = await manager.fetch(ident("sa0"))
            assert cert.identity == ident("sa0")
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        if running is not None:
            running.stop()
    times = [t for t, _ in recorder.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 2
    assert 0.35 <= gaps[0] <= 0.8  # 500 ms +- 20 %
    assert 0.75 <= gaps[1] <= 1.5  # then doubled


async def test_a_backoff_grown_during_an_outage_is_cut_short_when_the_ca_returns(
    tmp_path: Path, config: Path
) -> None:
    data, port, client = offline_ca(tmp_path)
    recorder = Recorder(client)
    running: RunningCa | None = None
    try:
        async with trio.open_nursery() as nursery:
            manager = await start_manager(nursery, recorder, timedelta(hours=1), backoff=grown)
            client.on_reconnect(manager.ca_reachable)  # as the agent wires it
            with pytest.raises(IdentityError, match="UNAVAILABLE"):
                await manager.fetch(ident("sa0"))
            await trio.sleep(1.0)
            running = start_ca(data, config, port=port)
            back = trio.current_time()
            await eventually(lambda: manager.state(ident("sa0")) is CertState.AVAILABLE, 4.0)
            assert trio.current_time() - back < 4.0
            assert (await manager.fetch(ident("sa0"))).identity == ident("sa0")
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        if running is not None:
            running.stop()
    assert len(recorder.calls) == 2  # the failure, then one retry once the CA answered


async def test_forget_drops_the_certificate_and_releases_waiters(ca: RunningCa) -> None:
    recorder = Recorder(ca.client(ca.token_file(NODE)))
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, recorder, timedelta(hours=1))
        await manager.fetch(ident("sa0"))
        manager.forget(ident("sa0"))
        assert manager.state(ident("sa0")) is None and manager.dump() == []

        recorder.gate = trio.Event()
        errors: list[str] = []

        async def waiter() -> None:
            try:
                await manager.fetch(ident("sa1"))
            except IdentityError as e:
                errors.append(str(e))

        async with trio.open_nursery() as waiters:
            waiters.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            manager.forget(ident("sa1"))
        assert errors and "dropped" in errors[0]
        nursery.cancel_scope.cancel()


async def test_refusal_makes_the_identity_unavailable(ca: RunningCa) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_manager(
            nursery, ca.client(ca.token_file("another-node")), timedelta(hours=1)
        )
        with pytest.raises(IdentityError, match="PERMISSION_DENIED"):
            await manager.fetch(ident("sa0"))
        nursery.cancel_scope.cancel()


async def test_dump_has_the_config_dump_shape(ca: RunningCa) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_manager(nursery, ca.client(ca.token_file(NODE)), timedelta(hours=1))
        cert = await manager.fetch(ident("sa3"))
        manager.prefetch(ident("sa4"))
        dump = manager.dump()
        assert [d["identity"] for d in dump] == [str(ident("sa3")), str(ident("sa4"))]
        entry = dump[0]
        assert set(entry) == {"identity", "state", "certChain", "rootCerts"}
        assert entry["state"] == "Available"
        (leaf,) = entry["certChain"]
        assert base64.b64decode(leaf["pem"]).decode() == cert.chain_pem[0]
        assert leaf["serialNumber"] == str(cert.serial)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", leaf["validFrom"])
        assert leaf["expirationTime"] == cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        (root,) = entry["rootCerts"]
        assert load_certificate(base64.b64decode(root["pem"])).subject.rfc4514_string()
        assert dump[1]["state"] in ("Initializing", "Available")
        nursery.cancel_scope.cancel()


async def test_fetch_needs_the_manager_running(ca: RunningCa) -> None:
    manager = CertificateManager(ca.client(None), timedelta(hours=1))
    with pytest.raises(RuntimeError, match="run"):
        await manager.fetch(ident("sa0"))
