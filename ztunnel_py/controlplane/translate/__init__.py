"""Translation: validated resources in, the workload API's view of the mesh and the waypoints'
L7 configuration out.

`translate` is a pure function of the accepted resources and the mesh options. It indexes pods
and WorkloadEntries by namespace and label, so selecting endpoints for a Service or workloads
for a policy costs the size of the answer, not of the mesh. Problems only visible across
resources (a named targetPort a selected pod does not declare, two ServiceEntries claiming one
host, competing PeerAuthentications, a waypoint that is not ready, a route to a missing service,
an unknown subset) come back as warnings; translation never rejects.

Waypoints (`waypoints.py`) set the `waypoint` address of the Services and Workloads bound to
them; every service bound to a waypoint then gets an `HttpService` (even without routes, so its
filters and policies have somewhere to live) from its HTTPRoutes or VirtualService
(`routes.py`), DestinationRule subsets resolved to the workloads that carry their labels, and
the filters of the WasmPlugins that target it (`extensions.py`). AuthorizationPolicies with
targetRefs become the `WaypointPolicy`s of the waypoints they target (`l7policies.py`), and
RequestAuthentications with targetRefs their `WaypointAuthentication`s, with the keys of each
issuer resolved through the `KeyLookup` given to `translate` (`l7authn.py`; none: offline, as
`controlplane validate` runs).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ztunnel_py.controlplane.jwks import HostAddresses, JwksResult
from ztunnel_py.controlplane.resources import (
    ROOT_NAMESPACE,
    Diagnostic,
    Resource,
    ResourceKey,
)
from ztunnel_py.controlplane.snapshot import WaypointScope
from ztunnel_py.controlplane.translate import autoallocate
from ztunnel_py.controlplane.translate import policies as pol
from ztunnel_py.controlplane.translate import services as svc
from ztunnel_py.controlplane.translate import workloads as wl
from ztunnel_py.controlplane.translate.l7 import L7Builder
from ztunnel_py.controlplane.translate.l7authn import KeyLookup, mesh_hosts
from ztunnel_py.controlplane.translate.waypoints import (
    USE_WAYPOINT_PATH,
    WAYPOINT_CLASS,
    Binding,
    Waypoint,
    WaypointIndex,
)
from ztunnel_py.model import (
    DEFAULT_TRUST_DOMAIN,
    Authorization,
    GatewayAddress,
    IPAddress,
    Service,
    Workload,
    WorkloadStatus,
)
from ztunnel_py.model.http import HttpService
from ztunnel_py.model.workload import DEFAULT_CLUSTER_ID, pod_uid
from ztunnel_py.yamlschema.problems import Severity

DEFAULT_DOMAIN_SUFFIX = "cluster.local"


@dataclass(frozen=True, slots=True)
class MeshOptions:
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = ROOT_NAMESPACE
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX
    cluster_id: str = DEFAULT_CLUSTER_ID


class JwksSource(Protocol):
    """Key sets by issuer and jwksUri (the control plane's `JwksResolver`)."""

    def resolve(
        self, issuer: str, uri: str, timeout: float, hosts: HostAddresses
    ) -> JwksResult: ...


@dataclass(frozen=True, slots=True)
class _Built:
    """What a workload was built from, to reuse it when nothing it depends on changed."""

    resource: Resource
    namespace_labels: Mapping[str, str]
    services: dict[str, dict[int, int]]
    policies: tuple[str, ...]
    waypoint: GatewayAddress | None
    workload: Workload


@dataclass(frozen=True, slots=True)
class _BuiltPolicy:
    """What an AuthorizationPolicy was translated from (None: a waypoint enforces it)."""

    resource: Resource
    root_namespace: str
    policy: Authorization | None


@dataclass(frozen=True, slots=True)
class TranslationCache:
    """Workloads and policies of the previous translation by resource: unchanged ones are
    reused as they are. One policy change then costs the translation of that policy, not of
    all of them (10,000 took 0.8 s), and comparing snapshots is cheap (equal objects are the
    same objects)."""

    workloads: Mapping[ResourceKey, _Built] = field(default_factory=dict)
    policies: Mapping[ResourceKey, _BuiltPolicy] = field(default_factory=dict)
    # ServiceEntry hosts' automatically allocated VIPs: kept while their hosts exist
    vips: autoallocate.Allocation = field(default_factory=autoallocate.Allocation)


@dataclass(frozen=True, slots=True)
class Translation:
    workloads: dict[str, Workload]
    services: dict[str, Service]
    policies: dict[str, Authorization]
    diagnostics: tuple[Diagnostic, ...] = ()
    cache: TranslationCache = field(default_factory=TranslationCache)
    http_services: dict[str, HttpService] = field(default_factory=dict)
    waypoints: dict[str, WaypointScope] = field(default_factory=dict)


@dataclass(slots=True)
class _Member:
    """A selectable endpoint (pod or WorkloadEntry) being built."""

    resource: Resource
    labels: Mapping[str, str]
    named_ports: Mapping[str, int]
    addresses: tuple[IPAddress, ...] = ()
    services: dict[str, dict[int, int]] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)


