"""The L7 section of `ztunnel-py bench compare`: HTTP/1.1 through the HTTP filter engine.

On the smallest testbed of each mode, after its L4 measurements (so they are not disturbed), the
client pod `web-1` sends the plan's open-loop load (the latency run's rate, connections, 1 KiB
response bodies and warm-up; `Plan.l7_seconds` counted) to the `echo` service:

- ambient: Istio's waypoint Gateway is applied and namespace `apps` labelled
  `istio.io/use-waypoint: waypoint`, as a user does it, so requests to the echo VIP go web-1 ->
  node agent -> waypoint (the filter engine: routing, telemetry, access log) -> node agent -> an
  echo pod. The run starts once an echo pod sees the waypoint as its client;
- sidecar: the client's sidecar serves the VIP's `http` port with the same engine and sends each
  request over HBONE to the chosen echo pod's sidecar;
- none: without a mesh there is no VIP (no kube-proxy), so the connections are spread over the
  echo pods' IPs, as evenly as the mesh's per-request balancing spreads the VIP's requests.

Each run gives p50/p90/p99 from the due time, the CPU seconds per 1000 requests sent (warm-up
included) of every process on the path (the waypoint and the node agents; the client's and the
echo pods' sidecars), and their RSS and PSS after the run. The path check proves the engine
handled the requests: the waypoint's `istio_requests_total{reporter="waypoint"}` (the client
sidecar's `{reporter="source"}`) for the echo service grew by at least the responses the load
generator read and at most the requests it sent; with no mesh, no mesh process runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from ztunnel_py.bench import procstat
from ztunnel_py.bench.endpoints import CLIENT_POD, Endpoints, counter_total, latency_argv
from ztunnel_py.bench.results import (
    AGENT,
    AMBIENT,
    NONE,
    SIDECAR,
    SIDECAR_PROXY,
    WAYPOINT,
    L7Result,
    PathCheck,
    Plan,
    ProcessCost,
)
from ztunnel_py.ctl import waypoint as waypoint_cli
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.status import ServiceStatus, TestbedStatus, WaypointStatus
from ztunnel_py.testbed.testbed import Testbed

Say = Callable[[str], None]

SERVICE = "echo"
SERVICE_HOST = "echo.apps.svc.cluster.local"
REQUESTS = "istio_requests"
# How long the waypoint may take to carry the echo VIP's traffic once applied (the control plane
# pushes the binding to the agents), and the engine's counters to catch up after a run.
READY_WITHIN = 15.0
COUNTED_WITHIN = 5.0


def _service(status: TestbedStatus) -> ServiceStatus:
    return next(s for s in status.services if s.name == SERVICE)


def targets(status: TestbedStatus) -> list[SocketAddr]:
    """The echo VIP's http port, or without a mesh the echo pods themselves."""
    service = _service(status)
    if status.mode == NONE:
        return [SocketAddr(status.pod(p).ip, status.pod(p).http_port) for p in service.endpoints]
    port = next(p for p in service.ports if p.name == "http")
    return [SocketAddr(service.vip, port.port)]


def processes(status: TestbedStatus) -> list[tuple[ProcessCost, int]]:
    """Every process on the L7 path with its pid: the waypoint and the node agents (ambient),
    the client's and the echo pods' sidecars (sidecar mode), none without a mesh."""
    found: list[tuple[ProcessCost, int]] = []
    if status.mode == AMBIENT:
        for wp in status.waypoints:
            if wp.process.pid:
                found.append((ProcessCost(WAYPOINT, WAYPOINT), wp.process.pid))
        for node in status.nodes:
            if node.agent.pid:
                found.append((ProcessCost(f"agent {node.name}", AGENT), node.agent.pid))
    elif status.mode == SIDECAR:
        for name in (CLIENT_POD, *_service(status).endpoints):
            sidecar = status.pod(name).sidecar
            if sidecar is not None and sidecar.pid:
                found.append((ProcessCost(f"sidecar {name}", SIDECAR_PROXY), sidecar.pid))
    return found


def _client_seen_by_echo(bed: Testbed, target: SocketAddr) -> str:
    """The address an echo pod saw as its client for one request from the client pod ("" when
    the request failed)."""
    done = bed.exec(CLIENT_POD, ["curl", "-sS", "--max-time", "5", f"http://{target}/"])
    if done.returncode != 0:
        return ""
    try:
        return str(json.loads(done.stdout).get("client", ""))
    except ValueError:
        return ""


