"""The per-pod network setup that goes with the capture programs, done inside the pod netns.

Every function here expects the calling thread to be inside the pod's network namespace
(`ztunnel_py.linux.netns.entered`) and takes an `IPRoute` created there: a netlink socket
belongs to the namespace it was opened in. Nothing here writes /proc/sys (read-only in an
unprivileged container): the one sysctl we change is set over netlink.

What the hairpin needs (docs/architecture.md, "Capture"):
- `accept_local=1` on the interface, or IPv4 drops the hairpinned packets as martians (their
  source is the pod's own IP). IPv6 has no such check and needs no sysctl.
- `ip rule pref 100 fwmark 0x400/0xf00 lookup 1024` with `local 0.0.0.0/0 dev lo table 1024`
  (and the IPv6 twins), so hairpinned packets to remote addresses are delivered locally. Table
  1024 rather than Istio's 100, so leftovers of Istio's in-pod rules never collide with ours.
- clsact on the interface with the two tc programs attached by fd (iproute2's `tc` cannot take an
  fd), at prio 1, handle 1, named after the programs.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.protocols import ETH_P_ALL

from ztunnel_py.redirect.maps import RedirectError

ROUTE_MARK = 0x400
ROUTE_MARK_MASK = 0xF00
ROUTE_TABLE = 1024
RULE_PRIORITY = 100
FILTER_PRIO = 1
FILTER_HANDLE = 1
PROGRAM_PREFIX = "zt_"  # our filters are named after the programs: zt_ingress, zt_egress
PARENT_INGRESS = 0xFFFFFFF2
PARENT_EGRESS = 0xFFFFFFF3
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
DEFAULT_DST = {4: "0.0.0.0/0", 6: "::/0"}


@dataclass(frozen=True, slots=True)
class Program:
    """A loaded SCHED_CLS program: its fd (in this process) and the name tc shows."""

    fd: int
    name: str


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found: list[int] = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


# Netlink constants for setting an IPv4 devconf value with RTM_SETLINK (linux/rtnetlink.h,
# linux/if_link.h, linux/ip.h): IFLA_AF_SPEC -> AF_INET -> IFLA_INET_CONF -> {index: u32}.
_RTM_SETLINK = 19
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_NLA_F_NESTED = 0x8000
_IFLA_AF_SPEC = 26
_IFLA_INET_CONF = 1
_IPV4_DEVCONF_ACCEPT_LOCAL = 23


def _nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind | (_NLA_F_NESTED if nested else 0))
    return header + payload + b"\0" * (-len(payload) % 4)


def read_accept_local(ipr: IPRoute, ifindex: int) -> int:
    try:
        (link,) = ipr.get_links(ifindex)
        value = link.get_attr("IFLA_AF_SPEC").get_attr("AF_INET")["accept_local"]
    except (NetlinkError, ValueError, AttributeError, KeyError, TypeError) as e:
        raise RedirectError(f"cannot read accept_local of interface {ifindex}: {e}") from e
    return int(value)


def write_accept_local(ifindex: int, ifname: str, value: int) -> None:
    """Set net.ipv4.conf.<ifname>.accept_local through netlink, not /proc/sys: a container's
    /proc/sys is read-only unless it is privileged, and CAP_NET_ADMIN is enough for this."""
    conf = _nla(_IPV4_DEVCONF_ACCEPT_LOCAL, struct.pack("=I", value))
    spec = _nla(socket.AF_INET, _nla(_IFLA_INET_CONF, conf, nested=True), nested=True)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0)
    body += _nla(_IFLA_AF_SPEC, spec, nested=True)
    message = struct.pack("=IHHII", 16 + len(body), _RTM_SETLINK, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0)
    message += body
    try:
        with socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        ) as sock:
            sock.sendall(message)
            answer = sock.recv(65536)
    except OSError as e:
        raise RedirectError(f"cannot set accept_local of {ifname}: {e.strerror}") from e
    kind = struct.unpack_from("=H", answer, 4)[0]
    error = struct.unpack_from("=i", answer, 16)[0] if kind == _NLMSG_ERROR else 0
    if error:
        raise RedirectError(f"cannot set accept_local of {ifname}: {os.strerror(-error)}")


def _our_rule(msg: Any, table: int) -> bool:
    return bool(
        msg.get("FRA_PRIORITY") == RULE_PRIORITY
        and msg.get("FRA_FWMARK") == ROUTE_MARK
        and msg.get("FRA_FWMASK") == ROUTE_MARK_MASK
        and (msg.get("FRA_TABLE") or msg["table"]) == table
    )


def _rule_args(family: int, table: int) -> dict[str, int]:
    return {
        "family": FAMILIES[family],
        "priority": RULE_PRIORITY,
        "fwmark": ROUTE_MARK,
        "fwmask": ROUTE_MARK_MASK,
        "table": table,
    }


def _route_args(family: int, table: int, lo: int) -> dict[str, Any]:
    return {
        "family": FAMILIES[family],
        "dst": DEFAULT_DST[family],
        "type": "local",
        "scope": "host",
        "oif": lo,
        "table": table,
    }


def ensure_routing(ipr: IPRoute, family: int, table: int) -> None:
    """The fwmark rule and the local default route for one address family (idempotent)."""
    lo = link_index(ipr, "lo")
    if lo is None:
        raise RedirectError("the pod netns has no loopback interface")
    try:
        if not any(_our_rule(r, table) for r in ipr.get_rules(family=FAMILIES[family])):
            ipr.rule("add", **_rule_args(family, table))
        ipr.route("replace", **_route_args(family, table, lo))
    except NetlinkError as e:
        raise RedirectError(f"cannot add the IPv{family} capture route: {e}") from e


def remove_routing(ipr: IPRoute, family: int, table: int) -> None:
    """Remove what `ensure_routing` added for one family; absent pieces are fine."""
    try:
        rules = [r for r in ipr.get_rules(family=FAMILIES[family]) if _our_rule(r, table)]
        for _ in rules:
            ipr.rule("del", **_rule_args(family, table))
        lo = link_index(ipr, "lo")
        if lo is not None:
            try:
                ipr.route("del", **_route_args(family, table, lo))
            except NetlinkError as e:
                # Not there: IPv4 answers ESRCH, IPv6 ENOENT.
                if e.code not in (errno.ENOENT, errno.ESRCH):
                    raise
    except NetlinkError as e:
        raise RedirectError(f"cannot remove the IPv{family} capture route: {e}") from e


def _has_clsact(ipr: IPRoute, ifindex: int) -> bool:
    return any(
        q.get("TCA_KIND") == "clsact" and q["index"] == ifindex
        for q in ipr.get_qdiscs(index=ifindex)
    )


def _filters(ipr: IPRoute, ifindex: int, parent: int) -> list[Any]:
    return list(ipr.get_filters(index=ifindex, parent=parent))


def _filter_name(ipr: IPRoute, ifindex: int, parent: int) -> str | None:
    """Name of the BPF program in our filter slot (prio 1, handle 1), "" if it has none."""
    for f in _filters(ipr, ifindex, parent):
        if f["handle"] == FILTER_HANDLE and f["info"] >> 16 == FILTER_PRIO:
            opts = f.get("TCA_OPTIONS")
            name = opts.get("TCA_BPF_NAME") if f.get("TCA_KIND") == "bpf" and opts else None
            return str(name or "")
    return None


def attach(ipr: IPRoute, ifindex: int, ingress: Program, egress: Program) -> None:
    """clsact plus both filters; an existing filter of ours is replaced atomically."""
    try:
        if not _has_clsact(ipr, ifindex):
            try:
                ipr.tc("add", "clsact", ifindex)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
        for parent, prog in ((PARENT_INGRESS, ingress), (PARENT_EGRESS, egress)):
            found = _filter_name(ipr, ifindex, parent)
            if found is not None and not found.startswith(PROGRAM_PREFIX):
                raise RedirectError(
                    f"another tc filter ({found or 'unnamed'}) holds prio {FILTER_PRIO} "
                    f"handle {FILTER_HANDLE} on the pod interface"
                )
            ipr.tc(
                "replace-filter",
                "bpf",
                ifindex,
                FILTER_HANDLE,
                fd=prog.fd,
                name=prog.name,
                parent=parent,
                prio=FILTER_PRIO,
                protocol=ETH_P_ALL,
                direct_action=True,
                classid=1,
            )
    except NetlinkError as e:
        raise RedirectError(f"cannot attach the capture programs: {e}") from e


def detach(ipr: IPRoute, ifindex: int) -> None:
    """Remove our filters; remove clsact too when no other filter is left on it."""
    try:
        if not _has_clsact(ipr, ifindex):
            return
        for parent in (PARENT_INGRESS, PARENT_EGRESS):
            found = _filter_name(ipr, ifindex, parent)
            if found is None or not found.startswith(PROGRAM_PREFIX):
                continue
            ipr.tc(
                "del-filter",
                "bpf",
                ifindex,
                FILTER_HANDLE,
                parent=parent,
                prio=FILTER_PRIO,
                protocol=ETH_P_ALL,
            )
        if not _filters(ipr, ifindex, PARENT_INGRESS) and not _filters(ipr, ifindex, PARENT_EGRESS):
            ipr.tc("del", "clsact", ifindex)
    except NetlinkError as e:
        raise RedirectError(f"cannot detach the capture programs: {e}") from e


def default_route_interface(ipr: IPRoute) -> str:
    """The interface of the main table's default route (IPv4 first, then IPv6)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=254):
            if route["dst_len"] != 0 or route["type"] != 1:  # RTN_UNICAST
                continue
            oif = route.get("RTA_OIF")
            if oif is None:
                hops = route.get("RTA_MULTIPATH") or []
                oif = hops[0]["oif"] if hops else None
            if oif is None:
                continue
            links = ipr.get_links(oif)
            if links:
                return str(links[0].get("IFLA_IFNAME"))
    raise RedirectError("the pod netns has no default route")


def interface_addresses(ipr: IPRoute, ifname: str) -> list[str]:
    """The global-scope IPv4 and IPv6 addresses on `ifname` (the pod's IPs)."""
    index = link_index(ipr, ifname)
    if index is None:
        raise RedirectError(f"the pod netns has no interface {ifname!r}")
    found = []
    for msg in ipr.get_addr(index=index):
        if msg["scope"] == 0:  # RT_SCOPE_UNIVERSE
            address = msg.get("IFA_ADDRESS")
            if address:
                found.append(str(address))
    return found
