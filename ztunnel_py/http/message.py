"""HTTP messages as the filter engine sees them, whatever the wire version: heads and headers.

One vocabulary for HTTP/1.1 and HTTP/2 (the codecs in `h1.py` and `h2.py` translate both ways):

- `Headers`: an ordered multi-map with lower-case names and `str` values (latin-1, as both wire
  formats carry octets). Names are lower-cased on the way in: HTTP/2 requires it and HTTP/1.1
  treats names case-insensitively, so filters compare names without thinking about case.
- `RequestHead`: `method`, `scheme`, `authority`, `path` (with the query) and the headers that
  are not pseudo-headers; HTTP/1.1's `Host` becomes the authority and is not kept in `headers`.
- `ResponseHead`: `status` and headers.

Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection and never cross the proxy;
`strip_hop_by_hop` removes them (keeping `te: trailers`, which gRPC needs end to end).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "HttpVersion",
    "RequestHead",
    "ResponseHead",
    "drop_body_framing",
    "strip_hop_by_hop",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

HttpVersion = str  # "HTTP/1.1" or "HTTP/2"

# a field's name: `map`ped over fields, the loops that look for a name run in C
_NAME = itemgetter(0)


class Headers:
    """Ordered header fields; names are lower-case, repeated names keep their order."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = [(n.lower(), v) for n, v in fields]

    @classmethod
    def trusted(cls, fields: list[tuple[str, str]]) -> Headers:
        """Adopt `fields` as they are: the caller guarantees lower-case names (a codec output)."""
        h = cls.__new__(cls)
        h._fields = fields
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        name = name.lower()
        for n, v in self._fields:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self._fields if n == name]

    def joined(self, name: str) -> str | None:
        """Every value of `name` joined with `,` (RFC 9110's combination), or None."""
        values = self.get_all(name)
        return ",".join(values) if values else None

    def set(self, name: str, value: str) -> None:
        """Replace every field `name` with one field (appended when absent, else in place)."""
        name = name.lower()
        fields = self._fields
        if name not in map(_NAME, fields):
            # the common case (a header the proxy adds): no new list
            fields.append((name, value))
            return
        first = list(map(_NAME, fields)).index(name)
        self._fields = [
            *fields[:first],
            (name, value),
            *(f for f in fields[first + 1 :] if f[0] != name),
        ]

    def add(self, name: str, value: str) -> None:
        self._fields.append((name.lower(), value))

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self.add(name, value)
            return value
        return current

    def remove(self, name: str) -> None:
        name = name.lower()
        if name in map(_NAME, self._fields):
            self._fields = [(n, v) for n, v in self._fields if n != name]

    def discard(self, names: Collection[str]) -> None:
        """Remove every field whose (lower-case) name is in `names`."""
        if any(map(names.__contains__, map(_NAME, self._fields))):
            self._fields = [(n, v) for n, v in self._fields if n not in names]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name.lower() in map(_NAME, self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def copy(self) -> Headers:
        return Headers.trusted(list(self._fields))

    def size(self) -> int:
        """Bytes these fields count for against a header-list limit (RFC 9113's 32-octet
        overhead per field, as Envoy counts)."""
        return sum(len(n) + len(v) + 32 for n, v in self._fields)


@dataclass(slots=True)
class RequestHead:
    method: str
    path: str
    authority: str
    headers: Headers = field(default_factory=Headers)
    scheme: str = "http"
    version: HttpVersion = "HTTP/1.1"
    # the head's size on the wire as received over HTTP/1.1 (0: not received so, or a copy)
    wire_size: int = 0

    @property
    def path_only(self) -> str:
        """The path without its query string."""
        q = self.path.find("?")
        return self.path if q < 0 else self.path[:q]

    @property
    def query(self) -> str:
        q = self.path.find("?")
        return "" if q < 0 else self.path[q + 1 :]

    @property
    def host(self) -> str:
        """The authority without its port (brackets of an IPv6 literal removed)."""
        return split_authority(self.authority)[0]

    def copy(self) -> RequestHead:
        return RequestHead(
            self.method, self.path, self.authority, self.headers.copy(), self.scheme, self.version
        )


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: Headers = field(default_factory=Headers)
    reason: str = ""
    # the head's size on the wire as last sent over HTTP/1.1 (0: not sent so)
    wire_size: int = 0


def split_authority(authority: str) -> tuple[str, int | None]:
    """(host, port) of an authority; port None when absent or not a number."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return authority, None
        host, rest = authority[1:end], authority[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            return authority, None
        if ":" in host:  # an unbracketed IPv6 literal: no port
            return authority, None
    return host, int(port_text) if port_text.isdigit() else None


def drop_body_framing(headers: Headers, status: int) -> None:
    """A 1xx or 204 response has no body and must not carry Content-Length or
    Transfer-Encoding (RFC 9110 sections 8.6 and 6.1): an upstream's is dropped rather than
    forwarded to a client that would refuse the response (nghttp2 resets the stream)."""
    if status < 200 or status == 204:
        headers.discard(_BODY_FRAMING)


_BODY_FRAMING = frozenset({"content-length", "transfer-encoding"})


def strip_hop_by_hop(headers: Headers, *, keep_upgrade: bool = False) -> None:
    """Remove connection-specific fields in place: the fixed set plus every field named in
    `Connection`. `te: trailers` is kept (gRPC relies on it); `upgrade` when `keep_upgrade`."""
    named = headers.joined("connection")
    drop: frozenset[str] | set[str] = HOP_BY_HOP
    if named or keep_upgrade:
        drop = set(HOP_BY_HOP)
        if named:
            drop.update(t.strip().lower() for t in named.split(",") if t.strip())
        if keep_upgrade:
            drop.discard("upgrade")
            drop.discard("connection")
    if drop.isdisjoint(map(_NAME, headers)):
        return
    kept: list[tuple[str, str]] = []
    te_kept = False
    for n, v in headers:
        if n not in drop:
            kept.append((n, v))
        elif n == "te" and not te_kept and "trailers" in _tokens(v):
            # in place, so the field order stays the client's
            kept.append(("te", "trailers"))
            te_kept = True
    headers._fields = kept


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",")]
