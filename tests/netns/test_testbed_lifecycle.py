"""Bringing testbeds up and down: nothing leaks, even after kill -9, and the host is untouched.

Each test builds its own small testbed, because each one ends by tearing it down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.process import ProcessRecord
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.testbed import Testbed, default_state_dir, down

pytestmark = pytest.mark.netns


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def root_snapshot() -> dict[str, Any]:
    """The root namespace's links, addresses and routes, minus counters that tick by themselves."""

    def without_lifetimes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "expires"} for e in entries]

    return {
        "links": sorted(link["ifname"] for link in _ip_json("link")),
        "addresses": sorted(
            (a["ifname"], info["local"], info["prefixlen"])
            for a in _ip_json("addr")
            for info in a.get("addr_info", [])
        ),
        "routes4": without_lifetimes(_ip_json("-4", "route", "show", "table", "all")),
        "routes6": without_lifetimes(_ip_json("-6", "route", "show", "table", "all")),
    }


def our_namespaces(prefix: str) -> list[str]:
    return [name for name in os.listdir(namespaces.NETNS_DIR) if name.startswith(prefix)]


def running(pid: int) -> bool:
    """True if pid runs; a zombie (exited, waiting for init to reap it) does not count."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_gone(prefix: str, state_dir: Path, pids: list[int]) -> None:
    assert our_namespaces(prefix) == []
    # the pods' resolv.conf (`ip netns delete` leaves /etc/netns alone)
    assert sorted(Path("/etc/netns").glob(f"{prefix}*")) == []
    assert not state_dir.exists()
    assert [pid for pid in pids if running(pid)] == []


def test_cli_up_kill_down_leaves_nothing_and_never_touches_the_host() -> None:
    prefix = unique_prefix("lc")
    before = root_snapshot()
    monitor = subprocess.Popen(
        ["ip", "-o", "monitor", "link", "address", "route"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        up = cli("up", "--no-mesh", "--nodes", "1", "--pods-per-node", "2", "--prefix", prefix)
        assert up.returncode == 0, up.stderr
        assert "node node1" in up.stdout and "pod echo-1" in up.stdout
        assert f"testbed {prefix} is up" in up.stdout
        assert root_snapshot() == before

        status = json.loads(cli("status", "--json", "--prefix", prefix).stdout)
        pids = [p["pid"] for p in status["processes"]]
        victim = next(p for p in status["processes"] if p["name"] == "echo-1/http")
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(victim["pid"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        status = json.loads(cli("status", "--json", "--prefix", prefix).stdout)
        alive = {p["name"]: p["alive"] for p in status["processes"]}
        assert alive.pop("echo-1/http") is False
        assert all(alive.values())
        assert "EXITED" in cli("status", "--prefix", prefix).stdout

        result = cli("down", "--prefix", prefix)
        assert result.returncode == 0, result.stderr
        assert f"testbed {prefix} is down" in result.stdout
    finally:
        monitor.send_signal(signal.SIGTERM)
        events, _ = monitor.communicate(timeout=10)
        down(prefix)
    assert_gone(prefix, default_state_dir(prefix), pids)
    assert root_snapshot() == before
    markers = (prefix, "10.244.", "10.250.", "veth", "vnode", "vcp", "br0")
    assert [line for line in events.splitlines() if any(m in line for m in markers)] == []

    again = cli("down", "--prefix", prefix)
    assert again.returncode == 0
    assert f"no testbed {prefix} is up; nothing to do" in again.stdout


@pytest.mark.parametrize("crash_after", ["namespaces", "processes"])
def test_down_cleans_up_after_up_was_killed(crash_after: str) -> None:
    prefix = unique_prefix("cr")
    state_file = default_state_dir(prefix) / "state.json"
    up = subprocess.Popen(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", "up", "--no-mesh",
         "--nodes", "2", "--pods-per-node", "3", "--prefix", prefix],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                state = json.loads(state_file.read_text())
            except (FileNotFoundError, ValueError):
                state = {}
            if state.get(crash_after):
                break
            time.sleep(0.002)
        up.kill()
        up.wait()
        state = json.loads(state_file.read_text())
        assert state["complete"] is False, "up finished before it could be interrupted"
        assert state[crash_after]
        result = cli("down", "--prefix", prefix)
        assert result.returncode == 0, result.stderr
    finally:
        up.kill()
        up.wait()
        down(prefix)
    pids = [p["pid"] for p in state["processes"] if p["pid"] is not None]
    assert_gone(prefix, state_file.parent, pids)


def test_down_finds_a_process_whose_pid_was_never_recorded(tmp_path: Path) -> None:
    prefix = unique_prefix("nr")
    state_dir = tmp_path / "state"
    ns = f"{prefix}node1"
    state = State.create(state_dir, prefix, 1, 2, "none")
    state.add_namespace(ns)
    namespaces.add(ns)
    record = ProcessRecord("node1/sleep", ns, ["sleep", "60"], str(state_dir / "logs" / "x.log"))
    state.add_process(record)
    # As if `up` died after starting the process but before writing its pid.
    orphan = subprocess.Popen(record.launch_argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while orphan.pid not in namespaces.pids(ns) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert down(prefix, state_dir) is True
        assert orphan.wait(timeout=10) == -signal.SIGTERM
    finally:
        orphan.kill()
        orphan.wait()
        namespaces.delete(ns)
    assert_gone(prefix, state_dir, [orphan.pid])


def test_failed_up_removes_what_it_built() -> None:
    prefix = unique_prefix("fl")
    lines: list[str] = []
    # With a zero timeout the readiness wait fails at the first server not listening yet: one
    # of the cluster DNS's (they start first), or a pod's if those were quicker.
    expected = (
        r"timed out after 0 s waiting for (upstream-dns|cluster-dns|external|pod \w+-\d+) "
        "to listen"
    )
    with pytest.raises(TestbedError, match=expected):
        Testbed.up(prefix, nodes=1, pods_per_node=2, mode="none", progress=lines.append, timeout=0)
    assert any("up failed, removing what was built" in line for line in lines)
    assert_gone(prefix, default_state_dir(prefix), [])


def test_up_refuses_to_adopt_existing_namespaces() -> None:
    prefix = unique_prefix("ex")
    namespaces.add(f"{prefix}fabric")
    try:
        with pytest.raises(TestbedError, match=f"namespaces {prefix}fabric already exist"):
            Testbed.up(prefix, nodes=1, pods_per_node=2, mode="none")
        assert namespaces.exists(f"{prefix}fabric")
        assert not default_state_dir(prefix).exists()
    finally:
        namespaces.delete(f"{prefix}fabric")


def test_commands_on_a_testbed_that_is_not_up_explain_what_to_do() -> None:
    prefix = unique_prefix("no")
    status = cli("status", "--prefix", prefix)
    assert status.returncode == 1
    assert f"no testbed {prefix} is up" in status.stderr
    assert "ztunnel-py testbed up" in status.stderr
    result = cli("exec", "--prefix", prefix, "echo-1", "--", "true")
    assert result.returncode == 1 and "no testbed" in result.stderr
    result = cli("down", "--prefix", prefix)
    assert result.returncode == 0 and "nothing to do" in result.stdout
    bad = cli("up", "--prefix", "lab-")
    assert bad.returncode == 1 and "must start with 'zt'" in bad.stderr
    bad = cli("up", "--prefix", prefix, "--pods-per-node", "1")
    assert bad.returncode == 1 and "--pods-per-node must be between 2" in bad.stderr
    assert our_namespaces(prefix) == []


def test_sidecar_mode_refuses_dual_stack_before_building_anything(tmp_path: Path) -> None:
    prefix = unique_prefix("sd")
    state_dir = tmp_path / "state"
    with pytest.raises(TestbedError, match="IPv4 only"):
        Testbed.up(prefix, nodes=1, pods_per_node=2, mode="sidecar", dual_stack=True,
                   state_dir=state_dir)  # fmt: skip
    assert not state_dir.exists()
    assert not namespaces.exists(f"{prefix}node1")
