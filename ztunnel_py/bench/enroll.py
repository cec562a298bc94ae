"""`ztunnel-py bench enroll`: CNI ADD to capture-active, per pod, at several pods per node.

One 1-node ambient testbed (the real control plane, the node's real agent with its BPF capture,
`echo-1` serving HTTP behind the echo VIP). For each pod count N (`--pods`, default 8, 64, 256)
the benchmark brings up N lean pods on the node and enrolls them one after another:

- a lean pod is what the measurement needs and no more: its network namespace, its veth to the
  node, its address and routes, laid out as the testbed wires its own pods (`wire_pod`), but no
  app server. The testbed's pods stop at 100 per node (its /24 per node); lean pods take their
  addresses from 10.245.0.0/16, routed by the node like the others (a /32 route per pod), so a
  node can hold `MAX_PODS` of them. Each namespace is recorded in the testbed's state before it
  is created, so `testbed down` removes it even if this process dies;
- the control plane learns each pod from its Pod object (written with the pod, as the API
  server would hold it: namespace `apps`, service account `enroll`, one identity shared like a
  Deployment's replicas) and the agent is given the time to know every one of them before the
  first ADD, as the node's configuration lists the pods' service accounts for the plugin;
- per pod, timed: the CNI ADD that the CNI node pod carries out for the host shim
  (`ztunnel_py.cni.plugin.run` in this process, with the environment and stdin the runtime gives
  it; a process start of `ztunnel-py cni` is not part of it), then, from inside the pod, a TCP
  connect to the echo VIP and an HTTP request on it, retried every `RETRY_INTERVAL` until a
  response comes back: the VIP is reachable only through the agent (there is no kube-proxy),
  so the first answer is the first captured connection the agent served. The time is from the
  ADD call to that answer, split into the ADD call, ADD-to-connected and connected-to-served;
- after the round, the capture programs' counters for every pod (the agent's
  `ztunnel_py_capture_connections_total{direction="outbound"}`) must show its connection handed
  to the agent: the proof that the answer came through the capture, not around it;
- the agent's memory per enrolled pod: its RSS (and PSS) after the round minus before it (the
  pods' mesh state included), divided by N.

Then the pods are unenrolled (CNI DEL), their Pod objects removed and their namespaces deleted,
on success and failure alike. Targets are printed, not asserted: `TARGET_MS` per pod at every
count, the mean at the largest count within `FLAT_RATIO` of the smallest, and `MEMORY_GOAL_KB`.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ztunnel_py.bench.dnsload import percentile
from ztunnel_py.bench.endpoints import scrape_metrics
from ztunnel_py.bench.procstat import pss_bytes, rss_bytes
from ztunnel_py.cni.plugin import run as run_plugin
from ztunnel_py.testbed import mesh, namespaces, resources, runtime
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed, wire_pod
from ztunnel_py.testbed.topology import CLIENT, NodePlan, PodPlan

FULL_PODS = (8, 64, 256)
QUICK_PODS = (4, 8)
MAX_PODS = 500
MAX_REPEAT = 10
# Every pod of a run gets a name and an address of its own: an address handed out again would
# find the agent's pooled HBONE connections of the pod that had it, in a namespace that is gone.
MAX_RUN_PODS = 250 * 256
NAMESPACE = "apps"
SERVICE_ACCOUNT = "enroll"
DESTINATION_PORT = 80
TARGET_MS = 50.0
FLAT_RATIO = 1.5
MEMORY_GOAL_KB = 100.0
# Bounds of one pod's wait for its first served connection, and of one attempt.
SERVE_TIMEOUT = 10.0
ATTEMPT_TIMEOUT = 1.0
RETRY_INTERVAL = 0.002
# How long the agent gets to learn a round's pods from the control plane.
STATE_TIMEOUT = 60.0
# Pause before the memory is read after a round, so that freed buffers settle (--quick: none).
SETTLE_SECONDS = 1.0
BUILDERS = 8

Say = Callable[[str], None]


class EnrollBenchError(Exception):
    """A round could not be measured (a pod not served in time, a failed ADD, ...)."""


# --- sans-IO: arguments, statistics, verdicts, the table -----------------------------------------


def parse_pods(text: str) -> tuple[int, ...]:
    """`--pods` as sorted distinct counts; ValueError with the reason otherwise."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise ValueError(
            f"--pods takes comma-separated counts, e.g. 8,64,256 (got {text!r})"
        ) from None
    if not counts or counts[0] < 1 or counts[-1] > MAX_PODS:
        raise ValueError(f"--pods counts must be between 1 and {MAX_PODS} (got {text!r})")
    return tuple(counts)


