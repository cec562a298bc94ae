"""Observability end to end on one shared ambient testbed with a waypoint: distributed traces,
the Telemetry resource for the waypoint's metrics and access log.

Namespace `apps` uses the waypoint; a trace collector (tests/collector.py: OTLP/gRPC decoded
with `opentelemetry-proto`, and a Zipkin JSON v2 receiver) runs in pod `curl-2` behind the
Service `collector.clients`; MeshConfig's `extensionProviders` (the ConfigMap `istio`) name it,
and a root-namespace `Telemetry` picks the provider and the sampling. An instrumented client in
`web-1` (the OpenTelemetry SDK, exporting its own span to the same collector) calls `echo`:
client -> node agent -> waypoint -> node agent -> echo pod.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.test_waypoint import (
    ECHO_VIP,
    log_of,
    wait_until,
    waypoint,
    waypoint_metrics,
    waypoint_testbed,
)
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

COLLECTOR_POD = "curl-2"
COLLECTOR = """\
apiVersion: v1
kind: Service
metadata: {name: collector, namespace: clients}
spec:
  selector: {app: curl}
  ports: [{name: grpc-otlp, port: 4317}, {name: http-zipkin, port: 9411}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: otel
      opentelemetry: {service: collector.clients.svc.cluster.local, port: 4317}
    - name: zipkin
      zipkin: {service: clients/collector.clients.svc.cluster.local, port: 9411}
"""


def tracing(provider: str, sampling: float) -> str:
    return f"""\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {sampling}
    customTags: {{test: {{literal: {{value: observability}}}}}}
"""


# An application instrumented with the OpenTelemetry SDK: one client span around one request to
# echo, the W3C context injected into it, the span exported to the collector over OTLP.
# Prints the status, the client span's ids and the headers echo received.
INSTRUMENTED_CLIENT = r"""
import http.client, json, sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
collector, vip, path = sys.argv[1], sys.argv[2], sys.argv[3]
provider = TracerProvider(resource=Resource.create({"service.name": "web.apps"}))
exporter = OTLPSpanExporter(endpoint=collector, insecure=True)
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("web")
with tracer.start_as_current_span("GET " + path, kind=trace.SpanKind.CLIENT) as span:
    headers = {}
    inject(headers)
    conn = http.client.HTTPConnection(vip, 80, timeout=10)
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    seen = json.loads(r.read())["headers"]
    ids = span.get_span_context()
provider.shutdown()
print(json.dumps({"status": r.status, "trace_id": f"{ids.trace_id:032x}",
                  "span_id": f"{ids.span_id:016x}", "seen": seen}))
"""


class Spans:
    """What the collector in the testbed received (one JSON line per span)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        text = self.path.read_text() if self.path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for(
        self, what: str, check: Any, within: float = 20.0, poke: Any = None
    ) -> list[dict[str, Any]]:
        """The spans `check` picks, once it picks some (the waypoint exports every 5 s);
        `poke` runs before each look (a request that should cause one)."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            nonlocal found
            if poke is not None:
                poke()
            found = [s for s in self.all() if check(s)]
            return bool(found)

        wait_until(ready, what, within=within)
        return found


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from waypoint_testbed("obs", pods_per_node=2)


@pytest.fixture(scope="module")
def spans(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spans]:
    out = tmp_path_factory.mktemp("collector") / "spans.jsonl"
    collector = Path(__file__).resolve().parent.parent / "collector.py"
    proc = subprocess.Popen(
        bed.exec_argv(COLLECTOR_POD, [sys.executable, str(collector), "--out", str(out)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "collecting"
        bed.apply(COLLECTOR)
        yield Spans(out)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def collector_ip(bed: Testbed) -> str:
    (pod,) = [p for p in bed.status().pods if p.name == COLLECTOR_POD]
    return pod.ip


def instrumented_request(bed: Testbed, path: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", INSTRUMENTED_CLIENT, f"{collector_ip(bed)}:4317", ECHO_VIP, path]
    done = bed.exec("web-1", argv, timeout=60)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def echo_saw(bed: Testbed, path: str) -> dict[str, str]:
    done = bed.exec("web-1", ["curl", "-sS", "--max-time", "10", f"http://{ECHO_VIP}{path}"])
    assert done.returncode == 0, done.stderr
    seen: dict[str, str] = json.loads(done.stdout)["headers"]
    return seen


def test_one_request_is_one_trace_from_the_client_through_the_waypoint(
    bed: Testbed, spans: Spans
) -> None:
    bed.apply(tracing("otel", 100))
    # the collector gets spans once the waypoint has the Telemetry
    spans.wait_for(
        "the waypoint's first span",
        lambda s: s["service"] == "waypoint.apps",
        poke=lambda: echo_saw(bed, "/warm"),
    )
    answer = instrumented_request(bed, "/traced")
    assert answer["status"] == 200
    trace_id, client_span = answer["trace_id"], answer["span_id"]
    wait_until(
        lambda: len([s for s in spans.all() if s["trace_id"] == trace_id]) == 2,
        "both spans of the trace",
        within=20,
    )
    trace = [s for s in spans.all() if s["trace_id"] == trace_id]
    by_service = {s["service"]: s for s in trace}
    assert set(by_service) == {"web.apps", "waypoint.apps"}, trace
    client, server = by_service["web.apps"], by_service["waypoint.apps"]
    # the client's span is the root, the waypoint's its child
    assert (client["span_id"], client["parent_id"], client["kind"]) == (client_span, "", "CLIENT")
    assert (server["parent_id"], server["kind"], server["via"]) == (client_span, "SERVER", "otlp")
    assert server["name"] == "echo.apps.svc.cluster.local:80/*"
    # the app behind the waypoint is the waypoint span's child: echo got its id
    seen = answer["seen"]
    assert seen["traceparent"] == f"00-{trace_id}-{server['span_id']}-01"
    assert seen["x-b3-parentspanid"] == client_span
    tags = server["attributes"]
    assert tags["http.status_code"] == "200" and tags["http.url"].endswith("/traced")
    assert tags["guid:x-request-id"] == seen["x-request-id"]
    assert tags["upstream_cluster"] == "outbound|80||echo.apps.svc.cluster.local"
    assert tags["upstream_address"].split(":")[0] in {p.ip for p in bed.status().pods}
    assert tags["peer.address"].startswith(
        next(p.ip for p in bed.status().pods if p.name == "web-1")
    )
    assert (tags["istio.source_workload"], tags["istio.source_namespace"]) == ("web-1", "apps")
    assert tags["istio.source_principal"] == "spiffe://cluster.local/ns/apps/sa/web"
    assert tags["istio.destination_workload"] in {"echo-1", "echo-2"}
    assert tags["istio.namespace"] == "apps" and tags["test"] == "observability"


def test_zipkin_receives_new_traces_and_sampling_zero_emits_none(
    bed: Testbed, spans: Spans
) -> None:
    bed.apply(tracing("zipkin", 100))
    # a request without trace context starts a new trace at the waypoint, sampled (100%)
    zipkin = spans.wait_for(
        "a Zipkin span", lambda s: s["via"] == "zipkin", poke=lambda: echo_saw(bed, "/zipkin")
    )
    span = zipkin[-1]
    assert span["parent_id"] == "" and span["kind"] == "SERVER"
    assert span["service"] == "waypoint.apps"
    # sampling 0%: echo sees an unsampled trace, and nothing reaches the collector
    bed.apply(tracing("zipkin", 0))
    wait_until(lambda: echo_saw(bed, "/off").get("x-b3-sampled") == "0", "sampling 0%")
    ids = {echo_saw(bed, f"/unsampled/{i}")["x-request-id"] for i in range(20)}
    # then one sampled request: once its span arrives, anything sent before it would have too
    bed.apply(tracing("zipkin", 100))
    wait_until(lambda: echo_saw(bed, "/on").get("x-b3-sampled") == "1", "sampling 100%")
    marker = echo_saw(bed, "/marker")["x-request-id"]
    spans.wait_for("the marker span", lambda s: s["attributes"].get("guid:x-request-id") == marker)
    reported = {s["attributes"].get("guid:x-request-id") for s in spans.all()}
    assert not ids & reported


WAYPOINT_TELEMETRY = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: waypoint, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides: {x_user: {value: "request.headers['x-user']"}}
    - match: {metric: REQUEST_SIZE}
      disabled: true
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
"""


def family_total(text: str, family: str, *needles: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(family + "{") and all(n in line for n in needles)
    )


def test_telemetry_relabels_disables_metrics_and_filters_the_access_log(bed: Testbed) -> None:
    def get(path: str, *headers: str) -> None:
        argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", "10"]
        for h in headers:
            argv += ["-H", h]
        assert bed.exec("web-1", [*argv, f"http://{ECHO_VIP}{path}"]).returncode == 0

    bed.apply(WAYPOINT_TELEMETRY)
    try:
        # the request count gains a label from the request's header
        def labelled() -> bool:
            get("/labelled", "x-user: bob")
            return 'x_user="bob"' in waypoint_metrics(bed)

        wait_until(labelled, "the x_user label")
        before = waypoint_metrics(bed)
        for i in range(5):
            get(f"/counted/{i}", "x-user: carol")
        get("/status/418")
        after = waypoint_metrics(bed)
        count = "istio_requests_total"
        assert family_total(after, count, 'x_user="carol"') == 5
        assert family_total(after, count) == family_total(before, count) + 6
        # REQUEST_SIZE is off for these requests, the other histograms still count them
        sizes = "istio_request_bytes_count"
        durations = "istio_request_duration_milliseconds_count"
        assert family_total(after, sizes) == family_total(before, sizes)
        assert family_total(after, durations) == family_total(before, durations) + 6
        # the access log keeps the 418 and none of the 200s
        logged = log_of(waypoint(bed).log)
        assert 'path="/status/418"' in logged
        assert 'path="/counted/' not in logged
    finally:
        bed.delete(WAYPOINT_TELEMETRY)
