"""Our waypoint xDS types both ways: every field survives model -> wire -> model, and what the
model cannot hold is refused with a one-line reason (the NACK text)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from ztunnel_py.model import Action, Authorization, Match, PolicyScope, StringMatch, StringMatchKind
from ztunnel_py.model.authn import ClaimToHeader, JwtHeader, JwtRule, WaypointAuthentication
from ztunnel_py.model.http import (
    Backend,
    ClusterPolicy,
    ConnectionPool,
    ConsistentHash,
    DirectResponse,
    Fault,
    FilterConfig,
    FilterPhase,
    HashSource,
    HashTable,
    HeaderMatch,
    HeaderOps,
    HttpService,
    LoadBalancer,
    LoadBalancerKind,
    MatchKind,
    Mirror,
    OutlierDetection,
    PathMatch,
    QueryMatch,
    Redirect,
    RetryBudget,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
    Subset,
    TrafficPolicy,
)
from ztunnel_py.model.policy import (
    ClaimCondition,
    HeaderCondition,
    RequestPrincipalMatch,
    WaypointPolicy,
)
from ztunnel_py.proto import l7_pb2
from ztunnel_py.xds.convert import ConversionError
from ztunnel_py.xds.l7convert import (
    AUTHENTICATION_TYPE,
    HTTP_SERVICE_TYPE,
    L7_DECODERS,
    WAYPOINT_POLICY_TYPE,
    authentication_from_proto,
    authentication_to_proto,
    encode_l7_resource,
    http_service_from_proto,
    http_service_to_proto,
)

SVC = "apps/echo.apps.svc.cluster.local"

FULL = HttpService(
    SVC,
    routes=(
        Route(
            "r0",
            matches=(
                RouteMatch(
                    path=PathMatch(
                        MatchKind.PREFIX, "/api", segment_prefix=False, ignore_case=True
                    ),
                    method="GET",
                    headers=(HeaderMatch("x-a", MatchKind.REGEX, "a+", invert=True),),
                    query=(QueryMatch("q", MatchKind.EXACT, "1"),),
                    port=80,
                ),
            ),
            backends=(
                Backend(
                    SVC, 80, 90, "v1", HeaderOps(set=(("x-b", "1"),)), HeaderOps(remove=("x-c",))
                ),
                Backend("apps/", 0, 10),
            ),
            rewrite=Rewrite(prefix="/"),
            request_headers=HeaderOps(add=(("x-d", "2"),)),
            timeout=1.5,
            retries=RetryPolicy(3, 0.25, ("5xx", "retriable-status-codes"), (503,)),
            mirrors=(Mirror(Backend(SVC, 80, 1, "v2"), 10.0),),
            fault=Fault(0.1, 0.1, 5.0, 0, 14),
            origin="VirtualService apps/echo http[0]",
        ),
        Route("r1", redirect=Redirect(301, "https", "x", 8443, None, "/new")),
        Route("r2", direct_response=DirectResponse(410, "gone")),
    ),
    subsets=((SVC, (Subset("v1", (("version", "v1"),), frozenset({"uid-1", "uid-2"})),)),),
    sources=("VirtualService apps/echo",),
    filters=(
        FilterConfig(
            "local_ratelimit",
            FilterPhase.AUTHZ,
            7,
            {"max_tokens": 10, "nested": {"list": [1, 2.5, None, True]}},
            fail_open=True,
            origin="WasmPlugin apps/ratelimit",
        ),
        FilterConfig("stats_extra", FilterPhase.STATS),
    ),
    clusters=(
        ClusterPolicy(
            SVC,
            "",
            0,
            TrafficPolicy(
                LoadBalancer(
                    LoadBalancerKind.ROUND_ROBIN,
                    ConsistentHash(HashSource.COOKIE, "session", "/", 60.0, HashTable.MAGLEV, 251),
                ),
                ConnectionPool(100, 2.5, 10, 1000, 2, 3, 60.0, 3600.0),
                OutlierDetection(7, 3, 5.0, 15.0, 50, 25, True, 4),
                RetryBudget(25.0, 5),
                "DestinationRule apps/echo",
            ),
        ),
        ClusterPolicy(SVC, "v1", 8080, TrafficPolicy()),
        ClusterPolicy(
            SVC,
            "v2",
            0,
            TrafficPolicy(
                LoadBalancer(
                    LoadBalancerKind.LEAST_REQUEST,
                    ConsistentHash(HashSource.HEADER, "x-user", cookie_ttl=0.0, table_size=4096),
                )
            ),
        ),
    ),
)

POLICY = WaypointPolicy(
    Authorization(
        "p",
        "apps",
        PolicyScope.WORKLOAD_SELECTOR,
        Action.AUDIT,
        (
            (
                (
                    Match(
                        source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
                        paths=(StringMatch(StringMatchKind.PREFIX, "/a/"),),
                        not_methods=(StringMatch(StringMatchKind.EXACT, "DELETE"),),
                        hosts=(StringMatch(StringMatchKind.SUFFIX, ".example.com"),),
                        headers=(HeaderCondition("x-t", (StringMatch(StringMatchKind.PRESENCE),)),),
                        request_principals=(
                            RequestPrincipalMatch(
                                StringMatch(StringMatchKind.EXACT, "https://issuer"),
                                StringMatch(StringMatchKind.PRESENCE),
                            ),
                        ),
                        not_request_principals=(
                            RequestPrincipalMatch(
                                StringMatch(StringMatchKind.PRESENCE),
                                StringMatch(StringMatchKind.SUFFIX, "@bots"),
                            ),
                        ),
                        claims=(
                            ClaimCondition(
                                ("org", "team"), (StringMatch(StringMatchKind.EXACT, "mesh"),)
                            ),
                        ),
                        not_claims=(
                            ClaimCondition(("aud",), (StringMatch(StringMatchKind.PREFIX, "x"),)),
                        ),
                    ),
                ),
            ),
        ),
        dry_run=True,
    ),
    (SVC,),
)


AUTHENTICATION = WaypointAuthentication(
    "jwt",
    "apps",
    (
        JwtRule(
            "https://issuer",
            audiences=("echo",),
            jwks='{"keys": []}',
            forward_original_token=True,
            output_payload_to_header="x-jwt-payload",
            output_claim_to_headers=(ClaimToHeader("x-group", "groups.main"),),
            from_headers=(JwtHeader("x-token", "Token "),),
            from_params=("jwt",),
            from_cookies=("session",),
            space_delimited_claims=("permission", "roles", "scope"),
            origin="RequestAuthentication apps/jwt",
        ),
        JwtRule("other", jwks_error="cannot fetch the keys of issuer other: status 503"),
    ),
    (SVC,),
)


@pytest.mark.parametrize(
    ("type_url", "obj"),
    [
        (HTTP_SERVICE_TYPE, FULL),
        (WAYPOINT_POLICY_TYPE, POLICY),
        (AUTHENTICATION_TYPE, AUTHENTICATION),
    ],
)
def test_round_trip(
    type_url: str, obj: HttpService | WaypointPolicy | WaypointAuthentication
) -> None:
    encoded = encode_l7_resource(type_url, obj.key, obj)
    decoded, key = L7_DECODERS[type_url](encoded.resource.resource.value)
    assert (decoded, key) == (obj, obj.key)
    # content versions follow the content
    assert encode_l7_resource(type_url, obj.key, obj).version == encoded.version


def test_integers_stay_integers_in_filter_configuration() -> None:
    decoded = http_service_from_proto(http_service_to_proto(FULL))
    assert type(decoded.filters[0].config["max_tokens"]) is int


def _damaged(**changes: object) -> l7_pb2.HttpService:
    pb = http_service_to_proto(FULL)
    for path, value in changes.items():
        target: object = pb
        *parents, leaf = path.split("__")
        for part in parents:
            target = (
                getattr(target, part)[0]
                if part in ("routes", "backends", "filters", "clusters")
                else getattr(target, part)
            )
        setattr(target, leaf, value)
    return pb


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"filters__name": "no spaces"}, "filter name 'no spaces' is not an entry point name"),
        (
            {"filters__config_json": "[1]"},
            "filter local_ratelimit: configuration is not a JSON object",
        ),
        ({"filters__config_json": "{"}, "filter local_ratelimit: configuration is not JSON"),
        ({"filters__phase": 9}, "filter local_ratelimit: unsupported phase 9"),
        ({"routes__backends__port": 0}, "route 0 (r0): backend port 0 is not a port"),
        ({"name": "no-slash"}, "HTTP service name 'no-slash' is not <namespace>/<hostname>"),
        (
            {"clusters__policy__load_balancer__consistent_hash__name": ""},
            f"traffic policy of {SVC} subset - port *: a consistent hash on a cookie needs its "
            "name",
        ),
        (
            {"clusters__policy__load_balancer__consistent_hash__table_size": 256},
            f"traffic policy of {SVC} subset - port *: Maglev table size 256 is not a prime",
        ),
        (
            {"clusters__policy__outlier_detection__max_ejection_percent": 101},
            f"traffic policy of {SVC} subset - port *: max ejection percent 101 is not within",
        ),
        (
            {"clusters__policy__outlier_detection__interval__seconds": 0},
            f"traffic policy of {SVC} subset - port *: outlier interval must be longer than 0",
        ),
        (
            {"clusters__policy__connection_pool__idle_timeout__seconds": -1},
            f"traffic policy of {SVC} subset - port *: idle timeout is negative",
        ),
        ({"clusters__service": "apps/"}, "cluster service 'apps/' is not <namespace>/<hostname>"),
        ({"clusters__port": 70000}, f"traffic policy of {SVC} subset - port 70000: cluster port"),
    ],
)
def test_what_the_model_cannot_hold_is_refused(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ConversionError) as e:
        http_service_from_proto(_damaged(**changes))
    assert str(e.value).startswith(reason)
    assert "\n" not in str(e.value)


def test_unset_policy_fields_decode_to_istios_defaults() -> None:
    pb = l7_pb2.HttpService(
        name=SVC,
        clusters=[
            l7_pb2.ClusterPolicy(
                service=SVC,
                policy=l7_pb2.TrafficPolicy(
                    outlier_detection=l7_pb2.OutlierDetection(consecutive_gateway_errors=2)
                ),
            )
        ],
    )
    (cluster,) = http_service_from_proto(pb).clusters
    policy = cluster.policy
    assert policy.load_balancer == LoadBalancer(LoadBalancerKind.LEAST_REQUEST)
    assert policy.connection_pool == ConnectionPool()
    assert policy.outlier_detection is not None
    assert (policy.outlier_detection.interval, policy.outlier_detection.base_ejection_time) == (
        10.0,
        30.0,
    )
    assert policy.retry_budget is None


def test_a_clusters_policy_is_the_ports_own_else_the_services() -> None:
    (rr, _, _) = FULL.clusters
    assert FULL.traffic_policy(SVC, "", 80) == rr.policy
    assert FULL.traffic_policy(SVC, "v1", 8080) == TrafficPolicy()
    # subset v1 on another port: no policy for it (a subset's policy is resolved in full by the
    # control plane, it does not inherit at the waypoint)
    assert FULL.traffic_policy(SVC, "v1", 80) == TrafficPolicy()
    assert FULL.traffic_policy("apps/other", "", 80) == TrafficPolicy()


def test_wrong_object_for_the_type() -> None:
    with pytest.raises(ConversionError, match="a WaypointPolicy is not a"):
        encode_l7_resource(HTTP_SERVICE_TYPE, "x", POLICY)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda pb: setattr(pb, "name", ""), "request authentication needs a name"),
        (lambda pb: setattr(pb.rules[0], "issuer", ""), "a JWT rule needs an issuer"),
        (
            lambda pb: setattr(pb.rules[1], "jwks_error", ""),
            "JWT rule for other: neither keys nor why they are missing",
        ),
        (
            lambda pb: setattr(pb.rules[0].from_headers[0], "name", ""),
            "JWT rule for https://issuer: an empty header or claim name",
        ),
        (
            lambda pb: pb.rules[0].from_params.append(""),
            "JWT rule for https://issuer: an empty parameter or cookie name",
        ),
    ],
)
def test_authentications_the_waypoint_cannot_use_are_refused(
    change: Callable[[l7_pb2.HttpAuthentication], object], reason: str
) -> None:
    pb = authentication_to_proto(AUTHENTICATION)
    change(pb)
    with pytest.raises(ConversionError) as e:
        authentication_from_proto(pb)
    assert str(e.value).startswith(reason)


def test_a_claim_condition_needs_a_path() -> None:
    pb = l7_pb2.HttpAuthorization(
        name="p",
        namespace="apps",
        rules=[
            l7_pb2.Rule(
                clauses=[l7_pb2.Clause(matches=[l7_pb2.Match(claims=[l7_pb2.ClaimCondition()])])]
            )
        ],
    )
    with pytest.raises(ConversionError, match="a claim condition needs a path"):
        L7_DECODERS[WAYPOINT_POLICY_TYPE](pb.SerializeToString())
