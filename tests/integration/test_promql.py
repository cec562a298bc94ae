"""The PromQL client against a real Prometheus (Debian's binary) on loopback, scraping a
metrics page we serve: vectors, scalars, NaN, rejected queries and an unreachable server."""

from __future__ import annotations

import http.server
import math
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztunnel_py.telemetry.promql import PrometheusError, instant_query, is_ready

PAGE = (
    b"# TYPE istio_requests_total counter\n"
    b'istio_requests_total{response_code="200",destination_version="v2"} 40\n'
    b'istio_requests_total{response_code="500",destination_version="v2"} 10\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is missing: run scripts/install.sh"
    metrics = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=metrics.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"- {{job_name: app, static_configs: [{{targets: ['127.0.0.1:{metrics.server_port}']}}]}}\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root / "log", "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not instant_query_ok(url):
            assert proc.poll() is None, Path(root / "log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not scrape in 20 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        metrics.shutdown()


def instant_query_ok(url: str) -> bool:
    if not is_ready(url):
        return False
    return bool(instant_query(url, "istio_requests_total"))


def test_a_vector_comes_back_with_its_labels(prometheus: str) -> None:
    samples = instant_query(prometheus, "sum by (response_code) (istio_requests_total)")
    assert {s.labels["response_code"]: s.value for s in samples} == {"200": 40.0, "500": 10.0}
    ratio = instant_query(
        prometheus,
        'sum(istio_requests_total{response_code!~"5.*"}) / sum(istio_requests_total) * 100',
    )
    assert [(dict(s.labels), s.value) for s in ratio] == [({}, 80.0)]


def test_a_scalar_and_a_missing_value(prometheus: str) -> None:
    (scalar,) = instant_query(prometheus, "scalar(sum(istio_requests_total))")
    assert scalar.value == 50.0 and not scalar.missing
    (nan,) = instant_query(prometheus, "sum(istio_requests_total) * 0 / 0")
    assert math.isnan(nan.value) and nan.missing
    assert instant_query(prometheus, 'istio_requests_total{response_code="404"}') == []


def test_a_rejected_query_says_why(prometheus: str) -> None:
    with pytest.raises(PrometheusError, match=r"rejected the query \(bad_data\): .*parse error"):
        instant_query(prometheus, "sum(istio_requests_total")


def test_an_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match=r"Prometheus at .* is not reachable: .*refused"):
        instant_query(url, "up", timeout=2)
    assert not is_ready(url)
    with pytest.raises(PrometheusError, match="must be http://HOST:PORT"):
        instant_query("https://prometheus:9090", "up")
