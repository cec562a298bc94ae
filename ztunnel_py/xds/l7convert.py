"""Our waypoint xDS types (`ztunnel_py.l7`, see `proto/l7.proto`) <-> model types, both ways.

Like `convert.py` for the workload API: protobuf stops here. Decoding checks what the model
relies on (ports in range, statuses valid, regular expressions that compile, weights and
percentages in range) and raises `ConversionError` with a one-line reason, which becomes the
resource's NACK reason; a waypoint then keeps serving that resource's last good version.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration

from ztunnel_py.model.authn import ClaimToHeader, JwtHeader, JwtRule, WaypointAuthentication
from ztunnel_py.model.http import (
    DEFAULT_MAGLEV_SIZE,
    DEFAULT_RING_SIZE,
    FILTER_NAME,
    MAX_MAGLEV_SIZE,
    MAX_RING_SIZE,
    Backend,
    ClusterPolicy,
    ConnectionPool,
    ConsistentHash,
    DirectResponse,
    Fault,
    FilterConfig,
    FilterPhase,
    HashSource,
    HashTable,
    HeaderMatch,
    HeaderOps,
    HttpService,
    LoadBalancer,
    LoadBalancerKind,
    MatchKind,
    Mirror,
    OutlierDetection,
    PathMatch,
    QueryMatch,
    Redirect,
    RetryBudget,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
    Subset,
    TrafficPolicy,
    valid_maglev_size,
)
from ztunnel_py.model.policy import (
    Action,
    Authorization,
    ClaimCondition,
    HeaderCondition,
    Match,
    PolicyScope,
    RequestPrincipalMatch,
    WaypointPolicy,
)
from ztunnel_py.model.telemetry import (
    DEFAULT_MAX_TAG_LENGTH,
    METRICS,
    AccessLogConfig,
    CustomTag,
    CustomTagKind,
    MetricOverride,
    MetricsConfig,
    ProviderKind,
    TagOverride,
    TelemetryConfig,
    TracingConfig,
    TracingProvider,
)
from ztunnel_py.proto import l7_pb2
from ztunnel_py.telemetry import cel
from ztunnel_py.xds.convert import (
    ConversionError,
    EncodedResource,
    PayloadDecoder,
    encode_message,
    match_from_proto,
    match_to_proto,
    string_match_from_proto,
    string_match_to_proto,
)

__all__ = [
    "AUTHENTICATION_TYPE",
    "HTTP_SERVICE_TYPE",
    "L7_DECODERS",
    "L7_TYPES",
    "WAYPOINT_POLICY_TYPE",
    "authentication_from_proto",
    "authentication_to_proto",
    "encode_l7_resource",
    "http_service_from_proto",
    "http_service_to_proto",
    "waypoint_policy_from_proto",
    "waypoint_policy_to_proto",
]

HTTP_SERVICE_TYPE = "type.googleapis.com/ztunnel_py.l7.HttpService"
WAYPOINT_POLICY_TYPE = "type.googleapis.com/ztunnel_py.l7.HttpAuthorization"
AUTHENTICATION_TYPE = "type.googleapis.com/ztunnel_py.l7.HttpAuthentication"
L7_TYPES = (HTTP_SERVICE_TYPE, WAYPOINT_POLICY_TYPE, AUTHENTICATION_TYPE)

_KINDS = {
    MatchKind.EXACT: l7_pb2.EXACT,
    MatchKind.PREFIX: l7_pb2.PREFIX,
    MatchKind.SUFFIX: l7_pb2.SUFFIX,
    MatchKind.REGEX: l7_pb2.REGEX,
    MatchKind.PRESENT: l7_pb2.PRESENT,
}
_KIND_NAMES: dict[int, MatchKind] = {int(v): k for k, v in _KINDS.items()}
_ACTIONS = {Action.ALLOW: l7_pb2.ALLOW, Action.DENY: l7_pb2.DENY, Action.AUDIT: l7_pb2.AUDIT}
_ACTION_NAMES: dict[int, Action] = {int(v): k for k, v in _ACTIONS.items()}
_PHASES = {
    FilterPhase.UNSPECIFIED: l7_pb2.UNSPECIFIED_PHASE,
    FilterPhase.AUTHN: l7_pb2.AUTHN,
    FilterPhase.AUTHZ: l7_pb2.AUTHZ,
    FilterPhase.STATS: l7_pb2.STATS,
}
_PHASE_NAMES: dict[int, FilterPhase] = {int(v): k for k, v in _PHASES.items()}
_E = TypeVar("_E", bound=enum.Enum)


def _same_names(model: type[_E], wire: Any) -> tuple[dict[_E, Any], dict[int, _E]]:
    """Both ways between a model enum and a wire enum whose names are the model's values."""
    to_wire = {member: wire.Value(member.value) for member in model}
    return to_wire, {int(v): k for k, v in to_wire.items()}


