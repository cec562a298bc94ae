"""The topology page's graph (ctl/topology.py) from PromQL samples shaped as Prometheus answers
them, and a workload's side panel from a node agent's /config_dump."""

from __future__ import annotations

import math
from typing import Any

from ztunnel_py.ctl.scrape import Scraper, Target, histogram_quantile
from ztunnel_py.ctl.topology import QUERIES, build_graph, node_details
from ztunnel_py.telemetry.promql import Sample


def pair(
    src: str, dst: str, ns: str = "apps", src_ns: str = "apps", **extra: str
) -> dict[str, str]:
    return {
        "source_workload": src,
        "source_workload_namespace": src_ns,
        "destination_workload": dst,
        "destination_workload_namespace": ns,
        **extra,
    }


ECHO = "echo.apps.svc.cluster.local"
WAYPOINT = {"pod": "waypoint-1", "namespace": "apps", "instance": "10.244.1.200:15020"}


def edges(graph: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["source"], e["target"]): e for e in graph["edges"]}


def test_a_waypoint_path_is_client_waypoint_service_workload_with_l7_and_l4_figures() -> None:
    results = {
        "http_requests": [
            Sample(
                {
                    **WAYPOINT,
                    **pair("web-1", "echo-1"),
                    "destination_service": ECHO,
                    "response_code": "200",
                    "connection_security_policy": "mutual_tls",
                },
                9.0,
            ),
            Sample(
                {
                    **WAYPOINT,
                    **pair("web-1", "echo-1"),
                    "destination_service": ECHO,
                    "response_code": "503",
                    "connection_security_policy": "mutual_tls",
                },
                1.0,
            ),
            Sample(
                {
                    **WAYPOINT,
                    **pair("web-1", "echo-2"),
                    "destination_service": ECHO,
                    "response_code": "200",
                    "connection_security_policy": "mutual_tls",
                },
                5.0,
            ),
        ],
        "http_p99": [
            Sample({**WAYPOINT, **pair("web-1", "echo-1"), "destination_service": ECHO}, 12.5),
            Sample(
                {**WAYPOINT, **pair("web-1", "echo-2"), "destination_service": ECHO}, float("nan")
            ),
        ],
        "tcp_opened": [
            # what web-1's agent saw: connections to the waypoint
            Sample(
                {
                    **pair("web-1", "waypoint-1"),
                    "reporter": "source",
                    "destination_service": ECHO,
                    "connection_security_policy": "mutual_tls",
                },
                2.0,
            ),
            # a pair that went quiet: no edge
            Sample(
                {
                    **pair("web-1", "echo-3"),
                    "reporter": "destination",
                    "destination_service": ECHO,
                    "connection_security_policy": "mutual_tls",
                },
                0.0,
            ),
        ],
        "tcp_bytes": [
            Sample(
                {**pair("web-1", "waypoint-1"), "reporter": "source", "destination_service": ECHO},
                4096.0,
            ),
        ],
    }
    graph = build_graph(results)
    kinds = {n["id"]: n["kind"] for n in graph["nodes"]}
    assert kinds == {
        "wl:apps/web-1": "workload",
        "wl:apps/waypoint-1": "waypoint",
        f"svc:{ECHO}": "service",
        "wl:apps/echo-1": "workload",
        "wl:apps/echo-2": "workload",
    }
    e = edges(graph)
    assert set(e) == {
        ("wl:apps/web-1", "wl:apps/waypoint-1"),
        ("wl:apps/waypoint-1", f"svc:{ECHO}"),
        (f"svc:{ECHO}", "wl:apps/echo-1"),
        (f"svc:{ECHO}", "wl:apps/echo-2"),
    }
    client = e[("wl:apps/web-1", "wl:apps/waypoint-1")]
    assert client["protocol"] == "http" and client["rps"] == 15.0 and client["mtls"]
    assert client["errorRate"] == round(1 / 15, 4) and client["p99Ms"] == 12.5
    assert client["cps"] == 2.0 and client["bytesPerSecond"] == 4096.0  # L4 joins the L7 hop
    assert client["waypoint"] == "wl:apps/waypoint-1"
    to_echo1 = e[(f"svc:{ECHO}", "wl:apps/echo-1")]
    assert to_echo1["rps"] == 10.0 and to_echo1["errorRate"] == 0.1 and to_echo1["p99Ms"] == 12.5
    assert e[(f"svc:{ECHO}", "wl:apps/echo-2")]["p99Ms"] is None  # NaN: no number to show


