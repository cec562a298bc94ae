"""The application every testbed pod runs: HTTP/1.1, HTTP/2 and gRPC servers that say who answered
and who asked, with the knobs L7 tests need (statuses, delays, headers, upgrades).

`python -m ztunnel_py.testbed.podserver --pod NAME --namespace NS --node NODE [--port 8080]
[--bind ADDR] [--version V] [--h2-port 8082] [--grpc-port 9090] [--fail-percent P]
[--delay-ms MS]` runs, in one process:

- HTTP/1.1 on `--port` (this module): GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS, answered
  as `podapp` describes (`/bytes/N`, `/status/CODE`, `/delay/MS`, `/headers`, anything else a JSON
  body naming the pod, version, client address, method, host, headers and request body length).
  Request bodies of any length are read, with Content-Length or chunked. HTTP/1.1 keep-alive is
  supported, so load generators can reuse connections. A request with an `Upgrade` header gets
  `101 Switching Protocols` and then every byte the client sends is echoed back until it closes:
  the smallest upgraded protocol there is, so a proxy's upgrade passthrough can be tested.
- HTTP/2 with prior knowledge (h2c) on `--h2-port` (`podh2`): the same endpoints and answers.
- gRPC on `--grpc-port` (`podgrpc`): the service `ztunnel_py.testbed.Echo`, JSON messages.

`--port 0` binds an ephemeral port; `--h2-port 0` / `--grpc-port 0` disable those servers and
`auto` binds them on ephemeral ports. Once all are bound, each listener is logged on stderr
(`podserver POD: http listening on ADDR:PORT`, then `h2c` and `grpc`, with the bound ports); a
port that cannot be bound is a one-line error and exit status 1. The h2 and gRPC modules are only
imported when their port is enabled, so a pod without them starts fast (grpcio alone adds about
0.25 s and 18 MB to a pod). Every response carries `x-served-by: POD`. With `--bind ::` the
servers take IPv4 and IPv6 on one socket (dual-stack pods) and still report IPv4 clients as plain
`a.b.c.d`.

`GET /bytes/N` is the benchmark path (Istio's latency method asks for 1 KiB bodies, like
nighthawk's `response_body_size` or fortio's `?size=`): its head and body go out in one write
from a preallocated body, and successful /bytes requests are not logged, so at benchmark rates
the server's cost stays that of answering. Other requests are logged one line each on stderr.
Answers go out with TCP_NODELAY, so none waits for the client's delayed ACK. Malformed requests
(bad request line, bad chunked encoding, conflicting or bad Content-Length) get a 400 naming the
problem and the connection is closed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from types import FrameType
from typing import TypeVar

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.testbed.podapp import (
    BYTES_PREFIX,
    MAX_DELAY_MS,
    NO_BODY_STATUSES,
    ZEROS,
    PodInfo,
    PodListener,
    Request,
    answer,
    bytes_size,
    client_address,
    header_dict,
)

_READ_SIZE = 1 << 16
_MAX_LINE = 1024
_MAX_TRAILERS = 100
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
T = TypeVar("T")


class BadBody(Exception):
    """The request body is malformed; not `answerable` when the client already left."""

    def __init__(self, message: str, answerable: bool = True) -> None:
        super().__init__(message)
        self.answerable = answerable


class PodHTTPServer(PodListener):
    def __init__(self, address: tuple[str, int], info: PodInfo) -> None:
        super().__init__(address, PodHandler, info)
        # "x-served-by" for the /bytes fast path, which writes its head itself.
        self.served_by = f"x-served-by: {info.pod}\r\n"


class PodHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body are separate writes, and on a keep-alive connection the body
    # would otherwise wait for the client's delayed ACK of the headers (~40 ms per request).
    disable_nagle_algorithm = True
    server: PodHTTPServer

    def do_GET(self) -> None:
        if self.path.startswith(BYTES_PREFIX) and not self._has_body():
            n = bytes_size(self.path[len(BYTES_PREFIX) :])
            if n is not None:
                self._send_bytes(n)
                return
        self._serve()

    def _serve(self) -> None:
        try:
            body_bytes = self._read_body()
        except BadBody as exc:
            self.close_connection = True
            if exc.answerable:
                self.send_error(400, str(exc))
            else:
                self.log_message("%s: %s", self.requestline, exc)
            return
        if "Upgrade" in self.headers:
            self._echo_upgraded()
            return
        host, port = self.client_address[:2]
        request = Request(
            method=self.command,
            path=self.path,
            host=self.headers.get("Host", ""),
            headers=header_dict(self.headers.items()),
            body_bytes=body_bytes,
            client=client_address(host, port),
            protocol=self.request_version,
        )
        reply = answer(self.server.info, request)
        if reply.delay:
            time.sleep(reply.delay)
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        if reply.status not in NO_BODY_STATUSES:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    do_HEAD = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve
    do_OPTIONS = _serve

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.send_header("x-served-by", self.server.info.pod)

    def _has_body(self) -> bool:
        return "Content-Length" in self.headers or "Transfer-Encoding" in self.headers

    def _send_bytes(self, n: int) -> None:
        # Head and body in one write, so one segment carries a small response. send_response is
        # bypassed on purpose: it logs every request.
        close = "Connection: close\r\n" if self.close_connection else ""
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"{self.server.served_by}Content-Length: {n}\r\n{close}\r\n"
        )
        self.wfile.write(head.encode("ascii") + ZEROS[:n])

    def _read_body(self) -> int:
        """Reads and drops the request body, returning its length."""
        codings = self.headers.get_all("Transfer-Encoding", [])
        lengths = self.headers.get_all("Content-Length", [])
        if codings:
            # Both framings in one request is how requests get smuggled past proxies.
            if lengths:
                raise BadBody("Transfer-Encoding and Content-Length in one request")
            if ",".join(codings).strip().lower() != "chunked":
                raise BadBody(f"unsupported Transfer-Encoding {', '.join(codings)[:40]!r}")
            return self._read_chunked()
        if not lengths:
            return 0
        if len(set(lengths)) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            raise BadBody(f"Content-Length {', '.join(lengths)[:40]!r} is not one length")
        length = int(lengths[0])
        self._discard(length)
        return length

    def _read_chunked(self) -> int:
        total = 0
        while True:
            size_line = self._line("chunk size")
            size_text = size_line.partition(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise BadBody(f"bad chunk size line {size_line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                break
            self._discard(size)
            total += size
            if self._line("chunk end") not in (b"\r\n", b"\n"):
                raise BadBody("chunk data longer than its size")
        for _ in range(_MAX_TRAILERS):
            if self._line("trailer") in (b"\r\n", b"\n"):
                return total
        raise BadBody(f"more than {_MAX_TRAILERS} trailer fields")

    def _line(self, what: str) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if not line.endswith(b"\n"):
            if len(line) > _MAX_LINE:
                raise BadBody(f"{what} line longer than {_MAX_LINE} bytes")
            raise BadBody(f"client closed the request body at a {what} line", answerable=False)
        return line

    def _discard(self, length: int) -> None:
        """Reads `length` body bytes, a piece at a time, and drops them."""
        left = length
        while left:
            piece = self.rfile.read(min(left, _READ_SIZE))
            if not piece:
                raise BadBody(
                    f"client closed the request body after {length - left} of {length} bytes",
                    answerable=False,
                )
            left -= len(piece)

    def _echo_upgraded(self) -> None:
        self.send_response(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", self.headers["Upgrade"])
        self.end_headers()
        self.close_connection = True
        rfile = self.rfile
        assert isinstance(rfile, io.BufferedReader)
        # read1 returns what is buffered (bytes that came with the request) or one recv's worth,
        # so each piece is echoed as soon as it arrives. A reset just ends the echo.
        with contextlib.suppress(OSError):
            while piece := rfile.read1(_READ_SIZE):
                self.wfile.write(piece)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")
        sys.stderr.flush()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _optional_port(text: str) -> int | None:
    """`--h2-port`/`--grpc-port`: 0 disables (None), `auto` is an ephemeral port (0)."""
    if text == "auto":
        return 0
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"wants a port from 0 to 65535 or 'auto', got {text!r}")
    return port or None


def _bind(what: str, bind: str, port: int, make: Callable[[], T]) -> T:
    try:
        return make()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot listen on {_address(bind, port)} for {what}: {reason}") from exc


def _address(bind: str, port: int) -> str:
    try:
        return str(SocketAddr(ipaddress.ip_address(bind), port))
    except ValueError:
        return f"{bind}:{port}"


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"wants a percentage from 0 to 100, got {text!r}")
    return value


def _delay(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_DELAY_MS:
        raise argparse.ArgumentTypeError(f"wants milliseconds from 0 to {MAX_DELAY_MS}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ztunnel_py.testbed.podserver",
        description="Servers of a testbed pod (HTTP/1.1, h2c, gRPC): answers naming the pod.",
    )
    parser.add_argument("--pod", required=True, help="pod name reported in every answer")
    parser.add_argument("--namespace", required=True, help="the pod's Kubernetes namespace")
    parser.add_argument("--node", required=True, help="the node the pod runs on")
    parser.add_argument("--version", default="", help="version label reported (e.g. v1)")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="HTTP/1.1 port (0: ephemeral)")
    parser.add_argument(
        "--h2-port",
        type=_optional_port,
        default=8082,
        help="HTTP/2 prior-knowledge port (0 disables, auto: ephemeral; default 8082)",
    )
    parser.add_argument(
        "--grpc-port",
        type=_optional_port,
        default=9090,
        help="gRPC port (0 disables, auto: ephemeral; default 9090)",
    )
    parser.add_argument(
        "--fail-percent",
        type=_percent,
        default=0.0,
        metavar="P",
        help="answer 500 to P percent of the requests (a broken release; default 0)",
    )
    parser.add_argument(
        "--delay-ms",
        type=_delay,
        default=0,
        metavar="MS",
        help="add MS milliseconds to every answer (a slow release; default 0)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    info = PodInfo(
        args.pod, args.namespace, args.node, args.version, args.fail_percent, args.delay_ms
    )
    bind = args.bind
    with contextlib.ExitStack() as stack:
        try:
            http = _bind("http", bind, args.port, lambda: PodHTTPServer((bind, args.port), info))
            stack.enter_context(http)
            listening = [("http", http.port)]
            if args.h2_port is not None:
                from ztunnel_py.testbed.podh2 import H2Server

                h2 = _bind("h2c", bind, args.h2_port, lambda: H2Server((bind, args.h2_port), info))
                # No shutdown on exit: the process ends, and shutdown() would wait for the loop.
                threading.Thread(target=h2.serve_forever, name="h2c", daemon=True).start()
                listening.append(("h2c", h2.port))
            if args.grpc_port is not None:
                from ztunnel_py.testbed import podgrpc

                grpc_server, grpc_port = _bind(
                    "grpc", bind, args.grpc_port, lambda: podgrpc.serve(bind, args.grpc_port, info)
                )
                stack.callback(grpc_server.stop, None)
                listening.append(("grpc", grpc_port))
        except OSError as exc:
            print(f"podserver: {exc}", file=sys.stderr)
            return 1
        for what, port in listening:
            print(
                f"podserver {args.pod}: {what} listening on {_address(bind, port)}",
                file=sys.stderr,
            )
        sys.stderr.flush()
        http.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
