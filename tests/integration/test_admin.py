"""The admin, metrics and readiness servers over real loopback HTTP (curl and raw sockets)."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import trio
from prometheus_client import CollectorRegistry

from ztunnel_py.admin import ConfigDump, Readiness, serve_admin, serve_metrics, serve_readiness
from ztunnel_py.admin.http import Limits, Request, Response, Router, serve_http
from ztunnel_py.admin.readiness import readiness_router
from ztunnel_py.model import NetworkAddress, Service, Workload
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.logs import LogLevels
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.transport.relay import SocketByteStream, relay
from ztunnel_py.xds.localconfig import parse_local_config

# listen on loopback, on any free port
ANY_LOOPBACK_PORT = SocketAddr("127.0.0.1", 0)

LOCAL = """
workloads:
- {uid: u1, name: a, namespace: demo, workloadIps: [10.0.0.1], protocol: HBONE,
   services: {demo/web.demo.svc.cluster.local: {80: 8080}}}
services:
- {name: web, namespace: demo, hostname: web.demo.svc.cluster.local, vips: [/10.96.0.1],
   ports: {80: 8080}}
policies:
- {name: deny, namespace: demo, scope: Namespace, action: Deny, dryRun: false,
   rules: [[[{destinationPorts: [9000]}]]]}
"""


def port_of(listeners: list[trio.SocketListener]) -> int:
    port = listeners[0].socket.getsockname()[1]
    assert isinstance(port, int)
    return port


async def curl(*args: str) -> tuple[int, str]:
    """Run curl; returns (HTTP status, body)."""
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    body, _, status = result.stdout.decode().rpartition("\n")
    return int(status), body


async def raw(port: int, data: bytes, *, shutdown_write: bool = True) -> bytes:
    """Send raw bytes, read everything until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if shutdown_write:
            await stream.send_eof()
        chunks = []
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def start_admin(
    nursery: trio.Nursery,
    dump: ConfigDump,
    levels: LogLevels | None = None,
    shutdown: Callable[[], None] = lambda: None,
) -> list[trio.SocketListener]:
    """An admin server for `dump` on a free loopback port; its listeners."""
    listeners: list[trio.SocketListener] = await nursery.start(
        lambda task_status: serve_admin(
            config_dump=dump,
            log_levels=levels or LogLevels(),
            shutdown=shutdown,
            address=ANY_LOOPBACK_PORT,
            task_status=task_status,
        )
    )
    return listeners


@dataclass
class Admin:
    url: str
    port: int
    state: ProxyState
    levels: LogLevels
    shutdowns: list[str]


@pytest.fixture
async def admin(nursery: trio.Nursery) -> AsyncIterator[Admin]:
    state = ProxyState()
    config = parse_local_config(LOCAL)
    state.replace(config.workloads, config.services, config.policies)
    dump = ConfigDump()
    dump.add_sections(state.lazy_dump)
    dump.add_section("certificates", lambda: [])
    dump.add_section("version", lambda: {"version": "test"})
    levels = LogLevels("info")
    shutdowns: list[str] = []
    listeners = await start_admin(nursery, dump, levels, lambda: shutdowns.append("bye"))
    port = port_of(listeners)
    yield Admin(f"http://127.0.0.1:{port}", port, state, levels, shutdowns)
    levels.reset()


async def test_config_dump_is_istioctl_shaped(admin: Admin) -> None:
    status, body = await curl(f"{admin.url}/config_dump")
    assert status == 200
    dump = json.loads(body)
    assert list(dump) == ["workloads", "services", "policies", "certificates", "version"]
    (w,) = dump["workloads"]
    assert (w["uid"], w["workloadIps"], w["protocol"], w["namespace"]) == (
        "u1",
        ["10.0.0.1"],
        "HBONE",
        "demo",
    )
    (s,) = dump["services"]
    assert s["vips"] == ["/10.96.0.1"] and s["endpoints"]["u1"]["port"] == {"80": 8080}
    (p,) = dump["policies"]
    assert (p["name"], p["action"], p["scope"]) == ("deny", "Deny", "Namespace")
    assert "workloadState" not in dump  # nobody provides it: omitted


async def test_config_dump_follows_state_changes(admin: Admin) -> None:
    admin.state.replace([], [], [])
    status, body = await curl(f"{admin.url}/config_dump")
    assert status == 200
    assert json.loads(body)["workloads"] == []


