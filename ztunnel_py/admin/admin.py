"""The admin server (localhost:15000): `/config_dump`, `/logging`, `/quitquitquit` and an index.

`/config_dump` is assembled from providers the app registers on a `ConfigDump` (the state's
`workloads`/`services`/`policies`, `certificates`, `workloadState`, `config`, `version`...), in
registration order; a section nobody provides is simply absent. The providers run when the dump
is asked for; the JSON is written as it is encoded (`jsonstream`), so a large dump never holds
the event loop, and the proxied connections on it, for more than a few milliseconds at a time.
`/logging` shows and changes the levels held by `telemetry.logs.LogLevels`, in ztunnel's syntax.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import trio

from ztunnel_py.admin.http import Request, Response, Router, serve_http
from ztunnel_py.admin.jsonstream import stream_json
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import ADMIN_PORT
from ztunnel_py.telemetry.logs import LevelSpecError, LogLevels

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = SocketAddr("127.0.0.1", ADMIN_PORT)


class ConfigDump:
    """Named sections of `/config_dump`, each produced on demand by a provider."""

    def __init__(self) -> None:
        self._providers: list[tuple[str | None, Callable[[], Any]]] = []

    def add_section(self, name: str, provider: Callable[[], Any]) -> None:
        """`provider()` is the JSON value of top-level key `name`."""
        self._providers.append((name, provider))

    def add_sections(self, provider: Callable[[], Mapping[str, Any]]) -> None:
        """`provider()` returns several top-level keys at once (e.g. `ProxyState.dump`)."""
        self._providers.append((None, provider))

    def render(self) -> dict[str, Any]:
        """Every section; a `LazyList` in it renders its elements only as they are written."""
        out: dict[str, Any] = {}
        for name, provider in self._providers:
            value = provider()
            if name is None:
                out.update(value)
            else:
                out[name] = value
        return out


def admin_router(
    config_dump: ConfigDump, log_levels: LogLevels, shutdown: Callable[[], None]
) -> Router:
    router = Router()

    async def index(_: Request) -> Response:
        lines = ["ztunnel-py admin", ""]
        lines += [f"{method:<5} {path}" for method, path in sorted(router.paths(), key=_by_path)]
        lines += [
            "",
            "POST /logging?level=<level> or ?level=<module>=<level>,... or ?reset",
            "levels: off, error, warn, info, debug, trace",
        ]
        return Response.text(200, "\n".join(lines) + "\n")

    async def dump(_: Request) -> Response:
        try:
            value = config_dump.render()
        except Exception as e:
            log.exception("config_dump failed")
            return Response.text(500, f"config_dump failed: {e}\n")
        return Response(200, content_type="application/json", stream=_logged(stream_json(value)))

    async def logging_levels(request: Request) -> Response:
        unknown = sorted(request.query.keys() - {"level", "reset"})
        if unknown:
            return Response.text(400, f"unknown parameter {unknown[0]!r}: use level or reset\n")
        if "reset" in request.query:
            log_levels.reset()
            return Response.text(200, f"log level reset to {log_levels.describe()}\n")
        if "level" in request.query:
            try:
                log_levels.set(",".join(request.query["level"]))
            except LevelSpecError as e:
                return Response.text(400, f"{e}\n")
            log.info("log level set to %s", log_levels.describe())
            return Response.text(200, f"new log level is {log_levels.describe()}\n")
        return Response.text(200, f"current log level is {log_levels.describe()}\n")

    async def quitquitquit(_: Request) -> Response:
        log.info("shutdown requested through /quitquitquit")
        return Response(200, b"shutting down\n", on_sent=shutdown)

    router.add("GET", "/", index)
    router.add("GET", "/config_dump", dump)
    router.add("POST", "/logging", logging_levels)
    router.add("POST", "/quitquitquit", quitquitquit)
    return router


async def _logged(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    # Past the headers a failure can only cut the response short: say why in the log.
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    except Exception:
        log.exception("config_dump failed while it was being written")
        raise


def _by_path(route: tuple[str, str]) -> str:
    return route[1]


async def serve_admin(
    *,
    config_dump: ConfigDump,
    log_levels: LogLevels,
    shutdown: Callable[[], None],
    address: SocketAddr = DEFAULT_ADDRESS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints until cancelled; `shutdown()` runs after /quitquitquit replies."""
    router = admin_router(config_dump, log_levels, shutdown)
    await serve_http(router, address, name="admin", task_status=task_status)
