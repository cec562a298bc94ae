"""The mesh as a proxy sees it: workloads, services, their endpoints and authorization policies.

One `ProxyState` per agent or waypoint. It is fed whole (a local-config load or reload:
`replace`) or by deltas (the xDS client: `apply_delta`), answers the lookups the proxies make on
every connection (workload by IP, service by VIP, endpoint selection, the policies that guard a
workload, the identities an upstream may present) and renders the `/config_dump` sections.

It is plain synchronous code with no I/O and no locks: mutate and read it from one thread (the
trio thread). Subscribers registered with `subscribe` are called synchronously after every change,
in the mutating thread, so a trio task can wake itself from there (e.g. set a `trio.Event`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ztunnel_py.admin.jsonstream import LazyList
from ztunnel_py.model import (
    Authorization,
    GatewayAddress,
    Identity,
    IPAddress,
    Match,
    NamespacedHostname,
    NetworkAddress,
    PolicyScope,
    Service,
    StringMatch,
    StringMatchKind,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ztunnel_py.model.workload import HealthPolicy, Locality, NetworkCidr, NetworkMode
from ztunnel_py.policy.rbac import PolicySet
from ztunnel_py.xds.localconfig import LocalConfig, load_local_config

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class StateChange:
    """What a mutation touched; `version` increases by one per mutation."""

    version: int
    workloads: bool
    services: bool
    policies: bool


Subscriber = Callable[[StateChange], None]


class ProxyState:
    def __init__(self) -> None:
        self._workloads: dict[str, Workload] = {}
        # address -> uid/key -> owner: host-network pods share an IP and services may share a
        # VIP, so removing one owner must leave the others findable; the newest owner wins.
        self._by_address: dict[NetworkAddress, dict[str, Workload]] = {}
        self._services: dict[str, Service] = {}
        self._by_vip: dict[NetworkAddress, dict[str, Service]] = {}
        # hostname (lower case) -> key -> service: the DNS proxy's index (one hostname may be
        # defined in several namespaces)
        self._by_hostname: dict[str, dict[str, Service]] = {}
        # services with range VIPs, searched (longest prefix first) when no exact VIP matches
        self._cidr_vips: dict[str, tuple[NetworkCidr, ...]] = {}
        # service key -> workload uid -> workload listing that service (services may arrive
        # after their endpoints, so this is kept by key, not by Service object)
        self._endpoints: dict[str, dict[str, Workload]] = {}
        self._policies: dict[str, Authorization] = {}
        self._namespace_policies: dict[str, dict[str, Authorization]] = {}
        self._global_policies: dict[str, Authorization] = {}
        # uid -> the policies guarding it, compiled; every connection asks, any change invalidates
        self._policies_for: dict[str, PolicySet] = {}
        self._subscribers: list[Subscriber] = []
        self.version = 0

    # --- change notification -------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` after every change; returns a function that unsubscribes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _changed(self, workloads: bool, services: bool, policies: bool) -> None:
        self.version += 1
        self._policies_for.clear()
        change = StateChange(self.version, workloads, services, policies)
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                # One broken subscriber must not stop the others or undo the change.
                log.exception("state subscriber %r failed", callback)

    # --- mutation ------------------------------------------------------------------------------

    def replace(
        self,
        workloads: Iterable[Workload],
        services: Iterable[Service],
        policies: Iterable[Authorization],
    ) -> None:
        """Replace everything (a local-config load or reload)."""
        self._workloads.clear()
        self._by_address.clear()
        self._services.clear()
        self._by_vip.clear()
        self._by_hostname.clear()
        self._cidr_vips.clear()
        self._endpoints.clear()
        self._policies.clear()
        self._namespace_policies.clear()
        self._global_policies.clear()
        for w in workloads:
            self._upsert_workload(w)
        for s in services:
            self._upsert_service(s)
        for p in policies:
            self._upsert_policy(p)
        self._changed(workloads=True, services=True, policies=True)

    def apply_delta(
        self,
        *,
        workloads: Iterable[Workload] = (),
        removed_workloads: Iterable[str] = (),
        services: Iterable[Service] = (),
        removed_services: Iterable[str] = (),
        policies: Iterable[Authorization] = (),
        removed_policies: Iterable[str] = (),
    ) -> None:
        """Upsert and remove by key (workload uid, service `ns/hostname`, policy `ns/name`).

        Removals apply first, so a key both removed and upserted ends up present. Unknown keys
        in removals are ignored, as xDS may repeat a removal.
        """
        touched = [False, False, False]
        for uid in removed_workloads:
            touched[0] |= self._remove_workload(uid)
        for key in removed_services:
            touched[1] |= self._remove_service(key)
        for key in removed_policies:
            touched[2] |= self._remove_policy(key)
        for w in workloads:
            self._upsert_workload(w)
            touched[0] = True
        for s in services:
            self._upsert_service(s)
            touched[1] = True
        for p in policies:
            self._upsert_policy(p)
            touched[2] = True
        if any(touched):
            self._changed(*touched)

    def reload_local_config(self, path: str | Path) -> LocalConfig:
        """Load a local-config file and replace the state with it.

        Raises ConfigError (state untouched: the last good config stays in force) if the file
        is unreadable or invalid; the caller logs it.
        """
        config = load_local_config(path)
        self.replace(config.workloads, config.services, config.policies)
        return config

    def _upsert_workload(self, w: Workload) -> None:
        self._remove_workload(w.uid)
        self._workloads[w.uid] = w
        for ip in _indexed_addresses(w):
            self._by_address.setdefault(NetworkAddress(w.network, ip), {})[w.uid] = w
        for key in w.services:
            self._endpoints.setdefault(key, {})[w.uid] = w

    def _remove_workload(self, uid: str) -> bool:
        old = self._workloads.pop(uid, None)
        if old is None:
            return False
        for ip in _indexed_addresses(old):
            _discard(self._by_address, NetworkAddress(old.network, ip), uid)
        for key in old.services:
            _discard(self._endpoints, key, uid)
        return True

    def _upsert_service(self, s: Service) -> None:
        self._remove_service(s.key)
        self._services[s.key] = s
        self._by_hostname.setdefault(s.hostname.lower(), {})[s.key] = s
        for vip in s.vips:
            self._by_vip.setdefault(vip, {})[s.key] = s
        if s.cidr_vips:
            self._cidr_vips[s.key] = s.cidr_vips

    def _remove_service(self, key: str) -> bool:
        old = self._services.pop(key, None)
        if old is None:
            return False
        _discard(self._by_hostname, old.hostname.lower(), key)
        for vip in old.vips:
            _discard(self._by_vip, vip, key)
        self._cidr_vips.pop(key, None)
        return True

    def _upsert_policy(self, p: Authorization) -> None:
        self._remove_policy(p.key)
        self._policies[p.key] = p
        if p.scope is PolicyScope.GLOBAL:
            self._global_policies[p.key] = p
        elif p.scope is PolicyScope.NAMESPACE:
            self._namespace_policies.setdefault(p.namespace, {})[p.key] = p

    def _remove_policy(self, key: str) -> bool:
        old = self._policies.pop(key, None)
        if old is None:
            return False
        self._global_policies.pop(key, None)
        _discard(self._namespace_policies, old.namespace, key)
        return True

    # --- lookups -------------------------------------------------------------------------------

    def workloads(self) -> list[Workload]:
        return list(self._workloads.values())

    def services(self) -> list[Service]:
        return list(self._services.values())

    def policies(self) -> list[Authorization]:
        return list(self._policies.values())

    def workload_by_uid(self, uid: str) -> Workload | None:
        return self._workloads.get(uid)

    def workload_by_ip(self, ip: IPAddress, network: str = "") -> Workload | None:
        return _newest(self._by_address.get(NetworkAddress(network, ip)))

    def service_by_vip(self, ip: IPAddress, network: str = "") -> Service | None:
        """The service with VIP `ip`; else the one whose range VIP is the narrowest to
        contain it."""
        found = _newest(self._by_vip.get(NetworkAddress(network, ip)))
        if found is not None or not self._cidr_vips:
            return found
        containing = [
            (r.cidr.prefixlen, key)
            for key, ranges in self._cidr_vips.items()
            for r in ranges
            if r.network == network and ip in r
        ]
        return self._services[max(containing)[1]] if containing else None

    def service_by_key(self, key: str) -> Service | None:
        """A service by its xDS name, `namespace/hostname`."""
        return self._services.get(key)

    def services_by_hostname(self, hostname: str) -> list[Service]:
        """Every service named `hostname` (case-insensitive; one per defining namespace)."""
        return list(self._by_hostname.get(hostname.lower(), {}).values())

    def service_workloads(self, service: Service) -> list[Workload]:
        """The workloads listing `service` (its endpoints, whatever their ports)."""
        return list(self._endpoints.get(service.key, {}).values())

    def policy(self, key: str) -> Authorization | None:
        return self._policies.get(key)

    def endpoints(self, service: Service, service_port: int) -> list[tuple[Workload, int]]:
        """The service's workloads that can take `service_port`, with their target port.

        A workload's own port mapping wins (named target ports resolve per workload), else the
        service's numeric target port; a workload with neither cannot serve that port.
        """
        out = []
        service_target = service.ports.get(service_port, 0)
        for w in self._endpoints.get(service.key, {}).values():
            target = w.services.get(service.key, {}).get(service_port, 0) or service_target
            if target:
                out.append((w, target))
        return out

    def select_endpoint(
        self, service: Service, service_port: int, rng: random.Random
    ) -> tuple[Workload, int] | None:
        """Pick a healthy endpoint (any, under a health policy of ALLOW_ALL), weighted by
        `capacity`; None if there is none."""
        any_health = (
            service.load_balancer is not None
            and service.load_balancer.health_policy is HealthPolicy.ALLOW_ALL
        )
        candidates = [
            (w, port)
            for w, port in self.endpoints(service, service_port)
            if (any_health or w.status is WorkloadStatus.HEALTHY) and w.capacity > 0
        ]
        if not candidates:
            return None
        return rng.choices(candidates, weights=[w.capacity for w, _ in candidates])[0]

    def waypoint_endpoint(
        self, waypoint: GatewayAddress, rng: random.Random
    ) -> tuple[Workload, int] | None:
        """The waypoint workload a `GatewayAddress` leads to, and its HBONE port: the hostname
        form names a service (an endpoint taking `hbone_mtls_port` is picked), the address form
        a service VIP or a workload IP. None when nothing healthy answers to it."""
        port = waypoint.hbone_mtls_port
        dest = waypoint.destination
        if isinstance(dest, NamespacedHostname):
            service = self.service_by_key(f"{dest.namespace}/{dest.hostname}")
            if service is not None:
                return self.select_endpoint(service, port, rng)
            return None
        service = self.service_by_vip(dest.address, dest.network)
        if service is not None:
            return self.select_endpoint(service, port, rng)
        workload = self.workload_by_ip(dest.address, dest.network)
        if workload is None or workload.status is not WorkloadStatus.HEALTHY:
            return None
        return workload, port

    def policies_for(self, workload: Workload) -> PolicySet:
        """The policies guarding `workload`: its namespace's, the global ones, and its selector
        policies (keys the control plane listed on the workload; unknown keys are skipped).

        Compiled here on a miss (about 50 ms for 10,000 policies), so each decision looks only
        at the rules that could match; a proxy's event loop compiles in a worker thread instead
        (`policy_inputs`, then `install_policies`) and reads the result with `cached_policies`."""
        cached = self.cached_policies(workload)
        if cached is not None:
            return cached
        result = PolicySet(self.policy_inputs(workload))
        self.install_policies(workload.uid, self.version, result)
        return result

    def cached_policies(self, workload: Workload) -> PolicySet | None:
        """The compiled policies of `workload` under the current state, if compiled already."""
        return self._policies_for.get(workload.uid)

    def policy_inputs(self, workload: Workload) -> list[Authorization]:
        """What `policies_for` compiles: the policies in scope of `workload`, in order."""
        found = dict(self._namespace_policies.get(workload.namespace, {}))
        found.update(self._global_policies)
        for key in workload.authorization_policies:
            policy = self._policies.get(key)
            if policy is None:
                log.debug("workload %s references unknown policy %s", workload.uid, key)
            else:
                found[key] = policy
        return list(found.values())

    def install_policies(self, uid: str, version: int, policies: PolicySet) -> bool:
        """Cache a set compiled from `policy_inputs` at state `version`; refused (False) when
        the state changed since, since the set may no longer be the one in force."""
        if version != self.version:
            return False
        self._policies_for[uid] = policies
        return True

    def upstream_identities(self, workload: Workload, service: Service | None) -> list[Identity]:
        """Identities an upstream may present: the workload's own, then the service's SANs."""
        identities = [workload.identity]
        for san in service.subject_alt_names if service else ():
            try:
                identity = Identity.parse(san)
            except ValueError:
                log.debug("ignoring non-SPIFFE subject alt name %r of %s", san, service)
                continue
            if identity not in identities:
                identities.append(identity)
        return identities

    # --- /config_dump --------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """`workloads`, `services` and `policies` as `istioctl ztunnel-config` reads them."""
        return {name: list(items) for name, items in self.lazy_dump().items()}

    def lazy_dump(self) -> dict[str, LazyList]:
        """`dump` with each element rendered only when it is written (the admin's streamed
        `/config_dump`); the objects are the state's as of this call."""
        return {
            "workloads": LazyList(sorted(self.workloads(), key=_uid), _dump_workload),
            "services": LazyList(sorted(self.services(), key=_key), self._dump_service),
            "policies": LazyList(sorted(self.policies(), key=_key), _dump_policy),
        }

    def _dump_service(self, s: Service) -> dict[str, Any]:
        endpoints = {w.uid: _dump_endpoint(s, w) for w in self._endpoints.get(s.key, {}).values()}
        out: dict[str, Any] = {
            "name": s.name,
            "namespace": s.namespace,
            "hostname": s.hostname,
            "vips": [str(v) for v in (*s.vips, *s.cidr_vips)],
            "ports": _ports(s.ports),
            "endpoints": endpoints,
            "subjectAltNames": list(s.subject_alt_names),
            "canonical": s.canonical,
        }
        if s.waypoint is not None:
            out["waypoint"] = _dump_gateway(s.waypoint)
        if s.ip_families is not None:
            out["ipFamilies"] = s.ip_families.value
        if s.load_balancer is not None:
            lb = s.load_balancer
            out["loadBalancer"] = {
                "routingPreferences": [p.value for p in lb.routing_preferences],
                "mode": lb.mode.value,
                "healthPolicy": lb.health_policy.value,
            }
        return out


