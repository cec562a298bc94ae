"""Faults an agent must ride out without dropping pods off the mesh or letting their traffic out
in clear: running out of file descriptors under a connection flood, an enrollment snapshot
that names none of its pods, and restarts (with the capture programs pinned by the previous
agent reused, or loaded again from the bundle when their build stamp differs).

One 2-node testbed with the mesh. node2's agent is the one under attack; node1's pods are the
clients (legacy-1 is outside the mesh, as an attacker from any pod would be).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.hbone_support import SLOW_HANDSHAKES
from tests.integration.zds_support import lone_snapshot
from tests.netns.conftest import unique_prefix
from ztunnel_py.redirect.loader import LAYOUT_VERSION
from ztunnel_py.redirect.programs import read_stamp, write_stamp
from ztunnel_py.testbed.mesh import bpf_pin_root
from ztunnel_py.testbed.pcap import FabricCapture, analyze
from ztunnel_py.testbed.status import NodeStatus
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import FABRIC_BRIDGE
from ztunnel_py.testbed.traffic import http_get

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("f"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def node2(bed: Testbed) -> NodeStatus:
    return bed.status().node("node2")


def enrolled(bed: Testbed) -> set[str]:
    done = bed.exec(
        "node2", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/config_dump"]
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout)["workloadState"])


# Opens `count` TCP connections to ip:port and holds them `hold` seconds without sending a byte;
# prints how many the kernel completed.
FLOOD = """
import socket, sys, time
ip, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
held = []
for _ in range(count):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((ip, port))
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
time.sleep(hold)
"""


def test_an_agent_out_of_descriptors_rides_out_a_flood_and_serves_after_it(bed: Testbed) -> None:
    agent = node2(bed)
    pid = agent.agent.pid
    assert pid is not None
    echo2 = bed.status().pod("echo-2").ip
    # A few dozen descriptors to spare, and a flood of connections well beyond them. (Only the
    # soft limit counts for EMFILE; the hard one stays, so the old limit can be put back.)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 40, hard))
    try:
        done = bed.exec(
            "legacy-1", [sys.executable, "-c", FLOOD, echo2, "15008", "100", "3"], timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) == 100  # accepted, or waiting in the listener's backlog
        # The flood is over (its connections closed); the descriptor limit stays this low.
        assert node2(bed).agent.alive
        log = Path(agent.log or "").read_text()
        assert "apps/echo-2 port 15008: cannot accept connections: Too many open files" in log
        # New connections, plaintext and HBONE (a client that had none pooled to echo-2).
        assert http_get(bed, "legacy-1", echo2, 8080).pod == "echo-2"
        assert http_get(bed, "echo-1", echo2, 8080).pod == "echo-2"
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert node2(bed).agent.pid == pid  # the same agent, never restarted


def assert_echo2_traffic_in_the_mesh(bed: Testbed, tmp_path: Path, marker: str) -> None:
    """echo-2's outbound and its inbound go through the agents: TLS on the fabric, the marker
    never in clear."""
    status = bed.status()
    echo1, echo2 = status.pod("echo-1").ip, status.pod("echo-2").ip
    pcap = tmp_path / "fabric.pcap"
    with FabricCapture(status.fabric.netns, FABRIC_BRIDGE, pcap, "tcp"):
        assert http_get(bed, "echo-2", echo1, 8080, path=f"/?{marker}").pod == "echo-1"
        assert http_get(bed, "web-1", echo2, 8080, path=f"/?{marker}").pod == "echo-2"
    report = analyze(pcap, {15008}, [marker.encode()])
    assert report.markers_in_clear == []
    assert report.tls_records[15008].get("application_data", 0) > 0
    assert 8080 not in report.tcp_payload_bytes


def test_a_lone_snapshot_leaves_running_pods_captured_and_their_traffic_in_the_mesh(
    bed: Testbed, tmp_path: Path
) -> None:
    agent = node2(bed)
    pods = {bed.topology.pod("echo-2").uid, bed.topology.pod("curl-2").uid}
    assert enrolled(bed) == pods
    assert lone_snapshot(agent.enroll_socket or "") == ""
    assert enrolled(bed) == pods
    log = Path(agent.log or "").read_text()
    assert log.count("is missing from the enrollment snapshot but still runs") == 2
    assert_echo2_traffic_in_the_mesh(bed, tmp_path, "ZTTEST-lone-snapshot-5d1e")


def restart_node2(bed: Testbed) -> str:
    """Stop node2's agent and start it again; what it logged in its new run."""
    log = Path(node2(bed).log or "")
    offset = log.stat().st_size
    bed.stop_agent("node2")
    bed.start_agent("node2")
    return log.read_bytes()[offset:].decode(errors="replace")


def test_a_restarted_agent_on_a_warm_node_reuses_the_pinned_programs(
    bed: Testbed, tmp_path: Path
) -> None:
    run = restart_node2(bed)
    assert "capture programs ready (reused the pinned ones, nothing loaded)" in run
    assert "compil" not in run and "loaded from" not in run
    assert enrolled(bed) == {bed.topology.pod("echo-2").uid, bed.topology.pod("curl-2").uid}
    assert_echo2_traffic_in_the_mesh(bed, tmp_path, "ZTTEST-warm-restart-41a9")


