"""The metrics server (:15020): `/metrics` and `/stats/prometheus` from a CollectorRegistry.

OpenMetrics when the `Accept` header asks for it, else the Prometheus text format.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from ztunnel_py.admin.http import Request, Response, Router, serve_http
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import METRICS_PORT

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = SocketAddr("0.0.0.0", METRICS_PORT)


def metrics_router(registry: CollectorRegistry) -> Router:
    async def scrape(request: Request) -> Response:
        try:
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        except (ValueError, TypeError):
            # An Accept header prometheus_client cannot parse: fall back to plain text.
            encoder, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
        return Response(200, encoder(registry), content_type)

    router = Router()
    router.add("GET", "/metrics", scrape)
    router.add("GET", "/stats/prometheus", scrape)
    return router


async def serve_metrics(
    *,
    registry: CollectorRegistry,
    address: SocketAddr = DEFAULT_ADDRESS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_http(metrics_router(registry), address, name="metrics", task_status=task_status)
