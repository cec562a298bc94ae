"""Validation of the routing kinds' deeper fields: a mistake is rejected with its field path and
a reason, as Istio's validation and the Gateway API CRDs reject it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.cp_support import diagnostics
from tests.unit.test_cp_validation import _paths, _replace, _trees, assert_consistent
from tests.unit.waypoint_support import documents, namespace, pod, service, waypoint
from ztunnel_py.controlplane.resources import Document
from ztunnel_py.controlplane.sources.yamldocs import Parsed, parse_documents
from ztunnel_py.controlplane.store import ConfigStore


def virtual_service(**route: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": "apps"},
        "spec": {
            "hosts": ["echo"],
            "http": [{"route": [{"destination": {"host": "echo"}}], **route}],
        },
    }


def http_route(**rule: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "apps"},
        "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "echo"}], "rules": [rule]},
    }


def gateway(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "apps"},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }
    out.update(changes)
    return out


def problems(obj: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(d.path, d.reason, d.is_error) for d in diagnostics(yaml.safe_dump(obj))]


REDIRECT = {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}
REWRITE = {"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    [
        (
            virtual_service(timeout="soon"),
            "spec.http[0].timeout",
            "'soon' is not a duration (e.g. 10s, 1.5s, 500ms)",
        ),
        (
            virtual_service(retries={"attempts": 2, "retryOn": "5xx,bogus"}),
            "spec.http[0].retries.retryOn",
            "unknown retry condition 'bogus' (Envoy's conditions such as 5xx, gateway-error, "
            "reset, connect-failure, refused-stream, retriable-4xx, or a status code)",
        ),
        (
            virtual_service(redirect={"uri": "/x"}),
            "spec.http[0].redirect",
            "redirect cannot be combined with route",
        ),
        (virtual_service(headers=["x"]), "spec.http[0].headers", "expected a mapping, got a list"),
        (
            virtual_service(fault={"abort": {"httpStatus": 503, "percentage": {"value": 150}}}),
            "spec.http[0].fault.abort.percentage.value",
            "150 is not within 0-100",
        ),
        (
            virtual_service(fault={"abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE"}}),
            "spec.http[0].fault.abort.grpcStatus",
            "grpcStatus cannot be combined with httpStatus",
        ),
        (
            {
                **virtual_service(),
                "spec": {"hosts": ["e"], "http": [{"directResponse": {"status": 99}}]},
            },
            "spec.http[0].directResponse.status",
            "status 99 out of range 200-599",
        ),
        (
            {
                **virtual_service(),
                "spec": {
                    "hosts": ["e"],
                    "http": [{"directResponse": {"status": 200, "body": {"bytes": "!"}}}],
                },
            },
            "spec.http[0].directResponse.body.bytes",
            "not base64 of UTF-8 text",
        ),
        (
            virtual_service(rewrite={"uriRegexRewrite": {"match": "/.*"}}),
            "spec.http[0].rewrite.uriRegexRewrite.rewrite",
            "required field is missing",
        ),
        (
            virtual_service(
                route=[{"destination": {"host": "e"}, "headers": {"request": {"set": {"a": 1}}}}]
            ),
            "spec.http[0].route[0].headers.request.set.a",
            "expected a string, got an integer (quote it)",
        ),
        (
            http_route(filters=[{"type": "RequestRedirect"}]),
            "spec.rules[0].filters[0]",
            "filter type RequestRedirect needs the field requestRedirect",
        ),
        (
            http_route(
                filters=[
                    {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch"}}}
                ]
            ),
            "spec.rules[0].filters[0].urlRewrite.path",
            "type ReplacePrefixMatch needs replacePrefixMatch",
        ),
        (
            http_route(filters=[REDIRECT, REWRITE]),
            "spec.rules[0]",
            "RequestRedirect and URLRewrite cannot both be used on one rule",
        ),
        (
            http_route(timeouts={"request": "1.5s"}),
            "spec.rules[0].timeouts.request",
            "'1.5s' is not a Gateway API duration (e.g. 10s, 500ms, 1h30m)",
        ),
        (
            http_route(backendRefs=[{"name": "e", "port": 80, "filters": [{"type": "Teleport"}]}]),
            "spec.rules[0].backendRefs[0].filters[0].type",
            "'Teleport' is not one of RequestHeaderModifier, ResponseHeaderModifier, "
            "RequestMirror, RequestRedirect, URLRewrite, ExtensionRef, CORS",
        ),
        (
            http_route(
                filters=[
                    {
                        "type": "RequestMirror",
                        "requestMirror": {
                            "backendRef": {"name": "e", "port": 80},
                            "fraction": {"numerator": 5, "denominator": 4},
                        },
                    }
                ]
            ),
            "spec.rules[0].filters[0].requestMirror.fraction",
            "numerator is larger than the denominator (4)",
        ),
        (gateway(status=[]), "status", "expected a mapping, got a list"),
        (
            gateway(
                spec={
                    "gatewayClassName": "istio-waypoint",
                    "listeners": [
                        {
                            "name": "m",
                            "port": 15008,
                            "protocol": "HBONE",
                            "allowedRoutes": {"namespaces": {"from": "Everyone"}},
                        }
                    ],
                }
            ),
            "spec.listeners[0].allowedRoutes.namespaces.from",
            "'Everyone' is not one of All, Same, Selector",
        ),
    ],
)
def test_rejected(obj: dict[str, Any], path: str, reason: str) -> None:
    assert (path, reason, True) in problems(obj)


def test_valid_routes_pass() -> None:
    vs = virtual_service(
        timeout="1.5s",
        retries={"attempts": 3, "perTryTimeout": "100ms", "retryOn": "5xx,503,reset"},
        headers={"request": {"set": {"a": "1"}, "remove": ["b"]}},
        fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 0.1}}},
    )
    route = http_route(
        filters=[
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
            }
        ],
        timeouts={"request": "1h30m"},
    )
    assert problems(vs) == problems(route) == []


def test_unknown_waypoint_traffic_type_is_a_warning() -> None:
    found = problems(
        gateway(
            metadata={
                "name": "w",
                "namespace": "a",
                "labels": {"istio.io/waypoint-for": "services"},
            }
        )
    )
    assert found == [
        (
            'metadata.labels["istio.io/waypoint-for"]',
            "'services' is not one of service, workload, all, none: nothing can bind",
            False,
        )
    ]


WAYPOINT_MESH = parse_documents(
    "\n---\n".join(
        [
            waypoint(),
            documents(
                namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
                service("echo"),
                pod("echo-0", labels={"app": "echo", "version": "v1"}),
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "DestinationRule",
                    "metadata": {"name": "echo", "namespace": "apps"},
                    "spec": {
                        "host": "echo",
                        "trafficPolicy": {
                            "loadBalancer": {
                                "consistentHash": {
                                    "httpCookie": {"name": "s", "path": "/", "ttl": "1h"},
                                    "maglev": {"tableSize": 251},
                                }
                            },
                            "connectionPool": {
                                "tcp": {"maxConnections": 1, "connectTimeout": "2s"},
                                "http": {"http1MaxPendingRequests": 1, "maxRetries": 3},
                            },
                            "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s"},
                            "portLevelSettings": [
                                {"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}
                            ],
                            "retryBudget": {"percent": 10, "minRetryConcurrency": 1},
                        },
                        "subsets": [
                            {
                                "name": "v1",
                                "labels": {"version": "v1"},
                                "trafficPolicy": {
                                    "loadBalancer": {"consistentHash": {"httpHeaderName": "u"}}
                                },
                            }
                        ],
                    },
                },
                virtual_service(
                    match=[{"uri": {"prefix": "/a"}, "headers": {"x": {"exact": "1"}}}],
                    timeout="1s",
                    retries={"attempts": 2, "retryOn": "5xx,503"},
                    fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 1}}},
                    mirror={"host": "echo", "subset": "v1"},
                    headers={"request": {"set": {"a": "b"}}},
                ),
                http_route(
                    matches=[{"path": {"type": "PathPrefix", "value": "/b"}, "method": "GET"}],
                    filters=[{"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}],
                    backendRefs=[{"name": "echo", "port": 80, "weight": 2}],
                    timeouts={"request": "1s"},
                ),
                {
                    "apiVersion": "security.istio.io/v1",
                    "kind": "AuthorizationPolicy",
                    "metadata": {"name": "p", "namespace": "apps"},
                    "spec": {
                        "targetRefs": [{"kind": "Service", "group": "", "name": "echo"}],
                        "rules": [
                            {
                                "to": [{"operation": {"paths": ["/x*"], "methods": ["GET"]}}],
                                "when": [{"key": "request.headers[a]", "values": ["b"]}],
                            }
                        ],
                    },
                },
                {
                    "apiVersion": "extensions.istio.io/v1alpha1",
                    "kind": "WasmPlugin",
                    "metadata": {"name": "w", "namespace": "apps"},
                    "spec": {
                        "targetRefs": [
                            {
                                "kind": "Gateway",
                                "group": "gateway.networking.k8s.io",
                                "name": "waypoint",
                            }
                        ],
                        "url": "python://f",
                        "pluginConfig": {"a": [1, {"b": 2}]},
                    },
                },
            ),
        ]
    ),
    "f.yaml",
).documents


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_waypoint_configuration_never_crashes(data: st.DataObject) -> None:
    """The waypoint kinds with one value replaced anywhere: validation, translation and the
    store must not raise, and keep serving the last good state of what they reject."""
    store = ConfigStore(report=False)
    store.apply({"f.yaml": Parsed(WAYPOINT_MESH)})
    good = store.current()
    assert good.http_services and not [d for d in store.diagnostics() if d.is_error]
    before = dict(store.resources())
    mutated = []
    for doc in WAYPOINT_MESH:
        path = data.draw(st.sampled_from(_paths(doc.body)))
        mutated.append(Document(doc.origin, _replace(doc.body, path, data.draw(_trees))))
    store.apply({"f.yaml": Parsed(tuple(mutated))})
    assert_consistent(store, tuple(mutated), before)
