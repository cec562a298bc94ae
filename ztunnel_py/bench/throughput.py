"""`ztunnel-py bench throughput`: one iperf3 stream across nodes, with and without the mesh.

Both modes run in the same invocation, each in a fresh testbed (capture meshes every client of
an enrolled pod, so the baseline gets a testbed without the mesh), so the ratio compares like
with like on this machine. CPU cost is each agent's user+system time (from /proc/<pid>/stat) over
the mesh run, divided by the gigabytes carried.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ztunnel_py.bench.procstat import cpu_seconds
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.status import TestbedStatus
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.traffic import gbps, iperf3


@dataclass
class ThroughputResult:
    no_mesh_gbps: float
    mesh_gbps: float
    ratio: float
    seconds: int
    runs: int
    no_mesh_runs_gbps: list[float]
    mesh_runs_gbps: list[float]
    agent_cpu_seconds_per_gb: dict[str, float]


def _agent_pids(status: TestbedStatus) -> dict[str, int]:
    return {n.name: n.agent.pid for n in status.nodes if n.agent.pid}


def _endpoints(bed: Testbed) -> tuple[str, str]:
    pods = bed.status().pods
    client = next(p for p in pods if p.node == "node1" and p.role == "client")
    server = next(p for p in pods if p.node == "node2" and p.app == "echo")
    return client.name, server.ip


def _run(
    prefix: str, mesh: bool, seconds: int, repeat: int, say: Callable[[str], None]
) -> tuple[list[float], dict[str, float], float]:
    """iperf3 runs in a fresh testbed (with or without the mesh); (Gbit/s per run, agent CPU
    seconds, GB carried). Clients are plain: with the mesh, capture makes them meshed."""
    label = "through the mesh" if mesh else "no mesh"
    say(f"bringing up a 2-node testbed {'with' if mesh else 'without'} the mesh")
    bed = Testbed.up(
        prefix=prefix,
        nodes=2,
        pods_per_node=2,
        mode="ambient" if mesh else "none",
        progress=say,
        with_prometheus=False,  # both runs on equal terms: no scrapes taking the cores
    )
    try:
        client, server_ip = _endpoints(bed)
        agents = _agent_pids(bed.status()) if mesh else {}
        runs: list[float] = []
        cpu = dict.fromkeys(agents, 0.0)
        gigabytes = 0.0
        for i in range(repeat):
            say(f"run {i + 1}/{repeat}: {label}, {client} -> {server_ip}, {seconds} s")
            before = {n: cpu_seconds(pid) for n, pid in agents.items()}
            result = iperf3(bed, client, server_ip, seconds=seconds)
            for n, pid in agents.items():
                cpu[n] += cpu_seconds(pid) - before[n]
            runs.append(gbps(result))
            gigabytes += float(result["end"]["sum_received"]["bytes"]) / 1e9
        return runs, cpu, gigabytes
    finally:
        bed.down(say)


def measure(prefix: str, seconds: int, repeat: int, say: Callable[[str], None]) -> ThroughputResult:
    plain, _, _ = _run(prefix, False, seconds, repeat, say)
    meshed, cpu, gigabytes = _run(prefix, True, seconds, repeat, say)
    no_mesh, mesh = max(plain), max(meshed)
    return ThroughputResult(
        no_mesh_gbps=round(no_mesh, 3),
        mesh_gbps=round(mesh, 3),
        ratio=round(mesh / no_mesh, 3) if no_mesh else 0.0,
        seconds=seconds,
        runs=repeat,
        no_mesh_runs_gbps=[round(x, 3) for x in plain],
        mesh_runs_gbps=[round(x, 3) for x in meshed],
        agent_cpu_seconds_per_gb={
            n: round(c / gigabytes, 3) if gigabytes else 0.0 for n, c in cpu.items()
        },
    )


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        result = measure(args.prefix, args.seconds, args.repeat, say)
    except TestbedError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    runs = f" (best of {result.runs})" if result.runs > 1 else ""
    print(f"\nsingle-stream iperf3, node1 -> node2, {result.seconds} s{runs}")
    print(f"  no mesh         {result.no_mesh_gbps:8.2f} Gbit/s")
    print(
        f"  through mesh    {result.mesh_gbps:8.2f} Gbit/s   ratio {result.ratio:.2f}"
        "  (target >= 0.25)"
    )
    for node, v in result.agent_cpu_seconds_per_gb.items():
        print(f"  agent {node:<8}  {v:8.2f} CPU-s/GB")
    return 0
