"""DestinationRule `trafficPolicy` to the `ClusterPolicy`s a waypoint applies, the way istiod
builds a waypoint's `inbound-vip` clusters (`pilot/pkg/networking/core/cluster_traffic_policy.go`,
`MergeTrafficPolicy`).

Per service, the policy of the DestinationRule that applies at the waypoint (`SubsetIndex`):

- the service as a whole (`subset ""`) gets the top-level policy; a port listed in
  `portLevelSettings` gets that entry's `loadBalancer`, `connectionPool` and `outlierDetection`
  instead, each replaced whole: a port-level setting does not inherit, an unset field there is
  the default;
- a subset gets the top-level policy (with its port-level settings for the port), then each of
  the four parts its own `trafficPolicy` sets, then its own `portLevelSettings` for the port;
- `retryBudget` is not per port: the subset's, else the top level's.

Defaults are istiod's and Envoy's: least request, no connection limits (Istio sends 2^32-1),
the proxy's connect and idle timeouts; with `outlierDetection`: 5 consecutive 5xx (0 turns it
off), gateway errors only when set, a 10 s interval, 30 s base ejection time, at most 10 % of
the endpoints ejected, no panic threshold (`minHealthPercent` 0); `LEAST_CONN` is
`LEAST_REQUEST`; a consistent hash without `ringHash`/`maglev` is a ring of at least 1024
entries (or the deprecated `minimumRingSize`). A connection pool limit of 0 means none, as
istiod reads it. `retryBudget`: 20 % and at least 3 retries in flight by default.

What a waypoint does not apply is reported once per rule by `unsupported`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.translate.routes import Warn
from ztunnel_py.model.http import (
    DEFAULT_MAGLEV_SIZE,
    DEFAULT_RING_SIZE,
    ClusterPolicy,
    ConnectionPool,
    ConsistentHash,
    HashSource,
    HashTable,
    LoadBalancer,
    LoadBalancerKind,
    OutlierDetection,
    RetryBudget,
    TrafficPolicy,
)
from ztunnel_py.yamlschema.durations import parse_duration

__all__ = ["cluster_policies", "unsupported"]

_PARTS = ("loadBalancer", "connectionPool", "outlierDetection")
_SIMPLE = {
    "UNSPECIFIED": LoadBalancerKind.LEAST_REQUEST,
    "LEAST_REQUEST": LoadBalancerKind.LEAST_REQUEST,
    "LEAST_CONN": LoadBalancerKind.LEAST_REQUEST,
    "ROUND_ROBIN": LoadBalancerKind.ROUND_ROBIN,
    "RANDOM": LoadBalancerKind.RANDOM,
    "PASSTHROUGH": LoadBalancerKind.PASSTHROUGH,
}
# field path (under a trafficPolicy) -> why a waypoint does not apply it
_UNSUPPORTED = {
    "tls": "TLS origination is not applied by waypoints (HBONE carries mTLS)",
    "tunnel": "not applied by waypoints",
    "proxyProtocol": "not applied by waypoints",
    "loadBalancer.localityLbSetting": "locality load balancing is not applied by waypoints",
    "loadBalancer.warmup": "slow start is not applied by waypoints",
    "loadBalancer.warmupDurationSecs": "slow start is not applied by waypoints",
    "loadBalancer.consistentHash.httpCookie.attributes": "cookie attributes are not set",
    "connectionPool.tcp.tcpKeepalive": "TCP keepalives are not set by waypoints",
    "connectionPool.http.h2UpgradePolicy": (
        "the upstream protocol follows the port's protocol at waypoints"
    ),
    "connectionPool.http.useClientProtocol": (
        "the upstream protocol follows the port's protocol at waypoints"
    ),
    "connectionPool.http.maxConcurrentStreams": "HTTP/2 streams are limited by the upstream",
    "outlierDetection.consecutiveErrors": (
        "deprecated and ignored by istiod: use consecutive5xxErrors or consecutiveGatewayErrors"
    ),
}


def _get(policy: Mapping[str, Any], path: str) -> Any:
    value: Any = policy
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _policies(rule: Resource) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every trafficPolicy in a rule (top level, subsets, port-level settings) and where."""
    spec = rule.spec
    places = [("spec.trafficPolicy", spec.get("trafficPolicy"))]
    places += [
        (f"spec.subsets[{i}].trafficPolicy", s.get("trafficPolicy"))
        for i, s in enumerate(spec.get("subsets") or ())
    ]
    for where, policy in places:
        if not policy:
            continue
        yield where, policy
        for j, port in enumerate(policy.get("portLevelSettings") or ()):
            yield f"{where}.portLevelSettings[{j}]", port


