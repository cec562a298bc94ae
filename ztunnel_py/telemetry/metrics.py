"""Istio's metric families, declared on a registry the app passes in, and per-connection tracking.

Names and label order follow ztunnel exactly (docs/istio-compat.md, "Metrics"):
`istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
`istio_tcp_received_bytes_total`, `istio_tcp_sent_bytes_total`, `istio_tcp_connections_failed_total`
(traffic labels), `istio_tcp_sockets_open` (`reporter`), `istio_build` (`component`, `tag`), the
`workload_manager_*` families, and prometheus_client's `process_*` metrics.

The families are served by one custom collector over plain Python counters rather than
prometheus_client's Counter objects: no lock per increment on the data path and no `_created`
series that ztunnel does not emit. Everything here runs on the trio thread, so the counters are
not guarded for other threads.

Byte counters follow Istio's convention: `istio_tcp_received_bytes_total` counts request bytes
(source to destination) and `istio_tcp_sent_bytes_total` response bytes, whoever reports. A proxy
reports bytes from its own point of view (`add_bytes(sent, recv)`), so for `reporter=source` the
two are swapped into the families (istio/istio#32399); the access log shows them unswapped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ztunnel_py.telemetry import accesslog
from ztunnel_py.telemetry.labels import (
    NO_FLAGS,
    RESPONSE_FLAGS,
    SOURCE,
    TRAFFIC_LABEL_NAMES,
    TrafficLabels,
)


class _Family:
    """One counter or gauge family: label values -> a one-element list holding the value."""

    __slots__ = ("doc", "is_counter", "labelnames", "name", "series")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str], is_counter: bool) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.is_counter = is_counter
        self.series: dict[tuple[str, ...], list[int]] = {}

    def cell(self, values: tuple[str, ...]) -> list[int]:
        cell = self.series.get(values)
        if cell is None:
            cell = self.series[values] = [0]
        return cell

    def metric(self, with_samples: bool = True) -> Metric:
        family: CounterMetricFamily | GaugeMetricFamily
        if self.is_counter:
            family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        if with_samples:
            for values, cell in list(self.series.items()):
                family.add_metric(values, cell[0])
        return family


class _Collector:
    def __init__(self, families: Sequence[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return [f.metric() for f in self.families]

    def describe(self) -> Iterable[Metric]:
        return [f.metric(with_samples=False) for f in self.families]


class Metrics:
    """The agent's (or waypoint's) metric families on `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        component: str = "ztunnel",
        tag: str = "unknown",
        process_metrics: bool = True,
    ) -> None:
        def traffic(name: str, doc: str) -> _Family:
            return _Family(name, doc, TRAFFIC_LABEL_NAMES, is_counter=True)

        self._opened = traffic(
            "istio_tcp_connections_opened", "The total number of TCP connections opened"
        )
        self._closed = traffic(
            "istio_tcp_connections_closed", "The total number of TCP connections closed"
        )
        self._received = traffic(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
        )
        self._sent = traffic(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
        )
        self._failed = traffic(
            "istio_tcp_connections_failed",
            "The total number of TCP connections that failed (unstable)",
        )
        self._sockets = _Family(
            "istio_tcp_sockets_open",
            "The current number of open TCP sockets (unstable)",
            ("reporter",),
            is_counter=False,
        )
        build = _Family(
            "istio_build", "Istio component build info", ("component", "tag"), is_counter=False
        )
        build.cell((component, tag))[0] = 1
        self._active = _Family(
            "workload_manager_active_proxy_count",
            "The total number current workloads with active proxies",
            (),
            is_counter=False,
        )
        self._pending = _Family(
            "workload_manager_pending_proxy_count",
            "The total number current workloads with pending proxies",
            (),
            is_counter=False,
        )
        self._started = _Family(
            "workload_manager_proxies_started",
            "The total number of proxies that were started",
            (),
            is_counter=True,
        )
        self._stopped = _Family(
            "workload_manager_proxies_stopped",
            "The total number of proxies that were stopped",
            (),
            is_counter=True,
        )
        self._hbone_errors = _Family(
            "ztunnel_py_hbone_errors",
            "HBONE failures caused by peers: failed TLS handshakes, connection-level protocol "
            "errors (GOAWAY sent), streams reset by the client; by kind and reason",
            ("kind", "reason"),
            is_counter=True,
        )
        for gauge_or_counter in (self._active, self._pending, self._started, self._stopped):
            gauge_or_counter.cell(())
        registry.register(
            _Collector(
                [
                    self._opened,
                    self._closed,
                    self._received,
                    self._sent,
                    self._failed,
                    self._sockets,
                    build,
                    self._active,
                    self._pending,
                    self._started,
                    self._stopped,
                    self._hbone_errors,
                ]
            )
        )
        if process_metrics:
            ProcessCollector(registry=registry)

    def open(
        self,
        labels: TrafficLabels,
        src_addr: str,
        dst_addr: str,
        hbone_addr: str | None = None,
        *,
        started: float | None = None,
    ) -> ConnectionMetrics:
        """Count a new connection and log `connection opened`; close the result exactly once.
        `started` (`time.monotonic()`): when the connection began, if before now (its duration
        counts from then)."""
        return ConnectionMetrics(self, labels, src_addr, dst_addr, hbone_addr, started)

    # workload manager (in-pod mode)

    def set_proxy_counts(self, active: int, pending: int) -> None:
        self._active.cell(())[0] = active
        self._pending.cell(())[0] = pending

    def proxy_started(self) -> None:
        self._started.cell(())[0] += 1

    def proxy_stopped(self) -> None:
        self._stopped.cell(())[0] += 1

    def hbone_error(self, kind: str, reason: str) -> None:
        """One HBONE failure caused by a peer (see `telemetry.peererrors`)."""
        self._hbone_errors.cell((kind, reason))[0] += 1


class ConnectionMetrics:
    """One proxied connection: byte counts, close with response flags, and its access log."""

    __slots__ = (
        "_metrics",
        "_received",
        "_sent",
        "_socket",
        "_start",
        "bytes_recv",
        "bytes_sent",
        "closed",
        "dst_addr",
        "hbone_addr",
        "labels",
        "src_addr",
    )

    def __init__(
        self,
        metrics: Metrics,
        labels: TrafficLabels,
        src_addr: str,
        dst_addr: str,
        hbone_addr: str | None,
        started: float | None = None,
    ) -> None:
        self._metrics = metrics
        self.labels = labels
        self.src_addr = src_addr
        self.dst_addr = dst_addr
        self.hbone_addr = hbone_addr
        self.bytes_sent = 0
        self.bytes_recv = 0
        self.closed = False
        self._start = time.monotonic() if started is None else started
        values = labels.values()
        # Fetch the series cells once; add_bytes is then two list additions.
        self._sent = metrics._sent.cell(values)
        self._received = metrics._received.cell(values)
        self._socket = metrics._sockets.cell((labels.reporter,))
        metrics._opened.cell(values)[0] += 1
        self._socket[0] += 1
        accesslog.connection_opened(labels, src_addr, dst_addr, hbone_addr)

    def add_bytes(self, sent: int = 0, recv: int = 0) -> None:
        """Bytes this proxy sent to / received from the other side of the mesh connection.

        For `reporter=source` (outbound) `sent` is request bytes; for `destination` (inbound)
        `recv` is.
        """
        self.bytes_sent += sent
        self.bytes_recv += recv
        if self.labels.reporter == SOURCE:
            sent, recv = recv, sent
        self._sent[0] += sent
        self._received[0] += recv

    def close(self, response_flags: str = NO_FLAGS, error: str | None = None) -> None:
        """Record the end of the connection (idempotent): counters, gauge, access log."""
        if self.closed:
            return
        if response_flags not in RESPONSE_FLAGS:
            raise ValueError(f"response flags {response_flags!r} not in {RESPONSE_FLAGS}")
        self.closed = True
        m = self._metrics
        values = self.labels.with_flags(response_flags).values()
        m._closed.cell(values)[0] += 1
        if response_flags != NO_FLAGS:
            m._failed.cell(values)[0] += 1
        self._socket[0] -= 1
        accesslog.connection_complete(
            self.labels,
            self.src_addr,
            self.dst_addr,
            self.hbone_addr,
            bytes_sent=self.bytes_sent,
            bytes_recv=self.bytes_recv,
            duration_ms=int((time.monotonic() - self._start) * 1000),
            error=error,
        )


class XdsMetrics:
    """The xDS client's families, on the agent's registry.

    `istio_xds_connection_terminations_total{reason}` (ConnectionError, Error, Reconnect,
    Complete), `istio_xds_message_total{url}` and `istio_xds_message_bytes_total{url}` (responses
    received per type URL). Updated from the trio thread only.
    """

    REASONS = ("ConnectionError", "Error", "Reconnect", "Complete")

    def __init__(self, registry: CollectorRegistry) -> None:
        self._terminations = _Family(
            "istio_xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            ("reason",),
            is_counter=True,
        )
        self._messages = _Family(
            "istio_xds_message",
            "Total number of messages received (unstable)",
            ("url",),
            is_counter=True,
        )
        self._bytes = _Family(
            "istio_xds_message_bytes",
            "Total number of bytes received (unstable)",
            ("url",),
            is_counter=True,
        )
        registry.register(_Collector([self._terminations, self._messages, self._bytes]))

    def terminated(self, reason: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"xDS termination reason {reason!r} not in {self.REASONS}")
        self._terminations.cell((reason,))[0] += 1

    def received(self, type_url: str, size: int) -> None:
        self._messages.cell((type_url,))[0] += 1
        self._bytes.cell((type_url,))[0] += size


class CaptureCounts(Protocol):
    """What the BPF capture programs counted for one pod (`redirect.maps.PodCounters`)."""

    @property
    def inbound(self) -> int: ...
    @property
    def outbound(self) -> int: ...
    @property
    def assigns(self) -> int: ...
    @property
    def drops(self) -> int: ...
    @property
    def exempt(self) -> int: ...
    @property
    def spoofed(self) -> int: ...


# (pod namespace, pod name, its counts) for every enrolled pod
CaptureReader = Callable[[], Iterable[tuple[str, str, CaptureCounts]]]


class CaptureMetrics:
    """The capture programs' per-pod counters, read from their BPF map at every scrape.

    ztunnel has no such families (iptables keeps its counters in the kernel), so they carry
    our own prefix, each labelled with the pod's `namespace` and `pod`:

    - `ztunnel_py_capture_connections_total{direction}`: connections handed to an agent
      listener, `inbound` (to 15008/15006) or `outbound` (to 15001);
    - `ztunnel_py_capture_redirected_packets_total`: packets of the pod's outbound connections
      turned back into the agent (every packet of such a connection is);
    - `ztunnel_py_capture_dropped_packets_total{reason}`: `fail_closed` (no agent listener to
      take a new connection, or a packet that cannot be inspected) or `spoofed_source` (from
      outside with the pod's own address);
    - `ztunnel_py_capture_exempt_packets_total`: left uncaptured (probes, excluded ports).
    """

    def __init__(self, registry: CollectorRegistry, read: CaptureReader) -> None:
        self._read = read
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        connections, redirected, dropped, exempt = families
        for namespace, pod, c in self._read():
            # `assigns` counts the connections of both directions, `inbound` the inbound ones.
            connections.add_metric([namespace, pod, "inbound"], c.inbound)
            connections.add_metric([namespace, pod, "outbound"], c.assigns - c.inbound)
            redirected.add_metric([namespace, pod], c.outbound)
            dropped.add_metric([namespace, pod, "fail_closed"], c.drops)
            dropped.add_metric([namespace, pod, "spoofed_source"], c.spoofed)
            exempt.add_metric([namespace, pod], c.exempt)
        return families

    @staticmethod
    def _families() -> list[CounterMetricFamily]:
        pod = ["namespace", "pod"]
        return [
            CounterMetricFamily(
                "ztunnel_py_capture_connections",
                "Connections the capture programs handed to an agent listener",
                labels=[*pod, "direction"],
            ),
            CounterMetricFamily(
                "ztunnel_py_capture_redirected_packets",
                "Packets of outbound connections the capture programs turned into the agent",
                labels=pod,
            ),
            CounterMetricFamily(
                "ztunnel_py_capture_dropped_packets",
                "Packets the capture programs dropped",
                labels=[*pod, "reason"],
            ),
            CounterMetricFamily(
                "ztunnel_py_capture_exempt_packets",
                "Packets left uncaptured (probes, excluded ports)",
                labels=pod,
            ),
        ]


# ztunnel's buckets for the upstream duration, in seconds
DNS_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0, 5.0)
DNS_LABEL_NAMES = (
    "request_query_type",
    "request_protocol",
    "source_canonical_service",
    "source_canonical_revision",
)


class DnsMetrics:
    """The DNS proxy's families, named and labelled as ztunnel's (`src/dns/metrics.rs`).

    `istio_dns_requests_total` (every query, answered or forwarded),
    `istio_dns_upstream_requests_total` and `istio_dns_upstream_failures_total` (forwarded
    ones, and those that got no answer), `istio_dns_upstream_request_duration_seconds` (a
    histogram with ztunnel's buckets). Labels: `request_query_type` (`a`, `aaaa`, ... lower
    case), `request_protocol` (`udp`, `tcp`), and the source workload's
    `source_canonical_service` and `source_canonical_revision` (`unknown` when the source is
    not known). Updated from the trio thread only.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> _Family:
            return _Family(name, doc, DNS_LABEL_NAMES, is_counter=True)

        self._requests = counter("istio_dns_requests", "Total number of DNS requests (unstable)")
        self._upstream = counter(
            "istio_dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream (unstable)",
        )
        self._failures = counter(
            "istio_dns_upstream_failures",
            "Total number of DNS requests that failed to forward upstream (unstable)",
        )
        # label values -> [count per bucket (cumulative at collection), sum]
        self._durations: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        registry.register(_Collector([self._requests, self._upstream, self._failures]))
        registry.register(self)

    @staticmethod
    def labels(query_type: str, protocol: str, service: str, revision: str) -> tuple[str, ...]:
        return (query_type.lower(), protocol, service or "unknown", revision or "unknown")

    def request(self, labels: tuple[str, ...]) -> None:
        self._requests.cell(labels)[0] += 1

    def forwarded(self, labels: tuple[str, ...], seconds: float, failed: bool) -> None:
        self._upstream.cell(labels)[0] += 1
        if failed:
            self._failures.cell(labels)[0] += 1
        counts, total = self._durations.setdefault(
            labels, ([0] * (len(DNS_DURATION_BUCKETS) + 1), [0.0])
        )
        index = next(
            (i for i, bound in enumerate(DNS_DURATION_BUCKETS) if seconds <= bound),
            len(DNS_DURATION_BUCKETS),
        )
        counts[index] += 1
        total[0] += seconds

    def _histogram(self, with_samples: bool = True) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "istio_dns_upstream_request_duration_seconds",
            "Total time in seconds Istio takes to get DNS response from upstream (unstable)",
            labels=DNS_LABEL_NAMES,
        )
        if with_samples:
            for values, (counts, total) in list(self._durations.items()):
                cumulative, buckets = 0, []
                for bound, count in zip(
                    (*map(str, DNS_DURATION_BUCKETS), "+Inf"), counts, strict=True
                ):
                    cumulative += count
                    buckets.append((bound, cumulative))
                family.add_metric(list(values), buckets, total[0])
        return family

    def describe(self) -> Iterable[Metric]:
        return [self._histogram(with_samples=False)]

    def collect(self) -> Iterable[Metric]:
        return [self._histogram()]
