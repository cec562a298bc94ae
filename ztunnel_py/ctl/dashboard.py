"""`ztunnel-py dashboard`: the live service topology page (Kiali's graph, for our mesh).

A small HTTP server (the admin server's, on trio) serving the page (`static/topology.html` and
`topology.js`: plain JavaScript drawing SVG, shipped in the package, nothing from a CDN) and two
JSON endpoints it polls:

- `/api/graph`: the graph of `topology.build_graph` over `topology.QUERIES`, evaluated on the
  mesh's Prometheus (a testbed's, reached in its namespace, or `--prometheus URL`), or, without
  one (or with `--scrape`), computed from the agents' and waypoints' own `/metrics`
  (`scrape.py`: a testbed's, or `--metrics HOST:PORT`);
- `/api/node?id=wl:<namespace>/<name>`: the side panel of a workload, from the `/config_dump` of
  the node agents (a testbed's nodes, or `--agent HOST:PORT`): the agent whose certificates
  hold the workload's identity is the one on its node.

Queries and dumps are blocking (HTTP into other namespaces): they run in worker threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any

import trio

from ztunnel_py.admin.http import Request, Response, Router, serve_http
from ztunnel_py.ctl import fetch, scrape, topology
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import METRICS_PORT
from ztunnel_py.telemetry import promql
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed

log = logging.getLogger(__name__)

DEFAULT_LISTEN = SocketAddr("127.0.0.1", 20001)  # Kiali's port
REFRESH_SECONDS = 3
_STATIC = {
    "/": ("topology.html", "text/html; charset=utf-8"),
    "/topology.js": ("topology.js", "text/javascript; charset=utf-8"),
}


Results = Callable[[list[str]], Mapping[str, Sequence[promql.Sample]]]


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the metrics and the agents' dumps come from."""

    results: Results  # the samples of each of topology.QUERIES; problems appended to the list
    agents: Sequence[str]  # testbed node names or HOST:PORT of admin ports
    prefix: str
    describe: str

    def graph(self) -> dict[str, Any]:
        errors: list[str] = []
        graph = topology.build_graph(self.results(errors))
        return {
            **graph,
            "source": self.describe,
            "generatedAt": time.time(),
            "refreshSeconds": REFRESH_SECONDS,
            "errors": errors,
        }

    def node(self, node_id: str) -> tuple[int, dict[str, Any]]:
        namespace, _, name = node_id.removeprefix("wl:").partition("/")
        if not node_id.startswith("wl:") or not name:
            return 400, {"error": f"not a workload node id: {node_id!r}"}
        best: dict[str, Any] | None = None
        errors: list[str] = []
        for agent in self.agents:
            try:
                dump = fetch.get_json(agent, "/config_dump", prefix=self.prefix)
            except fetch.FetchError as e:
                errors.append(str(e))
                continue
            details = topology.node_details({"name": name, "namespace": namespace}, dump)
            if details["workload"] is None:
                continue
            details["agent"] = agent
            if best is None or (details["certificates"] and not best["certificates"]):
                best = details
        if best is None:
            return 404, {"error": f"no agent knows workload {namespace}/{name}", "errors": errors}
        return 200, {"id": node_id, **best, "errors": errors}


def router(sources: Sources) -> Router:
    routes = Router()
    for path, (filename, content_type) in _STATIC.items():
        body = resources.files("ztunnel_py.ctl").joinpath("static", filename).read_bytes()
        routes.add("GET", path, _static(body, content_type))

    async def graph(_: Request) -> Response:
        value = await trio.to_thread.run_sync(sources.graph)
        return _json(200, value)

    async def node(request: Request) -> Response:
        node_id = request.query.get("id", [""])[-1]
        status, value = await trio.to_thread.run_sync(sources.node, node_id)
        return _json(status, value)

    routes.add("GET", "/api/graph", graph)
    routes.add("GET", "/api/node", node)
    return routes


def _static(body: bytes, content_type: str) -> Callable[[Request], Any]:
    async def serve(_: Request) -> Response:
        return Response(200, body, content_type=content_type)

    return serve


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value).encode(), content_type="application/json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prefix",
        default="zt-",
        help="the testbed whose Prometheus and node agents to read (default: zt-)",
    )
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="read metrics from this Prometheus instead of the testbed's (http://HOST:PORT)",
    )
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a node agent's admin address for the side panel (repeatable; default: the "
        "testbed's nodes)",
    )
    p.add_argument(
        "--scrape",
        action="store_true",
        help="scrape the testbed's agents and waypoints directly even when it runs Prometheus",
    )
    p.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="outside a testbed, without Prometheus: a proxy's metrics address to scrape "
        "(repeatable)",
    )
    p.add_argument(
        "--listen",
        type=lambda text: SocketAddr.parse(text),
        default=DEFAULT_LISTEN,
        help=f"where to serve the page (default {DEFAULT_LISTEN})",
    )


def prometheus_results(query: Callable[[str], list[promql.Sample]]) -> Results:
    def results(errors: list[str]) -> dict[str, list[promql.Sample]]:
        out: dict[str, list[promql.Sample]] = {}
        for name, text in topology.QUERIES.items():
            try:
                out[name] = query(text)
            except promql.PrometheusError as e:
                errors.append(f"{name}: {e}")
        return out

    return results


def _fetch(target: str, prefix: str) -> Callable[[], str]:
    return lambda: fetch.request(
        target, "GET", "/metrics", prefix=prefix, port=METRICS_PORT
    ).decode()


def sources_from_args(args: argparse.Namespace) -> Sources:
    if args.prometheus:
        url = args.prometheus
        query = partial(promql.instant_query, url)
        return Sources(prometheus_results(query), args.agent, args.prefix, f"Prometheus at {url}")
    if args.metrics:
        targets = [scrape.Target(t, {"instance": t}, _fetch(t, args.prefix)) for t in args.metrics]
        described = f"scraping {', '.join(args.metrics)}"
        return Sources(scrape.Scraper(targets).results, args.agent, args.prefix, described)
    bed = Testbed.attach(args.prefix)
    agents = list(args.agent) or [node.name for node in bed.topology.nodes]
    status = bed.status()
    if status.prometheus is not None and not args.scrape:
        described = f"testbed {args.prefix} Prometheus"
        return Sources(prometheus_results(bed.prometheus_query), agents, args.prefix, described)
    # Without Prometheus: every agent's and waypoint's metrics port, in its namespace.
    targets = [scrape.Target(n.name, {}, _fetch(n.name, args.prefix)) for n in status.nodes]
    targets += [
        scrape.Target(w.pod, {"pod": w.pod, "namespace": w.namespace}, _fetch(w.pod, args.prefix))
        for w in status.waypoints
    ]
    described = f"testbed {args.prefix}, scraping {len(targets)} proxies"
    return Sources(scrape.Scraper(targets).results, agents, args.prefix, described)


def main(args: argparse.Namespace) -> int:
    try:
        sources = sources_from_args(args)
    except TestbedError as e:
        log.error("%s (or give --prometheus URL)", e)
        return 1

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_http, router(sources), args.listen, name="dashboard")
            )
            host, port = listeners[0].socket.getsockname()[:2]
            address = SocketAddr(host, port)
            print(f"topology page on http://{address}/ ({sources.describe})", flush=True)

    trio.run(serve)
    return 0
