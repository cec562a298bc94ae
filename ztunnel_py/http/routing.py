"""Route matching and the edits a route makes to a request: sans-IO, over `model.http` types.

- `match_route(routes, head, port)`: the first route whose any-of matches passes (Envoy's
  behaviour; the control plane ordered the routes);
- `pick_backend(backends, rand)`: weighted choice; backends of weight 0 are never picked;
- `apply_header_ops`: remove, set, add, in Envoy's order;
- `rewrite_request` and `redirect_location`: Gateway API URLRewrite / RequestRedirect and
  VirtualService rewrite / redirect, including prefix replacement of the matched prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl

from ztunnel_py.http.message import Headers, RequestHead, split_authority
from ztunnel_py.model.http import (
    Backend,
    HeaderOps,
    MatchKind,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
)

__all__ = [
    "apply_header_ops",
    "match_route",
    "pick_backend",
    "redirect_location",
    "rewrite_request",
]


def _match_one(m: RouteMatch, head: RequestHead, port: int | None) -> bool:
    if m.port is not None and port != m.port:
        return False
    if m.method is not None and head.method != m.method:
        return False
    if m.path is not None and not m.path.matches(head.path_only):
        return False
    for h in m.headers:
        value = head.host if h.name == ":authority" else head.headers.joined(h.name)
        ok = value is not None if h.kind is MatchKind.PRESENT else h.value_matches(value)
        if ok == h.invert:
            return False
    if m.query:
        params: dict[str, str] = {}
        for k, v in parse_qsl(head.query, keep_blank_values=True):
            params.setdefault(k, v)
        for q in m.query:
            value = params.get(q.name)
            if q.kind is MatchKind.PRESENT:
                if value is None:
                    return False
            elif not q.value_matches(value):
                return False
    return True


def match_route(
    routes: Sequence[Route], head: RequestHead, port: int | None
) -> tuple[Route, RouteMatch] | None:
    """The first route any of whose matches the request passes, with the match that passed."""
    for route in routes:
        for m in route.matches:
            if _match_one(m, head, port):
                return route, m
    return None


def pick_backend(backends: Sequence[Backend], rand: Callable[[], float]) -> Backend | None:
    """Weighted random choice (`rand()` in [0, 1)); None when every weight is 0."""
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = rand() * total
    for b in backends:
        if b.weight <= 0:
            continue
        point -= b.weight
        if point < 0:
            return b
    return next(b for b in reversed(backends) if b.weight > 0)


def apply_header_ops(headers: Headers, ops: HeaderOps) -> None:
    for name in ops.remove:
        headers.remove(name)
    for name, value in ops.set:
        headers.set(name, value)
    for name, value in ops.add:
        headers.add(name, value)


def _replace_prefix(path: str, match: RouteMatch, replacement: str) -> str:
    """Replace what the match's path condition matched with `replacement`, as Envoy's
    prefix_rewrite does: a prefix match replaces its prefix (a segment prefix without its
    trailing slash, and a slash is not doubled), an exact match the whole path, no path
    condition the leading `/`."""
    pm = match.path
    if pm is None:
        prefix = "/"
    elif pm.kind is MatchKind.EXACT or pm.kind is MatchKind.REGEX:
        return replacement or "/"
    else:
        prefix = pm.value.rstrip("/") if pm.segment_prefix else pm.value
    rest = path[len(prefix) :]
    if replacement.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    return (replacement + rest) or "/"


def rewrite_request(head: RequestHead, rewrite: Rewrite, match: RouteMatch) -> None:
    """Apply a URL rewrite in place; the query string is kept."""
    query = head.query
    path = head.path_only
    if rewrite.path is not None:
        path = rewrite.path
    elif rewrite.prefix is not None:
        path = _replace_prefix(path, match, rewrite.prefix)
    if rewrite.path is not None or rewrite.prefix is not None:
        head.path = path + ("?" + query if query else "")
    if rewrite.authority is not None:
        head.authority = rewrite.authority


def redirect_location(head: RequestHead, redirect: Redirect, match: RouteMatch) -> str:
    """The Location of a redirect: the request's URL with the redirect's parts replaced. The
    port is left out when it is the scheme's default, and a scheme given without a port means
    that default (Gateway API)."""
    scheme = redirect.scheme or head.scheme
    host, port = split_authority(head.authority)
    if redirect.host is not None:
        host = redirect.host
    if redirect.port is not None:
        port = redirect.port
    elif redirect.scheme is not None:
        # Gateway API: a redirect naming a scheme and no port goes to the scheme's well-known
        # port, even when the scheme is the request's own
        port = None
    path = head.path_only
    if redirect.path is not None:
        path = redirect.path
    elif redirect.prefix is not None:
        path = _replace_prefix(path, match, redirect.prefix)
    default = 443 if scheme == "https" else 80
    if ":" in host:
        host = f"[{host}]"
    authority = host if port in (None, default) else f"{host}:{port}"
    query = head.query
    return f"{scheme}://{authority}{path}" + ("?" + query if query else "")
