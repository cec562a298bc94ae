"""Waypoint binding as istiod decides it (its ambient index tests, as data): which Services and
Workloads get a waypoint address, and what is reported when they cannot."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from tests.unit.waypoint_support import (
    documents,
    gateway,
    namespace,
    pod,
    service,
    translation,
    warnings,
    waypoint,
    waypoint_pod,
    waypoint_service,
)
from ztunnel_py.controlplane.debugviews import waypoints_view
from ztunnel_py.controlplane.snapshot import MeshSnapshot
from ztunnel_py.controlplane.translate.services import kubernetes_port_protocol
from ztunnel_py.model import GatewayAddress, NamespacedHostname, NetworkAddress
from ztunnel_py.model.workload import AppProtocol

USE = "istio.io/use-waypoint"
USE_NS = "istio.io/use-waypoint-namespace"
FOR = "istio.io/waypoint-for"
ECHO = "apps/echo.apps.svc.cluster.local"
ECHO_POD = "Kubernetes//Pod/apps/echo-0"


def ga(name: str = "waypoint", ns: str = "apps") -> GatewayAddress:
    return GatewayAddress(NamespacedHostname(ns, f"{name}.{ns}.svc.cluster.local"), 15008)


def app(**labels: str) -> str:
    """The echo service and its pod."""
    return documents(service("echo", labels=labels), pod("echo-0", labels={"app": "echo"}))


def bound(*texts: str) -> tuple[GatewayAddress | None, GatewayAddress | None, list[str]]:
    """(echo's Service waypoint, echo's pod waypoint, warnings)."""
    t, diagnostics = translation(*texts)
    return t.services[ECHO].waypoint, t.workloads[ECHO_POD].waypoint, warnings(diagnostics)


def test_namespace_label_binds_services_with_the_hostname_address() -> None:
    svc, wl, problems = bound(documents(namespace("apps", **{USE: "waypoint"})), waypoint(), app())
    assert svc == ga()
    # a waypoint is for service traffic by default: pods are not sent there
    assert wl is None
    assert problems == []


def test_the_waypoint_is_not_ready_without_its_service_or_status() -> None:
    svc, wl, problems = bound(
        documents(namespace("apps", **{USE: "waypoint"}), gateway(), waypoint_pod()), app()
    )
    assert (svc, wl) == (None, None)
    assert problems == [
        'metadata.labels["istio.io/use-waypoint"]: WaypointIsNotReady: waypoint '
        '"apps/waypoint" is not ready; no waypoint is used and traffic goes direct: create a '
        "Gateway of class istio-waypoint with that name (and its Service), or fix the label"
    ]


@pytest.mark.parametrize(
    ("status", "address"),
    [
        (
            {"addresses": [{"type": "IPAddress", "value": "10.96.9.7"}]},
            GatewayAddress(NetworkAddress("", ipaddress.ip_address("10.96.9.7"))),
        ),
        (
            {
                "addresses": [
                    {"type": "IPAddress", "value": "10.96.9.7"},
                    {"type": "Hostname", "value": "wp.apps.svc.cluster.local"},
                ]
            },
            GatewayAddress(NamespacedHostname("apps", "wp.apps.svc.cluster.local")),
        ),
        # an entry without a type is an IP address (the Gateway API default)
        (
            {"addresses": [{"value": "fd00::7"}]},
            GatewayAddress(NetworkAddress("", ipaddress.ip_address("fd00::7"))),
        ),
    ],
)
def test_gateway_status_addresses_as_istiod_reads_them(
    status: dict[str, Any], address: GatewayAddress
) -> None:
    svc, _, problems = bound(
        documents(namespace("apps", **{USE: "waypoint"}), gateway(status=status)), app()
    )
    assert (svc, problems) == (address, [])


def test_the_object_label_wins_over_the_namespace_label() -> None:
    svc, _, _ = bound(
        documents(namespace("apps", **{USE: "waypoint"})),
        waypoint(),
        waypoint("other", ip_suffix=2),
        app(**{USE: "other"}),
    )
    assert svc == ga("other")


def test_none_opts_out_of_the_namespace_waypoint() -> None:
    svc, _, problems = bound(
        documents(namespace("apps", **{USE: "waypoint"})), waypoint(), app(**{USE: "none"})
    )
    assert (svc, problems) == (None, [])


def test_a_missing_named_waypoint_does_not_fall_back_to_the_namespace_one() -> None:
    svc, _, problems = bound(
        documents(namespace("apps", **{USE: "waypoint"})), waypoint(), app(**{USE: "missing"})
    )
    assert svc is None
    assert len(problems) == 1 and 'WaypointIsNotReady: waypoint "apps/missing"' in problems[0]


@pytest.mark.parametrize(
    ("traffic", "service_bound", "pod_bound"),
    [
        ("service", True, False),
        ("workload", False, True),
        ("all", True, True),
        ("none", False, False),
    ],
)
def test_traffic_types(traffic: str, service_bound: bool, pod_bound: bool) -> None:
    svc, wl, _ = bound(
        documents(namespace("apps", **{USE: "waypoint"})),
        waypoint(labels={FOR: traffic}),
        app(),
    )
    assert (svc is not None, wl is not None) == (service_bound, pod_bound)
    assert wl in (None, ga()) and svc in (None, ga())


def test_a_service_labelled_for_a_workload_waypoint_is_told_why() -> None:
    svc, _, problems = bound(waypoint(labels={FOR: "workload"}), app(**{USE: "waypoint"}))
    assert svc is None
    assert problems == [
        'metadata.labels["istio.io/use-waypoint"]: UnsupportedTrafficType: attempting to '
        'bind to traffic type "service" which the waypoint "apps/waypoint" does not support; '
        "set the Gateway's istio.io/waypoint-for label to all"
    ]


def test_pod_label_keeps_its_waypoint_after_the_namespace_gets_one() -> None:
    t, _ = translation(
        documents(namespace("apps", **{USE: "waypoint"})),
        waypoint(labels={FOR: "workload"}),
        waypoint("waypoint-sa1", ip_suffix=2, labels={FOR: "workload"}),
        documents(pod("echo-0", labels={USE: "waypoint-sa1"}), pod("other", ip="10.1.0.11")),
    )
    assert t.workloads[ECHO_POD].waypoint == ga("waypoint-sa1")
    assert t.workloads["Kubernetes//Pod/apps/other"].waypoint == ga()


@pytest.mark.parametrize("value", ["none", "no-such-waypoint"])
def test_pod_opt_out_and_unknown_names(value: str) -> None:
    t, _ = translation(
        documents(namespace("apps", **{USE: "waypoint"})),
        waypoint(labels={FOR: "workload"}),
        documents(pod("echo-0", labels={USE: value})),
    )
    assert t.workloads[ECHO_POD].waypoint is None


@pytest.mark.parametrize(
    ("allowed", "attached"),
    [
        (None, False),
        ({"from": "Same"}, False),
        ({"from": "All"}, True),
        ({"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}, True),
        ({"from": "Selector", "selector": {"matchLabels": {"team": "b"}}}, False),
    ],
)
def test_a_waypoint_in_another_namespace_needs_allowed_routes(
    allowed: dict[str, Any] | None, attached: bool
) -> None:
    svc, _, problems = bound(
        documents(namespace("infra"), namespace("apps", team="a")),
        waypoint("shared", "infra", allowed=allowed),
        app(**{USE: "shared", USE_NS: "infra"}),
    )
    assert svc == (ga("shared", "infra") if attached else None)
    assert bool(problems) != attached
    if not attached:
        assert "AttachmentDenied" in problems[0]


def test_the_waypoints_own_pods_and_service_get_no_waypoint() -> None:
    t, problems = translation(
        documents(namespace("apps", **{USE: "waypoint"})),
        waypoint(labels={FOR: "all"}),
        app(),
    )
    assert t.services["apps/waypoint.apps.svc.cluster.local"].waypoint is None
    assert t.workloads["Kubernetes//Pod/apps/waypoint-0"].waypoint is None
    assert t.workloads[ECHO_POD].waypoint == ga()
    assert warnings(problems) == []


def test_service_entries_and_workload_entries_bind_too() -> None:
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "apps", "labels": {USE: "waypoint"}},
        "spec": {
            "hosts": ["ext.example.com"],
            "addresses": ["240.0.0.1"],
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "resolution": "STATIC",
        },
    }
    vm = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "vm", "namespace": "apps", "labels": {USE: "waypoint"}},
        "spec": {"address": "10.2.0.1"},
    }
    t, _ = translation(waypoint(labels={FOR: "all"}), documents(entry, vm))
    assert t.services["apps/ext.example.com"].waypoint == ga()
    assert t.workloads["Kubernetes/networking.istio.io/WorkloadEntry/apps/vm"].waypoint == ga()


def test_scope_lists_the_waypoints_pods_and_bound_services() -> None:
    t, _ = translation(documents(namespace("apps", **{USE: "waypoint"})), waypoint(), app())
    scope = t.waypoints["apps/waypoint"]
    assert scope.address == ga()
    assert dict(scope.instances) == {"apps/waypoint-0": "node-1"}
    assert scope.services == frozenset({ECHO})
    assert set(t.http_services) == {ECHO}


def test_unready_waypoints_are_listed_without_address() -> None:
    t, _ = translation(documents(gateway(), waypoint_pod()))
    scope = t.waypoints["apps/waypoint"]
    assert (scope.address, scope.services, dict(scope.instances)) == (
        None,
        frozenset(),
        {"apps/waypoint-0": "node-1"},
    )


def test_other_gateway_classes_are_not_waypoints() -> None:
    ingress = gateway("ingress")
    ingress["spec"]["gatewayClassName"] = "istio"
    t, _ = translation(documents(namespace("apps", **{USE: "ingress"}), ingress))
    assert t.waypoints == {}


def test_the_waypoint_service_alone_makes_it_ready() -> None:
    svc, _, _ = bound(
        documents(namespace("apps", **{USE: "waypoint"}), gateway(), waypoint_service()), app()
    )
    assert svc == ga()


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"port": 80, "name": "http"}, AppProtocol.HTTP11),
        ({"port": 80, "name": "http-web"}, AppProtocol.HTTP11),
        ({"port": 80, "name": "HTTP2-x"}, AppProtocol.HTTP2),
        ({"port": 80, "name": "grpc"}, AppProtocol.GRPC),
        ({"port": 80, "name": "grpc-web"}, AppProtocol.UNKNOWN),
        ({"port": 80, "name": "grpc-webapp"}, AppProtocol.UNKNOWN),
        ({"port": 80, "name": "tcp-db"}, AppProtocol.TCP),
        ({"port": 80, "name": "mongo"}, AppProtocol.TCP),
        ({"port": 80, "name": "redis"}, AppProtocol.TCP),
        ({"port": 80, "name": "mysql-main"}, AppProtocol.TCP),
        ({"port": 80, "name": "tls"}, AppProtocol.TLS),
        ({"port": 80, "name": "https"}, AppProtocol.TLS),
        ({"port": 80, "name": "httpx"}, AppProtocol.UNKNOWN),
        ({"port": 80, "name": "web"}, AppProtocol.UNKNOWN),
        ({"port": 80}, AppProtocol.UNKNOWN),
        ({"port": 3306}, AppProtocol.TCP),
        ({"port": 27017, "name": "db"}, AppProtocol.TCP),
        # appProtocol wins over the name
        ({"port": 80, "name": "tcp", "appProtocol": "http"}, AppProtocol.HTTP11),
        ({"port": 80, "name": "http", "appProtocol": "kubernetes.io/h2c"}, AppProtocol.HTTP2),
        ({"port": 80, "appProtocol": "kubernetes.io/ws"}, AppProtocol.HTTP11),
        ({"port": 80, "appProtocol": "kubernetes.io/wss"}, AppProtocol.TLS),
        ({"port": 80, "appProtocol": "GRPC"}, AppProtocol.GRPC),
        ({"port": 80, "name": "http", "appProtocol": "hbone"}, AppProtocol.UNKNOWN),
    ],
)
def test_port_protocols_as_istiod_converts_them(
    port: dict[str, Any], protocol: AppProtocol
) -> None:
    assert kubernetes_port_protocol(port) is protocol


def test_debug_view_shows_each_waypoint_in_full() -> None:
    t, _ = translation(documents(namespace("apps", **{USE: "waypoint"})), waypoint(), app())
    snapshot = MeshSnapshot(1, t.workloads, t.services, t.policies, t.http_services, t.waypoints)
    view = json.loads(json.dumps(waypoints_view(snapshot)))
    assert view == {
        "version": 1,
        "waypoints": {
            "apps/waypoint": {
                "address": "apps/waypoint.apps.svc.cluster.local:15008",
                "ready": True,
                "pods": {"apps/waypoint-0": "node-1"},
                "httpServices": {
                    ECHO: {
                        "service": ECHO,
                        "routes": [],
                        "subsets": [],
                        "sources": [],
                        "filters": [],
                        "clusters": [],
                        "telemetry": {
                            "tracing": {"provider": None, "sampling": 1.0, "custom_tags": []},
                            "metrics": {"enabled": True, "overrides": []},
                            "access_log": {"enabled": True, "filter": ""},
                            "origins": [],
                        },
                    }
                },
                "policies": {},
                "requestAuthentications": {},
            }
        },
    }
