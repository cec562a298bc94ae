"""`ztunnel-py bench compare`: no mesh, sidecar mode and ambient mode, side by side, in one run.

For each mode (none, sidecar, ambient) the harness brings up a 2-node testbed in that mode
(`Testbed.up(mode=...)`) and, from the client pod on node1 (`web-1`) to the echo pod on node2
(`echo-2`, by pod IP, which every mode can reach), measures:

1. throughput: single-stream iperf3 (`throughput_seconds`);
2. latency under load: the open-loop load generator (`loadgen.py`) at a fixed request rate over
   N HTTP/1.1 connections, 1 KiB response bodies, p50/p90/p99 from each request's scheduled send
   time;
3. connection setup: new TCP connections per second (one request each);
4. cost, with each pods-per-node count (a fresh testbed per count): user+system CPU seconds of
   every data-plane process (the agents, or every sidecar) per 1000 requests under the same
   load, the load's p99, and the processes' summed resident memory afterwards (RSS, and PSS,
   which counts the pages they share once);
5. L7 (`l7.py`): the same open-loop load over HTTP/1.1 to the echo service's VIP through the HTTP
   filter engine (ambient with a waypoint, or the sidecars' engine on the HTTP port; no mesh: to
   the echo pods directly), with the CPU seconds per 1000 requests and the memory of every
   process on that path, after the L4 measurements of the smallest testbed.

6. the floor (`floor.py`): on the smallest no-mesh testbed, after its own figures, a plaintext
   `os.splice` relay in each node agent's place, on the same capture; throughput, latency,
   connection rate and the cost run at that pods-per-node count go through it, so ambient's
   figures can be read as a ratio of what any user-space two-hop proxy costs here.

Throughput, latency, connection rate and L7 are measured on the smallest testbed. `--repeat N`
repeats every measurement on the same testbed, so each figure has N values. While the
connection-rate run opens its connections the harness also checks that the traffic took the
mode's path: the proxies that should carry it count those connections in their
`istio_tcp_connections_opened_total` (reporter source and destination), the floor relays in
their own counters and the client pod's capture in its BPF counters, and with no mesh no
proxy process exists and the pods have no iptables rule and no tc filter. The L7 run has its own
check (the filter engine counted its requests). A failed check makes the command exit 1.
Results: the table on stdout, and results.json, report.png and report.html in the output
directory (`report.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ztunnel_py.bench import floor, l7
from ztunnel_py.bench.endpoints import (
    CLIENT_POD,
    SERVER_POD,
    Endpoints,
    counter_total,
    latency_argv,
)
from ztunnel_py.bench.floor import FloorRelays
from ztunnel_py.bench.results import (
    AMBIENT,
    FLOOR,
    ISTIO_PUBLISHED,
    MODES,
    NONE,
    SIDECAR,
    CompareResult,
    Cost,
    ModeResult,
    PathCheck,
    Plan,
    Settings,
)
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import IPERF_PORT
from ztunnel_py.testbed.traffic import gbps, iperf3

Say = Callable[[str], None]

OPENED = "istio_tcp_connections_opened"


FULL = Plan(
    throughput_seconds=10,
    latency_seconds=30.0,
    warmup_seconds=2.0,
    cost_seconds=10.0,
    connection_rate_seconds=5.0,
    l7_seconds=30.0,
    rate=1000,
    connections=16,
    response_bytes=1024,
    pods_per_node=(2, 8, 32),
)
# The same load for shorter runs: enough to see every path work and every figure come out
# (each run a second or two, after a one-second warm-up), in about a minute and a half.
QUICK = dataclasses.replace(
    FULL,
    throughput_seconds=1,
    latency_seconds=2.0,
    warmup_seconds=1.0,
    cost_seconds=1.0,
    connection_rate_seconds=1.0,
    l7_seconds=2.0,
    pods_per_node=(2, 4),
)


# -- path checks ------------------------------------------------------------------------------


Count = Callable[[], float]


def _opened(netns: str, reporter: str) -> Count:
    return lambda: counter_total(netns, OPENED, reporter=reporter)


def _carriers(ep: Endpoints) -> list[tuple[str, Count]]:
    """(what, how to read its count) of each proxy, or capture, that must count every one of
    the client's connections."""
    topology = ep.bed.topology
    client, server = topology.pod(CLIENT_POD), topology.pod(SERVER_POD)
    if ep.floor is not None:
        status = ep.floor.status
        return [
            (
                f"floor relay of {client.node} (relayed out of {CLIENT_POD})",
                lambda: float(status(client.node)[floor.OUTBOUND]),
            ),
            (
                f"floor relay of {server.node} (delivered into {SERVER_POD})",
                lambda: float(status(server.node)[floor.INBOUND]),
            ),
            (
                f"the capture of {CLIENT_POD} (connections assigned to the relay's listener)",
                lambda: float(status(client.node)["pods"][CLIENT_POD]["assigns"]),
            ),
        ]
    if ep.mode == AMBIENT:
        return [
            (
                f"agent of {client.node} (reporter=source)",
                _opened(topology.node(client.node).netns, "source"),
            ),
            (
                f"agent of {server.node} (reporter=destination)",
                _opened(topology.node(server.node).netns, "destination"),
            ),
        ]
    if ep.mode == SIDECAR:
        return [
            (f"sidecar of {client.name} (reporter=source)", _opened(client.netns, "source")),
            (
                f"sidecar of {server.name} (reporter=destination)",
                _opened(server.netns, "destination"),
            ),
        ]
    return []


