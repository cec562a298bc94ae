"""Kubernetes Services and Istio ServiceEntries to workload-API `Service`s.

As istiod builds them (`services.go`): a Service becomes `<name>.<ns>.svc.<domain>` with its
cluster IPs as VIPs on the default network, every port (UDP ones too: ztunnel keys ports by
number, so kube-dns's 53 over UDP and TCP is one port) as `{port: targetPort}` (0 for a named
targetPort: each workload resolves the name against its own container ports), `ip_families`
from `spec.ipFamilies`, and load balancing from `spec.trafficDistribution: PreferClose` (or the
`networking.istio.io/traffic-distribution` annotation), `internalTrafficPolicy: Local` (this
node's endpoints only) and `publishNotReadyAddresses` (unhealthy endpoints too). A ServiceEntry
becomes one Service per host, its `addresses` as VIPs (or, without any, the addresses istiod's
autoallocation gives the host: `autoallocate.py`); a ServiceEntry with an address range (more
than one IP) gets no service at all, as with istiod.

Each port's application protocol is read as istiod reads it (`kube.ConvertProtocol` and
`protocol.Parse`): a Service port's `appProtocol`, else the prefix of its name before the first
`-` (`http-web` is HTTP; `grpc-web...` is gRPC-Web), case-insensitively; the Kubernetes names
`kubernetes.io/h2c` (HTTP/2), `kubernetes.io/ws` (HTTP) and `kubernetes.io/wss` (HTTPS) in
`appProtocol`; anything else unknown, except the well-known ports 25, 53, 3306 and 27017, which
are TCP. A ServiceEntry port's `protocol` is parsed the same way. istiod sends HTTP as HTTP11,
HTTP2 as HTTP2 and GRPC as GRPC, and everything else as UNKNOWN; we also send TCP for TCP, Mongo,
Redis and MySQL ports and TLS for TLS and HTTPS ports (values 4 and 5 of the enum, which an
Istio ztunnel ignores), so a waypoint proxies those ports at L4 instead of sniffing them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.model import IPAddress, NetworkAddress, Service
from ztunnel_py.model.workload import (
    AppProtocol,
    HealthPolicy,
    IpFamilies,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
)

TRAFFIC_DISTRIBUTION = "networking.istio.io/traffic-distribution"
PREFER_CLOSE = "PreferClose"
# Close endpoints first, spilling over to farther ones when none is healthy.
PREFER_CLOSE_LOAD_BALANCER = LoadBalancer(
    LoadBalancerMode.FAILOVER,
    (
        LoadBalancerScope.NETWORK,
        LoadBalancerScope.REGION,
        LoadBalancerScope.ZONE,
        LoadBalancerScope.SUBZONE,
    ),
)
NODE_LOCAL_LOAD_BALANCER = LoadBalancer(LoadBalancerMode.STRICT, (LoadBalancerScope.NODE,))

# istio's protocol names (lower case) -> the workload API's application protocol
_PROTOCOLS = {
    "http": AppProtocol.HTTP11,
    "http2": AppProtocol.HTTP2,
    "grpc": AppProtocol.GRPC,
    "grpc-web": AppProtocol.UNKNOWN,
    "http_proxy": AppProtocol.UNKNOWN,
    "tcp": AppProtocol.TCP,
    "mongo": AppProtocol.TCP,
    "redis": AppProtocol.TCP,
    "mysql": AppProtocol.TCP,
    "tls": AppProtocol.TLS,
    "https": AppProtocol.TLS,
}
_KUBERNETES_APP_PROTOCOLS = {
    "kubernetes.io/h2c": AppProtocol.HTTP2,
    "kubernetes.io/ws": AppProtocol.HTTP11,
    "kubernetes.io/wss": AppProtocol.TLS,
}
# ports that are TCP when their name says nothing: SMTP, DNS, MySQL, MongoDB
_WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})


def protocol_name(name: str) -> AppProtocol | None:
    """istio's `protocol.Parse`: a protocol name, case-insensitively; None if unsupported."""
    return _PROTOCOLS.get(name.lower())


def kubernetes_port_protocol(port: Mapping[str, Any]) -> AppProtocol:
    """The application protocol of a Service port, as istiod's `ConvertProtocol` reads it."""
    if port.get("protocol", "TCP") != "TCP":
        return AppProtocol.UNKNOWN  # UDP or SCTP: never HTTP
    app_protocol = port.get("appProtocol")
    if app_protocol is not None:
        known = _KUBERNETES_APP_PROTOCOLS.get(app_protocol)
        if known is not None:
            return known
        name = app_protocol
    else:
        name = port.get("name") or ""
    if name[:8].lower() == "grpc-web":
        return AppProtocol.UNKNOWN
    parsed = protocol_name(name.partition("-")[0])
    if parsed is None:
        return AppProtocol.TCP if port["port"] in _WELL_KNOWN_TCP_PORTS else AppProtocol.UNKNOWN
    return parsed


