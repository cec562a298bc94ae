"""Fault injection per route (VirtualService `fault`), as Envoy's fault filter applies it.

A request whose route carries a `Fault` is delayed by `delay` with probability
`delay_percent` (response flag `DI`), then aborted with probability `abort_percent`: HTTP
requests get `abort_status` with body `fault filter abort`, gRPC requests a trailers-only
answer with `abort_grpc_status` when one is set (flag `FI`). The delay happens before the
request goes upstream, so it adds to the client's latency exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from ztunnel_py.http.filter import Filter, LocalReply, RequestContext

__all__ = ["ABORT_BODY", "FaultFilter"]

ABORT_BODY = "fault filter abort"


class FaultFilter(Filter):
    name = "fault"

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self._rand = rand

    def _hit(self, percent: float) -> bool:
        return percent > 0 and self._rand() * 100.0 < percent

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        route = ctx.route
        fault = route.fault if route is not None else None
        if fault is None:
            return None
        if fault.delay > 0 and self._hit(fault.delay_percent):
            ctx.flag("DI")
            await trio.sleep(fault.delay)
        if self._hit(fault.abort_percent):
            grpc = fault.abort_grpc_status or None
            status = fault.abort_status or (200 if grpc is not None else 503)
            return LocalReply(
                status, ABORT_BODY, flag="FI", details="fault_filter_abort", grpc_status=grpc
            )
        return None
