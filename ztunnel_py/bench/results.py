"""The figures `ztunnel-py bench compare` measures, as plain data: what the report renders.

Every measured figure is a `Figure`: one value per repeat (`--repeat N`), so the report can show
the median and the range. A `ModeResult` holds everything measured for one data-plane mode
("none", "sidecar", "ambient"), its L7 section (`L7Result`: HTTP through the HTTP filter engine,
in the waypoint or the sidecars) included; `CompareResult` holds the three modes of one run,
the floor (a `ModeResult` too, L4 only), the run's settings and the machine it ran on.
`to_dict`/`from_dict` give the JSON file's shape.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

NONE = "none"
SIDECAR = "sidecar"
AMBIENT = "ambient"
MODES = (NONE, SIDECAR, AMBIENT)
# Not a mode of the mesh: a plaintext splice relay pair in the agents' place on the no-mesh
# testbed (`floor.py`), what any user-space two-hop proxy costs on this machine.
FLOOR = "floor"
PERCENTILES = ("p50", "p90", "p99")


@dataclass(slots=True)
class Figure:
    """One measured quantity, one value per repeat."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else 0.0

    @property
    def low(self) -> float:
        return min(self.values) if self.values else 0.0

    @property
    def high(self) -> float:
        return max(self.values) if self.values else 0.0


@dataclass(slots=True)
class Latency:
    """Open-loop HTTP latency (ms, from each request's scheduled send time)."""

    p50: Figure = field(default_factory=Figure)
    p90: Figure = field(default_factory=Figure)
    p99: Figure = field(default_factory=Figure)
    # what the load generator achieved, per repeat
    achieved_rps: Figure = field(default_factory=Figure)
    errors: Figure = field(default_factory=Figure)

    def percentile(self, name: str) -> Figure:
        figure: Figure = getattr(self, name)
        return figure

    def record(self, report: Mapping[str, Any]) -> None:
        """Add one repeat: the load generator's `latency` report (its JSON object)."""
        for name in PERCENTILES:
            self.percentile(name).values.append(round(float(report[f"{name}_ms"]), 3))
        self.achieved_rps.values.append(round(float(report["achieved_rps"]), 1))
        self.errors.values.append(float(report["errors"]))


@dataclass(slots=True)
class Cost:
    """What the mesh's processes cost with a given number of pods per node."""

    pods_per_node: int
    # user+system CPU seconds of every data-plane process (agents or sidecars) per 1000
    # requests, under the same open-loop load as the latency run
    cpu_s_per_1000_requests: Figure = field(default_factory=Figure)
    # the system (kernel) part of it: what the syscalls and the TCP stack cost, as against
    # the user-space part (Python)
    system_s_per_1000_requests: Figure = field(default_factory=Figure)
    # summed resident memory of every data-plane process, MiB, after the load
    rss_mib: Figure = field(default_factory=Figure)
    # the same with shared pages (the interpreter, libraries) divided among the processes
    # sharing them: what the processes together take from the machine
    pss_mib: Figure = field(default_factory=Figure)
    # p99 latency (ms) of the cost run's load: how the pods' proxies affect latency
    p99_ms: Figure = field(default_factory=Figure)
    # the control plane, reported apart (it is the same program in both mesh modes)
    controlplane_rss_mib: Figure = field(default_factory=Figure)
    # how many data-plane processes the sums cover
    processes: int = 0


@dataclass(slots=True)
class PathCheck:
    """Evidence that the mode's traffic took the mode's path (or, for "none", no proxy)."""

    ok: bool = False
    evidence: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# Roles of the processes that handle the L7 run's requests.
WAYPOINT = "waypoint"
AGENT = "agent"
SIDECAR_PROXY = "sidecar"


@dataclass(slots=True)
class ProcessCost:
    """One process that handled the L7 run's requests, and what it cost."""

    name: str  # "waypoint apps/waypoint", "agent node1", "sidecar web-1"
    role: str  # WAYPOINT, AGENT or SIDECAR_PROXY
    # user+system CPU seconds per 1000 requests sent (warm-up included), and its system part
    cpu_s_per_1000_requests: Figure = field(default_factory=Figure)
    system_s_per_1000_requests: Figure = field(default_factory=Figure)
    # its resident memory after the run, MiB, and its PSS (shared pages divided among sharers)
    rss_mib: Figure = field(default_factory=Figure)
    pss_mib: Figure = field(default_factory=Figure)


@dataclass(slots=True)
class L7Result:
    """HTTP/1.1 to the echo service through the HTTP filter engine: ambient mode with a
    waypoint, sidecar mode with the engine on the service's HTTP port, or no mesh at all."""

    # where the load generator's connections went (the VIP, or the pods without a mesh)
    targets: list[str] = field(default_factory=list)
    latency_ms: Latency = field(default_factory=Latency)
    # every process on the path, and their CPU seconds per 1000 requests together
    processes: list[ProcessCost] = field(default_factory=list)
    cpu_s_per_1000_requests: Figure = field(default_factory=Figure)
    path: PathCheck = field(default_factory=PathCheck)

    def process(self, name: str) -> ProcessCost | None:
        return next((p for p in self.processes if p.name == name), None)

    def role(self, role: str) -> list[ProcessCost]:
        return [p for p in self.processes if p.role == role]


