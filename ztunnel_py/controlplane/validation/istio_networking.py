"""networking.istio.io: ServiceEntry and WorkloadEntry (translated into workloads and services)
and VirtualService and DestinationRule (stored for waypoints), following Istio's CRDs; a
DestinationRule's traffic policies are checked in `traffic_policy.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ztunnel_py.controlplane.validation.kube import (
    LABELS,
    custom_resource,
    port_name,
)
from ztunnel_py.controlplane.validation.traffic_policy import TRAFFIC_POLICY
from ztunnel_py.model.names import dns1123_label, dns1123_subdomain
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    INT,
    PORT,
    STR,
    Checker,
    Int,
    ListOf,
    MapOf,
    Node,
    Number,
    Str,
    cidr,
    hostname,
    ip_address,
    obj,
    strings,
)

API_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)

# --- WorkloadEntry (also a ServiceEntry's inline endpoint) -------------------------------------


def _endpoint_address(text: str) -> str | None:
    if text.startswith("unix://"):
        return None
    if ip_address(text) is None or hostname(text) is None:
        return None
    return f"{text!r} is not an IP address, a host name or a unix:// path"


def _port_map_key(key: object) -> str | None:
    if not isinstance(key, str):
        return f"port name {key!r} must be a string"
    return port_name(key)


def _workload_entry_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "address" not in fields and "network" not in fields:
        c.error(
            node.missing("address"),
            "required field is missing (an address is needed unless a network is set)",
        )


WORKLOAD_ENTRY_SPEC = obj(
    {
        "address": Str(checks=(_endpoint_address,)),
        "ports": MapOf(PORT, key=_port_map_key),
        "labels": LABELS,
        "network": STR,
        "locality": STR,
        "weight": Int(0, 2**32 - 1, "weight"),
        "serviceAccount": Str(checks=(dns1123_subdomain,)),
    },
    hooks=(_workload_entry_spec,),
)

# --- ServiceEntry ------------------------------------------------------------------------------

SERVICE_ENTRY_PROTOCOLS = (
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
)

SERVICE_ENTRY_PORT = obj(
    {
        "number": PORT,
        "protocol": Str(choices=SERVICE_ENTRY_PROTOCOLS),
        "name": Str(checks=(dns1123_label,)),
        "targetPort": PORT,
    },
    required=("number", "name"),
)


def _not_star(text: str) -> str | None:
    if text == "*":
        return (
            "'*' is not allowed as a ServiceEntry host: name the hosts "
            "(wildcards like *.example.com are fine)"
        )
    return hostname(text)


def _service_entry_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    endpoints, selector = fields.get("endpoints"), fields.get("workloadSelector")
    if endpoints is not None and selector is not None:
        c.error(selector, "workloadSelector and endpoints are mutually exclusive")
    port_names = {p["name"] for p in fields["ports"].value} if "ports" in fields else set()
    resolution = fields["resolution"].value if "resolution" in fields else "NONE"
    if endpoints is None:
        return
    for i, endpoint in enumerate(endpoints.value):
        entry = c.index(endpoints, i)
        if endpoint.get("ports"):
            ports = c.child(entry, "ports")
            for port in endpoint["ports"]:
                if port not in port_names:
                    c.error(
                        c.child(ports, port),
                        f"endpoint port {port!r} is not a port of this ServiceEntry "
                        f"(ports: {', '.join(sorted(port_names)) or 'none'})",
                    )
        address = endpoint.get("address", "")
        static = resolution == "STATIC" and not address.startswith("unix://")
        if static and address and ip_address(address):
            c.error(
                c.child(entry, "address"),
                f"resolution STATIC needs IP addresses, got {address!r}",
            )


SERVICE_ENTRY_SPEC = obj(
    {
        "hosts": strings(_not_star, min_items=1),
        "addresses": strings(cidr),
        "ports": ListOf(
            SERVICE_ENTRY_PORT,
            unique_by=lambda p: p.get("number"),
            unique_what="port number",
        ),
        "location": Str(choices=("MESH_EXTERNAL", "MESH_INTERNAL")),
        "resolution": Str(choices=("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")),
        "endpoints": ListOf(WORKLOAD_ENTRY_SPEC),
        "workloadSelector": obj({"labels": LABELS}),
        "exportTo": strings(),
        "subjectAltNames": strings(),
    },
    required=("hosts",),
    hooks=(_service_entry_spec,),
)

# --- VirtualService ----------------------------------------------------------------------------

STRING_MATCH = obj({"exact": STR, "prefix": STR, "regex": STR})
PORT_SELECTOR = obj({"number": PORT})
DESTINATION = obj(
    {"host": Str(checks=(hostname,)), "subset": STR, "port": PORT_SELECTOR}, required=("host",)
)
HTTP_MATCH_REQUEST = obj(
    {
        "name": STR,
        "uri": STRING_MATCH,
        "scheme": STRING_MATCH,
        "method": STRING_MATCH,
        "authority": STRING_MATCH,
        "headers": MapOf(STRING_MATCH),
        "port": PORT,
        "sourceLabels": LABELS,
        "gateways": strings(),
        "queryParams": MapOf(STRING_MATCH),
        "ignoreUriCase": BOOL,
        "withoutHeaders": MapOf(STRING_MATCH),
        "sourceNamespace": STR,
        "statPrefix": STR,
    }
)
HTTP_ROUTE_DESTINATION = obj(
    {"destination": DESTINATION, "weight": Int(0, 100, "weight"), "headers": ANY},
    required=("destination",),
)
PERCENT = obj({"value": Number()})
HTTP_ROUTE = obj(
    {
        "name": STR,
        "match": ListOf(HTTP_MATCH_REQUEST),
        "route": ListOf(HTTP_ROUTE_DESTINATION),
        "redirect": ANY,
        "directResponse": ANY,
        "delegate": obj({"name": STR, "namespace": STR}),
        "rewrite": obj({"uri": STR, "authority": STR, "uriRegexRewrite": ANY}),
        "timeout": STR,
        "retries": obj(
            {
                "attempts": INT,
                "perTryTimeout": STR,
                "retryOn": STR,
                "retryRemoteLocalities": BOOL,
                "retryIgnorePreviousHosts": BOOL,
                "backoff": STR,
            }
        ),
        "fault": obj({"delay": ANY, "abort": ANY}),
        "mirror": DESTINATION,
        "mirrors": ListOf(obj({"destination": DESTINATION, "percentage": PERCENT})),
        "mirrorPercentage": PERCENT,
        "corsPolicy": ANY,
        "headers": ANY,
    }
)
L4_MATCH = obj(
    {
        "destinationSubnets": strings(cidr),
        "port": PORT,
        "sourceLabels": LABELS,
        "gateways": strings(),
        "sourceNamespace": STR,
        "sniHosts": strings(),
    }
)
ROUTE_DESTINATION = obj(
    {"destination": DESTINATION, "weight": Int(0, 100, "weight")}, required=("destination",)
)
L4_ROUTE = obj({"match": ListOf(L4_MATCH), "route": ListOf(ROUTE_DESTINATION)})
VIRTUAL_SERVICE_SPEC = obj(
    {
        "hosts": strings(hostname),
        "gateways": strings(),
        "http": ListOf(HTTP_ROUTE),
        "tls": ListOf(L4_ROUTE),
        "tcp": ListOf(L4_ROUTE),
        "exportTo": strings(),
    }
)

# --- DestinationRule ---------------------------------------------------------------------------

SUBSET = obj(
    {"name": Str(checks=(dns1123_label,)), "labels": LABELS, "trafficPolicy": TRAFFIC_POLICY},
    required=("name",),
)
DESTINATION_RULE_SPEC = obj(
    {
        "host": Str(checks=(hostname,)),
        "trafficPolicy": TRAFFIC_POLICY,
        "subsets": ListOf(SUBSET, unique_by=lambda s: s.get("name"), unique_what="subset name"),
        "exportTo": strings(),
        "workloadSelector": obj({"matchLabels": LABELS}),
    },
    required=("host",),
)


KINDS = (
    custom_resource("ServiceEntry", API_VERSIONS, SERVICE_ENTRY_SPEC),
    custom_resource("WorkloadEntry", API_VERSIONS, WORKLOAD_ENTRY_SPEC),
    custom_resource("VirtualService", API_VERSIONS, VIRTUAL_SERVICE_SPEC),
    custom_resource("DestinationRule", API_VERSIONS, DESTINATION_RULE_SPEC),
)
