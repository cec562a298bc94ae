"""`ztunnel-py cni` as a container runtime runs it, against a real agent in a testbed node.

One 1-node dual-stack testbed with the mesh: echo-1 and web-1 (namespace `apps`, ambient) and
legacy-1 (namespace `legacy`, not ambient). The testbed enrolled them through the plugin; the
tests run the plugin again as a subprocess with the environment and stdin a runtime gives it,
and read the agent's enrollment state from its /config_dump.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns.conftest import client_ip, unique_prefix
from ztunnel_py.testbed import mesh, runtime
from ztunnel_py.testbed.status import NamespaceStatus
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import PodPlan

pytestmark = pytest.mark.netns


# Every agent pid the tests saw: `down` must stop restarted agents too.
AGENT_PIDS: set[int] = set()


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("cni"), nodes=1, pods_per_node=2, dual_stack=True)
    try:
        yield tb
    finally:
        tb.down()
    assert [pid for pid in AGENT_PIDS if running(pid)] == []


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def plugin(
    bed: Testbed, command: str, pod: PodPlan, **env_changes: str | None
) -> tuple[int, str, str]:
    """Run the plugin for `pod` as the runtime would; `env_changes` (None: unset) alter its env."""
    env, stdin = runtime.request(bed.topology, bed.state, command, pod)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return runtime.run_plugin(bed.topology.node(pod.node), env, stdin)


def raw_plugin(bed: Testbed, env: dict[str, str], stdin: bytes) -> tuple[int, str, str]:
    return runtime.run_plugin(bed.topology.node("node1"), env, stdin)


def enrolled(bed: Testbed) -> set[str]:
    done = bed.exec(
        "node1", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/config_dump"]
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout)["workloadState"])


def cni_error(stdout: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(stdout)
    assert set(body) <= {"cniVersion", "code", "msg", "details"} and body["cniVersion"] == "1.0.0"
    return body


def test_the_testbed_enrolled_the_ambient_pods_through_the_plugin(bed: Testbed) -> None:
    t = bed.topology
    assert enrolled(bed) == {t.pod("echo-1").uid, t.pod("web-1").uid}
    status = bed.status()
    assert {p.name: p.enrolled for p in status.pods} == {
        "echo-1": True,
        "web-1": True,
        "legacy-1": False,
    }
    assert NamespaceStatus("legacy", {}) in status.namespaces
    config = json.loads(runtime.config_path(bed.state, "node1").read_text())
    assert config["type"] == "ztunnel-py-cni"
    assert config["namespaceLabels"]["apps"] == {"istio.io/dataplane-mode": "ambient"}
    assert config["pods"]["apps/web-1"] == {"serviceAccount": "web"}


def test_version_answers_the_supported_versions(bed: Testbed) -> None:
    code, out, _ = raw_plugin(bed, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert code == 0
    assert json.loads(out) == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_a_runtime_finds_the_plugin_by_type_in_cni_path(bed: Testbed) -> None:
    web = bed.topology.pod("web-1")
    env, stdin = runtime.request(bed.topology, bed.state, "CHECK", web)
    executable = os.path.join(env["CNI_PATH"], json.loads(stdin)["type"])
    done = subprocess.run(
        [executable], input=stdin, env=env, capture_output=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (0, b""), done.stdout + done.stderr


def test_del_check_add_round_trip_with_the_agent(bed: Testbed) -> None:
    web = bed.topology.pod("web-1")
    assert plugin(bed, "DEL", web)[:2] == (0, "")
    assert web.uid not in enrolled(bed)
    # DEL is idempotent: the agent no longer knows the pod, and that is fine.
    assert plugin(bed, "DEL", web)[:2] == (0, "")
    assert plugin(bed, "DEL", web, CNI_NETNS=None)[:2] == (0, "")
    code, out, err = plugin(bed, "ADD", web)
    assert code == 0, out + err
    _, stdin = runtime.request(bed.topology, bed.state, "ADD", web)
    assert json.loads(out) == json.loads(stdin)["prevResult"]  # passed through unchanged
    assert web.uid in enrolled(bed)
    # ADD again (a retried ADD) keeps the pod enrolled; CHECK agrees and prints nothing.
    assert plugin(bed, "ADD", web)[0] == 0
    assert plugin(bed, "CHECK", web)[:2] == (0, "")
    assert enrolled(bed) == {bed.topology.pod("echo-1").uid, web.uid}


def test_pod_outside_ambient_namespaces_passes_through_unenrolled(bed: Testbed) -> None:
    legacy = bed.topology.pod("legacy-1")
    code, out, _ = plugin(bed, "ADD", legacy)
    assert code == 0
    assert [ip["address"] for ip in json.loads(out)["ips"]] == [
        "10.244.1.250/32",
        "fd00:10:244:1::250/128",
    ]
    assert plugin(bed, "CHECK", legacy)[:2] == (0, "")
    assert legacy.uid not in enrolled(bed)


def test_bad_requests_get_cni_errors_and_the_agent_keeps_serving(bed: Testbed) -> None:
    web = bed.topology.pod("web-1")
    env, _ = runtime.request(bed.topology, bed.state, "ADD", web)
    code, out, _ = raw_plugin(bed, env, b"\x00\x01 garbage {")
    assert code != 0 and cni_error(out)["code"] == 6
    code, out, _ = plugin(bed, "ADD", web, CNI_NETNS=None)
    assert code != 0 and cni_error(out) == {
        "cniVersion": "1.0.0",
        "code": 4,
        "msg": "CNI_NETNS is required for ADD",
    }
    code, out, _ = plugin(bed, "ADD", web, CNI_NETNS="/run/netns/zt-no-such-pod")
    assert code != 0 and cni_error(out)["code"] == 3
    code, out, _ = plugin(bed, "ADD", web, CNI_COMMAND="BOGUS")
    assert code != 0 and cni_error(out)["code"] == 4
    assert enrolled(bed) == {bed.topology.pod("echo-1").uid, web.uid}
    assert plugin(bed, "CHECK", web)[0] == 0


def cli(bed: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", *args, "--prefix", bed.prefix],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def agent_alive(bed: Testbed) -> bool:
    """Whether `testbed status` says node1's agent runs; remembers its pid."""
    done = cli(bed, "status", "--json")
    assert done.returncode == 0, done.stderr
    agent = json.loads(done.stdout)["nodes"][0]["agent"]
    AGENT_PIDS.add(agent["pid"])
    alive: bool = agent["alive"]
    return alive