_LB, _LB_NAMES = _same_names(LoadBalancerKind, l7_pb2.LoadBalancer.Simple)
_HASH_SOURCES, _HASH_SOURCE_NAMES = _same_names(HashSource, l7_pb2.ConsistentHash.Source)
_HASH_TABLES, _HASH_TABLE_NAMES = _same_names(HashTable, l7_pb2.ConsistentHash.Table)
_PROVIDER_KINDS: dict[ProviderKind, Any] = {
    k: l7_pb2.TracingProvider.Kind.Value(k.name) for k in ProviderKind
}
_PROVIDER_KIND_NAMES: dict[int, ProviderKind] = {int(v): k for k, v in _PROVIDER_KINDS.items()}
_TAG_KINDS: dict[CustomTagKind, Any] = {
    k: l7_pb2.CustomTag.Kind.Value(k.name) for k in CustomTagKind
}
_TAG_KIND_NAMES: dict[int, CustomTagKind] = {int(v): k for k, v in _TAG_KINDS.items()}


# --- model -> proto ------------------------------------------------------------------------------


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _ops_to_proto(ops: HeaderOps) -> l7_pb2.HeaderOps:
    return l7_pb2.HeaderOps(
        set=[l7_pb2.Header(name=n, value=v) for n, v in ops.set],
        add=[l7_pb2.Header(name=n, value=v) for n, v in ops.add],
        remove=list(ops.remove),
    )


def _backend_to_proto(b: Backend) -> l7_pb2.Backend:
    return l7_pb2.Backend(
        service=b.service,
        port=b.port,
        weight=b.weight,
        subset=b.subset,
        request_headers=_ops_to_proto(b.request_headers),
        response_headers=_ops_to_proto(b.response_headers),
    )


def _match_to_proto(m: RouteMatch) -> l7_pb2.RouteMatch:
    pb = l7_pb2.RouteMatch(
        method=m.method or "",
        port=m.port or 0,
        headers=[
            l7_pb2.HeaderMatch(name=h.name, kind=_KINDS[h.kind], value=h.value, invert=h.invert)
            for h in m.headers
        ],
        query=[l7_pb2.QueryMatch(name=q.name, kind=_KINDS[q.kind], value=q.value) for q in m.query],
    )
    if m.path is not None:
        p = m.path
        pb.path.CopyFrom(
            l7_pb2.PathMatch(
                kind=_KINDS[p.kind],
                value=p.value,
                segment_prefix=p.segment_prefix,
                ignore_case=p.ignore_case,
            )
        )
    return pb


def _route_to_proto(r: Route) -> l7_pb2.Route:
    pb = l7_pb2.Route(
        name=r.name,
        matches=[_match_to_proto(m) for m in r.matches],
        backends=[_backend_to_proto(b) for b in r.backends],
        request_headers=_ops_to_proto(r.request_headers),
        response_headers=_ops_to_proto(r.response_headers),
        mirrors=[
            l7_pb2.Mirror(backend=_backend_to_proto(m.backend), percent=m.percent)
            for m in r.mirrors
        ],
        origin=r.origin,
    )
    if r.redirect is not None:
        rd = r.redirect
        pb.redirect.CopyFrom(
            l7_pb2.Redirect(
                status=rd.status,
                scheme=rd.scheme,
                host=rd.host,
                port=rd.port,
                path=rd.path,
                prefix=rd.prefix,
            )
        )
    if r.direct_response is not None:
        pb.direct_response.CopyFrom(
            l7_pb2.DirectResponse(status=r.direct_response.status, body=r.direct_response.body)
        )
    if r.rewrite is not None:
        rw = r.rewrite
        pb.rewrite.CopyFrom(l7_pb2.Rewrite(path=rw.path, prefix=rw.prefix, authority=rw.authority))
    if r.timeout is not None:
        pb.timeout.CopyFrom(_duration(r.timeout))
    if r.retries is not None:
        rt = r.retries
        pb.retries.CopyFrom(
            l7_pb2.RetryPolicy(
                attempts=rt.attempts,
                retry_on=list(rt.retry_on),
                retriable_status_codes=list(rt.retriable_status_codes),
            )
        )
        if rt.per_try_timeout is not None:
            pb.retries.per_try_timeout.CopyFrom(_duration(rt.per_try_timeout))
    if r.fault is not None:
        f = r.fault
        pb.fault.CopyFrom(
            l7_pb2.Fault(
                delay_percent=f.delay_percent,
                delay=_duration(f.delay),
                abort_percent=f.abort_percent,
                abort_status=f.abort_status,
                abort_grpc_status=f.abort_grpc_status,
            )
        )
    return pb


def _filter_to_proto(f: FilterConfig) -> l7_pb2.FilterConfig:
    return l7_pb2.FilterConfig(
        name=f.name,
        phase=_PHASES[f.phase],
        priority=f.priority,
        config_json=json.dumps(f.config, sort_keys=True, separators=(",", ":")),
        fail_open=f.fail_open,
        origin=f.origin,
    )


