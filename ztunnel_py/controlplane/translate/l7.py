"""The waypoints' L7 configuration: one `HttpService` per service bound to a waypoint, and per
waypoint a `WaypointScope` (its services, the policies and request authentications that target
it, its pods).

Which routes a service gets (istiod's `buildWaypointInboundHTTPRouteConfig` and
`getVirtualServiceForWaypoint`): the candidates are the HTTPRoutes attached to the service
(grouped by namespace) and the VirtualServices for `mesh` whose hosts match it, all from the
waypoint's or the service's namespace (a route elsewhere is a consumer route, for that
namespace's own clients). The HTTPRoutes in the waypoint's namespace come first, the others by
age, and only the first candidate is used: a waypoint never merges VirtualServices, nor mixes
them with HTTPRoutes (the ones left out are reported). Without any, the HttpService has no
routes and the waypoint routes every request to the service on the port it arrived on.

Each HttpService also carries the DestinationRule traffic policies of the services it may send
to (the served one and every route backend), for the subsets the routes use (`traffic.py`), and
the telemetry the waypoint applies to it (MeshConfig and Telemetry resources, `telemetry.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.snapshot import WaypointScope
from ztunnel_py.controlplane.translate import extensions as ext
from ztunnel_py.controlplane.translate import traffic
from ztunnel_py.controlplane.translate.l7authn import KeyLookup, jwt_rules
from ztunnel_py.controlplane.translate.l7policies import waypoint_authorization
from ztunnel_py.controlplane.translate.policies import has_target_refs
from ztunnel_py.controlplane.translate.routes import (
    CORE_GROUPS,
    GATEWAY_GROUP,
    ISTIO_NETWORKING_GROUP,
    MESH_GATEWAY,
    RouteCompiler,
    SubsetIndex,
    Warn,
    creation_order,
    host_matches,
    resolve_host,
    route_backends,
    sort_gateway_routes,
)
from ztunnel_py.controlplane.translate.telemetry import TelemetryResolver, mesh_telemetry
from ztunnel_py.controlplane.translate.waypoints import WAYPOINT_CLASS, Waypoint, WaypointIndex
from ztunnel_py.model import Service
from ztunnel_py.model.authn import WaypointAuthentication
from ztunnel_py.model.http import ClusterPolicy, HttpService, Route, Subset
from ztunnel_py.model.policy import WaypointPolicy

# waypoint key -> the service keys a resource targets there (None: every request it serves)
Attachments = dict[str, set[str] | None]
# service key -> (uid, labels) of each of its endpoints
Endpoints = Mapping[str, Sequence[tuple[str, Mapping[str, str]]]]


class L7Builder:
    def __init__(
        self,
        *,
        by_kind: Mapping[str, list[Resource]],
        services: Mapping[str, Service],
        owners: Mapping[str, Resource],
        bound: Mapping[str, tuple[Waypoint, Resource]],
        waypoints: WaypointIndex,
        endpoints: Endpoints,
        domain_suffix: str,
        root_namespace: str,
        warn: Warn,
        keys: KeyLookup | None = None,
    ) -> None:
        self.by_kind = by_kind
        self.services = services
        self.owners = owners
        self.bound = bound
        self.waypoints = waypoints
        self.endpoints = endpoints
        self.domain_suffix = domain_suffix
        self.root_namespace = root_namespace
        self.warn = warn
        self.keys = keys
        self.compiler = RouteCompiler(
            services,
            {(r.namespace, r.name): r for r in by_kind.get("Service", ())},
            domain_suffix,
            warn,
        )
        self.subsets = SubsetIndex(
            by_kind.get("DestinationRule", ()), domain_suffix, root_namespace
        )
        self.telemetry = TelemetryResolver(
            telemetries=by_kind.get("Telemetry", ()),
            pods=by_kind.get("Pod", ()),
            mesh=mesh_telemetry(by_kind.get("ConfigMap", ()), root_namespace, warn),
            services=services,
            owners=owners,
            root_namespace=root_namespace,
            warn=warn,
        )

    def build(self) -> tuple[dict[str, HttpService], dict[str, WaypointScope]]:
        parents = self._route_parents()
        virtual_services = self._virtual_services()
        filters = self._filters()
        for rule in self.by_kind.get("DestinationRule", ()):
            traffic.unsupported(rule, self.warn)
        http_services: dict[str, HttpService] = {}
        for key, (waypoint, _) in sorted(self.bound.items()):
            service = self.services[key]
            routes, sources, origin = self._routes(
                service, waypoint, parents.get(key, []), virtual_services
            )
            http_services[key] = HttpService(
                key,
                tuple(routes),
                self._subsets(routes, waypoint, origin),
                tuple(sources),
                ext.ordered(filters.get(key, ())),
                self._clusters(key, routes, waypoint),
                self.telemetry.resolve(waypoint, key),
            )
        policies = self._policies()
        authentications = self._authentications()
        scopes = {
            key: WaypointScope(
                key,
                waypoint.address,
                dict(waypoint.instances),
                frozenset(k for k, (w, _) in self.bound.items() if w.key == key),
                policies.get(key, {}),
                authentications.get(key, {}),
            )
            for key, waypoint in self.waypoints.all.items()
        }
        return http_services, scopes

    # --- which services a resource names ----------------------------------------------------------

    def _owned(self, kind: str, namespace: str, name: str) -> list[str]:
        """Keys of the services a Service or ServiceEntry defines."""
        return sorted(
            key
            for key, owner in self.owners.items()
            if owner.kind == kind and owner.namespace == namespace and owner.name == name
        )

    def _waypoint_of(self, resource: Resource, where: str, key: str) -> Waypoint | None:
        bound = self.bound.get(key)
        if bound is None:
            self.warn(
                resource,
                where,
                f"service {key} has no waypoint, so nothing applies this: label the service "
                "or its namespace with istio.io/use-waypoint",
            )
            return None
        return bound[0]

    # --- routes -----------------------------------------------------------------------------------

    def _route_parents(self) -> dict[str, list[tuple[Resource, int | None]]]:
        """Service key -> the HTTPRoutes attached to it (with the parent's port)."""
        parents: dict[str, list[tuple[Resource, int | None]]] = defaultdict(list)
        for route in self.by_kind.get("HTTPRoute", ()):
            for i, parent in enumerate(route.spec.get("parentRefs") or ()):
                where = f"spec.parentRefs[{i}]"
                group = parent.get("group", GATEWAY_GROUP)
                kind = parent.get("kind", "Gateway")
                namespace = parent.get("namespace", route.namespace)
                name = parent["name"]
                if kind == "Service" and group in CORE_GROUPS:
                    keys = self._owned("Service", namespace, name)
                elif kind == "ServiceEntry" and group == ISTIO_NETWORKING_GROUP:
                    keys = self._owned("ServiceEntry", namespace, name)
                else:
                    self.warn(
                        route,
                        where,
                        f"parent {kind} {name} is not used: in this mesh routes attach to "
                        "Services (GAMMA) served by waypoints",
                    )
                    continue
                if not keys:
                    self.warn(route, where, f'parent {kind.lower()} "{name}" not found')
                    continue
                port = self._parent_port(route, parent, namespace, where)
                if port == 0:
                    continue
                for key in keys:
                    waypoint = self._waypoint_of(route, where, key)
                    service = self.services[key]
                    if waypoint is None:
                        continue
                    if route.namespace not in (waypoint.namespace, service.namespace):
                        self.warn(
                            route,
                            where,
                            f"a route in namespace {route.namespace} is a consumer route for "
                            f"that namespace's clients: the waypoint of {key} only uses routes "
                            "from its own or the service's namespace",
                        )
                        continue
                    parents[key].append((route, port))
        return parents

    def _parent_port(
        self, route: Resource, parent: Mapping[str, Any], namespace: str, where: str
    ) -> int | None:
        """The parent's port (None: every port; 0: a sectionName that names no port)."""
        if "port" in parent:
            port: int = parent["port"]
            return port
        section = parent.get("sectionName")
        if section is None:
            return None
        service = self.compiler.kubernetes_services.get((namespace, parent["name"]))
        for p in service.spec.get("ports") or () if service is not None else ():
            if p.get("name") == section:
                number: int = p["port"]
                return number
        self.warn(route, f"{where}.sectionName", f"no port named {section!r}: not attached")
        return 0

    def _virtual_services(self) -> list[tuple[list[str], Resource]]:
        """VirtualServices bound to `mesh`, oldest first, with their hosts resolved."""
        out = []
        for vs in sorted(self.by_kind.get("VirtualService", ()), key=creation_order):
            if MESH_GATEWAY not in (vs.spec.get("gateways") or [MESH_GATEWAY]):
                continue
            for key in ("tcp", "tls"):
                if vs.spec.get(key):
                    self.warn(vs, f"spec.{key}", f"{key} routes are not applied by waypoints")
            hosts = [
                resolve_host(h, vs.namespace, self.domain_suffix)
                for h in vs.spec.get("hosts") or ()
            ]
            out.append((hosts, vs))
        return out

    def _routes(
        self,
        service: Service,
        waypoint: Waypoint,
        parents: list[tuple[Resource, int | None]],
        virtual_services: list[tuple[list[str], Resource]],
    ) -> tuple[list[Route], list[str], Resource | None]:
        namespaces = (waypoint.namespace, service.namespace)
        by_namespace: dict[str, list[tuple[Resource, int | None]]] = defaultdict(list)
        for route, port in parents:
            by_namespace[route.namespace].append((route, port))
        first: list[tuple[str, list[tuple[Resource, int | None]]]] = []
        if by_namespace.get(waypoint.namespace):
            first.append(("HTTPRoute", by_namespace[waypoint.namespace]))
        rest: list[tuple[tuple[str, str, str], str, Any]] = []
        if service.namespace != waypoint.namespace and by_namespace.get(service.namespace):
            local = by_namespace[service.namespace]
            rest.append((min(creation_order(r) for r, _ in local), "HTTPRoute", local))
        for hosts, candidate in virtual_services:
            if (
                candidate.namespace in namespaces
                and candidate.spec.get("http")
                and any(host_matches(h, service.hostname) for h in hosts)
            ):
                rest.append((creation_order(candidate), "VirtualService", candidate))
        rest.sort(key=lambda c: c[0])
        candidates: list[tuple[str, Any]] = [*first, *((kind, c) for _, kind, c in rest)]
        if not candidates:
            return [], [], None
        (kind, chosen), ignored = candidates[0], candidates[1:]
        chosen_name = _describe(kind, chosen)
        for other_kind, other in ignored:
            for resource in _resources(other_kind, other):
                self.warn(
                    resource,
                    "metadata.name",
                    f"not used for {service.hostname}: {chosen_name} applies there (a waypoint "
                    "uses one VirtualService, or the HTTPRoutes of one namespace, per service; "
                    "mixing them is not supported)",
                )
        if kind == "VirtualService":
            vs: Resource = chosen
            routes = self.compiler.virtual_service_routes(vs, service)
            return routes, [f"VirtualService {vs.namespace}/{vs.name}"], vs
        group: list[tuple[Resource, int | None]] = chosen
        ordered = sorted(group, key=lambda item: creation_order(item[0]))
        compiled: list[Route] = []
        for route, port in ordered:
            compiled.extend(self.compiler.gateway_routes(route, port))
        sources = list(dict.fromkeys(f"HTTPRoute {r.namespace}/{r.name}" for r, _ in ordered))
        return sort_gateway_routes(compiled), sources, ordered[0][0]

    def _subsets(
        self, routes: Sequence[Route], waypoint: Waypoint, origin: Resource | None
    ) -> tuple[tuple[str, tuple[Subset, ...]], ...]:
        needed = sorted({(b.service, b.subset) for b in route_backends(routes) if b.subset})
        found: dict[str, list[Subset]] = defaultdict(list)
        for key, name in needed:
            target = self.services.get(key)
            labels = (
                self.subsets.subset_labels(target, name, waypoint.namespace)
                if target is not None
                else None
            )
            if labels is None:
                if origin is not None and target is not None:
                    self.warn(
                        origin,
                        "spec.http",
                        f'subset "{name}" of {target.hostname} is not defined by any '
                        "DestinationRule: requests routed to it get 503 (no healthy upstream)",
                    )
                continue
            uids = frozenset(
                uid
                for uid, endpoint_labels in self.endpoints.get(key, ())
                if all(endpoint_labels.get(k) == v for k, v in labels.items())
            )
            found[key].append(Subset(name, tuple(sorted(labels.items())), uids))
        return tuple((key, tuple(subsets)) for key, subsets in found.items())

    def _clusters(
        self, key: str, routes: Sequence[Route], waypoint: Waypoint
    ) -> tuple[ClusterPolicy, ...]:
        """The traffic policies of the served service (its default route) and of every service
        the routes send to, for the subsets they use."""
        subsets: dict[str, set[str]] = {key: set()}
        for b in route_backends(routes):
            if not b.unresolved:
                subsets.setdefault(b.service, set()).update([b.subset] if b.subset else [])
        out: list[ClusterPolicy] = []
        for service_key, used in sorted(subsets.items()):
            service = self.services.get(service_key)
            if service is not None:
                rule = self.subsets.rule_for(service, waypoint.namespace)
                out.extend(traffic.cluster_policies(rule, service_key, used))
        return tuple(out)

    # --- targetRefs: policies and filters ---------------------------------------------------------

    def _attachments(self, resource: Resource) -> Attachments:
        """Where a resource with targetRef(s) applies, as istiod attaches it to waypoints."""
        spec = resource.spec
        refs = [("spec.targetRef", spec["targetRef"])] if spec.get("targetRef") else []
        refs += [(f"spec.targetRefs[{i}]", r) for i, r in enumerate(spec.get("targetRefs") or ())]
        out: Attachments = {}

        def add(waypoint: str, service: str | None) -> None:
            if service is None:
                out[waypoint] = None
            elif out.get(waypoint, set()) is not None:
                out.setdefault(waypoint, set()).add(service)  # type: ignore[union-attr]

        for where, ref in refs:
            group, kind, name = ref.get("group", ""), ref["kind"], ref["name"]
            if ref.get("namespace", resource.namespace) != resource.namespace:
                self.warn(resource, where, "a targetRef must be in the resource's own namespace")
                continue
            if kind == "Gateway" and group == GATEWAY_GROUP:
                key = f"{resource.namespace}/{name}"
                if key in self.waypoints.all:
                    add(key, None)
                else:
                    self.warn(resource, where, f"Gateway {key} is not a waypoint: not applied")
            elif kind == "GatewayClass" and group == GATEWAY_GROUP:
                if name != WAYPOINT_CLASS or resource.namespace != self.root_namespace:
                    self.warn(
                        resource,
                        where,
                        f"only the GatewayClass {WAYPOINT_CLASS}, targeted from the root "
                        f"namespace {self.root_namespace}, applies to waypoints",
                    )
                    continue
                for key in self.waypoints.all:
                    add(key, None)
            elif (kind == "Service" and group in CORE_GROUPS) or (
                kind == "ServiceEntry" and group == ISTIO_NETWORKING_GROUP
            ):
                keys = self._owned(kind, resource.namespace, name)
                if not keys:
                    self.warn(resource, where, f"{kind} {resource.namespace}/{name} not found")
                for key in keys:
                    waypoint = self._waypoint_of(resource, where, key)
                    if waypoint is not None:
                        add(waypoint.key, key)
            else:
                self.warn(
                    resource, where, f"targetRef kind {group or 'core'}/{kind} is not supported"
                )
        return out

    def _policies(self) -> dict[str, dict[str, WaypointPolicy]]:
        out: dict[str, dict[str, WaypointPolicy]] = defaultdict(dict)
        for policy in self.by_kind.get("AuthorizationPolicy", ()):
            if not has_target_refs(policy):
                continue
            attachments = self._attachments(policy)
            authorization, problems = waypoint_authorization(policy)
            for path, reason in problems:
                self.warn(policy, path, reason)
            for waypoint, services in attachments.items():
                out[waypoint][authorization.key] = WaypointPolicy(
                    authorization, tuple(sorted(services)) if services is not None else ()
                )
        return out

    def _authentications(self) -> dict[str, dict[str, WaypointAuthentication]]:
        out: dict[str, dict[str, WaypointAuthentication]] = defaultdict(dict)
        for resource in self.by_kind.get("RequestAuthentication", ()):
            if not has_target_refs(resource):
                continue
            attachments = self._attachments(resource)
            if not attachments:
                continue
            rules, problems = jwt_rules(resource, self.keys)
            for path, reason in problems:
                self.warn(resource, path, reason)
            for waypoint, services in attachments.items():
                authentication = WaypointAuthentication(
                    resource.name,
                    resource.namespace,
                    rules,
                    tuple(sorted(services)) if services is not None else (),
                )
                out[waypoint][authentication.key] = authentication
        return out

    def _filters(self) -> dict[str, list[Resource]]:
        """Service key -> the WasmPlugins that apply to it."""
        out: dict[str, list[Resource]] = defaultdict(list)
        for plugin in self.by_kind.get("WasmPlugin", ()):
            if not has_target_refs(plugin):
                self.warn(
                    plugin,
                    "spec",
                    "no targetRefs: waypoints only apply plugins that target them (their "
                    "Gateway, a Service they serve, or the GatewayClass istio-waypoint)",
                )
                continue
            for waypoint, services in self._attachments(plugin).items():
                keys = services if services is not None else self._served_by(waypoint)
                for key in keys:
                    out[key].append(plugin)
        return out

    def _served_by(self, waypoint: str) -> list[str]:
        return [key for key, (w, _) in self.bound.items() if w.key == waypoint]


def _describe(kind: str, chosen: Any) -> str:
    return " and ".join(f"{kind} {r.namespace}/{r.name}" for r in _resources(kind, chosen))


def _resources(kind: str, candidate: Any) -> list[Resource]:
    if kind == "VirtualService":
        return [candidate]
    return list(dict.fromkeys(r for r, _ in candidate))
