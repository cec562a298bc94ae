"""Per-pod capture settings and counters, and their encoding into the BPF maps' layout.

Pure Python: the ctypes structures here mirror `bpf/redirect.h` byte for byte (the loader checks
their sizes against the compiled maps), so settings are validated and encoded without bcc.

Probe exemption: like Istio, the node SNATs kubelet's health probes to a link-local source,
169.254.7.127 (IPv6: fd16:9254:7127:1337:ffff:ffff:ffff:ffff). Inbound TCP from that source
is never captured and neither is the pod's TCP towards it (its replies and any connection it
opens there), so probes reach the app directly and keep working while the agent is down.
Either address can be changed or switched off (None) per pod.

Excluded ports: inbound TCP to an excluded destination port reaches the app uncaptured;
outbound connections to an excluded destination port leave the pod uncaptured. The agent's own
ports (15001, 15006, 15008) cannot be excluded inbound. Ports are stored as at most 16
contiguous ranges per direction.
"""

from __future__ import annotations

import ctypes
import ipaddress
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ztunnel_py.model.address import MAX_PORT, IPAddress
from ztunnel_py.model.ports import CAPTURE_PORTS

MAX_ADDRS = 4
MAX_PORT_RANGES = 16
PROBE_SOURCE_V4 = "169.254.7.127"
PROBE_SOURCE_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"


class RedirectError(Exception):
    """Capture could not be set up, changed or removed; the message says why."""


class PortRange(ctypes.Structure):
    _fields_ = (("lo", ctypes.c_uint16), ("hi", ctypes.c_uint16))


class Ip6(ctypes.Structure):
    _fields_ = (("w", ctypes.c_uint32 * 4),)


class AddrKey(ctypes.Structure):
    """`struct zt_addr`: the zt_pods key, an IPv6 address or an IPv4-mapped one."""

    _fields_ = (("a", ctypes.c_uint32 * 4),)


