"""The topology page without Prometheus: the agents' and waypoints' `/metrics`, scraped directly.

`Scraper.results()` answers what `topology.QUERIES` answer on Prometheus, from two scrapes of
every target: a counter's rate is its increase between them over the time between them (a
counter that went down was reset: its new value is the increase, as in PromQL), and the p99 is
Prometheus's `histogram_quantile` over the increase of the duration buckets. The samples keep
all their labels (the graph sums them per pair itself); a waypoint's samples get the `pod` and
`namespace` labels Prometheus's discovery would have added. The first call scrapes twice,
`FIRST_GAP` seconds apart; later calls compare with the previous call's scrape.

Blocking (HTTP into other namespaces): call it from a thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from ztunnel_py.telemetry.promql import Sample

FIRST_GAP = 1.0

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # for errors: a testbed node or pod, or HOST:PORT
    labels: Mapping[str, str]  # added to every sample (a waypoint's pod and namespace)
    fetch: Callable[[], str]  # the /metrics text


class Scraper:
    def __init__(
        self,
        targets: Sequence[Target],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.targets = targets
        self.clock = clock
        self.sleep = sleep
        self._previous: tuple[float, dict[Key, float]] | None = None
        self._lock = threading.Lock()  # two pages polling share the previous scrape

    def _scrape(self, errors: list[str]) -> tuple[float, dict[Key, float]]:
        values: dict[Key, float] = {}
        for target in self.targets:
            try:
                text = target.fetch()
            except Exception as e:  # any failure of one target leaves the others
                errors.append(f"{target.name}: {e}")
                continue
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    labels = {**s.labels, **target.labels, "target": target.name}
                    values[(s.name, tuple(sorted(labels.items())))] = s.value
        return self.clock(), values

    def results(self, errors: list[str]) -> dict[str, list[Sample]]:
        """Rates since the previous scrape, shaped as `topology.QUERIES` answer them."""
        with self._lock:
            return self._results(errors)

    def _results(self, errors: list[str]) -> dict[str, list[Sample]]:
        if self._previous is None:
            self._previous = self._scrape(errors)
            self.sleep(FIRST_GAP)
        (then, before), (now, after) = self._previous, self._scrape(errors)
        self._previous = (now, after)
        seconds = max(now - then, 1e-3)
        rates: dict[str, list[Sample]] = defaultdict(list)
        buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
        for (name, items), value in after.items():
            old = before.get((name, items))
            if old is None:
                continue
            increase = value - old if value >= old else value
            labels = dict(items)
            if name == "istio_tcp_connections_opened_total":
                rates["tcp_opened"].append(Sample(labels, increase / seconds))
            elif name in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
                rates["tcp_bytes"].append(Sample(labels, increase / seconds))
            elif name == "istio_tcp_connections_failed_total":
                if labels.get("response_flags") == "DENY":
                    rates["tcp_denied"].append(Sample(labels, increase / seconds))
            elif labels.get("reporter") != "waypoint":
                continue
            elif name == "istio_requests_total":
                rates["http_requests"].append(Sample(labels, increase / seconds))
            elif name == "istio_request_duration_milliseconds_bucket":
                le = float(labels.pop("le"))
                group = tuple(sorted((k, v) for k, v in labels.items() if k in _P99_BY))
                buckets[group].append((le, increase))
        rates["http_p99"] = [
            Sample(dict(group), histogram_quantile(0.99, counts))
            for group, counts in buckets.items()
        ]
        return dict(rates)


# what the p99 query groups by (topology's `_L7` labels)
_P99_BY = frozenset(
    {
        "pod",
        "namespace",
        "source_workload",
        "source_workload_namespace",
        "destination_workload",
        "destination_workload_namespace",
        "destination_service",
    }
)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's `histogram_quantile` over cumulative (upper bound, count) buckets summed
    over their series: linear within the bucket the rank falls in; NaN without observations; the
    highest finite bound when the rank is in the +Inf bucket."""
    totals: dict[float, float] = defaultdict(float)
    for le, count in buckets:
        totals[le] += count
    ordered = sorted(totals.items())
    if not ordered or ordered[-1][0] != math.inf or ordered[-1][1] <= 0:
        return math.nan
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if le == math.inf:
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return math.nan
