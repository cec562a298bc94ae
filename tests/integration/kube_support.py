"""A stand-in for the Kubernetes API server on 127.0.0.1, for the official client: it replays
recorded list responses and watch streams (chunked HTTP, as the real API server sends them;
404 for kinds whose CRDs are not installed), answers TokenReviews from recorded answers, and
keeps Secrets and ConfigMaps written to it. Every request is recorded as `METHOD path` (LIST
and WATCH for GETs of collections), for the tests that check what the control plane asks."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

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
        # token -> the recorded TokenReview answer for it; unknown tokens are unauthenticated
        self.token_reviews: dict[str, dict[str, Any]] = {}
        self.review_bodies: list[dict[str, Any]] = []
        # "namespace/kind/name" -> object, for the Secrets and ConfigMaps the control plane writes
        self.objects: dict[str, dict[str, Any]] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def _json(self, code: int, value: dict[str, Any]) -> None:
        body = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self, code: int) -> None:
        self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code})

    def _body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        return value

    def _stored(self) -> str | None:
        """The key of a Secret or ConfigMap path (`/api/v1/namespaces/NS/KIND[/NAME]`)."""
        parts = urlparse(self.path).path.strip("/").split("/")
        stored = parts[4:5] in (["secrets"], ["configmaps"])
        if len(parts) in (5, 6) and parts[:3] == ["api", "v1", "namespaces"] and stored:
            return "/".join(parts[3:])
        return None

    def _listed_object(self, path: str) -> dict[str, Any] | None:
        """A single Namespace or Pod read by name, from the recorded lists ({} if absent);
        None for any other path."""
        parts = path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) not in (4, 6):
            return None
        if len(parts) == 6 and parts[4] != "pods":
            return None
        collection = "/api/v1/namespaces" if len(parts) == 4 else "/api/v1/pods"
        namespace = parts[3] if len(parts) == 6 else None
        for item in json.loads(self.server.lists[collection][0])["items"]:
            meta = item["metadata"]
            if meta["name"] == parts[-1] and meta.get("namespace") == namespace:
                return dict(item)
        return {}

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        self.server.requests.append(f"POST {path}")
        body = self._body()
        if path == "/apis/authentication.k8s.io/v1/tokenreviews":
            self.server.review_bodies.append(body)
            answer = self.server.token_reviews.get(body["spec"]["token"])
            status = answer or {"authenticated": False, "error": "invalid bearer token"}
            self._json(201, {**body, "status": status})
            return
        key = self._stored()
        if key is None:
            self._status(404)
            return
        key = f"{key}/{body['metadata']['name']}"
        if key in self.server.objects:
            self._status(409)
            return
        body["metadata"]["resourceVersion"] = "1"
        self.server.objects[key] = body
        self._json(201, body)

    def do_PUT(self) -> None:
        path = urlparse(self.path).path
        self.server.requests.append(f"PUT {path}")
        key, body = self._stored(), self._body()
        if key is None or key not in self.server.objects:
            self._status(404)
            return
        old = self.server.objects[key]["metadata"]["resourceVersion"]
        if body["metadata"].get("resourceVersion") != old:
            self._status(409)
            return
        body["metadata"]["resourceVersion"] = str(int(old) + 1)
        self.server.objects[key] = body
        self._json(200, body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        key = self._stored()
        if key is not None and key.count("/") == 2:
            self.server.requests.append(f"GET {url.path}")
            if key in self.server.objects:
                self._json(200, self.server.objects[key])
            else:
                self._status(404)
            return
        listed = self._listed_object(url.path)
        if listed is not None:
            self.server.requests.append(f"GET {url.path}")
            if listed:
                self._json(200, listed)
            else:
                self._status(404)
            return
        query = parse_qs(url.query)
        watching = query.get("watch") == ["true"]
        self.server.requests.append(f"{'WATCH' if watching else 'LIST'} {url.path}")
        if url.path not in self.server.lists:
            self._status(404)
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


@contextlib.contextmanager
def running_api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()


def api_client(server: FakeApiServer) -> Any:
    """The official client, pointed at the stand-in."""
    from kubernetes import client

    config = client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    return client.ApiClient(config)
