"""Waypoints and what binds to them, the way istiod's ambient index decides it
(`pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go`).

A waypoint is a Gateway of class `istio-waypoint`. Its traffic type comes from its label
`istio.io/waypoint-for` (`service` by default; `workload`, `all`, `none`). It is *ready* when
its address is known: istiod reads it from the Gateway's `status.addresses` (the first
Hostname, else the first IP), which Kubernetes' deployment controller writes; with no such
controller here, the waypoint's Service (named like the Gateway, or after the
`gateway.istio.io/name-override` annotation, in its namespace, as the testbed creates it) makes
it ready too, with the address istiod would publish for it: `{namespace, hostname:
<svc>.<ns>.svc.<domain>}` on HBONE port 15008.

Binding (`fetchWaypointForTarget`): the `istio.io/use-waypoint` label of the object (Service,
ServiceEntry, Pod, WorkloadEntry), else of its Namespace; `none` on the object opts out (the
namespace label is then not read); `istio.io/use-waypoint-namespace` on the same object names
the waypoint's namespace (default: the object's). A named waypoint that does not exist or is not
ready gives no waypoint at all, with no fallback to the namespace's (`WaypointIsNotReady`): the
traffic goes direct. The waypoint's HBONE listener (`protocol: HBONE`, port 15008) says which
namespaces may attach (`allowedRoutes.namespaces.from`: `Same` by default, `All`, or `Selector`
on the namespace's labels; `AttachmentDenied` otherwise). A Service or ServiceEntry binds only
to a `service`/`all` waypoint, a workload only to a `workload`/`all` one
(`UnsupportedTrafficType`). A waypoint's own pods (labelled
`gateway.networking.k8s.io/gateway-name: <gw>`) and Service (labelled
`gateway.istio.io/managed: istio.io-mesh-controller`, or selecting those pods) never get one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.translate.services import service_hostname
from ztunnel_py.controlplane.translate.workloads import pod_is_terminated
from ztunnel_py.model import GatewayAddress, NamespacedHostname, NetworkAddress

WAYPOINT_CLASS = "istio-waypoint"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MESH_CONTROLLER = "istio.io-mesh-controller"
NAME_OVERRIDE = "gateway.istio.io/name-override"
TRAFFIC_TYPES = ("service", "workload", "all", "none")
SERVICE_TRAFFIC = ("service", "all")
WORKLOAD_TRAFFIC = ("workload", "all")
HBONE_LISTENER_PORT = 15008
USE_WAYPOINT_PATH = f'metadata.labels["{USE_WAYPOINT}"]'


@dataclass(frozen=True, slots=True)
class Waypoint:
    resource: Resource
    traffic_type: str
    # None: not ready (no status address, no Service yet)
    address: GatewayAddress | None
    # allowedRoutes of the HBONE listener: "Same", "All" or "Selector" (with its labels)
    allowed_from: str = "Same"
    allowed_selector: Mapping[str, str] = field(default_factory=dict)
    # the waypoint's pods: "namespace/name" -> node
    instances: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.resource.namespace}/{self.resource.name}"

    @property
    def namespace(self) -> str:
        return self.resource.namespace

    def allows(self, namespace: str, namespace_labels: Mapping[str, str]) -> bool:
        if self.allowed_from == "All":
            return True
        if self.allowed_from == "Selector":
            return all(namespace_labels.get(k) == v for k, v in self.allowed_selector.items())
        return namespace == self.namespace


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an object that asked for a waypoint has none (istiod's status reason and message),
    and the resource the label was read from."""

    reason: str
    message: str
    labelled: Resource


@dataclass(frozen=True, slots=True)
class Binding:
    waypoint: Waypoint | None = None
    problem: Problem | None = None


NO_BINDING = Binding()


def is_waypoint_gateway(gateway: Resource) -> bool:
    return gateway.spec.get("gatewayClassName") == WAYPOINT_CLASS


def _status_address(gateway: Resource) -> GatewayAddress | None:
    """istiod's `getGatewayAddress`: the first Hostname in `status.addresses`, else the first
    IP address (an entry without a type is an IP address, the Gateway API default)."""
    entries = gateway.status.get("addresses") or ()
    for entry in entries:
        if entry.get("type") == "Hostname":
            return GatewayAddress(NamespacedHostname(gateway.namespace, entry["value"]))
    for entry in entries:
        if entry.get("type", "IPAddress") == "IPAddress":
            try:
                return GatewayAddress(NetworkAddress("", ipaddress.ip_address(entry["value"])))
            except ValueError:
                continue
    return None


def _hbone_listener_allowed(gateway: Resource) -> tuple[str, Mapping[str, str]]:
    """`allowedRoutes.namespaces` of the HBONE/15008 listener (Same when there is none)."""
    for listener in gateway.spec.get("listeners") or ():
        if listener.get("protocol") == "HBONE" and listener.get("port") == HBONE_LISTENER_PORT:
            namespaces = (listener.get("allowedRoutes") or {}).get("namespaces") or {}
            source: str = namespaces.get("from", "Same")
            labels: Mapping[str, str] = (namespaces.get("selector") or {}).get("matchLabels") or {}
            return source, labels if source == "Selector" else {}
    return "Same", {}


