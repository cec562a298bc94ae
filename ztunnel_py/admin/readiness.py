"""Readiness (:15021): `GET /healthz/ready` is 200 `ready` once every registered task is done.

Until then it is 500 `not ready, pending: <tasks>`, naming what the agent still waits for (for
example the first xDS ACK, or the workload proxy manager's first snapshot).
"""

from __future__ import annotations

import trio

from ztunnel_py.admin.http import Limits, Request, Response, Router, serve_http
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import READINESS_PORT

DEFAULT_ADDRESS = SocketAddr("0.0.0.0", READINESS_PORT)
# A probe sends one small request at once and reads one small answer.
LIMITS = Limits(
    idle_timeout=1.0,
    request_timeout=2.0,
    send_timeout=2.0,
    max_header_bytes=8192,
    max_body_bytes=0,
    max_connections=256,
)


class Readiness:
    def __init__(self) -> None:
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._known: set[str] = set()

    def register(self, name: str) -> str:
        """A task that must finish before the process is ready; returns `name`."""
        if name in self._known:
            raise ValueError(f"readiness task {name!r} is already registered")
        self._known.add(name)
        self._pending[name] = None
        return name

    def mark_ready(self, name: str) -> None:
        """Idempotent; raises ValueError for a name never registered (a wiring bug)."""
        if name not in self._known:
            raise ValueError(f"readiness task {name!r} was never registered")
        self._pending.pop(name, None)

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    @property
    def ready(self) -> bool:
        return not self._pending


def readiness_router(readiness: Readiness) -> Router:
    async def ready(_: Request) -> Response:
        if readiness.ready:
            return Response.text(200, "ready\n")
        return Response.text(500, f"not ready, pending: {', '.join(readiness.pending)}\n")

    router = Router()
    router.add("GET", "/healthz/ready", ready)
    return router


async def serve_readiness(
    *,
    readiness: Readiness,
    address: SocketAddr = DEFAULT_ADDRESS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    router = readiness_router(readiness)
    await serve_http(router, address, name="readiness", limits=LIMITS, task_status=task_status)
