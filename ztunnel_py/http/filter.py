"""The filter API: what a filter sees of a request, what it may do, and the chain that runs them.

A filter is a plain Python class deriving from `Filter` that overrides the hooks it needs. One
instance serves every request of the waypoint (or sidecar) it is configured for: per-request
state belongs in `ctx.state`, shared state (a rate limiter's buckets) on the instance. Hooks are
coroutines, so a filter may wait (a fault's delay, a call out); the chain only awaits the hooks
a filter actually overrides.

Request hooks run in chain order, response hooks in reverse order (Envoy's order):

- `on_request_headers(ctx)`: `ctx.request` may be edited in place; return a `LocalReply` to stop
  the chain and answer without an upstream (the response hooks still run on the reply);
- `on_request_body(ctx, chunk, end)`: return the chunk to forward (edited or not);
- `on_request_trailers(ctx, trailers)`: edit in place;
- `on_response_headers(ctx)`: `ctx.response` may be edited; a `LocalReply` replaces the response
  (only before any of the response body was forwarded);
- `on_response_body(ctx, chunk, end)` and `on_response_trailers(ctx, trailers)`: as for requests;
- `on_log(ctx)`: once the exchange is over, however it ended (metrics, access logs). Not a
  coroutine: it must not block.

A filter that raises fails that request with a 500 and a logged traceback; the process and the
connection's other requests go on.

User filters are installed as Python packages exposing a `Filter` subclass under the entry point
group `ztunnel_py.http_filters`; `load_filter` builds one from its name and a configuration
mapping (the waypoint takes them from `WasmPlugin`-shaped resources, `url: python://<name>`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
from ztunnel_py.model.http import Backend, Route, RouteMatch
from ztunnel_py.model.identity import Identity

__all__ = [
    "ENTRY_POINT_GROUP",
    "Downstream",
    "Filter",
    "FilterChain",
    "FilterError",
    "LocalReply",
    "RequestContext",
    "load_filter",
]

ENTRY_POINT_GROUP = "ztunnel_py.http_filters"


class FilterError(Exception):
    """A filter cannot be loaded or configured."""


@dataclass(frozen=True, slots=True)
class LocalReply:
    """Answer the request here instead of forwarding it."""

    status: int
    body: str | bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # Envoy response flag to report (e.g. "RL" rate limited, "FI" fault injected); "" none
    flag: str = ""
    # why, for the access log's response_code_details
    details: str = ""
    # for gRPC requests: the grpc-status to answer with (None: mapped from `status`)
    grpc_status: int | None = None


@dataclass(slots=True)
class Downstream:
    """The connection a request arrived on."""

    # the client's verified mTLS identity (None for plaintext)
    peer_identity: Identity | None
    peer_address: str
    # where the client was going: the HBONE CONNECT authority (service VIP:port or pod IP:port)
    destination: str
    connection_id: int = 0
    mtls: bool = True
    # peer metadata the client's agent sent (HBONE `baggage`: k8s.namespace.name, ...)
    baggage: Mapping[str, str] = field(default_factory=dict)
    # per-connection scratch space: what the app derives from the connection once, not per
    # request
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    """One request's state, shared by the filters and the engine."""

    request: RequestHead
    downstream: Downstream
    start: float = field(default_factory=time.monotonic)
    start_wall: float = field(default_factory=time.time)
    response: ResponseHead | None = None
    # the route that matched (None: no route), and the backend and endpoint it chose
    route: Route | None = None
    route_match: RouteMatch | None = None
    backend: Backend | None = None
    upstream_host: str = ""
    # what the app attached to the chosen endpoint (`UpstreamTarget.info`, e.g. its workload)
    upstream_info: Any = None
    # headers the router adds to the upstream's response (a consistent hash's new cookie)
    upstream_response_headers: list[tuple[str, str]] = field(default_factory=list)
    # the service the request was addressed to (`namespace/hostname`), when known
    service: str = ""
    # the destination port the request arrived for
    port: int | None = None
    response_flags: list[str] = field(default_factory=list)
    # why the response is what it is (Envoy's response_code_details)
    details: str = ""
    request_body_bytes: int = 0
    response_body_bytes: int = 0
    attempts: int = 0
    # gRPC status from the response trailers or a trailers-only response; None: not gRPC
    grpc_status: str | None = None
    # filled by the JWT authentication filter: the verified token's payload (None: no token),
    # the end-user identity authorization tests (`requestPrincipals`, `request.auth.claims`)
    jwt_payload: Mapping[str, Any] | None = None
    # filled by the authorization filter: the policy that decided, for the access log
    authz_decision: str = ""
    end: float | None = None
    # per-request scratch space for filters, by filter name
    state: dict[str, Any] = field(default_factory=dict)

    def flag(self, flag: str) -> None:
        if flag and flag not in self.response_flags:
            self.response_flags.append(flag)

    @property
    def duration_ms(self) -> float:
        end = self.end if self.end is not None else time.monotonic()
        return (end - self.start) * 1000.0

    @property
    def flags_text(self) -> str:
        """Envoy's `%RESPONSE_FLAGS%`: comma-joined, or `-` when none."""
        return ",".join(self.response_flags) if self.response_flags else "-"


