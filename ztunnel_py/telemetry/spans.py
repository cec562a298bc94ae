"""Span export with the OpenTelemetry SDK: OTLP over gRPC and Zipkin JSON v2.

A proxy reports one span per sampled request to the collector of the request's tracing provider
(MeshConfig `extensionProviders`, see `model/telemetry.py`). `SpanExporters` keeps one SDK
`TracerProvider` per provider and collector address, each with a `BatchSpanProcessor`: ending a
span only appends it to a queue, and the SDK's own thread exports batches (every 5 s, as Envoy
flushes, or sooner when 512 are waiting), so the event loop never waits on a collector; a
collector that is down costs dropped spans (the queue holds 2048), never requests.

The span's identity follows the request: its parent is the incoming trace context (remote), a
new trace gets its ids from the SDK, and the ids are read back so the proxy propagates them
upstream. The sampling decision is the proxy's (`http/filters/tracing.py`): spans are only
started for sampled requests, with the SDK's sampler left at "always".

Where the collector is: the app's `resolve` gives the candidate addresses (`ip:port` of the
provider's service endpoints, or its host name); the exporter stays with its address while that
remains a candidate, and moves to another otherwise (the old exporter is flushed and shut down
in a thread of its own).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace import Span as OtelSpan

from ztunnel_py.model.telemetry import DEFAULT_ZIPKIN_PATH, ProviderKind, TracingProvider

__all__ = ["ExportedSpan", "SpanExporters"]

log = logging.getLogger(__name__)

_SCOPE = "ztunnel_py"
AttributeValue = str | int | float | bool


@dataclass(slots=True)
class ExportedSpan:
    """A started span: its ids (hex, as `traceparent` writes them) and the SDK span."""

    trace_id: str
    span_id: str
    span: OtelSpan

    def end(self, attributes: Mapping[str, AttributeValue], error: str, end_ns: int) -> None:
        """End the span at `end_ns` (wall clock); `error` ("": none) describes a failure
        (Zipkin's encoder turns it into the `error` tag)."""
        self.span.set_attributes(attributes)
        if error:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end(end_time=end_ns)


@dataclass(slots=True)
class _Exporter:
    address: str
    provider: TracerProvider
    tracer: trace.Tracer


class SpanExporters:
    def __init__(
        self,
        service_name: str,
        resolve: Callable[[TracingProvider], Sequence[str]],
        resource_attributes: Mapping[str, str] | None = None,
    ) -> None:
        """`service_name`: the proxy as the collector names it (Istio: the proxy's cluster,
        `<workload>.<namespace>`); `resolve`: the candidate `host:port` of a provider."""
        self._resource = Resource.create(
            {"service.name": service_name, **(resource_attributes or {})}
        )
        self._resolve = resolve
        self._exporters: dict[TracingProvider, _Exporter] = {}

    def start(
        self,
        provider: TracingProvider,
        name: str,
        *,
        trace_id: str,
        parent_id: str,
        start_ns: int,
    ) -> ExportedSpan | None:
        """Start a server span under the remote parent (`trace_id`, `parent_id`; both "" for a
        new trace); None when the provider's collector cannot be found."""
        exporter = self._exporter(provider)
        if exporter is None:
            return None
        context = Context()
        if parent_id:
            parent = SpanContext(
                int(trace_id, 16),
                int(parent_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent), context)
        span = exporter.tracer.start_span(
            name, context=context, kind=SpanKind.SERVER, start_time=start_ns
        )
        ids = span.get_span_context()
        return ExportedSpan(f"{ids.trace_id:032x}", f"{ids.span_id:016x}", span)

    def _exporter(self, provider: TracingProvider) -> _Exporter | None:
        current = self._exporters.get(provider)
        candidates = self._resolve(provider)
        if current is not None and current.address in candidates:
            return current
        if current is not None:
            del self._exporters[provider]
            threading.Thread(target=current.provider.shutdown, daemon=True).start()
        if not candidates:
            log.debug("tracing provider %s: no collector address for %s", provider.name, provider)
            return None
        address = candidates[0]
        made = TracerProvider(
            sampler=ALWAYS_ON,
            resource=self._resource,
            span_limits=SpanLimits(max_attribute_length=provider.max_tag_length),
            shutdown_on_exit=False,
        )
        made.add_span_processor(BatchSpanProcessor(_span_exporter(provider, address)))
        exporter = _Exporter(address, made, made.get_tracer(_SCOPE))
        self._exporters[provider] = exporter
        log.info("tracing provider %s exports to %s", provider.name, address)
        return exporter

    def shutdown(self) -> None:
        """Flush and stop every exporter (blocks up to the exporters' timeouts)."""
        exporters, self._exporters = list(self._exporters.values()), {}
        for e in exporters:
            e.provider.shutdown()


def _span_exporter(provider: TracingProvider, address: str) -> SpanExporter:
    # The exporters are imported when a provider is configured: together with requests they
    # take about 0.3 s to import, paid at every agent start otherwise.
    if provider.kind is ProviderKind.ZIPKIN:
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        zipkin = ZipkinExporter(
            endpoint=f"http://{address}{provider.path or DEFAULT_ZIPKIN_PATH}",
            max_tag_value_length=provider.max_tag_length,
            timeout=max(1, round(provider.timeout)) if provider.timeout else None,
        )
        zipkin.session.headers.update(dict(provider.headers))
        return zipkin
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=address,
        insecure=True,
        headers=tuple((k.lower(), v) for k, v in provider.headers) or None,
        timeout=provider.timeout,
    )