def unsupported(rule: Resource, warn: Warn) -> None:
    """Report the traffic policy fields of `rule` that waypoints do not apply."""
    for where, policy in _policies(rule):
        for path, why in _UNSUPPORTED.items():
            if _get(policy, path) is not None:
                warn(rule, f"{where}.{path}", why)
        if _get(policy, "loadBalancer.simple") == "PASSTHROUGH":
            warn(
                rule,
                f"{where}.loadBalancer.simple",
                "PASSTHROUGH sends each request to the address the client dialled (istiod's "
                "ORIGINAL_DST cluster): a service address has no endpoint of its own, so "
                "requests for a service get 503",
            )


def _port_setting(policy: Mapping[str, Any] | None, port: int) -> Mapping[str, Any] | None:
    for p in (policy or {}).get("portLevelSettings") or ():
        if (p.get("port") or {}).get("number") == port:
            setting: Mapping[str, Any] = p
            return setting
    return None


def _merged(
    top: Mapping[str, Any] | None, subset: Mapping[str, Any] | None, port: int
) -> dict[str, Any]:
    """The parts that apply at `port` (0: no port-level setting), as MergeTrafficPolicy."""
    out = {k: (top or {}).get(k) for k in _PARTS}
    at_port = _port_setting(top, port)
    if at_port is not None:
        out = {k: at_port.get(k) for k in _PARTS}
    if subset:
        for k in _PARTS:
            if subset.get(k) is not None:
                out[k] = subset[k]
        at_port = _port_setting(subset, port)
        if at_port is not None:
            out = {k: at_port.get(k) for k in _PARTS}
    out["retryBudget"] = (subset or {}).get("retryBudget") or (top or {}).get("retryBudget")
    return out


def _seconds(value: Any) -> float | None:
    return parse_duration(value) if value is not None else None


def _consistent_hash(ch: Mapping[str, Any]) -> ConsistentHash:
    table, size = HashTable.RING_HASH, DEFAULT_RING_SIZE
    if ch.get("maglev"):
        table, size = HashTable.MAGLEV, ch["maglev"].get("tableSize") or DEFAULT_MAGLEV_SIZE
    elif ch.get("ringHash"):
        size = ch["ringHash"].get("minimumRingSize") or DEFAULT_RING_SIZE
    elif ch.get("minimumRingSize"):
        size = ch["minimumRingSize"]
    if ch.get("httpHeaderName"):
        return ConsistentHash(
            HashSource.HEADER, ch["httpHeaderName"].lower(), table=table, table_size=size
        )
    if ch.get("httpCookie"):
        cookie = ch["httpCookie"]
        return ConsistentHash(
            HashSource.COOKIE,
            cookie["name"],
            cookie.get("path") or "",
            _seconds(cookie.get("ttl")),
            table,
            size,
        )
    if ch.get("httpQueryParameterName"):
        return ConsistentHash(
            HashSource.QUERY_PARAMETER, ch["httpQueryParameterName"], table=table, table_size=size
        )
    return ConsistentHash(HashSource.SOURCE_IP, table=table, table_size=size)


def _load_balancer(lb: Mapping[str, Any] | None) -> LoadBalancer:
    if not lb:
        return LoadBalancer()
    kind = _SIMPLE[lb.get("simple") or "UNSPECIFIED"]
    ch = lb.get("consistentHash")
    return LoadBalancer(kind, _consistent_hash(ch) if ch else None)


