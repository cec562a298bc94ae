"""HBONE client and server over real TLS on loopback: streams, statuses, identities, failures."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from dataclasses import replace
from typing import cast

import pytest
import trio
import trio.testing

from tests.integration.hbone_support import (
    CLIENT_ID,
    SERVER_ID,
    TRUST_DOMAIN,
    TcpProxy,
    client_ctx,
    dial,
    echo_handler,
    hbone_server,
    server_ctx,
    tcp_connect,
    workload_cert,
)
from ztunnel_py.identity.tls import ALPN_H2, client_context
from ztunnel_py.model import Identity
from ztunnel_py.transport.hbone import (
    HboneHandshakeError,
    HboneRequest,
    HboneStatusError,
    HboneStream,
    HboneStreamError,
    HboneUnavailableError,
)
from ztunnel_py.transport.relay import ReceiveWoken

MiB = 1024 * 1024


async def read_all(stream: HboneStream) -> bytes:
    out = bytearray()
    while True:
        data = await stream.receive_some()
        if not data:
            return bytes(out)
        out += data


async def test_connect_reports_identities_and_headers() -> None:
    seen: list[HboneRequest] = []

    async def handler(request: HboneRequest) -> None:
        seen.append(request)
        stream = await request.respond(200, [("baggage", "k8s.namespace.name=server-ns")])
        assert stream is not None
        await stream.send_eof()
        await read_all(stream)
        await stream.aclose()

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            assert conn.peer_identity == SERVER_ID
            assert conn.peer_max_concurrent_streams == 200
            assert conn.available_streams == 100
            stream = await conn.open_stream(
                "10.0.0.7:9080",
                [("baggage", "k8s.namespace.name=client-ns"), ("forwarded", 'for="10.0.0.1:5000"')],
            )
            assert stream.response_headers == (("baggage", "k8s.namespace.name=server-ns"),)
            assert await read_all(stream) == b""
            await stream.send_eof()
            await stream.aclose()
            request = seen[0]
            assert request.authority == "10.0.0.7:9080"
            assert request.peer_identity == CLIENT_ID
            assert request.header("forwarded") == 'for="10.0.0.1:5000"'
            assert request.peer_address[0] == "127.0.0.1"
            assert request.local_address == server.address
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_many_concurrent_streams_keep_their_bytes_apart() -> None:
    with trio.fail_after(30):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            results: dict[int, bool] = {}

            async def one(n: int) -> None:
                stream = await conn.open_stream(f"10.0.{n}.1:80")
                payload = bytes([n % 251]) * (50_000 + n * 997)

                async def send() -> None:
                    for start in range(0, len(payload), 16_384):
                        await stream.send_all(payload[start : start + 16_384])
                    await stream.send_eof()

                async with trio.open_nursery() as inner:
                    inner.start_soon(send)
                    echoed = await read_all(stream)
                results[n] = echoed == payload
                await stream.aclose()

            async with trio.open_nursery() as streams:
                for n in range(80):
                    streams.start_soon(one, n)
            assert results == dict.fromkeys(range(80), True)
            assert server.accepted == 1
            assert conn.active_streams == 0
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_half_close_client_first() -> None:
    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        body = await read_all(stream)
        # The client is done sending; we can still answer.
        await stream.send_all(b"got " + str(len(body)).encode())
        await stream.send_eof()
        await stream.aclose()

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"x" * 100_000)
            await stream.send_eof()
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"after eof")
            assert await read_all(stream) == b"got 100000"
            await stream.aclose()
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_a_woken_receive_takes_nothing_and_the_next_one_reads_on() -> None:
    """`wake_receiver` ends the receive in progress with `ReceiveWoken`, taking nothing: what
    arrives is the next receive's; with no receive in progress it does nothing."""

    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        while data := await stream.receive_some():
            await stream.send_all(data)

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            stream.wake_receiver()  # nobody receives: nothing happens

            async def receive() -> None:
                with pytest.raises(ReceiveWoken):
                    await stream.receive_some()

            async with trio.open_nursery() as waiters:
                waiters.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                stream.wake_receiver()
                # woken and then sent something before it ran: the bytes are the next read's
                await stream.send_all(b"ping")
            assert bytes(await stream.receive_some()) == b"ping"
            stream.wake_receiver()
            await stream.send_all(b"pong")
            assert bytes(await stream.receive_some()) == b"pong"
            await stream.send_eof()
            await stream.aclose()
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_half_close_server_first() -> None:
    received: list[bytes] = []

    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        await stream.send_all(b"banner")
        await stream.send_eof()
        received.append(await read_all(stream))
        await stream.aclose()

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            assert await read_all(stream) == b"banner"
            # The server's half-close leaves our direction open.
            await stream.send_all(b"late request")
            await stream.send_eof()
            await stream.aclose()
            while not received:
                await trio.sleep(0.01)
            assert received == [b"late request"]
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_large_transfer_integrity_and_throughput() -> None:
    total = 256 * MiB
    digests: list[str] = []

    async def sink(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        digest = hashlib.sha256()
        while True:
            data = await stream.receive_some()
            if not data:
                break
            digest.update(data)
        digests.append(digest.hexdigest())
        await stream.send_eof()
        await stream.aclose()

    pieces = [os.urandom(256 * 1024) for _ in range(16)]
    count = total // len(pieces[0])
    expected = hashlib.sha256()
    for i in range(count):
        expected.update(pieces[i % 16])

    with trio.fail_after(120):
        async with hbone_server(sink) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:5201")
            start = time.perf_counter()
            for i in range(count):
                await stream.send_all(pieces[i % 16])
            await stream.send_eof()
            assert await read_all(stream) == b""
            elapsed = time.perf_counter() - start
            await stream.aclose()
            await conn.aclose()
            nursery.cancel_scope.cancel()
    assert digests == [expected.hexdigest()]
    rate = total * 8 / elapsed / 1e9
    print(f"\nHBONE, one stream, client and server in one process: {rate:.2f} Gbit/s")


@pytest.mark.parametrize("status", [503, 401, 400])
async def test_error_status_raises_and_connection_survives(status: int) -> None:
    async def handler(request: HboneRequest) -> None:
        if request.authority.startswith("10.0.0.9"):
            assert await request.respond(status) is None
        else:
            await echo_handler(request)

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            with pytest.raises(HboneStatusError) as err:
                await conn.open_stream("10.0.0.9:80")
            assert err.value.status == status
            assert conn.is_ready and conn.available_streams == 100
            stream = await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"still fine")
            await stream.send_eof()
            assert await read_all(stream) == b"still fine"
            await stream.aclose()
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_handler_that_does_not_answer_gives_503() -> None:
    async def handler(request: HboneRequest) -> None:
        return

    async def failing(request: HboneRequest) -> None:
        raise RuntimeError("handler bug")

    for h in (handler, failing):
        with trio.fail_after(10):
            async with hbone_server(h) as server, trio.open_nursery() as nursery:
                conn = await dial(server.address, nursery)
                with pytest.raises(HboneStatusError) as err:
                    await conn.open_stream("10.0.0.1:80")
                assert err.value.status == 503
                await conn.aclose()
                nursery.cancel_scope.cancel()


