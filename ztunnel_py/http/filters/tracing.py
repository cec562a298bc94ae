"""Request ids and trace context: what an Envoy waypoint adds so traces and logs join up.

- `x-request-id`: kept when the client sent one, else a new UUID4;
- W3C trace context: a valid incoming `traceparent` continues its trace with a new span id
  for this hop (its span becomes the parent); `tracestate` passes through unchanged;
- B3 (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`): rewritten for the
  same trace and span, so Zipkin-instrumented apps and W3C-instrumented ones see one trace;
- with neither, a new trace starts, sampled at `sampling` percent (Istio's default is 1%), and
  an incoming sampling decision is kept.

The span (trace id, span id, parent, sampled) is left in `ctx.state["trace"]` for the access
log and a span exporter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ztunnel_py.http.filter import Filter, LocalReply, RequestContext
from ztunnel_py.http.message import Headers

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

    def __init__(self, sampling: float = 1.0) -> None:
        """`sampling`: percent of new traces sampled."""
        if not 0.0 <= sampling <= 100.0:
            raise ValueError(f"sampling must be a percentage, got {sampling}")
        self._threshold = int(sampling / 100.0 * (1 << 32))

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
        span = Span(trace, random[32:40].hex(), parent, sampled)
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
