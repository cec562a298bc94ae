"""The data-path TLS transport (MemoryBIO + SSLObject) on real sockets."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.integration.hbone_support import SERVER_ID, client_ctx, server_ctx, workload_cert
from ztunnel_py.transport.tls import TlsError, TlsTransport

MiB = 1024 * 1024


@asynccontextmanager
async def tls_pair() -> AsyncIterator[tuple[TlsTransport, TlsTransport]]:
    """A handshaken client/server pair over a TCP connection on loopback."""
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await client_sock.connect(listener.getsockname())
    server_sock, _ = await listener.accept()
    listener.close()
    client = TlsTransport(client_sock, client_ctx(), server_side=False)
    server = TlsTransport(server_sock, server_ctx(), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handshake)
        await client.handshake()
    try:
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()


async def read_exactly(tls: TlsTransport, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = await tls.receive_some()
        assert data, "unexpected end of stream"
        out += data
    return bytes(out)


async def test_handshake_negotiates_tls13_h2_and_exposes_the_peer() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            assert client.version == "TLSv1.3"
            assert client.alpn_protocol == "h2" and server.alpn_protocol == "h2"
            assert client.cipher in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
            assert client.peer_leaf_der() == workload_cert(SERVER_ID).leaf_der
            assert server.peer_leaf_der() is not None


async def test_one_receive_drains_every_buffered_record() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            await client.send_all(bytes(MiB))
            # Let all of it reach the server's socket buffer, then read once.
            await trio.sleep(0.2)
            first = await server.receive_some(2 * MiB)
            # One TLS record carries at most 16 KiB: a single call returned several of them
            # (as many as the socket had; how many depends on the kernel's buffer sizing).
            assert len(first) > 2 * 16384
            assert len(first) + len(await read_exactly(server, MiB - len(first))) == MiB


async def test_receive_into_a_caller_buffer() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            await client.send_all(b"hello world")
            buffer = bytearray(4)
            got = bytearray()
            while len(got) < 11:
                count = await server.receive_into(memoryview(buffer))
                got += buffer[:count]
            assert got == b"hello world"


async def test_large_transfer_both_ways() -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    with trio.fail_after(20):
        async with tls_pair() as (client, server), trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            nursery.start_soon(server.send_all, payload[::-1])
            assert await read_exactly(server, len(payload)) == payload
            assert await read_exactly(client, len(payload)) == payload[::-1]


async def test_close_notify_and_half_close() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            await client.send_all(b"request")
            await client.send_eof()
            with pytest.raises(TlsError, match="send_eof"):
                await client.send_all(b"too late")
            assert await read_exactly(server, 7) == b"request"
            assert len(await server.receive_some()) == 0
            # The other direction still works (TLS 1.3 half-close).
            await server.send_all(b"response")
            assert await read_exactly(client, 8) == b"response"


async def test_send_eof_keeps_data_that_was_already_buffered() -> None:
    """OpenSSL refuses application data buffered before close_notify; we hold it instead."""
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            await server.send_all(b"in flight")
            await trio.sleep(0.1)
            first = await client.receive_some(1)
            await server.send_all(b" and more")
            await trio.sleep(0.1)
            # The rest of "in flight" sits decrypted-or-not inside the client when it closes.
            await client.send_eof()
            rest = await read_exactly(client, len(b"in flight and more") - 1)
            assert bytes(first) + rest == b"in flight and more"


async def test_aclose_sends_close_notify() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            await client.aclose()
            assert len(await server.receive_some()) == 0
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"x")


async def test_ragged_eof_is_end_of_stream() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            await client.send_all(b"last words")
            client.socket.close()
            assert await read_exactly(server, 10) == b"last words"
            assert len(await server.receive_some()) == 0


async def test_peer_reset_is_a_tls_error() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            await client.send_all(b"x")
            await trio.sleep(0.05)
            client.socket.close()
            with pytest.raises(TlsError, match="reset"):
                while True:
                    await server.send_all(bytes(65536))


async def test_concurrent_senders_are_refused() -> None:
    with trio.fail_after(10):
        async with tls_pair() as (client, server):
            with pytest.RaisesGroup(trio.BusyResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_all, bytes(32 * MiB))
                    nursery.start_soon(client.send_all, b"x")
            del server


async def test_handshake_timeout() -> None:
    a, b = trio.socket.socketpair()
    tls = TlsTransport(a, client_ctx(), server_side=False, handshake_timeout=0.2)
    with trio.fail_after(5), pytest.raises(TlsError, match=r"timed out after 0\.2s"):
        await tls.handshake()
    await tls.aclose()
    b.close()


async def test_garbage_instead_of_tls() -> None:
    a, b = trio.socket.socketpair()
    tls = TlsTransport(a, server_ctx(), server_side=True)
    await b.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    with (
        trio.fail_after(5),
        pytest.raises(TlsError, match=r"did not start a TLS handshake \(it sent b.GET /.\)"),
    ):
        await tls.handshake()
    await tls.aclose()
    b.close()


async def test_peer_closing_during_the_handshake() -> None:
    a, b = trio.socket.socketpair()
    b.close()
    tls = TlsTransport(a, client_ctx(), server_side=False)
    with trio.fail_after(5), pytest.raises(TlsError, match=r"during the TLS handshake|reset"):
        await tls.handshake()
    await tls.aclose()


async def test_untrusted_server_certificate() -> None:
    a, b = trio.socket.socketpair()
    rogue_client = TlsTransport(a, client_ctx(ca_name="rogue"), server_side=False)
    server = TlsTransport(b, server_ctx(), server_side=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_expect_failure, server)
            with pytest.raises(TlsError, match="certificate verification failed"):
                await rogue_client.handshake()
    await rogue_client.aclose()
    await server.aclose()


async def _expect_failure(tls: TlsTransport) -> None:
    with pytest.raises(TlsError, match="unknown ca"):
        await tls.handshake()


def test_contexts_require_tls13() -> None:
    assert client_ctx().minimum_version == ssl.TLSVersion.TLSv1_3