# --- identities -------------------------------------------------------------------------------


async def expect_refused(client: ssl.SSLContext, server_reason: str) -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            with pytest.raises(HboneHandshakeError) as err:
                await dial(server.address, nursery, ctx=client)
            while not server.handshake_errors:
                await trio.sleep(0.01)
            assert server_reason in server.handshake_errors[0], server.handshake_errors
            assert server.requests == []
            nursery.cancel_scope.cancel()
    print(f"\nclient saw: {err.value.reason}\nserver saw: {server.handshake_errors[0]}")


async def test_client_certificate_from_another_ca_fails_the_handshake() -> None:
    # The client trusts our CA (it would accept the server) but presents a rogue CA's chain.
    rogue = replace(
        workload_cert(CLIENT_ID, ca_name="rogue"), roots_pem=workload_cert(SERVER_ID).roots_pem
    )
    await expect_refused(client_context(rogue), "certificate verification failed")


async def test_client_trusting_another_ca_refuses_the_server() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            with pytest.raises(HboneHandshakeError, match="certificate verification failed"):
                await dial(server.address, nursery, ctx=client_ctx(CLIENT_ID, ca_name="rogue"))
            while not server.handshake_errors:
                await trio.sleep(0.01)
            assert "unknown ca" in server.handshake_errors[0]
            nursery.cancel_scope.cancel()


async def test_client_from_another_trust_domain_is_closed_after_the_handshake() -> None:
    # Signed by a CA the server trusts, but for a foreign trust domain.
    foreign = Identity("evil.example", "default", "client")
    ctx = client_context(workload_cert(foreign, ca_trust_domain=TRUST_DOMAIN))
    await expect_refused(ctx, "peer did not present the expected trustdomain")


