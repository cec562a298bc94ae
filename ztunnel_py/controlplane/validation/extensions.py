"""Schemas of the extension kinds: Istio's `WasmPlugin` (extensions.istio.io/v1alpha1), the shape
in which users enable an HTTP filter on a waypoint.

Our waypoints run Python filters, never code shipped inside a resource: the only `url` accepted
is `python://<entry point name>`, naming a filter installed as a Python package (entry point
group `ztunnel_py.http_filters`). Any other scheme (`oci://`, `file://`, `http(s)://`) is
refused with an error that says what to do instead. `pluginConfig` must be representable as JSON
(it reaches the waypoint as a JSON object). Fields about fetching and running Wasm modules
(`sha256`, `imagePullPolicy`, `imagePullSecret`, `vmConfig`, `pluginName`) are accepted and
reported as ignored, and so is `match` (a waypoint applies the filter to every port);
`type: NETWORK` (network filters) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ztunnel_py.controlplane.validation.istio_security import POLICY_TARGET_REF
from ztunnel_py.controlplane.validation.kube import (
    SELECTOR_MATCH_LABELS,
    KindInfo,
    kube_object,
)
from ztunnel_py.model.http import FILTER_NAME
from ztunnel_py.model.names import dns1123_subdomain
from ztunnel_py.yamlschema.schema import (
    ANY,
    INT,
    STR,
    Checker,
    Int,
    ListOf,
    MapOf,
    Node,
    Str,
    obj,
)

PYTHON_SCHEME = "python://"
_IGNORED = ("sha256", "imagePullPolicy", "imagePullSecret", "vmConfig", "pluginName")
_MAX_DEPTH = 64


def plugin_url_problem(url: str) -> str | None:
    """Why a WasmPlugin url cannot be used (None: `python://<entry point name>`)."""
    if url.startswith(PYTHON_SCHEME):
        name = url[len(PYTHON_SCHEME) :]
        if FILTER_NAME.match(name):
            return None
        return (
            f"{name!r} is not an entry point name (letters, digits, '_', '.', '-'): "
            "write url: python://<entry point name>"
        )
    scheme = url.partition("://")[0] if "://" in url else "no scheme"
    return (
        f"url {url!r} ({scheme}) is refused: ztunnel-py never runs code shipped inside a "
        "resource. Install the filter as a Python package (entry point group "
        "ztunnel_py.http_filters) where the waypoint runs and write url: "
        "python://<entry point name>"
    )


def _json_problem(value: object, depth: int = 0) -> str | None:
    """Why a parsed YAML value cannot travel as a JSON object (None if it can): YAML allows
    keys that are not strings and infinite or NaN numbers, JSON does not."""
    if depth > _MAX_DEPTH:
        return f"nested more than {_MAX_DEPTH} levels deep"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number"
    items: list[tuple[object, object]] = []
    if isinstance(value, list):
        items = [(None, v) for v in value]
    elif isinstance(value, dict):
        items = list(value.items())
    for key, item in items:
        if key is not None and not isinstance(key, str):
            return f"key {key!r} is not a string (quote it)"
        problem = _json_problem(item, depth + 1)
        if problem:
            return f"{key}: {problem}" if key is not None else problem
    return None


def _wasm_plugin_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    targets = [fields[k] for k in ("targetRef", "targetRefs") if k in fields]
    if "selector" in fields and targets:
        c.error(fields["selector"], "selector and targetRef(s) are mutually exclusive")
    problem = plugin_url_problem(fields["url"].value)
    if problem:
        c.error(fields["url"], problem)
    if "pluginConfig" in fields:
        problem = _json_problem(fields["pluginConfig"].value)
        if problem:
            c.error(fields["pluginConfig"], problem)
    if "type" in fields and fields["type"].value == "NETWORK":
        c.error(fields["type"], "network filters are not supported: only HTTP filters")
    for key in _IGNORED:
        if key in fields:
            c.warn(fields[key], "ignored: python:// filters are installed packages, not modules")
    if "match" in fields:
        c.warn(fields["match"], "not supported by waypoints: the filter applies to every port")


WASM_PLUGIN_SPEC = obj(
    {
        "selector": SELECTOR_MATCH_LABELS,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "url": STR,
        "sha256": STR,
        "imagePullPolicy": Str(choices=("UNSPECIFIED_POLICY", "IfNotPresent", "Always")),
        "imagePullSecret": STR,
        "pluginConfig": MapOf(ANY),
        "pluginName": STR,
        "phase": Str(choices=("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")),
        "priority": Int(-(2**31), 2**31 - 1, "priority"),
        "vmConfig": ANY,
        "match": ListOf(obj({"mode": STR, "ports": ListOf(obj({"number": INT}))})),
        "failStrategy": Str(choices=("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD")),
        "type": Str(choices=("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK")),
    },
    required=("url",),
    hooks=(_wasm_plugin_spec,),
)

KINDS: dict[str, KindInfo] = {
    "WasmPlugin": KindInfo(
        "WasmPlugin",
        ("extensions.istio.io/v1alpha1",),
        kube_object(dns1123_subdomain, WASM_PLUGIN_SPEC, spec_required=True),
    ),
}

__all__ = ["KINDS", "PYTHON_SCHEME", "plugin_url_problem"]
