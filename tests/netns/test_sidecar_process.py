"""`ztunnel-py sidecar` as a process, in a network namespace of its own: it runs unprivileged
(uid 1337, as the testbed starts it), becomes ready, stops cleanly on SIGTERM, and refuses to
start with a clear message when its pod's ports are taken or its pod is not named."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed import namespaces

pytestmark = pytest.mark.netns

WORKLOAD = """
workloads:
- uid: Kubernetes//Pod/apps/app-1
  name: app-1
  namespace: apps
  serviceAccount: app
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: node1
  services: {}
"""


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory uid 1337 can read (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="zt-sidecar-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


@pytest.fixture
def ns() -> Iterator[str]:
    name = unique_prefix("sp") + "pod"
    namespaces.add(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        namespaces.delete(name)


def sidecar(ns: str, directory: Path, *extra: str) -> subprocess.Popen[str]:
    config = directory / "mesh.yaml"
    config.write_text(WORKLOAD)
    config.chmod(0o644)
    argv = [
        "nsenter", f"--net=/run/netns/{ns}", "--",
        "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "--",
        sys.executable, "-m", "ztunnel_py.cli", "sidecar",
        "--node", "node1",
        "--local-config", str(config),
        # no CA: the sidecar keeps retrying in the background, which is not the point here
        "--ca-address", "127.0.0.1:1",
        "--ca-root-cert", str(directory / "none.pem"),
        "--auth-token", str(directory / "none-token"),
        *extra,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ready(ns: str) -> bool:
    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", 15021), timeout=1) as s:
                s.sendall(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(100).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    return namespaces.run_in(ns, probe)


def test_sidecar_serves_its_pod_unprivileged_and_stops_on_sigterm(
    ns: str, readable_dir: Path
) -> None:
    proc = sidecar(ns, readable_dir, "--pod-name", "app-1", "--pod-namespace", "apps")
    try:
        deadline = time.monotonic() + 20
        while not ready(ns):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the sidecar never became ready"
            time.sleep(0.2)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "Uid:\t1337\t1337" in status

        def dump() -> dict[str, object]:
            # (the dump is streamed in chunks: an HTTP client reads it)
            with urllib.request.urlopen("http://127.0.0.1:15000/config_dump", timeout=5) as r:
                body: dict[str, object] = json.loads(r.read())
            return body

        state = namespaces.run_in(ns, dump)["workloadState"]
        assert isinstance(state, dict)
        assert state["Kubernetes//Pod/apps/app-1"]["state"] == "Up"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    assert "sidecar stopped" in err


def test_sidecar_whose_ports_are_taken_exits_with_the_reason(ns: str, readable_dir: Path) -> None:
    def occupy() -> socket.socket:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::", 15006))
        s.listen()
        return s

    taken = namespaces.run_in(ns, occupy)
    try:
        proc = sidecar(ns, readable_dir, "--pod-name", "app-1", "--pod-namespace", "apps")
        _, err = proc.communicate(timeout=30)
    finally:
        taken.close()
    assert proc.returncode == 1
    assert "cannot serve pod Kubernetes//Pod/apps/app-1" in err
    assert "15006" in err


def test_sidecar_needs_to_know_its_pod(ns: str, tmp_path: Path) -> None:
    proc = sidecar(ns, tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--pod-name" in err and "--pod-namespace" in err