class WaypointIndex:
    """The waypoints of a mesh and the binding rules over them."""

    def __init__(
        self,
        gateways: Iterable[Resource],
        services: Iterable[Resource],
        pods: Iterable[Resource],
        namespaces: Mapping[str, Resource],
        domain_suffix: str,
    ) -> None:
        self.namespaces = namespaces
        self.gateways: dict[str, Resource] = {
            f"{g.namespace}/{g.name}": g for g in gateways if is_waypoint_gateway(g)
        }
        service_names = {(s.namespace, s.name) for s in services}
        instances: dict[str, dict[str, str]] = {key: {} for key in self.gateways}
        for pod in pods:
            name = pod.labels.get(GATEWAY_NAME_LABEL)
            key = f"{pod.namespace}/{name}"
            if name and key in instances and not pod_is_terminated(pod):
                instances[key][f"{pod.namespace}/{pod.name}"] = pod.spec.get("nodeName") or ""
        # every waypoint Gateway, ready or not
        self.all: dict[str, Waypoint] = {}
        for key, gateway in self.gateways.items():
            address = _status_address(gateway)
            service = gateway.annotations.get(NAME_OVERRIDE) or gateway.name
            if address is None and (gateway.namespace, service) in service_names:
                hostname = service_hostname(service, gateway.namespace, domain_suffix)
                address = GatewayAddress(NamespacedHostname(gateway.namespace, hostname))
            allowed_from, selector = _hbone_listener_allowed(gateway)
            self.all[key] = Waypoint(
                gateway,
                gateway.labels.get(WAYPOINT_FOR, "service"),
                address,
                allowed_from,
                selector,
                instances[key],
            )

    def ready(self, key: str) -> Waypoint | None:
        waypoint = self.all.get(key)
        return waypoint if waypoint is not None and waypoint.address is not None else None

    def instance_of(self, resource: Resource, labels: Mapping[str, str]) -> Waypoint | None:
        """The waypoint `resource` (a pod or WorkloadEntry) is an instance of."""
        name = labels.get(GATEWAY_NAME_LABEL)
        return self.all.get(f"{resource.namespace}/{name}") if name else None

    def _is_own_service(self, service: Resource) -> bool:
        if service.labels.get(MANAGED_LABEL) == MESH_CONTROLLER:
            return True
        name = (service.spec.get("selector") or {}).get(GATEWAY_NAME_LABEL)
        return bool(name) and f"{service.namespace}/{name}" in self.all

    def for_service(self, resource: Resource) -> Binding:
        """The waypoint of a Service or ServiceEntry."""
        if resource.kind == "Service" and self._is_own_service(resource):
            return NO_BINDING
        return self._for_target(resource, resource.labels, SERVICE_TRAFFIC, "service")

    def for_workload(self, resource: Resource, labels: Mapping[str, str]) -> Binding:
        """The waypoint of a pod or WorkloadEntry (its own labels: a WorkloadEntry's include
        its spec labels)."""
        if self.instance_of(resource, labels) is not None:
            return NO_BINDING
        return self._for_target(resource, labels, WORKLOAD_TRAFFIC, "workload")

    def _for_target(
        self,
        target: Resource,
        labels: Mapping[str, str],
        accepted: tuple[str, ...],
        traffic: str,
    ) -> Binding:
        namespace = self.namespaces.get(target.namespace)
        namespace_labels: Mapping[str, str] = namespace.labels if namespace is not None else {}
        name = labels.get(USE_WAYPOINT)
        labelled = target
        if name is None:
            if namespace is None:
                return NO_BINDING
            name = namespace_labels.get(USE_WAYPOINT)
            labels, labelled = namespace_labels, namespace
        if name is None or name == "none":
            return NO_BINDING
        key = f"{labels.get(USE_WAYPOINT_NAMESPACE, target.namespace)}/{name}"
        waypoint = self.ready(key)
        if waypoint is None:
            return Binding(
                None,
                Problem("WaypointIsNotReady", f'waypoint "{key}" is not ready', labelled),
            )
        if not waypoint.allows(target.namespace, namespace_labels):
            return Binding(
                None,
                Problem(
                    "AttachmentDenied",
                    f'we are not permitted to attach to waypoint "{key}" (missing allowedRoutes?)',
                    labelled,
                ),
            )
        if waypoint.traffic_type not in accepted:
            return Binding(
                None,
                Problem(
                    "UnsupportedTrafficType",
                    f'attempting to bind to traffic type "{traffic}" which the waypoint "{key}" '
                    "does not support",
                    labelled,
                ),
            )
        return Binding(waypoint)
