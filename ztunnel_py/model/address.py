"""Socket addresses: the one way `host:port` is read and written (flags, CONNECT authorities,
gRPC targets, listen addresses, access logs).

An IPv6 host is always written in brackets, `[fd00::2]:15012`: without them `fd00::2:15012`
cannot be split into host and port, and gRPC then dials a different address. Hosts are IP
addresses; DNS names are accepted only where the caller allows them (`hostname=True`: the
control plane's address, a CONNECT authority), since the data path speaks in IPs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PORT = 65535

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_MAX_HOSTNAME = 253


def is_hostname(text: str) -> bool:
    """A DNS name (labels of letters, digits, `-` and `_`, a trailing dot allowed) that cannot
    be mistaken for an IPv4 address: a numeric last label would make `10.0.0` a name."""
    if not text or len(text) > _MAX_HOSTNAME or text[-1].isdigit():
        return False
    return all(_HOST_LABEL.match(label) for label in text.removesuffix(".").split("."))


def canonical_ip(ip: IPAddress) -> IPAddress:
    """Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; the mesh knows them as a.b.c.d."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class SocketAddr:
    """An IP address (or, where allowed, a DNS name) and a TCP port.

    A host given as text is stored as an IP address when it is one, so
    `SocketAddr("10.0.0.1", 80) == SocketAddr(ip_address("10.0.0.1"), 80)`. Port 0 (any port,
    for a listener) can be built but is never parsed: an address someone writes names a port.
    """

    host: IPAddress | str
    port: int

    def __post_init__(self) -> None:
        if isinstance(self.host, str):
            try:
                object.__setattr__(self, "host", ipaddress.ip_address(self.host))
            except ValueError:
                if not is_hostname(self.host):
                    raise ValueError(
                        f"{self.host!r} is neither an IP address nor a DNS name"
                    ) from None
        elif not isinstance(self.host, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"a socket address host is an IP address or a name, not {self.host!r}")
        if type(self.port) is not int or not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"port {self.port!r} is not from 0 to {MAX_PORT}")

    @classmethod
    def parse(cls, text: str, *, hostname: bool = False, what: str = "address") -> SocketAddr:
        """Read `1.2.3.4:80` or `[fd00::2]:15012` (and `name.example:80` with `hostname`).

        Raises `ValueError` naming `what`, the text and the form expected.
        """
        expected = "HOST:PORT, IP:PORT or [IPv6]:PORT" if hostname else "IP:PORT or [IPv6]:PORT"
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise ValueError(f"{what}: {text!r} is not {expected}")
            host, port_text = text[1:close], text[close + 2 :]
            try:
                ip: IPAddress | str = ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    f"{what}: {text!r}: brackets hold an IPv6 address, not {host!r}"
                ) from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{what}: {text!r} is not {expected}")
            if ":" in host:
                raise ValueError(
                    f"{what}: {text!r}: an IPv6 address goes in brackets, as [fd00::2]:15012"
                )
            try:
                ip = ipaddress.IPv4Address(host)
            except ValueError:
                if not hostname:
                    raise ValueError(
                        f"{what}: {text!r} is not {expected} (an IP address, not a name)"
                    ) from None
                if not is_hostname(host):
                    raise ValueError(f"{what}: {text!r}: {host!r} is not a host name") from None
                ip = host
        if not _PORT.match(port_text) or not 0 < int(port_text) <= MAX_PORT:
            raise ValueError(f"{what}: {text!r}: the port must be a number from 1 to {MAX_PORT}")
        return cls(ip, int(port_text))

    @property
    def ip(self) -> IPAddress:
        """The host as an IP address; `ValueError` when it is a DNS name."""
        if isinstance(self.host, str):
            raise ValueError(f"{self} names a host, not an IP address")
        return self.host

    def __str__(self) -> str:
        if isinstance(self.host, ipaddress.IPv6Address):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """The address as a gRPC channel target, with its name-resolver scheme: `ipv4:` and
        `ipv6:` take the address as it is; `dns:///` resolves a name. A bare `name:port` would
        be read as a URI whose scheme is the name (`unix:80` is a socket path)."""
        if isinstance(self.host, str):
            return f"dns:///{self}"
        return f"ipv{self.host.version}:{self}"
