"""`ztunnel-py bench soak --minutes N`: hours of traffic in minutes, and whether the agents leak.

A fresh 2-node testbed with the mesh carries, for N minutes:
- open-loop HTTP/1.1 requests at `--rate` (default 1000/s) over 16 keep-alive connections from
  web-1 (node1) to echo-2 (node2), through both agents over HBONE;
- connection churn the other way, from curl-2 (node2) to echo-1 (node1): one new connection per
  request, `--churn` per second (default 20).
The load generator (`loadgen.py`) runs in one-minute segments, so its reports give the errors
per minute and its keep-alive connections are renewed every minute (more churn). Every
`--sample` seconds each agent is sampled: resident memory, open file descriptors, threads,
trio tasks (`ztunnel_py_tasks`) and open proxied connections (`istio_tcp_sockets_open`).

The verdict follows the first fifth of the run (at least 20 s, the warm-up: caches, pools and
allocator arenas fill up): resident memory may grow less than 5% from the end of the warm-up to
the end, descriptors and tasks must come back to where they were (within a few, for connections
in flight), and no request or connection may fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ztunnel_py.bench import procstat
from ztunnel_py.bench.endpoints import scrape_metrics
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import HTTP_PORT

Say = Callable[[str], None]

SEGMENT = 60.0
MAX_RSS_GROWTH = 0.05
# Descriptors and tasks a connection in flight holds at a sample: the end may differ by this much.
SLACK = 64


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float  # since the start of the load
    node: str
    rss_mib: float
    fds: int
    threads: int
    tasks: int
    sockets_open: int


@dataclass
class SoakResult:
    minutes: float
    rate: int
    churn: int
    requests: int = 0
    errors: int = 0
    connections: int = 0
    connection_errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    warmup_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.errors == 0
            and self.connection_errors == 0
            and self.requests > 0
            and all(v["ok"] for v in self.verdicts.values())
        )


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _scrape(netns: str) -> dict[str, float]:
    """ztunnel_py_tasks and istio_tcp_sockets_open (summed) of the agent in `netns`."""
    found = {"ztunnel_py_tasks": 0.0, "istio_tcp_sockets_open": 0.0}
    for family in text_string_to_metric_families(scrape_metrics(netns)):
        if family.name in found:
            found[family.name] = sum(s.value for s in family.samples)
    return found


def sample(bed: Testbed, since: float) -> list[Sample]:
    out = []
    for node in bed.status().nodes:
        pid = node.agent.pid
        if pid is None:
            raise TestbedError(f"the agent of {node.name} is not running")
        scraped = _scrape(node.netns)
        out.append(
            Sample(
                seconds=round(time.monotonic() - since, 1),
                node=node.name,
                rss_mib=round(procstat.rss_bytes(pid) / 2**20, 2),
                fds=_fds(pid),
                threads=_threads(pid),
                tasks=int(scraped["ztunnel_py_tasks"]),
                sockets_open=int(scraped["istio_tcp_sockets_open"]),
            )
        )
    return out


def _loadgen(bed: Testbed, pod: str, argv: list[str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "ztunnel_py.bench.loadgen", *argv]
    return subprocess.Popen(
        bed.exec_argv(pod, command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _report(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    out, err = proc.communicate(timeout=SEGMENT + 60)
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        raise TestbedError(f"{what}: the load generator failed: {err.strip()[-500:]}") from None
    return report


def judge(samples: list[Sample], warmup: float) -> dict[str, dict[str, Any]]:
    """Per node: memory growth after the warm-up, and descriptors and tasks back where they
    were."""
    verdicts = {}
    for node in sorted({s.node for s in samples}):
        mine = [s for s in samples if s.node == node]
        settled = [s for s in mine if s.seconds >= warmup] or mine[-1:]
        base, last = settled[0], mine[-1]
        growth = (last.rss_mib - base.rss_mib) / base.rss_mib
        verdicts[node] = {
            "rss_after_warmup_mib": base.rss_mib,
            "rss_end_mib": last.rss_mib,
            "rss_growth_pct": round(100 * growth, 2),
            "fds": [min(s.fds for s in mine), max(s.fds for s in mine), last.fds],
            "tasks": [min(s.tasks for s in mine), max(s.tasks for s in mine), last.tasks],
            "ok": growth < MAX_RSS_GROWTH
            and last.fds <= base.fds + SLACK
            and last.tasks <= base.tasks + SLACK,
        }
    return verdicts


def run_soak(
    bed: Testbed, minutes: float, rate: int, churn: int, every: float, say: Say
) -> SoakResult:
    """The load of the module docstring on `bed` for `minutes`, sampled every `every` s."""
    status = bed.status()
    keepalive = SocketAddr(status.pod("echo-2").ip, HTTP_PORT)
    churned = SocketAddr(status.pod("echo-1").ip, HTTP_PORT)
    result = SoakResult(minutes=minutes, rate=rate, churn=churn)
    total = minutes * 60
    result.warmup_s = max(20.0, total / 5)
    start = time.monotonic()
    result.samples += sample(bed, start)
    while (elapsed := time.monotonic() - start) < total - 1:
        seconds = min(SEGMENT, total - elapsed)
        latency = _loadgen(
            bed, "web-1",
            ["latency", "--target", str(keepalive), "--path", "/bytes/1024", "--rate", str(rate),
             "--connections", "16", "--duration", f"{seconds:.1f}", "--warmup", "0"],
        )  # fmt: skip
        connections = _loadgen(
            bed, "curl-2",
            ["connections", "--target", str(churned), "--duration", f"{seconds:.1f}",
             "--concurrency", "1", "--max", str(max(1, int(churn * seconds)))],
        )  # fmt: skip
        segment_end = time.monotonic() + seconds
        while time.monotonic() < segment_end:
            time.sleep(min(every, max(0.0, segment_end - time.monotonic())))
            result.samples += sample(bed, start)
        lat, con = _report(latency, "latency"), _report(connections, "churn")
        result.requests += lat["requests"]
        result.errors += lat["errors"]
        result.connections += con["connections"]
        result.connection_errors += con["errors"]
        for reason, count in {**lat["errors_by_reason"], **con["errors_by_reason"]}.items():
            result.errors_by_reason[reason] = result.errors_by_reason.get(reason, 0) + count
        last = {s.node: s for s in result.samples[-2:]}
        say(
            f"{(time.monotonic() - start) / 60:5.1f} min: {result.requests} requests, "
            f"{result.connections} new connections, {result.errors + result.connection_errors} "
            "errors; "
            + "; ".join(
                f"{n}: {s.rss_mib:.1f} MiB, {s.fds} fds, {s.tasks} tasks"
                for n, s in sorted(last.items())
            )
        )
    time.sleep(2)  # let the last connections wind down before the final sample
    result.samples += sample(bed, start)
    result.verdicts = judge(result.samples, result.warmup_s)
    return result


def render(result: SoakResult) -> str:
    lines = [
        f"soak: {result.minutes:g} min at {result.rate} req/s (keep-alive, node1 -> node2) "
        f"+ {result.churn} new connections/s (node2 -> node1)",
        f"requests {result.requests}, errors {result.errors}; new connections "
        f"{result.connections}, errors {result.connection_errors}",
        f"warm-up: first {result.warmup_s:.0f} s",
        f"{'agent':8} {'RSS after warm-up':>18} {'RSS end':>9} {'growth':>8} "
        f"{'fds min/max/end':>16} {'tasks min/max/end':>18}  verdict",
    ]
    for node, v in result.verdicts.items():
        lines.append(
            f"{node:8} {v['rss_after_warmup_mib']:>14.1f} MiB {v['rss_end_mib']:>5.1f} MiB "
            f"{v['rss_growth_pct']:>7.2f}% {'/'.join(map(str, v['fds'])):>16} "
            f"{'/'.join(map(str, v['tasks'])):>18}  {'ok' if v['ok'] else 'FAIL'}"
        )
    lines.append("PASS" if result.ok else "FAIL")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not 0 < args.minutes <= 24 * 60:
        say("--minutes must be between 0 and 1440")
        return 2
    say(f"bringing up a 2-node testbed ({args.prefix}*)")
    bed = Testbed.up(prefix=args.prefix, nodes=2, pods_per_node=2)
    try:
        result = run_soak(bed, args.minutes, args.rate, args.churn, args.sample, say)
    finally:
        bed.down()
    if args.json:
        print(json.dumps(asdict(result) | {"ok": result.ok}))
    else:
        print(render(result))
    return 0 if result.ok else 1