def _optional_duration(pb: Any, name: str, seconds: float | None) -> None:
    if seconds is not None:
        getattr(pb, name).CopyFrom(_duration(seconds))


def _traffic_policy_to_proto(p: TrafficPolicy) -> l7_pb2.TrafficPolicy:
    lb = l7_pb2.LoadBalancer(simple=_LB[p.load_balancer.kind])
    ch = p.load_balancer.consistent_hash
    if ch is not None:
        lb.consistent_hash.CopyFrom(
            l7_pb2.ConsistentHash(
                source=_HASH_SOURCES[ch.source],
                name=ch.name,
                cookie_path=ch.cookie_path,
                table=_HASH_TABLES[ch.table],
                table_size=ch.table_size,
            )
        )
        _optional_duration(lb.consistent_hash, "cookie_ttl", ch.cookie_ttl)
    cp = p.connection_pool
    pool = l7_pb2.ConnectionPool(
        max_connections=cp.max_connections,
        max_pending_requests=cp.max_pending_requests,
        max_requests=cp.max_requests,
        max_requests_per_connection=cp.max_requests_per_connection,
        max_retries=cp.max_retries,
    )
    _optional_duration(pool, "connect_timeout", cp.connect_timeout)
    _optional_duration(pool, "idle_timeout", cp.idle_timeout)
    _optional_duration(pool, "max_connection_duration", cp.max_connection_duration)
    pb = l7_pb2.TrafficPolicy(load_balancer=lb, connection_pool=pool, origin=p.origin)
    od = p.outlier_detection
    if od is not None:
        pb.outlier_detection.CopyFrom(
            l7_pb2.OutlierDetection(
                consecutive_5xx=od.consecutive_5xx,
                consecutive_gateway_errors=od.consecutive_gateway_errors,
                interval=_duration(od.interval),
                base_ejection_time=_duration(od.base_ejection_time),
                max_ejection_percent=od.max_ejection_percent,
                min_health_percent=od.min_health_percent,
                split_local_origin=od.split_local_origin,
                consecutive_local_origin=od.consecutive_local_origin,
            )
        )
    if p.retry_budget is not None:
        pb.retry_budget.CopyFrom(
            l7_pb2.RetryBudget(
                percent=p.retry_budget.percent, min_concurrency=p.retry_budget.min_concurrency
            )
        )
    return pb


def _telemetry_to_proto(t: TelemetryConfig) -> l7_pb2.Telemetry:
    tracing = t.tracing
    pb = l7_pb2.Telemetry(
        tracing=l7_pb2.Tracing(
            sampling=tracing.sampling,
            custom_tags=[
                l7_pb2.CustomTag(
                    name=tag.name,
                    kind=_TAG_KINDS[tag.kind],
                    value=tag.value,
                    default_value=tag.default,
                )
                for tag in tracing.custom_tags
            ],
        ),
        origins=list(t.origins),
        metrics=l7_pb2.Metrics(
            disabled=not t.metrics.enabled,
            overrides=[
                l7_pb2.MetricOverride(
                    metric=o.metric,
                    disabled=o.disabled,
                    tags=[
                        l7_pb2.TagOverride(name=tag.name, remove=tag.remove, value=tag.value)
                        for tag in o.tags
                    ],
                )
                for o in t.metrics.overrides
            ],
        ),
        access_log=l7_pb2.AccessLog(disabled=not t.access_log.enabled, filter=t.access_log.filter),
    )
    p = tracing.provider
    if p is not None:
        provider = l7_pb2.TracingProvider(
            name=p.name,
            kind=_PROVIDER_KINDS[p.kind],
            service=p.service,
            port=p.port,
            path=p.path,
            max_tag_length=p.max_tag_length,
            headers=[l7_pb2.Header(name=n, value=v) for n, v in p.headers],
        )
        _optional_duration(provider, "timeout", p.timeout)
        pb.tracing.provider.CopyFrom(provider)
    return pb


def http_service_to_proto(s: HttpService) -> l7_pb2.HttpService:
    return l7_pb2.HttpService(
        name=s.service,
        routes=[_route_to_proto(r) for r in s.routes],
        subsets=[
            l7_pb2.ServiceSubsets(
                service=service,
                subsets=[
                    l7_pb2.Subset(
                        name=sub.name,
                        labels=dict(sub.labels),
                        workload_uids=sorted(sub.workload_uids),
                    )
                    for sub in subsets
                ],
            )
            for service, subsets in s.subsets
        ],
        sources=list(s.sources),
        filters=[_filter_to_proto(f) for f in s.filters],
        clusters=[
            l7_pb2.ClusterPolicy(
                service=c.service,
                subset=c.subset,
                port=c.port,
                policy=_traffic_policy_to_proto(c.policy),
            )
            for c in s.clusters
        ],
        telemetry=_telemetry_to_proto(s.telemetry),
    )