@dataclass(slots=True)
class ModeResult:
    mode: str
    throughput_gbps: Figure = field(default_factory=Figure)
    latency_ms: Latency = field(default_factory=Latency)
    connections_per_s: Figure = field(default_factory=Figure)
    costs: list[Cost] = field(default_factory=list)
    path: PathCheck = field(default_factory=PathCheck)
    l7: L7Result = field(default_factory=L7Result)

    def cost(self, pods_per_node: int) -> Cost | None:
        return next((c for c in self.costs if c.pods_per_node == pods_per_node), None)


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how hard each measurement runs."""

    throughput_seconds: int
    latency_seconds: float
    warmup_seconds: float
    cost_seconds: float
    connection_rate_seconds: float
    # counted seconds of the L7 run (after the same warm-up as the latency run)
    l7_seconds: float
    rate: int
    connections: int
    response_bytes: int
    pods_per_node: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Settings:
    """What a run was asked for: the plan, how often each measurement ran, `--quick` or not."""

    plan: Plan
    repeat: int
    quick: bool


@dataclass(frozen=True, slots=True)
class Published:
    """A figure Istio publishes, with its conditions; shown beside ours, never mixed in."""

    what: str
    value: str
    conditions: str
    source: str


@dataclass(slots=True)
class CompareResult:
    settings: Settings
    machine: dict[str, str]
    modes: dict[str, ModeResult]
    published: list[Published]
    started: str
    seconds: float = 0.0
    # the floor's L4 figures (costs at the smallest pods-per-node count only; no L7)
    floor: ModeResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareResult:
        def figure(d: dict[str, Any]) -> Figure:
            return Figure([float(v) for v in d["values"]])

        def load(cls: type[_T], d: dict[str, Any]) -> _T:
            """`cls` from its dict, every {"values": [...]} in it a Figure."""
            return cls(
                **{
                    k: figure(v) if isinstance(v, dict) and "values" in v else v
                    for k, v in d.items()
                }
            )

        def l7(d: dict[str, Any]) -> L7Result:
            return L7Result(
                targets=[str(t) for t in d["targets"]],
                latency_ms=load(Latency, d["latency_ms"]),
                processes=[load(ProcessCost, p) for p in d["processes"]],
                cpu_s_per_1000_requests=figure(d["cpu_s_per_1000_requests"]),
                path=PathCheck(**d["path"]),
            )

        def mode(m: dict[str, Any]) -> ModeResult:
            return ModeResult(
                mode=m["mode"],
                throughput_gbps=figure(m["throughput_gbps"]),
                latency_ms=load(Latency, m["latency_ms"]),
                connections_per_s=figure(m["connections_per_s"]),
                costs=[load(Cost, c) for c in m["costs"]],
                path=PathCheck(**m["path"]),
                l7=l7(m["l7"]),
            )

        settings = data["settings"]
        pods = settings["plan"]["pods_per_node"]
        modes = {name: mode(m) for name, m in data["modes"].items()}
        floor = data.get("floor")
        return cls(
            settings=Settings(
                plan=Plan(**{**settings["plan"], "pods_per_node": tuple(pods)}),
                repeat=int(settings["repeat"]),
                quick=bool(settings["quick"]),
            ),
            machine=dict(data["machine"]),
            modes=modes,
            published=[Published(**p) for p in data["published"]],
            started=str(data["started"]),
            seconds=float(data["seconds"]),
            floor=mode(floor) if floor else None,
        )


# Istio's published figures (docs/performance.md), printed beside ours with their
# conditions: they come from other hardware and another implementation.
ISTIO_PUBLISHED = [
    Published(
        "ztunnel CPU and memory",
        "0.06 vCPU, 12 MB per ztunnel",
        "Istio 1.24, 1000 HTTP rps, 1 KB payload",
        "https://istio.io/latest/docs/ops/deployment/performance-and-scalability/",
    ),
    Published(
        "Envoy sidecar CPU and memory",
        "0.20 vCPU, 60 MB per sidecar",
        "Istio 1.24, 1000 HTTP rps, 1 KB payload, 2 worker threads",
        "https://istio.io/latest/docs/ops/deployment/performance-and-scalability/",
    ),
    Published(
        "Envoy waypoint CPU and memory",
        "0.25 vCPU, 60 MB per waypoint",
        "Istio 1.24, 1000 HTTP rps, 1 KB payload, 2 worker threads",
        "https://istio.io/latest/docs/ops/deployment/performance-and-scalability/",
    ),
    Published(
        "ambient L4 added latency",
        "two ztunnels add ~0.17 ms p90, ~0.20 ms p99",
        "Istio 1.22, HTTP/1.1, 1 kB, 1000 rps, 1-64 connections, mTLS, bare-metal CNCF lab",
        "https://istio.io/v1.22/docs/ops/deployment/performance-and-scalability/",
    ),
    Published(
        "sidecar added latency",
        "two sidecars add ~0.228 ms p90, ~0.298 ms p99",
        "Istio 1.20, HTTP/1.1, 1 kB, 1000 rps, 2-64 connections, mTLS, bare-metal CNCF lab",
        "https://istio.io/v1.20/docs/ops/deployment/performance-and-scalability/",
    ),
    Published(
        "ztunnel single-connection throughput",
        "9.27 Gbit/s cross node (2 workers)",
        "ztunnel #1174 (June 2024), HBONE, 1 connection, Kubernetes cross node",
        "https://github.com/istio/ztunnel/issues/1174",
    ),
]
