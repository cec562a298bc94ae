"""`ztunnel-py testbed status --json`: the shape scripts and people read, pinned byte for byte
(golden files), as the typed `Testbed.status()` renders it. No root needed: the testbed is only
its recorded state (one node, two pods per node, in ambient mode a waypoint and Prometheus;
processes recorded with pids that do not run)."""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import pytest

from ztunnel_py.testbed import mesh, prometheus, sidecar
from ztunnel_py.testbed.process import ProcessRecord
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.testbed import Testbed, http_name
from ztunnel_py.testbed.topology import MODE_AMBIENT, MODE_SIDECAR, plan
from ztunnel_py.testbed.waypoints import plan_waypoint

FIXTURES = Path(__file__).parent.parent / "fixtures" / "testbed"
PREFIX = "zt-s-"
# Recorded processes: these pids with this start time are never alive, whatever runs here.
NOT_STARTED_AT_BOOT = 1


def recorded_testbed(root: Path, mode: str, dual_stack: bool) -> Path:
    """The state `testbed up` would have recorded (nothing else is created); its directory."""
    topology = plan(PREFIX, 1, 2, dual_stack, mode)
    state = State.create(
        root / "state",
        PREFIX,
        1,
        2,
        mode,
        dual_stack=dual_stack,
        namespace_labels=topology.namespace_labels,
        prometheus=mode == MODE_AMBIENT,
    )
    names = [mesh.CONTROLPLANE, http_name("echo-1")]
    if mode == MODE_AMBIENT:
        # ...and a waypoint applied since
        waypoint = plan_waypoint(topology, "apps", "waypoint", [], set())
        state.add_waypoint(waypoint)
        names += [mesh.agent_name("node1"), mesh.waypoint_name(waypoint), prometheus.PROMETHEUS]
    else:
        names += [sidecar.sidecar_name("web-1")]
    for pid, name in enumerate(names, start=4001):
        state.add_process(
            ProcessRecord(
                name, "netns", ["argv"], str(root / f"{pid}.log"), pid, NOT_STARTED_AT_BOOT
            )
        )
    state.complete = True
    state.save()
    return state.state_dir


@pytest.mark.parametrize(
    ("mode", "dual_stack", "golden"),
    [(MODE_AMBIENT, True, "status-ambient.json"), (MODE_SIDECAR, False, "status-sidecar.json")],
)
def test_status_json_keeps_its_shape(
    tmp_path: Path, mode: str, dual_stack: bool, golden: str
) -> None:
    state_dir = recorded_testbed(tmp_path, mode, dual_stack)
    cli = [sys.executable, "-m", "ztunnel_py.cli", "testbed", "status", "--json"]
    done = subprocess.run(
        [*cli, "--prefix", PREFIX, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = string.Template((FIXTURES / golden).read_text()).substitute(root=tmp_path)
    assert done.stdout == expected


def test_status_is_typed(tmp_path: Path) -> None:
    status = Testbed.attach(PREFIX, recorded_testbed(tmp_path, MODE_SIDECAR, False)).status()
    web = status.pod("web-1")
    assert (web.ip, web.node, web.enrolled) == ("10.244.1.11", "node1", False)
    assert web.sidecar is not None and (web.sidecar.pid, web.sidecar.alive) == (4003, False)
    assert status.pod("legacy-1").sidecar is None
    assert status.node("node1").agent.pid is None
    assert status.controlplane.pid == 4001
    with pytest.raises(KeyError):
        status.pod("nope")
    with pytest.raises(KeyError):
        status.waypoint("waypoint", "apps")
    ambient = Testbed.attach(PREFIX, recorded_testbed(tmp_path / "a", MODE_AMBIENT, False)).status()
    waypoint = ambient.waypoint("waypoint", "apps")
    assert (waypoint.node, waypoint.ip, waypoint.vip) == ("node1", "10.244.1.200", "10.96.0.200")
    assert (waypoint.process.name, waypoint.process.pid) == ("waypoint/apps/waypoint", 4004)
