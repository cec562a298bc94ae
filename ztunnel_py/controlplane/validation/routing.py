"""Deeper checks of the routing kinds a waypoint applies (VirtualService, HTTPRoute, Gateway):
the parts their base schemas in `kinds.py` accept as written (header operations, redirects,
direct responses, faults, durations, path modifiers, mirror fractions, backend filters, Gateway
status and allowedRoutes), checked the way Istio's validation and the Gateway API CRDs check
them, so translation can trust every shape it reads and a mistake is rejected with its field
path (the last good version keeps serving).

Each kind's schema here is its base schema followed by these checks (`Then`); `KINDS` overrides
the base entries in the validation table.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from ztunnel_py.controlplane.validation import gateway_api, kinds
from ztunnel_py.controlplane.validation.kube import LABELS, KindInfo
from ztunnel_py.yamlschema.durations import DURATION, parse_duration
from ztunnel_py.yamlschema.schema import (
    ANY,
    PORT,
    STR,
    Checker,
    Int,
    ListOf,
    MapOf,
    Node,
    Number,
    Schema,
    Str,
    obj,
    strings,
)

# Gateway API durations (GEP-2257): 1 to 4 parts of up to 5 digits and h, m, s or ms.
_GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
# Envoy's HTTP and gRPC retry conditions, the values Istio's validation accepts in retryOn
# (besides status codes).
RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
}


def _gateway_duration(text: str) -> str | None:
    if not _GATEWAY_DURATION.match(text):
        return f"{text!r} is not a Gateway API duration (e.g. 10s, 500ms, 1h30m)"
    return None


def _base64(text: str) -> str | None:
    try:
        base64.b64decode(text, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "not base64 of UTF-8 text"
    return None


def _retry_on(text: str) -> str | None:
    for part in (p.strip() for p in text.split(",")):
        if (
            part
            and not (part.isdigit() and 100 <= int(part) <= 599)
            and part not in RETRY_CONDITIONS
        ):
            return (
                f"unknown retry condition {part!r} (Envoy's conditions such as 5xx, "
                "gateway-error, reset, connect-failure, refused-stream, retriable-4xx, or a "
                "status code)"
            )
    return None


def _percent(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    value = fields["value"].value if "value" in fields else 0
    if not 0 <= value <= 100:
        c.error(fields["value"], f"{value} is not within 0-100")


def _one_of(*names: str) -> Callable[[Checker, Node, Mapping[str, Node]], None]:
    def hook(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
        present = [n for n in names if n in fields]
        if len(present) > 1:
            c.error(fields[present[1]], f"{present[1]} cannot be combined with {present[0]}")

    return hook


PERCENT = obj({"value": Number()}, hooks=(_percent,))
HEADER_OPERATIONS = obj({"set": MapOf(STR), "add": MapOf(STR), "remove": strings()})
HEADERS = obj({"request": HEADER_OPERATIONS, "response": HEADER_OPERATIONS})
REDIRECT = obj(
    {
        "uri": STR,
        "authority": STR,
        "port": PORT,
        "derivePort": Str(choices=("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")),
        "scheme": STR,
        "redirectCode": Int(300, 399, "redirect code"),
    },
    hooks=(_one_of("port", "derivePort"),),
)
DIRECT_RESPONSE = obj(
    {
        "status": Int(200, 599, "status"),
        "body": obj(
            {"string": STR, "bytes": Str(checks=(_base64,))}, hooks=(_one_of("string", "bytes"),)
        ),
    },
    required=("status",),
)
FAULT = obj(
    {
        "delay": obj(
            {
                "fixedDelay": DURATION,
                "exponentialDelay": DURATION,
                "percentage": PERCENT,
                "percent": Int(0, 100, "percent"),
            },
            hooks=(_one_of("fixedDelay", "exponentialDelay"),),
        ),
        "abort": obj(
            {
                "httpStatus": Int(200, 599, "status"),
                "grpcStatus": STR,
                "http2Error": STR,
                "percentage": PERCENT,
            },
            hooks=(_one_of("httpStatus", "grpcStatus", "http2Error"),),
        ),
    }
)
URI_REGEX_REWRITE = obj({"match": STR, "rewrite": STR}, required=("match", "rewrite"))
PATH_MODIFIER = obj(
    {
        "type": Str(choices=("ReplaceFullPath", "ReplacePrefixMatch")),
        "replaceFullPath": STR,
        "replacePrefixMatch": STR,
    },
    required=("type",),
)


def _fraction(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    denominator = fields["denominator"].value if "denominator" in fields else 100
    if fields["numerator"].value > denominator:
        c.error(node, f"numerator is larger than the denominator ({denominator})")


FRACTION = obj(
    {"numerator": Int(0, None, "numerator"), "denominator": Int(1, None, "denominator")},
    required=("numerator",),
    hooks=(_fraction,),
)
GATEWAY_STATUS = obj(
    {"addresses": ListOf(obj({"type": STR, "value": STR}, required=("value",)))}, open=True
)
ALLOWED_ROUTES = obj(
    {
        "namespaces": obj(
            {
                "from": Str(choices=("All", "Same", "Selector")),
                "selector": obj({"matchLabels": LABELS, "matchExpressions": ANY}),
            }
        ),
        "kinds": ANY,
    }
)


class Then(Schema):
    """`base`, then `check` on the same node once `base` found it well-formed."""

    def __init__(self, base: Schema, check: Callable[[Checker, Node], None]) -> None:
        self.base = base
        self.extra = check

    def walk(self, c: Checker, node: Node) -> None:
        if self.base.check(c, node):
            self.extra(c, node)


def _children(c: Checker, node: Node, key: str) -> list[Node]:
    """The items of the list `node[key]` (none when absent)."""
    if not isinstance(node.value, Mapping) or not node.value.get(key):
        return []
    parent = c.child(node, key)
    return [c.index(parent, i) for i in range(len(parent.value))]


def _field(c: Checker, node: Node, key: str, schema: Schema) -> None:
    if isinstance(node.value, Mapping) and node.value.get(key) is not None:
        schema.check(c, c.child(node, key))


def _spec(c: Checker, node: Node) -> Node:
    return c.child(node, "spec")


def _virtual_service(c: Checker, node: Node) -> None:
    for route in _children(c, _spec(c, node), "http"):
        value: Mapping[str, Any] = route.value
        for key, schema in (
            ("headers", HEADERS),
            ("redirect", REDIRECT),
            ("directResponse", DIRECT_RESPONSE),
            ("fault", FAULT),
            ("timeout", DURATION),
        ):
            _field(c, route, key, schema)
        if value.get("rewrite"):
            _field(c, c.child(route, "rewrite"), "uriRegexRewrite", URI_REGEX_REWRITE)
        if value.get("retries"):
            retries = c.child(route, "retries")
            _field(c, retries, "perTryTimeout", DURATION)
            _field(c, retries, "retryOn", Str(checks=(_retry_on,)))
        for destination in _children(c, route, "route"):
            _field(c, destination, "headers", HEADERS)
        actions = [k for k in ("route", "redirect", "directResponse") if value.get(k)]
        if len(actions) > 1:
            c.error(
                c.child(route, actions[1]), f"{actions[1]} cannot be combined with {actions[0]}"
            )
        if value.get("redirect") and value.get("rewrite"):
            c.error(c.child(route, "rewrite"), "rewrite cannot be combined with redirect")


def _route_filter(c: Checker, node: Node) -> None:
    kind = node.value["type"]
    payload = _FILTER_FIELDS[kind]
    if node.value.get(payload) is None:
        c.error(node, f"filter type {kind} needs the field {payload}")
        return
    for key in ("requestRedirect", "urlRewrite"):
        if node.value.get(key):
            modifier = c.child(node, key)
            _field(c, modifier, "path", PATH_MODIFIER)
            path = modifier.value.get("path")
            if isinstance(path, Mapping) and isinstance(path.get("type"), str):
                needed = (
                    "replaceFullPath" if path["type"] == "ReplaceFullPath" else "replacePrefixMatch"
                )
                if needed not in path:
                    c.error(c.child(modifier, "path"), f"type {path['type']} needs {needed}")
    if node.value.get("requestMirror"):
        mirror = c.child(node, "requestMirror")
        _field(c, mirror, "fraction", FRACTION)


_ROUTE_FILTER = Then(gateway_api.HTTP_ROUTE_FILTER, _route_filter)


def _http_route(c: Checker, node: Node) -> None:
    for rule in _children(c, _spec(c, node), "rules"):
        types = []
        for f in _children(c, rule, "filters"):
            _route_filter(c, f)
            types.append(f.value["type"])
        if "RequestRedirect" in types and "URLRewrite" in types:
            c.error(rule, "RequestRedirect and URLRewrite cannot both be used on one rule")
        for ref in _children(c, rule, "backendRefs"):
            for f in _children(c, ref, "filters"):
                _ROUTE_FILTER.check(c, f)
        if rule.value.get("timeouts"):
            timeouts = c.child(rule, "timeouts")
            for key in ("request", "backendRequest"):
                _field(c, timeouts, key, Str(checks=(_gateway_duration,)))


def _gateway(c: Checker, node: Node) -> None:
    _field(c, node, "status", GATEWAY_STATUS)
    for listener in _children(c, _spec(c, node), "listeners"):
        _field(c, listener, "allowedRoutes", ALLOWED_ROUTES)
    labels = node.value["metadata"].get("labels") or {}
    value = labels.get("istio.io/waypoint-for")
    if value is not None and value not in ("service", "workload", "all", "none"):
        where = c.child(c.child(c.child(node, "metadata"), "labels"), "istio.io/waypoint-for")
        c.warn(where, f"{value!r} is not one of service, workload, all, none: nothing can bind")


def _extended(kind: str, check: Callable[[Checker, Node], None]) -> KindInfo:
    base = kinds.KINDS[kind]
    return KindInfo(kind, base.api_versions, Then(base.schema, check), base.namespaced)


KINDS: dict[str, KindInfo] = {
    "VirtualService": _extended("VirtualService", _virtual_service),
    "HTTPRoute": _extended("HTTPRoute", _http_route),
    "Gateway": _extended("Gateway", _gateway),
}

__all__ = ["KINDS", "RETRY_CONDITIONS", "parse_duration"]