def _indexed_addresses(w: Workload) -> tuple[IPAddress, ...]:
    """The addresses a workload is found by: none for a host-network pod, whose IP is its
    node's and does not identify it (it is still a service endpoint)."""
    return () if w.network_mode is NetworkMode.HOST_NETWORK else w.addresses


def _dump_endpoint(s: Service, w: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workloadUid": w.uid,
        "service": s.key,
        "port": _ports(w.services.get(s.key, {})),
        "status": w.status.value,
    }
    if w.addresses:
        out["address"] = str(NetworkAddress(w.network, w.addresses[0]))
    return out


def _discard(index: dict[_K, dict[str, _V]], key: _K, member: str) -> None:
    members = index.get(key)
    if members is not None:
        members.pop(member, None)
        if not members:
            del index[key]


def _newest(members: dict[str, _V] | None) -> _V | None:
    return next(reversed(members.values())) if members else None


def _uid(w: Workload) -> str:
    return w.uid


def _key(x: Service | Authorization) -> str:
    return x.key


def _ports(ports: dict[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(ports.items())}


def _dump_gateway(g: GatewayAddress) -> dict[str, Any]:
    return {"destination": str(g.destination), "hboneMtlsPort": g.hbone_mtls_port}


def _dump_workload(w: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": w.uid,
        "workloadIps": [str(ip) for ip in w.addresses],
        "protocol": "HBONE" if w.tunnel_protocol is TunnelProtocol.HBONE else "TCP",
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "trustDomain": w.trust_domain,
        "workloadName": w.workload_name,
        "workloadType": w.workload_type,
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "node": w.node,
        "status": w.status.value,
        "clusterId": w.cluster_id,
        "authorizationPolicies": list(w.authorization_policies),
        "services": sorted(w.services),
        "capacity": w.capacity,
        "networkMode": w.network_mode.value,
    }
    if w.locality != Locality():
        out["locality"] = {
            k: v
            for k, v in (
                ("region", w.locality.region),
                ("zone", w.locality.zone),
                ("subzone", w.locality.subzone),
            )
            if v
        }
    if w.native_tunnel:
        out["nativeTunnel"] = True
    if w.network:
        out["network"] = w.network
    if w.hostname:
        out["hostname"] = w.hostname
    if w.waypoint is not None:
        out["waypoint"] = _dump_gateway(w.waypoint)
    return out


def _dump_policy(p: Authorization) -> dict[str, Any]:
    return {
        "name": p.name,
        "namespace": p.namespace,
        "scope": p.scope.value,
        "action": p.action.value,
        "rules": [[[_dump_match(m) for m in clause] for clause in rule] for rule in p.rules],
        "dryRun": p.dry_run,
    }


def _dump_string_match(m: StringMatch) -> dict[str, Any]:
    # serde's shape for ztunnel's StringMatch enum; Presence is a unit-like tuple variant.
    if m.kind is StringMatchKind.PRESENCE:
        return {"Presence": []}
    return {m.kind.value: m.value}


def _dump_match(m: Match) -> dict[str, Any]:
    fields: list[tuple[str, list[Any]]] = [
        ("namespaces", [_dump_string_match(s) for s in m.namespaces]),
        ("notNamespaces", [_dump_string_match(s) for s in m.not_namespaces]),
        (
            "serviceAccounts",
            [
                {"namespace": s.namespace, "serviceAccount": s.service_account}
                for s in m.service_accounts
            ],
        ),
        (
            "notServiceAccounts",
            [
                {"namespace": s.namespace, "serviceAccount": s.service_account}
                for s in m.not_service_accounts
            ],
        ),
        ("principals", [_dump_string_match(s) for s in m.principals]),
        ("notPrincipals", [_dump_string_match(s) for s in m.not_principals]),
        ("sourceIps", [str(c) for c in m.source_ips]),
        ("notSourceIps", [str(c) for c in m.not_source_ips]),
        ("destinationIps", [str(c) for c in m.destination_ips]),
        ("notDestinationIps", [str(c) for c in m.not_destination_ips]),
        ("destinationPorts", list(m.destination_ports)),
        ("notDestinationPorts", list(m.not_destination_ports)),
    ]
    # ztunnel omits empty lists (skip_serializing_if = Vec::is_empty)
    return {name: values for name, values in fields if values}
