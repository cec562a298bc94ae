"""Istio's HTTP request metrics, as an Envoy waypoint reports them (the `istio_stats` filter).

Families: `istio_requests_total` (counter), `istio_request_duration_milliseconds`,
`istio_request_bytes` and `istio_response_bytes` (histograms on Envoy's default buckets, so
Istio's dashboards' `histogram_quantile` queries work unchanged). Labels and their fill rules:

- `reporter` is `waypoint` at a waypoint (`destination` for a sidecar's inbound side);
- `source_*` describe the client workload (its agent's peer metadata, else the workload found
  by the client's address), `source_principal` its mTLS identity; unknown values are `unknown`
  (`source_canonical_revision` falls back to `latest`, as Envoy's does);
- `destination_*` describe the endpoint that served the request, `destination_service*` the
  service it was addressed to;
- `request_protocol` is `grpc` for `application/grpc*` requests, else `http`;
  `response_code` the status sent (`0` if none); `grpc_response_status` the gRPC status for gRPC
  requests, else empty; `response_flags` Envoy's short flags (`-` when none);
  `connection_security_policy` `mutual_tls` when the client presented a certificate, else
  `none`.

Request and response sizes are wire bytes (heads and bodies), as Envoy's meters count them.
Like `metrics.py`, one custom collector serves plain counters (no lock on the data path).

A service's Telemetry overrides (`MetricOverrides`, compiled once per configuration) may
disable a family for its requests, remove a label (an empty value: in Prometheus the same as
no label) or set one from a CEL expression over the request's attributes; a label that is not
one of Istio's becomes an extra label of that family (empty on the series without it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ztunnel_py.model import Identity, Service, Workload
from ztunnel_py.model.telemetry import METRICS, MetricsConfig
from ztunnel_py.telemetry import cel
from ztunnel_py.telemetry.labels import UNKNOWN

__all__ = [
    "DEFAULT_BUCKETS",
    "REQUEST_LABEL_NAMES",
    "LabelValues",
    "MetricOverrides",
    "RequestLabels",
    "RequestMetrics",
]

# Envoy's default histogram buckets (HistogramSettingsImpl::defaultBuckets).
DEFAULT_BUCKETS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)

REQUEST_LABEL_NAMES = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)


def _v(value: str) -> str:
    return value or UNKNOWN


def _short_name(host: str) -> str:
    """`destination_service_name` without a known service: the host up to its first dot."""
    return host.split(".", 1)[0] if host != UNKNOWN else UNKNOWN


@dataclass(frozen=True, slots=True)
class Peer:
    """What is known of one side of a request."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN
    cluster: str = UNKNOWN

    @classmethod
    def of(cls, workload: Workload | None, identity: Identity | None) -> Peer:
        principal = str(identity) if identity is not None else UNKNOWN
        if workload is None:
            return cls(
                namespace=identity.namespace if identity is not None else UNKNOWN,
                principal=principal,
            )
        return cls(
            workload=_v(workload.workload_name),
            namespace=_v(workload.namespace),
            principal=principal if identity is not None else str(workload.identity),
            app=_v(workload.canonical_name),
            version=_v(workload.canonical_revision),
            canonical_service=_v(workload.canonical_name),
            canonical_revision=_v(workload.canonical_revision),
            cluster=_v(workload.cluster_id),
        )

    @classmethod
    def from_baggage(cls, baggage: dict[str, str], identity: Identity | None) -> Peer:
        """From an HBONE `baggage` header's members (ztunnel's peer metadata)."""
        workload = next(
            (
                v
                for k, v in baggage.items()
                if k.startswith("k8s.")
                and k.endswith(".name")
                and k not in ("k8s.namespace.name", "k8s.cluster.name")
            ),
            "",
        )
        return cls(
            workload=_v(workload),
            namespace=identity.namespace
            if identity is not None
            else _v(baggage.get("k8s.namespace.name", "")),
            principal=str(identity) if identity is not None else UNKNOWN,
            app=_v(baggage.get("service.name", "")),
            version=_v(baggage.get("service.version", "")),
            canonical_service=_v(baggage.get("service.name", "")),
            canonical_revision=baggage.get("service.version") or "latest",
            cluster=_v(baggage.get("k8s.cluster.name", "")),
        )