class PodConfigStruct(ctypes.Structure):
    """`struct zt_pod_config`; addresses hold network-order bytes, ports host order."""

    _fields_ = (
        ("pod_id", ctypes.c_uint64),
        ("n_ip4", ctypes.c_uint32),
        ("n_ip6", ctypes.c_uint32),
        ("ip4", ctypes.c_uint32 * MAX_ADDRS),
        ("ip6", Ip6 * MAX_ADDRS),
        ("probe_ip4", ctypes.c_uint32),
        ("probe_ip6", Ip6),
        ("n_in_excluded", ctypes.c_uint32),
        ("n_out_excluded", ctypes.c_uint32),
        ("in_excluded", PortRange * MAX_PORT_RANGES),
        ("out_excluded", PortRange * MAX_PORT_RANGES),
        ("saved_accept_local", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class ListenerKey(ctypes.Structure):
    """`struct zt_listener_key`: one of the agent's listeners in a pod's netns."""

    _fields_ = (("pod_id", ctypes.c_uint64), ("port", ctypes.c_uint32), ("pad", ctypes.c_uint32))


class PodCountersStruct(ctypes.Structure):
    """`struct zt_pod_counters`."""

    _fields_ = (
        ("inbound", ctypes.c_uint64),
        ("outbound", ctypes.c_uint64),
        ("assigns", ctypes.c_uint64),
        ("drops", ctypes.c_uint64),
        ("exempt", ctypes.c_uint64),
        ("spoofed", ctypes.c_uint64),
    )


@dataclass(frozen=True, slots=True)
class PodCounters:
    """What the programs counted for one pod since it was first enrolled."""

    inbound: int = 0  # packets to the pod assigned to the agent's 15006/15008 listeners
    outbound: int = 0  # packets leaving the pod hairpinned into the agent
    assigns: int = 0  # connections handed to an agent listener (inbound and outbound)
    drops: int = 0  # packets dropped because capture could not happen (fail closed)
    exempt: int = 0  # packets left uncaptured by the probe exemption or an excluded port
    spoofed: int = 0  # packets from outside with a pod IP as source, dropped

    @classmethod
    def from_struct(cls, s: PodCountersStruct) -> PodCounters:
        return cls(s.inbound, s.outbound, s.assigns, s.drops, s.exempt, s.spoofed)


def _ports(value: Iterable[int], what: str) -> frozenset[int]:
    ports = frozenset(value)
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_PORT:
            raise RedirectError(f"{what}: {p!r} is not a TCP port (1-{MAX_PORT})")
    return ports


def _probe(value: str | None, version: int) -> str | None:
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as e:
        raise RedirectError(f"probe source {value!r} is not an IP address") from e
    if ip.version != version:
        raise RedirectError(f"probe source {value} is not an IPv{version} address")
    return str(ip)


@dataclass(frozen=True, slots=True)
class PodSettings:
    """Per-pod knobs, stored in the config map (changing them needs no recompilation)."""

    excluded_inbound_ports: frozenset[int] = field(default_factory=frozenset)
    excluded_outbound_ports: frozenset[int] = field(default_factory=frozenset)
    probe_source_v4: str | None = PROBE_SOURCE_V4
    probe_source_v6: str | None = PROBE_SOURCE_V6

    def __post_init__(self) -> None:
        inbound = _ports(self.excluded_inbound_ports, "excluded inbound port")
        reserved = sorted(inbound & CAPTURE_PORTS)
        if reserved:
            raise RedirectError(f"the agent's ports {reserved} cannot be excluded inbound")
        object.__setattr__(self, "excluded_inbound_ports", inbound)
        object.__setattr__(
            self,
            "excluded_outbound_ports",
            _ports(self.excluded_outbound_ports, "excluded outbound port"),
        )
        object.__setattr__(self, "probe_source_v4", _probe(self.probe_source_v4, 4))
        object.__setattr__(self, "probe_source_v6", _probe(self.probe_source_v6, 6))


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ports as inclusive (lo, hi) runs: {1, 2, 3, 7} -> [(1, 3), (7, 7)]."""
    ranges: list[tuple[int, int]] = []
    for p in sorted(set(ports)):
        if ranges and ranges[-1][1] == p - 1:
            ranges[-1] = (ranges[-1][0], p)
        else:
            ranges.append((p, p))
    return ranges


@dataclass(frozen=True, slots=True)
class PodAddresses:
    """A pod's IPs, split by family (at most MAX_ADDRS of each)."""

    v4: tuple[ipaddress.IPv4Address, ...]
    v6: tuple[ipaddress.IPv6Address, ...]

    @classmethod
    def parse(cls, pod_ips: Sequence[str]) -> PodAddresses:
        if isinstance(pod_ips, str):
            raise RedirectError("pod IPs must be a list of addresses, not a string")
        v4: list[ipaddress.IPv4Address] = []
        v6: list[ipaddress.IPv6Address] = []
        for raw in pod_ips:
            try:
                ip = ipaddress.ip_address(raw)
            except ValueError as e:
                raise RedirectError(f"pod IP {raw!r} is not an IP address") from e
            if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
                raise RedirectError(f"pod IP {ip} cannot be a pod's address")
            if isinstance(ip, ipaddress.IPv4Address):
                if ip not in v4:
                    v4.append(ip)
            elif ip not in v6:
                v6.append(ip)
        if not v4 and not v6:
            raise RedirectError("a pod needs at least one IP to be captured")
        if len(v4) > MAX_ADDRS or len(v6) > MAX_ADDRS:
            raise RedirectError(f"at most {MAX_ADDRS} pod IPs per address family")
        return cls(tuple(v4), tuple(v6))

    @property
    def all(self) -> tuple[IPAddress, ...]:
        return (*self.v4, *self.v6)

    @property
    def families(self) -> frozenset[int]:
        return frozenset(f for f, ips in ((4, self.v4), (6, self.v6)) if ips)

    def as_strings(self) -> list[str]:
        return [str(ip) for ip in self.all]


def _word(packed: bytes) -> int:
    """4 network-order bytes as the native u32 that stores them unchanged in a map."""
    return int.from_bytes(packed, sys.byteorder)


def _unword(value: int) -> bytes:
    return int(value).to_bytes(4, sys.byteorder)


def _set_ip6(dst: Ip6, ip: ipaddress.IPv6Address) -> None:
    packed = ip.packed
    for i in range(4):
        dst.w[i] = _word(packed[4 * i : 4 * i + 4])


def _get_ip6(src: Ip6) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"".join(_unword(w) for w in src.w))


def _set_ranges(dst: ctypes.Array[PortRange], ports: frozenset[int], what: str) -> int:
    ranges = port_ranges(ports)
    if len(ranges) > MAX_PORT_RANGES:
        raise RedirectError(
            f"{what} ports form {len(ranges)} ranges; at most {MAX_PORT_RANGES} are supported"
        )
    for i, (lo, hi) in enumerate(ranges):
        dst[i].lo = lo
        dst[i].hi = hi
    return len(ranges)


def addr_key(ip: IPAddress) -> AddrKey:
    """The zt_pods key of one pod IP."""
    packed = ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed
    key = AddrKey()
    for i in range(4):
        key.a[i] = _word(packed[4 * i : 4 * i + 4])
    return key


def encode_config(
    pod_id: int,
    addrs: PodAddresses,
    settings: PodSettings,
    *,
    saved_accept_local: int,
    ifindex: int,
) -> PodConfigStruct:
    """The zt_pods value stored under each of the pod's IPs."""
    cfg = PodConfigStruct()
    cfg.pod_id = pod_id
    cfg.n_ip4 = len(addrs.v4)
    cfg.n_ip6 = len(addrs.v6)
    for i, ip4 in enumerate(addrs.v4):
        cfg.ip4[i] = _word(ip4.packed)
    for i, ip6 in enumerate(addrs.v6):
        _set_ip6(cfg.ip6[i], ip6)
    if settings.probe_source_v4 is not None:
        cfg.probe_ip4 = _word(ipaddress.IPv4Address(settings.probe_source_v4).packed)
    if settings.probe_source_v6 is not None:
        _set_ip6(cfg.probe_ip6, ipaddress.IPv6Address(settings.probe_source_v6))
    cfg.n_in_excluded = _set_ranges(cfg.in_excluded, settings.excluded_inbound_ports, "inbound")
    cfg.n_out_excluded = _set_ranges(cfg.out_excluded, settings.excluded_outbound_ports, "outbound")
    cfg.saved_accept_local = saved_accept_local
    cfg.ifindex = ifindex
    return cfg


def decode_addresses(cfg: PodConfigStruct) -> PodAddresses:
    n4 = min(cfg.n_ip4, MAX_ADDRS)
    n6 = min(cfg.n_ip6, MAX_ADDRS)
    v4 = tuple(ipaddress.IPv4Address(_unword(cfg.ip4[i])) for i in range(n4))
    v6 = tuple(_get_ip6(cfg.ip6[i]) for i in range(n6))
    return PodAddresses(v4, v6)


def decode_settings(cfg: PodConfigStruct) -> PodSettings:
    def ports(ranges: ctypes.Array[PortRange], n: int) -> frozenset[int]:
        return frozenset(
            p for r in ranges[: min(n, MAX_PORT_RANGES)] for p in range(r.lo, r.hi + 1)
        )

    probe6 = _get_ip6(cfg.probe_ip6)
    return PodSettings(
        excluded_inbound_ports=ports(cfg.in_excluded, cfg.n_in_excluded),
        excluded_outbound_ports=ports(cfg.out_excluded, cfg.n_out_excluded),
        probe_source_v4=str(ipaddress.IPv4Address(_unword(cfg.probe_ip4)))
        if cfg.probe_ip4
        else None,
        probe_source_v6=None if probe6.is_unspecified else str(probe6),
    )
