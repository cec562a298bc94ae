"""The Kubernetes source with the official client against an API server stand-in on
127.0.0.1 that replays recorded list responses and watch streams (chunked HTTP, as the real
API server sends them), including a 410 Gone that forces a relist and kinds whose CRDs are
not installed (404)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from ztunnel_py.controlplane.sources.kube import KubeSource
from ztunnel_py.controlplane.store import ConfigStore

FIXTURES = Path(__file__).parent.parent / "fixtures" / "controlplane" / "kube"
EMPTY_LIST = (
    b'{"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}'
)


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.closing = threading.Event()
        self.lists: dict[str, list[bytes]] = {
            "/api/v1/namespaces": [(FIXTURES / "namespaces-list.json").read_bytes()],
            "/api/v1/services": [(FIXTURES / "services-list.json").read_bytes()],
            "/api/v1/pods": [
                (FIXTURES / "pods-list.json").read_bytes(),
                (FIXTURES / "pods-relist.json").read_bytes(),
            ],
            "/apis/security.istio.io/v1/authorizationpolicies": [EMPTY_LIST],
        }
        self.watches: dict[str, list[list[bytes]]] = {
            "/api/v1/pods": [(FIXTURES / "pods-watch.jsonl").read_bytes().splitlines()],
            "/apis/security.istio.io/v1/authorizationpolicies": [
                (FIXTURES / "authorizationpolicies-watch.jsonl").read_bytes().splitlines()
            ],
        }
        self.requests: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        watching = query.get("watch") == ["true"]
        self.server.requests.append(f"{'WATCH' if watching else 'LIST'} {url.path}")
        if url.path not in self.server.lists:
            body = b'{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if not watching:
            bodies = self.server.lists[url.path]
            body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        streams = self.server.watches.get(url.path, [])
        lines = streams.pop(0) if streams else []
        for line in lines:
            self._chunk(line + b"\n")
            time.sleep(0.02)
        if not lines or b'"ERROR"' not in lines[-1]:
            # Stay connected, like a quiet watch, until the test ends.
            self.server.closing.wait(10)
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except OSError:
            return


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_list_watch_relist_through_the_official_client(api_server: FakeApiServer) -> None:
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{api_server.server_address[1]}"
    store = ConfigStore(report=False)
    source = KubeSource(store, client.ApiClient(config), batch_window=0.05, initial_sync_timeout=5)
    source.start()
    try:
        assert source.synced.wait(5)

        def pod_ips() -> dict[str, str]:
            return {w.name: str(w.addresses[0]) for w in store.current().workloads.values()}

        # After the recorded watch (add, ready, delete), the 410 Gone and the relist:
        wait_until(
            lambda: (
                pod_ips()
                == {
                    "web-6d8f7b9c5d-4xk2p": "10.244.1.6",
                    "web-6d8f7b9c5d-k8s2w": "10.244.1.9",
                    "web-6d8f7b9c5d-m3n4b": "10.244.2.11",
                }
            )
        )
        wait_until(lambda: "demo/web-allow" in store.current().policies)
        wait_until(lambda: store.diagnostics() == ())
        policy = store.current().policies["demo/web-allow"]
        assert len(policy.rules[0][1]) == 1 and len(policy.rules[0][1][0].principals) == 2
        web = store.current().services["demo/web.demo.svc.cluster.local"]
        assert str(web.vips[0].address) == "10.96.12.34"
        assert api_server.requests.count("LIST /api/v1/pods") == 2
        assert "LIST /apis/networking.istio.io/v1/serviceentries" in api_server.requests
    finally:
        start = time.monotonic()
        source.stop()
        stopped = time.monotonic() - start
        api_server.closing.set()
    assert stopped < 2, f"the watches took {stopped:.1f}s to stop"
