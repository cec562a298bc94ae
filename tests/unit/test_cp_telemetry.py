"""Tracing configuration as istiod resolves it for a waypoint: MeshConfig (the ConfigMap `istio`
in the root namespace) with its `extensionProviders`, and the Telemetry resources that apply to
a service at its waypoint (root namespace, the waypoint's namespace, the waypoint itself, the
service), then across the wire to the waypoint."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.waypoint_support import (
    documents,
    namespace,
    pod,
    service,
    store_with,
    translation,
    warnings,
    waypoint,
)
from ztunnel_py.model.telemetry import (
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
from ztunnel_py.xds.l7convert import http_service_from_proto, http_service_to_proto

ECHO = "apps/echo.apps.svc.cluster.local"
USE = "istio.io/use-waypoint"
OTEL = TracingProvider(
    "otel", ProviderKind.OPENTELEMETRY, "observability/otel.observability.svc.cluster.local", 4317
)
ZIPKIN = TracingProvider(
    "zipkin",
    ProviderKind.ZIPKIN,
    "observability/zipkin.observability.svc.cluster.local",
    9411,
    path="/custom/spans",
    timeout=2.0,
    headers=(("x-token", "t"),),
)


def mesh_config(mesh: dict[str, Any], ns: str = "istio-system") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ns},
        "data": {"mesh": yaml.safe_dump(mesh)},
    }


PROVIDERS = {
    "extensionProviders": [
        {
            "name": "otel",
            "opentelemetry": {"service": "otel.observability.svc.cluster.local", "port": 4317},
        },
        {
            "name": "zipkin",
            "zipkin": {
                "service": "observability/zipkin.observability.svc.cluster.local",
                "port": 9411,
                "path": "/custom/spans",
                "timeout": "2s",
                "headers": [{"name": "x-token", "value": "t"}],
            },
        },
        {"name": "prom", "prometheus": {}},
    ]
}


def telemetry(name: str, ns: str, spec: dict[str, Any], created: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    api = "telemetry.istio.io/v1"
    return {"apiVersion": api, "kind": "Telemetry", "metadata": meta, "spec": spec}


def collectors() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            service("otel", "observability", "10.96.5.1", ports=[{"name": "grpc", "port": 4317}]),
            service("zipkin", "observability", "10.96.5.2", ports=[{"name": "http", "port": 9411}]),
        ],
    }


def resolved(*objects: dict[str, Any]) -> tuple[TelemetryConfig, list[str]]:
    t, diagnostics = translation(
        documents(namespace("apps", **{USE: "waypoint"}), collectors()),
        waypoint(),
        documents(service("echo"), pod("echo-0", labels={"app": "echo"})),
        documents(*objects) if objects else "",
    )
    return t.http_services[ECHO].telemetry, warnings(diagnostics)


def test_without_any_configuration_context_propagates_and_new_traces_sample_1_percent() -> None:
    config, problems = resolved()
    assert config == TelemetryConfig(TracingConfig(None, 1.0))
    assert problems == []


def test_the_default_provider_and_legacy_sampling_apply_mesh_wide() -> None:
    mesh = {
        **PROVIDERS,
        "defaultProviders": {"tracing": ["otel"]},
        "defaultConfig": {"tracing": {"sampling": 25}},
    }
    config, problems = resolved(mesh_config(mesh))
    assert config.tracing == TracingConfig(OTEL, 25.0)
    assert config.origins == ("MeshConfig istio-system/istio",)
    assert problems == []


def test_legacy_enable_tracing_false_samples_nothing() -> None:
    config, _ = resolved(mesh_config({**PROVIDERS, "enableTracing": False}))
    assert config.tracing == TracingConfig(None, 0.0)


def test_telemetry_levels_override_in_istiods_order() -> None:
    root = telemetry(
        "mesh-default",
        "istio-system",
        {
            "tracing": [
                {
                    "providers": [{"name": "otel"}],
                    "randomSamplingPercentage": 10,
                    "customTags": {
                        "team": {"literal": {"value": "mesh"}},
                        "tenant": {"header": {"name": "x-tenant", "defaultValue": "none"}},
                    },
                }
            ]
        },
    )
    ns = telemetry("apps-wide", "apps", {"tracing": [{"randomSamplingPercentage": 50}]})
    gw = telemetry(
        "waypoint",
        "apps",
        {
            "targetRefs": [
                {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
            ],
            "tracing": [{"providers": [{"name": "ZIPKIN"}]}],
        },
    )
    config, problems = resolved(mesh_config(PROVIDERS), root, ns, gw)
    assert problems == []
    assert config.tracing == TracingConfig(
        ZIPKIN,
        50.0,
        (
            CustomTag("team", CustomTagKind.LITERAL, "mesh"),
            CustomTag("tenant", CustomTagKind.HEADER, "x-tenant", "none"),
        ),
    )
    assert config.origins == (
        "MeshConfig istio-system/istio",
        "Telemetry istio-system/mesh-default",
        "Telemetry apps/apps-wide",
        "Telemetry apps/waypoint",
    )
    # a Telemetry targeting the Service is the most specific; client-only entries do not apply
    svc = telemetry(
        "echo",
        "apps",
        {
            "targetRefs": [{"kind": "Service", "group": "", "name": "echo"}],
            "tracing": [{"randomSamplingPercentage": 100, "disableSpanReporting": True}],
        },
    )
    client_only = telemetry(
        "client",
        "apps",
        {
            "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
            "tracing": [{"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 3}],
        },
        created="2020-01-01T00:00:00Z",
    )
    config, _ = resolved(mesh_config(PROVIDERS), root, ns, svc, client_only)
    assert config.tracing.provider is None  # span reporting disabled
    assert config.tracing.sampling == 100.0


def test_a_selector_matching_the_waypoints_pods_applies() -> None:
    selected = telemetry(
        "by-pod",
        "apps",
        {
            "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
            "tracing": [{"providers": [{"name": "otel"}], "randomSamplingPercentage": 7.5}],
        },
    )
    config, _ = resolved(mesh_config(PROVIDERS), selected)
    assert config.tracing == TracingConfig(OTEL, 7.5)


def test_unknown_and_unusable_providers_report_no_spans_with_a_warning() -> None:
    mesh = {
        "extensionProviders": [
            *PROVIDERS["extensionProviders"],
            {"name": "lost", "zipkin": {"service": "nowhere.example.com", "port": 9411}},
        ]
    }
    for name, warning in [
        (
            "missing",
            "spec.tracing[0].providers[0]: tracing provider 'missing' is not defined in "
            "MeshConfig extensionProviders: no spans are reported",
        ),
        ("prom", "data.mesh.extensionProviders[2]: provider 'prom' does not support tracing"),
        (
            "lost",
            "data.mesh.extensionProviders[3].zipkin.service: 'nowhere.example.com' is not a "
            "service of the mesh (a Service, or a ServiceEntry for a collector outside it): no "
            "spans are exported there",
        ),
    ]:
        t = telemetry("t", "istio-system", {"tracing": [{"providers": [{"name": name}]}]})
        config, problems = resolved(mesh_config(mesh), t)
        assert config.tracing.provider is None
        assert problems == [warning]


def test_mesh_config_outside_the_root_namespace_is_not_read() -> None:
    config, problems = resolved(
        mesh_config({**PROVIDERS, "defaultProviders": {"tracing": ["otel"]}}, ns="apps")
    )
    assert config.tracing.provider is None
    assert problems == [
        "metadata.namespace: not MeshConfig: the mesh reads the ConfigMap istio of the root "
        "namespace istio-system"
    ]


def errors_of(*objects: dict[str, Any]) -> list[str]:
    store = store_with(("f.yaml", documents(*objects)))
    return [f"{d.path}: {d.reason}" for d in store.diagnostics() if d.is_error]


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        (
            mesh_config({"extensionProviders": [{"name": "a", "zipkin": {"port": 9411}}]}),
            "data.mesh.extensionProviders[0].zipkin.service: required field is missing",
        ),
        (
            mesh_config(
                {
                    "extensionProviders": [
                        {"name": "a", "zipkin": {"service": "z", "port": 1}},
                        {"name": "a", "zipkin": {"service": "z", "port": 2}},
                    ]
                }
            ),
            "data.mesh.extensionProviders[1].name: duplicate provider name 'a' (same as [0])",
        ),
        (
            mesh_config({"defaultConfig": {"tracing": {"sampling": 101}}}),
            "data.mesh.defaultConfig.tracing.sampling: 101 is not a percentage between 0 and 100",
        ),
        (
            mesh_config({"extensionProviders": [{"name": "a", "opentelemetry": {"service": "o"}}]}),
            "data.mesh.extensionProviders[0].opentelemetry.port: required field is missing",
        ),
        (
            telemetry("t", "apps", {"tracing": [{"randomSamplingPercentage": -1}]}),
            "spec.tracing[0].randomSamplingPercentage: -1 is not a percentage between 0 and 100",
        ),
        (
            telemetry("t", "apps", {"tracing": [{"customTags": {"x": {"header": {}}}}]}),
            "spec.tracing[0].customTags.x.header: a header tag needs the header's name",
        ),
        (
            telemetry(
                "t",
                "apps",
                {
                    "selector": {"matchLabels": {"a": "b"}},
                    "targetRefs": [{"kind": "Gateway", "name": "waypoint"}],
                },
            ),
            "spec.selector: selector and targetRef(s) are mutually exclusive",
        ),
    ],
)
def test_validation_rejects_what_istiod_rejects(obj: dict[str, Any], error: str) -> None:
    assert errors_of(obj) == [error]


def test_other_config_maps_are_still_skipped_and_istio_mesh_config_validates() -> None:
    other = {**mesh_config(PROVIDERS), "metadata": {"name": "settings", "namespace": "apps"}}
    assert errors_of(other, mesh_config({**PROVIDERS, "accessLogFile": "/dev/stdout"})) == []


def test_telemetry_travels_to_the_waypoint_unchanged() -> None:
    t, _ = translation(
        documents(namespace("apps", **{USE: "waypoint"}), collectors()),
        waypoint(),
        documents(service("echo"), pod("echo-0", labels={"app": "echo"})),
        documents(
            mesh_config({**PROVIDERS, "defaultProviders": {"tracing": ["zipkin"]}}),
            telemetry(
                "t",
                "istio-system",
                {"tracing": [{"customTags": {"env": {"environment": {"name": "POD_NAME"}}}}]},
            ),
        ),
    )
    http = t.http_services[ECHO]
    assert http.telemetry.tracing.provider == ZIPKIN
    assert http_service_from_proto(http_service_to_proto(http)) == http


METRICS_AND_LOGS = telemetry(
    "mesh-default",
    "istio-system",
    {
        "metrics": [
            {
                "providers": [{"name": "prometheus"}],
                "overrides": [
                    {
                        "match": {"metric": "ALL_METRICS"},
                        "tagOverrides": {
                            "request_protocol": {"operation": "REMOVE"},
                            "x_user": {"value": "request.headers['x-user']"},
                        },
                    },
                    {"match": {"metric": "REQUEST_SIZE", "mode": "SERVER"}, "disabled": True},
                    # client-side overrides are not the waypoint's
                    {"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"}, "disabled": True},
                ],
            }
        ],
        "accessLogging": [
            {"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}
        ],
    },
)


def test_metric_overrides_and_the_access_log_filter_resolve_in_order() -> None:
    config, problems = resolved(METRICS_AND_LOGS)
    assert problems == []
    tags = (TagOverride("request_protocol", remove=True), TagOverride("x_user", value=X_USER))
    assert config.metrics == MetricsConfig(
        True,
        (
            MetricOverride("REQUEST_COUNT", False, tags),
            MetricOverride("REQUEST_DURATION", False, tags),
            MetricOverride("REQUEST_SIZE", False, tags),
            MetricOverride("RESPONSE_SIZE", False, tags),
            MetricOverride("REQUEST_SIZE", True),
        ),
    )
    assert config.access_log == AccessLogConfig(True, "response.code >= 400")
    http = translation_of(METRICS_AND_LOGS)
    assert http_service_from_proto(http_service_to_proto(http)) == http


X_USER = "request.headers['x-user']"


def translation_of(*objects: dict[str, Any]) -> Any:
    t, _ = translation(
        documents(namespace("apps", **{USE: "waypoint"}), collectors()),
        waypoint(),
        documents(service("echo"), pod("echo-0", labels={"app": "echo"})),
        documents(*objects),
    )
    return t.http_services[ECHO]


def test_a_lower_level_turns_metrics_and_logs_off() -> None:
    off = telemetry(
        "off",
        "apps",
        {
            "metrics": [{"overrides": [{"disabled": True}]}],
            "accessLogging": [{"disabled": True}],
        },
    )
    config, _ = resolved(METRICS_AND_LOGS, off)
    assert config.access_log == AccessLogConfig(False)
    assert config.metrics.overrides[-4:] == tuple(
        MetricOverride(m, True)
        for m in ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE")
    )
    # providers in force that are neither Prometheus nor a file log: nothing reported
    elsewhere = telemetry(
        "elsewhere",
        "apps",
        {
            "metrics": [{"providers": [{"name": "otel"}]}],
            "accessLogging": [{"providers": [{"name": "otel"}]}],
        },
    )
    config, _ = resolved(mesh_config(PROVIDERS), elsewhere)
    assert not config.metrics.enabled and not config.access_log.enabled


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            {"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "UPSERT"}}}]}]},
            "spec.metrics[0].overrides[0].tagOverrides.x.value: an UPSERT needs a value",
        ),
        (
            {"metrics": [{"overrides": [{"tagOverrides": {"bad-name": {"value": "'a'"}}}]}]},
            "spec.metrics[0].overrides[0].tagOverrides[\"bad-name\"]: tag 'bad-name' is not a "
            "Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
        ),
        (
            {"accessLogging": [{"filter": {"expression": "response.code >="}}]},
            "spec.accessLogging[0].filter.expression: not an expression the proxies evaluate: "
            "the expression ends too early",
        ),
    ],
)
def test_telemetry_metrics_and_logs_validation(spec: dict[str, Any], error: str) -> None:
    assert errors_of(telemetry("t", "apps", spec)) == [error]
