"""Request mirroring (VirtualService `mirror`/`mirrorPercentage` and `mirrors`, HTTPRoute
`RequestMirror`), as Envoy's request shadowing: a copy of the request goes to the mirror's
backend with `-shadow` appended to its authority's host (`echo:80` -> `echo-shadow:80`), and its
response is read and dropped.

Fire and forget: the copy leaves once the client's request is complete (its body is the one
kept for retries; a body too long for that buffer is not mirrored), in a task of its own, and
nothing it does reaches the client's exchange: not its status, not its time, not its errors.
It runs no filters and writes no access log line. Each copy that got an answer is handed to
`record` (when the proxy gives one) with its endpoint, status, time and sizes: a waypoint
counts it in the request metrics under the shadow host, which is what the canary's own proxy
reports in sidecar mode, so shadow traffic can be measured before any client depends on it
(`canary/`), while the service's counts stay the clients' requests. The
work it may cause is bounded: at most `MAX_IN_FLIGHT` copies at once per proxy (more are dropped
and counted), each given up after the route's timeout or `MIRROR_TIMEOUT`, whichever is
shorter, and its response read up to `MAX_RESPONSE` bytes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ztunnel_py.http.connection import StreamError
from ztunnel_py.http.filter import RequestContext
from ztunnel_py.http.filters.telemetry import head_size
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
from ztunnel_py.http.upstream import (
    UpstreamConnectError,
    UpstreamOverflow,
    UpstreamPool,
    UpstreamTarget,
)
from ztunnel_py.model.http import Backend

log = logging.getLogger(__name__)

__all__ = [
    "MAX_IN_FLIGHT",
    "MIRROR_TIMEOUT",
    "MirrorOutcome",
    "MirrorRecord",
    "Mirrors",
    "shadow_authority",
]

MAX_IN_FLIGHT = 64
MIRROR_TIMEOUT = 30.0
MAX_RESPONSE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MirrorOutcome:
    """A copy that was answered: where it went, what came back, how long it took."""

    target: UpstreamTarget
    status: int
    duration_ms: float
    request_bytes: int
    response_bytes: int


MirrorRecord = Callable[[RequestContext, MirrorOutcome], None]


class Targets(Protocol):
    def target(
        self, ctx: RequestContext, backend: Backend, exclude: Collection[str], *, http1: bool
    ) -> UpstreamTarget | None: ...


def shadow_authority(authority: str) -> str:
    """`host[:port]` with `-shadow` appended to the host (Envoy's shadowAppendedHost)."""
    colon = authority.rfind(":")
    if colon > authority.rfind("]") and authority[colon + 1 :].isdigit():
        return f"{authority[:colon]}-shadow{authority[colon:]}"
    return f"{authority}-shadow"


@dataclass(slots=True)
class _Copy:
    head: RequestHead
    backend: Backend
    timeout: float


class Mirrors:
    """The mirror copies of one proxy, run in `nursery` on `pool`'s connections."""

    def __init__(
        self,
        nursery: trio.Nursery,
        pool: UpstreamPool,
        resolver: Targets,
        record: MirrorRecord | None = None,
    ) -> None:
        self._nursery = nursery
        self._pool = pool
        self._resolver = resolver
        self._record = record
        self.in_flight = 0
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    def dump(self) -> dict[str, dict[str, int]]:
        """`/config_dump` section `mirrors`: copies in flight, sent, dropped, failed."""
        return {
            "mirrors": {
                "inFlight": self.in_flight,
                "sent": self.sent,
                "dropped": self.dropped,
                "failed": self.failed,
            }
        }

    def submit(
        self,
        ctx: RequestContext,
        head: RequestHead,
        backends: Sequence[Backend],
        body: Sequence[bytes],
        trailers: Headers | None,
        timeout: float | None,
    ) -> None:
        """Send a copy of `head` and `body` to each of `backends`, in the background."""
        for backend in backends:
            if self.in_flight >= MAX_IN_FLIGHT:
                self.dropped += 1
                continue
            copy = head.copy()
            copy.authority = shadow_authority(head.authority)
            mirror_ctx = RequestContext(copy, ctx.downstream, service=ctx.service, port=ctx.port)
            mirror_ctx.state = dict(ctx.state)
            limit = min(timeout or MIRROR_TIMEOUT, MIRROR_TIMEOUT)
            self.in_flight += 1
            self._nursery.start_soon(
                self._run, mirror_ctx, _Copy(copy, backend, limit), tuple(body), trailers
            )

    async def _run(
        self,
        ctx: RequestContext,
        copy: _Copy,
        body: tuple[bytes, ...],
        trailers: Headers | None,
    ) -> None:
        try:
            with trio.move_on_after(copy.timeout):
                target = self._resolver.target(ctx, copy.backend, (), http1=False)
                if target is None:
                    self.failed += 1
                    return
                began = trio.current_time()
                status, received = await self._exchange(target, copy.head, body, trailers)
                self.sent += 1
                if self._record is not None:
                    outcome = MirrorOutcome(
                        target,
                        status,
                        (trio.current_time() - began) * 1000,
                        head_size(copy.head) + sum(len(chunk) for chunk in body),
                        received,
                    )
                    self._record(ctx, outcome)
        except (StreamError, UpstreamConnectError, UpstreamOverflow) as e:
            self.failed += 1
            log.debug("mirror to %s failed: %s", copy.backend.cluster, e)
        except Exception:
            # a copy runs in the proxy's own nursery: whatever goes wrong stays with it
            self.failed += 1
            log.exception("mirror to %s failed", copy.backend.cluster)
        finally:
            self.in_flight -= 1

    async def _exchange(
        self,
        target: UpstreamTarget,
        head: RequestHead,
        body: tuple[bytes, ...],
        trailers: Headers | None,
    ) -> tuple[int, int]:
        """Send the copy, read its answer (up to MAX_RESPONSE): (status, bytes read)."""
        bodyless = not body and trailers is None
        up = await self._pool.open_stream(target, head, end_stream=bodyless)
        try:
            if not bodyless:
                for chunk in body:
                    await up.send_data(chunk)
                await up.send_end(trailers)
            answer = await up.receive_head()
            read = head_size(answer) if isinstance(answer, ResponseHead) else 0
            with contextlib.suppress(StreamError):
                while read <= MAX_RESPONSE and (received := await up.read_body()) is not None:
                    read += len(received)
        finally:
            up.reset()
        return (answer.status if isinstance(answer, ResponseHead) else 0), read