def test_l4_edges_prefer_the_destination_report_and_denied_connections_go_to_the_workload() -> None:
    opened = {"destination_service": ECHO, "connection_security_policy": "mutual_tls"}
    results = {
        "tcp_opened": [
            # the source's agent counts a refused connection opened, too
            Sample(
                {**pair("curl-2", "echo-2", src_ns="clients"), "reporter": "source", **opened}, 0.5
            ),
            Sample(
                {**pair("curl-2", "echo-1", src_ns="clients"), "reporter": "source", **opened}, 3.0
            ),
            Sample(
                {**pair("curl-2", "echo-1", src_ns="clients"), "reporter": "destination", **opened},
                2.0,
            ),
            Sample(
                {
                    **pair("legacy-1", "echo-2", src_ns="legacy"),
                    "reporter": "destination",
                    "destination_service": ECHO,
                    "connection_security_policy": "unknown",
                },
                1.0,
            ),
        ],
        "tcp_denied": [
            Sample(
                {**pair("curl-2", "echo-2", src_ns="clients"), "reporter": "source", **opened}, 0.5
            ),
            Sample(
                {**pair("curl-2", "echo-2", src_ns="clients"), "reporter": "destination", **opened},
                0.5,
            ),
        ],
    }
    e = edges(build_graph(results))
    assert e[("wl:clients/curl-2", f"svc:{ECHO}")]["cps"] == 2.0  # not 2 + 3, nor + 0.5 refused
    assert e[(f"svc:{ECHO}", "wl:apps/echo-1")]["mtls"]
    plain = e[("wl:legacy/legacy-1", f"svc:{ECHO}")]
    assert plain["cps"] == 1.0 and not plain["mtls"]
    denied = e[("wl:clients/curl-2", "wl:apps/echo-2")]
    assert denied["deniedCps"] == 0.5 and denied["cps"] == 0.5


def test_every_query_is_one_promql_expression_over_istio_names() -> None:
    assert set(QUERIES) == {"tcp_opened", "tcp_bytes", "tcp_denied", "http_requests", "http_p99"}
    for query in QUERIES.values():
        assert "istio_" in query and query.count("(") == query.count(")")


DUMP: dict[str, Any] = {
    "workloads": [
        {
            "name": "echo-1",
            "namespace": "apps",
            "serviceAccount": "echo",
            "trustDomain": "cluster.local",
            "node": "node1",
            "authorizationPolicies": ["apps/only-web"],
        },
        {
            "name": "web-1",
            "namespace": "apps",
            "serviceAccount": "web",
            "trustDomain": "cluster.local",
            "authorizationPolicies": [],
        },
    ],
    "policies": [
        {"name": "only-web", "namespace": "apps", "scope": "WorkloadSelector", "action": "Allow"},
        {"name": "ns-wide", "namespace": "apps", "scope": "Namespace", "action": "Deny"},
        {"name": "other-ns", "namespace": "db", "scope": "Namespace", "action": "Deny"},
        {"name": "mesh", "namespace": "istio-system", "scope": "Global", "action": "Allow"},
    ],
    "certificates": [
        {
            "identity": "spiffe://cluster.local/ns/apps/sa/echo",
            "state": "Available",
            "certChain": [
                {"pem": "LS0t", "serialNumber": "7", "validFrom": "a", "expirationTime": "b"}
            ],
        },
        {
            "identity": "spiffe://cluster.local/ns/apps/sa/web",
            "state": "Available",
            "certChain": [],
        },
    ],
}