def _l7_match_to_proto(m: Match) -> l7_pb2.Match:
    s = string_match_to_proto

    def conditions(cs: Iterable[HeaderCondition]) -> list[l7_pb2.HeaderCondition]:
        return [l7_pb2.HeaderCondition(name=c.name, values=[s(v) for v in c.values]) for c in cs]

    def principals(ps: Iterable[RequestPrincipalMatch]) -> list[l7_pb2.RequestPrincipal]:
        return [l7_pb2.RequestPrincipal(issuer=s(p.issuer), subject=s(p.subject)) for p in ps]

    def claims(cs: Iterable[ClaimCondition]) -> list[l7_pb2.ClaimCondition]:
        return [
            l7_pb2.ClaimCondition(path=list(c.path), values=[s(v) for v in c.values]) for c in cs
        ]

    return l7_pb2.Match(
        l4=match_to_proto(m),
        paths=[s(x) for x in m.paths],
        not_paths=[s(x) for x in m.not_paths],
        methods=[s(x) for x in m.methods],
        not_methods=[s(x) for x in m.not_methods],
        hosts=[s(x) for x in m.hosts],
        not_hosts=[s(x) for x in m.not_hosts],
        headers=conditions(m.headers),
        not_headers=conditions(m.not_headers),
        request_principals=principals(m.request_principals),
        not_request_principals=principals(m.not_request_principals),
        claims=claims(m.claims),
        not_claims=claims(m.not_claims),
    )


def waypoint_policy_to_proto(wp: WaypointPolicy) -> l7_pb2.HttpAuthorization:
    p = wp.policy
    return l7_pb2.HttpAuthorization(
        name=p.name,
        namespace=p.namespace,
        action=_ACTIONS[p.action],
        rules=[
            l7_pb2.Rule(
                clauses=[
                    l7_pb2.Clause(matches=[_l7_match_to_proto(m) for m in clause])
                    for clause in rule
                ]
            )
            for rule in p.rules
        ],
        dry_run=p.dry_run,
        services=list(wp.services),
    )


def _jwt_rule_to_proto(r: JwtRule) -> l7_pb2.JwtRule:
    return l7_pb2.JwtRule(
        issuer=r.issuer,
        audiences=list(r.audiences),
        jwks=r.jwks,
        jwks_error=r.jwks_error,
        forward_original_token=r.forward_original_token,
        output_payload_to_header=r.output_payload_to_header,
        output_claim_to_headers=[
            l7_pb2.ClaimToHeader(header=c.header, claim=c.claim) for c in r.output_claim_to_headers
        ],
        from_headers=[l7_pb2.JwtHeader(name=h.name, prefix=h.prefix) for h in r.from_headers],
        from_params=list(r.from_params),
        from_cookies=list(r.from_cookies),
        space_delimited_claims=list(r.space_delimited_claims),
        origin=r.origin,
    )


def authentication_to_proto(a: WaypointAuthentication) -> l7_pb2.HttpAuthentication:
    return l7_pb2.HttpAuthentication(
        name=a.name,
        namespace=a.namespace,
        rules=[_jwt_rule_to_proto(r) for r in a.rules],
        services=list(a.services),
    )


# --- proto -> model ------------------------------------------------------------------------------


def _seconds(d: Duration, what: str) -> float:
    if d.seconds < 0 or d.nanos < 0:
        raise ConversionError(f"{what} is negative")
    return d.seconds + d.nanos / 1e9


def _kind(value: int, what: str) -> MatchKind:
    kind = _KIND_NAMES.get(value)
    if kind is None:
        raise ConversionError(f"unsupported {what} match kind {value}")
    return kind


def _status(value: int, what: str) -> int:
    if not 100 <= value <= 599:
        raise ConversionError(f"{what} {value} is not an HTTP status")
    return value


def _port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise ConversionError(f"{what} {value} is not a port")
    return value


def _ops(pb: l7_pb2.HeaderOps) -> HeaderOps:
    return HeaderOps(
        set=tuple((h.name.lower(), h.value) for h in pb.set),
        add=tuple((h.name.lower(), h.value) for h in pb.add),
        remove=tuple(n.lower() for n in pb.remove),
    )


def _backend(pb: l7_pb2.Backend) -> Backend:
    if "/" not in pb.service:
        raise ConversionError(f"backend service {pb.service!r} is not <namespace>/<hostname>")
    # An unresolved backend (empty hostname: it answers 500) may lack a port.
    unresolved = pb.service.endswith("/") and pb.port <= 65535
    return Backend(
        service=pb.service,
        port=pb.port if unresolved else _port(pb.port, "backend port"),
        weight=pb.weight,
        subset=pb.subset,
        request_headers=_ops(pb.request_headers),
        response_headers=_ops(pb.response_headers),
    )