def _no_interception(ep: Endpoints, check: PathCheck) -> None:
    """No mesh: no proxy process, and nothing in the pods that could redirect traffic."""
    if ep.proxies or ep.controlplane_pid:
        check.problems.append(f"mesh processes are running: {', '.join(ep.proxies)}")
    else:
        check.evidence.append("no control plane, agent or sidecar process runs")
    for pod in (CLIENT_POD, SERVER_POD):
        rules = ep.bed.exec(pod, ["iptables-save", "-t", "nat"]).stdout
        redirects = [line for line in rules.splitlines() if "REDIRECT" in line]
        filters = ep.bed.exec(pod, ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
        filters += ep.bed.exec(pod, ["tc", "filter", "show", "dev", "eth0", "egress"]).stdout
        if redirects or filters.strip():
            check.problems.append(f"pod {pod} has iptables REDIRECT rules or tc filters")
        else:
            check.evidence.append(f"pod {pod}: no iptables REDIRECT rule, no tc filter")


def connection_rate_and_path(
    plan: Plan, ep: Endpoints, check: bool
) -> tuple[float, PathCheck | None]:
    """New connections per second from the client to the server; with `check`, also whether
    the mode's proxies carried that traffic (each counted every connection)."""
    carriers = _carriers(ep) if check else []
    before = {what: count() for what, count in carriers}
    report = ep.loadgen(
        "connections",
        "--target",
        str(ep.server_http),
        "--path",
        "/",
        "--duration",
        str(plan.connection_rate_seconds),
        "--concurrency",
        "4",
        timeout=plan.connection_rate_seconds + 60,
    )
    rate = float(report["per_second"])
    if not check:
        return rate, None
    path = PathCheck()
    made = int(report["connections"])
    if ep.mode == NONE:
        _no_interception(ep, path)
    for what, count in carriers:
        counted = count() - before[what]
        line = f"{what} counted {counted:.0f} connections; {made} were made"
        (path.evidence if counted >= made else path.problems).append(line)
    others = {
        AMBIENT: "sidecar",
        SIDECAR: "agent",
    }.get(ep.mode)
    if others and any(name.startswith(others) for name in ep.proxies):
        path.problems.append(f"{others} processes run in {ep.mode} mode")
    path.ok = not path.problems
    return rate, path


# -- one mode ---------------------------------------------------------------------------------


def measure_mode(
    mode: str,
    plan: Plan,
    repeat: int,
    prefix: str,
    say: Say,
    floor_result: ModeResult | None = None,
) -> ModeResult:
    """Every figure of `mode`; with `floor_result` (no mesh), the floor's figures too, measured
    into it on the smallest testbed once the no-mesh ones are done."""
    result = ModeResult(mode)
    for index, pods in enumerate(sorted(plan.pods_per_node)):
        say(f"[{mode}] bringing up a testbed with {pods} pods per node")
        began = time.monotonic()
        bed = Testbed.up(
            prefix=prefix,
            nodes=2,
            pods_per_node=pods,
            mode=mode,
            progress=lambda line: None,
            timeout=180.0,
            # every mode on equal terms: an ambient testbed would otherwise bring Prometheus,
            # scraping each proxy every 2 s and taking CPU on the same cores
            with_prometheus=False,
        )
        try:
            ep = Endpoints(bed)
            say(
                f"[{mode}] testbed up in {time.monotonic() - began:.0f} s, "
                f"{len(ep.proxies)} data-plane processes"
            )
            if index == 0:
                _traffic(plan, ep, repeat, result, say)
            result.costs.append(_cost(plan, ep, pods, repeat, mode, say))
            if index == 0:
                result.l7 = l7.measure(plan, ep, repeat, say)
                if floor_result is not None:
                    _floor(plan, bed, pods, repeat, floor_result, say)
        finally:
            bed.down()
    return result


def _cost(plan: Plan, ep: Endpoints, pods: int, repeat: int, mode: str, say: Say) -> Cost:
    cost = Cost(pods_per_node=pods, processes=len(ep.proxies))
    for r in range(repeat):
        say(
            f"[{mode}] cost with {pods} pods per node ({len(ep.proxies)} data-plane "
            f"processes), run {r + 1}/{repeat}: {plan.rate} req/s for "
            f"{plan.cost_seconds:g} s"
        )
        user, system = ep.cpu_times()
        report = ep.loadgen(
            *latency_argv(plan, [ep.server_http], plan.cost_seconds, 0.0),
            timeout=plan.cost_seconds + 60,
        )
        user_after, system_after = ep.cpu_times()
        requests = int(report["requests"]) + int(report["errors"])
        per_1000 = 1000 / requests if requests else 0.0
        used = user_after - user + system_after - system
        cost.cpu_s_per_1000_requests.values.append(round(used * per_1000, 4))
        cost.system_s_per_1000_requests.values.append(round((system_after - system) * per_1000, 4))
        cost.p99_ms.values.append(round(float(report["p99_ms"]), 3))
        cost.rss_mib.values.append(round(ep.rss_mib(), 1))
        cost.pss_mib.values.append(round(ep.pss_mib(), 1))
        cost.controlplane_rss_mib.values.append(round(ep.controlplane_rss_mib(), 1))
    return cost


def _floor(plan: Plan, bed: Testbed, pods: int, repeat: int, result: ModeResult, say: Say) -> None:
    """The L4 figures through a floor relay on each node of the no-mesh testbed."""
    say(f"[{FLOOR}] starting a floor relay on each node (capture, plaintext, splice)")
    relays = FloorRelays(bed)
    try:
        ep = Endpoints(bed)
        ep.use_floor(relays)
        _traffic(plan, ep, repeat, result, say)
        result.costs.append(_cost(plan, ep, pods, repeat, FLOOR, say))
    finally:
        relays.stop()


def _traffic(plan: Plan, ep: Endpoints, repeat: int, result: ModeResult, say: Say) -> None:
    mode = result.mode
    for r in range(repeat):
        run = f"run {r + 1}/{repeat}"
        say(f"[{mode}] iperf3 {CLIENT_POD} -> {SERVER_POD}, {plan.throughput_seconds} s, {run}")
        done = iperf3(
            ep.bed, CLIENT_POD, ep.server_ip, seconds=plan.throughput_seconds, port=IPERF_PORT
        )
        result.throughput_gbps.values.append(round(gbps(done), 3))
        say(
            f"[{mode}] HTTP {plan.rate} req/s over {plan.connections} connections for "
            f"{plan.latency_seconds:g} s (+{plan.warmup_seconds:g} s warm-up), {run}"
        )
        report = ep.loadgen(
            *latency_argv(plan, [ep.server_http], plan.latency_seconds, plan.warmup_seconds),
            timeout=plan.latency_seconds + plan.warmup_seconds + 60,
        )
        result.latency_ms.record(report)
        say(f"[{mode}] new connections for {plan.connection_rate_seconds:g} s, {run}")
        rate, path = connection_rate_and_path(plan, ep, check=r == 0)
        result.connections_per_s.values.append(round(rate, 1))
        if path is not None:
            result.path = path
            state = "ok" if path.ok else "FAILED: " + "; ".join(path.problems)
            say(f"[{mode}] path check {state}")


# -- the whole run ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpus": str(os.cpu_count() or 0),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gib": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f}",
    }


