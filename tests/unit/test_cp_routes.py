"""HTTPRoute and VirtualService compiled into the HttpService a waypoint applies: precedence
(checked by matching real requests with the waypoint's own route matcher, Gateway API
conformance style), filters, backends, timeouts and retries, subsets, and which resource a
service gets when several compete."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.unit.waypoint_support import documents, namespace, pod, service, translation, warnings
from tests.unit.waypoint_support import waypoint as ready_waypoint
from ztunnel_py.controlplane.validation.routing import parse_duration
from ztunnel_py.http.message import Headers, RequestHead
from ztunnel_py.http.routing import match_route
from ztunnel_py.model.http import (
    Backend,
    DirectResponse,
    Fault,
    HeaderMatch,
    HeaderOps,
    HttpService,
    MatchKind,
    Mirror,
    PathMatch,
    QueryMatch,
    Redirect,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
    Subset,
)

USE = "istio.io/use-waypoint"
ECHO = "apps/echo.apps.svc.cluster.local"
V1 = "apps/echo-v1.apps.svc.cluster.local"
V2 = "apps/echo-v2.apps.svc.cluster.local"


def mesh(*extra: dict[str, Any]) -> str:
    """A waypoint for namespace apps, service echo (port 80) and its two versions as services
    of their own (echo-v1, echo-v2), pods of both versions."""
    return documents(
        namespace("apps", **{USE: "waypoint"}),
        service("echo", selector={"app": "echo"}),
        service("echo-v1", ip="10.96.0.11", selector={"app": "echo", "version": "v1"}),
        service("echo-v2", ip="10.96.0.12", selector={"app": "echo", "version": "v2"}),
        pod("echo-a", ip="10.1.0.11", labels={"app": "echo", "version": "v1"}),
        pod("echo-b", ip="10.1.0.12", labels={"app": "echo", "version": "v2"}),
        *extra,
    )


def http_route(
    name: str,
    rules: list[dict[str, Any]],
    ns: str = "apps",
    created: str | None = None,
    **parent: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", **parent}],
            "rules": rules,
        },
    }


def virtual_service(
    name: str, http: list[dict[str, Any]], ns: str = "apps", created: str | None = None, **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {"hosts": spec.pop("hosts", ["echo"]), "http": http, **spec},
    }


def destination_rule(subsets: dict[str, str], host: str = "echo") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "echo", "namespace": "apps"},
        "spec": {
            "host": host,
            "subsets": [{"name": n, "labels": {"version": v}} for n, v in subsets.items()],
        },
    }


def compiled(*objects: dict[str, Any]) -> tuple[HttpService, list[str]]:
    t, diagnostics = translation(ready_waypoint(), mesh(*objects))
    return t.http_services[ECHO], warnings(diagnostics)


def backend(key: str = V1, port: int = 80, weight: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": key.split("/")[1].split(".")[0], "port": port, "weight": weight, **kw}


def routed(service: HttpService, path: str, method: str = "GET", **headers: str) -> str:
    """The name of the route a request takes, or '404'."""
    head = RequestHead(method, path, "echo.apps:80", Headers(list(headers.items())))
    found = match_route(service.routes, head, 80)
    return found[0].name if found is not None else "404"


# --- HTTPRoute -------------------------------------------------------------------------------


def test_every_bound_service_gets_an_http_service_even_without_routes() -> None:
    t, _ = translation(ready_waypoint(), mesh())
    assert t.http_services[ECHO] == HttpService(ECHO)
    assert set(t.http_services) == {ECHO, V1, V2}


def test_httproute_split_with_header_modifier() -> None:
    rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/api/"}}],
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": "X-Env", "value": "a"}, {"name": "x-env", "value": "b"}],
                    "add": [{"name": "x-add", "value": "1"}],
                    "remove": ["X-Drop"],
                },
            }
        ],
        "backendRefs": [backend(V1, weight=80), backend(V2, weight=20)],
    }
    svc, problems = compiled(http_route("split", [rule]))
    assert problems == []
    assert svc.sources == ("HTTPRoute apps/split",)
    assert svc.routes == (
        Route(
            name="apps.split.0",
            matches=(RouteMatch(path=PathMatch(MatchKind.PREFIX, "/api")),),
            backends=(Backend(V1, 80, 80), Backend(V2, 80, 20)),
            request_headers=HeaderOps(
                set=(("x-env", "a"),), add=(("x-add", "1"),), remove=("x-drop",)
            ),
            origin="HTTPRoute apps/split rule 0",
        ),
    )


def test_gateway_api_precedence_across_routes() -> None:
    def rule(name: str, match: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "matches": [match], "backendRefs": [backend()]}

    older = http_route(
        "older",
        [
            rule("prefix-short", {"path": {"type": "PathPrefix", "value": "/a"}}),
            rule(
                "query", {"path": {"value": "/a/b"}, "queryParams": [{"name": "q", "value": "1"}]}
            ),
        ],
        created="2024-01-01T00:00:00Z",
    )
    newer = http_route(
        "newer",
        [
            rule("exact", {"path": {"type": "Exact", "value": "/a/b"}}),
            rule("prefix-long", {"path": {"value": "/a/b"}}),
            rule("method", {"path": {"value": "/a/b"}, "method": "POST"}),
            rule("header", {"path": {"value": "/a/b"}, "headers": [{"name": "h", "value": "1"}]}),
            rule("regex", {"path": {"type": "RegularExpression", "value": "/r/.*/z"}}),
            {"name": "catch-all", "backendRefs": [backend()]},
        ],
        created="2024-02-01T00:00:00Z",
    )
    svc, _ = compiled(newer, older)
    assert routed(svc, "/a/b") == "exact"
    assert routed(svc, "/a/b/c") == "prefix-long"
    assert routed(svc, "/a/b/c", "POST") == "method"
    # a method beats a header; a header beats a query parameter
    assert routed(svc, "/a/b/c", "POST", h="1") == "method"
    assert routed(svc, "/a/b/c?q=1", h="1") == "header"
    assert routed(svc, "/a/b/c?q=1") == "query"
    assert routed(svc, "/a/x") == "prefix-short"
    # PathPrefix matches whole segments: /ab is not under /a
    assert routed(svc, "/ab") == "catch-all"
    # regular expressions rank below every prefix (implementation-specific: istiod's order),
    # so the catch-all shadows this one
    assert routed(svc, "/r/x/z") == "catch-all"
    assert [r.name for r in svc.routes][-2:] == ["catch-all", "regex"]


def test_ties_go_to_the_oldest_route() -> None:
    def route(name: str, created: str) -> dict[str, Any]:
        return http_route(
            name,
            [{"name": name, "matches": [{"path": {"value": "/x"}}], "backendRefs": [backend()]}],
            created=created,
        )

    svc, _ = compiled(route("b", "2024-01-02T00:00:00Z"), route("a", "2024-01-03T00:00:00Z"))
    assert routed(svc, "/x") == "b"
    assert svc.sources == ("HTTPRoute apps/b", "HTTPRoute apps/a")


def test_a_rule_without_matches_is_prefix_slash() -> None:
    svc, _ = compiled(http_route("all", [{"backendRefs": [backend()]}]))
    assert svc.routes[0].matches == (RouteMatch(path=PathMatch(MatchKind.PREFIX, "/")),)


def test_redirect_rewrite_and_mirror_filters() -> None:
    rules = [
        {
            "matches": [{"path": {"value": "/old"}}],
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new/"}
                    },
                }
            ],
        },
        {
            "matches": [{"path": {"value": "/v1"}}],
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "hostname": "echo.internal",
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/full"},
                    },
                },
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": "echo-v2", "port": 80},
                        "fraction": {"numerator": 1, "denominator": 4},
                    },
                },
            ],
            "backendRefs": [backend()],
        },
    ]
    svc, problems = compiled(http_route("filters", rules))
    assert problems == []
    old, v1 = (next(r for r in svc.routes if r.matches[0].path.value == p) for p in ("/old", "/v1"))  # type: ignore[union-attr]
    assert (old.redirect, old.backends, old.direct_response) == (
        Redirect(status=302, prefix="/new"),
        (),
        None,
    )
    assert v1.rewrite == Rewrite(path="/full", authority="echo.internal")
    assert v1.mirrors == (Mirror(Backend(V2, 80), 25.0),)


def test_unsupported_filters_fail_the_rule_with_500() -> None:
    rule = {
        "filters": [{"type": "ExtensionRef", "extensionRef": {"kind": "X", "name": "y"}}],
        "backendRefs": [backend()],
    }
    svc, problems = compiled(http_route("ext", [rule]))
    assert svc.routes[0].direct_response == DirectResponse(500)
    assert svc.routes[0].backends == ()
    assert problems == [
        "spec.rules[0].filters[0]: filter ExtensionRef is not supported: requests matching "
        "this rule get 500, as Gateway API requires for a filter that cannot be applied"
    ]


@pytest.mark.parametrize(
    ("refs", "backends", "direct", "problem"),
    [
        ([backend(V1, weight=0), backend(V2)], (Backend(V2, 80),), None, None),
        ([backend(V1, weight=0)], (), DirectResponse(500), None),
        ([], (), DirectResponse(500), None),
        (
            [backend(V1), {"name": "missing", "port": 80}],
            (Backend(V1, 80), Backend("apps/", 80)),
            None,
            "spec.rules[0].backendRefs[1]: backend Service apps/missing not found: its share "
            "of the requests gets 500",
        ),
        (
            [{"name": "echo-v1"}],
            (Backend("apps/", 0),),
            None,
            "spec.rules[0].backendRefs[0]: backend Service apps/echo-v1 needs a port: its "
            "share of the requests gets 500",
        ),
        (
            [{"name": "echo-v1", "namespace": "other", "port": 80}],
            (Backend("apps/", 80),),
            None,
            "spec.rules[0].backendRefs[0]: backend other/echo-v1 is in another namespace, "
            "which needs a ReferenceGrant (not supported): its share of the requests gets 500",
        ),
    ],
)
def test_backend_refs(
    refs: list[dict[str, Any]],
    backends: tuple[Backend, ...],
    direct: DirectResponse | None,
    problem: str | None,
) -> None:
    svc, problems = compiled(http_route("r", [{"backendRefs": refs}]))
    (route,) = svc.routes
    assert (route.backends, route.direct_response) == (backends, direct)
    assert problems == ([problem] if problem else [])
    assert all(b.unresolved == (b.service == "apps/") for b in route.backends)


def test_backend_header_filters() -> None:
    ref = backend(
        filters=[
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"add": [{"name": "x-v", "value": "1"}]},
            }
        ]
    )
    svc, _ = compiled(http_route("r", [{"backendRefs": [ref]}]))
    assert svc.routes[0].backends[0].response_headers == HeaderOps(add=(("x-v", "1"),))


@pytest.mark.parametrize(
    ("rule", "timeout", "retries"),
    [
        ({"timeouts": {"request": "10s"}}, 10.0, None),
        ({"timeouts": {"request": "0s"}}, None, None),
        ({"timeouts": {"backendRequest": "2s"}}, 2.0, None),
        ({"timeouts": {"request": "10s", "backendRequest": "2s"}}, 2.0, None),
        (
            {"timeouts": {"request": "10s", "backendRequest": "500ms"}, "retry": {"codes": [503]}},
            10.0,
            RetryPolicy(
                2,
                0.5,
                (
                    "connect-failure",
                    "refused-stream",
                    "unavailable",
                    "cancelled",
                    "retriable-status-codes",
                ),
                (503,),
            ),
        ),
    ],
)
def test_timeouts_and_retries(
    rule: dict[str, Any], timeout: float | None, retries: RetryPolicy | None
) -> None:
    svc, _ = compiled(http_route("r", [{**rule, "backendRefs": [backend()]}]))
    assert (svc.routes[0].timeout, svc.routes[0].retries) == (timeout, retries)


def test_parent_port_and_section_name() -> None:
    svc, _ = compiled(
        http_route("by-port", [{"backendRefs": [backend()]}], port=80),
    )
    assert svc.routes[0].matches[0].port == 80
    svc, _ = compiled(http_route("by-name", [{"backendRefs": [backend()]}], sectionName="http"))
    assert svc.routes[0].matches[0].port == 80
    svc, problems = compiled(http_route("bad", [{"backendRefs": [backend()]}], sectionName="x"))
    assert svc.routes == ()
    assert problems == ["spec.parentRefs[0].sectionName: no port named 'x': not attached"]


def test_parent_problems_are_reported() -> None:
    lonely = service("lonely", ns="other", ip="10.96.1.1")
    missing = http_route("missing", [], ns="apps")
    missing["spec"]["parentRefs"][0]["name"] = "nope"
    unbound = http_route("unbound", [], ns="other")
    unbound["spec"]["parentRefs"][0]["name"] = "lonely"
    consumer = http_route("consumer", [{"backendRefs": [backend()]}], ns="other")
    consumer["spec"]["parentRefs"][0]["namespace"] = "apps"
    _, problems = compiled(documents_(lonely, missing, unbound, consumer))
    assert sorted(problems) == [
        "spec.parentRefs[0]: a route in namespace other is a consumer route for that "
        "namespace's clients: the waypoint of apps/echo.apps.svc.cluster.local only uses "
        "routes from its own or the service's namespace",
        'spec.parentRefs[0]: parent service "nope" not found',
        "spec.parentRefs[0]: service other/lonely.other.svc.cluster.local has no waypoint, "
        "so nothing applies this: label the service or its namespace with istio.io/use-waypoint",
    ]


def documents_(*objects: dict[str, Any]) -> dict[str, Any]:
    """Several objects as one `kind: List` (so `compiled` takes them as one extra)."""
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


# --- VirtualService --------------------------------------------------------------------------


def test_virtual_service_matches() -> None:
    http = [
        {
            "name": "api",
            "match": [
                {
                    "uri": {"prefix": "/API"},
                    "ignoreUriCase": True,
                    "headers": {"x-user": {"exact": "bob"}, "x-any": {}},
                    "withoutHeaders": {"x-debug": {"regex": "1|true"}},
                    "queryParams": {"v": {"exact": "2"}},
                    "method": {"exact": "GET"},
                    "authority": {"prefix": "echo"},
                    "port": 80,
                },
                {"uri": {"exact": "/mesh-only"}, "gateways": ["mesh"]},
                {"uri": {"exact": "/ingress-only"}, "gateways": ["istio-system/ingress"]},
            ],
            "route": [{"destination": {"host": "echo-v1"}}],
        }
    ]
    svc, problems = compiled(virtual_service("echo", http))
    assert problems == []
    (route,) = svc.routes
    assert route.matches == (
        RouteMatch(
            path=PathMatch(MatchKind.PREFIX, "/API", segment_prefix=False, ignore_case=True),
            method="GET",
            headers=(
                HeaderMatch("x-user", MatchKind.EXACT, "bob"),
                HeaderMatch("x-any", MatchKind.PRESENT),
                HeaderMatch("x-debug", MatchKind.REGEX, "1|true", invert=True),
                HeaderMatch(":authority", MatchKind.PREFIX, "echo"),
            ),
            query=(QueryMatch("v", MatchKind.EXACT, "2"),),
            port=80,
        ),
        RouteMatch(path=PathMatch(MatchKind.EXACT, "/mesh-only", segment_prefix=False)),
    )
    assert route.backends == (Backend(V1, 80),)
    assert route.origin == "VirtualService apps/echo http[0]"
    assert routed(svc, "/api/x?v=2", **{"x-user": "bob", "x-any": ""}) == "api"
    assert routed(svc, "/apix?v=2", **{"x-user": "bob", "x-any": "1"}) == "api"
    assert routed(svc, "/api?v=2", **{"x-user": "bob", "x-any": "1", "x-debug": "true"}) == "404"


def test_virtual_service_actions() -> None:
    body = base64.b64encode(b"gone").decode()
    http = [
        {
            "match": [{"uri": {"prefix": "/moved"}}],
            "redirect": {"uri": "/new", "authority": "elsewhere", "port": 8080},
        },
        {
            "match": [{"uri": {"exact": "/gone"}}],
            "directResponse": {"status": 410, "body": {"bytes": body}},
        },
        {
            "match": [{"uri": {"prefix": "/v1/"}}],
            "rewrite": {"uri": "/", "authority": "echo.internal"},
            "headers": {
                "request": {"set": {"X-A": "1"}, "remove": ["x-b"]},
                "response": {"add": {"x-c": "2"}},
            },
            "route": [
                {
                    "destination": {"host": "echo-v1"},
                    "weight": 75,
                    "headers": {"request": {"set": {"x-d": "v1"}}},
                },
                {
                    "destination": {
                        "host": "echo-v2.apps.svc.cluster.local",
                        "port": {"number": 80},
                    },
                    "weight": 25,
                },
                {"destination": {"host": "echo"}, "weight": 0},
            ],
            "timeout": "1.5s",
            "retries": {
                "attempts": 3,
                "perTryTimeout": "500ms",
                "retryOn": "5xx, reset,503 ",
            },
        },
        {
            "match": [{"uri": {"regex": "/rx/.*"}}],
            "rewrite": {"uriRegexRewrite": {"match": "/.*", "rewrite": "/whole"}},
            "route": [{"destination": {"host": "echo-v1"}}],
            "retries": {"attempts": 0},
        },
        {"route": [{"destination": {"host": "echo-v1"}}], "retries": {"attempts": 2}},
        {"route": [{"destination": {"host": "echo-v2"}}]},
    ]
    svc, problems = compiled(virtual_service("echo", http))
    moved, gone, v1, rx, rest = svc.routes
    assert moved.redirect == Redirect(status=301, host="elsewhere", port=8080, path="/new")
    assert gone.direct_response == DirectResponse(410, "gone")
    assert v1.rewrite == Rewrite(prefix="/", authority="echo.internal")
    assert v1.request_headers == HeaderOps(set=(("x-a", "1"),), remove=("x-b",))
    assert v1.response_headers == HeaderOps(add=(("x-c", "2"),))
    assert v1.backends == (
        Backend(V1, 80, 75, request_headers=HeaderOps(set=(("x-d", "v1"),))),
        Backend(V2, 80, 25),
    )
    assert v1.timeout == 1.5
    assert v1.retries == RetryPolicy(3, 0.5, ("5xx", "reset", "retriable-status-codes"), (503,))
    assert rx.rewrite == Rewrite(path="/whole")
    assert rx.retries == RetryPolicy(0)
    # retries without retryOn: Istio's default conditions
    assert rest.retries == RetryPolicy(
        2,
        None,
        ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"),
        (503,),
    )
    assert problems == ["spec.http[5]: unreachable: route 4 has no match and takes every request"]


def test_fault_and_mirrors() -> None:
    http = [
        {
            "fault": {
                "delay": {"percentage": {"value": 0.1}, "fixedDelay": "100ms"},
                "abort": {"percentage": {"value": 5}, "grpcStatus": "UNAVAILABLE"},
            },
            "mirror": {"host": "echo-v2"},
            "mirrorPercentage": {"value": 10},
            "mirrors": [{"destination": {"host": "echo-v1"}, "percentage": {"value": 1}}],
            "route": [{"destination": {"host": "echo-v1"}}],
        }
    ]
    svc, problems = compiled(virtual_service("echo", http))
    (route,) = svc.routes
    assert route.fault == Fault(0.1, 0.1, 5.0, 0, 14)
    assert route.mirrors == (Mirror(Backend(V2, 80), 10.0), Mirror(Backend(V1, 80), 1.0))
    assert problems == []


def test_abort_by_http_status_and_unset_percentages() -> None:
    http = [
        {
            "fault": {"abort": {"httpStatus": 503}, "delay": {"fixedDelay": "1s", "percent": 50}},
            "route": [{"destination": {"host": "echo-v1"}}],
        }
    ]
    svc, problems = compiled(virtual_service("echo", http))
    assert svc.routes[0].fault == Fault(50.0, 1.0, 0.0, 503, 0)
    assert problems == ["spec.http[0].fault.abort: no percentage: no request is affected"]


def test_destinations_without_port_use_the_request_port() -> None:
    multi = service(
        "multi",
        ip="10.96.0.20",
        ports=[{"name": "http", "port": 80}, {"name": "http-alt", "port": 8080}],
    )
    vs = virtual_service(
        "multi", [{"route": [{"destination": {"host": "multi"}}]}], hosts=["multi"]
    )
    t, _ = translation(ready_waypoint(), mesh(multi, vs))
    routes = t.http_services["apps/multi.apps.svc.cluster.local"].routes
    key = "apps/multi.apps.svc.cluster.local"
    assert [(r.matches[0].port, r.backends) for r in routes] == [
        (80, (Backend(key, 80),)),
        (8080, (Backend(key, 8080),)),
    ]


def test_subsets_resolve_to_the_workloads_with_their_labels() -> None:
    http = [
        {
            "route": [
                {"destination": {"host": "echo", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "echo", "subset": "v3"}, "weight": 10},
            ]
        }
    ]
    svc, problems = compiled(
        virtual_service("echo", http), destination_rule({"v1": "v1", "v2": "v2"})
    )
    assert svc.subsets == (
        (
            ECHO,
            (Subset("v1", (("version", "v1"),), frozenset({"Kubernetes//Pod/apps/echo-a"})),),
        ),
    )
    assert problems == [
        'spec.http: subset "v3" of echo.apps.svc.cluster.local is not defined by any '
        "DestinationRule: requests routed to it get 503 (no healthy upstream)"
    ]


def test_a_waypoint_uses_one_resource_per_service() -> None:
    route = http_route("route", [{"backendRefs": [backend()]}])
    old_vs = virtual_service(
        "old", [{"route": [{"destination": {"host": "echo-v1"}}]}], created="2024-01-01T00:00:00Z"
    )
    new_vs = virtual_service(
        "new", [{"route": [{"destination": {"host": "echo-v2"}}]}], created="2024-02-01T00:00:00Z"
    )
    svc, problems = compiled(route, old_vs, new_vs)
    assert svc.sources == ("HTTPRoute apps/route",)
    assert (
        sorted(problems)
        == [
            "metadata.name: not used for echo.apps.svc.cluster.local: HTTPRoute apps/route "
            "applies there (a waypoint uses one VirtualService, or the HTTPRoutes of one "
            "namespace, per service; mixing them is not supported)"
        ]
        * 2
    )
    svc, problems = compiled(new_vs, old_vs)
    assert svc.sources == ("VirtualService apps/old",)
    assert len(problems) == 1 and "VirtualService apps/old applies" in problems[0]


def test_virtual_services_that_are_not_for_the_mesh_or_elsewhere_are_not_used() -> None:
    ingress = virtual_service("ingress", [{"route": [{"destination": {"host": "echo-v1"}}]}])
    ingress["spec"]["gateways"] = ["istio-system/ingress"]
    elsewhere = virtual_service(
        "elsewhere",
        [{"route": [{"destination": {"host": "echo-v1.apps.svc.cluster.local"}}]}],
        ns="other",
        hosts=["echo.apps.svc.cluster.local"],
    )
    svc, _ = compiled(ingress, elsewhere)
    assert svc.routes == ()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("100ms", 0.1),
        ("1h30m", 5400.0),
        ("0s", 0.0),
        ("5", None),
        ("s", None),
        ("1x", None),
        ("", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds
