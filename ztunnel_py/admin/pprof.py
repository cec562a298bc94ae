"""`/debug/pprof/profile` and `/debug/pprof/heap` on the admin port (agent and waypoint).

The profile runs in a worker thread (`telemetry.profiling`, blocking for its `seconds`), so the
event loop keeps serving traffic meanwhile; if the client goes away the request is cancelled
and the profile stopped at once, which frees the one-at-a-time slot for the next caller.
"""

from __future__ import annotations

import threading

import trio

from ztunnel_py.admin.http import Handler, Request, Response, Router
from ztunnel_py.telemetry.profiling import HEAP_PATH, PROFILE_PATH, respond


def add_pprof(router: Router) -> None:
    router.add("GET", PROFILE_PATH, _handler(PROFILE_PATH))
    router.add("GET", HEAP_PATH, _handler(HEAP_PATH))


def _handler(path: str) -> Handler:
    async def handle(request: Request) -> Response:
        query = {name: values[-1] for name, values in request.query.items()}
        stop = threading.Event()
        try:
            status, text = await trio.to_thread.run_sync(
                respond, path, query, stop, abandon_on_cancel=True
            )
        finally:
            stop.set()
        return Response.text(status, text)

    return handle
