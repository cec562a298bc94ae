"""Our waypoint xDS types both ways: every field survives a round trip, damaged resources are
refused with a one-line reason (the NACK) while the rest of a response is applied."""

from __future__ import annotations

import pytest
from google.protobuf.any_pb2 import Any as AnyPb

from ztunnel_py.model import Action, Authorization, Match, PolicyScope, StringMatch
from ztunnel_py.model import StringMatchKind as K
from ztunnel_py.model.http import (
    Backend,
    DirectResponse,
    Fault,
    FilterConfig,
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
from ztunnel_py.model.policy import HeaderCondition, WaypointPolicy
from ztunnel_py.proto import discovery_pb2, l7_pb2
from ztunnel_py.xds.convert import ConversionError, decode_response
from ztunnel_py.xds.l7convert import (
    HTTP_SERVICE_TYPE,
    L7_DECODERS,
    WAYPOINT_POLICY_TYPE,
    http_service_from_proto,
    http_service_to_proto,
    waypoint_policy_from_proto,
    waypoint_policy_to_proto,
)

ECHO = "apps/echo.apps.svc.cluster.local"

SERVICE = HttpService(
    ECHO,
    routes=(
        Route(
            "api",
            matches=(
                RouteMatch(
                    path=PathMatch(MatchKind.PREFIX, "/api", segment_prefix=True),
                    method="POST",
                    headers=(HeaderMatch("x-user", MatchKind.REGEX, "a.*"),),
                    query=(QueryMatch("debug", MatchKind.PRESENT),),
                    port=80,
                ),
                RouteMatch(path=PathMatch(MatchKind.EXACT, "/v1", ignore_case=True)),
            ),
            backends=(
                Backend(ECHO, 80, 90, "v1", HeaderOps(set=(("x-a", "1"),))),
                Backend(ECHO, 80, 10, "v2", response_headers=HeaderOps(remove=("server",))),
            ),
            rewrite=Rewrite(prefix="/"),
            request_headers=HeaderOps(add=(("x-b", "2"),)),
            timeout=15.0,
            retries=RetryPolicy(3, 5.0, ("5xx", "retriable-status-codes"), (503,)),
            mirrors=(Mirror(Backend(ECHO, 80, subset="v2"), 10.0),),
            fault=Fault(0.1, 0.1, 0.0, 503),
            origin="VirtualService apps/echo http 0",
        ),
        Route("moved", redirect=Redirect(301, "https", None, 8443, None, "/new")),
        Route("teapot", direct_response=DirectResponse(418, "short and stout")),
    ),
    subsets=((ECHO, (Subset("v1", (("version", "v1"),), frozenset({"uid-1"})),)),),
    sources=("VirtualService apps/echo",),
    filters=(
        FilterConfig("local_ratelimit", "AUTHZ", 10, {"max_tokens": 5}, "WasmPlugin apps/rl"),
    ),
)

POLICY = WaypointPolicy(
    Authorization(
        "deny-delete",
        "apps",
        PolicyScope.WORKLOAD_SELECTOR,
        Action.DENY,
        (
            (
                (
                    Match(
                        principals=(StringMatch(K.SUFFIX, "/sa/web"),),
                        methods=(StringMatch(K.EXACT, "DELETE"),),
                        not_paths=(StringMatch(K.PREFIX, "/public/"),),
                        hosts=(StringMatch(K.PRESENCE),),
                    ),
                ),
                (Match(headers=(HeaderCondition("x-env", (StringMatch(K.EXACT, "prod"),)),)),),
            ),
        ),
        dry_run=True,
    ),
    services=(ECHO,),
)


def test_an_http_service_survives_the_round_trip() -> None:
    wire = http_service_to_proto(SERVICE).SerializeToString()
    back = http_service_from_proto(l7_pb2.HttpService.FromString(wire))
    assert back == SERVICE
    assert back.filters[0].config == {"max_tokens": 5}


def test_a_waypoint_policy_survives_the_round_trip() -> None:
    wire = waypoint_policy_to_proto(POLICY).SerializeToString()
    assert waypoint_policy_from_proto(l7_pb2.HttpAuthorization.FromString(wire)) == POLICY


def _damaged(edit: str) -> l7_pb2.HttpService:
    pb = http_service_to_proto(SERVICE)
    route = pb.routes[0]
    if edit == "status":
        pb.routes[2].direct_response.status = 99
    elif edit == "regex":
        route.matches[0].headers[0].value = "(unclosed"
    elif edit == "port":
        route.backends[0].port = 70000
    elif edit == "backend":
        route.backends[0].service = "no-namespace"
    elif edit == "percent":
        route.mirrors[0].percent = 120
    elif edit == "kind":
        route.matches[0].path.kind = 42  # type: ignore[assignment]
    elif edit == "duration":
        route.timeout.seconds = -1
    return pb


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("status", "route 2 (teapot): direct response status 99 is not an HTTP status"),
        ("regex", "route 0 (api): invalid regular expression '(unclosed'"),
        ("port", "route 0 (api): backend port 70000 is not a port"),
        ("backend", "route 0 (api): backend service 'no-namespace' is not <namespace>/<hostname>"),
        ("percent", "route 0 (api): mirror percentage 120.0 is not within 0-100"),
        ("kind", "route 0 (api): unsupported path match kind 42"),
        ("duration", "route 0 (api): route timeout is negative"),
    ],
)
def test_damaged_resources_are_refused_with_a_reason(edit: str, reason: str) -> None:
    with pytest.raises(ConversionError) as caught:
        http_service_from_proto(_damaged(edit))
    assert str(caught.value).startswith(reason)
    assert "\n" not in str(caught.value)


def _response(type_url: str, *resources: tuple[str, bytes]) -> bytes:
    pb = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce="n1")
    for name, payload in resources:
        r = pb.resources.add(name=name, version="v")
        r.resource.CopyFrom(AnyPb(type_url=type_url, value=payload))
    return pb.SerializeToString()


def test_a_response_keeps_its_valid_resources_and_names_the_others() -> None:
    good = http_service_to_proto(SERVICE).SerializeToString()
    bad = _damaged("status").SerializeToString()
    raw = _response(HTTP_SERVICE_TYPE, (ECHO, good), ("apps/other", bad), ("apps/x", good))
    decoded = decode_response(raw, L7_DECODERS)
    assert decoded.others == [SERVICE] and list(decoded.accepted) == [ECHO]
    assert decoded.rejected["apps/other"].startswith("route 2 (teapot)")
    assert decoded.rejected["apps/x"] == f"resource name does not match its key {ECHO!r}"


def test_policies_decode_by_their_own_type_url() -> None:
    raw = _response(
        WAYPOINT_POLICY_TYPE,
        ("apps/deny-delete", waypoint_policy_to_proto(POLICY).SerializeToString()),
    )
    assert decode_response(raw, L7_DECODERS).others == [POLICY]
    # a client that did not ask for the L7 types converts nothing of them
    assert decode_response(raw).others == []
