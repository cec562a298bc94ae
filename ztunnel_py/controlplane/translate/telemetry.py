"""MeshConfig and the Telemetry resources to the telemetry each waypoint applies per service.

MeshConfig is the `mesh` document of the ConfigMap `istio` in the root namespace (validated in
`validation/telemetry.py`); a ConfigMap `istio` elsewhere is not MeshConfig (a warning).

Which Telemetry resources apply to a service at its waypoint, in istiod's order, later ones
overriding earlier ones (`Telemetries.applicableTelemetries` and `Tracing`):
1. the root namespace's namespace-wide Telemetry (no selector, no targetRefs; the oldest when
   there are several);
2. the waypoint's namespace's namespace-wide Telemetry;
3. the waypoint's own: a Telemetry in its namespace whose selector matches the labels of its
   pods, or whose targetRefs name its Gateway;
4. the service's: a Telemetry in the service's namespace whose targetRefs name the Service or
   ServiceEntry.

Tracing, as istiod merges it for the server side of a proxy (a waypoint's spans are server
spans, so entries whose `match.mode` is CLIENT do not apply): the provider is MeshConfig's first
`defaultProviders.tracing`, replaced by the first provider an entry names;
`disableSpanReporting`, `customTags` and `randomSamplingPercentage` are replaced by each entry
that sets them. With no provider, no span is reported. With neither a Telemetry tracing entry
nor a default provider, MeshConfig's legacy settings apply: `enableTracing` (true unless set
false; false samples nothing) and `defaultConfig.tracing.sampling`. Sampling falls back to
`defaultConfig.tracing.sampling`, then to 1%.

Metrics and access logs (istiod's `mergeMetrics` and `mergeLogs`, for the server side): the
providers in force are MeshConfig's `defaultProviders`, replaced by each entry that names some;
request metrics are on while the Prometheus provider (the built-in `prometheus`, or a
`prometheus` extension provider) is in force, or when no metrics provider is named at all
(Istio's default installation reports them); each override of an entry reaching Prometheus
applies in order: `disabled` and `tagOverrides` per metric (`ALL_METRICS` expands to the four
request metrics; custom metrics and TCP metrics are not reported per request and are skipped).
The access log is on while a file access-log provider (the built-in `envoy`, or an
`envoyFileAccessLog` one) is in force and the last entry does not disable it, with that entry's
filter; with no provider named anywhere it stays on, as this mesh has always logged requests
(Istio's own default is MeshConfig `accessLogFile`, empty unless set).

A provider's `service` is looked up as istiod's `LookupCluster` does: `<namespace>/<hostname>`
or a hostname, which must be a Service or ServiceEntry of the mesh (a ServiceEntry for a
collector outside it); a provider whose service is unknown exports nothing, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.translate.routes import GATEWAY_GROUP, creation_order
from ztunnel_py.controlplane.translate.waypoints import Waypoint
from ztunnel_py.controlplane.validation.telemetry import (
    MESH_CONFIG_KEY,
    MESH_CONFIG_MAP,
    TRACING_PROVIDER_KINDS,
)
from ztunnel_py.model import Service
from ztunnel_py.model.telemetry import (
    DEFAULT_MAX_TAG_LENGTH,
    DEFAULT_SAMPLING,
    METRICS,
    AccessLogConfig,
    CustomTag,
    CustomTagKind,
    MetricOverride,
    MetricsConfig,
    ProviderKind,
    TagOverride,
    TelemetryConfig,
    TracingConfig,
    TracingProvider,
)
from ztunnel_py.yamlschema.durations import parse_duration

__all__ = ["MeshTelemetry", "TelemetryResolver", "mesh_telemetry"]

Warn = Callable[[Resource, str, str], None]

_GATEWAY_POD_LABEL = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True, slots=True)
class MeshTelemetry:
    """The telemetry part of MeshConfig."""

    resource: Resource | None = None
    providers: Mapping[str, tuple[int, Mapping[str, Any]]] = field(default_factory=dict)
    default_tracing: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] = ()
    default_access_logging: tuple[str, ...] = ()
    enable_tracing: bool = True
    sampling: float | None = None


def mesh_telemetry(
    config_maps: Sequence[Resource], root_namespace: str, warn: Warn
) -> MeshTelemetry:
    """The MeshConfig of the ConfigMap `istio` in the root namespace (defaults without one)."""
    found: Resource | None = None
    for cm in config_maps:
        if cm.name != MESH_CONFIG_MAP:
            continue
        if cm.namespace != root_namespace:
            warn(
                cm,
                "metadata.namespace",
                f"not MeshConfig: the mesh reads the ConfigMap {MESH_CONFIG_MAP} of the root "
                f"namespace {root_namespace}",
            )
            continue
        found = cm
    if found is None:
        return MeshTelemetry()
    text = (found.body.get("data") or {}).get(MESH_CONFIG_KEY) or ""
    mesh = yaml.safe_load(text) or {}
    providers = {
        str(p["name"]).lower(): (i, p) for i, p in enumerate(mesh.get("extensionProviders") or ())
    }
    tracing = (mesh.get("defaultConfig") or {}).get("tracing") or {}
    defaults = mesh.get("defaultProviders") or {}
    sampling = tracing.get("sampling")
    return MeshTelemetry(
        resource=found,
        providers=providers,
        default_tracing=tuple(defaults.get("tracing") or ()),
        default_metrics=tuple(defaults.get("metrics") or ()),
        default_access_logging=tuple(defaults.get("accessLogging") or ()),
        enable_tracing=mesh.get("enableTracing", True) is not False,
        # istiod treats 0 as unset
        sampling=float(sampling) if sampling else None,
    )


class TelemetryResolver:
    def __init__(
        self,
        *,
        telemetries: Sequence[Resource],
        pods: Sequence[Resource],
        mesh: MeshTelemetry,
        services: Mapping[str, Service],
        owners: Mapping[str, Resource],
        root_namespace: str,
        warn: Warn,
    ) -> None:
        self.mesh = mesh
        self.services = services
        self.owners = owners
        self.root_namespace = root_namespace
        self.warn = warn
        self.telemetries = sorted(telemetries, key=creation_order)
        self.pods = pods
        self._providers: dict[str, TracingProvider | None] = {}

    # --- which Telemetry resources apply -------------------------------------------------------

    def _namespace_wide(self, namespace: str) -> Resource | None:
        for t in self.telemetries:
            if t.namespace == namespace and not _selector(t) and not _target_refs(t):
                return t
        return None

    def _for_waypoint(self, waypoint: Waypoint) -> Resource | None:
        labels = [
            p.labels
            for p in self.pods
            if p.namespace == waypoint.namespace
            and p.labels.get(_GATEWAY_POD_LABEL) == waypoint.resource.name
        ]
        for t in self.telemetries:
            if t.namespace != waypoint.namespace:
                continue
            selector = _selector(t)
            if selector and any(all(pl.get(k) == v for k, v in selector.items()) for pl in labels):
                return t
            if any(
                r.get("kind") == "Gateway"
                and r.get("group", GATEWAY_GROUP) == GATEWAY_GROUP
                and r.get("name") == waypoint.resource.name
                for r in _target_refs(t)
            ):
                return t
        return None

    def _for_service(self, key: str) -> Resource | None:
        owner = self.owners.get(key)
        if owner is None:
            return None
        for t in self.telemetries:
            if t.namespace == owner.namespace and any(
                r.get("kind") == owner.kind and r.get("name") == owner.name for r in _target_refs(t)
            ):
                return t
        return None

    def applicable(self, waypoint: Waypoint, service_key: str) -> list[Resource]:
        out: list[Resource] = []
        for found in (
            self._namespace_wide(self.root_namespace),
            self._namespace_wide(waypoint.namespace)
            if waypoint.namespace != self.root_namespace
            else None,
            self._for_waypoint(waypoint),
            self._for_service(service_key),
        ):
            if found is not None and found not in out:
                out.append(found)
        return out

    def resolve(self, waypoint: Waypoint, service_key: str) -> TelemetryConfig:
        applied = self.applicable(waypoint, service_key)
        origins = [f"Telemetry {t.namespace}/{t.name}" for t in applied]
        mesh = self.mesh
        if mesh.resource is not None:
            origins.insert(0, f"MeshConfig {mesh.resource.namespace}/{mesh.resource.name}")
        return TelemetryConfig(
            tracing=self._tracing(applied),
            metrics=self._metrics(applied),
            access_log=self._access_log(applied),
            origins=tuple(origins),
        )

    # --- tracing -------------------------------------------------------------------------------

    def _tracing(self, applied: Sequence[Resource]) -> TracingConfig:
        entries = [
            (t, i, entry)
            for t in applied
            for i, entry in enumerate((t.spec.get("tracing") or ())[:1])
            if _server_side(entry)
        ]
        mesh = self.mesh
        if not entries and not mesh.default_tracing:
            # no Telemetry API tracing: MeshConfig's legacy switches
            sampling = (mesh.sampling or DEFAULT_SAMPLING) if mesh.enable_tracing else 0.0
            return TracingConfig(None, sampling)
        provider = (
            self._provider(mesh.default_tracing[0], mesh.resource, "data.mesh")
            if mesh.default_tracing
            else None
        )
        disabled = False
        sampling = mesh.sampling or DEFAULT_SAMPLING
        tags: Mapping[str, Any] = {}
        for t, i, entry in entries:
            where = f"spec.tracing[{i}]"
            names = [p["name"] for p in entry.get("providers") or ()]
            if names:
                provider = self._provider(names[0], t, f"{where}.providers[0]")
            if "disableSpanReporting" in entry:
                disabled = bool(entry["disableSpanReporting"])
            if "customTags" in entry:
                tags = entry["customTags"] or {}
            if "randomSamplingPercentage" in entry:
                sampling = float(entry["randomSamplingPercentage"])
        return TracingConfig(
            provider=None if disabled else provider,
            sampling=sampling,
            custom_tags=tuple(_custom_tag(name, tags[name]) for name in sorted(tags)),
        )

    # --- metrics and access logs -----------------------------------------------------------------

    def _is_kind(self, name: str, kind: str, builtin: str) -> bool:
        """Whether provider `name` is of `kind` (istiod's built-in name counts)."""
        if name.lower() == builtin:
            return True
        found = self.mesh.providers.get(name.lower())
        return found is not None and kind in found[1]

    def _metrics(self, applied: Sequence[Resource]) -> MetricsConfig:
        """istiod's mergeMetrics for the Prometheus provider: the providers named last are in
        force; the overrides of the entries that reach Prometheus apply in order."""
        providers = list(self.mesh.default_metrics)
        overrides: list[MetricOverride] = []
        for t in applied:
            for entry in t.spec.get("metrics") or ():
                names = [p["name"] for p in entry.get("providers") or ()] or providers
                providers = names
                if not any(self._is_kind(n, "prometheus", "prometheus") for n in names):
                    continue
                for o in entry.get("overrides") or ():
                    match = o.get("match") or {}
                    if match.get("mode", "CLIENT_AND_SERVER") == "CLIENT":
                        continue
                    if "customMetric" in match:
                        continue
                    metric = match.get("metric", "ALL_METRICS")
                    targets = list(METRICS) if metric == "ALL_METRICS" else [metric]
                    tags = tuple(
                        TagOverride(
                            name,
                            remove=op.get("operation") == "REMOVE",
                            value=op.get("value", ""),
                        )
                        for name, op in sorted((o.get("tagOverrides") or {}).items())
                    )
                    overrides += [
                        MetricOverride(m, bool(o.get("disabled", False)), tags)
                        for m in targets
                        if m in METRICS
                    ]
        enabled = not providers or any(
            self._is_kind(n, "prometheus", "prometheus") for n in providers
        )
        return MetricsConfig(enabled, tuple(overrides))

    def _access_log(self, applied: Sequence[Resource]) -> AccessLogConfig:
        """istiod's mergeLogs for the file access log (the built-in `envoy` provider or an
        `envoyFileAccessLog` one): enabled while such a provider is in force and not disabled,
        with the filter of the last entry that names one."""
        providers = list(self.mesh.default_access_logging)
        enabled = True
        expression = ""
        for t in applied:
            for entry in t.spec.get("accessLogging") or ():
                if not _server_side(entry):
                    continue
                providers = [p["name"] for p in entry.get("providers") or ()] or providers
                if not any(self._is_kind(n, "envoyFileAccessLog", "envoy") for n in providers):
                    enabled = False
                    continue
                enabled = not entry.get("disabled", False)
                expression = (entry.get("filter") or {}).get("expression", "")
        if providers and not any(
            self._is_kind(n, "envoyFileAccessLog", "envoy") for n in providers
        ):
            enabled = False
        return AccessLogConfig(enabled, expression if enabled else "")

    def _provider(self, name: str, resource: Resource | None, where: str) -> TracingProvider | None:
        key = name.lower()
        if key in self._providers:
            return self._providers[key]
        found = self.mesh.providers.get(key)
        made: TracingProvider | None = None
        if found is None:
            if resource is not None:
                self.warn(
                    resource,
                    where,
                    f"tracing provider {name!r} is not defined in MeshConfig extensionProviders: "
                    "no spans are reported",
                )
        else:
            made = self._tracing_provider(*found)
        self._providers[key] = made
        return made

    def _tracing_provider(self, index: int, p: Mapping[str, Any]) -> TracingProvider | None:
        mesh = self.mesh.resource
        assert mesh is not None
        where = f"data.mesh.extensionProviders[{index}]"
        kind = next((k for k in TRACING_PROVIDER_KINDS if k in p), None)
        if kind is None:
            self.warn(mesh, where, f"provider {p['name']!r} does not support tracing")
            return None
        settings: Mapping[str, Any] = p[kind]
        service = self._service_key(settings["service"])
        if service is None:
            self.warn(
                mesh,
                f"{where}.{kind}.service",
                f"{settings['service']!r} is not a service of the mesh (a Service, or a "
                "ServiceEntry for a collector outside it): no spans are exported there",
            )
            return None
        if kind == "zipkin":
            timeout = settings.get("timeout")
            headers = settings.get("headers") or ()
        else:
            grpc = settings.get("grpc") or {}
            timeout = grpc.get("timeout")
            headers = grpc.get("initialMetadata") or ()
        return TracingProvider(
            name=p["name"],
            kind=ProviderKind(kind),
            service=service,
            port=settings["port"],
            path=settings.get("path", "") if kind == "zipkin" else "",
            max_tag_length=settings.get("maxTagLength") or DEFAULT_MAX_TAG_LENGTH,
            timeout=parse_duration(timeout) if timeout else None,
            headers=tuple((h["name"], h.get("value", "")) for h in headers),
        )

    def _service_key(self, service: str) -> str | None:
        """istiod's LookupCluster: `namespace/hostname`, or a hostname in any namespace."""
        if "/" in service:
            return service if service in self.services else None
        return next(
            (key for key, s in sorted(self.services.items()) if s.hostname == service), None
        )


def _server_side(entry: Mapping[str, Any]) -> bool:
    """A waypoint is the server side of the requests it serves: CLIENT-only entries skip it."""
    return bool((entry.get("match") or {}).get("mode", "CLIENT_AND_SERVER") != "CLIENT")


def _selector(t: Resource) -> Mapping[str, str]:
    labels: Mapping[str, str] = (t.spec.get("selector") or {}).get("matchLabels") or {}
    return labels


def _target_refs(t: Resource) -> list[Mapping[str, Any]]:
    refs = [t.spec["targetRef"]] if t.spec.get("targetRef") else []
    return refs + list(t.spec.get("targetRefs") or ())


def _custom_tag(name: str, tag: Mapping[str, Any]) -> CustomTag:
    if "literal" in tag:
        return CustomTag(name, CustomTagKind.LITERAL, (tag["literal"] or {}).get("value", ""))
    kind = CustomTagKind.HEADER if "header" in tag else CustomTagKind.ENVIRONMENT
    source = tag[kind.value]
    return CustomTag(name, kind, source["name"], source.get("defaultValue", ""))
