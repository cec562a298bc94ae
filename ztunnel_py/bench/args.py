"""Arguments of `ztunnel-py bench`."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    tp = sub.add_parser(
        "throughput",
        help="single-stream iperf3 pod-to-pod across nodes: no mesh vs through the mesh",
        description="Bring up a 2-node testbed with the mesh, run single-stream iperf3 from a "
        "pod on node1 to a pod on node2 directly (no mesh) and through the mesh, in the same "
        "run, and report both, their ratio, and each agent's CPU seconds per GB carried.",
    )
    tp.add_argument(
        "--seconds", type=int, default=10, metavar="N", help="length of each run (default: 10)"
    )
    tp.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per mode (default: 1)")
    tp.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    tp.add_argument(
        "--prefix",
        default="zt-bench-",
        help="name prefix of the benchmark testbed's namespaces (default: %(default)s)",
    )
    xds = sub.add_parser(
        "xds",
        help="workload xDS at scale: initial sync time, client memory, change latency",
        description="Serve a synthetic mesh over workload xDS (real gRPC/TLS on loopback) to one "
        "agent-side client in its own process; report the time until the client's state holds "
        "everything, the client's memory, and how long one change takes to reach it.",
    )
    xds.add_argument(
        "--workloads", type=int, default=10_000, metavar="N", help="default: %(default)s"
    )
    xds.add_argument(
        "--services", type=int, default=1_000, metavar="N", help="default: %(default)s"
    )
    xds.add_argument(
        "--changes", type=int, default=5, metavar="N", help="single changes timed (default: 5)"
    )
    xds.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    dns = sub.add_parser(
        "dns",
        help="DNS through the agent's proxy vs the cluster DNS directly: queries/s and p99",
        description="Bring up a 1-node ambient testbed and send the same closed-loop UDP query "
        "load from a pod outside the mesh (straight to the cluster DNS) and from an enrolled pod "
        "(captured into the agent's DNS proxy), for a mesh name and a forwarded one; report "
        "queries per second, p50 and p99, and the proxy's figures as ratios of the direct ones.",
    )
    dns.add_argument(
        "--queries", type=int, default=2000, metavar="N", help="per run (default: %(default)s)"
    )
    dns.add_argument("--concurrency", type=int, default=4, metavar="N", help="default: %(default)s")
    dns.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    dns.add_argument(
        "--prefix",
        default="zt-benchdns-",
        help="name prefix of the benchmark testbed's namespaces (default: %(default)s)",
    )
    pol = sub.add_parser(
        "policy",
        help="L4 authorization at scale: control plane translation, per-connection decision time",
        description="Generate N AuthorizationPolicies that all guard one workload, time their "
        "validation and translation in the control plane's configuration store (first load and "
        "one change), then the agent's per-connection policy lookup and decision for a few "
        "connection shapes (median and p99).",
    )
    pol.add_argument(
        "--policies", type=int, default=10_000, metavar="N", help="default: %(default)s"
    )
    pol.add_argument(
        "--budget",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="time spent timing each per-connection operation, at most 2,000 runs and at least 5 "
        "(default: %(default)s)",
    )
    pol.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    cmp = sub.add_parser(
        "compare",
        help="no mesh vs sidecar mode vs ambient mode: throughput, latency, CPU, memory",
        description="For each mode (none, sidecar, ambient) bring up a 2-node testbed and "
        "measure, pod to pod across nodes: single-stream iperf3 throughput; open-loop HTTP/1.1 "
        "latency (p50/p90/p99 from the scheduled send time) at 1000 req/s over 16 connections "
        "with 1 KiB responses; new connections per second; and the CPU seconds per 1000 "
        "requests and resident memory of the data-plane processes with 2, 8 and 32 pods per "
        "node; then L7: the same HTTP load to the echo service's VIP through a waypoint "
        "(ambient) or the sidecars' HTTP engine, with each process's CPU per 1000 requests "
        "and memory. Checks that each mode's traffic took that mode's path. Prints a table and "
        "writes results.json, report.png and report.html. A full run takes about 10 minutes.",
    )
    cmp.add_argument(
        "--quick",
        action="store_true",
        help="short runs (seconds instead of tens of seconds) with 2 and 4 pods per node: "
        "checks every path and produces every figure in about a minute",
    )
    cmp.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="repeat every measurement N times on the same testbed; figures show ranges",
    )
    cmp.add_argument(
        "--pods-per-node",
        metavar="LIST",
        help="comma-separated pods-per-node counts for the cost runs (default: 2,8,32; "
        "--quick: 2,4); the smallest also carries the throughput and latency runs",
    )
    cmp.add_argument(
        "--latency-seconds",
        type=float,
        metavar="S",
        help="length of the latency run (default: 30; --quick: 2)",
    )
    cmp.add_argument(
        "--out",
        default="bench-report",
        metavar="DIR",
        help="where results.json, report.png and report.html go (default: %(default)s)",
    )
    cmp.add_argument(
        "--prefix",
        default="zt-cmp-",
        help="name prefix of the benchmark testbeds' namespaces (default: %(default)s)",
    )
    soak = sub.add_parser(
        "soak",
        help="minutes of load and connection churn across both nodes: do the agents leak?",
        description="Bring up a 2-node testbed with the mesh and run, for --minutes: open-loop "
        "HTTP at --rate req/s over 16 keep-alive connections from node1 to node2, and --churn "
        "new connections per second from node2 to node1; sample each agent's resident memory, "
        "descriptors, threads, trio tasks and open connections every --sample seconds. Passes "
        "when no request fails and, after the warm-up (the first fifth, at least 20 s), memory "
        "grows less than 5% and descriptors and tasks come back.",
    )
    soak.add_argument("--minutes", type=float, default=30.0, help="default: %(default)s")
    soak.add_argument("--rate", type=int, default=1000, help="req/s (default: %(default)s)")
    soak.add_argument(
        "--churn", type=int, default=20, help="new connections/s (default: %(default)s)"
    )
    soak.add_argument(
        "--sample", type=float, default=10.0, metavar="SECONDS", help="default: %(default)s"
    )
    soak.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    soak.add_argument(
        "--prefix",
        default="zt-soak-",
        help="name prefix of the soak testbed's namespaces (default: %(default)s)",
    )
    enr = sub.add_parser(
        "enroll",
        help="pod enrollment: CNI ADD to the first captured connection served, per pod",
        description="Bring up a 1-node ambient testbed; for each pod count, wire that many lean "
        "pods (namespace, veth, address; no app) on the node and enroll them one at a time "
        "through the CNI plugin as the CNI node pod runs it, timing each from its ADD to the "
        "first connection from inside the pod to the echo VIP that the agent served (the "
        "capture counters must show it). Reports per-pod p50/p90/max/mean, where the time "
        "goes, and the agent's memory per enrolled pod, with the targets (<= 50 ms per pod, "
        "flat with the pod count, <= 100 KB per pod) printed, not asserted.",
    )
    enr.add_argument(
        "--pods",
        metavar="LIST",
        help="comma-separated pods-per-node counts (default: 8,64,256; --quick: 4,8)",
    )
    enr.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="rounds per count (default: 1)"
    )
    enr.add_argument(
        "--quick",
        action="store_true",
        help="4 and 8 pods, no pause before the memory is read: every figure in under a minute",
    )
    enr.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    enr.add_argument(
        "--prefix",
        default="zt-benchenr-",
        help="name prefix of the benchmark testbed's namespaces (default: %(default)s)",
    )