async def test_client_without_certificate_fails_the_handshake() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.load_verify_locations(cadata="".join(workload_cert(SERVER_ID).roots_pem))
    await expect_refused(ctx, "certificate")


async def test_wrong_expected_server_identity_is_refused_by_the_client() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            expected = [Identity(TRUST_DOMAIN, "default", "someone-else")]
            with pytest.raises(HboneHandshakeError, match="server identity rejected") as err:
                await dial(server.address, nursery, expected=expected)
            assert "someone-else" in err.value.reason
            assert server.requests == []
            nursery.cancel_scope.cancel()


async def test_server_accepts_any_of_the_expected_identities() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            expected = [Identity(TRUST_DOMAIN, "default", "svc-san"), SERVER_ID]
            conn = await dial(server.address, nursery, expected=expected)
            assert conn.peer_identity == SERVER_ID
            await conn.aclose()
            nursery.cancel_scope.cancel()


# --- broken peers -----------------------------------------------------------------------------


async def test_peer_dies_mid_stream() -> None:
    handler_errors: list[str] = []

    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        try:
            while await stream.receive_some():
                pass
        except HboneStreamError as e:
            handler_errors.append(e.reason)

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            proxy = TcpProxy(server.address)
            await nursery.start(proxy.run)
            conn = await dial(proxy.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"x" * MiB)
            proxy.kill()
            with pytest.raises(HboneStreamError, match="connection lost"):
                while True:
                    await stream.send_all(b"y" * MiB)
            with pytest.raises(HboneStreamError, match="connection lost"):
                await stream.receive_some()
            assert not conn.is_ready
            with pytest.raises(HboneUnavailableError):
                await conn.open_stream("10.0.0.1:80")
            while not handler_errors:
                await trio.sleep(0.01)
            assert "connection lost" in handler_errors[0]
            nursery.cancel_scope.cancel()


async def test_keepalive_drops_a_silent_peer() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            proxy = TcpProxy(server.address)
            await nursery.start(proxy.run)
            conn = await dial(proxy.address, nursery, keepalive_interval=0.2, keepalive_timeout=0.3)
            stream = await conn.open_stream("10.0.0.1:80")
            proxy.freeze()
            with pytest.raises(HboneStreamError, match="no answer to PING"):
                await stream.receive_some()
            assert conn.closed_reason is not None and "PING" in conn.closed_reason
            nursery.cancel_scope.cancel()


async def test_keepalive_keeps_an_idle_connection() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            conn = await dial(
                server.address, nursery, keepalive_interval=0.05, keepalive_timeout=0.5
            )
            await trio.sleep(0.6)
            assert conn.is_ready
            stream = await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"after idle")
            await stream.send_eof()
            assert await read_all(stream) == b"after idle"
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_client_reset_reaches_the_handler() -> None:
    outcome: list[str] = []

    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        try:
            await read_all(stream)
            outcome.append("eof")
        except HboneStreamError as e:
            outcome.append(e.reason)

    with trio.fail_after(10):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"partial")
            stream.reset()
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_some()
            while not outcome:
                await trio.sleep(0.01)
            assert outcome == ["stream reset by peer (CANCEL)"]
            assert conn.is_ready
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_a_reader_that_stops_blocks_the_sender_at_the_window() -> None:
    release = trio.Event()
    got: list[int] = []

    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        await release.wait()
        got.append(len(await read_all(stream)))
        await stream.send_eof()
        await stream.aclose()

    with trio.fail_after(20):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            sent = 0
            with trio.move_on_after(1):
                while True:
                    await stream.send_all(bytes(64 * 1024))
                    sent += 64 * 1024
            # 4 MiB stream window, plus what sits in socket and TLS buffers.
            assert 4 * MiB <= sent < 12 * MiB
            release.set()
            await stream.send_all(bytes(64 * 1024))
            await stream.send_eof()
            assert await read_all(stream) == b""
            assert got == [sent + 64 * 1024]
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_connection_close_fails_open_streams() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)
            stream = await conn.open_stream("10.0.0.1:80")
            await conn.aclose()
            with pytest.raises(HboneStreamError, match="closed locally"):
                await stream.receive_some()
            nursery.cancel_scope.cancel()


