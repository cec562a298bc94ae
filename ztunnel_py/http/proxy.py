"""One request through the filter chain to an upstream and back: the engine's router.

`HttpProxy.handle` is the request handler a `ServerConnection` runs per request:

0. the path is normalized as Envoy does by default for Istio (`normalize.py`; an invalid one is
   `400`): routes, filters and the upstream all see the normalized path;
1. the app's `Resolver` says which routes apply (the waypoint: the routes of the service the
   HBONE tunnel was addressed to) and the first matching route is chosen;
2. the request filters run (authorization, user filters, ...); a `LocalReply` ends here;
3. the route acts: no route is `404` (`NR`), a direct response or a redirect is answered here,
   otherwise a backend is picked by weight, the route's rewrite and header edits are applied,
   and the request is forwarded;
4. forwarding tries an endpoint (`Resolver.target`, a different one on each retry when there is
   one), streams the request body while waiting for the response head, and retries as the
   route's (or Istio's default) retry policy says, replaying the body it kept (up to
   `RETRY_BUFFER` bytes; a longer body is not retried);
5. the response head, body and trailers go back through the response filters; `on_log` runs last.

Failures answer as Envoy does, so dashboards and habits carry over: no healthy endpoint `503 no
healthy upstream` (`UH`), connect failure or reset before the response head `503 upstream
connect error or disconnect/reset before headers. reset reason: ...` (`UF`/`UR`/`UC`, `URX` when
retries ran out), route timeout, and a per-try timeout once attempts ran out, `504 upstream
request timeout` (`UT`); once the response has started, a failure resets the downstream stream
instead. Every upstream stream an attempt opened is given up when the attempt ends, however it
ends (finished, timed out, the client gone): reset if its exchange is unfinished, so the
upstream stops and the pool keeps only healthy connections.

Body filters may change a body's length: with any installed, `Content-Length` is dropped and
the body goes with the framing of unknown length (chunked on HTTP/1.1); they see `end=True`
on the last piece exactly once (an empty piece when the end came alone).

A gRPC request gets local replies as gRPC trailers-only responses (HTTP 200 with `grpc-status`
mapped from the HTTP status).

HTTP/1.1 upgrades (WebSocket): the request goes to the upstream over HTTP/1.1 with its
`Upgrade` header; a `101` switches both connections to raw bytes, relayed both ways.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

import trio

from ztunnel_py.http.connection import ClientStream, ServerStream, StreamError
from ztunnel_py.http.events import Switched
from ztunnel_py.http.filter import Downstream, FilterChain, LocalReply, RequestContext
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead, strip_hop_by_hop
from ztunnel_py.http.mirror import Mirrors
from ztunnel_py.http.normalize import InvalidPath, normalize_path
from ztunnel_py.http.outlier import LocalOrigin
from ztunnel_py.http.routing import (
    apply_header_ops,
    match_route,
    pick_backend,
    redirect_location,
    rewrite_request,
)
from ztunnel_py.http.upstream import (
    UpstreamConnectError,
    UpstreamOverflow,
    UpstreamPool,
    UpstreamTarget,
)
from ztunnel_py.model.http import Backend, RetryPolicy, Route
from ztunnel_py.transport.relay import RelayError, relay

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_RETRY", "RETRY_BUFFER", "HttpProxy", "Resolver", "grpc_status_for"]

# Istio's retry policy for routes that set none (pilot's route/retry DefaultPolicy).
DEFAULT_RETRY = RetryPolicy(
    attempts=2,
    retry_on=(
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
        "retriable-status-codes",
    ),
    retriable_status_codes=(503,),
)
# Request body bytes kept for replay on a retry (Envoy's per-request buffer limit default).
RETRY_BUFFER = 1024 * 1024
_BACKOFF_BASE = 0.025
_BACKOFF_MAX = 0.25
# A response replaced by a retry is read to its end (so an HTTP/1.1 connection stays reusable)
# when it is this short and quick; otherwise its stream is reset.
_DISCARD_LIMIT = 64 * 1024
_DISCARD_TIME = 1.0
_GRPC_CODES = {"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8"}
_GRPC_CODES.update({"internal": "13", "unavailable": "14"})


def grpc_status_for(http_status: int) -> int:
    """The gRPC status a local HTTP reply maps to (Envoy's httpToGrpcStatus)."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(
        http_status, 2
    )


