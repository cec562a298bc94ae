"""The operator CLI against a running mesh: `ztunnel-py zc` reads a node agent's admin port in
its node's namespace, `proxy-status` the control plane's clients, and `waypoint
apply|list|delete` drive the testbed's waypoint pods, as an Istio user would with istioctl."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("ctl"), nodes=1, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def cli(bed: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", *args, "--prefix", bed.prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_zc_shows_the_agents_workloads_services_and_certificates(bed: Testbed) -> None:
    done = cli(bed, "zc", "workloads", "node1")
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table[0] == ["NAMESPACE", "POD", "NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
    assert ["apps", "echo-1", "10.244.1.10", "node1", "None", "HBONE"] in table
    assert ["legacy", "legacy-1", "10.244.1.250", "node1", "None", "TCP"] in table

    done = cli(bed, "zc", "services", "node1", "-o", "json")
    assert done.returncode == 0, done.stderr
    (echo,) = [s for s in json.loads(done.stdout) if s["name"] == "echo"]
    assert echo["vips"] == ["/10.96.0.10"]

    done = cli(bed, "zc", "certificates", "node1")
    assert done.returncode == 0, done.stderr
    leaf = [
        r for r in rows(done.stdout) if r[:2] == ["spiffe://cluster.local/ns/apps/sa/echo", "Leaf"]
    ]
    assert leaf and leaf[0][2:4] == ["Available", "true"]

    done = cli(bed, "zc", "connections", "node1", "--direction", "inbound")
    assert done.returncode == 0 and done.stdout.startswith("WORKLOAD  DIRECTION  LOCAL")

    done = cli(bed, "zc", "log", "node1", "--level", "access=debug")
    assert done.returncode == 0, done.stderr
    assert "debug" in cli(bed, "zc", "log", "node1").stdout

    done = cli(bed, "zc", "workloads", "node7")
    assert done.returncode == 1 and "no pod named 'node7'" in done.stderr


def test_proxy_status_lists_the_agent_with_its_acks(bed: Testbed) -> None:
    done = cli(bed, "proxy-status")
    assert done.returncode == 0, done.stderr
    header, *clients = rows(done.stdout)
    assert header[:5] == ["NAME", "TYPE", "NODE", "ADDRESS", "AUTHORIZATION"]
    (agent,) = [c for c in clients if c[1] == "ztunnel"]
    assert agent[2:5] == ["node1", "ACKED", "ACKED"]


def test_waypoint_apply_list_delete(bed: Testbed) -> None:
    assert cli(bed, "waypoint", "list", "-n", "apps").stdout.startswith("No waypoints found")
    done = cli(bed, "waypoint", "apply", "-n", "apps", "--enroll-namespace")
    assert done.returncode == 0, done.stderr
    assert "waypoint apps/waypoint applied" in done.stdout
    assert rows(cli(bed, "waypoint", "list", "-n", "apps").stdout) == [
        ["NAME", "REVISION", "PROGRAMMED"],
        ["waypoint", "default", "True"],
    ]
    labels = next(n.labels for n in bed.status().namespaces if n.name == "apps")
    assert labels.get("istio.io/dataplane-mode") == "ambient"
    done = cli(bed, "waypoint", "delete", "-n", "apps", "waypoint")
    assert done.returncode == 0 and "waypoint apps/waypoint deleted" in done.stdout
    assert cli(bed, "waypoint", "list", "-A").stdout.startswith("No waypoints found")