def _connection_pool(cp: Mapping[str, Any] | None) -> ConnectionPool:
    tcp = (cp or {}).get("tcp") or {}
    http = (cp or {}).get("http") or {}
    return ConnectionPool(
        max_connections=tcp.get("maxConnections") or 0,
        connect_timeout=_seconds(tcp.get("connectTimeout")),
        max_pending_requests=http.get("http1MaxPendingRequests") or 0,
        max_requests=http.get("http2MaxRequests") or 0,
        max_requests_per_connection=http.get("maxRequestsPerConnection") or 0,
        max_retries=http.get("maxRetries") or 0,
        # the HTTP idle timeout, else the TCP one (istiod's applyConnectionPool)
        idle_timeout=_seconds(http.get("idleTimeout") or tcp.get("idleTimeout")),
        max_connection_duration=_seconds(tcp.get("maxConnectionDuration")),
    )


def _outlier_detection(od: Mapping[str, Any] | None) -> OutlierDetection | None:
    if od is None:
        return None
    default = OutlierDetection()
    consecutive_5xx = od.get("consecutive5xxErrors")
    return OutlierDetection(
        consecutive_5xx=default.consecutive_5xx if consecutive_5xx is None else consecutive_5xx,
        consecutive_gateway_errors=od.get("consecutiveGatewayErrors") or 0,
        interval=_seconds(od.get("interval")) or default.interval,
        base_ejection_time=_seconds(od.get("baseEjectionTime")) or default.base_ejection_time,
        max_ejection_percent=od.get("maxEjectionPercent") or default.max_ejection_percent,
        min_health_percent=od.get("minHealthPercent") or 0,
        split_local_origin=bool(od.get("splitExternalLocalOriginErrors")),
        consecutive_local_origin=(
            od.get("consecutiveLocalOriginFailures") or default.consecutive_local_origin
        ),
    )


def _retry_budget(rb: Mapping[str, Any] | None) -> RetryBudget | None:
    if rb is None:
        return None
    default = RetryBudget()
    percent = rb.get("percent")
    return RetryBudget(
        float(percent) if percent is not None else default.percent,
        rb.get("minRetryConcurrency") or default.min_concurrency,
    )


def _traffic_policy(parts: Mapping[str, Any], origin: str) -> TrafficPolicy:
    return TrafficPolicy(
        _load_balancer(parts.get("loadBalancer")),
        _connection_pool(parts.get("connectionPool")),
        _outlier_detection(parts.get("outlierDetection")),
        _retry_budget(parts.get("retryBudget")),
        origin,
    )


def _ports(*policies: Mapping[str, Any] | None) -> list[int]:
    return sorted(
        {
            p["port"]["number"]
            for policy in policies
            for p in (policy or {}).get("portLevelSettings") or ()
        }
    )


def cluster_policies(
    rule: Resource | None, service: str, subsets: Iterable[str]
) -> list[ClusterPolicy]:
    """The policies of `service`'s clusters: the whole service and each of `subsets` (those
    the routes use), for every port (0) and each port with a port-level setting. Nothing when
    the rule sets no traffic policy for them: the waypoint's defaults are Istio's."""
    if rule is None:
        return []
    origin = f"DestinationRule {rule.namespace}/{rule.name}"
    top = rule.spec.get("trafficPolicy")
    by_name = {s["name"]: s.get("trafficPolicy") for s in rule.spec.get("subsets") or ()}
    out: list[ClusterPolicy] = []
    for subset in ["", *sorted(set(subsets))]:
        own = by_name.get(subset) if subset else None
        if subset and subset not in by_name:
            continue
        if not top and not own:
            continue
        for port in [0, *_ports(top, own)]:
            out.append(
                ClusterPolicy(
                    service, subset, port, _traffic_policy(_merged(top, own, port), origin)
                )
            )
    return out