def pod_counts(args: argparse.Namespace) -> tuple[int, ...]:
    if args.pods is not None:
        return parse_pods(args.pods)
    return QUICK_PODS if args.quick else FULL_PODS


@dataclass(frozen=True, slots=True)
class PodTiming:
    """One pod's enrollment, in milliseconds from the start of its CNI ADD."""

    pod: str
    add_ms: float  # the ADD call returned (the agent acknowledged the pod)
    connected_ms: float  # the first TCP connect to the VIP completed
    served_ms: float  # the first HTTP answer through the agent came back
    attempts: int
    # The agent's RSS growth (bytes) across the ADD call, and from there to the answer: the
    # pod's first connection opens a pooled HBONE connection of its own (the pool is keyed by
    # source IP), which stays until it idles out.
    add_rss: int = 0
    connection_rss: int = 0


@dataclass(slots=True)
class Round:
    """One round at `pods` pods: every pod's timing and the agent's memory around it."""

    pods: int
    timings: list[PodTiming] = field(default_factory=list)
    rss_before: int = 0
    rss_after: int = 0
    pss_before: int = 0
    pss_after: int = 0
    captured: int = 0  # pods whose connection the capture counters show handed to the agent


@dataclass(frozen=True, slots=True)
class Summary:
    """What the table shows for one pod count (all of its rounds pooled)."""

    pods: int
    rounds: int
    p50_ms: float
    p90_ms: float
    max_ms: float
    mean_ms: float
    add_ms: float
    connect_ms: float
    serve_ms: float
    rss_kb_per_pod: float
    pss_kb_per_pod: float
    add_rss_kb_per_pod: float
    connection_rss_kb_per_pod: float
    captured: int
    enrolled: int


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(rounds: Sequence[Round]) -> Summary:
    """Pool the rounds of one pod count: per-pod percentiles and means, memory per pod."""
    timings = [t for r in rounds for t in r.timings]
    served = sorted(t.served_ms for t in timings)
    enrolled = sum(r.pods for r in rounds)
    return Summary(
        pods=rounds[0].pods,
        rounds=len(rounds),
        p50_ms=percentile(served, 50),
        p90_ms=percentile(served, 90),
        max_ms=served[-1] if served else float("nan"),
        mean_ms=_mean(served),
        add_ms=_mean([t.add_ms for t in timings]),
        connect_ms=_mean([t.connected_ms - t.add_ms for t in timings]),
        serve_ms=_mean([t.served_ms - t.connected_ms for t in timings]),
        rss_kb_per_pod=sum(r.rss_after - r.rss_before for r in rounds) / enrolled / 1024,
        add_rss_kb_per_pod=sum(t.add_rss for t in timings) / enrolled / 1024,
        connection_rss_kb_per_pod=sum(t.connection_rss for t in timings) / enrolled / 1024,
        pss_kb_per_pod=sum(r.pss_after - r.pss_before for r in rounds) / enrolled / 1024,
        captured=sum(r.captured for r in rounds),
        enrolled=enrolled,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    figure: str
    met: bool


def verdicts(summaries: Sequence[Summary]) -> list[Verdict]:
    """The issue's three targets against the figures (printed, not asserted)."""
    worst = max(summaries, key=lambda s: s.mean_ms)
    smallest, largest = summaries[0], summaries[-1]
    ratio = largest.mean_ms / smallest.mean_ms
    memory = max(summaries, key=lambda s: s.rss_kb_per_pod)
    enrolled_only = max(s.add_rss_kb_per_pod for s in summaries)
    return [
        Verdict(
            f"<= {TARGET_MS:.0f} ms per pod (mean, every count)",
            f"worst mean {worst.mean_ms:.1f} ms at {worst.pods} pods",
            worst.mean_ms <= TARGET_MS,
        ),
        Verdict(
            f"flat: mean at {largest.pods} pods within {FLAT_RATIO}x of {smallest.pods} pods",
            f"{ratio:.2f}x",
            ratio <= FLAT_RATIO,
        ),
        Verdict(
            f"agent memory <= {MEMORY_GOAL_KB:.0f} KB per enrolled pod (RSS)",
            f"worst {memory.rss_kb_per_pod:.0f} KB, of which {memory.add_rss_kb_per_pod:.0f} KB "
            f"grew during the ADD and {memory.connection_rss_kb_per_pod:.0f} KB with the first "
            "connection",
            memory.rss_kb_per_pod <= MEMORY_GOAL_KB,
        ),
        Verdict(
            "the same for the enrollment alone (RSS growth across the ADD calls)",
            f"worst {enrolled_only:.0f} KB",
            enrolled_only <= MEMORY_GOAL_KB,
        ),
    ]


def render(summaries: Sequence[Summary]) -> str:
    lines = [
        "Pod enrollment: CNI ADD (as the CNI node pod runs it) to the first captured connection "
        "served by the agent, one pod at a time on one node",
        f"{'pods':>5} {'runs':>4} {'p50 ms':>7} {'p90 ms':>7} {'max ms':>7} {'mean ms':>8}"
        f" | {'ADD':>6} {'->conn':>6} {'->served':>8} | {'RSS KB/pod':>10} {'PSS KB/pod':>10}"
        f" {'ADD KB':>6} {'conn KB':>7} {'captured':>9}",
    ]
    for s in summaries:
        lines.append(
            f"{s.pods:>5} {s.rounds:>4} {s.p50_ms:>7.1f} {s.p90_ms:>7.1f} {s.max_ms:>7.1f}"
            f" {s.mean_ms:>8.1f} | {s.add_ms:>6.1f} {s.connect_ms:>6.1f} {s.serve_ms:>8.1f}"
            f" | {s.rss_kb_per_pod:>10.0f} {s.pss_kb_per_pod:>10.0f}"
            f" {s.add_rss_kb_per_pod:>6.0f} {s.connection_rss_kb_per_pod:>7.0f}"
            f" {f'{s.captured}/{s.enrolled}':>9}"
        )
    lines.append(
        "ADD: the CNI ADD call (enrollment socket, listeners, BPF maps); ->conn: until the "
        "first TCP connect to the VIP completed; ->served: until its HTTP answer came back"
    )
    lines.append(
        "RSS/PSS KB/pod: the agent's growth over the round per pod; ADD KB: the part that grew "
        "during the ADD calls; conn KB: with the first connections (each pod's own pooled "
        "HBONE connection)"
    )
    lines.append("targets (printed, not asserted):")
    for v in verdicts(summaries):
        lines.append(f"  {v.target}: {v.figure}: {'met' if v.met else 'NOT met'}")
    return "\n".join(lines)


# --- lean pods ------------------------------------------------------------------------------------


def lean_pod(prefix: str, node: NodePlan, k: int) -> PodPlan:
    """The run's pod k: address 10.245.(k // 250).(k % 250 + 2), outside every testbed /24."""
    name = f"enroll-{k}"
    return PodPlan(
        name=name,
        namespace=NAMESPACE,
        service_account=SERVICE_ACCOUNT,
        app=SERVICE_ACCOUNT,
        role=CLIENT,
        node=node.name,
        netns=f"{prefix}pod-{name}",
        ip=f"10.245.{k // 250}.{k % 250 + 2}",
        host_iface=f"venr{k}",
        services=(),
    )


def _build_pod(node: NodePlan, pod: PodPlan) -> None:
    namespaces.add(pod.netns)
    namespaces.ip("link", "set", "lo", "up", netns=pod.netns)
    wire_pod(node, pod)


def _wait_known(bed: Testbed, node: NodePlan, pods: Sequence[PodPlan]) -> None:
    wanted = {p.uid for p in pods}
    deadline = time.monotonic() + STATE_TIMEOUT
    while not wanted <= set(mesh.workload_protocols(node.netns) or {}):
        if time.monotonic() > deadline:
            raise EnrollBenchError(
                f"the agent of {node.name} did not learn the {len(pods)} pods from the control "
                f"plane within {STATE_TIMEOUT:.0f} s (see {mesh.agent_log(bed.state, node.name)})"
            )
        time.sleep(0.1)


def _with_pods(config_path: Path, pods: Sequence[PodPlan]) -> str:
    """Add `pods` to the node's CNI configuration (its static service-account table), as the
    API server would answer for them; the text before, to restore."""
    before = config_path.read_text()
    config = json.loads(before)
    config["pods"].update(
        {f"{p.namespace}/{p.name}": {"serviceAccount": p.service_account} for p in pods}
    )
    resources.write_atomically(config_path, json.dumps(config, indent=2) + "\n")
    return before


# --- one pod, one round ---------------------------------------------------------------------------


def _http_answer(sock: socket.socket) -> bool:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        head += chunk
    return head.startswith(b"HTTP/1.1 200")


def enroll_and_serve(
    pod: PodPlan,
    env: dict[str, str],
    stdin: bytes,
    vip: str,
    rss: Callable[[], int],
    timeout: float = SERVE_TIMEOUT,
) -> PodTiming:
    """Run in the pod's namespace: CNI ADD, then connect to `vip` until the agent serves;
    `rss()` (the agent's, read in about 50 us) before, after the ADD and at the end."""
    rss_start = rss()
    start = time.perf_counter()
    out, status = run_plugin(env, stdin)
    added = time.perf_counter()
    rss_added = rss()
    if status != 0:
        raise EnrollBenchError(f"CNI ADD of pod {pod.name} failed: {out}")
    deadline = start + timeout
    attempts = 0
    last = "no attempt"
    while True:
        attempts += 1
        try:
            with socket.create_connection((vip, DESTINATION_PORT), timeout=ATTEMPT_TIMEOUT) as s:
                connected = time.perf_counter()
                if _http_answer(s):
                    served = time.perf_counter()
                    break
                last = "the connection closed without an HTTP 200"
        except OSError as e:
            last = str(e)
        if time.perf_counter() > deadline:
            raise EnrollBenchError(
                f"pod {pod.name}: no connection to {vip}:{DESTINATION_PORT} served within "
                f"{timeout:.0f} s of its CNI ADD ({attempts} attempts; last: {last})"
            )
        time.sleep(RETRY_INTERVAL)
    ms = 1000.0
    return PodTiming(
        pod.name,
        (added - start) * ms,
        (connected - start) * ms,
        (served - start) * ms,
        attempts,
        rss_added - rss_start,
        rss() - rss_added,
    )


def captured_outbound(metrics_text: str, pods: Sequence[PodPlan]) -> int:
    """How many of `pods` the capture counters show with an outbound connection handed to the
    agent."""
    seen: set[tuple[str, str]] = set()
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "ztunnel_py_capture_connections":
            continue
        for sample in family.samples:
            if (
                sample.name.endswith("_total")
                and sample.labels.get("direction") == "outbound"
                and sample.value >= 1
            ):
                seen.add((sample.labels["namespace"], sample.labels["pod"]))
    return sum(1 for p in pods if (p.namespace, p.name) in seen)


def _unenroll(bed: Testbed, pods: Sequence[PodPlan], say: Say) -> None:
    for pod in pods:
        if not namespaces.exists(pod.netns):
            continue
        env, stdin = runtime.request(bed.topology, bed.state, "DEL", pod)
        out, status = run_plugin(env, stdin)
        if status != 0:
            say(f"warning: CNI DEL of {pod.name} failed: {out}")


def _remove_pods(bed: Testbed, node: NodePlan, pods: Sequence[PodPlan], say: Say) -> None:
    """Delete each pod's veth from the node's side, then its namespace. The kernel frees a
    namespace (and the veth in it) in the background, some time after its last holder let go:
    without the explicit delete, the next round's veth of the same name could still be taken."""
    listing = namespaces.ip("-br", "link", netns=node.netns).splitlines()
    links = {line.split()[0].split("@")[0] for line in listing if line.strip()}
    for pod in pods:
        try:
            if pod.host_iface in links:
                namespaces.ip("link", "del", pod.host_iface, netns=node.netns)
            namespaces.delete(pod.netns)
        except TestbedError as e:
            say(f"warning: {e}")
            continue
        bed.state.remove_namespace(pod.netns)


def run_round(bed: Testbed, first: int, count: int, vip: str, settle: float, say: Say) -> Round:
    """Bring up `count` lean pods (the run's `first` onwards), enroll and time each, then take
    everything down again."""
    node = bed.topology.nodes[0]
    agent = bed.state.process(mesh.agent_name(node.name))
    if agent is None or agent.pid is None:
        raise EnrollBenchError(f"testbed {bed.prefix} has no agent on {node.name}")
    pods = [lean_pod(bed.prefix, node, first + k) for k in range(count)]
    result = Round(count)
    config_path = runtime.config_path(bed.state, node.name)
    config_before: str | None = None
    refs = [resources.ObjectRef("Pod", p.namespace, p.name) for p in pods]
    try:
        for pod in pods:
            bed.state.add_namespace(pod.netns)
        bed.state.save()
        started = time.monotonic()
        with ThreadPoolExecutor(BUILDERS) as pool:
            list(pool.map(functools.partial(_build_pod, node), pods))
        say(f"  {count} lean pods wired in {time.monotonic() - started:.1f} s")
        result.rss_before, result.pss_before = rss_bytes(agent.pid), pss_bytes(agent.pid)
        config_before = _with_pods(config_path, pods)
        resources.write(bed.state.config_dir, [resources.pod_resource(p, ()) for p in pods])
        _wait_known(bed, node, pods)
        requests = [runtime.request(bed.topology, bed.state, "ADD", p) for p in pods]
        for pod, (env, stdin) in zip(pods, requests, strict=True):
            rss = functools.partial(rss_bytes, agent.pid)
            measure = functools.partial(enroll_and_serve, pod, env, stdin, vip, rss)
            result.timings.append(namespaces.run_in(pod.netns, measure))
        resources.set_redirection(bed.state.config_dir, pods, True)
        time.sleep(settle)
        result.rss_after, result.pss_after = rss_bytes(agent.pid), pss_bytes(agent.pid)
        result.captured = captured_outbound(scrape_metrics(node.netns), pods)
        say(
            f"  {count} pods enrolled and served: mean "
            f"{_mean([t.served_ms for t in result.timings]):.1f} ms per pod; "
            f"{result.captured}/{count} seen by the capture counters"
        )
    finally:
        _unenroll(bed, pods, say)
        resources.remove(bed.state.config_dir, refs)
        if config_before is not None:
            resources.write_atomically(config_path, config_before)
        _remove_pods(bed, node, pods, say)
    return result


def run_enroll(
    bed: Testbed, counts: Sequence[int], repeat: int, settle: float, say: Say
) -> list[list[Round]]:
    """`repeat` rounds at each pod count, in order."""
    vip = bed.topology.service("echo").vip
    rounds: list[list[Round]] = []
    first = 0
    for count in counts:
        rounds.append([])
        for i in range(repeat):
            say(f"{count} pods per node, run {i + 1}/{repeat}")
            rounds[-1].append(run_round(bed, first, count, vip, settle, say))
            first += count
    return rounds


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        counts = pod_counts(args)
    except ValueError as e:
        say(f"ztunnel-py bench enroll: {e}")
        return 2
    if not 1 <= args.repeat <= MAX_REPEAT:
        say(f"ztunnel-py bench enroll: --repeat must be between 1 and {MAX_REPEAT}")
        return 2
    if sum(counts) * args.repeat > MAX_RUN_PODS:
        say(f"ztunnel-py bench enroll: at most {MAX_RUN_PODS} pods per run (--pods x --repeat)")
        return 2
    settle = 0.0 if args.quick else SETTLE_SECONDS
    say(f"bringing up a 1-node ambient testbed ({args.prefix}*)")
    try:
        bed = Testbed.up(prefix=args.prefix, nodes=1, pods_per_node=2, with_prometheus=False)
    except TestbedError as e:
        say(f"ztunnel-py bench enroll: {e}")
        return 1
    try:
        rounds = run_enroll(bed, counts, args.repeat, settle, say)
    except (EnrollBenchError, TestbedError, OSError) as e:
        say(f"ztunnel-py bench enroll: {e}")
        return 1
    finally:
        bed.down()
    summaries = [summarize(same_count) for same_count in rounds]
    if args.json:
        document = {
            "summaries": [asdict(s) for s in summaries],
            "targets": [asdict(v) for v in verdicts(summaries)],
            "rounds": [asdict(r) for same_count in rounds for r in same_count],
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(summaries))
    return 0