def _route_match(pb: l7_pb2.RouteMatch) -> RouteMatch:
    try:
        path = None
        if pb.HasField("path"):
            p = pb.path
            path = PathMatch(_kind(p.kind, "path"), p.value, p.segment_prefix, p.ignore_case)
        return RouteMatch(
            path=path,
            method=pb.method or None,
            headers=tuple(
                HeaderMatch(h.name, _kind(h.kind, "header"), h.value, h.invert) for h in pb.headers
            ),
            query=tuple(QueryMatch(q.name, _kind(q.kind, "query"), q.value) for q in pb.query),
            port=_port(pb.port, "match port") if pb.port else None,
        )
    except ValueError as e:
        raise ConversionError(str(e)) from None


def _route(pb: l7_pb2.Route) -> Route:
    redirect = rewrite = direct = timeout = retries = fault = None
    if pb.HasField("redirect"):
        rd = pb.redirect
        redirect = Redirect(
            status=_status(rd.status, "redirect status"),
            scheme=rd.scheme if rd.HasField("scheme") else None,
            host=rd.host if rd.HasField("host") else None,
            port=_port(rd.port, "redirect port") if rd.HasField("port") else None,
            path=rd.path if rd.HasField("path") else None,
            prefix=rd.prefix if rd.HasField("prefix") else None,
        )
    if pb.HasField("rewrite"):
        rw = pb.rewrite
        rewrite = Rewrite(
            path=rw.path if rw.HasField("path") else None,
            prefix=rw.prefix if rw.HasField("prefix") else None,
            authority=rw.authority if rw.HasField("authority") else None,
        )
    if pb.HasField("direct_response"):
        direct = DirectResponse(
            _status(pb.direct_response.status, "direct response status"), pb.direct_response.body
        )
    if pb.HasField("timeout"):
        timeout = _seconds(pb.timeout, "route timeout") or None
    if pb.HasField("retries"):
        rt = pb.retries
        per_try = (
            _seconds(rt.per_try_timeout, "per-try timeout")
            if rt.HasField("per_try_timeout")
            else None
        )
        retries = RetryPolicy(
            attempts=rt.attempts,
            per_try_timeout=per_try or None,
            retry_on=tuple(rt.retry_on),
            retriable_status_codes=tuple(
                _status(c, "retriable status") for c in rt.retriable_status_codes
            ),
        )
    if pb.HasField("fault"):
        f = pb.fault
        for what, pct in (("fault delay", f.delay_percent), ("fault abort", f.abort_percent)):
            if not 0 <= pct <= 100:
                raise ConversionError(f"{what} percentage {pct} is not within 0-100")
        fault = Fault(
            delay_percent=f.delay_percent,
            delay=_seconds(f.delay, "fault delay"),
            abort_percent=f.abort_percent,
            abort_status=_status(f.abort_status, "fault abort status") if f.abort_status else 0,
            abort_grpc_status=f.abort_grpc_status,
        )
    mirrors = []
    for m in pb.mirrors:
        if not 0 <= m.percent <= 100:
            raise ConversionError(f"mirror percentage {m.percent} is not within 0-100")
        mirrors.append(Mirror(_backend(m.backend), m.percent))
    return Route(
        name=pb.name,
        matches=tuple(_route_match(m) for m in pb.matches) or (RouteMatch(),),
        backends=tuple(_backend(b) for b in pb.backends),
        redirect=redirect,
        direct_response=direct,
        rewrite=rewrite,
        request_headers=_ops(pb.request_headers),
        response_headers=_ops(pb.response_headers),
        timeout=timeout,
        retries=retries,
        mirrors=tuple(mirrors),
        fault=fault,
        origin=pb.origin,
    )