def test_agent_down_fails_add_and_status_and_restart_reenrolls_without_cni(bed: Testbed) -> None:
    echo, web = bed.topology.pod("echo-1"), bed.topology.pod("web-1")
    old_pid = bed.kill_agent("node1")
    assert old_pid is not None and not agent_alive(bed)
    try:
        code, out, _ = plugin(bed, "ADD", web)
        error = cni_error(out)
        assert code != 0 and error["code"] == 11
        assert error["msg"].startswith("the ztunnel-py agent is not reachable on ")
        assert "must not start outside the mesh" in error["details"]
        code, out, _ = plugin(bed, "CHECK", web)
        assert code != 0 and cni_error(out)["code"] == 11
        env, stdin = runtime.request(bed.topology, bed.state, "ADD", web)
        status_stdin = json.dumps({**json.loads(stdin), "cniVersion": "1.1.0"}).encode()
        code, out, _ = raw_plugin(bed, {**env, "CNI_COMMAND": "STATUS"}, status_stdin)
        assert code != 0 and json.loads(out)["code"] == 50
        # A pod being deleted does not wait for the mesh.
        code, out, err = plugin(bed, "DEL", web)
        assert (code, out) == (0, "") and "agent not reachable" in err
    finally:
        done = cli(bed, "agent", "node1", "start")
    assert done.returncode == 0, done.stderr
    assert "node1 ready" in done.stdout
    assert agent_alive(bed)
    # The restart went into the state file, which this process reads again.
    restarted = bed.status().nodes[0].agent
    assert restarted.alive and restarted.pid != old_pid
    assert f"pid {restarted.pid}" in done.stdout
    # The agent re-enrolled both pods from its own saved state, with no CNI call.
    assert enrolled(bed) == {echo.uid, web.uid}
    code, _, _ = raw_plugin(bed, {**env, "CNI_COMMAND": "STATUS"}, status_stdin)
    assert code == 0

    done = cli(bed, "agent", "node1", "stop")
    assert done.returncode == 0 and "node1 stopped" in done.stdout, done.stderr
    assert not agent_alive(bed)
    again = cli(bed, "agent", "node1", "stop")
    assert again.returncode == 0 and "was not running" in again.stdout
    record = bed.start_agent("node1")
    assert record.pid is not None
    AGENT_PIDS.add(record.pid)
    assert enrolled(bed) == {echo.uid, web.uid}
    busy = cli(bed, "agent", "node1", "start")
    assert busy.returncode == 1 and "already running" in busy.stderr
    unknown = cli(bed, "agent", "node7", "kill")
    assert unknown.returncode == 1 and "no node named 'node7'; nodes: node1" in unknown.stderr


