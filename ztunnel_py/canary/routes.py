"""The Istio resources a Canary's weights are written as: one VirtualService and one
DestinationRule named after the apex service (`spec.service.name`, else the target), in the
Canary's namespace, as Flagger's Istio router owns them (and takes them over if they exist).

The DestinationRule for the target host has two subsets, `primary` and `canary`, selecting the
pods by their `version` label, with `spec.service.trafficPolicy` when given. The
VirtualService (hosts: `spec.service.hosts` and the target; gateways: `spec.service.gateways`,
`mesh` by default) has one HTTP route: `spec.service.match`, `timeout`, `retries` and
`headers` as written, the two weighted destinations, and while mirroring a `mirror` to the
canary subset with `mirrorPercentage`. Destinations name no port: each request keeps the port
it came to, so every port of the Service follows the split.
"""

from __future__ import annotations

from typing import Any

from ztunnel_py.canary.analysis import Routes
from ztunnel_py.flagger.canary import Canary

Document = dict[str, Any]

NETWORKING = "networking.istio.io/v1"
PRIMARY_SUBSET = "primary"
CANARY_SUBSET = "canary"
MANAGED_BY = {"app.kubernetes.io/managed-by": "ztunnel-py-canary"}
_ROUTE_FIELDS = ("match", "timeout", "retries", "headers")


def _metadata(canary: Canary) -> Document:
    return {
        "name": canary.apex,
        "namespace": canary.namespace,
        "labels": dict(MANAGED_BY),
        "annotations": {"flagger.app/canary": canary.name},
    }


def destination_rule(canary: Canary) -> Document:
    spec: Document = {
        "host": canary.target,
        "subsets": [
            {"name": PRIMARY_SUBSET, "labels": {"version": canary.primary}},
            {"name": CANARY_SUBSET, "labels": {"version": canary.canary}},
        ],
    }
    if canary.service.get("trafficPolicy") is not None:
        spec["trafficPolicy"] = canary.service["trafficPolicy"]
    return {
        "apiVersion": NETWORKING,
        "kind": "DestinationRule",
        "metadata": _metadata(canary),
        "spec": spec,
    }


def virtual_service(canary: Canary, routes: Routes) -> Document:
    route: Document = {k: canary.service[k] for k in _ROUTE_FIELDS if k in canary.service}
    route["route"] = [
        {
            "destination": {"host": canary.target, "subset": PRIMARY_SUBSET},
            "weight": routes.primary,
        },
        {"destination": {"host": canary.target, "subset": CANARY_SUBSET}, "weight": routes.canary},
    ]
    if routes.mirror:
        route["mirror"] = {"host": canary.target, "subset": CANARY_SUBSET}
        route["mirrorPercentage"] = {"value": canary.analysis.mirror_weight}
    return {
        "apiVersion": NETWORKING,
        "kind": "VirtualService",
        "metadata": _metadata(canary),
        "spec": {"hosts": list(canary.hosts), "gateways": list(canary.gateways), "http": [route]},
    }


def documents(canary: Canary, routes: Routes) -> list[Document]:
    """What to apply for `routes`: the subsets first, so the route never names a missing one."""
    return [destination_rule(canary), virtual_service(canary, routes)]
