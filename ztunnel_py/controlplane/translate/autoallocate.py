"""VIPs for ServiceEntry hosts that declare no `addresses`, as istiod's IP autoallocate
controller assigns them (`pilot/pkg/serviceregistry/serviceentry/ipallocate`).

Each eligible host gets one IPv4 address from 240.240.0.0/16 (class E, never routed) and one
IPv6 address from 2001:2::/48 (RFC 5180's benchmarking range), handed out in order from the
first address after the prefix's own, with a cursor that keeps moving forward (a freed address
is not reused until the range wraps), so the DNS proxy can answer the host and outbound
connections to it are captured and attributed to the ServiceEntry.

Eligible, as istiod's `ShouldV2AutoAllocateIP`: a ServiceEntry without `spec.addresses`, whose
resolution is not NONE and which does not opt out with the label
`networking.istio.io/enable-autoallocate-ip: "false"`; of its hosts, the non-wildcard ones (all
of them with resolution DYNAMIC_DNS).

istiod writes what it assigned into the ServiceEntry's `status.addresses` (`{host, value}`) and
keeps it there; here the previous translation's assignments are kept instead (and a
`status.addresses` written by an istiod is honoured), so an address stays with its host while
both exist. Conflicts go as in istiod: an address already used by an older ServiceEntry (by
creation time), or declared in any ServiceEntry's `spec.addresses`, is reassigned.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.model import IPAddress

IPV4_PREFIX = ipaddress.ip_network("240.240.0.0/16")
IPV6_PREFIX = ipaddress.ip_network("2001:2::/48")
OPT_OUT_LABEL = "networking.istio.io/enable-autoallocate-ip"

# (namespace, ServiceEntry name, host)
HostKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Allocation:
    """The addresses assigned so far and where each range's cursor stands."""

    addresses: Mapping[HostKey, tuple[IPAddress, ...]] = field(default_factory=dict)
    next_v4: int = int(IPV4_PREFIX.network_address) + 1
    next_v6: int = int(IPV6_PREFIX.network_address) + 1


def eligible_hosts(entry: Resource) -> list[str]:
    """The hosts of `entry` that get addresses allocated (none if it is not eligible)."""
    spec = entry.spec
    resolution = spec.get("resolution", "NONE")
    if spec.get("addresses") or resolution == "NONE":
        return []
    if entry.labels.get(OPT_OUT_LABEL, "").lower() == "false":
        return []
    hosts = [h for h in spec["hosts"] if resolution == "DYNAMIC_DNS" or not h.startswith("*")]
    return list(dict.fromkeys(hosts))


def _status_addresses(entry: Resource) -> dict[str, list[IPAddress]]:
    out: dict[str, list[IPAddress]] = {}
    for item in entry.status.get("addresses") or ():
        if not isinstance(item, Mapping):
            continue
        try:
            ip = ipaddress.ip_address(str(item.get("value", "")))
        except ValueError:
            continue
        out.setdefault(str(item.get("host", "")), []).append(ip)
    return out


class _Range:
    def __init__(self, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, cursor: int) -> None:
        self.prefix = prefix
        self.first = int(prefix.network_address) + 1
        self.last = int(prefix.broadcast_address)
        self.cursor = cursor if self.first <= cursor <= self.last else self.first
        self.used: set[int] = set()

    def take(self) -> IPAddress | None:
        """The next free address at or after the cursor (wrapping once); None if exhausted."""
        size = self.last - self.first + 1
        for step in range(min(size, len(self.used) + 1)):
            candidate = self.first + (self.cursor - self.first + step) % size
            if candidate not in self.used:
                self.used.add(candidate)
                self.cursor = candidate + 1 if candidate < self.last else self.first
                return ipaddress.ip_address(candidate)
        return None


def allocate(entries: Iterable[Resource], previous: Allocation) -> Allocation:
    """Addresses for every eligible host of `entries` (in creation order)."""
    entries = list(entries)
    v4 = _Range(IPV4_PREFIX, previous.next_v4)
    v6 = _Range(IPV6_PREFIX, previous.next_v6)
    ranges = {4: v4, 6: v6}
    # Declared addresses are never handed out (istiod's checkInSpecAddresses).
    for entry in entries:
        for text in entry.spec.get("addresses") or ():
            network = ipaddress.ip_network(text, strict=False)
            if network.num_addresses == 1:
                ranges[network.version].used.add(int(network.network_address))
    out: dict[HostKey, tuple[IPAddress, ...]] = {}
    pending: list[HostKey] = []
    for entry in entries:
        written = _status_addresses(entry)
        for host in eligible_hosts(entry):
            key = (entry.namespace, entry.name, host)
            kept = list(previous.addresses.get(key, ())) or written.get(host, [])
            mine: list[IPAddress] = []
            for ip in kept:
                r = ranges[ip.version]
                if ip in r.prefix and int(ip) not in r.used:
                    r.used.add(int(ip))
                    mine.append(ip)
            out[key] = tuple(mine)
            if {ip.version for ip in mine} != {4, 6}:
                pending.append(key)
    for key in pending:
        have = {ip.version for ip in out[key]}
        fresh = [r.take() for version, r in ranges.items() if version not in have]
        out[key] = tuple(sorted((*out[key], *(ip for ip in fresh if ip)), key=lambda a: a.version))
    return Allocation(out, v4.cursor, v6.cursor)
