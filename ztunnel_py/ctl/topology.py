"""The service graph the topology page draws, built from the mesh's own metrics (no I/O here).

`QUERIES` are the PromQL instant queries the page needs (rates over `WINDOW`); `build_graph`
turns their samples into nodes and edges, as Kiali's workload graph does:

- **L4** from the node agents (`istio_tcp_*`): connections per second, bytes per second and
  whether the connection was mutual TLS, per source and destination workload. The destination's
  agent reports what arrived (`reporter="destination"`); a destination no agent captures (a
  waypoint, a pod outside the mesh) is only seen by the source's agent, so those edges come
  from `reporter="source"`. Connections a policy refused (`istio_tcp_connections_failed_total`
  with `response_flags="DENY"`) make a `denied` rate on their edge.
- **L7** from the waypoints (`istio_requests_total` and the duration histogram,
  `reporter="waypoint"`): the request path client -> waypoint -> service -> workload, each edge
  with requests per second, error rate (4xx and 5xx, Kiali's definition) and p99 duration. The
  waypoint is named by the `pod` (and `namespace`) label Prometheus's Kubernetes discovery (and
  the testbed) gives its target, else by `instance`. Where an L7 hop matches an L4 pair (client
  -> waypoint, waypoint -> workload) the L4 figures join the L7 edge.

Node ids: `wl:<namespace>/<workload>` (kind `workload`, or `waypoint` when it reported L7) and
`svc:<hostname>` (kind `service`). Unknown peers keep Istio's `unknown`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

WINDOW = "1m"
_PAIR = (
    "source_workload, source_workload_namespace, destination_workload, "
    "destination_workload_namespace"
)
_L4 = f"reporter, {_PAIR}, destination_service, connection_security_policy"
_L7 = f"pod, namespace, instance, {_PAIR}, destination_service"

QUERIES: Mapping[str, str] = {
    "tcp_opened": f"sum by ({_L4}) (rate(istio_tcp_connections_opened_total[{WINDOW}]))",
    "tcp_bytes": (
        f"sum by ({_L4}) (rate(istio_tcp_sent_bytes_total[{WINDOW}]))"
        f" + sum by ({_L4}) (rate(istio_tcp_received_bytes_total[{WINDOW}]))"
    ),
    "tcp_denied": (
        f'sum by ({_L4}) (rate(istio_tcp_connections_failed_total{{response_flags="DENY"}}'
        f"[{WINDOW}]))"
    ),
    "http_requests": (
        f"sum by ({_L7}, response_code, connection_security_policy) "
        f'(rate(istio_requests_total{{reporter="waypoint"}}[{WINDOW}]))'
    ),
    "http_p99": (
        f"histogram_quantile(0.99, sum by (le, {_L7}) "
        f'(rate(istio_request_duration_milliseconds_bucket{{reporter="waypoint"}}[{WINDOW}])))'
    ),
}

UNKNOWN = "unknown"


class Sample(Protocol):
    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def value(self) -> float: ...


@dataclass(slots=True)
class Edge:
    source: str
    target: str
    protocol: str = "tcp"  # http when a waypoint reported requests on it
    cps: float = 0.0  # new connections per second
    bytes_per_s: float = 0.0
    denied_cps: float = 0.0
    mtls: bool = False
    rps: float = 0.0
    errors_rps: float = 0.0
    p99_ms: float | None = None
    waypoint: str | None = None  # the waypoint node this hop belongs to

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "protocol": self.protocol,
            "cps": round(self.cps, 3),
            "bytesPerSecond": round(self.bytes_per_s, 1),
            "deniedCps": round(self.denied_cps, 3),
            "mtls": self.mtls,
            "rps": round(self.rps, 3),
            "errorRate": round(self.errors_rps / self.rps, 4) if self.rps else 0.0,
            "p99Ms": None if self.p99_ms is None else round(self.p99_ms, 2),
            "waypoint": self.waypoint,
        }


@dataclass(slots=True)
class Graph:
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)

    def node(self, node_id: str, kind: str, name: str, namespace: str) -> str:
        known = self.nodes.get(node_id)
        if known is None or (known["kind"] == "workload" and kind == "waypoint"):
            self.nodes[node_id] = {
                "id": node_id,
                "kind": kind,
                "name": name,
                "namespace": namespace,
            }
        return node_id

    def edge(self, source: str, target: str) -> Edge:
        key = (source, target)
        found = self.edges.get(key)
        if found is None:
            found = self.edges[key] = Edge(source, target)
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": sorted(self.nodes.values(), key=lambda n: n["id"]),
            "edges": [e.to_json() for _, e in sorted(self.edges.items())],
        }


def workload_id(namespace: str, name: str) -> str:
    return f"wl:{namespace}/{name}"


def _workload(graph: Graph, labels: Mapping[str, str], side: str, kind: str = "workload") -> str:
    name = labels.get(f"{side}_workload") or UNKNOWN
    namespace = labels.get(f"{side}_workload_namespace") or UNKNOWN
    return graph.node(workload_id(namespace, name), kind, name, namespace)


def _service(graph: Graph, labels: Mapping[str, str]) -> str | None:
    host = labels.get("destination_service") or ""
    if not host or host == UNKNOWN:
        return None
    parts = host.split(".")
    namespace = parts[1] if len(parts) > 2 else UNKNOWN
    return graph.node(f"svc:{host}", "service", parts[0], namespace)


def _waypoint(graph: Graph, labels: Mapping[str, str]) -> str:
    name = labels.get("pod") or labels.get("instance") or "waypoint"
    namespace = labels.get("namespace") or UNKNOWN
    return graph.node(workload_id(namespace, name), "waypoint", name, namespace)


def _live(samples: Iterable[Sample]) -> Iterable[Sample]:
    """Samples with traffic in the window: a pair that went quiet has a rate of 0 (and a
    quantile of nothing is NaN) until its series ages out."""
    return (s for s in samples if math.isfinite(s.value) and s.value > 0)


def build_graph(results: Mapping[str, Sequence[Sample]]) -> dict[str, Any]:
    """The page's JSON from the samples of each of `QUERIES` (a missing query counts as none)."""
    graph = Graph()
    l7_pairs = _add_http(graph, results)
    _add_tcp(graph, results, l7_pairs)
    return graph.to_json()


