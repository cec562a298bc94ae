"""The no-mesh testbed as users and tests see it: pods reach each other, status, exec.

One shared testbed (the `nomesh_testbed` fixture) serves every test in this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.netns.conftest import client_ip
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import CLIENT, PodPlan

pytestmark = pytest.mark.netns


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def client_on(bed: Testbed, node: str) -> PodPlan:
    return next(p for p in bed.topology.pods_on(node) if p.role == CLIENT)


def echo_on(bed: Testbed, node: str) -> PodPlan:
    return next(p for p in bed.topology.endpoints("echo") if p.node == node)


def http_get(bed: Testbed, client: PodPlan, target: PodPlan, ipv6: bool = False) -> dict[str, Any]:
    url = f"http://[{target.ipv6}]:8080/hello" if ipv6 else f"http://{target.ip}:8080/hello"
    result = bed.exec(client.name, ["curl", "-sS", "--max-time", "5", url], timeout=10)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_pod_reaches_pod_on_another_node(nomesh_testbed: Testbed) -> None:
    client, target = client_on(nomesh_testbed, "node1"), echo_on(nomesh_testbed, "node2")
    answer = http_get(nomesh_testbed, client, target)
    assert answer["pod"] == target.name
    assert answer["namespace"] == "apps"
    assert answer["node"] == "node2"
    assert answer["version"] == target.version == "v2"
    assert answer["path"] == "/hello"
    assert client_ip(answer) == client.ip


def test_pod_reaches_pod_on_the_same_node(nomesh_testbed: Testbed) -> None:
    client, target = client_on(nomesh_testbed, "node2"), echo_on(nomesh_testbed, "node2")
    answer = http_get(nomesh_testbed, client, target)
    assert answer["pod"] == target.name
    assert client_ip(answer) == client.ip


@pytest.mark.parametrize(("client_node", "target_node"), [("node1", "node2"), ("node2", "node2")])
def test_pods_reach_each_other_over_ipv6(
    nomesh_testbed: Testbed, client_node: str, target_node: str
) -> None:
    client, target = client_on(nomesh_testbed, client_node), echo_on(nomesh_testbed, target_node)
    answer = http_get(nomesh_testbed, client, target, ipv6=True)
    assert answer["pod"] == target.name
    assert client_ip(answer) == client.ipv6
    # ...and IPv4 still reaches the same dual-stack server, reported as a plain IPv4 address.
    assert client_ip(http_get(nomesh_testbed, client, target)) == client.ip


def test_echo_pods_also_speak_h2c_and_grpc(nomesh_testbed: Testbed) -> None:
    client, target = client_on(nomesh_testbed, "node1"), echo_on(nomesh_testbed, "node2")
    h2 = nomesh_testbed.exec(
        client.name,
        ["curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", f"http://{target.ip}:8082/"],
        timeout=10,
    )
    assert h2.returncode == 0, h2.stderr
    assert json.loads(h2.stdout)["pod"] == target.name
    grpc = nomesh_testbed.exec(
        client.name,
        [sys.executable, "-m", "ztunnel_py.testbed.grpcclient", "--target", f"{target.ip}:9090",
         "unary"],
        timeout=30,
    )  # fmt: skip
    assert grpc.returncode == 0, grpc.stderr
    assert json.loads(grpc.stdout)["pod"] == target.name


def test_iperf3_runs_between_pods(nomesh_testbed: Testbed) -> None:
    client, target = client_on(nomesh_testbed, "node2"), echo_on(nomesh_testbed, "node1")
    result = nomesh_testbed.exec(
        client.name, ["iperf3", "-c", target.ip, "-p", "5201", "-t", "2", "-J"], timeout=20
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["end"]["sum_received"]["bytes"] > 0
    assert report["start"]["connected"][0]["local_host"] == client.ip


def test_status_json_describes_everything(nomesh_testbed: Testbed) -> None:
    result = cli("status", "--json", "--prefix", nomesh_testbed.prefix)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    prefix = nomesh_testbed.prefix
    assert status["prefix"] == prefix
    assert status["state_dir"] == str(nomesh_testbed.state_dir)
    assert status["complete"] is True and status["mesh"] is False
    assert status["dual_stack"] is True
    assert status["namespaces"] == [
        {"name": "apps", "labels": {"istio.io/dataplane-mode": "ambient"}},
        {"name": "clients", "labels": {"istio.io/dataplane-mode": "ambient"}},
        {"name": "legacy", "labels": {}},
    ]
    assert status["fabric"]["netns"] == f"{prefix}fabric"
    assert {"netns", "ip", "log"} <= set(status["controlplane"])
    assert status["controlplane"]["ip"] == "10.250.0.2"
    assert [(n["name"], n["netns"], n["ip"]) for n in status["nodes"]] == [
        ("node1", f"{prefix}node1", "10.250.0.11"),
        ("node2", f"{prefix}node2", "10.250.0.12"),
    ]
    assert all("log" in n for n in status["nodes"])
    pod_keys = {"name", "namespace", "node", "netns", "ip", "service_account", "http_port"}
    for pod in status["pods"]:
        assert pod_keys <= set(pod)
        assert pod["netns"] == f"{prefix}pod-{pod['name']}"
        assert pod["http_port"] == 8080
        assert [p["alive"] for p in pod["processes"]] == [True, True]
    assert [p["name"] for p in status["pods"]] == [
        "echo-1",
        "web-1",
        "echo-2",
        "curl-2",
        "legacy-1",
    ]
    legacy = status["pods"][-1]
    assert (legacy["namespace"], legacy["ambient"], legacy["enrolled"]) == ("legacy", False, False)
    assert legacy["ips"] == ["10.244.1.250", "fd00:10:244:1::250"]
    echo = next(s for s in status["services"] if s["name"] == "echo")
    assert echo["namespace"] == "apps" and echo["vip"] == "10.96.0.10"
    assert [(p["name"], p["port"], p["target_port"]) for p in echo["ports"]] == [
        ("http", 80, 8080),
        ("http2", 8082, 8082),
        ("grpc", 9090, 9090),
        ("tcp-iperf", 5201, 5201),
    ]
    assert status["waypoints"] == []
    for proc in status["processes"]:
        assert proc["alive"] and proc["pid"] > 0
        assert proc["log"].startswith(str(nomesh_testbed.state_dir))


def test_status_table_names_pods_and_services(nomesh_testbed: Testbed) -> None:
    result = cli("status", "--prefix", nomesh_testbed.prefix)
    assert result.returncode == 0, result.stderr
    for pod in nomesh_testbed.topology.pods:
        assert pod.name in result.stdout and pod.ip in result.stdout
    assert "10.96.0.10" in result.stdout
    assert "EXITED" not in result.stdout


def test_exec_passes_stdin_stdout_and_exit_status(nomesh_testbed: Testbed) -> None:
    pod = client_on(nomesh_testbed, "node1")
    result = cli(
        "exec", "--prefix", nomesh_testbed.prefix, pod.name, "--",
        "sh", "-c", "cat; ip -o -4 addr show dev eth0; exit 3",
        input="from stdin\n",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("from stdin\n")
    assert f"inet {pod.ip}/32" in result.stdout


def test_exec_unknown_pod_names_the_pods(nomesh_testbed: Testbed) -> None:
    result = cli("exec", "--prefix", nomesh_testbed.prefix, "nope", "--", "true")
    assert result.returncode == 1
    assert "no pod named 'nope'; pods: echo-1, web-1, echo-2, curl-2" in result.stderr
    result = cli("exec", "--prefix", nomesh_testbed.prefix, "echo-1")
    assert result.returncode == 1
    assert "no command given" in result.stderr


def test_second_up_with_the_same_prefix_is_refused(nomesh_testbed: Testbed) -> None:
    with pytest.raises(TestbedError, match=r"already up .* run `ztunnel-py testbed down"):
        Testbed.up(prefix=nomesh_testbed.prefix, nodes=1, pods_per_node=2, mode="none")
    result = cli("up", "--no-mesh", "--prefix", nomesh_testbed.prefix)
    assert result.returncode == 1
    assert f"testbed {nomesh_testbed.prefix} is already up" in result.stderr
    status = nomesh_testbed.status()
    assert status.complete and all(p.alive for p in status.processes)
