"""The one place where protobuf and our types meet, both ways.

- Model <-> workload API: `Workload` and `Service` <-> `istio.workload.Address`, `Authorization` <->
  `istio.security.Authorization` (docs/istio-compat.md, "The workload API"). Decoding accepts what
  istiod sends as ztunnel does (see "protobuf -> model" below for what is dropped and what
  refuses a resource); a resource that cannot be used raises `ConversionError` with a one-line
  reason (it becomes a per-resource NACK reason). Fields our model does not carry (network
  gateway, application tunnel, weighted waypoints, extensions) are ignored on input and not sent.
- xDS messages <-> the sans-IO bookkeeping types of `ztunnel_py.protocol.xds`: requests both
  ways, a whole `DeltaDiscoveryResponse` decoded into model objects plus per-resource rejections
  (`decode_response`), and server-side resources encoded once with a content version
  (`encode_resource`, `encode_response`).

Every other module deals in model and protocol types only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError, Message

from ztunnel_py.model import (
    DEFAULT_TRUST_DOMAIN,
    Action,
    Authorization,
    Cidr,
    GatewayAddress,
    IPAddress,
    Match,
    NamespacedHostname,
    NetworkAddress,
    PolicyScope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ztunnel_py.model.address import MAX_PORT
from ztunnel_py.model.ports import HBONE_PORT
from ztunnel_py.model.workload import (
    DEFAULT_CLUSTER_ID,
    AppProtocol,
    HealthPolicy,
    IpFamilies,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    Locality,
    NetworkCidr,
    NetworkMode,
)
from ztunnel_py.proto import (
    authorization_pb2,
    discovery_pb2,
    envoy_base_pb2,
    rpc_status_pb2,
    workload_pb2,
)
from ztunnel_py.protocol.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, Delta, Request

DEFAULT_SERVICE_ACCOUNT = "default"
MAX_UINT32 = 2**32 - 1

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = TypeVar("_P")


class ConversionError(ValueError):
    """A resource our model cannot represent; the message is the NACK reason."""


class XdsDecodeError(ValueError):
    """A whole xDS message could not be parsed."""


# --- workload API: model -> protobuf ----------------------------------------------------------

_WORKLOAD_TYPES = {
    "deployment": workload_pb2.DEPLOYMENT,
    "cronjob": workload_pb2.CRONJOB,
    "pod": workload_pb2.POD,
    "job": workload_pb2.JOB,
}
_WORKLOAD_TYPE_NAMES: dict[int, str] = {int(v): k for k, v in _WORKLOAD_TYPES.items()}
_TUNNELS = {TunnelProtocol.NONE: workload_pb2.NONE, TunnelProtocol.HBONE: workload_pb2.HBONE}
_TUNNEL_NAMES: dict[int, TunnelProtocol] = {int(v): k for k, v in _TUNNELS.items()}
_STATUSES = {
    WorkloadStatus.HEALTHY: workload_pb2.HEALTHY,
    WorkloadStatus.UNHEALTHY: workload_pb2.UNHEALTHY,
}
_STATUS_NAMES: dict[int, WorkloadStatus] = {int(v): k for k, v in _STATUSES.items()}
_SCOPES = {
    PolicyScope.GLOBAL: authorization_pb2.GLOBAL,
    PolicyScope.NAMESPACE: authorization_pb2.NAMESPACE,
    PolicyScope.WORKLOAD_SELECTOR: authorization_pb2.WORKLOAD_SELECTOR,
}
_SCOPE_NAMES: dict[int, PolicyScope] = {int(v): k for k, v in _SCOPES.items()}
_ACTIONS = {Action.ALLOW: authorization_pb2.ALLOW, Action.DENY: authorization_pb2.DENY}
_ACTION_NAMES: dict[int, Action] = {int(v): k for k, v in _ACTIONS.items()}
_APP_PROTOCOLS = {
    AppProtocol.UNKNOWN: workload_pb2.UNKNOWN,
    AppProtocol.HTTP11: workload_pb2.HTTP11,
    AppProtocol.HTTP2: workload_pb2.HTTP2,
    AppProtocol.GRPC: workload_pb2.GRPC,
    AppProtocol.TCP: workload_pb2.TCP,
    AppProtocol.TLS: workload_pb2.TLS,
}
_APP_PROTOCOL_NAMES: dict[int, AppProtocol] = {int(v): k for k, v in _APP_PROTOCOLS.items()}
_NETWORK_MODES = {
    NetworkMode.STANDARD: workload_pb2.STANDARD,
    NetworkMode.HOST_NETWORK: workload_pb2.HOST_NETWORK,
}
_NETWORK_MODE_NAMES: dict[int, NetworkMode] = {int(v): k for k, v in _NETWORK_MODES.items()}
_IP_FAMILIES = {
    IpFamilies.IPV4: workload_pb2.IPV4_ONLY,
    IpFamilies.IPV6: workload_pb2.IPV6_ONLY,
    IpFamilies.DUAL: workload_pb2.DUAL,
}
_IP_FAMILY_NAMES: dict[int, IpFamilies] = {int(v): k for k, v in _IP_FAMILIES.items()}
_LB = workload_pb2.LoadBalancing
_LB_MODES = {
    LoadBalancerMode.STANDARD: _LB.UNSPECIFIED_MODE,
    LoadBalancerMode.STRICT: _LB.STRICT,
    LoadBalancerMode.FAILOVER: _LB.FAILOVER,
    LoadBalancerMode.PASSTHROUGH: _LB.PASSTHROUGH,
}
_LB_MODE_NAMES: dict[int, LoadBalancerMode] = {int(v): k for k, v in _LB_MODES.items()}
_LB_SCOPES = {
    LoadBalancerScope.REGION: _LB.REGION,
    LoadBalancerScope.ZONE: _LB.ZONE,
    LoadBalancerScope.SUBZONE: _LB.SUBZONE,
    LoadBalancerScope.NODE: _LB.NODE,
    LoadBalancerScope.CLUSTER: _LB.CLUSTER,
    LoadBalancerScope.NETWORK: _LB.NETWORK,
}
_LB_SCOPE_NAMES: dict[int, LoadBalancerScope] = {int(v): k for k, v in _LB_SCOPES.items()}
_HEALTH_POLICIES = {
    HealthPolicy.ONLY_HEALTHY: _LB.ONLY_HEALTHY,
    HealthPolicy.ALLOW_ALL: _LB.ALLOW_ALL,
}
_HEALTH_POLICY_NAMES: dict[int, HealthPolicy] = {int(v): k for k, v in _HEALTH_POLICIES.items()}


def _ports_to_proto(
    ports: Mapping[int, int], app_protocols: Mapping[int, AppProtocol] | None = None
) -> list[workload_pb2.Port]:
    protocols = app_protocols or {}
    return [
        workload_pb2.Port(
            service_port=sp,
            target_port=tp,
            app_protocol=_APP_PROTOCOLS[protocols.get(sp, AppProtocol.UNKNOWN)],
        )
        for sp, tp in sorted(ports.items())
    ]


def _network_address_to_proto(a: NetworkAddress) -> workload_pb2.NetworkAddress:
    return workload_pb2.NetworkAddress(network=a.network, address=a.address.packed)


def _network_cidr_to_proto(c: NetworkCidr) -> workload_pb2.NetworkAddress:
    return workload_pb2.NetworkAddress(
        network=c.network, address=c.cidr.network_address.packed, length=c.cidr.prefixlen
    )


def gateway_to_proto(g: GatewayAddress) -> workload_pb2.GatewayAddress:
    pb = workload_pb2.GatewayAddress(hbone_mtls_port=g.hbone_mtls_port)
    if isinstance(g.destination, NamespacedHostname):
        pb.hostname.namespace = g.destination.namespace
        pb.hostname.hostname = g.destination.hostname
    else:
        pb.address.CopyFrom(_network_address_to_proto(g.destination))
    return pb


def workload_to_proto(w: Workload) -> workload_pb2.Workload:
    workload_type = _WORKLOAD_TYPES.get(w.workload_type.lower())
    if workload_type is None:
        raise ConversionError(
            f"workload type {w.workload_type!r} is not one of {', '.join(_WORKLOAD_TYPES)}"
        )
    pb = workload_pb2.Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        addresses=[ip.packed for ip in w.addresses],
        hostname=w.hostname,
        network=w.network,
        tunnel_protocol=_TUNNELS[w.tunnel_protocol],
        # Empty means the default, which istiod leaves out.
        trust_domain="" if w.trust_domain == DEFAULT_TRUST_DOMAIN else w.trust_domain,
        service_account=w.service_account,
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=workload_type,
        workload_name=w.workload_name,
        authorization_policies=list(w.authorization_policies),
        status=_STATUSES[w.status],
        cluster_id=w.cluster_id,
        network_mode=_NETWORK_MODES[w.network_mode],
        native_tunnel=w.native_tunnel,
    )
    if w.locality != Locality():
        pb.locality.CopyFrom(
            workload_pb2.Locality(
                region=w.locality.region, zone=w.locality.zone, subzone=w.locality.subzone
            )
        )
    if w.waypoint is not None:
        pb.waypoint.CopyFrom(gateway_to_proto(w.waypoint))
    for key, ports in sorted(w.services.items()):
        pb.services[key].ports.extend(_ports_to_proto(ports))
    if w.capacity != 1:
        # Absent means 1, so only other values are sent (0 included: it needs presence).
        pb.capacity.CopyFrom(wrappers_pb2.UInt32Value(value=w.capacity))
    return pb


def service_to_proto(s: Service) -> workload_pb2.Service:
    pb = workload_pb2.Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        addresses=[_network_address_to_proto(v) for v in s.vips]
        + [_network_cidr_to_proto(c) for c in s.cidr_vips],
        ports=_ports_to_proto(s.ports, s.app_protocols),
        subject_alt_names=list(s.subject_alt_names),
        canonical=s.canonical,
    )
    if s.ip_families is not None:
        pb.ip_families = _IP_FAMILIES[s.ip_families]
    if s.load_balancer is not None:
        lb = s.load_balancer
        pb.load_balancing.CopyFrom(
            workload_pb2.LoadBalancing(
                routing_preference=[_LB_SCOPES[p] for p in lb.routing_preferences],
                mode=_LB_MODES[lb.mode],
                health_policy=_HEALTH_POLICIES[lb.health_policy],
            )
        )
    if s.waypoint is not None:
        pb.waypoint.CopyFrom(gateway_to_proto(s.waypoint))
    return pb


def address_to_proto(obj: Workload | Service) -> workload_pb2.Address:
    if isinstance(obj, Workload):
        return workload_pb2.Address(workload=workload_to_proto(obj))
    return workload_pb2.Address(service=service_to_proto(obj))


def string_match_to_proto(m: StringMatch) -> authorization_pb2.StringMatch:
    if m.kind is StringMatchKind.EXACT:
        return authorization_pb2.StringMatch(exact=m.value)
    if m.kind is StringMatchKind.PREFIX:
        return authorization_pb2.StringMatch(prefix=m.value)
    if m.kind is StringMatchKind.SUFFIX:
        return authorization_pb2.StringMatch(suffix=m.value)
    pb = authorization_pb2.StringMatch()
    pb.presence.SetInParent()
    return pb


def _cidr_to_proto(c: Cidr) -> authorization_pb2.Address:
    return authorization_pb2.Address(address=c.network_address.packed, length=c.prefixlen)


def _sa_to_proto(m: ServiceAccountMatch) -> authorization_pb2.ServiceAccountMatch:
    pb = authorization_pb2.ServiceAccountMatch(namespace=m.namespace)
    # The field is camelCase upstream, which the keyword constructor spells the same way.
    pb.serviceAccount = m.service_account
    return pb


def match_to_proto(m: Match) -> authorization_pb2.Match:
    s, c, sa = string_match_to_proto, _cidr_to_proto, _sa_to_proto
    return authorization_pb2.Match(
        namespaces=[s(x) for x in m.namespaces],
        not_namespaces=[s(x) for x in m.not_namespaces],
        service_accounts=[sa(x) for x in m.service_accounts],
        not_service_accounts=[sa(x) for x in m.not_service_accounts],
        principals=[s(x) for x in m.principals],
        not_principals=[s(x) for x in m.not_principals],
        source_ips=[c(x) for x in m.source_ips],
        not_source_ips=[c(x) for x in m.not_source_ips],
        destination_ips=[c(x) for x in m.destination_ips],
        not_destination_ips=[c(x) for x in m.not_destination_ips],
        destination_ports=list(m.destination_ports),
        not_destination_ports=list(m.not_destination_ports),
    )


def authorization_to_proto(p: Authorization) -> authorization_pb2.Authorization:
    return authorization_pb2.Authorization(
        name=p.name,
        namespace=p.namespace,
        scope=_SCOPES[p.scope],
        action=_ACTIONS[p.action],
        rules=[
            authorization_pb2.Rule(
                clauses=[
                    authorization_pb2.Clause(matches=[match_to_proto(m) for m in clause])
                    for clause in rule
                ]
            )
            for rule in p.rules
        ],
        dry_run=p.dry_run,
    )


# --- workload API: protobuf -> model ----------------------------------------------------------
#
# ztunnel's rule for what a newer or sloppier control plane sends: an enum value this version
# does not know reads as the field's default, and an entry that cannot be read (an address of
# the wrong length, a port out of range, a string match of an unknown kind) is dropped alone, with
# a warning, while the rest of the resource is applied. A whole resource is refused only when
# guessing would change where traffic goes or who may send it: an unknown tunnel protocol, policy
# scope or action, an unreadable waypoint.


def _ip(raw: bytes, what: str) -> IPAddress:
    if len(raw) not in (4, 16):
        raise ConversionError(f"{what} has {len(raw)} bytes (an IP address has 4 or 16)")
    return ipaddress.ip_address(raw)


def _port(value: int, what: str, allow_zero: bool = False) -> int:
    if value > MAX_PORT or (value == 0 and not allow_zero):
        raise ConversionError(f"{what} {value} is not a port (1-{MAX_PORT})")
    return value


def _ports(ports: Iterable[workload_pb2.Port], what: str, notes: list[str]) -> dict[int, int]:
    """service port -> target port. A port listed twice (kube-dns: 53 over UDP and over TCP) is
    one entry, the last one winning, as ztunnel collects them into a map."""
    out: dict[int, int] = {}
    for p in ports:
        try:
            sp = _port(p.service_port, f"{what} service port")
            out[sp] = _port(p.target_port, f"{what} target port", allow_zero=True)
        except ConversionError as e:
            notes.append(f"{e}: port dropped")
    return out


def _app_protocols(ports: Iterable[workload_pb2.Port]) -> dict[int, AppProtocol]:
    """Service port -> application protocol, for the ports that declare one. A value this
    version does not know reads as UNKNOWN (the port still works, its traffic is sniffed):
    a newer control plane must not make its services unusable."""
    out: dict[int, AppProtocol] = {}
    for p in ports:
        protocol = _APP_PROTOCOL_NAMES.get(p.app_protocol, AppProtocol.UNKNOWN)
        if protocol is not AppProtocol.UNKNOWN and 0 < p.service_port <= MAX_PORT:
            out[p.service_port] = protocol
    return out


def enum_from_proto(value: int, names: Mapping[int, _T], what: str) -> _T:
    found = names.get(value)
    if found is None:
        raise ConversionError(f"unsupported {what} {value}")
    return found


def _enum_or_default(value: int, names: Mapping[int, _T], default: _T) -> _T:
    return names.get(value, default)


def _network_address(pb: workload_pb2.NetworkAddress, what: str) -> NetworkAddress:
    """A single address (a `length` equal to the address's size is one address too)."""
    ip = _ip(pb.address, what)
    if pb.HasField("length") and pb.length != ip.max_prefixlen:
        raise ConversionError(f"{what} is a /{pb.length} range, not one address")
    return NetworkAddress(pb.network, ip)


def _vip(pb: workload_pb2.NetworkAddress, what: str) -> NetworkAddress | NetworkCidr:
    ip = _ip(pb.address, what)
    if not pb.HasField("length") or pb.length == ip.max_prefixlen:
        return NetworkAddress(pb.network, ip)
    if pb.length > ip.max_prefixlen:
        raise ConversionError(f"{what} {ip}/{pb.length} has a prefix longer than the address")
    return NetworkCidr(pb.network, ipaddress.ip_network((ip, pb.length), strict=False))


def gateway_from_proto(pb: workload_pb2.GatewayAddress, what: str) -> GatewayAddress:
    kind = pb.WhichOneof("destination")
    destination: NetworkAddress | NamespacedHostname
    if kind == "hostname":
        if not pb.hostname.namespace or not pb.hostname.hostname:
            raise ConversionError(f"{what} hostname needs both a namespace and a hostname")
        destination = NamespacedHostname(pb.hostname.namespace, pb.hostname.hostname)
    elif kind == "address":
        destination = _network_address(pb.address, f"{what} address")
    else:
        raise ConversionError(f"{what} has neither a hostname nor an address")
    port = _port(pb.hbone_mtls_port, f"{what} HBONE port", allow_zero=True) or HBONE_PORT
    return GatewayAddress(destination, port)


def _addresses(raw: Iterable[bytes], notes: list[str]) -> tuple[IPAddress, ...]:
    out = []
    for i, a in enumerate(raw):
        try:
            out.append(_ip(a, f"address {i}"))
        except ConversionError as e:
            notes.append(f"{e}: address dropped")
    return tuple(out)


def workload_from_proto(pb: workload_pb2.Workload, notes: list[str] | None = None) -> Workload:
    """The model of a Workload; what could not be read and was dropped is added to `notes`."""
    notes = [] if notes is None else notes
    if not pb.uid:
        raise ConversionError("workload has no uid")
    if not pb.namespace:
        raise ConversionError("workload has no namespace")
    if pb.tunnel_protocol == workload_pb2.LEGACY_ISTIO_MTLS:
        raise ConversionError("tunnel protocol LEGACY_ISTIO_MTLS is not supported")
    services = {}
    for key, port_list in pb.services.items():
        namespace, sep, hostname = key.partition("/")
        if not sep or not namespace or not hostname:
            notes.append(f"service key {key!r} is not 'namespace/hostname': dropped")
            continue
        services[key] = _ports(port_list.ports, f"service {key}", notes)
    return Workload(
        uid=pb.uid,
        name=pb.name,
        namespace=pb.namespace,
        addresses=_addresses(pb.addresses, notes),
        service_account=pb.service_account or DEFAULT_SERVICE_ACCOUNT,
        trust_domain=pb.trust_domain or DEFAULT_TRUST_DOMAIN,
        node=pb.node,
        network=pb.network,
        hostname=pb.hostname,
        tunnel_protocol=enum_from_proto(pb.tunnel_protocol, _TUNNEL_NAMES, "tunnel protocol"),
        canonical_name=pb.canonical_name,
        canonical_revision=pb.canonical_revision,
        workload_name=pb.workload_name,
        workload_type=_enum_or_default(pb.workload_type, _WORKLOAD_TYPE_NAMES, "deployment"),
        waypoint=gateway_from_proto(pb.waypoint, "waypoint") if pb.HasField("waypoint") else None,
        services=services,
        authorization_policies=tuple(pb.authorization_policies),
        status=_enum_or_default(pb.status, _STATUS_NAMES, WorkloadStatus.HEALTHY),
        cluster_id=pb.cluster_id or DEFAULT_CLUSTER_ID,
        capacity=pb.capacity.value if pb.HasField("capacity") else 1,
        network_mode=_enum_or_default(pb.network_mode, _NETWORK_MODE_NAMES, NetworkMode.STANDARD),
        locality=Locality(pb.locality.region, pb.locality.zone, pb.locality.subzone),
        native_tunnel=pb.native_tunnel,
    )


def _load_balancer(pb: workload_pb2.LoadBalancing) -> LoadBalancer:
    return LoadBalancer(
        mode=_enum_or_default(pb.mode, _LB_MODE_NAMES, LoadBalancerMode.STANDARD),
        # A scope this version does not know is left out: the others still order endpoints.
        routing_preferences=tuple(
            _LB_SCOPE_NAMES[s] for s in pb.routing_preference if s in _LB_SCOPE_NAMES
        ),
        health_policy=_enum_or_default(
            pb.health_policy, _HEALTH_POLICY_NAMES, HealthPolicy.ONLY_HEALTHY
        ),
    )


def service_from_proto(pb: workload_pb2.Service, notes: list[str] | None = None) -> Service:
    """The model of a Service; what could not be read and was dropped is added to `notes`."""
    notes = [] if notes is None else notes
    if not pb.namespace or not pb.hostname:
        raise ConversionError("service needs a namespace and a hostname")
    vips: list[NetworkAddress] = []
    cidrs: list[NetworkCidr] = []
    for i, a in enumerate(pb.addresses):
        try:
            vip = _vip(a, f"VIP {i}")
        except ConversionError as e:
            notes.append(f"{e}: VIP dropped")
            continue
        if isinstance(vip, NetworkAddress):
            vips.append(vip)
        else:
            cidrs.append(vip)
    return Service(
        name=pb.name,
        namespace=pb.namespace,
        hostname=pb.hostname,
        vips=tuple(vips),
        ports=_ports(pb.ports, "service", notes),
        subject_alt_names=tuple(pb.subject_alt_names),
        waypoint=gateway_from_proto(pb.waypoint, "waypoint") if pb.HasField("waypoint") else None,
        app_protocols=_app_protocols(pb.ports),
        cidr_vips=tuple(cidrs),
        ip_families=_IP_FAMILY_NAMES.get(pb.ip_families),
        load_balancer=_load_balancer(pb.load_balancing) if pb.HasField("load_balancing") else None,
        canonical=pb.canonical,
    )


def address_from_proto(
    pb: workload_pb2.Address, notes: list[str] | None = None
) -> Workload | Service:
    kind = pb.WhichOneof("type")
    if kind == "workload":
        return workload_from_proto(pb.workload, notes)
    if kind == "service":
        return service_from_proto(pb.service, notes)
    raise ConversionError("address has neither a workload nor a service")


def string_match_from_proto(pb: authorization_pb2.StringMatch) -> StringMatch:
    kind = pb.WhichOneof("match_type")
    if kind == "exact":
        return StringMatch(StringMatchKind.EXACT, pb.exact)
    if kind == "prefix":
        return StringMatch(StringMatchKind.PREFIX, pb.prefix)
    if kind == "suffix":
        return StringMatch(StringMatchKind.SUFFIX, pb.suffix)
    if kind == "presence":
        return StringMatch(StringMatchKind.PRESENCE)
    raise ConversionError("string match has no exact, prefix, suffix or presence")


def _cidr(pb: authorization_pb2.Address) -> Cidr:
    ip = _ip(pb.address, "CIDR address")
    if pb.length > ip.max_prefixlen:
        raise ConversionError(f"CIDR {ip}/{pb.length} has a prefix longer than {ip.max_prefixlen}")
    return ipaddress.ip_network((ip, pb.length), strict=False)


def _sa_match(pb: authorization_pb2.ServiceAccountMatch) -> ServiceAccountMatch:
    return ServiceAccountMatch(pb.namespace, pb.serviceAccount)


def _destination_port(value: int) -> int:
    return _port(value, "destination port", allow_zero=True)


_NEVER = Match()  # no attribute set: never matches


def match_from_proto(
    pb: authorization_pb2.Match, action: Action | None = None, notes: list[str] | None = None
) -> Match:
    """The model of a Match. Without `action`, an unreadable entry refuses the match (and so its
    resource). With the policy's `action`, it is assumed to match in the direction that denies:
    in a DENY it is dropped (a positive list left empty no longer narrows the match, a negative
    list excludes less), in an ALLOW it never matches as a positive entry and always as a
    negative one (so that match no longer allows anything). Never lose a DENY, never widen an
    ALLOW."""
    never = False

    def read(values: Iterable[_P], convert: Callable[[_P], _T], positive: bool) -> tuple[_T, ...]:
        nonlocal never
        out = []
        dropped = 0
        for value in values:
            try:
                out.append(convert(value))
            except ConversionError as e:
                if action is None:
                    raise
                dropped += 1
                if notes is not None:
                    notes.append(f"{e}: entry dropped")
        if dropped and action is not Action.DENY and (not positive or not out):
            never = True
        return tuple(out)

    s, c, sa, port = string_match_from_proto, _cidr, _sa_match, _destination_port
    match = Match(
        namespaces=read(pb.namespaces, s, True),
        not_namespaces=read(pb.not_namespaces, s, False),
        service_accounts=read(pb.service_accounts, sa, True),
        not_service_accounts=read(pb.not_service_accounts, sa, False),
        principals=read(pb.principals, s, True),
        not_principals=read(pb.not_principals, s, False),
        source_ips=read(pb.source_ips, c, True),
        not_source_ips=read(pb.not_source_ips, c, False),
        destination_ips=read(pb.destination_ips, c, True),
        not_destination_ips=read(pb.not_destination_ips, c, False),
        destination_ports=read(pb.destination_ports, port, True),
        not_destination_ports=read(pb.not_destination_ports, port, False),
    )
    return _NEVER if never else match


def authorization_from_proto(
    pb: authorization_pb2.Authorization, notes: list[str] | None = None
) -> Authorization:
    """The model of an Authorization; unreadable match entries are handled by the policy's
    action (`match_from_proto`) and reported in `notes`."""
    if not pb.name or not pb.namespace:
        raise ConversionError("authorization policy needs a name and a namespace")
    action = enum_from_proto(pb.action, _ACTION_NAMES, "policy action")
    return Authorization(
        name=pb.name,
        namespace=pb.namespace,
        scope=enum_from_proto(pb.scope, _SCOPE_NAMES, "policy scope"),
        action=action,
        rules=tuple(
            tuple(
                tuple(match_from_proto(m, action, notes) for m in clause.matches)
                for clause in rule.clauses
            )
            for rule in pb.rules
        ),
        dry_run=pb.dry_run,
    )


# --- xDS messages: server side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedResource:
    """A resource encoded once, with its content version (stable across restarts)."""

    name: str
    version: str
    resource: discovery_pb2.Resource


def resource_version(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


def encode_message(type_url: str, name: str, message: Message) -> EncodedResource:
    """Encode a protobuf message as a Delta xDS `Resource` of `type_url` named `name`, its
    version a hash of the deterministic encoding.

    Raises `ConversionError` if the message cannot be encoded.
    """
    try:
        payload = message.SerializeToString(deterministic=True)
    except ValueError as e:  # e.g. an integer out of its field's range
        raise ConversionError(f"cannot encode: {e}") from None
    version = resource_version(payload)
    resource = discovery_pb2.Resource(name=name, version=version)
    resource.resource.type_url = type_url
    resource.resource.value = payload
    return EncodedResource(name, version, resource)


def encode_resource(
    type_url: str, name: str, obj: Workload | Service | Authorization
) -> EncodedResource:
    """Encode a model object as a Delta xDS `Resource` of `type_url` named `name`.

    Raises `ConversionError` if the object does not fit the workload API.
    """
    message: workload_pb2.Address | authorization_pb2.Authorization
    try:
        if type_url == ADDRESS_TYPE and isinstance(obj, Workload | Service):
            message = address_to_proto(obj)
        elif type_url == AUTHORIZATION_TYPE and isinstance(obj, Authorization):
            message = authorization_to_proto(obj)
        else:
            raise ConversionError(f"a {type(obj).__name__} is not a {type_url} resource")
    except ValueError as e:  # e.g. an integer out of its field's range
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"cannot encode: {e}") from None
    return encode_message(type_url, name, message)


def encode_response(delta: Delta, resources: Mapping[str, EncodedResource]) -> bytes:
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=delta.system_version,
        type_url=delta.type_url,
        nonce=delta.nonce,
        removed_resources=list(delta.removed),
    )
    response.resources.extend(resources[name].resource for name in delta.upserts)
    return response.SerializeToString()


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The `node` of a request: id and string metadata."""

    id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


def decode_request(raw: bytes) -> tuple[Request, NodeInfo | None]:
    """A DeltaDiscoveryRequest as a protocol `Request`, plus its node if it carries one."""
    try:
        pb = discovery_pb2.DeltaDiscoveryRequest.FromString(raw)
    except DecodeError as e:
        raise XdsDecodeError(f"not a DeltaDiscoveryRequest: {e}") from None
    node = None
    if pb.HasField("node"):
        metadata = {
            k: v.string_value
            for k, v in pb.node.metadata.fields.items()
            if v.WhichOneof("kind") == "string_value"
        }
        node = NodeInfo(pb.node.id, metadata)
    request = Request(
        type_url=pb.type_url,
        subscribe=tuple(pb.resource_names_subscribe),
        unsubscribe=tuple(pb.resource_names_unsubscribe),
        initial_versions=dict(pb.initial_resource_versions),
        response_nonce=pb.response_nonce,
        error=pb.error_detail.message if pb.HasField("error_detail") else None,
    )
    return request, node


# --- xDS messages: client side ----------------------------------------------------------------


def encode_request(request: Request, node: NodeInfo | None = None) -> bytes:
    pb = discovery_pb2.DeltaDiscoveryRequest(
        type_url=request.type_url,
        resource_names_subscribe=list(request.subscribe),
        resource_names_unsubscribe=list(request.unsubscribe),
        initial_resource_versions=dict(request.initial_versions),
        response_nonce=request.response_nonce,
    )
    if node is not None:
        pb.node.CopyFrom(
            envoy_base_pb2.Node(
                id=node.id,
                metadata=struct_pb2.Struct(
                    fields={k: struct_pb2.Value(string_value=v) for k, v in node.metadata.items()}
                ),
            )
        )
    if request.error is not None:
        # The code is INVALID_ARGUMENT (3), as Envoy sends for a rejected config.
        pb.error_detail.CopyFrom(rpc_status_pb2.Status(code=3, message=request.error))
    return pb.SerializeToString()


@dataclass
class DecodedResponse:
    """A DeltaDiscoveryResponse as model objects, with what was accepted and rejected."""

    type_url: str
    nonce: str
    system_version: str
    size: int
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    policies: list[Authorization] = field(default_factory=list)
    # resources of the other types a client subscribed to (see `PayloadDecoder`)
    others: list[object] = field(default_factory=list)
    removed: tuple[str, ...] = ()
    # resource name -> version, for the resources that converted
    accepted: dict[str, str] = field(default_factory=dict)
    # resource name -> reason, for those that did not
    rejected: dict[str, str] = field(default_factory=dict)


# Decodes one resource payload of a type into its model object and that object's key, which
# must equal the resource name. Raises ConversionError (or protobuf's DecodeError).
PayloadDecoder = Callable[[bytes], tuple[object, str]]


def _report(key: str, notes: list[str]) -> None:
    # Parts of a resource were dropped and the rest applied, as ztunnel does; the control plane
    # is not told (the resource is ACKed), so say it here.
    for note in notes:
        log.warning("%s: %s", key, note)


def _decode_address(payload: bytes) -> tuple[object, str]:
    notes: list[str] = []
    obj = address_from_proto(workload_pb2.Address.FromString(payload), notes)
    key = obj.uid if isinstance(obj, Workload) else obj.key
    _report(key, notes)
    return obj, key


def _decode_authorization(payload: bytes) -> tuple[object, str]:
    notes: list[str] = []
    obj = authorization_from_proto(authorization_pb2.Authorization.FromString(payload), notes)
    _report(obj.key, notes)
    return obj, obj.key


WORKLOAD_DECODERS: Mapping[str, PayloadDecoder] = {
    ADDRESS_TYPE: _decode_address,
    AUTHORIZATION_TYPE: _decode_authorization,
}


def _decode_payload(decoder: PayloadDecoder, name: str, payload: bytes) -> object:
    try:
        obj, key = decoder(payload)
    except DecodeError as e:
        raise ConversionError(f"cannot decode the payload: {e}") from None
    if key != name:
        raise ConversionError(f"resource name does not match its key {key!r}")
    return obj


def decode_response(
    raw: bytes, decoders: Mapping[str, PayloadDecoder] = WORKLOAD_DECODERS
) -> DecodedResponse:
    """Parse a DeltaDiscoveryResponse and convert each resource with its type's decoder; a
    resource that does not convert is listed in `rejected` with its reason and the others are
    still returned. A type without a decoder converts nothing (the caller refuses it).

    Raises `XdsDecodeError` if the message itself does not parse.
    """
    try:
        pb = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
    except DecodeError as e:
        raise XdsDecodeError(f"not a DeltaDiscoveryResponse: {e}") from None
    out = DecodedResponse(
        type_url=pb.type_url,
        nonce=pb.nonce,
        system_version=pb.system_version_info,
        size=len(raw),
        removed=tuple(pb.removed_resources),
    )
    decoder = decoders.get(pb.type_url)
    if decoder is None:
        # The caller sees the unknown type and refuses the whole response.
        return out
    for r in pb.resources:
        name = r.name
        if name in out.accepted or name in out.rejected:
            out.rejected[name] = "listed twice in one response"
            continue
        if not r.HasField("resource"):
            out.rejected[name] = "no resource payload"
            continue
        if r.resource.type_url and r.resource.type_url != pb.type_url:
            out.rejected[name] = f"payload is a {r.resource.type_url!r}, not a {pb.type_url!r}"
            continue
        try:
            obj = _decode_payload(decoder, name, r.resource.value)
        except ConversionError as e:
            out.rejected[name] = str(e)
            continue
        if isinstance(obj, Workload):
            out.workloads.append(obj)
        elif isinstance(obj, Service):
            out.services.append(obj)
        elif isinstance(obj, Authorization):
            out.policies.append(obj)
        else:
            out.others.append(obj)
        out.accepted[name] = r.version
    return out
