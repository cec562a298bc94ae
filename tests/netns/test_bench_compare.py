"""`ztunnel-py bench compare --quick`, as a user runs it: all three modes come up, every figure
comes out (L4, and L7 through the waypoint or the sidecars' HTTP engine; L4 through the floor
relays on the no-mesh testbed), each mode's traffic took that mode's path, and the report files
are written. Figures are printed, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.bench.results import (
    AGENT,
    AMBIENT,
    MODES,
    NONE,
    SIDECAR,
    SIDECAR_PROXY,
    WAYPOINT,
    CompareResult,
)

pytestmark = pytest.mark.netns


def test_quick_compare_measures_every_mode_on_its_own_path(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ztunnel_py.cli",
            "bench",
            "compare",
            "--quick",
            "--out",
            str(out),
            "--prefix",
            unique_prefix("bc"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # progress went to stderr, the table to stdout
    assert "[sidecar] path check ok" in done.stderr
    assert "[ambient] L7 path check ok" in done.stderr
    assert "path checks" in done.stdout and "targets (printed, not asserted)" in done.stdout
    assert "L7: HTTP/1.1 to the echo service through the HTTP filter engine" in done.stdout
    assert "L7: waypoint CPU <= 0.5 s per 1000 requests" in done.stdout

    result = CompareResult.from_dict(json.loads((out / "results.json").read_text()))
    assert list(result.modes) == list(MODES)
    for mode in MODES:
        r = result.modes[mode]
        assert r.path.ok, (mode, r.path.problems)
        assert r.throughput_gbps.median > 0.5
        lat = r.latency_ms
        assert 0 < lat.p50.median <= lat.p90.median <= lat.p99.median
        assert lat.errors.median == 0
        assert lat.achieved_rps.median > 0.9 * result.settings.plan.rate
        assert r.connections_per_s.median > 10
        assert tuple(c.pods_per_node for c in r.costs) == result.settings.plan.pods_per_node
    # who carried the traffic: nobody, the two sidecars, the two node agents
    assert result.modes[NONE].path.evidence[0] == "no control plane, agent or sidecar process runs"
    assert all("sidecar of" in line for line in result.modes[SIDECAR].path.evidence)
    assert all("agent of" in line for line in result.modes[AMBIENT].path.evidence)
    # one proxy per pod of the mesh (every pod but legacy-1) against one agent per node
    for cost in result.modes[SIDECAR].costs:
        assert cost.processes == 2 * cost.pods_per_node
        assert cost.cpu_s_per_1000_requests.median > 0 and cost.rss_mib.median > 0
    for cost in result.modes[AMBIENT].costs:
        assert cost.processes == 2
        assert cost.cpu_s_per_1000_requests.median > 0 and cost.rss_mib.median > 0
    # the floor: a splice relay in each agent's place carried the same load through the capture
    floor = result.floor
    assert floor is not None and floor.path.ok, floor and floor.path.problems
    assert [line.split(" counted ")[0] for line in floor.path.evidence] == [
        "floor relay of node1 (relayed out of web-1)",
        "floor relay of node2 (delivered into echo-2)",
        "the capture of web-1 (connections assigned to the relay's listener)",
    ]
    assert floor.throughput_gbps.median > 0.5 and floor.connections_per_s.median > 10
    lat = floor.latency_ms
    assert 0 < lat.p50.median <= lat.p99.median and lat.errors.median == 0
    assert lat.achieved_rps.median > 0.9 * result.settings.plan.rate
    [cost] = floor.costs
    assert cost.pods_per_node == min(result.settings.plan.pods_per_node) and cost.processes == 2
    assert 0 < cost.system_s_per_1000_requests.median <= cost.cpu_s_per_1000_requests.median
    assert "the floor: a plaintext splice relay pair" in done.stdout
    assert "[floor] path check ok" in done.stderr
    # the agents' sockets cost kernel time, a part of the total
    for cost in result.modes[SIDECAR].costs + result.modes[AMBIENT].costs:
        assert 0 < cost.system_s_per_1000_requests.median < cost.cpu_s_per_1000_requests.median
    assert all(c.processes == 0 for c in result.modes[NONE].costs)

    # L7: one run per mode, every process on the path measured, the engine counted the requests
    for mode in MODES:
        l7 = result.modes[mode].l7
        assert l7.path.ok, (mode, l7.path.problems)
        lat = l7.latency_ms
        assert 0 < lat.p50.median <= lat.p90.median <= lat.p99.median
        assert len(lat.achieved_rps.values) == len(lat.errors.values) == 1
        for process in l7.processes:
            assert process.rss_mib.median > 0 and process.pss_mib.median > 0
            assert len(process.cpu_s_per_1000_requests.values) == 1
            system = process.system_s_per_1000_requests.values
            assert len(system) == 1 and system[0] <= process.cpu_s_per_1000_requests.values[0]
    ambient, sidecar, none = (result.modes[m].l7 for m in (AMBIENT, SIDECAR, NONE))
    assert ambient.targets == sidecar.targets == ["10.96.0.10:80"]  # the echo VIP
    assert len(none.targets) == 2 and not none.processes  # the two echo pods, no proxy
    assert [(p.name, p.role) for p in ambient.processes] == [
        ("waypoint", WAYPOINT),
        ("agent node1", AGENT),
        ("agent node2", AGENT),
    ]
    assert [(p.name, p.role) for p in sidecar.processes] == [
        (f"sidecar {pod}", SIDECAR_PROXY) for pod in ("web-1", "echo-1", "echo-2")
    ]
    assert ambient.cpu_s_per_1000_requests.median > 0
    assert sidecar.cpu_s_per_1000_requests.median > 0
    assert "saw the waypoint" in ambient.path.evidence[0]
    assert "(istio_requests_total, reporter=waypoint)" in ambient.path.evidence[1]
    assert "(istio_requests_total, reporter=source)" in sidecar.path.evidence[0]

    assert (out / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "sidecar" in page
