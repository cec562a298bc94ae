"""CONNECT request fields: the `:authority` (host and port) and the headers HBONE carries."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from ztunnel_py.protocol.hbone.events import Header

__all__ = [
    "decode_field",
    "format_authority",
    "parse_authority",
    "split_headers",
    "validate_headers",
]

_CONNECTION_SPECIFIC_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def parse_authority(authority: str) -> tuple[str, int]:
    """Split a CONNECT `:authority` into (host, port); IPv6 hosts come back without brackets.

    Accepts `1.2.3.4:80`, `[fd00::1]:80` and `name.example:80`. Raises `ValueError` saying why
    anything else is refused.
    """
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0 or authority[close + 1 : close + 2] != ":":
            raise ValueError(f"authority {authority!r} is not '[IPv6]:port'")
        host, port_text = authority[1:close], authority[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"authority {authority!r} has an invalid IPv6 address") from None
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            raise ValueError(f"authority {authority!r} has no port")
        if not host:
            raise ValueError(f"authority {authority!r} has no host")
        if ":" in host:
            raise ValueError(f"authority {authority!r}: an IPv6 host must be in brackets")
        if not _valid_host(host):
            raise ValueError(f"authority {authority!r} has an invalid host")
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"authority {authority!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def format_authority(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets, as CONNECT wants it."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _valid_host(host: str) -> bool:
    if len(host) > 253:
        return False
    if host[-1].isdigit():
        # A name whose last label is numeric can only be an IPv4 address.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return all(_HOST_LABEL.match(label) for label in host.removesuffix(".").split("."))


def validate_headers(headers: Sequence[Header]) -> list[Header]:
    """Headers we send, lower-cased; `ValueError` for anything HTTP/2 forbids."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if not _TOKEN.match(lname):
            raise ValueError(f"invalid header name {name!r}")
        if lname in _CONNECTION_SPECIFIC_HEADERS:
            raise ValueError(f"header {name!r} is connection-specific and not allowed in HTTP/2")
        if any(c in value for c in "\r\n\0") or value != value.strip(" \t"):
            raise ValueError(f"invalid value for header {name!r}")
        out.append((lname, value))
    return out


def decode_field(value: bytes) -> str:
    """A received header name or value as text (never raises on bad UTF-8)."""
    return value.decode("utf-8", "replace")


def split_headers(raw: Sequence[tuple[bytes, bytes]]) -> tuple[dict[str, str], tuple[Header, ...]]:
    """Received headers as (pseudo-headers by name, regular headers in order)."""
    pseudo: dict[str, str] = {}
    regular: list[Header] = []
    for name, value in raw:
        if name.startswith(b":"):
            pseudo[decode_field(name)] = decode_field(value)
        else:
            regular.append((decode_field(name), decode_field(value)))
    return pseudo, tuple(regular)
