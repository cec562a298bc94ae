"""`ztunnel-py bench dns`: DNS through the agent's proxy against the cluster DNS directly.

One 1-node ambient testbed. The same load (`dnsload`: closed-loop UDP queries for one name to
the cluster DNS address, `--concurrency` at a time) runs from `legacy-1`, which is not in the
mesh (its queries reach dnsmasq directly), and from `web-1`, whose queries are captured and
answered by the agent's DNS proxy: for a mesh name (answered by the proxy itself) and for a name
of the upstream zone (forwarded by the proxy to the same dnsmasq). Reported: queries per second,
p50 and p99 latency, and the proxy's figures as ratios of the direct ones, measured in the same
run. Figures, not assertions; both paths share the machine's CPUs with everything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from ztunnel_py.bench.dnsload import DnsLoadResult
from ztunnel_py.testbed import clusterdns
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed

MESH_NAME = "echo.apps.svc.cluster.local"
PROXY_POD, DIRECT_POD = "web-1", "legacy-1"


def load(bed: Testbed, pod: str, name: str, queries: int, concurrency: int) -> DnsLoadResult:
    server = bed.status().dns.nameservers[0]
    argv = [
        sys.executable,
        "-m",
        "ztunnel_py.bench.dnsload",
        "--server",
        server,
        "--name",
        name,
        "--queries",
        str(queries),
        "--concurrency",
        str(concurrency),
    ]
    done = bed.exec(pod, argv, timeout=120)
    if done.returncode != 0:
        raise TestbedError(f"dnsload in {pod} failed: {done.stderr.strip()}")
    return DnsLoadResult(**json.loads(done.stdout))


def measure(bed: Testbed, queries: int, concurrency: int) -> dict[str, dict[str, DnsLoadResult]]:
    return {
        name: {
            "direct": load(bed, DIRECT_POD, name, queries, concurrency),
            "proxy": load(bed, PROXY_POD, name, queries, concurrency),
        }
        for name in (MESH_NAME, clusterdns.EXTERNAL_HOST)
    }


def render(results: dict[str, dict[str, DnsLoadResult]], queries: int, concurrency: int) -> str:
    lines = [
        f"DNS: {queries} A queries per run, {concurrency} at a time, UDP to the cluster DNS",
        f"{'name':<30} {'path':<7} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}",
    ]
    for name, paths in results.items():
        for path, r in paths.items():
            shown = name if path == "direct" else ""
            lines.append(
                f"{shown:<30} {path:<7} {r.qps:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                f"{r.failures:>6}"
            )
        direct, proxy = paths["direct"], paths["proxy"]
        lines.append(
            f"{'':<30} {'ratio':<7} {proxy.qps / direct.qps:>7.2f}x "
            f"{'':>8} {proxy.p99_ms / direct.p99_ms:>7.2f}x   (proxy / direct)"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        bed = Testbed.up(prefix=args.prefix, nodes=1, pods_per_node=2)
    except TestbedError as e:
        print(f"ztunnel-py bench dns: {e}", file=sys.stderr)
        return 1
    try:
        results = measure(bed, args.queries, args.concurrency)
    except TestbedError as e:
        print(f"ztunnel-py bench dns: {e}", file=sys.stderr)
        return 1
    finally:
        bed.down()
    if args.json:
        out: dict[str, Any] = {
            name: {path: asdict(r) for path, r in paths.items()} for name, paths in results.items()
        }
        print(json.dumps(out, indent=2))
    else:
        print(render(results, args.queries, args.concurrency))
    return 0
