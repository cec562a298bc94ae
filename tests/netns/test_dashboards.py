"""What an operator looks at, on a live testbed with traffic flowing: the profiling endpoints of
the agent, the waypoint and the control plane; every query of the Grafana dashboards in
deploy/dashboards/ through the testbed's Prometheus; and the topology page (`ztunnel-py
dashboard`) loaded in headless Chromium, whose drawn graph must hold the workloads, the
waypoint on the path, the service, mTLS edges with rates and p99, and a denied connection.

Set ZTUNNEL_PY_SAVE_SCREENSHOT=1 to copy the page's screenshot to docs/img/topology.png (the
one the README shows).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from tests.netns.test_canary import Load
from tests.netns.test_waypoint import (
    ECHO_VIP,
    GATEWAY,
    answered_by_waypoint,
    apps_namespace,
    requests,
    wait_until,
    waypoint,
)
from ztunnel_py.telemetry.promql import PrometheusError
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "dashboards").glob("*.json"))
CONTROL_PLANE = "http://10.250.0.2:15014"

# clients/curl-2 may not reach the echo pods at L4; through the waypoint (whose identity is in
# apps) its requests still get through.
DENY_CLIENTS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-clients, namespace: apps}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {namespaces: ["clients"]}}]
"""

# A policy change once Prometheus scrapes the control plane: the push it causes is what the
# control-plane dashboard's convergence and push-time percentiles are made of (the testbed's
# own configuration was pushed before the first scrape).
DENY_NOBODY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nobody, namespace: apps}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["nowhere"]}}]
"""

# Bounded background traffic: web-1 calls the echo service (through the waypoint) on a new
# connection every 50 ms (the canary tests' load); curl-2 calls it too, and echo-1's pod
# directly, which is denied.
CURL_LOAD = (
    "import socket, sys, time, urllib.request\n"
    "for _ in range(600):\n"
    "    try:\n"
    "        urllib.request.urlopen(f'http://{sys.argv[1]}/', timeout=5).read()\n"
    "    except OSError:\n"
    "        pass\n"
    "    try:\n"
    "        s = socket.create_connection((sys.argv[2], 8080), timeout=2)\n"
    "        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); s.recv(100); s.close()\n"
    "    except OSError:\n"
    "        pass\n"
    "    time.sleep(0.3)\n"
)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("db"), nodes=2, pods_per_node=2)
    loads: list[subprocess.Popen[bytes]] = []
    try:
        tb.apply(GATEWAY + "---\n" + apps_namespace(waypoint=True) + "---\n" + DENY_CLIENTS)
        wait_until(lambda: answered_by_waypoint(tb), "traffic to take the waypoint", 30)
        echo_1 = next(p for p in tb.status().pods if p.name == "echo-1").ip
        loads.append(Load(tb).proc)
        argv = tb.exec_argv("curl-2", [sys.executable, "-c", CURL_LOAD, ECHO_VIP, echo_1])
        loads.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(
            lambda: (
                has_data(tb, 'rate(istio_requests_total{reporter="waypoint"}[1m])')
                and has_data(
                    tb, 'rate(istio_tcp_connections_failed_total{response_flags="DENY"}[1m])'
                )
            ),
            "Prometheus to see requests and denied connections",
            60,
        )
        tb.apply(DENY_NOBODY)
        yield tb
    finally:
        for load in loads:
            load.terminate()
            load.wait(10)
        tb.down()


def has_data(bed: Testbed, query: str) -> bool:
    try:
        samples = bed.prometheus_query(query)
    except PrometheusError:
        return False
    return any(math.isfinite(s.value) for s in samples)


def get(bed: Testbed, where: str, url: str) -> tuple[int, str]:
    done = bed.exec(where, ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", url], 40)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_profiles_and_heap_snapshots_while_traffic_flows(bed: Testbed) -> None:
    wp = waypoint(bed)
    calls = {
        "agent": ("node1", "http://127.0.0.1:15000/debug/pprof/profile?seconds=3"),
        "waypoint": (wp.pod, "http://127.0.0.1:15000/debug/pprof/heap?seconds=3&top=10"),
        "controlplane": ("node1", f"{CONTROL_PLANE}/debug/pprof/profile?seconds=3&format=text"),
    }
    results: dict[str, tuple[int, str]] = {}
    threads = [
        threading.Thread(target=lambda n=name, w=where, u=url: results.update({n: get(bed, w, u)}))
        for name, (where, url) in calls.items()
    ]
    for t in threads:
        t.start()
    try:
        # while they run (they have started within a second): a second profile of the agent
        # is refused, and requests flow
        time.sleep(1.0)
        busy = get(bed, "node1", "http://127.0.0.1:15000/debug/pprof/heap?seconds=1")
        answers = requests(bed, "/", 30, interval=0.05)
    finally:
        for t in threads:
            t.join(60)
    assert busy[0] == 409, busy
    assert [a["status"] for a in answers] == [200] * 30
    status, folded = results["agent"]
    assert status == 200
    stacks = [line.rsplit(" ", 1) for line in folded.splitlines()]
    assert stacks and all(micros.isdigit() for _, micros in stacks)
    # the agent's event loop spent CPU in our proxy code while the requests flowed
    assert any(s.startswith("thread:MainThread;") and "ztunnel_py/" in s for s, _ in stacks)
    status, heap = results["waypoint"]
    assert status == 200 and heap.startswith("heap snapshot (traced for 3.")
    assert re.search(r"^\s+[\d.]+\s+\d+\s+\d+  \S+:\d+$", heap, re.M), heap
    status, text = results["controlplane"]
    assert status == 200 and text.startswith("CPU profile: 3.") and "self ms" in text


def resolve(expr: str, dashboard: dict[str, object]) -> str:
    """The query as Grafana sends it: variables at their defaults, the rate interval at 1m."""
    templating = dashboard["templating"]
    assert isinstance(templating, dict)
    for var in templating["list"]:
        if var["type"] != "datasource":
            expr = expr.replace("$" + var["name"], var["current"]["value"])
    return expr.replace("$__rate_interval", "1m")


def test_every_dashboard_query_returns_data(bed: Testbed) -> None:
    assert [p.name for p in DASHBOARDS] == ["agent.json", "controlplane.json", "waypoint.json"]
    queries: list[tuple[str, str, str]] = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = resolve(target["expr"], dashboard)
                assert "$" not in expr, expr
                queries.append((path.name, panel["title"], expr))
    assert len(queries) >= 30

    def missing() -> list[str]:
        return [
            f"{name} / {title}: {expr}" for name, title, expr in queries if not has_data(bed, expr)
        ]

    empty: list[str] = []

    def all_answer() -> bool:
        empty[:] = missing()
        return not empty

    try:
        wait_until(all_answer, "every dashboard query to answer with data", 40)
    except AssertionError:
        raise AssertionError("queries without data:\n" + "\n".join(empty)) from None


class _Drawn(HTMLParser):
    """The graph the page drew: each SVG node and edge group's data attributes, and the panel."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, dict[str, str]] = {}
        self.edges: dict[tuple[str, str], dict[str, str]] = {}
        self.panel_node = ""
        self.renders = 0
        self._in_panel = 0
        self.panel_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "g" and "node" in classes:
            self.nodes[a["data-id"]] = a
        elif tag == "g" and "edge" in classes:
            self.edges[(a["data-source"], a["data-target"])] = a
        elif tag == "body":
            self.renders = int(a.get("data-renders", "0"))
        elif tag == "aside":
            self.panel_node = a.get("data-node", "")
            self._in_panel = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "aside":
            self._in_panel = 0

    def handle_data(self, data: str) -> None:
        if self._in_panel:
            self.panel_text.append(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def dashboard(bed: Testbed, *args: str) -> Iterator[str]:
    """`ztunnel-py dashboard` for `bed` on a free loopback port; its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "ztunnel_py.cli", "dashboard", "--prefix", bed.prefix]
    server = subprocess.Popen(
        [*argv, "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        announced = server.stdout.readline()
        assert announced.startswith(f"topology page on http://127.0.0.1:{port}/"), announced
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",  # we are root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1400,620",
        # run the page's timers for 8 s of virtual time: two refreshes at least
        "--virtual-time-budget=8000",
        *args,
        url,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="scripts/install.sh installs chromium")
def test_the_topology_page_draws_the_live_graph_in_headless_chromium(
    bed: Testbed, tmp_path: Path
) -> None:
    with dashboard(bed) as base:
        url = f"{base}/#node=wl%3Aapps%2Fecho-1"
        dom = chromium(url, tmp_path / "chromium", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = tmp_path / "topology.png"
        taken = chromium(url, tmp_path / "chromium", f"--screenshot={shot}")
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    drawn = _Drawn()
    drawn.feed(dom.stdout)
    wp = waypoint(bed)
    waypoint_id = f"wl:apps/{wp.pod}"
    service = "svc:echo.apps.svc.cluster.local"
    assert drawn.renders >= 2  # it refreshed by itself
    kinds = {node_id: a["data-kind"] for node_id, a in drawn.nodes.items()}
    assert kinds == {
        "wl:apps/web-1": "workload",
        "wl:clients/curl-2": "workload",
        waypoint_id: "waypoint",
        service: "service",
        "wl:apps/echo-1": "workload",
        "wl:apps/echo-2": "workload",
    }
    for client in ("wl:apps/web-1", "wl:clients/curl-2"):
        hop = drawn.edges[(client, waypoint_id)]
        assert hop["data-protocol"] == "http" and hop["data-mtls"] == "true"
        assert float(hop["data-rps"]) > 0 and float(hop["data-error-rate"]) == 0
        assert float(hop["data-p99-ms"]) > 0 and float(hop["data-bytes-per-second"]) > 0
    assert float(drawn.edges[(waypoint_id, service)]["data-rps"]) > 0
    for pod in ("echo-1", "echo-2"):
        hop = drawn.edges[(service, f"wl:apps/{pod}")]
        assert hop["data-waypoint"] == waypoint_id and float(hop["data-rps"]) > 0
    denied = drawn.edges[("wl:clients/curl-2", "wl:apps/echo-1")]
    assert float(denied["data-denied-cps"]) > 0 and "denied" in denied["class"]
    # the side panel of echo-1, from node1's /config_dump
    panel = " ".join(drawn.panel_text)
    assert drawn.panel_node == "wl:apps/echo-1"
    assert "spiffe://cluster.local/ns/apps/sa/echo" in panel and "node1" in panel
    assert "apps/deny-clients (WorkloadSelector)" in panel and "Available" in panel
    if os.environ.get("ZTUNNEL_PY_SAVE_SCREENSHOT"):
        (ROOT / "docs" / "img").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "img" / "topology.png")


def test_without_prometheus_the_page_scrapes_the_agents_and_waypoints(bed: Testbed) -> None:
    with (
        dashboard(bed, "--scrape") as base,
        urllib.request.urlopen(f"{base}/api/graph", timeout=30) as answer,
    ):
        graph = json.load(answer)
    assert graph["errors"] == [] and graph["source"].endswith("scraping 3 proxies")
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    waypoint_id = f"wl:apps/{waypoint(bed).pod}"
    hop = edges[("wl:apps/web-1", waypoint_id)]
    assert hop["protocol"] == "http" and hop["rps"] > 0 and hop["mtls"]
    assert edges[("wl:clients/curl-2", "wl:apps/echo-1")]["deniedCps"] > 0
