"""`ztunnel-py bench throughput`: one iperf3 stream across nodes, with and without the mesh.

Both modes run in the same testbed in the same invocation, so the ratio compares like with
like on this machine. CPU cost is each agent's user+system time (from /proc/<pid>/stat) over
the mesh run, divided by the gigabytes carried.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ztunnel_py.testbed.errors import TestbedError
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


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the ")" they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _agent_pids(status: dict[str, Any]) -> dict[str, int]:
    return {n["name"]: int(n["agent"]["pid"]) for n in status["nodes"] if n["agent"]["pid"]}


def measure(bed: Testbed, seconds: int, repeat: int, say: Any) -> ThroughputResult:
    status = bed.status()
    pods: list[dict[str, Any]] = status["pods"]
    client = next(p for p in pods if p["node"] == "node1" and p["role"] == "client")
    server = next(p for p in pods if p["node"] == "node2" and p["app"] == "echo")
    agents = _agent_pids(status)
    plain: list[float] = []
    meshed: list[float] = []
    cpu = dict.fromkeys(agents, 0.0)
    gigabytes = 0.0
    for i in range(repeat):
        say(f"run {i + 1}/{repeat}: no mesh, {client['name']} -> {server['name']}, {seconds} s")
        plain.append(
            gbps(iperf3(bed, client["name"], server["ip"], seconds=seconds, via_mesh=False))
        )
        say(f"run {i + 1}/{repeat}: through the mesh, {seconds} s")
        before = {n: _cpu_seconds(pid) for n, pid in agents.items()}
        result = iperf3(bed, client["name"], server["ip"], seconds=seconds)
        for n, pid in agents.items():
            cpu[n] += _cpu_seconds(pid) - before[n]
        meshed.append(gbps(result))
        gigabytes += float(result["end"]["sum_received"]["bytes"]) / 1e9
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
        say("bringing up a 2-node testbed with the mesh")
        bed = Testbed.up(prefix=args.prefix, nodes=2, pods_per_node=2, mesh=True, progress=say)
    except TestbedError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    try:
        result = measure(bed, args.seconds, args.repeat, say)
    except TestbedError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        bed.down(say)
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    runs = f" (best of {result.runs})" if result.runs > 1 else ""
    print(f"\nsingle-stream iperf3, node1 -> node2, {result.seconds} s{runs}")
    print(f"  no mesh         {result.no_mesh_gbps:8.2f} Gbit/s")
    print(
        f"  through mesh    {result.mesh_gbps:8.2f} Gbit/s   ratio {result.ratio:.2f}"
        f"  (target >= 0.25)"
    )
    for node, v in result.agent_cpu_seconds_per_gb.items():
        print(f"  agent {node:<8}  {v:8.2f} CPU-s/GB")
    return 0