async def test_drain_sends_goaway_open_streams_finish_then_the_connection_ends() -> None:
    drain = trio.Event()
    with trio.fail_after(10):
        async with hbone_server(echo_handler, drain=drain) as server, trio.open_nursery() as n:
            conn = await dial(server.address, n)
            stream = await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"before")
            assert bytes(await stream.receive_some()) == b"before"
            drain.set()
            while conn.is_ready:
                await trio.sleep(0.01)
            # The peer is draining: no new stream here, but the open one carries on both ways.
            with pytest.raises(HboneUnavailableError):
                await conn.open_stream("10.0.0.1:80")
            await stream.send_all(b"after")
            assert bytes(await stream.receive_some()) == b"after"
            assert server.connections_done == 0
            await stream.send_eof()
            assert await read_all(stream) == b""
            await stream.aclose()
            while server.connections_done == 0:
                await trio.sleep(0.01)
            assert conn.is_closed and server.handshake_errors == []


async def test_drain_closes_an_idle_connection_at_once() -> None:
    drain = trio.Event()
    with trio.fail_after(10):
        async with hbone_server(echo_handler, drain=drain) as server, trio.open_nursery() as n:
            conn = await dial(server.address, n)
            drain.set()
            while not conn.is_closed or server.connections_done == 0:
                await trio.sleep(0.01)
            assert conn.closed_reason == "peer sent GOAWAY"


# --- not HBONE at all -------------------------------------------------------------------------


async def listener() -> tuple[trio.socket.SocketType, tuple[str, int]]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    return sock, sock.getsockname()


async def test_plain_tcp_garbage_fails_the_handshake_cleanly() -> None:
    sock, address = await listener()

    async def garbage() -> None:
        conn, _ = await sock.accept()
        with conn:
            await conn.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await trio.sleep(1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(garbage)
            with pytest.raises(HboneHandshakeError, match="TLS handshake failed"):
                await dial(address, nursery)
            nursery.cancel_scope.cancel()
    sock.close()


async def test_silent_server_times_out() -> None:
    sock, address = await listener()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(HboneHandshakeError, match="timed out"):
                await dial(address, nursery, handshake_timeout=0.3)
            nursery.cancel_scope.cancel()
    sock.close()


async def test_tls_peer_that_speaks_no_http2() -> None:
    sock, address = await listener()
    ctx = server_ctx()

    async def tls_garbage() -> None:
        conn, _ = await sock.accept()
        from ztunnel_py.transport.tls import TlsTransport

        tls = TlsTransport(conn, ctx, server_side=True)
        await tls.handshake()
        await tls.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await trio.sleep(1)
        await tls.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tls_garbage)
            with pytest.raises(HboneHandshakeError, match="HTTP/2 setup failed"):
                await dial(address, nursery)
            nursery.cancel_scope.cancel()
    sock.close()


async def test_server_survives_a_client_sending_garbage_after_tls() -> None:
    with trio.fail_after(10):
        async with hbone_server(echo_handler) as server:
            from ztunnel_py.transport.tls import TlsTransport

            tls = TlsTransport(await tcp_connect(server.address), client_ctx(), server_side=False)
            await tls.handshake()
            await tls.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # The server answers with GOAWAY (after its SETTINGS) and closes.
            received = bytearray()
            while True:
                data = await tls.receive_some()
                if not data:
                    break
                received += data
            assert b"preface" in received
            await tls.aclose()
            while not server.connections_done:
                await trio.sleep(0.01)
            assert server.requests == []


async def test_hbone_stream_passes_trios_half_closeable_stream_checks() -> None:
    """trio's conformance suite: checkpoints, concurrent-use errors, close and EOF semantics."""
    trio.abc.HalfCloseableStream.register(HboneStream)
    server_side, accepted = trio.open_memory_channel[HboneStream](16)

    async def handler(request: HboneRequest) -> None:
        stream = await request.respond(200)
        assert stream is not None
        await server_side.send(stream)
        # The check closes the stream itself; the handler only has to outlive it.
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with hbone_server(handler) as server, trio.open_nursery() as nursery:
            conn = await dial(server.address, nursery)

            async def pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
                client = await conn.open_stream("10.0.0.1:80")
                server_stream = await accepted.receive()
                # Registered above: HboneStream returns memoryviews, which trio's ABC does not
                # declare, so the static types need telling.
                return cast(trio.abc.HalfCloseableStream, client), cast(
                    trio.abc.HalfCloseableStream, server_stream
                )

            await trio.testing.check_half_closeable_stream(pair, None)
            nursery.cancel_scope.cancel()
