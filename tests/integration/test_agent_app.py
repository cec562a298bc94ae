"""The agent process as an operator runs it: bad configuration at start, reloads on SIGHUP."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.zds_support import lone_snapshot
from ztunnel_py.cni.enroll import enroll_pod

WORKLOAD = """
workloads:
- uid: Kubernetes//Pod/apps/{name}
  name: {name}
  namespace: apps
  serviceAccount: web
  workloadIps: ["10.1.0.{ip}"]
  protocol: HBONE
  node: other-node
  services: {{}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def agent_argv(tmp_path: Path, config: Path, admin: int) -> list[str]:
    return [
        sys.executable, "-m", "ztunnel_py.cli", "agent",
        "--node", "node-a",
        "--local-config", str(config),
        "--no-capture",
        "--ca-address", f"127.0.0.1:{free_port()}",
        "--ca-root-cert", str(tmp_path / "none.pem"),
        "--auth-token", str(tmp_path / "none-token"),
        "--enroll-socket", str(tmp_path / "ztunnel.sock"),
        "--state-dir", str(tmp_path / "state"),
        "--admin-address", f"127.0.0.1:{admin}",
        "--metrics-address", f"127.0.0.1:{free_port()}",
        "--readiness-address", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip


def test_invalid_local_config_stops_the_agent_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(WORKLOAD.format(name="a", ip="300"))
    done = subprocess.run(
        agent_argv(tmp_path, config, free_port()), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "workloads[0].workloadIps[0]" in done.stderr
    assert "10.1.0.300" in done.stderr


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    config = tmp_path / "config.yaml"
    config.write_text(WORKLOAD.format(name="a", ip="1"))
    admin = free_port()
    proc = subprocess.Popen(agent_argv(tmp_path, config, admin), stderr=subprocess.PIPE, text=True)
    try:
        yield proc, config, admin
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def config_dump(admin: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=2) as r:
                result: dict[str, Any] = json.load(r)
                return result
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def names(admin: int) -> list[str]:
    return [w["name"] for w in config_dump(admin)["workloads"]]


def test_sighup_reload_keeps_last_good_state(
    agent: tuple[subprocess.Popen[str], Path, int],
) -> None:
    proc, config, admin = agent
    assert names(admin) == ["a"]
    config.write_text("workloads: [ {not yaml")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert proc.poll() is None
    assert names(admin) == ["a"]
    config.write_text(WORKLOAD.format(name="b", ip="2"))
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while names(admin) != ["b"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert names(admin) == ["b"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert "reload failed, keeping the last good state" in err


@contextlib.contextmanager
def pod_namespace() -> Iterator[subprocess.Popen[bytes]]:
    """A process alone in a new network namespace (with loopback up), as a pod's sandbox."""
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 60"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "the pod namespace did not come up"
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.netns
def test_a_snapshot_removes_only_pods_whose_namespace_is_gone(
    agent: tuple[subprocess.Popen[str], Path, int], tmp_path: Path
) -> None:
    proc, _, admin = agent
    socket_path = str(tmp_path / "ztunnel.sock")
    config_dump(admin)  # the agent is up
    with pod_namespace() as running, pod_namespace() as gone:
        for name, holder in (("running", running), ("gone", gone)):
            enroll_pod(socket_path, name, name, "apps", "web", f"/proc/{holder.pid}/ns/net")
        assert set(config_dump(admin)["workloadState"]) == {"running", "gone"}
        gone.kill()
        gone.wait()
        assert lone_snapshot(socket_path) == ""  # a snapshot naming no pod
        assert set(config_dump(admin)["workloadState"]) == {"running"}
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert (
        "pod running (apps/running) is missing from the enrollment snapshot but still runs" in err
    )
    assert (
        "pod gone is missing from the enrollment snapshot and its network namespace is gone" in err
    )