class Filter:
    """Base class of HTTP filters: override the hooks you need (see the module docstring)."""

    name: ClassVar[str] = "filter"

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        return None

    async def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk

    async def on_request_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        return None

    async def on_response_headers(self, ctx: RequestContext) -> LocalReply | None:
        return None

    async def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk

    async def on_response_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        return None

    def on_log(self, ctx: RequestContext) -> None:
        return None


def _overrides(f: Filter, hook: str) -> bool:
    return getattr(type(f), hook) is not getattr(Filter, hook)


class FilterChain:
    """Filters in order, with each hook's overriding filters looked up once."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = tuple(filters)
        rev = tuple(reversed(self.filters))

        def bound(chain: Sequence[Filter], hook: str) -> tuple[Callable[..., Any], ...]:
            return tuple(getattr(f, hook) for f in chain if _overrides(f, hook))

        self._req_headers = bound(self.filters, "on_request_headers")
        self._req_body = bound(self.filters, "on_request_body")
        self._req_trailers = bound(self.filters, "on_request_trailers")
        self._resp_headers = bound(rev, "on_response_headers")
        self._resp_body = bound(rev, "on_response_body")
        self._resp_trailers = bound(rev, "on_response_trailers")
        self._log = bound(self.filters, "on_log")

    @property
    def touches_request_body(self) -> bool:
        return bool(self._req_body)

    @property
    def touches_response_body(self) -> bool:
        return bool(self._resp_body)

    @property
    def touches_response_trailers(self) -> bool:
        return bool(self._resp_trailers)

    async def request_headers(self, ctx: RequestContext) -> LocalReply | None:
        for hook in self._req_headers:
            reply: LocalReply | None = await hook(ctx)
            if reply is not None:
                return reply
        return None

    async def request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        for hook in self._req_body:
            chunk = await hook(ctx, chunk, end)
        return chunk

    async def request_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        for hook in self._req_trailers:
            await hook(ctx, trailers)

    async def response_headers(self, ctx: RequestContext) -> LocalReply | None:
        for hook in self._resp_headers:
            reply: LocalReply | None = await hook(ctx)
            if reply is not None:
                return reply
        return None

    async def response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        for hook in self._resp_body:
            chunk = await hook(ctx, chunk, end)
        return chunk

    async def response_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        for hook in self._resp_trailers:
            await hook(ctx, trailers)

    def log(self, ctx: RequestContext) -> None:
        for hook in self._log:
            hook(ctx)


FilterFactory = Callable[[Mapping[str, Any]], Filter]


def load_filter(
    name: str,
    config: Mapping[str, Any],
    *,
    builtins: Mapping[str, FilterFactory] | None = None,
) -> Filter:
    """Build filter `name` with `config`: a built-in, else an installed entry point of group
    `ztunnel_py.http_filters`. The class is called with the configuration mapping."""
    if builtins and name in builtins:
        factory: Any = builtins[name]
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            available = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise FilterError(
                f"no HTTP filter named {name!r} is installed (entry point group "
                f"{ENTRY_POINT_GROUP}; installed: {', '.join(available) or 'none'})"
            )
        try:
            factory = found[0].load()
        except Exception as e:
            raise FilterError(f"HTTP filter {name!r} cannot be imported: {e}") from e
    if inspect.isclass(factory) and not issubclass(factory, Filter):
        raise FilterError(f"HTTP filter {name!r} is not a ztunnel_py.http.filter.Filter")
    try:
        made = factory(dict(config))
    except Exception as e:
        raise FilterError(f"HTTP filter {name!r} rejected its configuration: {e}") from e
    if not isinstance(made, Filter):
        raise FilterError(f"HTTP filter {name!r} did not build a Filter")
    return made
