"""DestinationRule traffic policies at the control plane: what validation refuses (with file and
field), how a rule's top level, subsets and port-level settings resolve into the `ClusterPolicy`
of each cluster a waypoint serves (istiod's MergeTrafficPolicy), Istio's defaults, and what is
reported as not applied."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.cp_support import diagnostics
from tests.unit.test_cp_routes import ECHO, V1, compiled, virtual_service
from ztunnel_py.model.http import (
    DEFAULT_MAGLEV_SIZE,
    ClusterPolicy,
    ConnectionPool,
    ConsistentHash,
    HashSource,
    HashTable,
    LoadBalancer,
    LoadBalancerKind,
    OutlierDetection,
    RetryBudget,
    TrafficPolicy,
)
from ztunnel_py.xds.l7convert import http_service_from_proto, http_service_to_proto

ORIGIN = "DestinationRule apps/echo"


def rule(
    policy: dict[str, Any] | None = None,
    subsets: list[dict[str, Any]] | None = None,
    host: str = "echo",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host}
    if policy is not None:
        spec["trafficPolicy"] = policy
    if subsets is not None:
        spec["subsets"] = subsets
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "echo", "namespace": "apps"},
        "spec": spec,
    }


def refused(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (d.path, d.reason)
        for d in diagnostics(yaml.safe_dump(obj), source="dr.yaml")
        if d.is_error and d.origin.source == "dr.yaml"
    ]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "path", "reason"),
    [
        (
            {"loadBalancer": {"consistentHash": {"httpHeaderName": ""}}},
            "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
            "must not be empty: name the header whose value is hashed",
        ),
        (
            {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "", "ttl": "1s"}}}},
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
            "must not be empty",
        ),
        (
            {"loadBalancer": {"consistentHash": {"httpCookie": {"ttl": "1s"}}}},
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
            "required field is missing",
        ),
        (
            {"loadBalancer": {"consistentHash": {"ringHash": {"minimumRingSize": 10}}}},
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "a consistent hash needs one of httpHeaderName, httpCookie, useSourceIp, "
            "httpQueryParameterName",
        ),
        (
            {"loadBalancer": {"consistentHash": {"httpHeaderName": "a", "useSourceIp": True}}},
            "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp",
            "useSourceIp cannot be combined with httpHeaderName",
        ),
        (
            {"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 8}}}},
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "8 is not a prime number below 5000011",
        ),
        (
            {
                "loadBalancer": {
                    "consistentHash": {
                        "useSourceIp": True,
                        "ringHash": {},
                        "maglev": {"tableSize": 251},
                    }
                }
            },
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev",
            "maglev cannot be combined with ringHash",
        ),
        (
            {"loadBalancer": {"simple": "ROUND_ROBIN", "consistentHash": {"useSourceIp": True}}},
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "consistentHash cannot be combined with simple",
        ),
        (
            {"loadBalancer": {"simple": "FASTEST"}},
            "spec.trafficPolicy.loadBalancer.simple",
            "'FASTEST' is not one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, "
            "LEAST_REQUEST",
        ),
        (
            {"connectionPool": {"tcp": {"connectTimeout": "30 seconds"}}},
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "'30 seconds' is not a duration (e.g. 10s, 1.5s, 500ms)",
        ),
        (
            {"connectionPool": {"http": {"idleTimeout": "0s"}}},
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            "'0s' is shorter than 1ms",
        ),
        (
            {"outlierDetection": {"interval": "1.5ms"}},
            "spec.trafficPolicy.outlierDetection.interval",
            "'1.5ms': only durations to millisecond precision are supported",
        ),
        (
            {"connectionPool": {"http": {"maxRetries": -1}}},
            "spec.trafficPolicy.connectionPool.http.maxRetries",
            "maxRetries -1 out of range 0-4294967295",
        ),
        (
            {"outlierDetection": {"maxEjectionPercent": 101}},
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "maxEjectionPercent 101 out of range 0-100",
        ),
        (
            {"retryBudget": {"percent": 120}},
            "spec.trafficPolicy.retryBudget.percent",
            "120 is not within 0-100",
        ),
        (
            {"connectionPool": {}},
            "spec.trafficPolicy.connectionPool",
            "a connection pool must have at least one field",
        ),
        ({}, "spec.trafficPolicy", "a traffic policy must have at least one field"),
        (
            {"portLevelSettings": [{"port": {"number": 80}}]},
            "spec.trafficPolicy.portLevelSettings[0]",
            "a port-level setting must have at least one field besides port",
        ),
        (
            {
                "portLevelSettings": [
                    {"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}},
                    {"port": {"number": 80}, "loadBalancer": {"simple": "ROUND_ROBIN"}},
                ]
            },
            "spec.trafficPolicy.portLevelSettings[1]",
            "duplicate port 80 (same as [0])",
        ),
        (
            {"portLevelSettings": [{"loadBalancer": {"simple": "RANDOM"}}]},
            "spec.trafficPolicy.portLevelSettings[0].port",
            "required field is missing",
        ),
    ],
)
def test_validation_refuses_with_file_and_field(
    policy: dict[str, Any], path: str, reason: str
) -> None:
    assert refused(rule(policy)) == [(path, reason)]


def test_a_subsets_policy_is_validated_too() -> None:
    bad = rule(
        subsets=[
            {
                "name": "v1",
                "labels": {"version": "v1"},
                "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": " "}}},
            }
        ]
    )
    assert refused(bad) == [
        (
            "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
            "must not be empty: name the header whose value is hashed",
        )
    ]


ISSUE_POLICY = {
    "loadBalancer": {"simple": "LEAST_REQUEST"},
    "connectionPool": {
        "tcp": {"maxConnections": 100, "connectTimeout": "30s"},
        "http": {
            "http1MaxPendingRequests": 100,
            "http2MaxRequests": 1000,
            "maxRequestsPerConnection": 2,
            "maxRetries": 3,
            "idleTimeout": "60s",
        },
    },
    "outlierDetection": {
        "consecutiveGatewayErrors": 5,
        "consecutive5xxErrors": 5,
        "interval": "30s",
        "baseEjectionTime": "30s",
        "maxEjectionPercent": 50,
        "minHealthPercent": 50,
    },
}
ISSUE_SUBSETS = [
    {"name": "v1", "labels": {"version": "v1"}},
    {"name": "v2", "labels": {"version": "v2"}},
]
ISSUE_TRAFFIC = TrafficPolicy(
    LoadBalancer(LoadBalancerKind.LEAST_REQUEST),
    ConnectionPool(100, 30.0, 100, 1000, 2, 3, 60.0),
    OutlierDetection(5, 5, 30.0, 30.0, 50, 50),
    origin=ORIGIN,
)


def test_the_issues_destination_rule_applies_to_the_service_and_its_subsets() -> None:
    vs = virtual_service(
        "echo",
        [
            {
                "match": [{"uri": {"prefix": "/api/"}}],
                "route": [
                    {"destination": {"host": "echo", "subset": "v1"}, "weight": 90},
                    {"destination": {"host": "echo", "subset": "v2"}, "weight": 10},
                ],
            }
        ],
    )
    http, warned = compiled(rule(ISSUE_POLICY, ISSUE_SUBSETS), vs)
    assert not warned
    assert http.clusters == tuple(
        ClusterPolicy(ECHO, subset, 0, ISSUE_TRAFFIC) for subset in ("", "v1", "v2")
    )
    assert http_service_from_proto(http_service_to_proto(http)) == http


def test_subset_parts_override_the_top_level_and_port_settings_do_not_inherit() -> None:
    top = {
        "loadBalancer": {"simple": "ROUND_ROBIN"},
        "connectionPool": {"tcp": {"maxConnections": 7}},
        "portLevelSettings": [
            {"port": {"number": 80}, "outlierDetection": {"consecutive5xxErrors": 2}}
        ],
        "retryBudget": {"percent": 50},
    }
    subsets = [
        {
            "name": "v1",
            "labels": {"version": "v1"},
            "trafficPolicy": {
                "loadBalancer": {"consistentHash": {"httpHeaderName": "X-User"}},
                "portLevelSettings": [
                    {"port": {"number": 8080}, "connectionPool": {"http": {"maxRetries": 1}}}
                ],
            },
        }
    ]
    vs = virtual_service("echo", [{"route": [{"destination": {"host": "echo", "subset": "v1"}}]}])
    http, _ = compiled(rule(top, subsets), vs)
    budget = RetryBudget(50.0, 3)
    rr, pool7 = LoadBalancer(LoadBalancerKind.ROUND_ROBIN), ConnectionPool(max_connections=7)
    by_header = LoadBalancer(
        LoadBalancerKind.LEAST_REQUEST, ConsistentHash(HashSource.HEADER, "x-user")
    )
    # port 80 of the whole service: the port-level entry alone (no load balancer, no pool)
    at_80 = TrafficPolicy(outlier_detection=OutlierDetection(2), retry_budget=budget, origin=ORIGIN)
    assert http.clusters == (
        ClusterPolicy(ECHO, "", 0, TrafficPolicy(rr, pool7, None, budget, ORIGIN)),
        ClusterPolicy(ECHO, "", 80, at_80),
        # the subset: its own load balancer over the top level's pool
        ClusterPolicy(ECHO, "v1", 0, TrafficPolicy(by_header, pool7, None, budget, ORIGIN)),
        # on port 80 the top level's port setting applies, then the subset's load balancer
        ClusterPolicy(
            ECHO,
            "v1",
            80,
            TrafficPolicy(by_header, ConnectionPool(), OutlierDetection(2), budget, ORIGIN),
        ),
        # on 8080 the subset's own port setting: nothing else
        ClusterPolicy(
            ECHO,
            "v1",
            8080,
            TrafficPolicy(
                connection_pool=ConnectionPool(max_retries=1), retry_budget=budget, origin=ORIGIN
            ),
        ),
    )
    assert http.traffic_policy(ECHO, "v1", 9090).load_balancer == by_header


@pytest.mark.parametrize(
    ("lb", "expected"),
    [
        ({"simple": "LEAST_CONN"}, LoadBalancer(LoadBalancerKind.LEAST_REQUEST)),
        ({"simple": "UNSPECIFIED"}, LoadBalancer(LoadBalancerKind.LEAST_REQUEST)),
        ({"simple": "RANDOM"}, LoadBalancer(LoadBalancerKind.RANDOM)),
        ({"simple": "PASSTHROUGH"}, LoadBalancer(LoadBalancerKind.PASSTHROUGH)),
        (
            {"consistentHash": {"httpCookie": {"name": "s", "path": "/a", "ttl": "0s"}}},
            LoadBalancer(
                consistent_hash=ConsistentHash(HashSource.COOKIE, "s", "/a", 0.0),
            ),
        ),
        (
            {"consistentHash": {"httpCookie": {"name": "s"}}},
            LoadBalancer(consistent_hash=ConsistentHash(HashSource.COOKIE, "s")),
        ),
        (
            {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 251}}},
            LoadBalancer(
                consistent_hash=ConsistentHash(
                    HashSource.SOURCE_IP, table=HashTable.MAGLEV, table_size=251
                )
            ),
        ),
        (
            {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": DEFAULT_MAGLEV_SIZE}}},
            LoadBalancer(
                consistent_hash=ConsistentHash(
                    HashSource.SOURCE_IP, table=HashTable.MAGLEV, table_size=DEFAULT_MAGLEV_SIZE
                )
            ),
        ),
        (
            {"consistentHash": {"httpQueryParameterName": "u", "minimumRingSize": 4096}},
            LoadBalancer(
                consistent_hash=ConsistentHash(HashSource.QUERY_PARAMETER, "u", table_size=4096)
            ),
        ),
    ],
)
def test_load_balancers(lb: dict[str, Any], expected: LoadBalancer) -> None:
    http, _ = compiled(rule({"loadBalancer": lb}))
    (cluster,) = http.clusters
    assert cluster.policy.load_balancer == expected


def test_outlier_detection_defaults_are_envoys() -> None:
    http, _ = compiled(rule({"outlierDetection": {"consecutiveGatewayErrors": 3}}))
    (cluster,) = http.clusters
    assert cluster.policy.outlier_detection == OutlierDetection(5, 3, 10.0, 30.0, 10, 0)
    off, _ = compiled(rule({"outlierDetection": {"consecutive5xxErrors": 0}}))
    assert off.clusters[0].policy.outlier_detection == OutlierDetection(0)


def test_no_traffic_policy_no_cluster_policies() -> None:
    http, _ = compiled(rule(subsets=ISSUE_SUBSETS))
    assert http.clusters == ()
    assert http.traffic_policy(ECHO, "", 80) == TrafficPolicy()


def test_the_policy_of_a_routed_to_service_is_its_own_rule() -> None:
    other = rule({"loadBalancer": {"simple": "RANDOM"}}, host="echo-v1")
    other["metadata"]["name"] = "echo-v1"
    vs = virtual_service("echo", [{"route": [{"destination": {"host": "echo-v1"}}]}])
    http, _ = compiled(other, vs)
    assert http.clusters == (
        ClusterPolicy(
            V1,
            "",
            0,
            TrafficPolicy(
                LoadBalancer(LoadBalancerKind.RANDOM), origin="DestinationRule apps/echo-v1"
            ),
        ),
    )


def test_what_waypoints_do_not_apply_is_reported() -> None:
    policy = {
        "loadBalancer": {"simple": "PASSTHROUGH", "localityLbSetting": {"enabled": True}},
        "tls": {"mode": "ISTIO_MUTUAL"},
        "outlierDetection": {"consecutiveErrors": 3},
        "connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}},
    }
    _, warned = compiled(rule(policy))
    assert sorted(warned) == sorted(
        [
            "spec.trafficPolicy.tls: TLS origination is not applied by waypoints (HBONE carries "
            "mTLS)",
            "spec.trafficPolicy.loadBalancer.localityLbSetting: locality load balancing is not "
            "applied by waypoints",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: the upstream protocol "
            "follows the port's protocol at waypoints",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors: deprecated and ignored by "
            "istiod: use consecutive5xxErrors or consecutiveGatewayErrors",
            "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH sends each request to the "
            "address the client dialled (istiod's ORIGINAL_DST cluster): a service address has "
            "no endpoint of its own, so requests for a service get 503",
        ]
    )
