"""CONNECT request headers as HBONE carries them (the `:authority` itself is a
`model.address.SocketAddr`, parsed with `hostname=True`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ztunnel_py.protocol.hbone.events import Header

__all__ = [
    "decode_field",
    "split_headers",
    "validate_headers",
]

_CONNECTION_SPECIFIC_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")


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
