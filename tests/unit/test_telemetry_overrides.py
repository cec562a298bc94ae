"""A service's Telemetry applied to its requests' metrics and access log lines: families
disabled, labels removed and set from expressions, the access log filtered."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ztunnel_py.http.filter import Downstream, RequestContext
from ztunnel_py.http.filters.telemetry import TelemetryFilter
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
from ztunnel_py.model import Identity
from ztunnel_py.model.telemetry import (
    AccessLogConfig,
    MetricOverride,
    MetricsConfig,
    TagOverride,
    TelemetryConfig,
)
from ztunnel_py.telemetry.requests import Peer, RequestMetrics

WEB = Identity("cluster.local", "apps", "web")


def finished(status: int, **headers: str) -> RequestContext:
    head = RequestHead("GET", "/items", "echo.apps:80", Headers(headers.items()))
    ctx = RequestContext(head, Downstream(WEB, "10.244.1.11:40000", "10.96.0.10:80"))
    ctx.response = ResponseHead(status)
    ctx.service = "apps/echo.apps.svc.cluster.local"
    return ctx


def served(config: TelemetryConfig, *requests: RequestContext) -> str:
    registry = CollectorRegistry()
    f = TelemetryFilter(
        RequestMetrics(registry),
        reporter="waypoint",
        source=lambda ctx: Peer(workload="web-1"),
        destination=lambda ctx: Peer(workload="echo-1"),
        service=lambda ctx: None,
        config=config,
    )
    for ctx in requests:
        f.on_log(ctx)
    return generate_latest(registry).decode()


def series(text: str, family: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(family + "{")]


def test_tags_are_removed_and_set_from_the_request_and_a_family_disabled() -> None:
    tags = (
        TagOverride("request_protocol", remove=True),
        TagOverride("x_user", value="request.headers['x-user']"),
        TagOverride("response_code", value="response.code >= 500 ? 'server-error' : 'ok'"),
    )
    config = TelemetryConfig(
        metrics=MetricsConfig(
            overrides=(
                MetricOverride("REQUEST_COUNT", tags=tags),
                MetricOverride("REQUEST_SIZE", disabled=True),
            )
        )
    )
    text = served(config, finished(200, **{"x-user": "alice"}), finished(503))
    counts = series(text, "istio_requests_total")
    assert len(counts) == 2
    alice = next(line for line in counts if 'x_user="alice"' in line)
    other = next(line for line in counts if 'x_user=""' in line)
    assert 'request_protocol=""' in alice and 'response_code="ok"' in alice
    assert 'response_code="server-error"' in other
    assert series(text, "istio_request_bytes_bucket") == []
    # families without overrides keep Istio's labels as they are
    duration = series(text, "istio_request_duration_milliseconds_count")
    assert all('request_protocol="http"' in line and "x_user" not in line for line in duration)


def test_metrics_off_reports_nothing() -> None:
    text = served(TelemetryConfig(metrics=MetricsConfig(enabled=False)), finished(200))
    assert series(text, "istio_requests_total") == []


@pytest.mark.parametrize(
    ("access_log", "levels"),
    [
        (AccessLogConfig(), ["INFO", "WARNING"]),
        # only the 503 (logged as a warning, as every 5xx is)
        (AccessLogConfig(filter="response.code >= 400"), ["WARNING"]),
        (AccessLogConfig(enabled=False), []),
    ],
)
def test_the_access_log_follows_its_filter(
    access_log: AccessLogConfig, levels: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    served(TelemetryConfig(access_log=access_log), finished(200), finished(503))
    logged = [r.levelname for r in caplog.records if r.getMessage() == "request complete"]
    assert logged == levels


def test_without_a_telemetry_every_request_is_counted_under_its_peers_and_outcome() -> None:
    """The label values a filter remembers per peers and outcome follow each request: a new
    peer object (the source's workload changed) and a new status make new series."""
    registry = CollectorRegistry()
    peers = iter([Peer(workload="web-1"), Peer(workload="web-1"), Peer(workload="web-2")])
    source = next(peers)

    def source_of(ctx: RequestContext) -> Peer:
        return source

    f = TelemetryFilter(
        RequestMetrics(registry),
        reporter="waypoint",
        source=source_of,
        destination=lambda ctx: Peer(workload="echo-1"),
        service=lambda ctx: None,
    )
    f.on_log(finished(200))
    f.on_log(finished(200))
    f.on_log(finished(503))
    source = next(peers)  # an equal peer, made again
    f.on_log(finished(200))
    source = next(peers)
    f.on_log(finished(200))
    counts = {
        (line.split('source_workload="')[1].split('"')[0], line.split('response_code="')[1][:3]): (
            line.rsplit(" ", 1)[1]
        )
        for line in series(generate_latest(registry).decode(), "istio_requests_total")
    }
    assert counts == {("web-1", "200"): "3.0", ("web-1", "503"): "1.0", ("web-2", "200"): "1.0"}
