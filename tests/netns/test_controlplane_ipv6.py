"""The mesh with its control plane addressed over IPv6.

One dual-stack testbed whose control plane serves only on [fd00:10:250::2]:15012 (CA and
workload xDS) and [fd00:10:250::2]:15014 (monitoring): every agent is given that bracketed
address for `--xds-address` and `--ca-address`. Nothing listens on the control plane's IPv4
address, so the agents' workload state and certificates can only have come over IPv6; HBONE
between the nodes (which needs those certificates) carries plain curls, over both families.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import ADMIN_PORT, CONTROL_PLANE_PORT
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import CONTROLPLANE_IP, CONTROLPLANE_IP6, HTTP_PORT
from ztunnel_py.testbed.traffic import http_get

pytestmark = pytest.mark.netns

CONTROLPLANE = SocketAddr(CONTROLPLANE_IP6, CONTROL_PLANE_PORT)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(
        prefix=unique_prefix("cp6"),
        nodes=2,
        pods_per_node=2,
        dual_stack=True,
        controlplane_ipv6=True,
    )
    try:
        yield tb
    finally:
        tb.down()


def config_dump(bed: Testbed, node: str) -> dict[str, Any]:
    url = f"http://{SocketAddr('127.0.0.1', ADMIN_PORT)}/config_dump"
    done = bed.exec(node, ["curl", "-sS", "--max-time", "5", url])
    assert done.returncode == 0, done.stderr
    dump: dict[str, Any] = json.loads(done.stdout)
    return dump


def nodes(bed: Testbed) -> list[str]:
    return [n.name for n in bed.topology.nodes]


def test_the_agents_are_given_the_bracketed_ipv6_address(bed: Testbed) -> None:
    status = bed.status().controlplane
    assert status.address == "[fd00:10:250::2]:15012"
    assert status.debug_config == "http://[fd00:10:250::2]:15014/debug/config"
    for node in nodes(bed):
        config = config_dump(bed, node)["config"]
        assert config["xdsAddress"] == config["caAddress"] == str(CONTROLPLANE)


def test_the_control_plane_is_reachable_over_ipv6_only(bed: Testbed) -> None:
    for node in nodes(bed):
        # Each agent holds its xDS stream on a TCP connection to the IPv6 address...
        done = bed.exec(node, ["ss", "-Htn", "state", "established", "dst", str(CONTROLPLANE)])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), f"{node}'s agent has no connection to {CONTROLPLANE}"
        # ...and nothing answers on the IPv4 one (curl exit 7: failed to connect).
        ipv4 = SocketAddr(CONTROLPLANE_IP, CONTROL_PLANE_PORT)
        refused = bed.exec(node, ["curl", "-sS", "--max-time", "3", f"http://{ipv4}/"])
        assert refused.returncode == 7, (refused.returncode, refused.stderr)


def test_workloads_and_certificates_arrive_over_ipv6(bed: Testbed) -> None:
    every_pod = {p.uid for p in bed.topology.pods}
    for node in nodes(bed):
        enrolled = {
            f"spiffe://cluster.local/ns/{p.namespace}/sa/{p.service_account}"
            for p in bed.topology.pods_on(node)
            if p.ambient
        }
        deadline = time.monotonic() + 10
        while True:  # certificates are fetched in the background once the agent is ready
            dump = config_dump(bed, node)
            available = {c["identity"] for c in dump["certificates"] if c["state"] == "Available"}
            if enrolled <= available or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert {w["uid"] for w in dump["workloads"]} >= every_pod
        assert enrolled <= available, dump["certificates"]


@pytest.mark.parametrize("family", ["ip", "ipv6"])
def test_curl_through_the_mesh_across_nodes(bed: Testbed, family: str) -> None:
    client, server = bed.topology.pod("web-1"), bed.topology.pod("echo-2")
    target = server.ip if family == "ip" else server.ipv6
    assert target is not None
    answer = http_get(bed, client.name, target, HTTP_PORT)
    assert answer.pod == server.name
    assert answer.client_ip == (client.ip if family == "ip" else client.ipv6)
    # The server's agent accepted it over HBONE, with the client's certificate.
    log = Path(bed.status().node("node2").log or "")
    needle = f"dst.hbone_addr={SocketAddr(target, HTTP_PORT)}"
    deadline = time.monotonic() + 5
    while True:  # the agent logs the connection as it closes, maybe just after curl is done
        lines = [line for line in log.read_text(errors="replace").splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any('src.identity="spiffe://cluster.local/ns/apps/sa/web"' in x for x in lines), lines