def _add_http(graph: Graph, results: Mapping[str, Sequence[Sample]]) -> dict[tuple[str, str], Edge]:
    """The L7 hops; returns the L4 pairs (client -> waypoint, waypoint -> workload) they cover."""
    covered: dict[tuple[str, str], Edge] = {}
    for s in _live(results.get("http_requests", ())):
        waypoint = _waypoint(graph, s.labels)
        client = _workload(graph, s.labels, "source")
        server = _workload(graph, s.labels, "destination")
        service = _service(graph, s.labels)
        hops = [(client, waypoint)]
        hops += [(waypoint, service), (service, server)] if service else [(waypoint, server)]
        failed = s.labels.get("response_code", "")[:1] in ("4", "5")
        for source, target in hops:
            edge = graph.edge(source, target)
            edge.protocol, edge.waypoint = "http", waypoint
            edge.rps += s.value
            edge.errors_rps += s.value if failed else 0.0
            edge.mtls |= s.labels.get("connection_security_policy") == "mutual_tls"
        covered[(client, waypoint)] = graph.edge(client, waypoint)
        covered[(waypoint, server)] = graph.edge(hops[-1][0], server)
    # p99 per client and workload: each hop shows the worst of the pairs it carries.
    for s in _live(results.get("http_p99", ())):
        waypoint = _waypoint(graph, s.labels)
        client = _workload(graph, s.labels, "source")
        server = _workload(graph, s.labels, "destination")
        service = _service(graph, s.labels)
        hops = [(client, waypoint), (service or waypoint, server)]
        for key in hops + ([(waypoint, service)] if service else []):
            hop = graph.edges.get(key)
            if hop is not None:
                hop.p99_ms = max(hop.p99_ms or 0.0, s.value)
    return covered


def _add_tcp(
    graph: Graph, results: Mapping[str, Sequence[Sample]], covered: Mapping[tuple[str, str], Edge]
) -> None:
    # A refused connection never reached the service: it is drawn straight to the workload, and
    # so are the opened and bytes figures of that pair (the source's agent counts it opened).
    refused = {_pair(s.labels) for s in _live(results.get("tcp_denied", ()))}
    for query, apply in (
        ("tcp_opened", _add_cps),
        ("tcp_bytes", _add_bytes),
        ("tcp_denied", _add_denied),
    ):
        samples = list(_live(results.get(query, ())))
        # The destination's report wins for a pair both agents saw (it knows the peer identity).
        at_destination = {
            _pair(s.labels) for s in samples if s.labels.get("reporter") == "destination"
        }
        for s in samples:
            reporter = s.labels.get("reporter")
            if reporter not in ("source", "destination"):
                continue
            if reporter == "source" and _pair(s.labels) in at_destination:
                continue
            client = _workload(graph, s.labels, "source")
            server = _workload(graph, s.labels, "destination")
            edge = covered.get((client, server))
            if edge is None and _pair(s.labels) not in refused:
                service = _service(graph, s.labels)
                if service is not None and graph.nodes[server]["kind"] != "waypoint":
                    apply(graph.edge(client, service), s)
                    apply(graph.edge(service, server), s)
                    continue
            if edge is None:
                edge = graph.edge(client, server)
            apply(edge, s)


def _pair(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(k, "") for k in _PAIR.split(", "))


def _add_cps(edge: Edge, s: Sample) -> None:
    edge.cps += s.value
    edge.mtls |= s.labels.get("connection_security_policy") == "mutual_tls"


def _add_bytes(edge: Edge, s: Sample) -> None:
    edge.bytes_per_s += s.value


def _add_denied(edge: Edge, s: Sample) -> None:
    edge.denied_cps += s.value


def node_details(workload: Mapping[str, str], dump: Mapping[str, Any]) -> dict[str, Any]:
    """The side panel of a workload from its node agent's `/config_dump`: the workload entry,
    the authorization policies that apply to it (selected by name, its namespace's and the
    mesh-wide ones) and its identity's certificates (dates and serials, no PEM)."""
    name, namespace = workload["name"], workload["namespace"]
    entry = next(
        (
            w
            for w in dump.get("workloads", [])
            if w.get("name") == name and w.get("namespace") == namespace
        ),
        None,
    )
    if entry is None:
        return {"workload": None, "policies": [], "certificates": []}
    selected = set(entry.get("authorizationPolicies", []))
    policies = [
        p
        for p in dump.get("policies", [])
        if f"{p.get('namespace')}/{p.get('name')}" in selected
        or p.get("scope") == "Global"
        or (p.get("scope") == "Namespace" and p.get("namespace") == namespace)
    ]
    identity = (
        f"spiffe://{entry.get('trustDomain', 'cluster.local')}/ns/{namespace}"
        f"/sa/{entry.get('serviceAccount', 'default')}"
    )
    certificates = [
        {
            "identity": c.get("identity"),
            "state": c.get("state"),
            "certChain": [
                {k: v for k, v in cert.items() if k != "pem"} for cert in c.get("certChain", [])
            ],
        }
        for c in dump.get("certificates", [])
        if c.get("identity") == identity
    ]
    return {
        "workload": entry,
        "identity": identity,
        "policies": policies,
        "certificates": certificates,
    }
