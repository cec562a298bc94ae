"""Transparent capture as a user meets it: no iptables anywhere, fail closed while the agent is
down, pods re-enrolled by a restarted agent, a graceful drain on SIGTERM, and unenrollment
leaving a pod as it was."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed import runtime
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.traffic import http_get

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("c"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def in_netns(netns: str, argv: list[str]) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_iptables_or_nftables_rule_in_any_testbed_namespace(bed: Testbed) -> None:
    for netns in bed.topology.namespaces:
        rules = [
            line
            for line in in_netns(netns, ["iptables-save"]).splitlines()
            + in_netns(netns, ["ip6tables-save"]).splitlines()
            if line.startswith("-A")
        ]
        assert rules == [], (netns, rules)
        assert in_netns(netns, ["nft", "list", "ruleset"]).strip() == "", netns


def server_log(bed: Testbed, name: str) -> str:
    log = bed.status().pod(name).processes[0].log
    assert log is not None
    return Path(log).read_text(errors="replace")


def test_agent_down_fails_closed_then_restart_re_enrolls(bed: Testbed) -> None:
    echo2 = bed.status().pod("echo-2")
    assert http_get(bed, "web-1", echo2.ip, 8080).pod == "echo-2"
    bed.kill_agent("node2")
    # Meshed (HBONE) and plaintext callers alike: captured, nobody listening, dropped.
    for client, marker in (("web-1", "ztdown-mesh"), ("legacy-1", "ztdown-plain")):
        done = bed.exec(
            client,
            ["curl", "-sS", "--max-time", "3", f"http://{echo2.ip}:8080/?{marker}"],
            timeout=15,
        )
        assert done.returncode != 0, done.stdout
        assert marker not in server_log(bed, "echo-2")
    bed.start_agent("node2")
    answer = http_get(bed, "web-1", echo2.ip, 8080)
    assert (answer.pod, answer.client.rsplit(":", 1)[0]) == ("echo-2", bed.status().pod("web-1").ip)
    agent_log = Path(str(bed.status().nodes[1].log)).read_text()
    assert "restored 2 of 2 previously enrolled pods" in agent_log
    # The programs counted the drops while no agent was there; the new agent reports them.
    dropped = capture_metric(bed, "node2", "dropped_packets", "echo-2", reason="fail_closed")
    assert dropped >= 2


def capture_metric(bed: Testbed, node: str, family: str, pod_name: str, **labels: str) -> float:
    """A `ztunnel_py_capture_*_total` sample of `pod_name` (namespace apps) from the agent of
    `node`."""
    done = bed.exec(node, ["curl", "-sS", "http://127.0.0.1:15020/metrics"], timeout=10)
    assert done.returncode == 0, done.stderr
    wanted = {"namespace": "apps", "pod": pod_name, **labels}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition("{")
        if name != f"ztunnel_py_capture_{family}_total":
            continue
        label_text, _, value = rest.rpartition("} ")
        found = dict(item.split("=", 1) for item in label_text.split(","))
        if {k: v.strip('"') for k, v in found.items()} == wanted:
            return float(value)
    raise AssertionError(f"no {family} sample for {wanted} in the metrics of {node}")


def test_capture_counters_are_metrics_of_each_pod(bed: Testbed) -> None:
    def snapshot() -> dict[str, float]:
        return {
            "web-1 outbound": capture_metric(
                bed, "node1", "connections", "web-1", direction="outbound"
            ),
            "web-1 redirected": capture_metric(bed, "node1", "redirected_packets", "web-1"),
            "echo-2 inbound": capture_metric(
                bed, "node2", "connections", "echo-2", direction="inbound"
            ),
        }

    echo2 = bed.status().pod("echo-2").ip
    before = snapshot()
    for _ in range(3):
        assert http_get(bed, "web-1", echo2, 8080).pod == "echo-2"
        # Plaintext from outside the mesh: a connection of its own into echo-2 each time
        # (web-1's requests share one pooled HBONE connection between the agents).
        assert http_get(bed, "legacy-1", echo2, 8080).pod == "echo-2"
    after = snapshot()
    assert after["web-1 outbound"] >= before["web-1 outbound"] + 3
    # A request and its answer take several packets each way.
    assert after["web-1 redirected"] >= before["web-1 redirected"] + 3 * 3
    assert after["echo-2 inbound"] >= before["echo-2 inbound"] + 3
    # Nobody in this testbed sends from outside with a pod's address.
    assert capture_metric(bed, "node2", "dropped_packets", "echo-2", reason="spoofed_source") == 0
    capture_metric(bed, "node2", "exempt_packets", "echo-2")  # served for every pod


# One HTTP/1.1 keep-alive connection, one GET per line on stdin; prints the answering pod, or
# "closed" / the error once the connection is gone.
KEEPALIVE_CLIENT = """
import json, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
answers = sock.makefile("rb")
print("connected", flush=True)
for line in sys.stdin:
    try:
        sock.sendall(b"GET /?" + line.strip().encode() + b" HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")
        status = answers.readline()
        if not status:
            print("closed", flush=True)
            continue
        length = 0
        while (header := answers.readline()) not in (b"\\r\\n", b""):
            name, _, value = header.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        print(json.loads(answers.read(length))["pod"], flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


class KeepAliveClient:
    def __init__(self, bed: Testbed, pod_name: str, host: str, port: int) -> None:
        argv = [sys.executable, "-c", KEEPALIVE_CLIENT, host, str(port)]
        self.proc = subprocess.Popen(
            bed.exec_argv(pod_name, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == "connected"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def get(self, marker: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(marker + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def wait_exit(bed: Testbed, node_index: int, timeout: float) -> float:
    """Seconds until the node's agent has exited."""
    start = time.monotonic()
    while bed.status().nodes[node_index].agent.alive:
        assert time.monotonic() - start < timeout, "the agent did not exit"
        time.sleep(0.05)
    return time.monotonic() - start


def readiness(bed: Testbed, node: str) -> str:
    url = "http://127.0.0.1:15021/healthz/ready"
    done = bed.exec(node, ["curl", "-s", "-w", " %{http_code}", url], timeout=10)
    return done.stdout.strip()


@contextlib.contextmanager
def node2_agent_terminated_with_a_connection_open(
    bed: Testbed,
) -> Iterator[tuple[KeepAliveClient, Path]]:
    """web-1 holds a keep-alive connection to echo-2, then node2's agent gets SIGTERM; yields
    the client and the agent's log. Afterwards the agent is started again and serves."""
    echo2 = bed.status().pod("echo-2")
    client = KeepAliveClient(bed, "web-1", echo2.ip, 8080)
    try:
        assert client.get("before") == "echo-2"
        agent = bed.status().nodes[1].agent
        assert agent.pid is not None and agent.log is not None
        os.kill(agent.pid, signal.SIGTERM)
        yield client, Path(agent.log)
    finally:
        client.close()
        bed.start_agent("node2")
    assert http_get(bed, "web-1", echo2.ip, 8080).pod == "echo-2"


def test_sigterm_drains_open_connections_then_the_agent_exits(bed: Testbed) -> None:
    with node2_agent_terminated_with_a_connection_open(bed) as (client, log):
        deadline = time.monotonic() + 5
        while not readiness(bed, "node2").endswith(" 500"):
            assert time.monotonic() < deadline, "readiness never turned false"
            time.sleep(0.05)
        assert "draining" in readiness(bed, "node2")
        # The open connection goes on; new ones find no listener (capture fails closed).
        assert client.get("during") == "echo-2"
        url = f"http://{bed.status().pod('echo-2').ip}:8080/?ztdrain-new"
        refused = bed.exec("web-1", ["curl", "-sS", "--max-time", "3", url], timeout=15)
        assert refused.returncode != 0
        assert "ztdrain-new" not in server_log(bed, "echo-2")
        assert client.get("still") == "echo-2"
        assert bed.status().nodes[1].agent.alive
        client.close()
        # The agent leaves as soon as its last connection ended, well before the 5 s deadline.
        assert wait_exit(bed, 1, timeout=4) < 3
        text = log.read_text()
        assert "received SIGTERM: draining" in text
        assert "all connections ended" in text


def test_connections_still_open_at_the_termination_deadline_are_closed(bed: Testbed) -> None:
    with node2_agent_terminated_with_a_connection_open(bed) as (client, log):
        # The default deadline is 5 s; the testbed's SIGKILL would only come at 8 s.
        waited = wait_exit(bed, 1, timeout=8)
        assert 4 < waited < 7
        assert client.get("after") in ("closed", "ConnectionResetError", "BrokenPipeError")
        assert "termination deadline passed: closing 1 open connection" in log.read_text()


# Two connections from one fixed client port, each sending `request` and reading to the end:
# the far side closes first, so the agent ends the first connection as the active closer and
# keeps its tuple in TIME_WAIT; the second connection reuses exactly that tuple. Prints, per
# connection, seconds taken and the first line received ("eof" for none, or the error).
REUSE_CLIENT = """
import socket, sys, time
host, port, sport, request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for attempt in range(2):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", sport))
    s.settimeout(5)
    start = time.monotonic()
    try:
        s.connect((host, port))
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        result = data.split(b"\\r\\n")[0].decode(errors="replace") or "eof"
    except OSError as e:
        result = type(e).__name__
    finally:
        s.close()
    print(f"{time.monotonic() - start:.3f} {result}", flush=True)
    time.sleep(0.3)
"""
HTTP10 = "GET /?ztreuse HTTP/1.0\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize(
    ("client", "server", "port", "sport", "answer"),
    [
        # outbound to another node: the agent's 15001 socket in the client pod holds the tuple
        ("web-1", "echo-2", 8080, 61500, "HTTP/1.1 200 OK"),
        # outbound to a pod of the same node
        ("web-1", "echo-1", 8080, 61501, "HTTP/1.1 200 OK"),
        # inbound plaintext: the agent's 15006 socket in the server pod holds the tuple
        ("legacy-1", "echo-2", 8080, 61502, "HTTP/1.1 200 OK"),
        # inbound HBONE: not TLS, so the agent closes the 15008 connection first
        ("legacy-1", "echo-2", 15008, 61503, "eof"),
    ],
    ids=["outbound", "outbound-same-node", "inbound-plaintext", "inbound-hbone"],
)
def test_a_client_port_reused_while_the_agent_holds_it_in_time_wait(
    bed: Testbed, client: str, server: str, port: int, sport: int, answer: str
) -> None:
    # The kernel would drop a SYN assigned by tc as a duplicate of the TIME_WAIT tuple, for
    # 60 s; the lookup program has it retire that socket and gives the SYN to the agent.
    # (Client ports outside the ephemeral range, so no other connection takes them meanwhile.)
    ip = bed.status().pod(server).ip
    argv = [sys.executable, "-c", REUSE_CLIENT, ip, str(port), str(sport), HTTP10]
    done = bed.exec(client, argv, timeout=30)
    assert done.returncode == 0, done.stderr
    (first, second) = [line.split(" ", 1) for line in done.stdout.splitlines()]
    assert first[1] == second[1] == answer, done.stdout
    assert float(second[0]) < 1.0, done.stdout


def network_state(netns: str) -> dict[str, str]:
    return {
        "qdisc": in_netns(netns, ["tc", "qdisc", "show", "dev", "eth0"]),
        "filters": in_netns(netns, ["tc", "filter", "show", "dev", "eth0", "ingress"]),
        "rules": in_netns(netns, ["ip", "rule", "show"]),
        "rules6": in_netns(netns, ["ip", "-6", "rule", "show"]),
        "routes": in_netns(netns, ["ip", "route", "show", "table", "all"]),
        "accept_local": in_netns(netns, ["sysctl", "-n", "net.ipv4.conf.eth0.accept_local"]),
    }


def test_cni_del_leaves_the_pod_as_it_was_and_add_captures_again(bed: Testbed) -> None:
    plan = bed.topology.pod("curl-2")
    enrolled = network_state(plan.netns)
    assert "clsact" in enrolled["qdisc"]
    (outcome,) = runtime.invoke(bed.topology, bed.state, "DEL", [plan])
    assert outcome.returncode == 0, outcome.stderr
    after_del = network_state(plan.netns)
    assert "clsact" not in after_del["qdisc"]
    assert after_del["filters"].strip() == ""
    assert "fwmark" not in after_del["rules"] + after_del["rules6"]
    assert after_del["accept_local"].strip() == "0"
    # An unenrolled pod is a plain pod: its traffic reaches echo-1 directly, not via the mesh.
    assert http_get(bed, "curl-2", bed.status().pod("echo-1").ip, 8080).pod == "echo-1"
    (outcome,) = runtime.invoke(bed.topology, bed.state, "ADD", [plan])
    assert outcome.returncode == 0, outcome.stderr
    assert network_state(plan.netns) == enrolled
    assert http_get(bed, "curl-2", bed.status().pod("echo-1").ip, 8080).pod == "echo-1"
    # The inbound agent logs the connection once its relay has wound down: give it a moment.
    curl_id = "spiffe://cluster.local/ns/clients/sa/curl"
    deadline = time.monotonic() + 5
    while True:
        node1_log = Path(str(bed.status().nodes[0].log)).read_text()
        if any("connection complete" in ln and curl_id in ln for ln in node1_log.splitlines()):
            break
        assert time.monotonic() < deadline, "node1's agent did not log curl-2's connection"
        time.sleep(0.1)
