"""What a testbed pod answers to an HTTP request, whichever protocol carried it, and the
listener its HTTP servers share.

The HTTP/1.1 server (`podserver`) and the HTTP/2 one (`podh2`) parse their wire format into a
`Request` and send back the `Reply` that `answer` picks (`answer` does no I/O; waiting out a
`/delay` is the server's part), so both speak the same endpoints:

- `/bytes/N` (0 <= N <= 1 MiB): exactly N bytes of `application/octet-stream` (zeros);
- `/status/CODE` (a final status, 200 to 599): that status, with the JSON body unless 204/304;
- `/delay/MS` (0 to 30000): the JSON body after waiting MS milliseconds;
- `/flaky/P` (0 to 100): `503` with the JSON body for P percent of the requests, at random,
  else `200` (a backend failing a share of its requests, for retries and outlier detection);
- `/headers` and anything else: the JSON body.

A pod started with `--fail-percent P` / `--delay-ms MS` (a release that misbehaves: a canary
to roll back) answers `500` with the JSON body for P percent of its requests and adds MS
milliseconds to every answer, on every path but `/bytes` (the benchmark path) and malformed
requests.

The JSON body says who answered and who asked: `pod`, `namespace`, `node`, `version` (the pod's
version label, empty unless set), `client` (the peer address the server saw, `ip:port`),
`method`, `path` (with the query), `host` (Host header or `:authority`), `headers` (request
headers, lower-case names, repeated ones joined with ", "), `body_bytes` (length of the request
body) and `protocol` (`HTTP/1.1`, `HTTP/1.0` or `HTTP/2`). A malformed N, CODE, MS or P answers
400 with a text message naming the accepted range. Informational codes (1xx) are not accepted by
`/status`: they are interim responses, and a 1xx that ends a response is invalid in both
HTTP/1.1 and HTTP/2.

`PodListener` is their accepting socket: a thread per connection, a backlog for bursts, and with
an IPv6 address (`::`) one socket for both families.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import re
import socket
import socketserver
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ztunnel_py.model.address import SocketAddr, canonical_ip

BYTES_PREFIX = "/bytes/"
STATUS_PREFIX = "/status/"
DELAY_PREFIX = "/delay/"
FLAKY_PREFIX = "/flaky/"
MAX_BYTES = 1 << 20
MAX_DELAY_MS = 30_000
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
BYTES_TYPE = "application/octet-stream"
# Statuses whose responses never carry a body (nor a Content-Length, for 204).
NO_BODY_STATUSES = frozenset({204, 304})
_DIGITS = re.compile(r"[0-9]{1,7}")
# Zeros from calloc: pages become resident only once a response of that size is sent.
ZEROS = memoryview(bytes(MAX_BYTES))


@dataclass(frozen=True)
class PodInfo:
    """Who this pod is, as every answer reports it."""

    pod: str
    namespace: str
    node: str
    version: str = ""
    # how this release behaves on every path but /bytes: a share of 500s, an added delay
    fail_percent: float = 0.0
    delay_ms: int = 0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    host: str
    headers: dict[str, str]
    body_bytes: int
    client: str
    protocol: str


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str | None
    body: bytes | memoryview
    delay: float = 0.0


def client_address(host: str, port: int) -> str:
    """`ip:port` of a peer (`[v6]:port` for IPv6), an IPv4 peer of a dual-stack socket as
    plain `a.b.c.d:port`."""
    return str(SocketAddr(canonical_ip(ipaddress.ip_address(host)), port))


def header_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers by lower-case name; a repeated header's values joined as HTTP allows
    (cookies with "; ", since HTTP/2 sends each cookie crumb as a field of its own)."""
    joined: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in joined:
            joined[key] += ("; " if key == "cookie" else ", ") + value
        else:
            joined[key] = value
    return joined


def bytes_size(text: str) -> int | None:
    """N of a `/bytes/N` path suffix (query included), None unless 0 <= N <= MAX_BYTES."""
    n = _number(text.partition("?")[0])
    return n if 0 <= n <= MAX_BYTES else None


def describe(info: PodInfo, request: Request) -> dict[str, object]:
    return {
        "pod": info.pod,
        "namespace": info.namespace,
        "node": info.node,
        "version": info.version,
        "client": request.client,
        "method": request.method,
        "path": request.path,
        "host": request.host,
        "headers": request.headers,
        "body_bytes": request.body_bytes,
        "protocol": request.protocol,
    }


def answer(info: PodInfo, request: Request, rand: Callable[[], float] = random.random) -> Reply:
    reply = _endpoint(info, request, rand)
    if request.path.startswith(BYTES_PREFIX) or reply.status == 400:
        return reply
    if info.fail_percent and rand() * 100 < info.fail_percent:
        reply = Reply(500, JSON_TYPE, json.dumps(describe(info, request)).encode(), reply.delay)
    if info.delay_ms:
        reply = dataclasses.replace(reply, delay=reply.delay + info.delay_ms / 1000)
    return reply


def _endpoint(info: PodInfo, request: Request, rand: Callable[[], float]) -> Reply:
    path = request.path.partition("?")[0]
    if path.startswith(BYTES_PREFIX):
        arg = path[len(BYTES_PREFIX) :]
        n = bytes_size(arg)
        if n is None:
            return _bad(f"/bytes/N wants N as a decimal number from 0 to {MAX_BYTES}", arg)
        return Reply(200, BYTES_TYPE, ZEROS[:n])
    body = json.dumps(describe(info, request)).encode()
    if path.startswith(STATUS_PREFIX):
        arg = path[len(STATUS_PREFIX) :]
        code = _number(arg)
        if not 200 <= code <= 599:
            return _bad("/status/CODE wants a final HTTP status from 200 to 599", arg)
        if code in NO_BODY_STATUSES:
            return Reply(code, None, b"")
        return Reply(code, JSON_TYPE, body)
    if path.startswith(FLAKY_PREFIX):
        arg = path[len(FLAKY_PREFIX) :]
        percent = _number(arg)
        if not 0 <= percent <= 100:
            return _bad("/flaky/P wants P as a percentage from 0 to 100", arg)
        return Reply(503 if rand() * 100 < percent else 200, JSON_TYPE, body)
    if path.startswith(DELAY_PREFIX):
        arg = path[len(DELAY_PREFIX) :]
        ms = _number(arg)
        if not 0 <= ms <= MAX_DELAY_MS:
            return _bad(f"/delay/MS wants MS in milliseconds from 0 to {MAX_DELAY_MS}", arg)
        return Reply(200, JSON_TYPE, body, delay=ms / 1000)
    return Reply(200, JSON_TYPE, body)


def _number(text: str) -> int:
    """A short decimal number, -1 for anything else (signs, spaces, huge values)."""
    return int(text) if _DIGITS.fullmatch(text) else -1


def _bad(wants: str, got: str) -> Reply:
    return Reply(400, TEXT_TYPE, f"{wants}, got {got[:40]!r}\n".encode())


class PodListener(socketserver.ThreadingTCPServer):
    """A pod server's listening socket; each connection is served on a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a proxy that opens a burst of upstream connections
    # (16 at once when a load generator starts) would overflow it, and each dropped SYN costs
    # the caller a 1 s retransmission.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: Callable[[Any, Any, PodListener], socketserver.BaseRequestHandler],
        info: PodInfo,
    ) -> None:
        self.info = info
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # One socket for both families: IPv4 peers arrive as ::ffff:a.b.c.d.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port
