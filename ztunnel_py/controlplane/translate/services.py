"""Kubernetes Services and Istio ServiceEntries to workload-API `Service`s.

A Service becomes `<name>.<ns>.svc.<domain>` with its cluster IPs as VIPs on the default
network and `{port: targetPort}` (0 for a named targetPort: each workload resolves the name
against its own container ports). A ServiceEntry becomes one Service per host, its single-IP
`addresses` as VIPs. Only TCP ports are carried: ztunnel proxies TCP only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.model import NetworkAddress, Service

# Service annotations listing the identities a service's endpoints run as (Istio's alpha API).
KUBERNETES_SERVICE_ACCOUNTS = "alpha.istio.io/kubernetes-serviceaccounts"
CANONICAL_SERVICE_ACCOUNTS = "alpha.istio.io/canonical-serviceaccounts"

_NOT_TCP_SERVICE_ENTRY = frozenset({"UDP"})


def service_hostname(name: str, namespace: str, domain_suffix: str) -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def tcp_ports(service: Resource) -> list[Mapping[str, Any]]:
    """The Service's ports that ztunnel serves (TCP, the default protocol)."""
    return [p for p in service.spec.get("ports") or () if p.get("protocol", "TCP") == "TCP"]


def cluster_ips(service: Resource) -> list[str]:
    spec = service.spec
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [ip for ip in ips if ip not in ("", "None")]


def kubernetes_service(service: Resource, trust_domain: str, domain_suffix: str) -> Service | None:
    """None for ExternalName services (no VIP, no endpoints: DNS handles them)."""
    spec = service.spec
    if spec.get("type") == "ExternalName":
        return None
    ports: dict[int, int] = {}
    for port in tcp_ports(service):
        target = port.get("targetPort", port["port"])
        ports[port["port"]] = target if isinstance(target, int) else 0
    return Service(
        name=service.name,
        namespace=service.namespace,
        hostname=service_hostname(service.name, service.namespace, domain_suffix),
        vips=tuple(NetworkAddress("", ipaddress.ip_address(ip)) for ip in cluster_ips(service)),
        ports=ports,
        subject_alt_names=_service_sans(service, trust_domain),
    )


def _service_sans(service: Resource, trust_domain: str) -> tuple[str, ...]:
    sans: list[str] = []
    accounts = service.annotations.get(KUBERNETES_SERVICE_ACCOUNTS, "")
    for account in filter(None, (a.strip() for a in accounts.split(","))):
        sans.append(f"spiffe://{trust_domain}/ns/{service.namespace}/sa/{account}")
    canonical = service.annotations.get(CANONICAL_SERVICE_ACCOUNTS, "")
    sans.extend(filter(None, (a.strip() for a in canonical.split(","))))
    return tuple(sans)


def service_entry_ports(entry: Resource) -> list[Mapping[str, Any]]:
    return [
        p
        for p in entry.spec.get("ports") or ()
        if p.get("protocol", "TCP").upper() not in _NOT_TCP_SERVICE_ENTRY
    ]


def service_entry_services(entry: Resource) -> list[Service]:
    """One Service per host of a ServiceEntry."""
    vips: list[NetworkAddress] = []
    for address in entry.spec.get("addresses") or ():
        network = ipaddress.ip_network(address, strict=False)
        if network.num_addresses == 1:
            vips.append(NetworkAddress("", network.network_address))
    ports = {p["number"]: p.get("targetPort", p["number"]) for p in service_entry_ports(entry)}
    sans = tuple(entry.spec.get("subjectAltNames") or ())
    return [
        Service(
            name=entry.name,
            namespace=entry.namespace,
            hostname=host,
            vips=tuple(vips),
            ports=dict(ports),
            subject_alt_names=sans,
        )
        for host in entry.spec["hosts"]
    ]


def service_entry_cidr_addresses(entry: Resource) -> list[str]:
    """Addresses of a ServiceEntry that are ranges, which a Service VIP cannot carry."""
    return [
        a
        for a in entry.spec.get("addresses") or ()
        if ipaddress.ip_network(a, strict=False).num_addresses > 1
    ]