class _Namespace:
    """The selectable members of one namespace, indexed by label."""

    def __init__(self) -> None:
        self.members: list[_Member] = []
        self.by_label: dict[tuple[str, str], list[int]] = defaultdict(list)

    def add(self, member: _Member) -> None:
        index = len(self.members)
        self.members.append(member)
        for item in member.labels.items():
            self.by_label[item].append(index)

    def select(self, selector: Mapping[str, str]) -> list[_Member]:
        """Members whose labels include `selector` (every member for an empty selector)."""
        if not selector:
            return list(self.members)
        candidates = min((self.by_label.get(item, []) for item in selector.items()), key=len)
        return [
            self.members[i]
            for i in candidates
            if all(self.members[i].labels.get(k) == v for k, v in selector.items())
        ]


class _Translator:
    def __init__(
        self,
        resources: Iterable[Resource],
        options: MeshOptions,
        cache: TranslationCache,
        keys: JwksSource | None,
    ) -> None:
        self.options = options
        self.cache = cache
        self.keys = keys
        self.built: dict[ResourceKey, _Built] = {}
        self.built_policies: dict[ResourceKey, _BuiltPolicy] = {}
        self.by_kind: dict[str, list[Resource]] = defaultdict(list)
        for resource in resources:
            self.by_kind[resource.kind].append(resource)
        for items in self.by_kind.values():
            items.sort(key=pol.creation_order)
        self.namespace_resources = {ns.name: ns for ns in self.by_kind["Namespace"]}
        self.namespace_labels = {ns.name: ns.labels for ns in self.by_kind["Namespace"]}
        self.namespaces: dict[str, _Namespace] = defaultdict(_Namespace)
        self.services: dict[str, Service] = {}
        self.policies: dict[str, Authorization] = {}
        self.diagnostics: list[Diagnostic] = []
        self.waypoints = WaypointIndex(
            self.by_kind["Gateway"],
            self.by_kind["Service"],
            self.by_kind["Pod"],
            self.namespace_resources,
            options.domain_suffix,
        )
        # service key -> the Service or ServiceEntry that defines it
        self.owners: dict[str, Resource] = {}
        # service key -> (its waypoint, the Service or ServiceEntry it comes from)
        self.bound: dict[str, tuple[Waypoint, Resource]] = {}
        # workload uid -> its labels (for DestinationRule subsets)
        self.labels: dict[str, Mapping[str, str]] = {}
        # (namespace, selector, key) of every AuthorizationPolicy that selects workloads, and
        # the PeerAuthentications by namespace: for workloads found by labels outside the
        # namespace index (a ServiceEntry's endpoints)
        self.selector_policies: list[tuple[str, Mapping[str, str], str]] = []
        self.peer_authentications: dict[str, list[Resource]] = defaultdict(list)

    def warn(self, resource: Resource, path: str, reason: str) -> None:
        self.diagnostics.append(Diagnostic(resource.origin, path, reason, Severity.WARNING))

    def _key_lookup(self, workloads: Mapping[str, Workload]) -> KeyLookup | None:
        source = self.keys
        if source is None:
            return None
        hosts = mesh_hosts(self.services, list(workloads.values()))
        return lambda issuer, uri, timeout: source.resolve(issuer, uri, timeout, hosts)

    def run(self) -> Translation:
        self._members()
        self._kubernetes_services()
        self.vips = autoallocate.allocate(self.by_kind["ServiceEntry"], self.cache.vips)
        self.allocated: dict[tuple[str, str], dict[str, tuple[IPAddress, ...]]] = defaultdict(dict)
        for (entry_namespace, entry_name, host), ips in self.vips.addresses.items():
            self.allocated[(entry_namespace, entry_name)][host] = ips
        self._service_entries()
        self._authorization_policies()
        self._peer_authentications()
        workloads: dict[str, Workload] = {}
        for namespace in self.namespaces.values():
            for member in namespace.members:
                workload = self._workload(member)
                workloads[workload.uid] = workload
        for entry in self.by_kind["ServiceEntry"]:
            for workload in self._service_entry_workloads(entry):
                workloads[workload.uid] = workload
        endpoints: dict[str, list[tuple[str, Mapping[str, str]]]] = defaultdict(list)
        for workload in workloads.values():
            for key in workload.services:
                endpoints[key].append((workload.uid, self.labels.get(workload.uid, {})))
        http_services, scopes = L7Builder(
            by_kind=self.by_kind,
            services=self.services,
            owners=self.owners,
            bound=self.bound,
            waypoints=self.waypoints,
            endpoints=endpoints,
            domain_suffix=self.options.domain_suffix,
            root_namespace=self.options.root_namespace,
            warn=self.warn,
            keys=self._key_lookup(workloads),
        ).build()
        cache = TranslationCache(self.built, self.built_policies, self.vips)
        return Translation(
            workloads,
            self.services,
            self.policies,
            tuple(dict.fromkeys(self.diagnostics)),
            cache,
            http_services,
            scopes,
        )

    # --- waypoint binding ----------------------------------------------------------------------

    def _bind_service(self, service: Service, resource: Resource) -> Service:
        binding = self.waypoints.for_service(resource)
        self._report_binding(binding, resource)
        if binding.waypoint is None:
            return service
        self.bound[service.key] = (binding.waypoint, resource)
        return dataclasses.replace(service, waypoint=binding.waypoint.address)

    def _report_binding(self, binding: Binding, target: Resource) -> None:
        problem = binding.problem
        if problem is None:
            return
        if (
            problem.labelled is not target
            and problem.reason == "UnsupportedTrafficType"
            and target.kind in ("Pod", "WorkloadEntry")
        ):
            # A namespace label is usually meant for the services; istiod reports nothing for
            # the workloads of such a namespace either.
            return
        hint = {
            "WaypointIsNotReady": (
                "no waypoint is used and traffic goes direct: create a Gateway of class "
                f"{WAYPOINT_CLASS} with that name (and its Service), or fix the label"
            ),
            "AttachmentDenied": (
                "allow this namespace in allowedRoutes.namespaces of the waypoint's HBONE "
                "listener, or use a waypoint in this namespace"
            ),
            "UnsupportedTrafficType": "set the Gateway's istio.io/waypoint-for label to all",
        }[problem.reason]
        self.warn(
            problem.labelled,
            USE_WAYPOINT_PATH,
            f"{problem.reason}: {problem.message}; {hint}",
        )

    # --- endpoints -----------------------------------------------------------------------------

    def _members(self) -> None:
        for pod in self.by_kind["Pod"]:
            addresses = wl.pod_addresses(pod)
            if wl.pod_is_terminated(pod) or not addresses:
                continue
            member = _Member(pod, pod.labels, wl.pod_named_ports(pod), addresses)
            self.namespaces[pod.namespace].add(member)
        for entry in self.by_kind["WorkloadEntry"]:
            address = entry.spec.get("address", "")
            if address.startswith("unix://"):
                self.warn(
                    entry, "spec.address", "unix domain socket addresses are not supported: ignored"
                )
                continue
            ports = dict(entry.spec.get("ports") or {})
            member = _Member(entry, wl.workload_entry_labels(entry), ports)
            self.namespaces[entry.namespace].add(member)

    # --- services ------------------------------------------------------------------------------

    def _add_service(self, service: Service, owner: Resource, path: str) -> bool:
        existing = self.services.get(service.key)
        if existing is not None:
            self.warn(
                owner,
                path,
                f"host {service.hostname} in namespace {service.namespace} is already defined by "
                f"{existing.name}: ignored",
            )
            return False
        self.services[service.key] = self._bind_service(service, owner)
        self.owners[service.key] = owner
        return True

    def _kubernetes_services(self) -> None:
        o = self.options
        for resource in self.by_kind["Service"]:
            service = svc.kubernetes_service(resource, o.domain_suffix)
            if service is None or not self._add_service(service, resource, "metadata.name"):
                continue
            selector = resource.spec.get("selector") or {}
            if not selector:
                continue  # no selector: endpoints are managed elsewhere
            members = self.namespaces[resource.namespace].select(selector)
            ports = svc.service_ports(resource)
            missing: dict[int, list[str]] = defaultdict(list)
            for member in members:
                mapping: dict[int, int] = {}
                for i, port in enumerate(ports):
                    target = port.get("targetPort", port["port"])
                    if isinstance(target, str):
                        # container ports are looked up by name among the TCP ones (istiod's
                        # FindPortName); a UDP port is carried, not served
                        number = member.named_ports.get(target)
                        if number is None:
                            if port.get("protocol", "TCP") == "TCP":
                                missing[i].append(f"{member.resource.kind} {member.resource.name}")
                            continue
                        target = number
                    mapping[port["port"]] = target
                member.services[service.key] = mapping
            for i, names in missing.items():
                self._missing_port_warning(resource, ports, i, names, len(members))

    def _missing_port_warning(
        self,
        resource: Resource,
        ports: list[Mapping[str, object]],
        i: int,
        names: list[str],
        total: int,
    ) -> None:
        index = (resource.spec.get("ports") or []).index(ports[i])
        more = ", ..." if len(names) > 3 else ""
        self.warn(
            resource,
            f"spec.ports[{index}].targetPort",
            f"port name {ports[i]['targetPort']!r} is not declared by {len(names)} of the "
            f"{total} selected workloads ({', '.join(names[:3])}{more}): "
            f"they get no endpoint for port {ports[i]['port']}",
        )

    def _service_entries(self) -> None:
        for entry in self.by_kind["ServiceEntry"]:
            ranges = svc.service_entry_cidr_addresses(entry)
            if ranges:
                # As istiod: a range VIP cannot be sent (ztunnel would read only its first
                # address), so the ServiceEntry gets no service at all.
                self.warn(
                    entry,
                    "spec.addresses",
                    f"address range {', '.join(ranges)} is not supported in ambient mode (only "
                    "single addresses, e.g. /32): this ServiceEntry's hosts get no service, as "
                    "with istiod",
                )
                continue
            allocated = self.allocated.get((entry.namespace, entry.name), {})
            added = [
                s
                for i, s in enumerate(svc.service_entry_services(entry, allocated))
                if self._add_service(s, entry, f"spec.hosts[{i}]")
            ]
            selector = entry.spec.get("workloadSelector")
            if selector is None or not added:
                continue
            ports = svc.service_entry_ports(entry)
            for member in self.namespaces[entry.namespace].select(selector.get("labels") or {}):
                mapping = {
                    p["number"]: member.named_ports.get(p["name"], p.get("targetPort", p["number"]))
                    for p in ports
                }
                for service in added:
                    member.services[service.key] = dict(mapping)

    def _service_entry_workloads(self, entry: Resource) -> list[Workload]:
        """Its endpoints as workloads; a DNS ServiceEntry without endpoints (and without a
        workloadSelector) gets one implicit endpoint per host, addressed by that host name, as
        istiod builds them. An endpoint addressed by name is a workload with a `hostname` and
        no address: the proxies resolve it when they connect."""
        o = self.options
        out = []
        ports = svc.service_entry_ports(entry)
        keys = [f"{entry.namespace}/{host}" for host in entry.spec["hosts"]]
        keys = [
            k
            for k in keys
            if self.services.get(k) is not None and self.services[k].name == entry.name
        ]
        endpoints: list[tuple[int, Mapping[str, Any], list[str]]] = [
            (i, endpoint, keys) for i, endpoint in enumerate(entry.spec.get("endpoints") or ())
        ]
        implicit = (
            not endpoints
            and entry.spec.get("resolution") in ("DNS", "DNS_ROUND_ROBIN")
            and entry.spec.get("workloadSelector") is None
        )
        if implicit:
            endpoints = [(-1, {"address": key.partition("/")[2]}, [key]) for key in keys]
        for i, endpoint, services in endpoints:
            address = endpoint.get("address", "")
            ip = wl.parse_address(address)
            if address.startswith("unix://"):
                self.warn(
                    entry,
                    f"spec.endpoints[{i}].address",
                    "unix domain socket addresses are not supported: ignored",
                )
                continue
            labels = endpoint.get("labels") or {}
            named = endpoint.get("ports") or {}
            mapping = {
                p["number"]: named.get(p["name"], p.get("targetPort", p["number"])) for p in ports
            }
            # istiod names these after the ServiceEntry and reads its labels, not the
            # endpoint's, for the canonical service and the tunnel
            name, revision = wl.canonical_service(entry.labels, entry.name)
            tunnel, native = wl.tunnel(entry.labels, entry.annotations)
            uid = self._service_entry_uid(entry, address)
            self.labels[uid] = labels
            out.append(
                Workload(
                    uid=uid,
                    name=entry.name,
                    namespace=entry.namespace,
                    addresses=(ip,) if ip is not None else (),
                    hostname="" if ip is not None else address,
                    service_account=endpoint.get("serviceAccount") or "default",
                    trust_domain=o.trust_domain,
                    network=endpoint.get("network") or "",
                    tunnel_protocol=tunnel,
                    native_tunnel=native,
                    canonical_name=name,
                    canonical_revision=revision,
                    workload_name=entry.name,
                    workload_type=wl.WORKLOAD_TYPE,
                    services={k: dict(mapping) for k in services},
                    # istiod selects them by the ServiceEntry's labels, as the canonical service
                    authorization_policies=self._policies_for_labels(entry.namespace, entry.labels),
                    cluster_id=o.cluster_id,
                    capacity=wl.capacity(endpoint),
                )
            )
        return out

    # --- policies ------------------------------------------------------------------------------

    def _authorization_policies(self) -> None:
        root = self.options.root_namespace
        for resource in self.by_kind["AuthorizationPolicy"]:
            built = self.cache.policies.get(resource.key)
            if not (
                built is not None
                and built.root_namespace == root
                and (built.resource is resource or built.resource == resource)
            ):
                built = _BuiltPolicy(resource, root, pol.authorization(resource, root))
            self.built_policies[resource.key] = built
            policy = built.policy
            if policy is None:
                continue
            self.policies[policy.key] = policy
            selector = pol.selector_labels(resource)
            if not selector:
                # no selector: found by scope; `selector: {}`: istiod attaches a policy to a
                # workload by its labels, and there are none, so it guards no workload
                continue
            self.selector_policies.append((resource.namespace, selector, policy.key))
            scopes = (
                self.namespaces.values()
                if resource.namespace == root
                else [self.namespaces[resource.namespace]]
            )
            for namespace in scopes:
                for member in namespace.select(selector):
                    member.policies.append(policy.key)

    def _peer_authentications(self) -> None:
        items = self.by_kind["PeerAuthentication"]
        if not items:
            return
        root = self.options.root_namespace
        # istiod sends its static STRICT policy as soon as any PeerAuthentication exists
        strict_key = f"{root}/{pol.STATIC_STRICT_NAME}"
        self.policies[strict_key] = pol.static_strict_policy(root)
        by_namespace: dict[str, list[Resource]] = defaultdict(list)
        namespace_level: dict[str, list[Resource]] = defaultdict(list)
        parents: dict[str, list[Resource]] = defaultdict(list)
        self.peer_authentications = by_namespace
        for pa in items:
            by_namespace[pa.namespace].append(pa)
            if pol.is_namespace_level(pa):
                namespace_level[pa.namespace].append(pa)
            elif pa.namespace == root:
                self.warn(
                    pa,
                    "spec.selector",
                    "a PeerAuthentication with a selector in the root namespace is ignored in "
                    "ambient mode: put it in the workload's namespace",
                )
            if pol.is_parent(pa):
                parents[pa.namespace].append(pa)
        for group in namespace_level.values():
            self._oldest_wins(group, "namespace" if group[0].namespace != root else "mesh")
        mesh = pol.oldest(parents.get(root, []))
        for ns, group in by_namespace.items():
            for pa in group:
                converted = pol.convert_peer_authentication(
                    pa, pol.oldest(parents.get(ns, [])), mesh, root
                )
                if converted is not None:
                    self.policies[converted.key] = converted
        gaps: set[str] = set()
        for ns, namespace in self.namespaces.items():
            for member in namespace.members:
                keys = self._peer_authentication_keys(ns, member.labels)
                member.policies.extend(k for k in keys if k not in member.policies)
                gaps.update(k for k in keys if k not in self.policies)
        for key in sorted(gaps):
            self._peer_authentication_gap(key)

    def _peer_authentication_keys(self, namespace: str, labels: Mapping[str, str]) -> list[str]:
        """The PeerAuthentication policies (static STRICT, converted port-level ones) istiod
        attaches to a workload with these labels."""
        root = self.options.root_namespace
        candidates = self.peer_authentications.get(root, []) + (
            self.peer_authentications.get(namespace, []) if namespace != root else []
        )
        if not candidates:
            return []
        applicable = pol.applicable_peer_authentications(candidates, root, namespace, labels)
        return pol.workload_peer_authentication_keys(applicable, root)

    def _policies_for_labels(self, namespace: str, labels: Mapping[str, str]) -> tuple[str, ...]:
        """istiod's buildWorkloadPolicies for a workload found by labels rather than in the
        namespace index: the selecting AuthorizationPolicies of its namespace and the root one,
        sorted, then its PeerAuthentication policies."""
        root = self.options.root_namespace
        keys = sorted(
            key
            for ns, selector, key in self.selector_policies
            if ns in (namespace, root) and all(labels.get(k) == v for k, v in selector.items())
        )
        keys += [k for k in self._peer_authentication_keys(namespace, labels) if k not in keys]
        return tuple(keys)

    def _peer_authentication_gap(self, key: str) -> None:
        """A workload references a converted policy istiod does not create (its conditions
        disagree there): say what is left unenforced."""
        namespace, _, name = key.partition("/")
        pa_name = name.removeprefix(pol.CONVERTED_PREFIX)
        pa = next(
            (
                p
                for p in self.by_kind["PeerAuthentication"]
                if p.namespace == namespace and p.name == pa_name
            ),
            None,
        )
        if pa is None:
            return
        strict_ports = [
            str(port)
            for port, mtls in sorted((pa.spec.get("portLevelMtls") or {}).items())
            if (mtls or {}).get("mode") in ("STRICT", "PERMISSIVE")
        ]
        self.warn(
            pa,
            "spec.portLevelMtls",
            f"as istiod, the workloads this selects are sent without STRICT mTLS enforcement: "
            f"they reference {key}, which istiod does not create for this combination of modes "
            f"(port-level settings on ports {', '.join(strict_ports)}); state the workload's "
            "mode explicitly (mtls.mode: STRICT with PERMISSIVE ports, or PERMISSIVE with "
            "STRICT ports under a namespace policy that is not STRICT)",
        )

    def _oldest_wins(self, group: list[Resource], level: str) -> None:
        winner = pol.oldest(group)
        for pa in group:
            if pa is not winner and winner is not None:
                self.warn(
                    pa,
                    "metadata.name",
                    f"ignored: PeerAuthentication {winner.name} is also {level}-wide and older "
                    "(the oldest one applies)",
                )

    # --- workloads -----------------------------------------------------------------------------

    def _workload(self, member: _Member) -> Workload:
        r = member.resource
        ns_labels = self.namespace_labels.get(r.namespace, {})
        policy_keys = sorted(k for k in member.policies if not _is_peer_authentication_key(k))
        policy_keys += [k for k in member.policies if _is_peer_authentication_key(k)]
        policies = tuple(policy_keys)
        binding = self.waypoints.for_workload(r, member.labels)
        self._report_binding(binding, r)
        waypoint = binding.waypoint.address if binding.waypoint is not None else None
        built = self.cache.workloads.get(r.key)
        if not (
            built is not None
            and (built.resource is r or built.resource == r)
            and built.policies == policies
            and built.services == member.services
            and built.namespace_labels == ns_labels
            and built.waypoint == waypoint
        ):
            workload = self._build(member, ns_labels, policies, waypoint)
            built = _Built(r, ns_labels, member.services, policies, waypoint, workload)
        elif built.resource is not r:
            # Equal but re-read (its file changed): remember the new object, so the next
            # check is an identity check again.
            built = dataclasses.replace(built, resource=r)
        self.built[r.key] = built
        self.labels[built.workload.uid] = member.labels
        return built.workload

    def _build(
        self,
        member: _Member,
        ns_labels: Mapping[str, str],
        policy_keys: tuple[str, ...],
        waypoint: GatewayAddress | None,
    ) -> Workload:
        r = member.resource
        o = self.options
        uid = self._member_uid(member)
        if r.kind == "Pod":
            name = wl.pod_workload_name(r)
            canonical, revision = wl.canonical_service(r.labels, name)
            tunnel, native = wl.tunnel(r.labels, r.annotations)
            spec = r.spec
            return Workload(
                uid=uid,
                name=r.name,
                namespace=r.namespace,
                addresses=member.addresses,
                service_account=spec.get("serviceAccountName")
                or spec.get("serviceAccount")
                or "default",
                trust_domain=o.trust_domain,
                node=spec.get("nodeName") or "",
                network=r.labels.get(wl.NETWORK_LABEL, ""),
                tunnel_protocol=tunnel,
                native_tunnel=native,
                canonical_name=canonical,
                canonical_revision=revision,
                workload_name=name,
                workload_type=wl.WORKLOAD_TYPE,
                waypoint=waypoint,
                services=member.services,
                authorization_policies=policy_keys,
                status=wl.pod_status(r),
                cluster_id=o.cluster_id,
                network_mode=wl.pod_network_mode(r),
            )
        spec = r.spec
        address = spec.get("address", "")
        ip = wl.parse_address(address)
        addresses: tuple[IPAddress, ...] = (ip,) if ip is not None else ()
        name = wl.workload_entry_name(r)
        canonical, revision = wl.canonical_service(member.labels, name)
        tunnel, native = wl.tunnel(member.labels, r.annotations)
        return Workload(
            uid=uid,
            name=r.name,
            namespace=r.namespace,
            addresses=addresses,
            hostname="" if ip is not None else address,
            service_account=spec.get("serviceAccount") or "default",
            trust_domain=o.trust_domain,
            network=spec.get("network") or "",
            tunnel_protocol=tunnel,
            native_tunnel=native,
            canonical_name=canonical,
            canonical_revision=revision,
            workload_name=name,
            workload_type=wl.WORKLOAD_TYPE,
            waypoint=waypoint,
            services=member.services,
            authorization_policies=policy_keys,
            status=WorkloadStatus.HEALTHY,
            cluster_id=o.cluster_id,
            capacity=wl.capacity(spec),
        )

    def _member_uid(self, member: _Member) -> str:
        r, cluster = member.resource, self.options.cluster_id
        if r.kind == "Pod":
            return pod_uid(r.namespace, r.name, cluster)
        return f"{cluster}/networking.istio.io/WorkloadEntry/{r.namespace}/{r.name}"

    def _service_entry_uid(self, entry: Resource, address: str) -> str:
        cluster = self.options.cluster_id
        return (
            f"{cluster}/networking.istio.io/ServiceEntry/{entry.namespace}/{entry.name}/{address}"
        )


def _is_peer_authentication_key(key: str) -> bool:
    name = key.rpartition("/")[2]
    return name == pol.STATIC_STRICT_NAME or name.startswith(pol.CONVERTED_PREFIX)


def translate(
    resources: Iterable[Resource],
    options: MeshOptions | None = None,
    cache: TranslationCache | None = None,
    keys: JwksSource | None = None,
) -> Translation:
    """The mesh model for `resources` (all validated). `cache`: the previous translation's;
    `keys`: where the JWT rules' key sets come from (None: not fetched)."""
    return _Translator(resources, options or MeshOptions(), cache or TranslationCache(), keys).run()


__all__ = ["JwksSource", "MeshOptions", "Translation", "TranslationCache", "translate"]