async def test_logging_show_set_module_and_reset(admin: Admin) -> None:
    status, body = await curl("-X", "POST", f"{admin.url}/logging")
    assert (status, body) == (200, "current log level is info\n")
    status, body = await curl("-X", "POST", f"{admin.url}/logging?level=debug")
    assert (status, body) == (200, "new log level is debug\n")
    assert logging.getLogger("ztunnel_py").level == logging.DEBUG
    assert logging.getLogger("access").level == logging.DEBUG
    # istioctl's form: access:debug, plus a module of ours
    status, body = await curl(
        "-X", "POST", f"{admin.url}/logging?level=access:warn,agent.xds=error"
    )
    assert (status, body) == (200, "new log level is debug,access=warn,agent.xds=error\n")
    assert logging.getLogger("access").level == logging.WARNING
    assert logging.getLogger("ztunnel_py.agent.xds").level == logging.ERROR
    status, body = await curl("-X", "POST", f"{admin.url}/logging?level=loud")
    assert status == 400 and "invalid level 'loud'" in body
    status, body = await curl("-X", "POST", f"{admin.url}/logging?volume=11")
    assert status == 400 and "unknown parameter 'volume'" in body
    status, body = await curl("-X", "POST", f"{admin.url}/logging?reset")
    assert (status, body) == (200, "log level reset to info\n")
    assert logging.getLogger("access").level == logging.INFO
    assert logging.getLogger("ztunnel_py.agent.xds").level == logging.NOTSET


async def test_quitquitquit_replies_then_shuts_down(admin: Admin) -> None:
    status, _ = await curl("-X", "POST", f"{admin.url}/quitquitquit")
    assert status == 200 and admin.shutdowns == ["bye"]


async def test_index_unknown_path_and_wrong_method(admin: Admin) -> None:
    status, body = await curl(f"{admin.url}/")
    assert status == 200 and "/config_dump" in body and "/quitquitquit" in body
    status, body = await curl(f"{admin.url}/nope")
    assert status == 404 and "no such endpoint: /nope" in body
    status, body = await curl(f"{admin.url}/quitquitquit")
    assert status == 405 and "use POST" in body
    assert admin.shutdowns == []
    status, body = await curl("-X", "DELETE", f"{admin.url}/config_dump")
    assert status == 405 and "use GET, HEAD" in body


async def test_head_and_keepalive(admin: Admin) -> None:
    reply = await raw(
        admin.port,
        b"HEAD /config_dump HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    heads = re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+", reply)
    assert heads == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"]
    assert b'"workloads"' not in reply  # HEAD has no body


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
        b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n",
    ],
)
async def test_garbage_gets_400_and_close(admin: Admin, garbage: bytes) -> None:
    reply = await raw(admin.port, garbage, shutdown_write=False)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") or reply.startswith(
        b"HTTP/1.1 431 "
    ), reply[:80]
    assert b"connection: close" in reply
    # and the server still serves
    status, _ = await curl(f"{admin.url}/")
    assert status == 200


async def test_oversized_body_is_refused(nursery: trio.Nursery) -> None:
    router = Router()

    async def echo(request: Request) -> Response:
        return Response(200, request.body)

    router.add("POST", "/echo", echo)
    limits = Limits(max_body_bytes=1024)
    listeners = await nursery.start(
        lambda task_status: serve_http(
            router, ANY_LOOPBACK_PORT, name="t", limits=limits, task_status=task_status
        )
    )
    url = f"http://127.0.0.1:{port_of(listeners)}/echo"
    status, body = await curl("--data-binary", "x" * 10, url)
    assert (status, body) == (200, "x" * 10)
    with trio.fail_after(0.8):  # curl waits 1 s for "100 Continue" before sending >1 KiB
        status, body = await curl("--data-binary", "y" * 1000, "-H", "Expect: 100-continue", url)
    assert (status, body) == (200, "y" * 1000)
    with trio.fail_after(0.8):  # refused on its Content-Length, before the body
        status, body = await curl("--data-binary", "x" * 5000, url)
    assert status == 413 and "too large" in body


async def test_handler_error_is_500_and_server_survives(nursery: trio.Nursery) -> None:
    dump = ConfigDump()
    dump.add_section("broken", lambda: 1 / 0)
    listeners = await start_admin(nursery, dump)
    url = f"http://127.0.0.1:{port_of(listeners)}"
    status, body = await curl(f"{url}/config_dump")
    assert status == 500 and "division by zero" in body
    status, _ = await curl(f"{url}/")
    assert status == 200


