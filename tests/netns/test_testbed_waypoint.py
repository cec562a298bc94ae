"""Waypoint pods: `testbed apply` of Istio's waypoint Gateway starts a pod running `ztunnel-py
waypoint` (its own namespace, IP and certificate, its Pod and Service served by the control
plane), re-applying leaves it alone, a crashed one is replaced, `testbed delete` removes it, and
`testbed down` removes it even after the applying CLI was killed.

One 2-node ambient testbed serves the module; the `down` test builds its own 1-node testbed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.status import WaypointStatus
from ztunnel_py.testbed.testbed import Testbed, default_state_dir, down

pytestmark = pytest.mark.netns

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""
IDENTITY = "spiffe://cluster.local/ns/apps/sa/waypoint"
HOSTNAME = "waypoint.apps.svc.cluster.local"
# How long a change to the watched directory may take to reach every agent (pushes are
# sub-second; a loaded 2-core machine gets slack).
PUSH_DEADLINE = 10.0

Dump = dict[str, Any]


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("wp"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def apply(bed: Testbed, text: str = GATEWAY) -> subprocess.CompletedProcess[str]:
    done = cli("apply", "-f", "-", "--prefix", bed.prefix, input=text)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def waypoint(bed: Testbed) -> WaypointStatus:
    return bed.status().waypoint("waypoint", "apps")


def curl(bed: Testbed, where: str, url: str) -> str:
    done = bed.exec(where, ["curl", "-sS", "--max-time", "2", url])
    assert done.returncode == 0, done.stderr
    return done.stdout


def config_dump(bed: Testbed, where: str) -> Dump:
    dump: Dump = json.loads(curl(bed, where, "http://127.0.0.1:15000/config_dump"))
    return dump


def wait_agents(bed: Testbed, check: Callable[[Dump], bool]) -> None:
    """Until `check` holds for every agent's /config_dump."""
    deadline = time.monotonic() + PUSH_DEADLINE
    for node in bed.topology.nodes:
        while not check(dump := config_dump(bed, node.name)):
            assert time.monotonic() < deadline, (node.name, dump["workloads"], dump["services"])
            time.sleep(0.1)


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_waypoint_gateway_gets_a_ready_pod_with_its_own_identity(bed: Testbed) -> None:
    done = apply(bed)
    wp = waypoint(bed)
    assert f"waypoint pod apps/{wp.pod} ready on node1: 10.244.1.200" in done.stdout
    assert (wp.node, wp.ip, wp.vip, wp.service_account) == (
        "node1",
        "10.244.1.200",
        "10.96.0.200",
        "waypoint",
    )
    assert wp.process.alive and wp.log is not None and os.path.exists(wp.log)
    assert wp.netns == f"{bed.prefix}pod-{wp.pod}" and namespaces.exists(wp.netns)
    # Its own network namespace and IP, wired like every pod (a client pod reaches it).
    assert "inet 10.244.1.200/32" in bed.exec(wp.pod, ["ip", "-o", "-4", "addr"]).stdout
    ready = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"]
    probe = bed.exec("legacy-1", [*ready, f"http://{wp.ip}:15021/healthz/ready"])
    assert (probe.returncode, probe.stdout) == (0, "200"), probe.stderr

    # Its certificate, from our CA (fetched as it starts; readiness does not wait for it).
    def certificates() -> list[tuple[str, str]]:
        return [(c["identity"], c["state"]) for c in config_dump(bed, wp.pod)["certificates"]]

    deadline = time.monotonic() + PUSH_DEADLINE
    while (certs := certificates()) != [(IDENTITY, "Available")] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert certs == [(IDENTITY, "Available")]
    # The control plane serves its Pod as a workload and its Service, to every agent.
    uid = f"Kubernetes//Pod/apps/{wp.pod}"

    def served(dump: Dump) -> bool:
        workload = next((w for w in dump["workloads"] if w["uid"] == uid), None)
        service = next((s for s in dump["services"] if s["hostname"] == HOSTNAME), None)
        return (
            workload is not None
            and workload["workloadIps"] == [wp.ip]
            and workload["serviceAccount"] == "waypoint"
            and workload["node"] == "node1"
            and service is not None
            and [v.rsplit("/", 1)[-1] for v in service["vips"]] == [wp.vip]
        )

    wait_agents(bed, served)
    # Status shows it; the Pod and Service are in the watched directory.
    table = cli("status", "--prefix", bed.prefix).stdout
    assert "WAYPOINT" in table and wp.pod in table and "EXITED" not in table
    files = {p.name for p in bed.config_dir.iterdir()}
    assert {f"pod_apps_{wp.pod}.yaml", "service_apps_waypoint.yaml"} <= files
    assert "gateway_apps_waypoint.yaml" in files


