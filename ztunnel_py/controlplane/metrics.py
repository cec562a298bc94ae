"""The control plane's metrics under istiod's names and shapes (docs/observability.md,
"Control plane"), so Istio's control-plane dashboard and alerts read them unchanged.

istiod writes its sums without the `_total` suffix (`pilot_xds_pushes{type="wds"} 3`,
`citadel_server_csr_count 112`); the Prometheus client adds `_total` to every Counter (and to a
counter family's HELP and TYPE lines), so those are `BareCounter`s here, written untyped. Its
distributions are histograms in seconds without a unit suffix (`pilot_xds_push_time_bucket`),
with istiod's buckets. This module owns:

- `BareCounter`: a counter written under its bare name, with at most one label;
- `XdsServerMetrics`: `pilot_xds` (connected proxies), `pilot_xds_pushes{type}`,
  `pilot_total_xds_rejects{type}`, `pilot_xds_push_time{type}` (building and sending one type's
  response to one proxy), `pilot_proxy_convergence_time` (from the first change of a push to a
  proxy having been sent all of it) and `pilot_push_triggers{type}` (why a push happened:
  `endpoint`, `service` or `config`, counted per change as istiod counts its merged events);
- `CaMetrics`: `citadel_server_csr_count`, `citadel_server_authentication_failure_count`,
  `citadel_server_csr_parsing_err_count`, `citadel_server_csr_sign_err_count{error}`,
  `citadel_server_success_cert_issuance_count`, and the root's expiry as
  `citadel_server_root_cert_expiry_timestamp` (unix seconds) and
  `citadel_server_root_cert_expiry_seconds` (seconds left, read at scrape time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from ztunnel_py.controlplane.snapshot import MeshSnapshot

# istiod's buckets (pilot/pkg/xds/monitoring.go)
PUSH_TIME_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)
CONVERGENCE_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)

# istiod's trigger reasons for what our snapshots carry
ENDPOINT_UPDATE = "endpoint"
SERVICE_UPDATE = "service"
CONFIG_UPDATE = "config"


class BareCounter:
    """A counter exposed under its bare name, as istiod exposes its sums. With `label`, one
    series per label value; without, a single series."""

    def __init__(
        self, name: str, documentation: str, registry: CollectorRegistry, label: str | None = None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._label = label
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, value: str = "", amount: float = 1.0) -> None:
        with self._lock:
            self._values[value] = self._values.get(value, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            values = sorted(self._values.items())
        if self._label is None:
            family.add_sample(self.name, {}, sum(count for _, count in values))
        else:
            for value, count in values:
                family.add_sample(self.name, {self._label: value}, count)
        yield family


def push_triggers(old: MeshSnapshot, new: MeshSnapshot) -> list[str]:
    """Why `new` is pushed after `old`, in istiod's reasons: workloads are endpoints, services
    are services, everything else (policies, L7 configuration, waypoints) is configuration."""
    reasons = []
    if old.workloads != new.workloads:
        reasons.append(ENDPOINT_UPDATE)
    if old.services != new.services:
        reasons.append(SERVICE_UPDATE)
    if (old.policies, old.http_services, old.waypoints) != (
        new.policies,
        new.http_services,
        new.waypoints,
    ):
        reasons.append(CONFIG_UPDATE)
    return reasons


class XdsServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "pilot_xds", "Number of endpoints connected to this pilot using XDS.", registry=registry
        )
        self.pushes = BareCounter(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds.",
            registry,
            "type",
        )
        self.rejects = BareCounter(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy.",
            registry,
            "type",
        )
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            ["type"],
            registry=registry,
            buckets=PUSH_TIME_BUCKETS,
        )
        self.convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required "
            "configuration.",
            registry=registry,
            buckets=CONVERGENCE_BUCKETS,
        )
        self.triggers = BareCounter(
            "pilot_push_triggers",
            "Total number of times a push was triggered, labeled by reason for the push.",
            registry,
            "type",
        )


class CaMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        root_expiry: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`root_expiry`: the root certificate's notAfter as a unix timestamp."""
        self.csrs = BareCounter(
            "citadel_server_csr_count", "The number of CSRs received by Citadel server.", registry
        )
        self.authentication_failures = BareCounter(
            "citadel_server_authentication_failure_count",
            "The number of authentication failures.",
            registry,
        )
        self.parsing_errors = BareCounter(
            "citadel_server_csr_parsing_err_count",
            "The number of errors occurred when parsing the CSR.",
            registry,
        )
        self.sign_errors = BareCounter(
            "citadel_server_csr_sign_err_count",
            "The number of errors occurred when signing the CSR.",
            registry,
            "error",
        )
        self.issued = BareCounter(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded.",
            registry,
        )
        expiry = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when Citadel root cert will expire. A negative "
            "time indicates the cert is expired.",
            registry=registry,
        )
        expiry.set_function(root_expiry)
        remaining = Gauge(
            "citadel_server_root_cert_expiry_seconds",
            "The time remaining, in seconds, before the root cert will expire. A negative value "
            "indicates the cert is expired.",
            registry=registry,
        )
        remaining.set_function(lambda: root_expiry() - clock())
