"""Prometheus's HTTP query API, the reading side of our metrics: one instant PromQL query in,
its samples (or a clear error) out.

`instant_query(url, query)` asks `GET <url>/api/v1/query?query=...` and returns the samples of
a `vector` or `scalar` result as `Sample`s (labels and a float, `NaN` kept: what a 0/0 ratio
gives). Every way the answer can fail to be data is a `PrometheusError` naming the server and
what went wrong: the server is unreachable or times out, answers something other than
Prometheus's JSON envelope, or rejects the query (`status: error`, with its `errorType` and
`error`). An empty result is not an error here: whether "no samples" is acceptable is the
caller's decision (a canary gate refuses it).

Blocking, on `http.client`: callers run it in a thread. The TCP socket comes from `connect`
when given (a testbed's Prometheus lives in a network namespace of its own; the caller makes
the socket there), else from `socket.create_connection`.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["Connect", "PrometheusError", "Sample", "instant_query", "is_ready"]

# (host, port, timeout) -> a connected socket
Connect = Callable[[str, int, float], socket.socket]

# Prometheus answers small JSON for the queries we make; anything larger is not one of them.
MAX_ANSWER = 4 * 1024 * 1024


class PrometheusError(Exception):
    """The query got no data back: unreachable server, bad answer or rejected query."""


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float

    @property
    def missing(self) -> bool:
        """No number: a ratio of nothing over nothing (`NaN`), or an infinity."""
        return not math.isfinite(self.value)


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, connect: Connect) -> None:
        super().__init__(host, port, timeout=timeout)
        self._connect = connect
        self._timeout = timeout

    def connect(self) -> None:
        self.sock = self._connect(self.host, self.port, self._timeout)


def _default_connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _get(url: str, path: str, timeout: float, connect: Connect | None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise PrometheusError(f"Prometheus URL {url!r} must be http://HOST:PORT")
    conn = _Connection(parts.hostname, parts.port or 80, timeout, connect or _default_connect)
    try:
        conn.request("GET", parts.path.rstrip("/") + path)
        response = conn.getresponse()
        return response.status, response.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
        raise PrometheusError(f"Prometheus at {url} is not reachable: {reason}") from None
    finally:
        conn.close()


def is_ready(url: str, *, timeout: float = 2.0, connect: Connect | None = None) -> bool:
    """`GET /-/ready` answers 200: the server has loaded its storage and serves queries."""
    try:
        status, _ = _get(url, "/-/ready", timeout, connect)
    except PrometheusError:
        return False
    return status == 200


def instant_query(
    url: str, query: str, *, timeout: float = 5.0, connect: Connect | None = None
) -> list[Sample]:
    """The samples of `query` evaluated now; PrometheusError if there is no answer."""
    status, body = _get(url, "/api/v1/query?query=" + quote(query, safe=""), timeout, connect)
    if len(body) > MAX_ANSWER:
        raise PrometheusError(f"Prometheus at {url} answered more than {MAX_ANSWER} bytes")
    try:
        envelope = json.loads(body)
    except ValueError:
        raise PrometheusError(
            f"Prometheus at {url} answered status {status} without its JSON envelope: "
            f"{body[:200]!r}"
        ) from None
    if not isinstance(envelope, dict):
        raise PrometheusError(f"Prometheus at {url} answered {envelope!r}")
    if envelope.get("status") != "success":
        kind = envelope.get("errorType", "error")
        raise PrometheusError(
            f"Prometheus at {url} rejected the query ({kind}): {envelope.get('error')}"
        )
    try:
        return _samples(envelope["data"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise PrometheusError(f"Prometheus at {url} answered an unexpected result: {e}") from None


def _samples(data: Mapping[str, Any]) -> list[Sample]:
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        return [Sample({}, float(result[1]))]
    if kind != "vector":
        raise ValueError(f"result type {kind!r} (an instant query gives a vector or a scalar)")
    return [
        Sample({str(k): str(v) for k, v in item["metric"].items()}, float(item["value"][1]))
        for item in result
    ]
