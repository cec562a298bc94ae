"""The application every testbed pod runs: an HTTP server that says who answered and who asked.

`python -m ztunnel_py.testbed.podserver --pod NAME --namespace NS --node NODE [--port 8080]`
answers every GET with JSON `{"pod", "namespace", "node", "client", "path"}`, where `client` is
the peer address the server saw (`a.b.c.d:port` or `[v6]:port`). That makes routing (which
endpoint answered) and source preservation (which address the server saw) visible in one
request. HTTP/1.1 keep-alive is supported, so load generators can reuse connections. With
`--bind ::` it serves IPv4 and IPv6 on one socket (dual-stack pods) and still reports IPv4
clients as plain `a.b.c.d:port`.

`GET /bytes/N` (0 <= N <= 1 MiB) answers exactly N bytes of `application/octet-stream` instead:
the fixed-size response body of Istio's latency method (1 KiB, like nighthawk's
`response_body_size` or fortio's `?size=`). Its head and body go out in one write from a
preallocated body, and successful /bytes requests are not logged, so at benchmark rates the
server's cost stays that of answering. A malformed or too large N answers 400 with a text
message. Other requests are logged one line each on stderr. Answers go out with TCP_NODELAY, so
none waits for the client's delayed ACK.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import signal
import socket
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from ztunnel_py.model.address import SocketAddr, canonical_ip

BYTES_PREFIX = "/bytes/"
MAX_BYTES = 1 << 20
_SIZE = re.compile(r"[0-9]{1,7}")
# Zeros from calloc: pages become resident only once a response of that size is sent.
_BODY = memoryview(bytes(MAX_BYTES))


class PodHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a proxy that opens a burst of upstream connections
    # (16 at once when a load generator starts) would overflow it, and each dropped SYN costs
    # the caller a 1 s retransmission.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], pod: str, namespace: str, node: str) -> None:
        self.pod = pod
        self.namespace = namespace
        self.node = node
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, PodHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # One socket for both families: IPv4 peers arrive as ::ffff:a.b.c.d.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class PodHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body are separate writes, and on a keep-alive connection the body
    # would otherwise wait for the client's delayed ACK of the headers (~40 ms per request).
    disable_nagle_algorithm = True
    server: PodHTTPServer

    def do_GET(self) -> None:
        if self.path.startswith(BYTES_PREFIX):
            self._send_bytes(self.path[len(BYTES_PREFIX) :].partition("?")[0])
            return
        host, port = self.client_address[:2]
        client = SocketAddr(canonical_ip(ipaddress.ip_address(host)), port)
        body = json.dumps(
            {
                "pod": self.server.pod,
                "namespace": self.server.namespace,
                "node": self.server.node,
                "client": str(client),
                "path": self.path,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_bytes(self, size: str) -> None:
        n = int(size) if _SIZE.fullmatch(size) else -1
        if not 0 <= n <= MAX_BYTES:
            text = (
                f"/bytes/N wants N as a decimal number from 0 to {MAX_BYTES}, got {size[:40]!r}\n"
            )
            body = text.encode()
            self.send_response(400)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # Head and body in one write, so one segment carries a small response. send_response is
        # bypassed on purpose: it logs every request.
        close = "Connection: close\r\n" if self.close_connection else ""
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {n}\r\n{close}\r\n"
        )
        self.wfile.write(head.encode("ascii") + _BODY[:n])

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")
        sys.stderr.flush()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ztunnel_py.testbed.podserver",
        description="HTTP server of a testbed pod: answers GET with JSON naming the pod.",
    )
    parser.add_argument("--pod", required=True, help="pod name reported in every answer")
    parser.add_argument("--namespace", required=True, help="the pod's Kubernetes namespace")
    parser.add_argument("--node", required=True, help="the node the pod runs on")
    parser.add_argument(
        "--bind", type=ipaddress.ip_address, default="0.0.0.0", help="address to listen on"
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    address = SocketAddr(args.bind, args.port)
    try:
        server = PodHTTPServer((str(args.bind), args.port), args.pod, args.namespace, args.node)
    except OSError as exc:
        print(f"podserver: cannot listen on {address}: {exc}", file=sys.stderr)
        return 1
    print(f"podserver {args.pod}: listening on {address}", file=sys.stderr)
    sys.stderr.flush()
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
