"""`ztunnel-py bench xds` at a small scale, so the benchmark keeps working (figures unchecked)."""

from __future__ import annotations

from ztunnel_py.bench.xds import build_mesh, run_bench


def test_synthetic_mesh_is_consistent() -> None:
    mesh = build_mesh(workloads=50, services=5, policies=3)
    assert (len(mesh.workloads), len(mesh.services), len(mesh.policies)) == (50, 5, 3)
    for w in mesh.workloads.values():
        assert set(w.services) <= set(mesh.services)
    assert len({w.addresses for w in mesh.workloads.values()}) == 50


def test_bench_runs_end_to_end() -> None:
    lines: list[str] = []
    result = run_bench(workloads=200, services=20, changes=2, say=lines.append)
    assert (result.workloads, result.services) == (200, 20)
    assert result.initial_sync_seconds > 0 and result.bytes_received > 0
    assert len(result.change_latency_ms) == 2
    assert any("initial sync applied" in line for line in lines)