def test_a_changed_build_stamp_makes_the_restarted_agent_load_the_bundle(
    bed: Testbed, tmp_path: Path
) -> None:
    pin_dir = Path(bpf_pin_root(bed.state, "node2")) / f"v{LAYOUT_VERSION}"
    stamp = read_stamp(pin_dir)
    assert stamp is not None
    write_stamp(pin_dir, {**stamp, "kernel": "0" * 16})  # as pins made under another kernel
    run = restart_node2(bed)
    assert f"another bundle or kernel (kernel {'0' * 16} -> {stamp['kernel']}): loading" in run
    # The bundle compiled when the testbed first started is in the node cache: no compile.
    assert "capture programs ready (loaded from /var/cache/ztunnel-py/bpf/" in run
    assert "compil" not in run
    assert read_stamp(pin_dir) == stamp
    assert_echo2_traffic_in_the_mesh(bed, tmp_path, "ZTTEST-stamp-restart-9b07")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("mode", ["partial", "hello"])
def test_500_stalled_tls_handshakes_cost_the_agent_little_memory(bed: Testbed, mode: str) -> None:
    # Slowloris on 15008 from outside the mesh: the start of a ClientHello ("partial"), or a
    # whole one and then silence ("hello"). Each pending handshake used to cost ~120 KB.
    pid = node2(bed).agent.pid
    assert pid is not None
    echo2 = bed.status().pod("echo-2").ip
    before = rss_kib(pid)
    argv = [sys.executable, "-c", SLOW_HANDSHAKES, echo2, "15008", "500", mode]
    attacker = subprocess.Popen(
        bed.exec_argv("legacy-1", argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert attacker.stdout is not None and attacker.stdout.readline() == "held\n"
        time.sleep(2)  # the agent has read (and handshaked) what the attacker sent
        grown = rss_kib(pid) - before
        # A real client gets through meanwhile.
        assert http_get(bed, "curl-2", echo2, 8080).pod == "echo-2"
    finally:
        attacker.communicate(timeout=30)
    assert grown < 15 * 1024, f"the agent grew {grown} KiB"
    if mode == "hello":
        log = Path(node2(bed).log or "").read_text()
        assert "more than 128 handshakes in progress, and this one was the oldest" in log


def test_200_idle_connections_to_the_readiness_port_never_fail_a_probe(bed: Testbed) -> None:
    # Before: /healthz/ready answered 503 for 10 s; a kubelet would mark the agent NotReady.
    node = node2(bed)
    argv = [sys.executable, "-c", FLOOD, node.ip, "15021", "200", "4"]
    flood = subprocess.Popen(bed.exec_argv("legacy-1", argv), stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None and flood.stdout.readline() == "200\n"
        for _ in range(5):
            done = bed.exec(
                "node2",
                ["curl", "-sS", "--max-time", "1", "-o", "/dev/null", "-w", "%{http_code}",
                 "http://127.0.0.1:15021/healthz/ready"],
            )  # fmt: skip
            assert done.stdout == "200", done.stderr
            time.sleep(0.2)
    finally:
        flood.communicate(timeout=30)


# GETs ip:8080/?marker on new connections every `interval` s for `seconds` (or until SIGINT);
# prints a JSON list of [seconds since start, ok] per request.
LOOP_CLIENT = """
import json, socket, sys, time
ip, marker, seconds, interval = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
start, results = time.monotonic(), []
try:
    while (now := time.monotonic() - start) < seconds:
        ok = False
        try:
            with socket.create_connection((ip, 8080), timeout=1) as s:
                s.settimeout(1)
                s.sendall(f"GET /?{marker} HTTP/1.0\\r\\nHost: t\\r\\n\\r\\n".encode())
                ok = s.recv(12).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
        results.append([round(now, 2), ok])
        time.sleep(interval)
except KeyboardInterrupt:
    pass
print(json.dumps(results))
"""
# How long the requests go on once the agent is back: every one of them must succeed.
AFTER_RESTART = 5.0


def test_an_agent_killed_under_load_lets_no_byte_out_in_clear(bed: Testbed, tmp_path: Path) -> None:
    # Requests from node1 to echo-2 all along; node2's agent is killed 2 s in and started again
    # 3 s later. While it is gone the requests fail (closed), never in clear on the fabric.
    marker = "ZTTEST-agent-kill-7c41"
    status = bed.status()
    echo2 = status.pod("echo-2").ip
    pcap = tmp_path / "fabric.pcap"
    argv = [sys.executable, "-c", LOOP_CLIENT, echo2, marker, "30", "0.02"]
    with FabricCapture(status.fabric.netns, FABRIC_BRIDGE, pcap, "tcp", max_packets=50_000):
        load = subprocess.Popen(bed.exec_argv("web-1", argv), stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        try:
            time.sleep(2)
            bed.kill_agent("node2")
            time.sleep(3)
            bed.start_agent("node2")  # returns once it is ready
            restarted = time.monotonic() - started
            time.sleep(AFTER_RESTART)
        finally:
            load.send_signal(signal.SIGINT)  # 30 s is only the bound
            out, _ = load.communicate(timeout=90)
    results = json.loads(out)
    report = analyze(pcap, {15008}, [marker.encode()])
    assert report.markers_in_clear == []
    assert 8080 not in report.tcp_payload_bytes
    assert report.tls_records[15008].get("application_data", 0) > 0
    before = [ok for t, ok in results if t < 1.5]
    after = [ok for t, ok in results if t > restarted + 1]
    assert before and all(before)
    assert not all(ok for _, ok in results)  # the outage was seen
    assert after and all(after), results  # and traffic came back