def use_waypoint(bed: Testbed, target: SocketAddr, say: Say) -> tuple[WaypointStatus, str]:
    """Apply the waypoint and enroll namespace apps; once requests to `target` reach the echo
    pods from the waypoint, the waypoint and that evidence."""
    waypoint_cli.apply(bed, "waypoint", "apps", enroll_namespace=True, progress=say)
    (waypoint,) = bed.status().waypoints
    deadline = time.monotonic() + READY_WITHIN
    while True:
        seen = _client_seen_by_echo(bed, target)
        if seen.rsplit(":", 1)[0] == waypoint.ip:
            return waypoint, (
                f"before the run, an echo pod saw the waypoint ({waypoint.ip}) as the client of "
                f"a request to {target}"
            )
        if time.monotonic() > deadline:
            raise TestbedError(
                f"requests to {target} did not go through the waypoint ({waypoint.ip}) within "
                f"{READY_WITHIN:g} s of applying it; the echo pod saw {seen or 'no request'}"
            )
        time.sleep(0.2)


def _engine(status: TestbedStatus) -> tuple[str, str, str] | None:
    """(what, netns, reporter) of the filter engine that must count every request."""
    if status.mode == AMBIENT:
        (wp,) = status.waypoints
        return f"waypoint {wp.pod}", wp.netns, "waypoint"
    if status.mode == SIDECAR:
        return f"sidecar of {CLIENT_POD}", status.pod(CLIENT_POD).netns, "source"
    return None


def _counted(engine: tuple[str, str, str]) -> float:
    _, netns, reporter = engine
    return counter_total(netns, REQUESTS, reporter=reporter, destination_service=SERVICE_HOST)


def _check_engine(
    engine: tuple[str, str, str], before: float, sent: int, answered: int, check: PathCheck
) -> None:
    what, _, reporter = engine
    deadline = time.monotonic() + COUNTED_WITHIN
    counted = _counted(engine) - before
    # The engine counts a request when its response ends: the last few may land just after.
    while counted < answered and time.monotonic() < deadline:
        time.sleep(0.2)
        counted = _counted(engine) - before
    line = (
        f"{what} counted {counted:.0f} requests to {SERVICE_HOST} (istio_requests_total, "
        f"reporter={reporter}); the load generator sent {sent} and read {answered} responses"
    )
    (check.evidence if answered <= counted <= sent else check.problems).append(line)


def _check_no_mesh(ep: Endpoints, status: TestbedStatus, check: PathCheck) -> None:
    if ep.proxies or ep.controlplane_pid or status.waypoints:
        check.problems.append("mesh processes are running")
    else:
        check.evidence.append("no control plane, agent, sidecar or waypoint process runs")
    pods = ", ".join(_service(status).endpoints)
    check.evidence.append(f"the connections went straight to the echo pods ({pods}) by pod IP")


def measure(plan: Plan, ep: Endpoints, repeat: int, say: Say) -> L7Result:
    """The L7 section on the testbed `ep` describes (its mode's path; see the module docstring)."""
    mode = ep.mode
    status = ep.bed.status()
    where = targets(status)
    check = PathCheck()
    if mode == AMBIENT:
        say(f"[{mode}] L7: applying the waypoint Gateway, namespace apps uses it")
        _, evidence = use_waypoint(ep.bed, where[0], say)
        check.evidence.append(evidence)
        status = ep.bed.status()
    on_path = processes(status)
    engine = _engine(status)
    result = L7Result(targets=[str(t) for t in where], processes=[p for p, _ in on_path])
    for r in range(repeat):
        say(
            f"[{mode}] L7: HTTP/1.1 {plan.rate} req/s to {', '.join(result.targets)} for "
            f"{plan.l7_seconds:g} s (+{plan.warmup_seconds:g} s warm-up), run {r + 1}/{repeat}"
        )
        cpu_before = [procstat.cpu_times(pid) for _, pid in on_path]
        counted_before = _counted(engine) if engine and r == 0 else 0.0
        report = ep.loadgen(
            *latency_argv(plan, where, plan.l7_seconds, plan.warmup_seconds),
            timeout=plan.l7_seconds + plan.warmup_seconds + 60,
        )
        result.latency_ms.record(report)
        sent, answered = int(report["sent"]), int(report["answered"])
        total = 0.0
        scale = 1000 / sent if sent else 0.0
        for (cost, pid), (user, system) in zip(on_path, cpu_before, strict=True):
            user_after, system_after = procstat.cpu_times(pid)
            per_1000 = (user_after - user + system_after - system) * scale
            total += per_1000
            cost.cpu_s_per_1000_requests.values.append(round(per_1000, 4))
            cost.system_s_per_1000_requests.values.append(round((system_after - system) * scale, 4))
            cost.rss_mib.values.append(round(procstat.rss_bytes(pid) / 2**20, 1))
            cost.pss_mib.values.append(round(procstat.pss_bytes(pid) / 2**20, 1))
        if on_path:
            result.cpu_s_per_1000_requests.values.append(round(total, 4))
        if r == 0:
            if engine is None:
                _check_no_mesh(ep, status, check)
            else:
                _check_engine(engine, counted_before, sent, answered, check)
            check.ok = not check.problems
            result.path = check
            state = "ok" if check.ok else "FAILED: " + "; ".join(check.problems)
            say(f"[{mode}] L7 path check {state}")
    return result
