"""The `Canary` resource (`flagger.app/v1beta1`), in the shape Flagger users write, and the typed
values a controller reads from it.

What is read, as Flagger defines it:

- `spec.targetRef`: what is released. Flagger targets a Deployment and makes `<name>-primary`
  from it; here the target is a `Service` whose pods carry both releases, told apart by their
  `version` label, named in `spec.versions: {primary: v1, canary: v2}` (our addition: there is
  no Deployment to copy);
- `spec.service`: `port` (required, as in Flagger), `hosts` and `gateways` of the
  VirtualService (the target's name and `mesh` are always in), `timeout`, `retries`,
  `trafficPolicy` (copied into the DestinationRule), `headers`, `match`;
- `spec.analysis`: `interval` (between two steps), `threshold` (failed checks before a rollback,
  1 by default), `stepWeight` or `stepWeights`, `maxWeight` (100 by default), `mirror` (shadow
  traffic to the canary before any of its answers reach a client) with `mirrorWeight` (the
  share copied, 100 by default) and `iterations` (mirrored checks, 1 by default; with `mirror`
  and no step weights: Flagger's blue/green with mirroring, then all traffic at once), and
  `metrics`: the built-in `request-success-rate` (percent) and `request-duration` (p99 in
  milliseconds), or any name with an inline PromQL `query`; each with `thresholdRange`
  `{min, max}` (or the deprecated `threshold`) and an `interval` (the query's range, 1m by
  default);
- `spec.skipAnalysis`, `spec.suspend` and `spec.metricsServer` (the Prometheus to ask);
  `spec.progressDeadlineSeconds` is accepted and has no effect (there is no Deployment whose
  rollout to wait for).

What this controller cannot do is refused by name rather than ignored: `webhooks` (no load
tester or gate here), `templateRef` metrics (no MetricTemplate objects), A/B `match` in the
analysis, session affinity, autoscaler, ingress and upstream references, other providers than
`istio`, and `iterations` without `mirror` (Flagger's blue/green, where the canary gets no
traffic of its own to measure).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ztunnel_py.yamlschema.durations import DURATION, parse_duration
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    PORT,
    STR,
    Checker,
    Int,
    IntOrStr,
    ListOf,
    Node,
    Number,
    Str,
    hostname,
    obj,
    strings,
)

API_GROUP = "flagger.app"
API_VERSIONS = ("flagger.app/v1beta1",)
KIND = "Canary"
PROVIDER = "istio"
SUCCESS_RATE = "request-success-rate"
DURATION_METRIC = "request-duration"
BUILTIN_METRICS = (SUCCESS_RATE, DURATION_METRIC)
DEFAULT_METRIC_INTERVAL = "1m"
TOTAL_WEIGHT = 100

_UNSUPPORTED = "is not supported by ztunnel-py's canary controller"


def _version(text: str) -> str | None:
    if not text or len(text) > 63 or not all(ch.isalnum() or ch in "-_." for ch in text):
        return f"{text!r} is not a label value (the pods' `version` label)"
    return None


def _target_ref(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    kind = fields.get("kind")
    if kind is not None and kind.value != "Service":
        c.error(
            kind,
            f"kind {kind.value!r} {_UNSUPPORTED}: target the Service whose pods carry both "
            "versions (and name them in spec.versions)",
        )


TARGET_REF = obj(
    {"apiVersion": STR, "kind": STR, "name": Str(checks=(hostname,))},
    required=("kind", "name"),
    hooks=(_target_ref,),
)


def _versions(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if fields["canary"].value == fields["primary"].value:
        c.error(fields["canary"], "the canary version must differ from the primary one")


VERSIONS = obj(
    {"primary": Str(checks=(_version,)), "canary": Str(checks=(_version,))},
    required=("primary", "canary"),
    hooks=(_versions,),
)

RETRIES = obj({"attempts": Int(0, None, "attempts"), "perTryTimeout": DURATION, "retryOn": STR})

SERVICE = obj(
    {
        "port": PORT,
        "portName": STR,
        "targetPort": IntOrStr(PORT, STR),
        "name": Str(checks=(hostname,)),
        "hosts": strings(hostname),
        "gateways": strings(),
        "timeout": DURATION,
        "retries": RETRIES,
        "trafficPolicy": ANY,
        "headers": ANY,
        "match": ListOf(ANY),
    },
    required=("port",),
    hints={
        key: _UNSUPPORTED
        for key in ("corsPolicy", "rewrite", "delegation", "apex", "primary", "canary")
    },
)


def _threshold_range(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if not fields:
        c.error(node, "a threshold range needs min, max or both")
    elif "min" in fields and "max" in fields and fields["min"].value > fields["max"].value:
        c.error(node, "min is above max")


THRESHOLD_RANGE = obj({"min": Number(), "max": Number()}, hooks=(_threshold_range,))


def _metric(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    name = fields["name"].value
    if name not in BUILTIN_METRICS and "query" not in fields:
        c.error(
            fields["name"],
            f"metric {name!r} needs a PromQL `query`: the built-in metrics are "
            f"{' and '.join(BUILTIN_METRICS)}",
        )
    if "thresholdRange" not in fields and "threshold" not in fields:
        c.error(node.missing("thresholdRange"), "required field is missing (a metric gates on it)")


METRIC = obj(
    {
        "name": STR,
        "interval": DURATION,
        "thresholdRange": THRESHOLD_RANGE,
        "threshold": Number(),
        "query": STR,
    },
    required=("name",),
    hooks=(_metric,),
    hints={"templateRef": _UNSUPPORTED + " (no MetricTemplate objects): write an inline query"},
)


def _analysis(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    steps = fields.get("stepWeights")
    if steps is not None:
        values = steps.value
        if any(b <= a for a, b in itertools.pairwise(values)):
            c.error(steps, "step weights must increase")
        if "stepWeight" in fields:
            c.error(steps, "set stepWeight or stepWeights, not both")
    mirror = "mirror" in fields and fields["mirror"].value
    stepped = "stepWeight" in fields or steps is not None
    if "iterations" in fields and not mirror:
        c.error(
            fields["iterations"],
            f"iterations without mirror (Flagger's blue/green) {_UNSUPPORTED}: the canary would "
            "get no traffic to measure; set mirror: true, or use stepWeight",
        )
    elif not stepped and not mirror:
        c.error(node.missing("stepWeight"), "required field is missing (or stepWeights)")
    max_weight, step = fields.get("maxWeight"), fields.get("stepWeight")
    if max_weight is not None and step is not None and step.value > max_weight.value:
        c.error(step, f"stepWeight {step.value} is above maxWeight {max_weight.value}")


ANALYSIS = obj(
    {
        "interval": DURATION,
        "threshold": Int(1, None, "threshold"),
        "maxWeight": Int(1, TOTAL_WEIGHT, "maxWeight"),
        "stepWeight": Int(1, TOTAL_WEIGHT, "stepWeight"),
        "stepWeights": ListOf(Int(1, TOTAL_WEIGHT, "step weight"), min_items=1),
        "iterations": Int(1, None, "iterations"),
        "mirror": BOOL,
        "mirrorWeight": Int(1, TOTAL_WEIGHT, "mirrorWeight"),
        "metrics": ListOf(METRIC, unique_by=lambda m: m["name"], unique_what="metric"),
    },
    required=("interval", "metrics"),
    hooks=(_analysis,),
    hints={
        "webhooks": _UNSUPPORTED + " (no load tester or gate webhooks here)",
        "stepWeightPromotion": _UNSUPPORTED + " (promotion moves all traffic at once)",
        "match": _UNSUPPORTED + " (A/B testing)",
        "sessionAffinity": _UNSUPPORTED,
        "alerts": _UNSUPPORTED,
        "primaryReadyThreshold": _UNSUPPORTED,
        "canaryReadyThreshold": _UNSUPPORTED,
    },
)


def _spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "versions" not in fields:
        c.error(
            node.missing("versions"),
            "required field is missing: name the primary and canary values of the pods' "
            "`version` label (e.g. {primary: v1, canary: v2})",
        )


def _metrics_server(text: str) -> str | None:
    if not text.startswith("http://"):
        return f"{text!r} is not an http:// URL of a Prometheus server"
    return None


SPEC = obj(
    {
        "provider": Str(choices=(PROVIDER,)),
        "targetRef": TARGET_REF,
        "versions": VERSIONS,
        "service": SERVICE,
        "analysis": ANALYSIS,
        "skipAnalysis": BOOL,
        "suspend": BOOL,
        "metricsServer": Str(checks=(_metrics_server,)),
        "progressDeadlineSeconds": Int(1, None, "progressDeadlineSeconds"),
    },
    required=("targetRef", "service", "analysis"),
    hooks=(_spec,),
    hints={
        key: _UNSUPPORTED
        for key in (
            "autoscalerRef",
            "ingressRef",
            "upstreamRef",
            "routeRef",
            "canaryAnalysis",
            "revertOnDeletion",
        )
    },
)

# --- typed values -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricCheck:
    name: str
    interval: str  # as written (a PromQL range): 1m, 30s
    min: float | None
    max: float | None
    query: str | None  # inline PromQL; None for the built-ins

    def verdict(self, value: float) -> str | None:
        """Why `value` fails this check, or None if it passes."""
        if self.min is not None and value < self.min:
            return f"{_fmt(value)} < {_fmt(self.min)}"
        if self.max is not None and value > self.max:
            return f"{_fmt(value)} > {_fmt(self.max)}"
        return None

    @property
    def unit(self) -> str:
        return {SUCCESS_RATE: "%", DURATION_METRIC: "ms"}.get(self.name, "")


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Analysis:
    interval: float  # seconds between steps
    threshold: int
    max_weight: int
    step_weights: tuple[int, ...]  # the canary weights to go through, in order
    mirror: bool
    mirror_weight: int
    mirror_iterations: int
    metrics: tuple[MetricCheck, ...]


@dataclass(frozen=True, slots=True)
class Canary:
    """One Canary, read from a document whose spec passed `SPEC`."""

    name: str
    namespace: str
    target: str  # the Service's name
    primary: str  # the `version` label values of the two releases
    canary: str
    port: int
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    service: Mapping[str, Any]  # spec.service as written (timeout, retries, headers, ...)
    analysis: Analysis
    skip_analysis: bool
    suspend: bool
    metrics_server: str | None
    revision: str  # a digest of the spec: a new one starts a new analysis

    @property
    def apex(self) -> str:
        """The name of the VirtualService and DestinationRule (Flagger's apex service name)."""
        return str(self.service.get("name") or self.target)


def _steps(analysis: Mapping[str, Any], max_weight: int) -> tuple[int, ...]:
    if "stepWeights" in analysis:
        return tuple(w for w in analysis["stepWeights"] if w <= max_weight) or (max_weight,)
    step = analysis.get("stepWeight")
    if step is None:
        return ()
    weights = tuple(range(step, max_weight + 1, step))
    return weights if weights[-1] == max_weight else (*weights, max_weight)


def spec_revision(spec: Mapping[str, Any]) -> str:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read(document: Mapping[str, Any], default_namespace: str = "default") -> Canary:
    """The typed Canary of a document whose spec `SPEC` accepted (shapes are trusted)."""
    metadata, spec = document["metadata"], document["spec"]
    analysis = spec["analysis"]
    max_weight = int(analysis.get("maxWeight", TOTAL_WEIGHT))
    service = spec["service"]
    target = spec["targetRef"]["name"]
    hosts = tuple(dict.fromkeys([*service.get("hosts", ()), target]))
    gateways = tuple(service.get("gateways") or ("mesh",))
    interval = parse_duration(analysis["interval"])
    assert interval is not None
    metrics = tuple(
        MetricCheck(
            name=m["name"],
            interval=m.get("interval", DEFAULT_METRIC_INTERVAL),
            min=_float(m.get("thresholdRange", {}).get("min")),
            max=_float(m.get("thresholdRange", {}).get("max")),
            query=m.get("query"),
        )
        if "thresholdRange" in m
        else _legacy_threshold(m)
        for m in analysis["metrics"]
    )
    return Canary(
        name=metadata["name"],
        namespace=metadata.get("namespace") or default_namespace,
        target=target,
        primary=spec["versions"]["primary"],
        canary=spec["versions"]["canary"],
        port=service["port"],
        hosts=hosts,
        gateways=gateways,
        service=service,
        analysis=Analysis(
            interval=interval,
            threshold=int(analysis.get("threshold", 1)),
            max_weight=max_weight,
            step_weights=_steps(analysis, max_weight),
            mirror=bool(analysis.get("mirror", False)),
            mirror_weight=int(analysis.get("mirrorWeight", TOTAL_WEIGHT)),
            mirror_iterations=int(analysis.get("iterations", 1)),
            metrics=metrics,
        ),
        skip_analysis=bool(spec.get("skipAnalysis", False)),
        suspend=bool(spec.get("suspend", False)),
        metrics_server=spec.get("metricsServer"),
        revision=spec_revision(spec),
    )


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _legacy_threshold(m: Mapping[str, Any]) -> MetricCheck:
    """Flagger's deprecated `threshold`: a minimum success rate, else a maximum."""
    threshold = float(m["threshold"])
    low = m["name"] == SUCCESS_RATE
    return MetricCheck(
        name=m["name"],
        interval=m.get("interval", DEFAULT_METRIC_INTERVAL),
        min=threshold if low else None,
        max=None if low else threshold,
        query=m.get("query"),
    )


def problems_of(document: Mapping[str, Any]) -> Sequence[str]:
    """Why a document is not a Canary this module can read (empty if it is): the spec's
    problems as `field: reason`, for a reader without positions (the control plane reports
    the same with file and line)."""
    c = Checker({}, strict=True)
    root = Node(document, "")
    if not isinstance(document.get("metadata"), dict) or not document["metadata"].get("name"):
        c.error(root.missing("metadata"), "metadata.name is required")
    if "spec" not in document:
        c.error(root.missing("spec"), "required field is missing")
    else:
        SPEC.check(c, c.child(root, "spec"))
    return [f"{p.path}: {p.reason}" for p in c.problems if p.is_error]
