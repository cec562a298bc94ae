"""gateway.networking.k8s.io: Gateway (a waypoint when its class is `istio-waypoint`) and
HTTPRoute, following the Gateway API CRDs.
"""

from __future__ import annotations

from collections.abc import Mapping

from ztunnel_py.controlplane.validation.kube import (
    LABELS,
    custom_resource,
)
from ztunnel_py.model.names import dns1123_label, dns1123_subdomain
from ztunnel_py.yamlschema.schema import (
    ANY,
    INT,
    PORT,
    STR,
    Checker,
    Int,
    ListOf,
    MapOf,
    Node,
    Str,
    hostname,
    obj,
    strings,
)

API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")

# --- Gateway -----------------------------------------------------------------------------------

WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_LISTENER = obj(
    {
        "name": Str(checks=(dns1123_subdomain,)),
        "hostname": Str(checks=(hostname,)),
        "port": PORT,
        "protocol": STR,
        "tls": ANY,
        "allowedRoutes": ANY,
    },
    required=("name", "port", "protocol"),
)


def _gateway_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    cls = fields["gatewayClassName"].value
    if cls != WAYPOINT_CLASS:
        c.warn(
            fields["gatewayClassName"],
            f"gateway class {cls!r} is stored but not used: only {WAYPOINT_CLASS!r} "
            "gateways (waypoints) are part of this mesh",
        )
        return
    listeners = fields["listeners"].value
    if not any(x["protocol"] == "HBONE" and x["port"] == 15008 for x in listeners):
        c.warn(fields["listeners"], "a waypoint needs a listener with protocol HBONE on port 15008")


GATEWAY_SPEC = obj(
    {
        "gatewayClassName": Str(checks=(dns1123_subdomain,)),
        "listeners": ListOf(
            GATEWAY_LISTENER, 1, unique_by=lambda x: x.get("name"), unique_what="listener name"
        ),
        "addresses": ListOf(obj({"type": STR, "value": STR}, required=("value",))),
        "infrastructure": obj({"labels": LABELS, "annotations": MapOf(STR), "parametersRef": ANY}),
        "backendTLS": ANY,
    },
    required=("gatewayClassName", "listeners"),
    hooks=(_gateway_spec,),
)

# --- HTTPRoute ---------------------------------------------------------------------------------

PARENT_REF = obj(
    {
        "group": STR,
        "kind": STR,
        "namespace": Str(checks=(dns1123_label,)),
        "name": STR,
        "sectionName": STR,
        "port": PORT,
    },
    required=("name",),
)
BACKEND_REF = obj(
    {
        "group": STR,
        "kind": STR,
        "name": STR,
        "namespace": Str(checks=(dns1123_label,)),
        "port": PORT,
        "weight": Int(0, 1_000_000, "weight"),
        "filters": ListOf(ANY),
    },
    required=("name",),
)
HTTP_HEADER_MATCH = obj(
    {"type": Str(choices=("Exact", "RegularExpression")), "name": STR, "value": STR},
    required=("name", "value"),
)
HTTP_ROUTE_MATCH = obj(
    {
        "path": obj(
            {"type": Str(choices=("Exact", "PathPrefix", "RegularExpression")), "value": STR}
        ),
        "headers": ListOf(HTTP_HEADER_MATCH),
        "queryParams": ListOf(HTTP_HEADER_MATCH),
        "method": Str(
            choices=("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
        ),
    }
)
HEADER = obj({"name": STR, "value": STR}, required=("name", "value"))
HEADER_MODIFIER = obj({"set": ListOf(HEADER), "add": ListOf(HEADER), "remove": strings()})
HTTP_ROUTE_FILTER = obj(
    {
        "type": Str(
            choices=(
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "RequestMirror",
                "RequestRedirect",
                "URLRewrite",
                "ExtensionRef",
                "CORS",
            )
        ),
        "requestHeaderModifier": HEADER_MODIFIER,
        "responseHeaderModifier": HEADER_MODIFIER,
        "requestMirror": obj(
            {"backendRef": BACKEND_REF, "percent": Int(0, 100, "percent"), "fraction": ANY},
            required=("backendRef",),
        ),
        "requestRedirect": obj(
            {
                "scheme": Str(choices=("http", "https")),
                "hostname": Str(checks=(hostname,)),
                "path": ANY,
                "port": PORT,
                "statusCode": Int(300, 399, "status code"),
            }
        ),
        "urlRewrite": obj({"hostname": Str(checks=(hostname,)), "path": ANY}),
        "extensionRef": obj({"group": STR, "kind": STR, "name": STR}, required=("kind", "name")),
        "cors": ANY,
    },
    required=("type",),
)
HTTP_ROUTE_RULE = obj(
    {
        "name": STR,
        "matches": ListOf(HTTP_ROUTE_MATCH),
        "filters": ListOf(HTTP_ROUTE_FILTER),
        "backendRefs": ListOf(BACKEND_REF),
        "timeouts": obj({"request": STR, "backendRequest": STR}),
        "retry": obj(
            {"codes": ListOf(Int(400, 599, "status code")), "attempts": INT, "backoff": STR}
        ),
        "sessionPersistence": ANY,
    }
)
HTTP_ROUTE_SPEC = obj(
    {
        "parentRefs": ListOf(PARENT_REF),
        "hostnames": strings(hostname),
        "rules": ListOf(HTTP_ROUTE_RULE),
    }
)

KINDS = (
    custom_resource("Gateway", API_VERSIONS, GATEWAY_SPEC),
    custom_resource("HTTPRoute", API_VERSIONS, HTTP_ROUTE_SPEC),
)