async def test_slow_and_silent_clients_do_not_block_others(nursery: trio.Nursery) -> None:
    readiness = Readiness()
    limits = Limits(request_timeout=0.5)
    listeners = await nursery.start(
        lambda task_status: serve_http(
            readiness_router(readiness),
            ANY_LOOPBACK_PORT,
            name="t",
            limits=limits,
            task_status=task_status,
        )
    )
    port = port_of(listeners)
    silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
    slow = await trio.open_tcp_stream("127.0.0.1", port)
    await slow.send_all(b"GET /healthz/ready HTTP/1.1\r\nhost:")  # never finishes
    with trio.fail_after(2):
        status, body = await curl(f"http://127.0.0.1:{port}/healthz/ready")
    assert (status, body) == (200, "ready\n")
    with trio.fail_after(5):
        # the silent ones are closed without a word, the slow one gets a 408
        for s in silent:
            assert await s.receive_some(100) == b""
        reply = await slow.receive_some(1000)
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout")
    for s in [*silent, slow]:
        await s.aclose()


async def test_past_the_limit_idle_connections_make_room_and_busy_ones_get_503(
    nursery: trio.Nursery,
) -> None:
    limits = Limits(max_connections=2, idle_timeout=5, request_timeout=5)
    listeners = await nursery.start(
        lambda task_status: serve_http(
            Router(), ANY_LOOPBACK_PORT, name="t", limits=limits, task_status=task_status
        )
    )
    port = port_of(listeners)
    # Two idle connections: a new one takes the place of the oldest.
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    await trio.sleep(0.1)
    reply = await raw(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 Not Found")
    with trio.fail_after(1):
        assert await idle[0].receive_some(100) == b""
    for s in idle:
        await s.aclose()
    # Two connections in the middle of a request: no room, 503.
    busy = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for s in busy:
        await s.send_all(b"GET / HTTP/1.1\r\nhost:")
    await trio.sleep(0.1)
    reply = await raw(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable")
    for s in busy:
        await s.aclose()
    await trio.sleep(0.1)
    reply = await raw(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 Not Found")


async def test_300_idle_connections_to_the_readiness_port_never_fail_a_probe(
    nursery: trio.Nursery,
) -> None:
    # Any pod can open them; before, 200 made /healthz/ready answer 503 for 10 s, and a
    # kubelet would have marked the agent NotReady.
    readiness = Readiness()
    listeners = await nursery.start(
        lambda task_status: serve_readiness(
            readiness=readiness, address=ANY_LOOPBACK_PORT, task_status=task_status
        )
    )
    port = port_of(listeners)
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(300)]
    await trio.sleep(0.2)
    url = f"http://127.0.0.1:{port_of(listeners)}/healthz/ready"
    for _ in range(5):
        with trio.fail_after(1):
            assert await curl(url) == (200, "ready\n")
    # And each idle one is closed within a second or so.
    with trio.fail_after(3):
        for s in idle:
            assert await s.receive_some(100) == b""
    for s in idle:
        await s.aclose()


async def test_readiness_transitions(nursery: trio.Nursery) -> None:
    readiness = Readiness()
    xds = readiness.register("xds")
    readiness.register("workload proxy manager")
    listeners = await nursery.start(
        lambda task_status: serve_readiness(
            readiness=readiness, address=ANY_LOOPBACK_PORT, task_status=task_status
        )
    )
    url = f"http://127.0.0.1:{port_of(listeners)}/healthz/ready"
    assert await curl(url) == (500, "not ready, pending: xds, workload proxy manager\n")
    readiness.mark_ready(xds)
    assert await curl(url) == (500, "not ready, pending: workload proxy manager\n")
    readiness.mark_ready("workload proxy manager")
    readiness.mark_ready("workload proxy manager")
    assert await curl(url) == (200, "ready\n")
    status, _ = await curl("-X", "POST", url)
    assert status == 405
    with pytest.raises(ValueError, match="never registered"):
        readiness.mark_ready("typo")
    with pytest.raises(ValueError, match="already registered"):
        readiness.register("xds")


async def test_metrics_text_and_openmetrics(nursery: trio.Nursery) -> None:
    registry = CollectorRegistry()
    Metrics(registry, tag="1.2.3")
    listeners = await nursery.start(
        lambda task_status: serve_metrics(
            registry=registry, address=ANY_LOOPBACK_PORT, task_status=task_status
        )
    )
    base = f"http://127.0.0.1:{port_of(listeners)}"
    for path in ("/metrics", "/stats/prometheus"):
        status, body = await curl(f"{base}{path}")
        assert status == 200
        assert 'istio_build{component="ztunnel",tag="1.2.3"} 1.0' in body
        assert "process_open_fds" in body
        assert "# EOF" not in body
    status, body = await curl(
        "-H", "Accept: application/openmetrics-text; version=1.0.0", base + "/metrics"
    )
    assert status == 200 and body.rstrip().endswith("# EOF")
    status, body = await curl(
        "-H", "Accept: application/openmetrics-text; version=x.y", base + "/metrics"
    )
    assert status == 200 and "istio_build" in body


async def test_bind_conflict_is_an_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await serve_readiness(readiness=Readiness(), address=SocketAddr("127.0.0.1", port))


def big_mesh(workloads: int = 5000, services: int = 20) -> ProxyState:
    """5,000 workloads, each an endpoint of each of 20 services: a ~20 MB dump."""
    hostnames = [f"s{i}.demo.svc.cluster.local" for i in range(services)]
    svcs = [
        Service(
            name=f"s{i}",
            namespace="demo",
            hostname=hostname,
            vips=(NetworkAddress.parse(f"/10.96.0.{i + 1}"),),
            ports={80: 8080},
        )
        for i, hostname in enumerate(hostnames)
    ]
    base = int(ipaddress.ip_address("10.1.0.1"))
    wls = [
        Workload(
            uid=f"Kubernetes//Pod/demo/w{i}",
            name=f"w{i}",
            namespace="demo",
            addresses=(ipaddress.ip_address(base + i),),
            service_account="web",
            services={f"demo/{h}": {80: 8080} for h in hostnames},
        )
        for i in range(workloads)
    ]
    state = ProxyState()
    state.replace(wls, svcs, [])
    return state


def ping_pong(address: tuple[str, int], stop: threading.Event, rtts: list[float]) -> None:
    """A client outside the event loop: one byte there and back every 2 ms, until `stop`."""
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not stop.is_set():
            started = time.perf_counter()
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            rtts.append(time.perf_counter() - started)
            time.sleep(0.002)


async def test_a_large_config_dump_never_stalls_proxied_traffic(nursery: trio.Nursery) -> None:
    # Proxied traffic: a relay on the same event loop as the admin server, between a client
    # thread and an echo server. Before, the dump was encoded in one go: ~20 MB of JSON held
    # the loop, and every byte through the relay, for over a second.
    state = big_mesh()
    dump = ConfigDump()
    dump.add_sections(state.lazy_dump)
    listeners = await start_admin(nursery, dump)
    echo = trio.socket.socket()
    await echo.bind(("127.0.0.1", 0))
    echo.listen(1)
    front = trio.socket.socket()
    await front.bind(("127.0.0.1", 0))
    front.listen(1)

    async def echo_server() -> None:
        sock, _ = await echo.accept()
        with sock:
            while data := await sock.recv(65536):
                await sock.send(data)

    async def proxy() -> None:
        client, _ = await front.accept()
        upstream = trio.socket.socket()
        await upstream.connect(echo.getsockname())
        await relay(SocketByteStream(client), SocketByteStream(upstream))

    nursery.start_soon(echo_server)
    nursery.start_soon(proxy)
    stop, rtts = threading.Event(), []
    pinger = threading.Thread(target=ping_pong, args=(front.getsockname(), stop, rtts))
    pinger.start()
    try:
        await trio.sleep(0.3)
        quiet = len(rtts)
        started = time.perf_counter()
        status, body = await curl(f"http://127.0.0.1:{port_of(listeners)}/config_dump")
        took = time.perf_counter() - started
        during = rtts[quiet:]
    finally:
        stop.set()
        await trio.to_thread.run_sync(pinger.join)
    assert status == 200
    assert body == json.dumps(state.dump(), indent=2)  # what json.dumps would have written
    assert len(body) > 15_000_000 and took > 0.3
    assert len(during) > 20
    # (A full garbage collection over this heap alone takes ~45 ms; before, the dump's stall
    # was over a second.)
    assert max(during) < 0.25, f"a round trip took {max(during) * 1000:.0f} ms during the dump"
