"""The HBONE connection pool over real TLS on loopback: reuse, limits, dial-once, eviction."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
import trio
import trio.lowlevel
import trio.testing

from tests.integration.hbone_support import (
    CLIENT_ID,
    SERVER_ID,
    TcpProxy,
    authority,
    dial,
    echo_handler,
    hbone_server,
    workload_cert,
)
from ztunnel_py.identity.pki import WorkloadCertificate, generate_key, key_to_pem, make_csr
from ztunnel_py.identity.tls import client_context, server_context
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.identity import Identity
from ztunnel_py.model.ports import HBONE_PORT
from ztunnel_py.transport.hbone import (
    HboneClientConnection,
    HboneRequest,
    HboneStatusError,
    HboneStream,
    HboneStreamError,
    HboneUnavailableError,
)
from ztunnel_py.transport.pool import HbonePool, PoolKey

KEY = PoolKey(
    source_identity=CLIENT_ID,
    destination_identities=frozenset({SERVER_ID}),
    destination=SocketAddr("127.0.0.1", HBONE_PORT),
    source_ip=ipaddress.ip_address("10.0.0.1"),
)


class Dialer:
    """Counts dials; dials `address` with the test certificates."""

    def __init__(self, address: tuple[str, int], nursery: trio.Nursery) -> None:
        self.address = address
        self.nursery = nursery
        self.count = 0

    async def __call__(self) -> HboneClientConnection:
        self.count += 1
        # Slow enough that concurrent callers really do overlap the dial.
        await trio.sleep(0.05)
        return await dial(self.address, self.nursery)


async def hold_open(request: HboneRequest) -> None:
    """Answer 200 and keep the stream open until the client half-closes."""
    stream = await request.respond(200)
    assert stream is not None
    while await stream.receive_some():
        pass
    await stream.send_eof()
    await stream.aclose()


async def finish(stream: HboneStream) -> None:
    await stream.send_eof()
    while await stream.receive_some():
        pass
    await stream.aclose()


async def test_sequential_streams_reuse_one_connection() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            for n in range(10):
                stream = await pool.stream(KEY, dialer, f"10.0.0.2:{8000 + n}")
                await stream.send_all(b"ping")
                await stream.send_eof()
                assert bytes(await stream.receive_some()) == b"ping"
                await stream.aclose()
            assert dialer.count == 1
            assert server.accepted == 1
            assert pool.connection_count == 1
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_concurrent_first_requests_dial_once() -> None:
    with trio.fail_after(10):
        async with hbone_server(hold_open) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            streams: list[HboneStream] = []

            async def one() -> None:
                streams.append(await pool.stream(KEY, dialer, "10.0.0.2:80"))

            async with trio.open_nursery() as burst:
                for _ in range(30):
                    burst.start_soon(one)
            assert len(streams) == 30
            assert dialer.count == 1 and server.accepted == 1
            for stream in streams:
                await finish(stream)
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_hundred_stream_limit_opens_a_second_connection() -> None:
    with trio.fail_after(30):
        async with hbone_server(hold_open) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            streams = [await pool.stream(KEY, dialer, "10.0.0.2:80") for _ in range(100)]
            assert dialer.count == 1
            extra = await pool.stream(KEY, dialer, "10.0.0.2:80")
            assert dialer.count == 2 and pool.connection_count == 2
            [first, second] = pool.dump()[0]["connections"]
            assert (first["activeStreams"], first["availableStreams"]) == (100, 0)
            assert second["activeStreams"] == 1
            # Once streams on the first connection end, it takes new ones again.
            for stream in streams[:10]:
                await finish(stream)
            again = await pool.stream(KEY, dialer, "10.0.0.2:80")
            assert dialer.count == 2
            assert pool.dump()[0]["connections"][0]["activeStreams"] == 91
            for stream in [*streams[10:], extra, again]:
                await finish(stream)
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_peer_max_concurrent_streams_caps_reuse() -> None:
    with trio.fail_after(10):
        async with (
            hbone_server(hold_open, max_concurrent_streams=3) as server,
            trio.open_nursery() as nursery,
        ):
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            streams = [await pool.stream(KEY, dialer, "10.0.0.2:80") for _ in range(7)]
            assert dialer.count == 3
            for stream in streams:
                await finish(stream)
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_keys_do_not_share_connections() -> None:
    other = PoolKey(
        KEY.source_identity,
        KEY.destination_identities,
        KEY.destination,
        ipaddress.ip_address("10.0.0.99"),
    )
    with trio.fail_after(10):
        async with hbone_server(hold_open) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            a = await pool.stream(KEY, dialer, "10.0.0.2:80")
            b = await pool.stream(other, dialer, "10.0.0.2:80")
            assert dialer.count == 2
            assert sorted(entry["key"] for entry in pool.dump()) == sorted([str(KEY), str(other)])
            await finish(a)
            await finish(b)
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_pods_sharing_an_address_do_not_share_connections_and_release_closes_them() -> None:
    # A pod deleted and a new one given its address (Kubernetes reuses pod IPs): the new pod
    # dials its own connection, and releasing the old pod's namespace closes only the old one.
    old_pod = PoolKey(
        KEY.source_identity, KEY.destination_identities, KEY.destination, KEY.source_ip, (1, 10)
    )
    new_pod = PoolKey(
        KEY.source_identity, KEY.destination_identities, KEY.destination, KEY.source_ip, (1, 11)
    )
    with trio.fail_after(10):
        async with hbone_server(hold_open) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            old_stream = await pool.stream(old_pod, dialer, "10.0.0.2:80")
            new_stream = await pool.stream(new_pod, dialer, "10.0.0.2:80")
            assert dialer.count == 2 and pool.connection_count == 2
            await pool.release((1, 10))
            assert pool.connection_count == 1
            assert [entry["key"] for entry in pool.dump()] == [str(new_pod)]
            with pytest.raises(HboneStreamError):
                await old_stream.send_all(b"after the pod left")
            await new_stream.send_all(b"still served")
            await pool.release((1, 99))  # a pod that never dialed: nothing to do
            assert pool.connection_count == 1
            await finish(new_stream)
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_dead_connections_are_skipped() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            proxy = TcpProxy(server.address)
            await nursery.start(proxy.run)
            pool = HbonePool()
            through_proxy = Dialer(proxy.address, nursery)
            stream = await pool.stream(KEY, through_proxy, "10.0.0.2:80")
            proxy.kill()
            with pytest.raises(HboneStreamError):
                while True:
                    await stream.send_all(b"x" * 65536)
            direct = Dialer(server.address, nursery)
            fresh = await pool.stream(KEY, direct, "10.0.0.2:80")
            assert direct.count == 1 and pool.connection_count == 1
            await fresh.send_all(b"alive")
            await fresh.send_eof()
            assert bytes(await fresh.receive_some()) == b"alive"
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_idle_connections_are_evicted() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            pool = HbonePool(idle_timeout=0.2)
            await nursery.start(pool.run)
            dialer = Dialer(server.address, nursery)
            stream = await pool.stream(KEY, dialer, "10.0.0.2:80")
            await trio.sleep(0.4)
            # A connection with an open stream is not idle.
            assert pool.connection_count == 1
            await finish(stream)
            while pool.connection_count:
                await trio.sleep(0.02)
            while server.connections_done < 1:
                await trio.sleep(0.02)
            await finish(await pool.stream(KEY, dialer, "10.0.0.2:80"))
            assert dialer.count == 2
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_status_errors_propagate_and_keep_the_connection() -> None:
    async def refuse(request: HboneRequest) -> None:
        await request.respond(401)

    with trio.fail_after(10):
        async with hbone_server(refuse) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            for _ in range(3):
                with pytest.raises(HboneStatusError):
                    await pool.stream(KEY, dialer, "10.0.0.2:80")
            assert dialer.count == 1
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_closed_pool_refuses_streams() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            pool = HbonePool()
            dialer = Dialer(server.address, nursery)
            stream = await pool.stream(KEY, dialer, "10.0.0.2:80")
            await pool.aclose()
            assert pool.connection_count == 0
            with pytest.raises(HboneUnavailableError):
                await pool.stream(KEY, dialer, "10.0.0.2:80")
            with pytest.raises(HboneStreamError, match="closed locally"):
                await stream.receive_some()
            nursery.cancel_scope.cancel()


def short_lived(identity: Identity, seconds: float) -> WorkloadCertificate:
    key = generate_key()
    ca = authority(identity.trust_domain, "ztunnel-py")  # the CA workload_cert uses
    chain = ca.sign_csr(make_csr(key, identity), identity, timedelta(seconds=seconds))
    return WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain)


async def echo_once(stream: HboneStream, data: bytes) -> None:
    await stream.send_all(data)
    assert bytes(await stream.receive_some()) == data


@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_connection_is_retired_when_a_certificate_expires(
    mock_clock: trio.testing.MockClock, side: str
) -> None:
    # Before, a pooled connection carried new streams long after either certificate ended.
    # Time moves only when the test jumps the clock; TLS sees the certificates as valid.
    server_cert = short_lived(SERVER_ID, 60) if side == "server" else workload_cert(SERVER_ID)
    client_cert = short_lived(CLIENT_ID, 60) if side == "client" else workload_cert(CLIENT_ID)
    async with (
        trio.open_nursery() as nursery,
        hbone_server(echo_handler, ctx=server_context(server_cert)) as server,
    ):
        pool = HbonePool()
        dials: list[HboneClientConnection] = []

        async def dialer() -> HboneClientConnection:
            conn = await dial(
                server.address,
                nursery,
                ctx=client_context(client_cert),
                not_after=client_cert.not_after,
            )
            dials.append(conn)
            return conn

        held = await pool.stream(KEY, dialer, "10.0.0.2:80")
        mock_clock.jump(30)
        second = await pool.stream(KEY, dialer, "10.0.0.2:81")
        await finish(second)
        assert len(dials) == 1
        mock_clock.jump(31)  # past the end of the 60 s certificate
        await trio.testing.wait_all_tasks_blocked()
        assert not dials[0].is_ready
        fresh = await pool.stream(KEY, dialer, "10.0.0.2:82")
        assert len(dials) == 2 and server.accepted == 2
        # The stream open at expiry goes on; its connection closes when it is done.
        await echo_once(held, b"still here")
        await echo_once(fresh, b"new connection")
        await finish(held)
        with trio.fail_after(5):
            while not dials[0].is_closed:
                await trio.lowlevel.checkpoint()
        await finish(fresh)
        await pool.aclose()
        nursery.cancel_scope.cancel()
