"""Abusive HBONE clients over real TLS on loopback: the server bounds its work and cuts them off.

The attacker holds a valid mesh certificate (a compromised pod) and speaks HTTP/2 through the
sans-IO client core, so it can send what a well-behaved client never would.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from tests.integration.hbone_support import (
    CLIENT_ID,
    SLOW_HANDSHAKES,
    TcpApp,
    client_ctx,
    dial,
    echo_handler,
    hbone_server,
    tcp_connect,
    workload_cert,
)
from ztunnel_py.protocol.hbone import ConnectionTerminated, ErrorCodes, Event, HboneClient
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.telemetry.peererrors import PeerErrors
from ztunnel_py.telemetry.ratelimit import LogLimiter
from ztunnel_py.transport.hbone import HboneRequest
from ztunnel_py.transport.tls import (
    DEFAULT_MAX_HANDSHAKES,
    HandshakeLimit,
    TlsError,
    TlsTransport,
)


class RawClient:
    """An HBONE client that frames whatever it is told to, over TLS."""

    def __init__(self, tls: TlsTransport) -> None:
        self.tls = tls
        self.core = HboneClient()
        self.terminated: ConnectionTerminated | None = None

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        tls = TlsTransport(await tcp_connect(address), client_ctx(), server_side=False)
        await tls.handshake()
        client = cls(tls)
        await client.flush()
        while not client.core.peer_settings_received:
            client.feed(await tls.receive_some())
        return client

    def feed(self, data: bytes | memoryview) -> list[Event]:
        events = self.core.receive_data(data)
        for event in events:
            if isinstance(event, ConnectionTerminated):
                self.terminated = event
        return events

    async def flush(self) -> None:
        await self.tls.send_all(self.core.data_to_send())

    async def read_until_closed(self) -> None:
        try:
            while data := await self.tls.receive_some():
                self.feed(data)
        except (TlsError, trio.BrokenResourceError):
            pass


async def test_rapid_reset_flood_is_bounded_and_cut_with_enhance_your_calm() -> None:
    app = TcpApp()
    handlers_started = 0

    async def handler(request: HboneRequest) -> None:
        nonlocal handlers_started
        if request.authority == "10.0.0.2:80":
            await echo_handler(request)
            return
        handlers_started += 1
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            await sock.connect(app.address)
            await request.respond(200)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, hbone_server(handler) as server:
            await nursery.start(app.run)
            # A well-behaved client with a tunnel open on the same server.
            good = await dial(server.address, nursery)
            tunnel = await good.open_stream("10.0.0.2:80")

            attacker = await RawClient.connect(server.address)
            nursery.start_soon(attacker.read_until_closed)
            sent = 0
            while sent < 3000 and attacker.terminated is None:
                for _ in range(100):
                    attacker.core.reset_stream(attacker.core.start_connect("10.0.0.1:80"))
                sent += 100
                try:
                    await attacker.flush()
                except (TlsError, trio.BrokenResourceError):
                    break
            with trio.fail_after(10):
                while attacker.terminated is None:
                    await trio.sleep(0.01)
            assert attacker.terminated.remote
            assert attacker.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
            # The reset streams cost next to no work: their handlers were cancelled first.
            assert app.accepted <= 20, app.accepted
            assert handlers_started <= 500

            # The server still serves: the open tunnel never noticed, a new client gets in.
            await tunnel.send_all(b"still here")
            assert bytes(await tunnel.receive_some()) == b"still here"
            fresh = await dial(server.address, nursery)
            stream = await fresh.open_stream("10.0.0.2:80")
            await stream.send_all(b"hello")
            assert bytes(await stream.receive_some()) == b"hello"
            await good.aclose()
            await fresh.aclose()
            nursery.cancel_scope.cancel()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("mode", ["partial", "hello"])
async def test_500_stalled_handshakes_cost_little_memory_and_real_clients_get_through(
    mode: str,
) -> None:
    # Before: an SSLObject, its buffers and a 64 KiB read buffer per pending handshake, about
    # 120 KB each (60 MB for 500). Now a partial ClientHello costs its bytes, and past the
    # ClientHello the limit keeps at most DEFAULT_MAX_HANDSHAKES handshakes, the newest.
    limit = HandshakeLimit()
    count = 500
    with trio.fail_after(60):
        async with (
            trio.open_nursery() as nursery,
            hbone_server(echo_handler, handshakes=limit) as server,
        ):
            gc.collect()
            before = rss_kib()
            host, port = server.address
            argv = [sys.executable, "-c", SLOW_HANDSHAKES, host, str(port), str(count), mode]
            attacker = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            try:
                assert attacker.stdout is not None and attacker.stdin is not None
                assert await attacker.stdout.receive_some() == b"held\n"
                while server.accepted < count or (mode == "hello" and limit.abandoned < 300):
                    await trio.sleep(0.05)
                await trio.sleep(0.5)
                gc.collect()
                grown = rss_kib() - before
                assert grown < 15 * 1024, f"{grown} KiB for {count} stalled handshakes"
                if mode == "hello":
                    assert limit.active == limit.limit == DEFAULT_MAX_HANDSHAKES
                    assert limit.abandoned >= count - limit.limit
                    assert any(
                        "more than 128 handshakes in progress" in e for e in server.handshake_errors
                    )
                # A real client, arriving last, gets a tunnel.
                conn = await dial(server.address, nursery)
                stream = await conn.open_stream("10.0.0.2:80")
                await stream.send_all(b"hello")
                assert bytes(await stream.receive_some()) == b"hello"
                await conn.aclose()
            finally:
                await attacker.stdin.aclose()
                await attacker.wait()
            nursery.cancel_scope.cancel()


async def test_a_client_speaking_plain_http_to_the_tls_port_is_told_so() -> None:
    async with hbone_server(echo_handler) as server:
        sock = await tcp_connect(server.address)
        await sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            while not server.handshake_errors:
                await trio.sleep(0.01)
        sock.close()
    assert server.handshake_errors == [
        "the client did not start a TLS handshake (it sent b'GET /')"
    ]


@pytest.mark.parametrize(
    ("suite", "refused"),
    [("TLS_CHACHA20_POLY1305_SHA256", True), ("TLS_AES_128_GCM_SHA256", False)],
)
async def test_a_peer_negotiating_another_suite_than_aes_gcm_is_refused(
    tmp_path: Path, suite: str, refused: bool
) -> None:
    # openssl s_client as the client, offering only `suite`, with a valid mesh certificate.
    cert = workload_cert(CLIENT_ID)
    (tmp_path / "key.pem").write_text(cert.key_pem)
    (tmp_path / "chain.pem").write_text("".join(cert.chain_pem))
    (tmp_path / "roots.pem").write_text("".join(cert.roots_pem))
    async with hbone_server(echo_handler) as server:
        argv = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{server.address[1]}", "-tls1_3",
            "-ciphersuites", suite, "-alpn", "h2", "-key", str(tmp_path / "key.pem"),
            "-cert", str(tmp_path / "chain.pem"), "-CAfile", str(tmp_path / "roots.pem"),
        ]  # fmt: skip
        with trio.fail_after(10):
            done = await trio.run_process(argv, stdin=b"", capture_stdout=True, check=False)
            while server.connections_done < 1:
                await trio.sleep(0.01)
        assert f"Cipher is {suite}" in done.stdout.decode()
    if refused:
        assert server.handshake_errors == [
            f"peer negotiated cipher suite {suite}; HBONE allows only "
            "TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256"
        ]
    else:
        assert server.handshake_errors == []


async def test_our_peers_agree_on_aes_256_gcm() -> None:
    async with trio.open_nursery() as nursery, hbone_server(echo_handler) as server:
        conn = await dial(server.address, nursery)
        assert conn.tls.cipher == "TLS_AES_256_GCM_SHA384"
        await conn.aclose()


def hbone_errors(registry: CollectorRegistry, kind: str, reason: str) -> float:
    value = registry.get_sample_value(
        "ztunnel_py_hbone_errors_total", {"kind": kind, "reason": reason}
    )
    return value or 0.0


async def test_attacks_leave_a_trace_counted_and_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ztunnel_py.hbone.peers")
    registry = CollectorRegistry()
    errors = PeerErrors(Metrics(registry, process_metrics=False))
    with trio.fail_after(30):
        async with (
            trio.open_nursery() as nursery,
            hbone_server(echo_handler, events=errors) as server,
        ):
            port = server.address[1]
            # 50 plain-text HTTP requests to the TLS port.
            for _ in range(50):
                sock = await tcp_connect(server.address)
                await sock.send(b"GET / HTTP/1.1\r\n\r\n")
                with contextlib.suppress(OSError):
                    await sock.recv(10)
                sock.close()
            # HTTP/1.1 after TLS with ALPN h2, from a mesh identity.
            tls = TlsTransport(await tcp_connect(server.address), client_ctx(), server_side=False)
            await tls.handshake()
            local = tls.socket.getsockname()
            await tls.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            with contextlib.suppress(TlsError):
                while await tls.receive_some():
                    pass
            await tls.aclose()
            # Two streams reset by the client.
            conn = await dial(server.address, nursery)
            for _ in range(2):
                (await conn.open_stream("10.0.0.2:80")).reset()
            await conn.aclose()
            while server.connections_done < 52:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert hbone_errors(registry, "handshake", "not_tls") == 50
    assert hbone_errors(registry, "protocol", "PROTOCOL_ERROR") == 1
    assert hbone_errors(registry, "stream_reset", "CANCEL") == 2
    lines = [r for r in caplog.records if r.name == "ztunnel_py.hbone.peers"]
    handshakes = [r for r in lines if r.getMessage() == "HBONE handshake failed"]
    assert len(handshakes) == 20  # the burst; the other 30 are counted, not logged (yet)
    first = handshakes[0].fields  # type: ignore[attr-defined]
    assert first["dst.addr"] == f"127.0.0.1:{port}"
    assert first["src.addr"].startswith("127.0.0.1:") and first["src.addr"] != "127.0.0.1:"
    assert first["error"] == "the client did not start a TLS handshake (it sent b'GET /')"
    (protocol,) = [r for r in lines if "protocol error" in r.getMessage()]
    assert protocol.levelno == logging.WARNING
    assert protocol.fields["src.addr"] == f"127.0.0.1:{local[1]}"  # type: ignore[attr-defined]
    assert protocol.fields["code"] == "PROTOCOL_ERROR"  # type: ignore[attr-defined]
    resets = [r for r in lines if "reset" in r.getMessage()]
    assert len(resets) == 2 and all(r.levelno == logging.DEBUG for r in resets)


def test_the_log_limiter_lets_a_burst_through_then_reports_what_it_left_out() -> None:
    now = [0.0]
    limiter = LogLimiter(burst=3, interval=3.0, clock=lambda: now[0])
    assert [limiter.allow("k") for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.allow("other") == 0  # keys are limited on their own
    now[0] += 1.0  # one line's worth of tokens back
    assert limiter.allow("k") == 2
    assert limiter.allow("k") is None