def _known(protocols: Mapping[int, AppProtocol]) -> dict[int, AppProtocol]:
    return {p: v for p, v in protocols.items() if v is not AppProtocol.UNKNOWN}


def service_hostname(name: str, namespace: str, domain_suffix: str) -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def service_ports(service: Resource) -> list[Mapping[str, Any]]:
    return list(service.spec.get("ports") or ())


def cluster_ips(service: Resource) -> list[str]:
    spec = service.spec
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [ip for ip in ips if ip not in ("", "None")]


def _prefer_close(annotations: Mapping[str, str]) -> bool:
    return annotations.get(TRAFFIC_DISTRIBUTION, "").lower() == PREFER_CLOSE.lower()


def _kubernetes_load_balancer(service: Resource) -> LoadBalancer | None:
    spec = service.spec
    prefer_close = _prefer_close(service.annotations)
    if spec.get("trafficDistribution") is not None:
        prefer_close = spec["trafficDistribution"] == PREFER_CLOSE
    lb = PREFER_CLOSE_LOAD_BALANCER if prefer_close else None
    if spec.get("internalTrafficPolicy") == "Local":
        lb = NODE_LOCAL_LOAD_BALANCER
    if spec.get("publishNotReadyAddresses"):
        lb = dataclasses.replace(lb or LoadBalancer(), health_policy=HealthPolicy.ALLOW_ALL)
    return lb


def _ip_families(service: Resource) -> IpFamilies | None:
    families = service.spec.get("ipFamilies") or []
    if len(families) == 2:
        return IpFamilies.DUAL
    if len(families) == 1:
        return IpFamilies.IPV4 if families[0] == "IPv4" else IpFamilies.IPV6
    return None


def kubernetes_service(service: Resource, domain_suffix: str) -> Service | None:
    """None for ExternalName services (no VIP, no endpoints: DNS handles them)."""
    spec = service.spec
    if spec.get("type") == "ExternalName":
        return None
    ports: dict[int, int] = {}
    protocols: dict[int, AppProtocol] = {}
    for port in service_ports(service):
        target = port.get("targetPort", port["port"])
        ports[port["port"]] = target if isinstance(target, int) else 0
        protocols[port["port"]] = kubernetes_port_protocol(port)
    return Service(
        name=service.name,
        namespace=service.namespace,
        hostname=service_hostname(service.name, service.namespace, domain_suffix),
        vips=tuple(NetworkAddress("", ipaddress.ip_address(ip)) for ip in cluster_ips(service)),
        ports=ports,
        app_protocols=_known(protocols),
        ip_families=_ip_families(service),
        load_balancer=_kubernetes_load_balancer(service),
    )


def service_entry_ports(entry: Resource) -> list[Mapping[str, Any]]:
    return list(entry.spec.get("ports") or ())


def service_entry_services(
    entry: Resource, allocated: Mapping[str, tuple[IPAddress, ...]] | None = None
) -> list[Service]:
    """One Service per host of a ServiceEntry: its `addresses` as VIPs, else the host's
    automatically allocated ones (`allocated`, by host; `autoallocate.py`)."""
    vips: list[NetworkAddress] = []
    for address in entry.spec.get("addresses") or ():
        network = ipaddress.ip_network(address, strict=False)
        if network.num_addresses == 1:
            vips.append(NetworkAddress("", network.network_address))
    allocated = allocated or {}
    entry_ports = service_entry_ports(entry)
    ports = {p["number"]: p.get("targetPort", p["number"]) for p in entry_ports}
    protocols = _known(
        {
            p["number"]: protocol_name(p.get("protocol", "")) or AppProtocol.UNKNOWN
            for p in entry_ports
        }
    )
    sans = tuple(entry.spec.get("subjectAltNames") or ())
    lb = PREFER_CLOSE_LOAD_BALANCER if _prefer_close(entry.annotations) else None
    return [
        Service(
            name=entry.name,
            namespace=entry.namespace,
            hostname=host,
            vips=tuple(vips) or tuple(NetworkAddress("", ip) for ip in allocated.get(host, ())),
            ports=dict(ports),
            subject_alt_names=sans,
            app_protocols=dict(protocols),
            load_balancer=lb,
        )
        for host in entry.spec["hosts"]
    ]


def service_entry_cidr_addresses(entry: Resource) -> list[str]:
    """Addresses of a ServiceEntry that are ranges (istiod then sends no service for it)."""
    return [
        a
        for a in entry.spec.get("addresses") or ()
        if ipaddress.ip_network(a, strict=False).num_addresses > 1
    ]