def _filter(pb: l7_pb2.FilterConfig) -> FilterConfig:
    if not FILTER_NAME.match(pb.name):
        raise ConversionError(
            f"filter name {pb.name!r} is not an entry point name (letters, digits, '_', '.', '-')"
        )
    phase = _PHASE_NAMES.get(pb.phase)
    if phase is None:
        raise ConversionError(f"filter {pb.name}: unsupported phase {pb.phase}")
    try:
        config: Any = json.loads(pb.config_json) if pb.config_json else {}
    except (ValueError, RecursionError) as e:
        raise ConversionError(f"filter {pb.name}: configuration is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"filter {pb.name}: configuration is not a JSON object")
    return FilterConfig(
        name=pb.name,
        phase=phase,
        priority=pb.priority,
        config=config,
        fail_open=pb.fail_open,
        origin=pb.origin,
    )


def _positive(d: Duration, what: str) -> float:
    seconds = _seconds(d, what)
    if seconds <= 0:
        raise ConversionError(f"{what} must be longer than 0")
    return seconds


def _consistent_hash(pb: l7_pb2.ConsistentHash) -> ConsistentHash:
    source = _HASH_SOURCE_NAMES.get(pb.source)
    table = _HASH_TABLE_NAMES.get(pb.table)
    if source is None or table is None:
        raise ConversionError(f"unsupported consistent hash source {pb.source} or table {pb.table}")
    if source is not HashSource.SOURCE_IP and not pb.name:
        raise ConversionError(f"a consistent hash on a {source.value.lower()} needs its name")
    if table is HashTable.RING_HASH:
        size = pb.table_size or DEFAULT_RING_SIZE
        if size > MAX_RING_SIZE:
            raise ConversionError(f"ring size {size} is larger than {MAX_RING_SIZE}")
    else:
        size = pb.table_size or DEFAULT_MAGLEV_SIZE
        if not valid_maglev_size(size):
            raise ConversionError(
                f"Maglev table size {size} is not a prime below {MAX_MAGLEV_SIZE}"
            )
    return ConsistentHash(
        source=source,
        name=pb.name.lower() if source is HashSource.HEADER else pb.name,
        cookie_path=pb.cookie_path,
        cookie_ttl=_seconds(pb.cookie_ttl, "cookie ttl") if pb.HasField("cookie_ttl") else None,
        table=table,
        table_size=size,
    )


def _traffic_policy(pb: l7_pb2.TrafficPolicy) -> TrafficPolicy:
    kind = _LB_NAMES.get(pb.load_balancer.simple)
    if kind is None:
        raise ConversionError(f"unsupported load balancer {pb.load_balancer.simple}")
    lb = LoadBalancer(
        kind,
        _consistent_hash(pb.load_balancer.consistent_hash)
        if pb.load_balancer.HasField("consistent_hash")
        else None,
    )
    cp = pb.connection_pool

    def duration(name: str, what: str) -> float | None:
        return _positive(getattr(cp, name), what) if cp.HasField(name) else None

    pool = ConnectionPool(
        max_connections=cp.max_connections,
        connect_timeout=duration("connect_timeout", "connect timeout"),
        max_pending_requests=cp.max_pending_requests,
        max_requests=cp.max_requests,
        max_requests_per_connection=cp.max_requests_per_connection,
        max_retries=cp.max_retries,
        idle_timeout=duration("idle_timeout", "idle timeout"),
        max_connection_duration=duration("max_connection_duration", "max connection duration"),
    )
    outlier = None
    if pb.HasField("outlier_detection"):
        od = pb.outlier_detection
        for what, pct in (
            ("max ejection percent", od.max_ejection_percent),
            ("min health percent", od.min_health_percent),
        ):
            if pct > 100:
                raise ConversionError(f"{what} {pct} is not within 0-100")
        default = OutlierDetection()
        outlier = OutlierDetection(
            consecutive_5xx=od.consecutive_5xx,
            consecutive_gateway_errors=od.consecutive_gateway_errors,
            interval=_positive(od.interval, "outlier interval")
            if od.HasField("interval")
            else default.interval,
            base_ejection_time=_positive(od.base_ejection_time, "base ejection time")
            if od.HasField("base_ejection_time")
            else default.base_ejection_time,
            max_ejection_percent=od.max_ejection_percent,
            min_health_percent=od.min_health_percent,
            split_local_origin=od.split_local_origin,
            consecutive_local_origin=od.consecutive_local_origin,
        )
    budget = None
    if pb.HasField("retry_budget"):
        rb = pb.retry_budget
        if not 0 <= rb.percent <= 100:
            raise ConversionError(f"retry budget percent {rb.percent} is not within 0-100")
        budget = RetryBudget(rb.percent, rb.min_concurrency)
    return TrafficPolicy(lb, pool, outlier, budget, pb.origin)


def _cluster_policy(pb: l7_pb2.ClusterPolicy) -> ClusterPolicy:
    if "/" not in pb.service or pb.service.endswith("/"):
        raise ConversionError(f"cluster service {pb.service!r} is not <namespace>/<hostname>")
    where = f"traffic policy of {pb.service} subset {pb.subset or '-'} port {pb.port or '*'}"
    try:
        return ClusterPolicy(
            pb.service,
            pb.subset,
            _port(pb.port, "cluster port") if pb.port else 0,
            _traffic_policy(pb.policy),
        )
    except ConversionError as e:
        raise ConversionError(f"{where}: {e}") from None


def _tracing_provider(pb: l7_pb2.TracingProvider) -> TracingProvider:
    kind = _PROVIDER_KIND_NAMES.get(pb.kind)
    if kind is None:
        raise ConversionError(f"tracing provider {pb.name}: unsupported kind {pb.kind}")
    if not pb.service:
        raise ConversionError(f"tracing provider {pb.name}: no service")
    return TracingProvider(
        name=pb.name,
        kind=kind,
        service=pb.service,
        port=_port(pb.port, f"tracing provider {pb.name} port"),
        path=pb.path,
        max_tag_length=pb.max_tag_length or DEFAULT_MAX_TAG_LENGTH,
        timeout=_positive(pb.timeout, "tracing provider timeout")
        if pb.HasField("timeout")
        else None,
        headers=tuple((h.name, h.value) for h in pb.headers),
    )


def _telemetry(pb: l7_pb2.Telemetry) -> TelemetryConfig:
    t = pb.tracing
    if not math.isfinite(t.sampling) or not 0.0 <= t.sampling <= 100.0:
        raise ConversionError(f"tracing sampling {t.sampling} is not a percentage")
    tags = []
    for tag in t.custom_tags:
        kind = _TAG_KIND_NAMES.get(tag.kind)
        if kind is None or not tag.name:
            raise ConversionError(f"custom tag {tag.name!r}: unsupported kind {tag.kind}")
        tags.append(CustomTag(tag.name, kind, tag.value, tag.default_value))
    overrides = []
    for o in pb.metrics.overrides:
        if o.metric not in METRICS:
            raise ConversionError(f"unknown metric {o.metric!r}")
        for op in o.tags:
            if not op.remove:
                _expression(op.value, f"tag {op.name} of {o.metric}")
        overrides.append(
            MetricOverride(
                o.metric,
                o.disabled,
                tuple(TagOverride(op.name, op.remove, op.value) for op in o.tags),
            )
        )
    if pb.access_log.filter:
        _expression(pb.access_log.filter, "access log filter")
    return TelemetryConfig(
        tracing=TracingConfig(
            provider=_tracing_provider(t.provider) if t.HasField("provider") else None,
            sampling=t.sampling,
            custom_tags=tuple(tags),
        ),
        metrics=MetricsConfig(not pb.metrics.disabled, tuple(overrides)),
        access_log=AccessLogConfig(not pb.access_log.disabled, pb.access_log.filter),
        origins=tuple(pb.origins),
    )


def _expression(text: str, what: str) -> None:
    try:
        cel.parse(text)
    except cel.CelError as e:
        raise ConversionError(f"{what}: {e}") from None


def http_service_from_proto(pb: l7_pb2.HttpService) -> HttpService:
    if "/" not in pb.name:
        raise ConversionError(f"HTTP service name {pb.name!r} is not <namespace>/<hostname>")
    routes = []
    for i, r in enumerate(pb.routes):
        try:
            routes.append(_route(r))
        except ConversionError as e:
            raise ConversionError(f"route {i} ({r.name or 'unnamed'}): {e}") from None
    return HttpService(
        service=pb.name,
        routes=tuple(routes),
        subsets=tuple(
            (
                ss.service,
                tuple(
                    Subset(s.name, tuple(sorted(s.labels.items())), frozenset(s.workload_uids))
                    for s in ss.subsets
                ),
            )
            for ss in pb.subsets
        ),
        sources=tuple(pb.sources),
        filters=tuple(_filter(f) for f in pb.filters),
        clusters=tuple(_cluster_policy(c) for c in pb.clusters),
        telemetry=_telemetry(pb.telemetry) if pb.HasField("telemetry") else TelemetryConfig(),
    )


def _l7_match(pb: l7_pb2.Match) -> Match:
    base = match_from_proto(pb.l4)
    s = string_match_from_proto

    def conditions(cs: Iterable[l7_pb2.HeaderCondition]) -> tuple[HeaderCondition, ...]:
        return tuple(HeaderCondition(c.name, tuple(s(v) for v in c.values)) for c in cs)

    def principals(ps: Iterable[l7_pb2.RequestPrincipal]) -> tuple[RequestPrincipalMatch, ...]:
        return tuple(RequestPrincipalMatch(s(p.issuer), s(p.subject)) for p in ps)

    def claims(cs: Iterable[l7_pb2.ClaimCondition]) -> tuple[ClaimCondition, ...]:
        out = []
        for c in cs:
            if not c.path or not all(c.path):
                raise ConversionError("a claim condition needs a path of non-empty names")
            out.append(ClaimCondition(tuple(c.path), tuple(s(v) for v in c.values)))
        return tuple(out)

    return dataclasses.replace(
        base,
        paths=tuple(s(x) for x in pb.paths),
        not_paths=tuple(s(x) for x in pb.not_paths),
        methods=tuple(s(x) for x in pb.methods),
        not_methods=tuple(s(x) for x in pb.not_methods),
        hosts=tuple(s(x) for x in pb.hosts),
        not_hosts=tuple(s(x) for x in pb.not_hosts),
        headers=conditions(pb.headers),
        not_headers=conditions(pb.not_headers),
        request_principals=principals(pb.request_principals),
        not_request_principals=principals(pb.not_request_principals),
        claims=claims(pb.claims),
        not_claims=claims(pb.not_claims),
    )


def waypoint_policy_from_proto(pb: l7_pb2.HttpAuthorization) -> WaypointPolicy:
    if not pb.name or not pb.namespace:
        raise ConversionError("authorization policy needs a name and a namespace")
    action = _ACTION_NAMES.get(pb.action)
    if action is None:
        raise ConversionError(f"unsupported policy action {pb.action}")
    policy = Authorization(
        name=pb.name,
        namespace=pb.namespace,
        # waypoint policies are attached by target, not by scope
        scope=PolicyScope.WORKLOAD_SELECTOR,
        action=action,
        rules=tuple(
            tuple(tuple(_l7_match(m) for m in clause.matches) for clause in rule.clauses)
            for rule in pb.rules
        ),
        dry_run=pb.dry_run,
    )
    return WaypointPolicy(policy, tuple(pb.services))


def _jwt_rule(pb: l7_pb2.JwtRule) -> JwtRule:
    if not pb.issuer:
        raise ConversionError("a JWT rule needs an issuer")
    if not pb.jwks and not pb.jwks_error:
        raise ConversionError(f"JWT rule for {pb.issuer}: neither keys nor why they are missing")
    names = [h.name for h in pb.from_headers]
    names += [pb.output_payload_to_header] if pb.output_payload_to_header else []
    names += [c.header for c in pb.output_claim_to_headers]
    if not all(names) or any(not c.claim for c in pb.output_claim_to_headers):
        raise ConversionError(f"JWT rule for {pb.issuer}: an empty header or claim name")
    if not all(pb.from_params) or not all(pb.from_cookies):
        raise ConversionError(f"JWT rule for {pb.issuer}: an empty parameter or cookie name")
    return JwtRule(
        issuer=pb.issuer,
        audiences=tuple(pb.audiences),
        jwks=pb.jwks,
        jwks_error=pb.jwks_error,
        forward_original_token=pb.forward_original_token,
        output_payload_to_header=pb.output_payload_to_header.lower(),
        output_claim_to_headers=tuple(
            ClaimToHeader(c.header.lower(), c.claim) for c in pb.output_claim_to_headers
        ),
        from_headers=tuple(JwtHeader(h.name.lower(), h.prefix) for h in pb.from_headers),
        from_params=tuple(pb.from_params),
        from_cookies=tuple(pb.from_cookies),
        space_delimited_claims=tuple(pb.space_delimited_claims),
        origin=pb.origin,
    )


def authentication_from_proto(pb: l7_pb2.HttpAuthentication) -> WaypointAuthentication:
    if not pb.name or not pb.namespace:
        raise ConversionError("request authentication needs a name and a namespace")
    return WaypointAuthentication(
        name=pb.name,
        namespace=pb.namespace,
        rules=tuple(_jwt_rule(r) for r in pb.rules),
        services=tuple(pb.services),
    )


_L7Object = HttpService | WaypointPolicy | WaypointAuthentication


def encode_l7_resource(type_url: str, name: str, obj: _L7Object) -> EncodedResource:
    """Encode an HttpService, a WaypointPolicy or a WaypointAuthentication as a Delta xDS
    `Resource` named `name`.

    Raises `ConversionError` if the object does not fit the wire types.
    """
    message: l7_pb2.HttpService | l7_pb2.HttpAuthorization | l7_pb2.HttpAuthentication
    try:
        if type_url == HTTP_SERVICE_TYPE and isinstance(obj, HttpService):
            message = http_service_to_proto(obj)
        elif type_url == WAYPOINT_POLICY_TYPE and isinstance(obj, WaypointPolicy):
            message = waypoint_policy_to_proto(obj)
        elif type_url == AUTHENTICATION_TYPE and isinstance(obj, WaypointAuthentication):
            message = authentication_to_proto(obj)
        else:
            raise ConversionError(f"a {type(obj).__name__} is not a {type_url} resource")
    except (ValueError, TypeError) as e:  # out-of-range integers, unencodable configuration
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"cannot encode: {e}") from None
    return encode_message(type_url, name, message)


def _decode_http_service(payload: bytes) -> tuple[object, str]:
    obj = http_service_from_proto(l7_pb2.HttpService.FromString(payload))
    return obj, obj.key


def _decode_waypoint_policy(payload: bytes) -> tuple[object, str]:
    obj = waypoint_policy_from_proto(l7_pb2.HttpAuthorization.FromString(payload))
    return obj, obj.key


def _decode_authentication(payload: bytes) -> tuple[object, str]:
    obj = authentication_from_proto(l7_pb2.HttpAuthentication.FromString(payload))
    return obj, obj.key


L7_DECODERS: Mapping[str, PayloadDecoder] = {
    HTTP_SERVICE_TYPE: _decode_http_service,
    WAYPOINT_POLICY_TYPE: _decode_waypoint_policy,
    AUTHENTICATION_TYPE: _decode_authentication,
}
