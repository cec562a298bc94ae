"""Request ids, trace context and spans: what an Envoy waypoint adds so traces and logs join up.

- `x-request-id`: kept when the client sent one, else a new UUID4;
- W3C trace context: a valid incoming `traceparent` continues its trace with a new span id
  for this hop (its span becomes the parent); `tracestate` passes through unchanged;
- B3 (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`): rewritten for the
  same trace and span, so Zipkin-instrumented apps and W3C-instrumented ones see one trace;
- with neither, a new trace starts, sampled at the configured percentage (Istio's default is
  1%), and an incoming sampling decision is kept.

A sampled request whose configuration names a tracing provider is reported as one server span
(Envoy's connection manager span; a waypoint spawns no upstream span): named
`<service host>:<port>/*` as istiod names a waypoint route's operation, started when the request
head arrives and ended when the exchange is over, with Envoy's tags (`guid:x-request-id`,
`http.url`, `http.method`, `http.protocol`, `http.status_code`, `response_flags`,
`upstream_cluster`, `upstream_cluster.name`, `upstream_address`, `peer.address`,
`request_size`, `response_size`, `user_agent`, `downstream_cluster`, `component`, `error` for a
5xx or no response), the app's tags (a waypoint's: its own `istio.*` tags and the peers'
`istio.source_*` and `istio.destination_*`) and the configured custom tags. Its span id is the
one propagated upstream, so the next hop's spans are its children.

The span (trace id, span id, parent, sampled) is left in `ctx.state["trace"]` for the access
log.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ztunnel_py.http.filter import Filter, LocalReply, RequestContext
from ztunnel_py.http.message import Headers
from ztunnel_py.model.telemetry import CustomTagKind, TracingConfig
from ztunnel_py.telemetry.spans import AttributeValue, ExportedSpan, SpanExporters

__all__ = ["Span", "TracingFilter", "parse_traceparent", "request_id"]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    sampled: bool

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid version-00 `traceparent`, else None."""
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace, parent, flags = m.group(2), m.group(3), int(m.group(4), 16)
    if trace == "0" * 32 or parent == "0" * 16:
        return None
    return trace, parent, bool(flags & 1)


def _b3(headers: Headers) -> tuple[str, str, bool | None] | None:
    trace = (headers.get("x-b3-traceid") or "").lower()
    span = (headers.get("x-b3-spanid") or "").lower()
    if len(trace) not in (16, 32) or len(span) != 16 or not _HEX.match(trace + span):
        return None
    sampled = headers.get("x-b3-sampled")
    decision = None if sampled is None else sampled in ("1", "true", "d")
    return trace.rjust(32, "0"), span, decision


TagsOf = Callable[[RequestContext], Mapping[str, AttributeValue]]
_SPAN = "tracing.span"


def request_id(random: bytes) -> str:
    """A UUID4 in its text form from 16 random bytes (the version and variant bits set)."""
    b = bytearray(random)
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# Every random value a request may need, drawn with one getrandom(2) (os.urandom, as `secrets`
# and `uuid.uuid4` use): request id 16 bytes, trace id 16, span id 8, sampling draw 4.
_RANDOM_BYTES = 44


class TracingFilter(Filter):
    name = "tracing"

    def __init__(
        self,
        config: TracingConfig | None = None,
        *,
        spans: SpanExporters | None = None,
        tags: TagsOf | None = None,
    ) -> None:
        """`config`: sampling, provider and custom tags (default: 1%, no provider); `spans`:
        where spans go (None: nowhere); `tags`: the app's tags of a finished request."""
        self.config = config if config is not None else TracingConfig()
        sampling = self.config.sampling
        if not 0.0 <= sampling <= 100.0:
            raise ValueError(f"sampling must be a percentage, got {sampling}")
        self._threshold = int(sampling / 100.0 * (1 << 32))
        self._spans = spans if self.config.provider is not None else None
        self._tags = tags

    def _sample(self, random: bytes) -> bool:
        return int.from_bytes(random[40:44]) < self._threshold

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        h = ctx.request.headers
        random = os.urandom(_RANDOM_BYTES)
        if not h.get("x-request-id"):
            h.set("x-request-id", request_id(random[:16]))
        incoming = parse_traceparent(h.get("traceparent") or "")
        b3 = _b3(h)
        if incoming is not None:
            trace, parent, sampled = incoming
        elif b3 is not None:
            trace, parent, decision = b3
            sampled = self._sample(random) if decision is None else decision
        else:
            trace, parent, sampled = random[16:32].hex(), "", self._sample(random)
        exported = self._start(ctx, trace, parent) if sampled else None
        if exported is not None:
            ctx.state[_SPAN] = exported
            span = Span(exported.trace_id, exported.span_id, parent, sampled)
        else:
            span = Span(trace, random[32:40].hex(), parent, sampled)
        trace = span.trace_id
        ctx.state["trace"] = span
        h.set("traceparent", span.traceparent)
        h.set("x-b3-traceid", trace)
        h.set("x-b3-spanid", span.span_id)
        if parent:
            h.set("x-b3-parentspanid", parent)
        else:
            h.remove("x-b3-parentspanid")
        h.set("x-b3-sampled", "1" if sampled else "0")
        return None

    def _start(self, ctx: RequestContext, trace: str, parent: str) -> ExportedSpan | None:
        provider = self.config.provider
        if self._spans is None or provider is None:
            return None
        host = ctx.service.partition("/")[2] or ctx.request.host
        port = ctx.port if ctx.port is not None else ""
        return self._spans.start(
            provider,
            f"{host}:{port}/*",
            trace_id=trace,
            parent_id=parent,
            start_ns=int(ctx.start_wall * 1e9),
        )

    def on_log(self, ctx: RequestContext) -> None:
        exported: ExportedSpan | None = ctx.state.get(_SPAN)
        if exported is None:
            return
        req, resp = ctx.request, ctx.response
        status = resp.status if resp is not None else 0
        backend = ctx.backend
        tags: dict[str, AttributeValue] = {
            "component": "proxy",
            "guid:x-request-id": req.headers.get("x-request-id") or "",
            "http.url": f"{req.scheme}://{req.authority}{req.path}",
            "http.method": req.method,
            "http.protocol": req.version,
            "http.status_code": str(status),
            "response_flags": ctx.flags_text,
            "downstream_cluster": req.headers.get("x-envoy-downstream-service-cluster") or "-",
            "user_agent": req.headers.get("user-agent") or "-",
            "peer.address": ctx.downstream.peer_address,
            "request_size": str(ctx.request_body_bytes),
            "response_size": str(ctx.response_body_bytes),
        }
        if backend is not None:
            tags["upstream_cluster"] = tags["upstream_cluster.name"] = backend.cluster
        if ctx.upstream_host:
            tags["upstream_address"] = ctx.upstream_host
        if ctx.grpc_status is not None:
            tags["grpc.status_code"] = ctx.grpc_status
        error = ""
        if status >= 500 or status == 0:
            tags["error"] = "true"
            error = ctx.details or (f"status {status}" if status else "no response")
        if self._tags is not None:
            tags.update(self._tags(ctx))
        for tag in self.config.custom_tags:
            if tag.kind is CustomTagKind.LITERAL:
                tags[tag.name] = tag.value
            elif tag.kind is CustomTagKind.HEADER:
                tags[tag.name] = req.headers.get(tag.value) or tag.default
            else:
                tags[tag.name] = os.environ.get(tag.value, tag.default)
        end = ctx.end if ctx.end is not None else time.monotonic()
        end_ns = int((ctx.start_wall + (end - ctx.start)) * 1e9)
        exported.end(tags, error, end_ns)