def test_the_side_panel_holds_the_policies_that_apply_and_the_workloads_certificate() -> None:
    details = node_details({"name": "echo-1", "namespace": "apps"}, DUMP)
    assert details["workload"]["node"] == "node1"
    assert details["identity"] == "spiffe://cluster.local/ns/apps/sa/echo"
    assert [p["name"] for p in details["policies"]] == ["only-web", "ns-wide", "mesh"]
    (cert,) = details["certificates"]
    assert cert["certChain"] == [{"serialNumber": "7", "validFrom": "a", "expirationTime": "b"}]
    assert node_details({"name": "gone", "namespace": "apps"}, DUMP)["workload"] is None


AGENT_1 = """\
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",source_workload="web-1",\
source_workload_namespace="apps",destination_workload="echo-1",\
destination_workload_namespace="apps",destination_service="",\
connection_security_policy="mutual_tls"} %d
# TYPE istio_tcp_connections_failed_total counter
istio_tcp_connections_failed_total{reporter="destination",source_workload="curl-2",\
source_workload_namespace="clients",destination_workload="echo-1",\
destination_workload_namespace="apps",response_flags="DENY"} %d
"""

WAYPOINT_1 = """\
# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",source_workload="web-1",\
source_workload_namespace="apps",destination_workload="echo-1",\
destination_workload_namespace="apps",destination_service="echo.apps.svc.cluster.local",\
response_code="200",connection_security_policy="mutual_tls"} %d
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="web-1",\
source_workload_namespace="apps",destination_workload="echo-1",\
destination_workload_namespace="apps",destination_service="echo.apps.svc.cluster.local",\
le="10.0"} %d
istio_request_duration_milliseconds_bucket{reporter="waypoint",source_workload="web-1",\
source_workload_namespace="apps",destination_workload="echo-1",\
destination_workload_namespace="apps",destination_service="echo.apps.svc.cluster.local",\
le="+Inf"} %d
"""


def test_without_prometheus_two_scrapes_give_the_same_graph() -> None:
    # two expositions 2 s apart: 20 connections, 4 refused, 100 requests (90 under 10 ms)
    scrapes = iter(
        [
            (AGENT_1 % (100, 10), WAYPOINT_1 % (500, 450, 500)),
            (AGENT_1 % (120, 14), WAYPOINT_1 % (600, 540, 600)),
        ]
    )
    now = [0.0]
    texts: list[tuple[str, str]] = []

    def next_scrape() -> str:
        texts.append(next(scrapes))
        return texts[-1][0]

    targets = [
        Target("node1", {}, next_scrape),
        Target("waypoint-1", {"pod": "waypoint-1", "namespace": "apps"}, lambda: texts[-1][1]),
    ]
    scraper = Scraper(targets, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, 2.0))
    errors: list[str] = []
    e = edges(build_graph(scraper.results(errors)))
    assert errors == []
    client = e[("wl:apps/web-1", "wl:apps/waypoint-1")]
    assert client["rps"] == 50.0 and client["mtls"]
    # Prometheus's histogram_quantile: rank 99 of 100 falls in (10, +Inf]: the highest bound
    assert e[("svc:echo.apps.svc.cluster.local", "wl:apps/echo-1")]["p99Ms"] == 10.0
    assert e[("wl:clients/curl-2", "wl:apps/echo-1")]["deniedCps"] == 2.0


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = [(5.0, 50.0), (10.0, 90.0), (25.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == 5.0
    assert histogram_quantile(0.7, buckets) == 7.5  # 20 of the 40 in (5, 10]
    assert histogram_quantile(0.99, buckets) == 23.5
    assert math.isnan(histogram_quantile(0.99, [(10.0, 0.0), (math.inf, 0.0)]))
