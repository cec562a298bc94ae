"""The control plane's HTTP monitoring server (:15014): `/ready`, `/metrics` and debug views.

A small threaded HTTP server (the control plane is thread-based, like grpcio). Routes are GET
only: `/ready` (200 once `ready()` says so, else 503), `/metrics` (Prometheus text from the
registry), JSON views added with `add_json` (for example `/debug/xds`) and views of the query
string added with `add_query_view` (istiod's `/debug/syncz`, `/debug/config_dump?proxyID=`),
which choose their status and answer JSON or, for a text, plain text. A view that fails answers
500 with the error; the server keeps running.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ztunnel_py.model.address import SocketAddr

log = logging.getLogger("ztunnel_py.controlplane.monitoring")


class _HTTPServer6(ThreadingHTTPServer):
    # socketserver binds an AF_INET socket unless the class says otherwise.
    address_family = socket.AF_INET6


class MonitoringServer:
    def __init__(
        self,
        address: SocketAddr,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._views: dict[str, Callable[[Mapping[str, str]], tuple[int, Any]]] = {}
        handler = _handler_class(self)
        ip = address.ip
        server = _HTTPServer6 if isinstance(ip, ipaddress.IPv6Address) else ThreadingHTTPServer
        self._httpd = server((str(ip), address.port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self._httpd.server_address[1]
        return port

    def add_json(self, path: str, view: Callable[[], Any]) -> None:
        """Serve `view()` as JSON at `path`."""
        self.add_query_view(path, lambda _query: (200, view()))

    def add_query_view(
        self, path: str, view: Callable[[Mapping[str, str]], tuple[int, Any]]
    ) -> None:
        """Serve `view(query)` at `path`: (status, a text or a JSON value); a query parameter
        given twice counts with its last value."""
        if path in self._views or path in ("/ready", "/metrics"):
            raise ValueError(f"monitoring path {path} is already served")
        self._views[path] = view

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="monitoring", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        path, _, raw_query = path.partition("?")
        if path == "/ready":
            if self._ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        view = self._views.get(path)
        if view is None:
            paths = ", ".join(["/ready", "/metrics", *sorted(self._views)])
            return 404, "text/plain", f"not found; try {paths}\n".encode()
        query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        try:
            status, value = view(query)
            if isinstance(value, str):
                return status, "text/plain", value.encode()
            body = json.dumps(value, indent=1, sort_keys=True, default=str)
        except Exception as e:
            log.exception("monitoring view %s failed", path)
            return 500, "text/plain", f"{path} failed: {e!r}\n".encode()
        return status, "application/json", body.encode() + b"\n"


def _handler_class(server: MonitoringServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = server.respond(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
