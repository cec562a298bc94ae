"""What every `bench compare` measurement needs from a running testbed: the client pod, the
processes of the mesh, the load generator run inside the client pod, and counters scraped from a
proxy's metrics endpoint inside its network namespace."""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ztunnel_py.bench import procstat
from ztunnel_py.bench.floor import FloorRelays
from ztunnel_py.bench.results import FLOOR, Plan
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import METRICS_PORT
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import HTTP_PORT

CLIENT_POD = "web-1"
SERVER_POD = "echo-2"


class Endpoints:
    """The client and server of every measurement, and the processes that carry their traffic."""

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed
        status = bed.status()
        self.server_ip = status.pod(SERVER_POD).ip
        self.server_http = SocketAddr(self.server_ip, HTTP_PORT)
        self.mode = status.mode
        self.controlplane_pid = status.controlplane.pid
        # name -> pid of every data-plane process
        self.proxies: dict[str, int] = {}
        for node in status.nodes:
            if node.agent.pid:
                self.proxies[f"agent {node.name}"] = node.agent.pid
        for pod in status.pods:
            if pod.sidecar is not None and pod.sidecar.pid:
                self.proxies[f"sidecar {pod.name}"] = pod.sidecar.pid
        self.floor: FloorRelays | None = None

    def use_floor(self, relays: FloorRelays) -> None:
        """Measure the floor relays (on a testbed without the mesh) as the data plane."""
        self.floor = relays
        self.mode = FLOOR
        self.proxies = relays.pids

    def loadgen(self, *argv: str, timeout: float) -> dict[str, Any]:
        """Run the load generator in the client pod; its JSON report."""
        done = self.bed.exec(
            CLIENT_POD,
            [sys.executable, "-m", "ztunnel_py.bench.loadgen", *argv],
            timeout=timeout,
        )
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise TestbedError(
                f"load generator in {CLIENT_POD} failed (status {done.returncode}): "
                f"{done.stderr.strip()[-500:] or done.stdout[:300]}"
            ) from None
        answered = report.get("requests", report.get("connections", 0))
        if not answered:
            raise TestbedError(
                f"no request from {CLIENT_POD} ({self.mode} mode) was answered: "
                f"{report.get('errors_by_reason') or done.stderr.strip()[-500:]}"
            )
        return report

    def cpu_times(self) -> tuple[float, float]:
        """User and system CPU seconds of the data-plane processes together."""
        times = [procstat.cpu_times(pid) for pid in self.proxies.values()]
        return sum(user for user, _ in times), sum(system for _, system in times)

    def rss_mib(self) -> float:
        return sum(procstat.rss_bytes(pid) for pid in self.proxies.values()) / 2**20

    def pss_mib(self) -> float:
        return sum(procstat.pss_bytes(pid) for pid in self.proxies.values()) / 2**20

    def controlplane_rss_mib(self) -> float:
        pid = self.controlplane_pid
        return procstat.rss_bytes(pid) / 2**20 if pid else 0.0


def latency_argv(
    plan: Plan, targets: Sequence[SocketAddr], seconds: float, warmup: float
) -> list[str]:
    """The load generator's arguments for the plan's open-loop load on `targets`."""
    argv = ["latency"]
    for target in targets:
        argv += ["--target", str(target)]
    return [
        *argv,
        "--path",
        f"/bytes/{plan.response_bytes}",
        "--rate",
        str(plan.rate),
        "--connections",
        str(plan.connections),
        "--duration",
        str(seconds),
        "--warmup",
        str(warmup),
    ]


def scrape_metrics(netns_name: str) -> str:
    """The /metrics text of the proxy serving :15020 in network namespace `netns_name`."""

    def scrape() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=5.0)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    return namespaces.run_in(netns_name, scrape)


def counter_total(netns_name: str, family: str, **labels: str) -> float:
    """The counter `family` (without `_total`) of the proxy serving :15020 in `netns_name`,
    summed over the samples carrying every one of `labels`."""
    total = 0.0
    for metric in text_string_to_metric_families(scrape_metrics(netns_name)):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total
