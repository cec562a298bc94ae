"""The metric checks of one analysis step: Flagger's built-in Istio queries, asked of Prometheus,
each value judged against its threshold range.

The built-ins are Flagger's queries for Istio, with the ambient mesh's reporter: the waypoint is
where requests are measured at L7 (`reporter="waypoint"`, where Flagger's sidecar mode reads
`reporter="destination"`). Flagger tells its two releases apart by Deployment
(`destination_workload=~"<name>"` against `<name>-primary`); here both releases are pods of one
Service, so the canary is selected the way Istio names a release: its canonical service (the
pods' `app` label, which the target Service's name is) and canonical revision (their
`version` label):

    request-success-rate  sum(rate(istio_requests_total{SEL, response_code!~"5.*"}[I]))
                          / sum(rate(istio_requests_total{SEL}[I])) * 100
    request-duration      histogram_quantile(0.99,
                            sum(rate(istio_request_duration_milliseconds_bucket{SEL}[I])) by (le))

    SEL = reporter="waypoint", destination_workload_namespace="<namespace>",
          destination_canonical_service="<target>",
          destination_canonical_revision="<canary version>"

where I is the metric's `interval`. A metric with a `query` runs that PromQL as written.
Mirrored copies are counted by the waypoint too (with the shadow host as their
`destination_service`), so the shadow phase is measured by the same queries.

A check fails on a value outside its range, and on no value: an empty result or `NaN` (no
request reached the canary in the interval: "probably not receiving traffic", as Flagger says),
or Prometheus not answering (unreachable, refusing the query). Missing data never passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ztunnel_py.canary.analysis import CheckResult
from ztunnel_py.flagger.canary import DURATION_METRIC, SUCCESS_RATE, Canary, MetricCheck
from ztunnel_py.telemetry.promql import PrometheusError, Sample

Query = Callable[[str], Sequence[Sample]]


def selector(canary: Canary) -> str:
    return (
        f'reporter="waypoint", destination_workload_namespace="{canary.namespace}", '
        f'destination_canonical_service="{canary.target}", '
        f'destination_canonical_revision="{canary.canary}"'
    )


def promql(canary: Canary, metric: MetricCheck) -> str:
    """The PromQL a metric check runs."""
    if metric.query is not None:
        return metric.query
    sel, interval = selector(canary), metric.interval
    if metric.name == SUCCESS_RATE:
        return (
            f'sum(rate(istio_requests_total{{{sel}, response_code!~"5.*"}}[{interval}])) / '
            f"sum(rate(istio_requests_total{{{sel}}}[{interval}])) * 100"
        )
    if metric.name == DURATION_METRIC:
        return (
            "histogram_quantile(0.99, sum(rate("
            f"istio_request_duration_milliseconds_bucket{{{sel}}}[{interval}])) by (le))"
        )
    raise ValueError(f"metric {metric.name!r} has no query")


def bounds(metric: MetricCheck) -> str:
    parts = [f"{k} {v:g}" for k, v in (("min", metric.min), ("max", metric.max)) if v is not None]
    return ", ".join(parts)


def check(canary: Canary, metric: MetricCheck, query: Query) -> CheckResult:
    """Run one metric's query and judge its value."""
    result = CheckResult(metric.name, None, metric.unit, bounds(metric))
    try:
        samples = query(promql(canary, metric))
    except PrometheusError as e:
        return _failed(result, f"not measured: {e}")
    values = [s.value for s in samples if not s.missing]
    if not values:
        return _failed(
            result,
            f"no values found: probably {canary.target}.{canary.namespace} version "
            f"{canary.canary} is not receiving traffic",
        )
    value = values[0]
    verdict = metric.verdict(value)
    return _with(result, value, verdict)


def _failed(result: CheckResult, why: str) -> CheckResult:
    return _with(result, None, why)


def _with(result: CheckResult, value: float | None, failure: str | None) -> CheckResult:
    return CheckResult(result.metric, value, result.unit, result.bounds, failure)


def measure(canary: Canary, query: Query) -> list[CheckResult]:
    """Every metric of the analysis, each measured (a failure does not hide the others)."""
    return [check(canary, m, query) for m in canary.analysis.metrics]
