"""Sidecar mode (`testbed up --mode sidecar`), the benchmark's comparison point: one
unprivileged proxy per pod behind Istio-style iptables REDIRECT rules, HBONE between sidecars,
plaintext from pods outside the mesh, L4 policy enforced by the server's sidecar."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.traffic import http_get

pytestmark = pytest.mark.netns

DENY_CURL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-curl
  namespace: apps
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/clients/sa/curl"]
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("sc"), nodes=2, pods_per_node=2, mode="sidecar")
    try:
        yield tb
    finally:
        tb.down()


def sidecar_log(bed: Testbed, name: str) -> str:
    sidecar = bed.status().pod(name).sidecar
    assert sidecar is not None and sidecar.log is not None
    return Path(sidecar.log).read_text()


def wait_for_line(bed: Testbed, name: str, *needles: str) -> str:
    """The first line of pod `name`'s sidecar log holding every needle (access log lines are
    written when a connection ends, just after the client saw its answer)."""
    deadline = time.monotonic() + 5
    while True:
        for line in sidecar_log(bed, name).splitlines():
            if all(n in line for n in needles):
                return line
        assert time.monotonic() < deadline, f"no line with {needles} in {name}'s sidecar log"
        time.sleep(0.1)


def test_every_mesh_pod_has_an_unprivileged_sidecar_and_no_agent_runs(bed: Testbed) -> None:
    status = bed.status()
    assert status.mode == "sidecar"
    assert all(not n.agent.pid for n in status.nodes)
    for p in status.pods:
        if p.name == "legacy-1":
            assert p.sidecar is None
            continue
        assert p.sidecar is not None
        proc = Path(f"/proc/{p.sidecar.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in proc.splitlines() if ":" in line)
        assert fields["Uid"].split()[:2] == ["1337", "1337"]
        assert int(fields["CapEff"].strip(), 16) == 0
        rules = bed.exec(p.name, ["iptables-save", "-t", "nat"]).stdout
        assert "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN" in rules
        assert "-j REDIRECT --to-ports 15001" in rules
        assert "-j REDIRECT --to-ports 15006" in rules
        # no BPF capture: the pod's interface carries no tc filter
        tc = bed.exec(p.name, ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
        assert tc.strip() == ""


def test_vip_call_goes_sidecar_to_sidecar_over_hbone(bed: Testbed) -> None:
    answer = http_get(bed, "web-1", "10.96.0.10", 80)
    assert answer.pod in {"echo-1", "echo-2"}
    # Port 80 is declared http: the client's sidecar serves it with the HTTP engine, as
    # istio-proxy does, and logs the request...
    line = wait_for_line(bed, "web-1", "request complete", "upstream_host=", ":8080")
    assert 'dst.identity="spiffe://cluster.local/ns/apps/sa/echo"' in line
    assert "response_code=200" in line

    # ...carried over HBONE: the server's sidecar counts a connection from web's identity.
    def opened_from_web() -> bool:
        done = bed.exec(
            answer.pod, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"]
        )
        return any(
            line.startswith("istio_tcp_connections_opened_total{")
            and 'reporter="destination"' in line
            and 'source_principal="spiffe://cluster.local/ns/apps/sa/web"' in line
            for line in done.stdout.splitlines()
        )

    deadline = time.monotonic() + 5
    while not opened_from_web():
        assert time.monotonic() < deadline, f"{answer.pod}'s sidecar counted no HBONE from web"
        time.sleep(0.1)


def test_pod_outside_the_mesh_reaches_a_sidecar_pod_in_plaintext(bed: Testbed) -> None:
    echo2 = bed.status().pod("echo-2")
    assert http_get(bed, "legacy-1", echo2.ip, 8080).pod == "echo-2"
    legacy_ip = bed.status().pod("legacy-1").ip
    line = wait_for_line(bed, "echo-2", 'direction="inbound"', f"src.addr={legacy_ip}:")
    assert "src.identity" not in line and "hbone_addr" not in line
    # ...and a sidecar pod calls it in plaintext (it is not HBONE-capable)
    assert http_get(bed, "curl-2", legacy_ip, 8080).pod == "legacy-1"


def test_policy_is_enforced_by_the_servers_sidecar(bed: Testbed) -> None:
    echo1 = bed.status().pod("echo-1")
    bed.apply(DENY_CURL)
    try:
        deadline = time.monotonic() + 5
        while True:
            done = bed.exec(
                "curl-2", ["curl", "-sS", "--max-time", "3", f"http://{echo1.ip}:8080/"]
            )
            if done.returncode != 0:
                break
            assert time.monotonic() < deadline, "the DENY policy never took effect"
            time.sleep(0.2)
        assert http_get(bed, "web-1", echo1.ip, 8080).pod == "echo-1"
        assert "explicitly denied by: apps/deny-curl" in sidecar_log(bed, "echo-1")
    finally:
        bed.delete(DENY_CURL)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert http_get(bed, "curl-2", echo1.ip, 8080).pod == "echo-1"
            return
        except TestbedError:
            assert time.monotonic() < deadline, "deleting the policy did not let curl in again"
            time.sleep(0.2)