def is_grpc(head: RequestHead) -> bool:
    return (head.headers.get("content-type") or "").startswith("application/grpc")


class Resolver(Protocol):
    """What the app tells the engine about a request's destination."""

    def routes(self, ctx: RequestContext) -> Sequence[Route]:
        """The routes that apply to `ctx.request` (also set `ctx.service` and `ctx.port`)."""
        ...

    def target(
        self, ctx: RequestContext, backend: Backend, exclude: Collection[str], *, http1: bool
    ) -> UpstreamTarget | None:
        """An endpoint of `backend`, preferably not one of `exclude` (addresses already
        tried); None when it has no healthy endpoint. `http1` forces HTTP/1.1 upstream (an
        upgrade)."""
        ...


@dataclass(slots=True)
class _Body:
    """The request body as forwarded, kept for replay while it fits `RETRY_BUFFER`."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False
    overflowed: bool = False
    trailers: Headers | None = None
    # the route timeout's scope: it runs from the end of the request (Envoy's route timeout
    # "spans between the point at which the entire downstream request has been processed and
    # when the upstream response has been completely processed")
    deadline: trio.CancelScope | None = None
    timeout: float = math.inf
    # runs once the request is complete (mirroring it)
    on_complete: Callable[[_Body], None] | None = None

    def finish(self) -> None:
        """The request is complete: the route timeout starts, the mirrors go."""
        if self.deadline is not None and self.deadline.deadline == math.inf:
            self.deadline.deadline = trio.current_time() + self.timeout
        callback, self.on_complete = self.on_complete, None
        if callback is not None:
            callback(self)

    def keep(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(chunk)
        if self.size > RETRY_BUFFER:
            self.overflowed = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)

    @property
    def replayable(self) -> bool:
        return not self.overflowed


class _Retry(Exception):
    """An attempt failed in a way the policy may retry: why, and the flag if it is final."""

    def __init__(
        self,
        condition: str,
        reason: str,
        flag: str,
        status: int = 503,
        local: LocalOrigin | None = None,
    ) -> None:
        super().__init__(reason)
        self.condition = condition
        self.reason = reason
        self.flag = flag
        self.status = status
        # how outlier detection counts it (None: a response, or not the endpoint's doing)
        self.local = local
        self.response: tuple[ClientStream, ResponseHead] | None = None


class HttpProxy:
    def __init__(
        self,
        chain: FilterChain,
        resolver: Resolver,
        pool: UpstreamPool,
        *,
        rand: Callable[[], float] = random.random,
        mirrors: Mirrors | None = None,
    ) -> None:
        self.chain = chain
        self.resolver = resolver
        self.pool = pool
        self._rand = rand
        # where route mirrors go (None: routes are not mirrored)
        self.mirrors = mirrors

    async def handle(self, s: ServerStream, downstream: Downstream) -> None:
        ctx = RequestContext(s.request, downstream)
        try:
            await self._handle(s, ctx)
        except StreamError:
            pass
        finally:
            if s.peer_gone and not s.sent_end:
                # the client reset the stream or closed the connection before the end
                ctx.flag("DC")
            ctx.end = time.monotonic()
            ctx.request_body_bytes = s.body_bytes_in
            ctx.response_body_bytes = s.body_bytes_out
            try:
                self.chain.log(ctx)
            except Exception:
                log.exception("an HTTP filter's on_log failed")

    async def _handle(self, s: ServerStream, ctx: RequestContext) -> None:
        req = ctx.request
        if req.method != "CONNECT":
            try:
                req.path = normalize_path(req.path)
            except InvalidPath:
                await self._local_reply(
                    s, ctx, LocalReply(400, details="path_normalization_failed"), run_filters=False
                )
                return
        if (req.headers.get("expect") or "").lower() == "100-continue":
            # answered here, as Envoy does by default: the client need not wait for upstream
            req.headers.remove("expect")
            if req.version != "HTTP/2":
                await s.send_head(ResponseHead(100))
        routes = self.resolver.routes(ctx)
        if req.method != "CONNECT":
            matched = match_route(routes, req, ctx.port)
            if matched is not None:
                ctx.route, ctx.route_match = matched
        try:
            reply = await self.chain.request_headers(ctx)
        except Exception:
            log.exception("an HTTP filter failed on request headers")
            reply = LocalReply(500, "internal error", details="filter_failed")
        if reply is not None:
            await self._local_reply(s, ctx, reply)
            return
        route = ctx.route
        if route is None:
            await self._local_reply(s, ctx, LocalReply(404, flag="NR", details="route_not_found"))
            return
        if route.direct_response is not None:
            d = route.direct_response
            await self._local_reply(s, ctx, LocalReply(d.status, d.body, details="direct_response"))
            return
        if route.redirect is not None:
            assert ctx.route_match is not None
            location = redirect_location(req, route.redirect, ctx.route_match)
            reply = LocalReply(route.redirect.status, headers=(("location", location),))
            await self._local_reply(s, ctx, reply)
            return
        backend = pick_backend(route.backends, self._rand)
        if backend is None or backend.unresolved:
            # Gateway API: a request sent to an invalid backend (a Service not found, a kind
            # not supported), or by a rule whose backends all have weight 0, answers 500
            await self._local_reply(s, ctx, LocalReply(500, details="no_valid_backend"))
            return
        ctx.backend = backend
        head = req.copy()
        if route.rewrite is not None and ctx.route_match is not None:
            rewrite_request(head, route.rewrite, ctx.route_match)
        apply_header_ops(head.headers, route.request_headers)
        upgrade = "upgrade" in head.headers and req.version != "HTTP/2"
        mirror = self._mirror(ctx, head, route, upgrade)
        apply_header_ops(head.headers, backend.request_headers)
        self._finish_head(s, head, upgrade)
        await self._forward(s, ctx, head, route, backend, upgrade=upgrade, mirror=mirror)

    def _finish_head(self, s: ServerStream, head: RequestHead, upgrade: bool) -> None:
        strip_hop_by_hop(head.headers, keep_upgrade=upgrade)
        if self.chain.touches_request_body and not s.read_done:
            # a filter may change the body's length: it goes with the framing of unknown length
            head.headers.remove("content-length")
        head.headers.setdefault("x-forwarded-proto", s.request.scheme)

    def _mirror(
        self, ctx: RequestContext, head: RequestHead, route: Route, upgrade: bool
    ) -> Callable[[_Body], None] | None:
        """What mirrors the request once it is complete: the route's mirrors that its
        percentage picks, sent the request as routed (before backend header edits)."""
        mirrors = self.mirrors
        if mirrors is None or upgrade or not route.mirrors:
            return None
        backends = [m.backend for m in route.mirrors if self._rand() * 100.0 < m.percent]
        if not backends:
            return None
        copy = head.copy()
        copy.headers.remove("upgrade")
        copy.headers.remove("content-length")
        strip_hop_by_hop(copy.headers)
        copy.headers.setdefault("x-forwarded-proto", ctx.request.scheme)

        def send(body: _Body) -> None:
            if body.replayable:
                mirrors.submit(ctx, copy, backends, body.chunks, body.trailers, route.timeout)

        return send

    # forwarding

    async def _forward(
        self,
        s: ServerStream,
        ctx: RequestContext,
        head: RequestHead,
        route: Route,
        backend: Backend,
        *,
        upgrade: bool,
        mirror: Callable[[_Body], None] | None = None,
    ) -> None:
        policy = route.retries if route.retries is not None else DEFAULT_RETRY
        tried: list[str] = []
        last: _Retry | None = None
        target: UpstreamTarget | None = None
        timeout = route.timeout or math.inf
        # the route timeout's scope (none without a timeout, Istio's default: a scope per
        # request costs as much as routing it)
        deadline = trio.CancelScope() if timeout != math.inf else None
        with deadline if deadline is not None else contextlib.nullcontext():
            body = _Body(
                complete=s.read_done, deadline=deadline, timeout=timeout, on_complete=mirror
            )
            if body.complete:
                body.finish()
            for attempt in range(policy.attempts + 1):
                retrying = target.cluster if target is not None else None
                if retrying is not None:
                    # the cluster's retry budget (DestinationRule maxRetries / retryBudget)
                    if not retrying.can_retry():
                        retrying.stats["upstream_rq_retry_overflow"] += 1
                        ctx.flag("UO")
                        break
                    retrying.retry_started()
                try:
                    if last is not None and last.response is not None:
                        # dropped only now that the retry may go: refused by the budget, the
                        # response goes to the client
                        await _discard(last.response[0])
                        last.response = None
                    if attempt:
                        await trio.sleep(self._backoff(attempt))
                    target = self.resolver.target(ctx, backend, tried, http1=upgrade)
                    if target is None:
                        if last is None:
                            await self._local_reply(
                                s,
                                ctx,
                                LocalReply(
                                    503,
                                    "no healthy upstream",
                                    flag="UH",
                                    details="no_healthy_upstream",
                                ),
                            )
                            return
                        break
                    tried.append(target.address)
                    ctx.upstream_host = target.address
                    ctx.upstream_info = target.info
                    ctx.attempts = attempt + 1
                    try:
                        await self._attempt(s, ctx, head, target, body, policy, upgrade=upgrade)
                        return
                    except _Retry as r:
                        last = r
                        can_retry = (
                            attempt < policy.attempts
                            and body.replayable
                            and _retry_allowed(policy, r.condition)
                        )
                        if not can_retry:
                            break
                finally:
                    if retrying is not None:
                        retrying.retry_ended()
        if deadline is not None and deadline.cancelled_caught:
            if target is not None and target.cluster is not None:
                # Envoy counts the request in flight at the route timeout as a timeout
                cluster = target.cluster
                cluster.report_local(target.address, LocalOrigin.TIMEOUT, cluster.clock())
            ctx.flag("UT")
            if s.response_started:
                s.reset()
                return
            await self._local_reply(
                s,
                ctx,
                LocalReply(504, "upstream request timeout", details="upstream_response_timeout"),
            )
            return
        assert last is not None
        if ctx.attempts > 1 and "UO" not in ctx.response_flags:
            ctx.flag("URX")
        if last.response is not None:
            # retries ran out on a retriable status: that response goes to the client
            up, resp_head = last.response
            try:
                await self._respond(s, ctx, up, resp_head)
            finally:
                up.reset()
            return
        ctx.flag(last.flag)
        if last.condition == "per-try-timeout":
            await self._local_reply(
                s,
                ctx,
                LocalReply(504, "upstream request timeout", details="upstream_per_try_timeout"),
            )
            return
        await self._local_reply(
            s,
            ctx,
            LocalReply(
                last.status,
                "upstream connect error or disconnect/reset before headers. reset reason: "
                + last.reason,
                # Envoy tells the client a request was dropped by a circuit breaker
                headers=(("x-envoy-overloaded", "true"),) if last.condition == "overflow" else (),
                details=f"upstream_reset_before_response_started{{{last.reason}}}",
            ),
        )

    def _backoff(self, attempt: int) -> float:
        # Envoy: fully jittered exponential back-off from 25 ms, capped at 250 ms
        return float(self._rand() * min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** (attempt - 1)))

    async def _attempt(
        self,
        s: ServerStream,
        ctx: RequestContext,
        head: RequestHead,
        target: UpstreamTarget,
        body: _Body,
        policy: RetryPolicy,
        *,
        upgrade: bool,
    ) -> None:
        no_body = body.complete and not body.chunks and body.trailers is None
        try:
            try:
                up = await self.pool.open_stream(target, head, end_stream=no_body)
            except UpstreamOverflow as e:
                # not retried (Envoy never retries an overflow), not the endpoint's fault
                raise _Retry("overflow", "overflow", "UO") from e
            except UpstreamConnectError as e:
                raise _Retry(
                    "connect-failure", "connection failure", "UF", local=LocalOrigin.CONNECT_FAILED
                ) from e
            except StreamError as e:
                condition = "refused-stream" if e.refused else "reset"
                raise _Retry(condition, "remote reset", "UR", local=LocalOrigin.RESET) from e
        except _Retry as r:
            self._report(target, r)
            raise
        per_try = policy.per_try_timeout or math.inf
        # `up` is given up when this attempt ends however it ends (a timeout, the client gone):
        # reset if its exchange is unfinished, else only freed; unless a retriable response in
        # it is handed on
        handed_on = False
        try:
            if no_body:
                # nothing to send alongside: no task for the request body
                outcome, failure, handed_on = await self._exchange(
                    s, ctx, up, target, policy, per_try
                )
            else:
                # Nothing is raised inside the nursery (trio would wrap it in an
                # ExceptionGroup): the outcome is kept and acted on once the request-body task
                # is done or cancelled.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_body, s, up, ctx, body)
                    outcome, failure, handed_on = await self._exchange(
                        s, ctx, up, target, policy, per_try
                    )
                    # the exchange is over (or will be retried): a request body still arriving
                    # is not needed any more
                    nursery.cancel_scope.cancel()
        finally:
            if not handed_on:
                up.reset()
        if failure is not None:
            raise failure
        if isinstance(outcome, _Retry):
            raise outcome
        if isinstance(outcome, Switched):
            await self._switch(s, ctx, up, outcome)

    async def _exchange(
        self,
        s: ServerStream,
        ctx: RequestContext,
        up: ClientStream,
        target: UpstreamTarget,
        policy: RetryPolicy,
        per_try: float,
    ) -> tuple[ResponseHead | Switched | _Retry, StreamError | None, bool]:
        """Wait for the response head and forward the response unless it is to be retried:
        (the outcome, a failure forwarding it, whether `up` is handed on). Raises nothing."""
        outcome = await self._response_head(up, per_try)
        self._report(target, outcome)
        if isinstance(outcome, Switched):
            return outcome, None, True
        if isinstance(outcome, _Retry):
            return outcome, None, False
        condition = _status_condition(policy, outcome.status, outcome.headers.get("grpc-status"))
        if condition:
            retry = _Retry(condition, f"status {outcome.status}", "", outcome.status)
            retry.response = (up, outcome)
            return retry, None, True
        try:
            await self._respond(s, ctx, up, outcome)
        except StreamError as e:
            return outcome, e, False
        return outcome, None, False

    @staticmethod
    def _report(target: UpstreamTarget, outcome: ResponseHead | Switched | _Retry) -> None:
        """Tell the target's cluster (its outlier detection) how the attempt went."""
        cluster = target.cluster
        if cluster is None:
            return
        now = cluster.clock()
        if isinstance(outcome, ResponseHead):
            cluster.report_status(target.address, outcome.status, now)
        elif isinstance(outcome, _Retry) and outcome.local is not None:
            cluster.report_local(target.address, outcome.local, now)

    async def _response_head(
        self, up: ClientStream, per_try: float
    ) -> ResponseHead | Switched | _Retry:
        reset = LocalOrigin.RESET
        with trio.move_on_after(per_try) if per_try != math.inf else contextlib.nullcontext():
            try:
                return await up.receive_head()
            except StreamError as e:
                if e.refused:
                    return _Retry(
                        "refused-stream", "remote refused stream reset", "UR", local=reset
                    )
                if e.reset:
                    return _Retry("reset", "remote reset", "UR", local=reset)
                return _Retry("reset", "connection termination", "UC", local=reset)
        return _Retry(
            "per-try-timeout", "per try timeout", "UT", status=504, local=LocalOrigin.TIMEOUT
        )

    async def _send_body(
        self, s: ServerStream, up: ClientStream, ctx: RequestContext, body: _Body
    ) -> None:
        try:
            for kept in body.chunks:
                await up.send_data(kept)
            if body.complete:
                await up.send_end(body.trailers)
                return
            while True:
                chunk, last = await _next_chunk(s)
                chunk = await self.chain.request_body(ctx, chunk, last)
                body.keep(chunk)
                if last:
                    break
                await up.send_data(chunk)
            trailers = s.trailers
            if trailers is not None:
                await self.chain.request_trailers(ctx, trailers)
            body.trailers = trailers
            body.complete = True
            body.finish()
            await _send_last(up, chunk, trailers)
        except StreamError:
            # either side went away; the response side notices and reports it
            return
        except Exception:
            log.exception("an HTTP filter failed on the request body")
            up.reset()

    async def _respond(
        self, s: ServerStream, ctx: RequestContext, up: ClientStream, head: ResponseHead
    ) -> None:
        ctx.response = head
        route, backend = ctx.route, ctx.backend
        if route is not None:
            apply_header_ops(head.headers, route.response_headers)
        if backend is not None:
            apply_header_ops(head.headers, backend.response_headers)
        for name, value in ctx.upstream_response_headers:
            head.headers.add(name, value)
        if is_grpc(ctx.request):
            ctx.grpc_status = head.headers.get("grpc-status")
        try:
            reply = await self.chain.response_headers(ctx)
        except Exception:
            log.exception("an HTTP filter failed on response headers")
            reply = LocalReply(500, "internal error", details="filter_failed")
        if reply is not None:
            up.reset()
            await self._local_reply(s, ctx, reply, run_filters=False)
            return
        strip_hop_by_hop(head.headers)
        ended = up.read_done
        if self.chain.touches_response_body and not ended:
            # a filter may change the body's length
            head.headers.remove("content-length")
        # the head waits for the body's first piece when that is here already and no filter can
        # hold it up: one write downstream for both
        together = (
            up.body_ready
            and not self.chain.touches_response_body
            and not self.chain.touches_response_trailers
        )
        try:
            await s.send_head(head, end_stream=ended, flush=not together)
        except StreamError:
            up.reset()
            raise
        if ended:
            return
        try:
            while True:
                chunk, last = await _next_chunk(up)
                chunk = await self.chain.response_body(ctx, chunk, last)
                if last:
                    break
                await s.send_data(chunk)
        except StreamError as e:
            if s.error is not None:
                up.reset()
                raise
            # the upstream failed mid-body: the client must not take a cut body as complete
            ctx.flag("UR")
            ctx.details = f"upstream_reset_after_response_started{{{e.reason}}}"
            s.reset()
            return
        trailers = up.trailers
        if trailers is not None:
            if ctx.grpc_status is None and is_grpc(ctx.request):
                ctx.grpc_status = trailers.get("grpc-status")
            await self.chain.response_trailers(ctx, trailers)
        await _send_last(s, chunk, trailers)

    async def _switch(
        self, s: ServerStream, ctx: RequestContext, up: ClientStream, got: Switched
    ) -> None:
        head = got.head or ResponseHead(101)
        ctx.response = head
        downstream, client_early = await s.switch(head)
        upstream, _ = up.raw()
        try:
            if got.trailing:
                await downstream.send_all(got.trailing)
            if client_early:
                await upstream.send_all(client_early)
            await relay(downstream, upstream)
        except (RelayError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            ctx.flag("UC")

    # local replies

    async def _local_reply(
        self, s: ServerStream, ctx: RequestContext, reply: LocalReply, *, run_filters: bool = True
    ) -> None:
        ctx.flag(reply.flag)
        if reply.details:
            ctx.details = reply.details
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        if is_grpc(ctx.request) and (reply.status >= 300 or reply.grpc_status is not None):
            code = (
                reply.grpc_status
                if reply.grpc_status is not None
                else grpc_status_for(reply.status)
            )
            headers = Headers([("content-type", "application/grpc"), ("grpc-status", str(code))])
            if body:
                headers.add("grpc-message", quote(body.decode("utf-8", "replace"), safe=" "))
            for name, value in reply.headers:
                headers.add(name, value)
            head = ResponseHead(200, headers)
            ctx.grpc_status = str(code)
            body = b""
        else:
            headers = Headers(reply.headers)
            if body:
                headers.setdefault("content-type", "text/plain")
            headers.set("content-length", str(len(body)))
            head = ResponseHead(reply.status, headers)
        ctx.response = head
        if run_filters:
            try:
                again = await self.chain.response_headers(ctx)
            except Exception:
                log.exception("an HTTP filter failed on a local reply")
                again = None
            if again is not None:
                await self._local_reply(s, ctx, again, run_filters=False)
                return
        if s.response_started:
            s.reset()
            return
        await s.send_head(head, end_stream=not body, flush=not body)
        if body:
            await s.send_data(body, end_stream=True)


async def _discard(up: ClientStream) -> None:
    """Drop a response that will not be forwarded: read it to its end if that is quick, so its
    connection can be reused, then give the stream up."""
    size = 0
    try:
        with trio.move_on_after(_DISCARD_TIME), contextlib.suppress(StreamError):
            while size <= _DISCARD_LIMIT and (chunk := await up.read_body()) is not None:
                size += len(chunk)
    finally:
        up.reset()


async def _next_chunk(stream: ServerStream | ClientStream) -> tuple[bytes, bool]:
    """The next piece of a received body and whether it is the last (an empty last piece when
    the end came alone). Body filters see `end=True` exactly once."""
    chunk = await stream.read_body()
    if chunk is None:
        return b"", True
    if stream.at_end:
        await stream.read_body()
        return chunk, True
    return chunk, False


async def _send_last(
    stream: ServerStream | ClientStream, chunk: bytes, trailers: Headers | None
) -> None:
    """The last piece of a body with the end of the message: in one frame when there are no
    trailers."""
    if trailers is None:
        await stream.send_data(chunk, end_stream=True)
        return
    await stream.send_data(chunk)
    await stream.send_end(trailers)


def _retry_allowed(policy: RetryPolicy, condition: str) -> bool:
    """Envoy's retry decision for a failed attempt: a reset of any kind (a connect failure, a
    refused stream, a per-try timeout included) is retried under `reset`, `5xx` and
    `gateway-error`; a connect failure also under `connect-failure`, a refused stream under
    `refused-stream`."""
    on = policy.retry_on
    if condition in ("connect-failure", "reset", "refused-stream", "per-try-timeout"):
        if "reset" in on or "5xx" in on or "gateway-error" in on:
            return True
        return condition in ("connect-failure", "refused-stream") and condition in on
    return condition in on


def _status_condition(policy: RetryPolicy, status: int, grpc: str | None) -> str:
    """The retry_on condition a response meets, or "" (only conditions the policy lists)."""
    on = policy.retry_on
    if "5xx" in on and status >= 500:
        return "5xx"
    if "gateway-error" in on and status in (502, 503, 504):
        return "gateway-error"
    if "retriable-status-codes" in on and status in policy.retriable_status_codes:
        return "retriable-status-codes"
    if "retriable-4xx" in on and status == 409:
        return "retriable-4xx"
    if grpc is not None:
        for name, code in _GRPC_CODES.items():
            if name in on and grpc == code:
                return name
    return ""
