"""The bench's load generator against real servers on loopback.

The testbed pod server (in a thread) is the well-behaved target, including its /bytes/N answers;
small trio servers in the test play the slow, garbage-speaking and silent ones. The slow server
is the open-loop proof: a closed-loop client would report the 50 ms service time, ours reports
the queue that builds behind it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from ztunnel_py.bench.loadgen import LatencyReport, run_connections, run_latency
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.testbed.podapp import MAX_BYTES, PodInfo
from ztunnel_py.testbed.podserver import PodHTTPServer

Handler = Callable[[trio.SocketStream], Awaitable[None]]


class CountingPodServer(PodHTTPServer):
    """The real pod server, counting the TCP connections it accepted."""

    accepted = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        request = super().get_request()
        self.accepted += 1
        return request


@contextlib.contextmanager
def running(name: str) -> Iterator[CountingPodServer]:
    srv = CountingPodServer(("127.0.0.1", 0), PodInfo(name, "apps", "node1"))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def podserver() -> Iterator[CountingPodServer]:
    with running("echo-1") as srv:
        yield srv


def _target(srv: PodHTTPServer) -> SocketAddr:
    return SocketAddr("127.0.0.1", srv.server_address[1])


async def _serve(nursery: trio.Nursery, handler: Handler) -> SocketAddr:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return SocketAddr("127.0.0.1", listeners[0].socket.getsockname()[1])


async def _read_request(stream: trio.SocketStream, pending: bytearray) -> bool:
    """Reads up to the end of one request head into `pending`; False once the client left."""
    while b"\r\n\r\n" not in pending:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return False
        pending += chunk
    del pending[: pending.index(b"\r\n\r\n") + 4]
    return True


def _assert_ordered(report: LatencyReport) -> None:
    assert report.p50_ms is not None and report.p90_ms is not None
    assert report.p99_ms is not None and report.max_ms is not None
    assert 0 < report.p50_ms <= report.p90_ms <= report.p99_ms <= report.max_ms


def test_pod_server_bytes_answers_exact_sizes_and_rejects_bad_ones(
    podserver: CountingPodServer, capfd: pytest.CaptureFixture[str]
) -> None:
    conn = http.client.HTTPConnection(str(_target(podserver)), timeout=5)
    try:
        for size in (0, 1, 1024, MAX_BYTES):
            conn.request("GET", f"/bytes/{size}")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Type") == "application/octet-stream"
            assert len(resp.read()) == size
        assert podserver.accepted == 1
        for bad in ("/bytes/", "/bytes/-1", "/bytes/1k", f"/bytes/{MAX_BYTES + 1}", "/bytes/1/2"):
            conn.request("GET", bad)
            resp = conn.getresponse()
            assert resp.status == 400
            assert b"from 0 to 1048576" in resp.read()
        conn.request("GET", "/bytes/16?x=1")
        assert len(conn.getresponse().read()) == 16
        conn.request("GET", "/other")
        assert json.loads(conn.getresponse().read())["path"] == "/other"
    finally:
        conn.close()
    logged = capfd.readouterr().err
    assert "/bytes/-1" in logged and "/other" in logged
    assert "/bytes/1024" not in logged and "/bytes/16" not in logged


async def test_every_scheduled_request_is_sent_at_the_rate_and_measured(
    podserver: CountingPodServer,
) -> None:
    report = await run_latency(
        _target(podserver), "/bytes/1024", rate=200, connections=4, duration=1.0, warmup=0.2
    )
    assert report.requests == 200
    assert report.errors == 0
    assert report.errors_by_reason == {}
    _assert_ordered(report)
    # Loose bounds: on a busy 2-vCPU runner the last responses may come a little late.
    assert 150 <= report.achieved_rps <= 202
    assert 0.99 <= report.duration_s <= 1.4
    assert podserver.accepted == 4


async def test_several_targets_share_the_connections_and_warm_up_is_sent_not_counted() -> None:
    with running("echo-1") as first, running("echo-2") as second:
        report = await run_latency(
            [_target(first), _target(second)], "/bytes/1024", rate=200, connections=4,
            duration=0.5, warmup=0.25,
        )  # fmt: skip
    # connections 0 and 2 to the first target, 1 and 3 to the second
    assert (first.accepted, second.accepted) == (2, 2)
    assert report.requests == 100 and report.errors == 0
    assert report.sent == report.answered == 150


async def test_a_slow_server_shows_as_queueing_not_as_its_service_time() -> None:
    async def slow(stream: trio.SocketStream) -> None:
        pending = bytearray()
        while await _read_request(stream, pending):
            await trio.sleep(0.05)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        target = await _serve(nursery, slow)
        # 50 req/s on one connection against 20/s of service: request k waits ~50 + 30k ms.
        report = await run_latency(target, "/", rate=50, connections=1, duration=1.0, warmup=0)
        nursery.cancel_scope.cancel()
    assert report.requests == 50
    assert report.errors == 0
    _assert_ordered(report)
    assert report.p50_ms is not None and report.p50_ms > 400
    assert report.p99_ms is not None and report.p99_ms > 1000
    assert report.late_sends >= 45
    assert report.achieved_rps < 30


async def test_a_refused_target_gives_errors_and_ends_on_schedule() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        target = SocketAddr("127.0.0.1", reserved.getsockname()[1])
        began = time.monotonic()
        report = await run_latency(target, "/", rate=100, connections=4, duration=0.5, warmup=0)
        latency_took = time.monotonic() - began
        began = time.monotonic()
        conns = await run_connections(target, "/", duration=0.3, concurrency=2)
        connections_took = time.monotonic() - began
    assert report.requests == 0
    assert report.errors == 50
    assert report.errors_by_reason == {"connect: connection refused": 50}
    assert report.p99_ms is None
    assert latency_took < 2
    assert conns.connections == 0
    assert 0 < conns.errors < 100  # attempts are spaced by a backoff, not a tight loop
    assert conns.errors_by_reason == {"connect: connection refused": conns.errors}
    assert connections_took < 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "request: bad response: malformed status line"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "request: bad response: Transfer-Encoding responses are not supported",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part",
            "request: bad response: connection closed before the response body was complete",
        ),
        (b"\x00\xff" * 10_000, "request: bad response: no end of the response head"),
    ],
)
async def test_garbage_answers_are_errors_not_crashes(answer: bytes, reason: str) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        if await _read_request(stream, bytearray()):
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        target = await _serve(nursery, garbage)
        report = await run_latency(target, "/", rate=100, connections=2, duration=0.3, warmup=0)
        conns = await run_connections(target, "/", duration=0.2, concurrency=1, max_connections=5)
        nursery.cancel_scope.cancel()
    assert report.requests == 0
    assert report.errors == 30
    assert [r[: len(reason)] for r in report.errors_by_reason] == [reason]
    assert conns.connections == 0
    assert [r[: len(reason)] for r in conns.errors_by_reason] == [reason]


async def test_a_silent_server_times_out_within_the_bound() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        target = await _serve(nursery, silent)
        began = time.monotonic()
        report = await run_latency(
            target, "/", rate=20, connections=2, duration=0.5, warmup=0, request_timeout=0.2
        )
        took = time.monotonic() - began
        nursery.cancel_scope.cancel()
    assert report.requests == 0
    assert report.errors == 10
    assert "request: timed out after 0.2 s" in report.errors_by_reason
    assert took < 0.5 + 2 * 0.2 + 0.3


async def test_the_hard_deadline_ends_a_run_the_server_cannot_keep_up_with() -> None:
    async def crawling(stream: trio.SocketStream) -> None:
        pending = bytearray()
        while await _read_request(stream, pending):
            await trio.sleep(0.3)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        target = await _serve(nursery, crawling)
        began = time.monotonic()
        # 20 requests need 6 s of service; the deadline is 1 + 2 x 0.5 = 2 s after the start.
        report = await run_latency(
            target, "/", rate=20, connections=1, duration=1.0, warmup=0, request_timeout=0.5
        )
        took = time.monotonic() - began
        nursery.cancel_scope.cancel()
    assert 1.9 < took < 2.5
    assert 4 <= report.requests <= 7
    assert report.requests + report.errors == 20
    assert report.errors_by_reason == {"not answered before the deadline": report.errors}


async def test_error_statuses_count_as_errors_on_a_kept_connection(
    podserver: CountingPodServer,
) -> None:
    report = await run_latency(
        _target(podserver), "/bytes/huge", rate=100, connections=2, duration=0.3, warmup=0
    )
    assert report.requests == 0
    assert report.errors_by_reason == {"HTTP status 400": 30}
    assert podserver.accepted == 2


async def test_connections_are_new_per_request_and_bounded_by_max(
    podserver: CountingPodServer,
) -> None:
    report = await run_connections(
        _target(podserver), "/bytes/0", duration=3.0, concurrency=4, max_connections=120
    )
    assert report.connections == 120
    assert report.errors == 0
    assert podserver.accepted == 120
    assert report.p50_ms is not None and report.p99_ms is not None
    assert 0 < report.p50_ms <= report.p99_ms
    assert report.per_second > 0
    assert report.duration_s < 3.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.bench.loadgen", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_cli_prints_one_json_object(podserver: CountingPodServer) -> None:
    target = f"127.0.0.1:{podserver.server_address[1]}"
    lat = _cli("latency", "--target", target, "--rate", "100", "--connections", "2",
               "--duration", "0.5", "--warmup", "0.1")  # fmt: skip
    assert lat.returncode == 0, lat.stderr
    report = json.loads(lat.stdout)
    assert report["requests"] == 50 and report["errors"] == 0
    assert set(report) >= {"achieved_rps", "late_sends", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                           "mean_ms", "duration_s"}  # fmt: skip
    assert "latency: 100 req/s over 2 connections" in lat.stderr
    con = _cli("connections", "--target", target, "--duration", "0.3", "--max", "20")
    assert con.returncode == 0, con.stderr
    assert json.loads(con.stdout)["connections"] == 20


def test_cli_refuses_bad_arguments_with_exit_2() -> None:
    for args, message in (
        (["latency", "--target", "pod-a:8080"], "is not IP:PORT"),
        (["latency", "--target", "127.0.0.1:80", "--rate", "0"], "rate must be from 1"),
        (["connections", "--target", "127.0.0.1:80", "--max", "0"], "max must be from 1"),
        (["connections"], "--target"),
        (["flood", "--target", "127.0.0.1:80"], "invalid choice"),
    ):
        result = _cli(*args)
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stdout == ""


def test_cli_with_nothing_answered_still_prints_json_and_fails() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        result = _cli("latency", "--target", f"127.0.0.1:{port}", "--rate", "20",
                      "--duration", "0.2", "--warmup", "0")  # fmt: skip
    assert result.returncode == 1
    assert json.loads(result.stdout)["errors"] == 4
    assert "connect: connection refused" in result.stderr