def run(plan: Plan, repeat: int, quick: bool, prefix: str, say: Say) -> CompareResult:
    started = time.monotonic()
    result = CompareResult(
        settings=Settings(plan, repeat, quick),
        machine=machine(),
        modes={},
        published=list(ISTIO_PUBLISHED),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )

    def timed(line: str) -> None:
        say(f"{time.monotonic() - started:6.0f}s  {line}")

    result.floor = ModeResult(FLOOR)
    for mode in MODES:
        floor_result = result.floor if mode == NONE else None
        result.modes[mode] = measure_mode(mode, plan, repeat, prefix, timed, floor_result)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.pods_per_node is not None:
        try:
            counts = tuple(sorted({int(x) for x in args.pods_per_node.split(",")}))
        except ValueError:
            raise TestbedError(
                f"--pods-per-node {args.pods_per_node!r}: give comma-separated counts, e.g. 2,8,32"
            ) from None
        if not counts or counts[0] < 2:
            raise TestbedError("--pods-per-node: every count must be at least 2")
        plan = dataclasses.replace(plan, pods_per_node=counts)
    if args.latency_seconds is not None:
        plan = dataclasses.replace(plan, latency_seconds=args.latency_seconds)
    return plan


def main(args: argparse.Namespace) -> int:
    from ztunnel_py.bench import report

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.repeat < 1:
        print("bench compare: --repeat must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        plan = plan_from_args(args)
        # Fail now, not after a run of several minutes, if the report cannot be written.
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TestbedError(f"--out {out}: cannot create the directory: {e.strerror}") from e
        if not os.access(out, os.W_OK):
            raise TestbedError(f"--out {out}: the directory is not writable")
        say(
            f"bench compare: modes {', '.join(MODES)}; pods per node "
            f"{', '.join(map(str, plan.pods_per_node))}; {args.repeat} run(s) of each "
            f"measurement; report in {out}"
        )
        result = run(plan, args.repeat, args.quick, args.prefix, say)
    except TestbedError as e:
        print(f"bench compare: {e}", file=sys.stderr)
        return 1
    print(report.table(result))
    print()
    try:
        paths = report.write_report(result, out)
    except (report.ReportError, OSError) as e:
        written = out / "results.json"
        kept = f" ({written} was written)" if written.exists() else ""
        print(f"bench compare: cannot write the report{kept}: {e}", file=sys.stderr)
        return 1
    for kind, path in paths.items():
        print(f"{kind:5} {path}")
    failed = [m for m, r in result.modes.items() if not r.path.ok]
    failed += [FLOOR] if result.floor is not None and not result.floor.path.ok else []
    failed += [f"{m} (L7)" for m, r in result.modes.items() if not r.l7.path.ok]
    if failed:
        print(
            f"bench compare: the path check failed for {', '.join(failed)}: see above",
            file=sys.stderr,
        )
        return 1
    return 0