@dataclass(frozen=True, slots=True)
class RequestLabels:
    reporter: str
    source: Peer
    destination: Peer
    service: Service | None
    service_host: str
    request_protocol: str
    response_code: int
    grpc_response_status: str
    response_flags: str
    mtls: bool

    def values(self) -> tuple[str, ...]:
        src, dst, svc = self.source, self.destination, self.service
        host = svc.hostname if svc is not None else (self.service_host or UNKNOWN)
        return (
            self.reporter,
            src.workload,
            src.canonical_service,
            src.canonical_revision,
            src.namespace,
            src.principal,
            src.app,
            src.version,
            src.cluster,
            dst.workload,
            dst.namespace,
            dst.principal,
            dst.app,
            dst.version,
            host,
            dst.canonical_service,
            dst.canonical_revision,
            svc.name
            if svc is not None
            else (host.split(".", 1)[0] if host != UNKNOWN else UNKNOWN),
            svc.namespace if svc is not None else UNKNOWN,
            dst.cluster,
            self.request_protocol,
            str(self.response_code),
            self.grpc_response_status,
            self.response_flags,
            "mutual_tls" if self.mtls else "none",
        )


class LabelValues:
    """`RequestLabels.values` remembered: a waypoint's requests come from few peers, to few
    services, with few outcomes, and each tuple of 25 values would otherwise be built anew per
    request. The peers and the service are kept by identity (the app makes each once, hashing
    them would cost more than the values); a size bound keeps a churning mesh from growing it."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[object, ...], tuple[Peer, Peer, Service | None, tuple[str, ...]]]
        self._known = {}

    def values(
        self,
        reporter: str,
        source: Peer,
        destination: Peer,
        service: Service | None,
        service_host: str,
        request_protocol: str,
        response_code: int,
        grpc_response_status: str,
        response_flags: str,
        mtls: bool,
    ) -> tuple[str, ...]:
        outcome = (
            service_host,
            request_protocol,
            response_code,
            grpc_response_status,
            response_flags,
            mtls,
        )
        key = (id(source), id(destination), id(service), reporter, *outcome)
        known = self._known.get(key)
        if (
            known is not None
            and known[0] is source
            and known[1] is destination
            and known[2] is service
        ):
            return known[3]
        values = RequestLabels(reporter, source, destination, service, *outcome).values()
        if len(self._known) >= _MAX_LABEL_SETS:
            self._known.clear()
        self._known[key] = (source, destination, service, values)
        return values


_MAX_LABEL_SETS = 4096

# A series: Istio's label values, then (name, value) of extra labels (usually none).
SeriesKey = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]
_INDEX = {name: i for i, name in enumerate(REQUEST_LABEL_NAMES)}


def _label_set(keys: Iterable[SeriesKey]) -> tuple[str, ...]:
    """The family's label names: Istio's, then every extra one its series carry."""
    extra = sorted({name for _, extras in keys for name, _ in extras})
    return (*REQUEST_LABEL_NAMES, *extra)


def _label_values(key: SeriesKey, names: tuple[str, ...]) -> list[str]:
    values, extras = key
    found = dict(extras)
    return [*values, *(found.get(n, "") for n in names[len(REQUEST_LABEL_NAMES) :])]


class MetricOverrides:
    """A service's Telemetry metric overrides, compiled: per family, disabled or its label
    operations in order."""

    def __init__(self, config: MetricsConfig) -> None:
        self.enabled = config.enabled
        ops: dict[str, dict[str, cel.Expression | None]] = {}
        self.disabled: set[str] = set()
        for o in config.overrides:
            family = METRICS[o.metric]
            if o.disabled:
                self.disabled.add(family)
            else:
                self.disabled.discard(family)
            for tag in o.tags:
                ops.setdefault(family, {})[tag.name] = None if tag.remove else cel.parse(tag.value)
        self.ops = ops

    def key(self, family: str, values: tuple[str, ...], lookup: cel.Lookup) -> SeriesKey | None:
        """The family's series for a request with Istio's label `values` (None: disabled)."""
        if family in self.disabled:
            return None
        ops = self.ops.get(family)
        if not ops:
            return values, ()
        out = list(values)
        extras: list[tuple[str, str]] = []
        for name, expression in ops.items():
            value = "" if expression is None else expression.evaluate(lookup)
            text = "" if value is None else _text(value)
            if name in _INDEX:
                out[_INDEX[name]] = text
            else:
                extras.append((name, text))
        return tuple(out), tuple(sorted(extras))


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class _Histogram:
    __slots__ = ("buckets", "doc", "name", "series")

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.buckets = tuple(buckets)
        # series -> [count per bucket (+Inf last)..., sum]
        self.series: dict[SeriesKey, list[float]] = {}

    def observe(self, key: SeriesKey, amount: float) -> None:
        cell = self.series.get(key)
        if cell is None:
            cell = self.series[key] = [0.0] * (len(self.buckets) + 2)
        cell[bisect.bisect_left(self.buckets, amount)] += 1
        cell[-1] += amount

    def metric(self, with_samples: bool = True) -> Metric:
        series = list(self.series.items()) if with_samples else []
        names = _label_set(k for k, _ in series)
        family = HistogramMetricFamily(self.name, self.doc, labels=names)
        for key, cell in series:
            cumulative = 0.0
            out: list[tuple[str, float]] = []
            for bound, count in zip((*self.buckets, float("inf")), cell[:-1], strict=True):
                cumulative += count
                out.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric(_label_values(key, names), out, sum_value=cell[-1])
        return family


class RequestMetrics:
    """The request families on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[SeriesKey, list[int]] = {}
        self._duration = _Histogram(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            DEFAULT_BUCKETS,
        )
        self._request_bytes = _Histogram(
            "istio_request_bytes", "Request size in bytes", DEFAULT_BUCKETS
        )
        self._response_bytes = _Histogram(
            "istio_response_bytes", "Response size in bytes", DEFAULT_BUCKETS
        )
        registry.register(self)

    def record(
        self,
        labels: RequestLabels,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        overrides: tuple[MetricOverrides, cel.Lookup] | None = None,
    ) -> None:
        """One request; `overrides` (with the request's attributes) as its Telemetry says."""
        self.record_values(labels.values(), duration_ms, request_bytes, response_bytes, overrides)

    def record_values(
        self,
        values: tuple[str, ...],
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        overrides: tuple[MetricOverrides, cel.Lookup] | None = None,
    ) -> None:
        """`record` with the labels' `values` (e.g. from `LabelValues`)."""
        if overrides is None:
            plain: SeriesKey = (values, ())
            keys: list[SeriesKey | None] = [plain, plain, plain, plain]
        else:
            compiled, lookup = overrides
            if not compiled.enabled:
                return
            keys = [compiled.key(f, values, lookup) for f in METRICS.values()]
        count_key, duration_key, request_key, response_key = keys
        if count_key is not None:
            cell = self._requests.get(count_key)
            if cell is None:
                cell = self._requests[count_key] = [0]
            cell[0] += 1
        if duration_key is not None:
            self._duration.observe(duration_key, duration_ms)
        if request_key is not None:
            self._request_bytes.observe(request_key, request_bytes)
        if response_key is not None:
            self._response_bytes.observe(response_key, response_bytes)

    def collect(self) -> Iterable[Metric]:
        return self._families(True)

    def describe(self) -> Iterable[Metric]:
        return self._families(False)

    def _families(self, with_samples: bool) -> list[Metric]:
        series = list(self._requests.items()) if with_samples else []
        names = _label_set(k for k, _ in series)
        requests = CounterMetricFamily("istio_requests_total", "Total requests", labels=names)
        for key, cell in series:
            requests.add_metric(_label_values(key, names), cell[0])
        return [
            requests,
            self._duration.metric(with_samples),
            self._request_bytes.metric(with_samples),
            self._response_bytes.metric(with_samples),
        ]
