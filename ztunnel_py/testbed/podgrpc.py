"""The testbed pod's gRPC server: service `ztunnel_py.testbed.Echo`, messages in UTF-8 JSON.

Wire format: ordinary gRPC over HTTP/2 (h2c), each message's bytes being one UTF-8 JSON object
instead of a protobuf, so no generated stubs are needed on either side (grpcio's generic
handlers here, `grpcclient` as the client). Methods:

- `/ztunnel_py.testbed.Echo/Unary`: one request, one response `{"pod", "namespace", "node",
  "version", "client", "request", "metadata"}`: `request` is the request object, `metadata` the
  call's metadata by key (repeated keys joined with ", ", `-bin` values in base64) and `client`
  the peer address as `ip:port`.
- `/ztunnel_py.testbed.Echo/ServerStream`: `{"count": N}` (0 <= N <= 1000, default 1) answers N
  such responses, each with `"index"` 0..N-1; `"interval_ms": M` (0 to 1000, at most 30 s in
  all) spaces them M ms apart, so a test can see whether a proxy streams or buffers them.

A request `{"status": CODE}` with a gRPC status code other than 0 (OK) makes either method fail
with that status (message `status CODE requested`): the way to test `grpc-status` handling
(Istio's grpc_response_status). A request that is not a JSON object, or a field out of range,
fails with INVALID_ARGUMENT naming the problem.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import NoReturn
from urllib.parse import unquote

import grpc

from ztunnel_py.testbed.podapp import PodInfo, client_address

SERVICE = "ztunnel_py.testbed.Echo"
UNARY = "Unary"
STREAM = "ServerStream"
MAX_COUNT = 1000
MAX_INTERVAL_MS = 1000
MAX_STREAM_MS = 30_000
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Each running call holds a worker; streams with intervals hold one for their duration.
_WORKERS = 32


class EchoService:
    def __init__(self, info: PodInfo) -> None:
        self._info = info

    def handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        # No (de)serializers: the handlers get and return the messages' raw bytes.
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                UNARY: grpc.unary_unary_rpc_method_handler(self.unary),
                STREAM: grpc.unary_stream_rpc_method_handler(self.server_stream),
            },
        )

    def unary(self, message: bytes, context: grpc.ServicerContext) -> bytes:
        return _encode(self._describe(_request(message, context), context))

    def server_stream(self, message: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        request = _request(message, context)
        count = _bounded(request, "count", 1, MAX_COUNT, context)
        interval_ms = _bounded(request, "interval_ms", 0, MAX_INTERVAL_MS, context)
        if count * interval_ms > MAX_STREAM_MS:
            _abort(context, f"count * interval_ms must be at most {MAX_STREAM_MS} ms")
        ended = threading.Event()
        context.add_callback(ended.set)
        answer = self._describe(request, context)
        for index in range(count):
            if index and ended.wait(interval_ms / 1000):
                return  # the client cancelled or the deadline passed
            yield _encode({**answer, "index": index})

    def _describe(
        self, request: dict[str, object], context: grpc.ServicerContext
    ) -> dict[str, object]:
        metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata():
            text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
            metadata[key] = f"{metadata[key]}, {text}" if key in metadata else text
        return {
            "pod": self._info.pod,
            "namespace": self._info.namespace,
            "node": self._info.node,
            "version": self._info.version,
            "client": _peer_address(context.peer()),
            "request": request,
            "metadata": metadata,
        }


def serve(bind: str, port: int, info: PodInfo) -> tuple[grpc.Server, int]:
    """Starts the Echo service on bind:port (0: ephemeral); the server and its bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="grpc"),
        handlers=[EchoService(info).handler()],
        # grpc core sets SO_REUSEPORT by default: a second server on the port would then share
        # it silently instead of failing to bind.
        options=[("grpc.so_reuseport", 0)],
    )
    host = f"[{bind}]" if ":" in bind else bind
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(str(exc)) from exc
    if bound == 0:
        raise OSError("grpc could not bind the address")
    server.start()
    return server, bound


def _request(message: bytes, context: grpc.ServicerContext) -> dict[str, object]:
    try:
        request = json.loads(message.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        _abort(context, f"request is not UTF-8 JSON: {exc}")
    if not isinstance(request, dict):
        _abort(context, f"request must be a JSON object, got {type(request).__name__}")
    status = request.get("status", 0)
    code = _CODES.get(status) if type(status) is int else None
    if code is None:
        _abort(context, f"status must be a gRPC status code from 0 to 16, got {status!r}")
    if code is not grpc.StatusCode.OK:
        context.abort(code, f"status {status} requested")
    return request


def _bounded(
    request: dict[str, object], key: str, default: int, top: int, context: grpc.ServicerContext
) -> int:
    value = request.get(key, default)
    if type(value) is not int or not 0 <= value <= top:
        _abort(context, f"{key} must be an integer from 0 to {top}, got {value!r}")
    return value


def _abort(context: grpc.ServicerContext, message: str) -> NoReturn:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _encode(answer: dict[str, object]) -> bytes:
    return json.dumps(answer).encode()


def _peer_address(peer: str) -> str:
    """`ip:port` of a grpc peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`, brackets possibly
    percent-encoded)."""
    address = unquote(peer.partition(":")[2])
    host, _, port = address.rpartition(":")
    return client_address(host.strip("[]"), int(port)) if port.isdigit() else address
