"""WasmPlugin-shaped resources: only `python://<entry point>` is accepted (never code shipped in
a resource), and accepted plugins become the filters of the HttpServices they target."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.cp_support import diagnostics
from tests.unit.waypoint_support import (
    documents,
    namespace,
    service,
    translation,
    warnings,
    waypoint,
)
from ztunnel_py.model.http import FilterConfig, FilterPhase

USE = "istio.io/use-waypoint"
ECHO = "apps/echo.apps.svc.cluster.local"
OTHER = "apps/other.apps.svc.cluster.local"
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}


def plugin(name: str, url: str = "python://local_ratelimit", **spec: Any) -> dict[str, Any]:
    spec.setdefault("targetRefs", [GATEWAY_REF])
    if spec["targetRefs"] is None:
        del spec["targetRefs"]
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"url": url, **spec},
    }


def filters(*plugins: dict[str, Any]) -> tuple[dict[str, tuple[FilterConfig, ...]], list[str]]:
    t, found = translation(
        documents(
            namespace("apps", **{USE: "waypoint"}),
            service("echo"),
            service("other", ip="10.96.0.20"),
            *plugins,
        ),
        waypoint(),
    )
    return {k: s.filters for k, s in t.http_services.items()}, warnings(found)


def test_filters_in_chain_order() -> None:
    by_service, problems = filters(
        plugin("stats", phase="STATS", pluginConfig={"n": 1}),
        plugin("low", phase="AUTHZ", priority=1),
        plugin("high", phase="AUTHZ", priority=10, failStrategy="FAIL_OPEN"),
        plugin("last"),
        plugin(
            "authn",
            phase="AUTHN",
            targetRefs=[{"kind": "Service", "group": "", "name": "echo"}],
        ),
    )
    assert problems == []
    assert [(f.origin, f.phase, f.priority, f.fail_open) for f in by_service[ECHO]] == [
        ("WasmPlugin apps/authn", FilterPhase.AUTHN, 0, False),
        ("WasmPlugin apps/high", FilterPhase.AUTHZ, 10, True),
        ("WasmPlugin apps/low", FilterPhase.AUTHZ, 1, False),
        ("WasmPlugin apps/stats", FilterPhase.STATS, 0, False),
        ("WasmPlugin apps/last", FilterPhase.UNSPECIFIED, 0, False),
    ]
    assert [f.origin for f in by_service[OTHER]] == [
        "WasmPlugin apps/high",
        "WasmPlugin apps/low",
        "WasmPlugin apps/stats",
        "WasmPlugin apps/last",
    ]
    stats = by_service[ECHO][3]
    assert (stats.name, dict(stats.config)) == ("local_ratelimit", {"n": 1})


def test_plugins_without_targets_are_not_for_waypoints() -> None:
    by_service, problems = filters(
        plugin("sidecars", targetRefs=None, selector={"matchLabels": {"a": "b"}})
    )
    assert by_service[ECHO] == ()
    assert problems == [
        "spec: no targetRefs: waypoints only apply plugins that target them (their Gateway, "
        "a Service they serve, or the GatewayClass istio-waypoint)"
    ]


@pytest.mark.parametrize(
    "url", ["oci://ghcr.io/x/plugin:1", "file:///opt/plugin.wasm", "https://x/p.wasm", "plugin"]
)
def test_urls_other_than_python_are_refused(url: str) -> None:
    found = [str(d) for d in diagnostics(documents(plugin("p", url=url)))]
    scheme = url.partition("://")[0] if "://" in url else "no scheme"
    assert found == [
        f"f.yaml:doc[0]: spec.url: url {url!r} ({scheme}) is refused: ztunnel-py never runs code "
        "shipped inside a resource. Install the filter as a Python package (entry point group "
        "ztunnel_py.http_filters) where the waypoint runs and write url: "
        "python://<entry point name> (line 7, column 8)"
    ]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"url": "python://bad name"}, "spec.url: 'bad name' is not an entry point name"),
        ({"pluginConfig": {"when": "x", "at": None, "day": "2024-01-01"}}, None),
        ({"type": "NETWORK"}, "spec.type: network filters are not supported: only HTTP filters"),
        ({"priority": 2**31}, "spec.priority: priority 2147483648 out of range"),
        (
            {"selector": {"matchLabels": {"a": "b"}}},
            "spec.selector: selector and targetRef(s) are mutually exclusive",
        ),
    ],
)
def test_validation(spec: dict[str, Any], reason: str | None) -> None:
    found = [d for d in diagnostics(documents(plugin("p", **spec))) if d.is_error]
    if reason is None:
        assert found == []
    else:
        assert len(found) == 1 and f"{found[0].path}: {found[0].reason}".startswith(reason)


def test_plugin_config_must_be_json() -> None:
    text = documents(plugin("p")).replace(
        "spec:\n", "spec:\n  pluginConfig: {limits: [{1: a}], rate: .inf}\n"
    )
    assert [(d.path, d.reason) for d in diagnostics(text)] == [
        ("spec.pluginConfig", "limits: key 1 is not a string (quote it)")
    ]
    text = documents(plugin("p")).replace("spec:\n", "spec:\n  pluginConfig: {rate: .nan}\n")
    assert [(d.path, d.reason) for d in diagnostics(text)] == [
        ("spec.pluginConfig", "rate: nan is not a JSON number")
    ]


def test_wasm_fields_are_reported_as_ignored() -> None:
    found = [
        (d.path, d.reason, d.is_error) for d in diagnostics(documents(plugin("p", sha256="ab")))
    ]
    assert found == [
        ("spec.sha256", "ignored: python:// filters are installed packages, not modules", False)
    ]


def test_match_is_reported_as_not_supported() -> None:
    found = [
        (d.path, d.reason)
        for d in diagnostics(documents(plugin("p", match=[{"ports": [{"number": 80}]}])))
    ]
    assert found == [("spec.match", "not supported by waypoints: the filter applies to every port")]
