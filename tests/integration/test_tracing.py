"""Spans from the HTTP engine to a real collector on loopback: the proxy on h11 and curl, the
OpenTelemetry SDK exporting over OTLP/gRPC and Zipkin JSON v2, and a collector that decodes
them with the official `opentelemetry-proto` messages (tests/collector.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.collector import Collector
from tests.integration.http_support import H1Upstream, StaticResolver, run_proxy
from ztunnel_py.http.filter import RequestContext
from ztunnel_py.http.filters.tracing import TracingFilter, parse_traceparent
from ztunnel_py.model.http import Backend, Route
from ztunnel_py.model.telemetry import (
    CustomTag,
    CustomTagKind,
    ProviderKind,
    TracingConfig,
    TracingProvider,
)
from ztunnel_py.telemetry.spans import AttributeValue, SpanExporters

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector("127.0.0.1:0", "127.0.0.1:0").start()
    try:
        yield c
    finally:
        c.stop()


def provider(kind: ProviderKind, collector: Collector) -> TracingProvider:
    port = collector.otlp_port if kind is ProviderKind.OPENTELEMETRY else collector.zipkin_port
    return TracingProvider("collector", kind, "observability/collector", port)


def app_tags(ctx: RequestContext) -> dict[str, AttributeValue]:
    return {"istio.source_workload": "web-1"}


@asynccontextmanager
async def traced_proxy(
    nursery: trio.Nursery, config: TracingConfig, exporters: SpanExporters
) -> AsyncIterator[str]:
    upstream = await H1Upstream().serve(nursery)
    tracing = TracingFilter(config, spans=exporters, tags=app_tags)
    resolver = StaticResolver(
        [Route("r", backends=(Backend("test/h1", 80),))], {"test/h1": [(upstream.address, False)]}
    )
    async with run_proxy(resolver, [tracing]) as put:
        yield put.url


async def curl(url: str, *headers: str) -> tuple[int, str]:
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
    for h in headers:
        argv += ["-H", h]
    done = await trio.run_process([*argv, url], capture_stdout=True, check=False)
    return done.returncode, done.stdout.decode()


def exporters_to(collector: Collector) -> SpanExporters:
    def resolve(p: TracingProvider) -> list[str]:
        return [f"127.0.0.1:{p.port}"]

    return SpanExporters("waypoint.apps", resolve)


@pytest.mark.parametrize("kind", [ProviderKind.OPENTELEMETRY, ProviderKind.ZIPKIN])
async def test_a_sampled_request_is_one_server_span_under_the_callers_span(
    nursery: trio.Nursery, collector: Collector, kind: ProviderKind
) -> None:
    os.environ["ZT_TEST_TAG"] = "from-env"
    config = TracingConfig(
        provider=provider(kind, collector),
        sampling=0.0,
        custom_tags=(
            CustomTag("team", CustomTagKind.LITERAL, "mesh"),
            CustomTag("tenant", CustomTagKind.HEADER, "x-tenant", "none"),
            CustomTag("region", CustomTagKind.ENVIRONMENT, "ZT_TEST_TAG"),
        ),
    )
    exporters = exporters_to(collector)
    async with traced_proxy(nursery, config, exporters) as url:
        # the caller's decision (sampled) wins over the configured 0%
        code, status = await curl(
            f"{url}/status/503",
            f"traceparent: 00-{TRACE}-{CLIENT_SPAN}-01",
            "x-request-id: req-1",
            "x-tenant: blue",
        )
    assert (code, status) == (0, "503")
    await trio.to_thread.run_sync(exporters.shutdown)
    (span,) = collector.spans
    assert span["via"] == ("otlp" if kind is ProviderKind.OPENTELEMETRY else "zipkin")
    assert (span["trace_id"], span["parent_id"], span["kind"]) == (TRACE, CLIENT_SPAN, "SERVER")
    assert span["name"] == "front:80/*" and span["service"] == "waypoint.apps"
    tags = span["attributes"]
    assert tags["guid:x-request-id"] == "req-1"
    assert tags["http.method"] == "GET" and tags["http.url"].endswith("/status/503")
    # Zipkin's `error` tag carries the reason, OTLP's says true
    assert tags["http.status_code"] == "503" and tags["error"] in ("true", "status 503")
    assert tags["upstream_cluster"] == "outbound|80||h1"
    assert tags["component"] == "proxy" and tags["http.protocol"] == "HTTP/1.1"
    assert tags["istio.source_workload"] == "web-1"
    assert (tags["team"], tags["tenant"], tags["region"]) == ("mesh", "blue", "from-env")


async def test_the_upstream_sees_the_spans_id_and_new_traces_are_sampled_as_configured(
    nursery: trio.Nursery, collector: Collector
) -> None:
    upstream = await H1Upstream().serve(nursery)
    config = TracingConfig(provider(ProviderKind.OPENTELEMETRY, collector), sampling=100.0)
    exporters = exporters_to(collector)
    resolver = StaticResolver(
        [Route("r", backends=(Backend("test/h1", 80),))], {"test/h1": [(upstream.address, False)]}
    )
    tracing = TracingFilter(config, spans=exporters)
    async with run_proxy(resolver, [tracing]) as put:
        assert await curl(f"{put.url}/echo") == (0, "200")
        # an unsampled caller is not reported, whatever the percentage
        await curl(f"{put.url}/echo", f"traceparent: 00-{TRACE}-{CLIENT_SPAN}-00")
    await trio.to_thread.run_sync(exporters.shutdown)
    (span,) = collector.spans
    assert span["parent_id"] == ""
    sent = upstream.requests[0][2]
    parsed = parse_traceparent(sent["traceparent"])
    assert parsed == (span["trace_id"], span["span_id"], True)
    assert sent["x-b3-spanid"] == span["span_id"] and sent["x-b3-sampled"] == "1"


async def test_sampling_zero_reports_nothing(nursery: trio.Nursery, collector: Collector) -> None:
    config = TracingConfig(provider(ProviderKind.ZIPKIN, collector), sampling=0.0)
    exporters = exporters_to(collector)
    async with traced_proxy(nursery, config, exporters) as url:
        for _ in range(20):
            assert await curl(f"{url}/echo") == (0, "200")
    await trio.to_thread.run_sync(exporters.shutdown)
    assert collector.spans == []