def test_applying_again_leaves_a_running_waypoint_alone(bed: Testbed) -> None:
    apply(bed)
    before = waypoint(bed)
    done = apply(bed)
    assert "keeps running" in done.stdout
    assert waypoint(bed).process.pid == before.process.pid
    # a label change rewrites the Gateway (and what carries its labels), nothing restarts
    changed = GATEWAY.replace("waypoint-for: service", "waypoint-for: all")
    apply(bed, changed)
    after = waypoint(bed)
    assert after.process.pid == before.process.pid and after.process.alive
    gateway = yaml.safe_load((bed.config_dir / "gateway_apps_waypoint.yaml").read_text())
    assert gateway["metadata"]["labels"]["istio.io/waypoint-for"] == "all"
    pod = yaml.safe_load((bed.config_dir / f"pod_apps_{after.pod}.yaml").read_text())
    assert pod["metadata"]["labels"]["istio.io/waypoint-for"] == "all"
    apply(bed)


def test_a_crashed_waypoint_is_replaced_by_applying_again(bed: Testbed) -> None:
    apply(bed)
    crashed = waypoint(bed)
    assert crashed.process.pid is not None
    os.kill(crashed.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(crashed.process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not waypoint(bed).process.alive
    done = apply(bed)
    assert "is not running: replacing it" in done.stdout
    replaced = waypoint(bed)
    assert replaced.process.alive and replaced.process.pid != crashed.process.pid
    assert (replaced.pod, replaced.ip, replaced.vip) == (crashed.pod, crashed.ip, crashed.vip)


def test_deleting_the_gateway_removes_the_waypoint_pod(bed: Testbed) -> None:
    apply(bed)
    wp = waypoint(bed)
    assert wp.process.pid is not None
    done = cli("delete", "-f", "-", "--prefix", bed.prefix, input=GATEWAY)
    assert done.returncode == 0, done.stderr
    assert "Gateway apps/waypoint deleted" in done.stdout
    assert f"waypoint pod apps/{wp.pod} stopped and removed" in done.stdout
    assert not running(wp.process.pid)
    assert not namespaces.exists(wp.netns)
    assert bed.status().waypoints == ()
    assert all(p.alive for p in bed.status().processes)
    files = {p.name for p in bed.config_dir.iterdir()}
    assert not {"gateway_apps_waypoint.yaml", "service_apps_waypoint.yaml"} & files
    assert f"pod_apps_{wp.pod}.yaml" not in files
    uid = f"Kubernetes//Pod/apps/{wp.pod}"
    wait_agents(
        bed,
        lambda dump: (
            all(w["uid"] != uid for w in dump["workloads"])
            and all(s["hostname"] != HOSTNAME for s in dump["services"])
        ),
    )
    with pytest.raises(TestbedError, match=f"no pod named '{wp.pod}'"):
        bed.exec(wp.pod, ["true"])


def namespace_using(waypoint_name: str) -> str:
    return (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: "
        f"{{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: {waypoint_name}}}}}\n"
    )


def test_a_label_is_warned_about_only_when_no_waypoint_of_that_name_comes(bed: Testbed) -> None:
    plain = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: " + (
        "{istio.io/dataplane-mode: ambient}}\n"
    )
    try:
        # the Gateway and the label together, as a user applies them: the waypoint is not ready
        # while they are checked, but this apply brings it up
        done = apply(bed, GATEWAY + "---\n" + namespace_using("waypoint"))
        assert "warning" not in done.stdout + done.stderr, done.stdout + done.stderr
        # a label naming a waypoint nobody deploys is
        done = apply(bed, namespace_using("nowhere"))
        assert 'warning: Namespace apps: metadata.labels["istio.io/use-waypoint"]: ' in (
            done.stdout + done.stderr
        )
        assert 'WaypointIsNotReady: waypoint "apps/nowhere" is not ready' in done.stdout + (
            done.stderr
        )
    finally:
        apply(bed, plain)
        cli("delete", "-f", "-", "--prefix", bed.prefix, input=GATEWAY)


def test_down_removes_a_waypoint_even_after_the_applying_cli_was_killed() -> None:
    prefix = unique_prefix("wd")
    Testbed.up(prefix=prefix, nodes=1, pods_per_node=2)
    state_file = default_state_dir(prefix) / "state.json"
    applying = subprocess.Popen(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", "apply", "-f", "-",
         "--prefix", prefix],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    pid = None
    try:
        assert applying.stdin is not None
        applying.stdin.write(GATEWAY)
        applying.stdin.close()
        # Kill the CLI once the waypoint's process runs (before or after it is ready).
        deadline = time.monotonic() + 60
        while pid is None and time.monotonic() < deadline:
            state = json.loads(state_file.read_text())
            pid = next(
                (p["pid"] for p in state["processes"] if p["name"] == "waypoint/apps/waypoint"),
                None,
            )
            time.sleep(0.01)
        applying.kill()
        applying.wait()
        assert pid is not None and running(pid)
        [recorded] = json.loads(state_file.read_text())["waypoints"]
        assert namespaces.exists(recorded["netns"])
        result = cli("down", "--prefix", prefix)
        assert result.returncode == 0, result.stderr
    finally:
        applying.kill()
        applying.wait()
        down(prefix)
    assert not running(pid)
    assert not namespaces.exists(recorded["netns"])
    assert [n for n in os.listdir(namespaces.NETNS_DIR) if n.startswith(prefix)] == []
    assert not default_state_dir(prefix).exists()
