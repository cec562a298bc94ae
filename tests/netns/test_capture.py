"""Transparent capture as a user meets it: no iptables anywhere, fail closed while the agent is
down, pods re-enrolled by a restarted agent, and unenrollment leaving a pod as it was."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def pod(bed: Testbed, name: str) -> dict[str, Any]:
    pods: list[dict[str, Any]] = bed.status()["pods"]
    return next(p for p in pods if p["name"] == name)


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
    log = pod(bed, name)["processes"][0]["log"]
    return Path(log).read_text(errors="replace")


def test_agent_down_fails_closed_then_restart_re_enrolls(bed: Testbed) -> None:
    echo2 = pod(bed, "echo-2")
    assert http_get(bed, "web-1", echo2["ip"], 8080).pod == "echo-2"
    bed.kill_agent("node2")
    # Meshed (HBONE) and plaintext callers alike: captured, nobody listening, dropped.
    for client, marker in (("web-1", "ztdown-mesh"), ("legacy-1", "ztdown-plain")):
        done = bed.exec(
            client,
            ["curl", "-sS", "--max-time", "3", f"http://{echo2['ip']}:8080/?{marker}"],
            timeout=15,
        )
        assert done.returncode != 0, done.stdout
        assert marker not in server_log(bed, "echo-2")
    bed.start_agent("node2")
    answer = http_get(bed, "web-1", echo2["ip"], 8080)
    assert (answer.pod, answer.client.rsplit(":", 1)[0]) == ("echo-2", pod(bed, "web-1")["ip"])
    agent_log = Path(bed.status()["nodes"][1]["log"]).read_text()
    assert "restored 2 of 2 previously enrolled pods" in agent_log


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
    assert http_get(bed, "curl-2", pod(bed, "echo-1")["ip"], 8080).pod == "echo-1"
    (outcome,) = runtime.invoke(bed.topology, bed.state, "ADD", [plan])
    assert outcome.returncode == 0, outcome.stderr
    assert network_state(plan.netns) == enrolled
    assert http_get(bed, "curl-2", pod(bed, "echo-1")["ip"], 8080).pod == "echo-1"
    # The inbound agent logs the connection once its relay has wound down: give it a moment.
    curl_id = "spiffe://cluster.local/ns/clients/sa/curl"
    deadline = time.monotonic() + 5
    while True:
        node1_log = Path(bed.status()["nodes"][0]["log"]).read_text()
        if any("connection complete" in ln and curl_id in ln for ln in node1_log.splitlines()):
            break
        assert time.monotonic() < deadline, "node1's agent did not log curl-2's connection"
        time.sleep(0.1)
