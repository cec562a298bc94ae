"""A trace collector for tests: OTLP/gRPC (decoded with the official `opentelemetry-proto`
messages) and Zipkin JSON v2 over HTTP (`POST /api/v2/spans`), each span kept as one plain dict:

    {"via": "otlp"|"zipkin", "trace_id", "span_id", "parent_id" ("" for a root), "name",
     "kind" ("SERVER", "CLIENT", ...), "service" (the reporter's service.name),
     "attributes": {name: value as text}}

In-process (`Collector(...).start()`, spans in `.spans`) for loopback tests, or as a program
inside a testbed pod (`python collector.py --otlp 0.0.0.0:4317 --zipkin 0.0.0.0:9411 --out F`),
writing one JSON line per span to F. It imports nothing of ztunnel_py, so it is a stand-in for
a real collector, not a mirror of our exporter.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def _value(v: AnyValue) -> str:
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    return str(getattr(v, kind))


class Collector:
    def __init__(self, otlp: str, zipkin: str, out: TextIO | None = None) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.out = out
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Otlp(self), self.grpc_server)
        self.otlp_port = self.grpc_server.add_insecure_port(otlp)
        host, _, port = zipkin.rpartition(":")
        self.http = ThreadingHTTPServer((host.strip("[]"), int(port)), _zipkin_handler(self))
        self.zipkin_port = self.http.server_address[1]

    def start(self) -> Collector:
        self.grpc_server.start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.grpc_server.stop(0)

    def add(self, span: dict[str, Any]) -> None:
        with self.lock:
            self.spans.append(span)
            if self.out is not None:
                self.out.write(json.dumps(span) + "\n")
                self.out.flush()


class _Otlp(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.collector.add(
                        {
                            "via": "otlp",
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                            "service": resource.get("service.name", ""),
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                        }
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def _zipkin_handler(collector: Collector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path != "/api/v2/spans":
                self.send_response(404)
                self.end_headers()
                return
            for s in json.loads(body):
                collector.add(
                    {
                        "via": "zipkin",
                        "trace_id": s["traceId"],
                        "span_id": s["id"],
                        "parent_id": s.get("parentId", ""),
                        "name": s.get("name", ""),
                        "kind": s.get("kind", ""),
                        "service": (s.get("localEndpoint") or {}).get("serviceName", ""),
                        "attributes": {k: str(v) for k, v in (s.get("tags") or {}).items()},
                    }
                )
            self.send_response(202)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--otlp", default="0.0.0.0:4317")
    parser.add_argument("--zipkin", default="0.0.0.0:9411")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(args.out, "a") as out:
        collector = Collector(args.otlp, args.zipkin, out).start()
        print("collecting", flush=True)
        stop.wait()
        collector.stop()


if __name__ == "__main__":
    main()
