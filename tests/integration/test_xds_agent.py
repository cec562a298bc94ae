"""The agent process fed by workload xDS (`--xds-address`), as an operator sees it: readiness on
:15021, `/config_dump` following the control plane within a second, the last state kept while
the control plane is down, and a resync when it is back."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ca_support import free_port
from tests.integration.xds_support import (
    ControlPlane,
    by_key,
    http_get,
    policy,
    service,
    workload,
)
from ztunnel_py.controlplane.memsource import MemorySnapshotSource


@dataclasses.dataclass
class Agent:
    proc: subprocess.Popen[str]
    admin: int
    metrics: int
    readiness: int

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            return http_get(f"http://127.0.0.1:{port}{path}")
        except OSError:
            return 0, ""

    def config_dump(self) -> dict[str, Any]:
        status, body = self.get(self.admin, "/config_dump")
        return json.loads(body) if status == 200 else {}

    def workload_names(self) -> list[str]:
        return sorted(w["name"] for w in self.config_dump().get("workloads", []))


def wait_for(check: Callable[[], bool], within: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def source() -> MemorySnapshotSource:
    s = MemorySnapshotSource()
    bad = dataclasses.replace(policy(), name="")  # the agent refuses a nameless policy
    s.replace(**by_key([workload(1), workload(2)], [service()], [bad]))
    return s


@pytest.fixture
def cp(tmp_path: Path, source: MemorySnapshotSource) -> Iterator[ControlPlane]:
    running = ControlPlane(tmp_path / "cp", source).start()
    try:
        yield running
    finally:
        running.stop()
        running.close_channels()


@pytest.fixture
def agent(tmp_path: Path, cp: ControlPlane) -> Iterator[Agent]:
    ports = [free_port() for _ in range(3)]
    argv = [
        sys.executable, "-m", "ztunnel_py.cli", "agent",
        "--node", "node-1",
        "--xds-address", f"https://{cp.address}",
        "--no-capture",
        "--ca-address", f"127.0.0.1:{free_port()}",
        "--ca-root-cert", str(cp.root_path),
        "--auth-token", str(cp.token_file("node-1")),
        "--enroll-socket", str(tmp_path / "ztunnel.sock"),
        "--state-dir", str(tmp_path / "state"),
        "--admin-address", f"127.0.0.1:{ports[0]}",
        "--metrics-address", f"127.0.0.1:{ports[1]}",
        "--readiness-address", f"127.0.0.1:{ports[2]}",
    ]  # fmt: skip
    log = tmp_path / "agent.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stderr=out, text=True)
    try:
        yield Agent(proc, *ports)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        # shown by pytest when the test failed
        print(log.read_text())


def test_agent_follows_the_control_plane(
    agent: Agent, cp: ControlPlane, source: MemorySnapshotSource
) -> None:
    # the Address type is ACKed, the only policy is NACKed: readiness names what it waits for
    wait_for(lambda: agent.workload_names() == ["pod-1", "pod-2"], 20, "initial sync")
    status, body = agent.get(agent.readiness, "/healthz/ready")
    assert status == 500 and "xds Authorization" in body and "xds Address" not in body

    source.replace(**by_key([workload(1), workload(2)], [service()], [policy()]))
    wait_for(lambda: agent.get(agent.readiness, "/healthz/ready")[0] == 200, 5, "readiness")
    assert [p["name"] for p in agent.config_dump()["policies"]] == [policy().name]
    assert agent.config_dump()["config"]["xdsAddress"] == str(cp.address)

    # add, change and delete each show in /config_dump within a second
    source.replace(**by_key([workload(1), workload(2), workload(3)], [service()], [policy()]))
    wait_for(lambda: "pod-3" in agent.workload_names(), 1.0, "added workload in config_dump")
    source.replace(
        **by_key([workload(1), workload(2, node="node-5"), workload(3)], [service()], [policy()])
    )

    def node_of_pod_2() -> str:
        dump = agent.config_dump()
        return next((w["node"] for w in dump["workloads"] if w["name"] == "pod-2"), "")

    wait_for(lambda: node_of_pod_2() == "node-5", 1.0, "changed workload in config_dump")
    source.replace(**by_key([workload(1), workload(3)], [], [policy()]))
    wait_for(
        lambda: (
            agent.workload_names() == ["pod-1", "pod-3"] and agent.config_dump()["services"] == []
        ),
        1.0,
        "deleted workload and service in config_dump",
    )

    # the control plane goes away: the agent keeps its state and stays ready
    port = cp.port
    cp.stop()
    time.sleep(0.5)
    assert agent.workload_names() == ["pod-1", "pod-3"]
    assert agent.get(agent.readiness, "/healthz/ready")[0] == 200
    source.replace(**by_key([workload(1), workload(4)], [service()], [policy()]))
    cp.port = port
    cp.start()
    wait_for(lambda: agent.workload_names() == ["pod-1", "pod-4"], 20, "resync after restart")

    _, metrics = agent.get(agent.metrics, "/metrics")
    assert "istio_xds_connection_terminations_total{" in metrics
    assert 'istio_xds_message_total{url="type.googleapis.com/istio.workload.Address"}' in metrics
    assert "istio_xds_message_bytes_total{" in metrics

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=10) == 0


def test_both_workload_sources_at_once_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ztunnel_py.cli",
            "agent",
            "--node",
            "node-1",
            "--xds-address",
            "127.0.0.1:15012",
            "--local-config",
            str(tmp_path / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "choose one source of workloads" in done.stderr