def get(bed: Testbed, client: str, url: str) -> dict[str, Any]:
    done = bed.exec(client, ["curl", "-sS", "--max-time", "10", url], timeout=20)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def inbound_log_lines(bed: Testbed, needle: str) -> list[str]:
    """The agent's inbound access-log lines containing `needle`, waiting up to 5 s for one (the
    agent logs a connection when it closes, which may be just after the client is done)."""
    log = str(bed.status().nodes[0].log)
    deadline = time.monotonic() + 5
    while True:
        with open(log, errors="replace") as f:
            lines = [
                line
                for line in f.read().splitlines()
                if "connection complete" in line
                and 'direction="inbound"' in line
                and needle in line
            ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_plain_clients_over_ipv6_and_from_outside_the_mesh(bed: Testbed) -> None:
    echo, web, legacy = (bed.topology.pod(n) for n in ("echo-1", "web-1", "legacy-1"))
    # A meshed pod over IPv6: captured, carried over HBONE, the source address preserved.
    answer = get(bed, web.name, f"http://[{echo.ipv6}]:8080/v6")
    assert answer["pod"] == echo.name
    assert client_ip(answer) == web.ipv6
    hbone = inbound_log_lines(bed, f"dst.hbone_addr=[{echo.ipv6}]:8080")
    assert any("spiffe://cluster.local/ns/apps/sa/web" in line for line in hbone)
    # legacy-1 is not enrolled: its plaintext reaches the meshed pod (PERMISSIVE), both families.
    for target in (echo.ip, f"[{echo.ipv6}]"):
        answer = get(bed, legacy.name, f"http://{target}:8080/plain")
        assert answer["pod"] == echo.name
        assert client_ip(answer) in legacy.ips
    plain = inbound_log_lines(bed, 'src.workload="legacy-1"')
    assert plain and not any("src.identity=" in line for line in plain)


def hbone_connections_in(bed: Testbed, pod: str) -> list[str]:
    """The established TCP connections to an HBONE port in the pod's network namespace: the
    agent dials a pod's tunnels from inside it."""
    done = bed.exec(pod, ["ss", "-Htn", "state", "established", "( dport = :15008 )"])
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_deleted_pod_leaves_no_pooled_tunnel_behind(bed: Testbed) -> None:
    # Pooled HBONE connections idle for minutes; a pod's must go with the pod, or a new pod
    # given its address would be handed tunnels in a namespace that is gone.
    echo, web = bed.topology.pod("echo-1"), bed.topology.pod("web-1")
    assert get(bed, web.name, f"http://{echo.ip}:8080/pooled")["pod"] == echo.name
    assert hbone_connections_in(bed, web.name) != []
    try:
        assert plugin(bed, "DEL", web)[:2] == (0, "")
        deadline = time.monotonic() + 5
        while hbone_connections_in(bed, web.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hbone_connections_in(bed, web.name) == []
    finally:
        assert plugin(bed, "ADD", web)[0] == 0
    assert get(bed, web.name, f"http://{echo.ip}:8080/again")["pod"] == echo.name


def test_teardown_unenrolls_every_pod_through_cni_del(bed: Testbed) -> None:
    # What `down` runs before it stops the agents; enrolled again after, for a clean module.
    warnings: list[str] = []
    mesh.unenroll(bed.topology, bed.state, warnings.append)
    assert warnings == []
    assert enrolled(bed) == set()
    mesh.enroll(bed.topology, bed.state, warnings.append)
    assert enrolled(bed) == {p.uid for p in bed.topology.pods if p.ambient}
