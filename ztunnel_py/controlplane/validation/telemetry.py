"""Telemetry configuration: Istio's `Telemetry` kind (telemetry.istio.io) and the MeshConfig it
refers to, read as istiod reads it from the ConfigMap `istio` (key `mesh`, a YAML document) in
the root namespace.

MeshConfig is a large message of which the mesh uses the telemetry part: `extensionProviders`
(the `opentelemetry` and `zipkin` tracing providers; the built-in `prometheus` and `envoy`
names need no entry), `defaultProviders`, `enableTracing` and `defaultConfig.tracing.sampling`.
Every other MeshConfig field is accepted unread, and providers of kinds the waypoints cannot use
(datadog, skywalking, ext_authz, access log services...) are accepted with a warning, so an
Istio installation's ConfigMap validates as it is. Rules are istiod's (`ValidateMeshConfig`,
`validateTelemetry`): provider names present and unique, a service and a port for each, a
sampling percentage within 0-100, one kind per custom tag with its name, selector and
targetRef(s) not both, a value for each UPSERT tag override and none for a REMOVE. Expressions
(tag values, access-log filters) must parse as the CEL the proxies evaluate (`telemetry/cel.py`)
and name only Envoy's attributes; tag names must be Prometheus label names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ztunnel_py.controlplane.validation.istio_security import POLICY_TARGET_REF, WORKLOAD_SELECTOR
from ztunnel_py.controlplane.validation.kube import KindInfo, custom_resource, metadata
from ztunnel_py.model.names import dns1123_subdomain
from ztunnel_py.model.telemetry import METRICS
from ztunnel_py.telemetry import cel
from ztunnel_py.yamlschema.durations import DURATION
from ztunnel_py.yamlschema.loading import YAML_ERRORS, PositionLoader
from ztunnel_py.yamlschema.problems import Severity
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    PORT,
    STR,
    Checker,
    Int,
    ListOf,
    MapOf,
    Node,
    Number,
    Schema,
    Str,
    obj,
)

__all__ = [
    "CONFIG_MAP",
    "KINDS",
    "MESH_CONFIG_KEY",
    "MESH_CONFIG_MAP",
    "TRACING_PROVIDER_KINDS",
]

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# The ConfigMap istiod reads its MeshConfig from, and the key holding it.
MESH_CONFIG_MAP = "istio"
MESH_CONFIG_KEY = "mesh"
# extensionProviders kinds that export spans here
TRACING_PROVIDER_KINDS = ("opentelemetry", "zipkin")
# kinds the control plane knows and the waypoints do not use
_OTHER_PROVIDER_KINDS = (
    "prometheus",
    "envoyFileAccessLog",
    "datadog",
    "lightstep",
    "skywalking",
    "stackdriver",
    "envoyExtAuthzHttp",
    "envoyExtAuthzGrpc",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
)


class _Percent(Schema):
    def walk(self, c: Checker, node: Node) -> None:
        if Number().check(c, node) and not 0.0 <= float(node.value) <= 100.0:
            c.error(node, f"{node.value} is not a percentage between 0 and 100")


PERCENT = _Percent()
_HEADER = obj({"name": STR, "value": STR, "envName": STR}, required=("name",))


def _provider(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    kinds = [k for k in (*TRACING_PROVIDER_KINDS, *_OTHER_PROVIDER_KINDS) if k in fields]
    if len(kinds) != 1:
        c.error(
            node,
            f"a provider sets exactly one kind, got {len(kinds)}"
            + (f" ({', '.join(kinds)})" if kinds else ""),
        )
        return
    kind = kinds[0]
    if kind in _OTHER_PROVIDER_KINDS and kind != "prometheus":
        c.warn(fields[kind], f"{kind} providers are not used by ztunnel-py waypoints")
    if kind in TRACING_PROVIDER_KINDS:
        settings = fields[kind]
        for required in ("service", "port"):
            if required not in settings.value:
                c.error(settings.missing(required), "required field is missing")
        path = settings.value.get("path")
        if isinstance(path, str) and path and not path.startswith("/"):
            c.error(c.child(settings, "path"), f"path {path!r} must start with '/'")
        if "http" in settings.value:
            c.error(
                c.child(settings, "http"),
                "OTLP over HTTP is not supported: leave `http` out to export over gRPC",
            )


_TRACING_PROVIDER_COMMON = {
    "service": Str(checks=()),
    "port": PORT,
    "maxTagLength": Int(0, 2**32 - 1, "maxTagLength"),
}
EXTENSION_PROVIDER = obj(
    {
        "name": STR,
        "opentelemetry": obj(
            {
                **_TRACING_PROVIDER_COMMON,
                "grpc": obj({"timeout": DURATION, "initialMetadata": ListOf(_HEADER)}),
                "http": ANY,
                "resourceDetectors": ANY,
                "dynatraceSampler": ANY,
            }
        ),
        "zipkin": obj(
            {
                **_TRACING_PROVIDER_COMMON,
                "enable64bitTraceId": BOOL,
                "path": STR,
                "traceContextOption": Str(
                    choices=("USE_B3", "USE_B3_WITH_W3C_PROPAGATION", "UNSPECIFIED")
                ),
                "timeout": DURATION,
                "headers": ListOf(_HEADER),
            }
        ),
        **{kind: ANY for kind in _OTHER_PROVIDER_KINDS},
    },
    required=("name",),
    hooks=(_provider,),
)


def _mesh_config(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    names: dict[str, int] = {}
    if "extensionProviders" in fields:
        providers = fields["extensionProviders"]
        for i, p in enumerate(providers.value):
            name = p.get("name") if isinstance(p, dict) else None
            if not isinstance(name, str):
                continue
            if not name:
                c.error(c.child(c.index(providers, i), "name"), "a provider needs a name")
            elif name in names:
                c.error(
                    c.child(c.index(providers, i), "name"),
                    f"duplicate provider name {name!r} (same as [{names[name]}])",
                )
            else:
                names[name] = i


MESH_CONFIG = obj(
    {
        "extensionProviders": ListOf(EXTENSION_PROVIDER),
        "defaultProviders": obj(
            {"tracing": ListOf(STR), "metrics": ListOf(STR), "accessLogging": ListOf(STR)}
        ),
        "enableTracing": BOOL,
        "defaultConfig": obj({"tracing": obj({"sampling": PERCENT}, open=True)}, open=True),
    },
    hooks=(_mesh_config,),
    open=True,
)


def _config_map(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    """The ConfigMap `istio` carries MeshConfig: its `mesh` key must be a MeshConfig document."""
    meta = node.value.get("metadata") or {}
    data = fields.get("data")
    if meta.get("name") != MESH_CONFIG_MAP or data is None or MESH_CONFIG_KEY not in data.value:
        return
    where = c.child(data, MESH_CONFIG_KEY)
    text = where.value
    loader = PositionLoader(text)
    try:
        mesh = loader.get_single_data()
    except YAML_ERRORS as e:
        c.error(where, f"MeshConfig is not valid YAML: {e}")
        return
    finally:
        loader.dispose()
    if mesh is None:
        return
    inner = Checker(loader.positions, c.strict)
    MESH_CONFIG.check(inner, Node(mesh, "", None))
    if not isinstance(mesh, dict):
        return
    for problem in inner.problems:
        # the embedded document's positions count from the line after `mesh: |`
        line = (where.pos[0] + problem.line) if where.pos and problem.line else None
        at = Node(
            None,
            f"{where.path}.{problem.path}" if problem.path else where.path,
            (line, problem.column or 1) if line else where.pos,
        )
        report = {Severity.ERROR: c.error, Severity.WARNING: c.warn, Severity.NOTE: c.note}
        report[problem.severity](at, problem.reason)


CONFIG_MAP = KindInfo(
    "ConfigMap",
    ("v1",),
    obj(
        {
            "apiVersion": STR,
            "kind": STR,
            "metadata": metadata(dns1123_subdomain),
            "data": MapOf(STR),
            "binaryData": MapOf(STR),
            "immutable": BOOL,
        },
        required=("metadata",),
        hooks=(_config_map,),
    ),
)


# --- Telemetry -----------------------------------------------------------------------------------

_PROVIDER_REFS = ListOf(obj({"name": STR}, required=("name",)))
_MODE = obj({"mode": Str(choices=("CLIENT_AND_SERVER", "CLIENT", "SERVER"))})


def _custom_tag(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    kinds = [k for k in ("literal", "header", "environment", "formatter") if k in fields]
    if len(kinds) != 1:
        c.error(node, f"a custom tag sets exactly one of literal, header, environment; got {kinds}")
        return
    if kinds[0] == "formatter":
        c.error(fields["formatter"], "formatter tags are not supported")
        return
    if kinds[0] != "literal" and not fields[kinds[0]].value.get("name"):
        c.error(fields[kinds[0]], f"a {kinds[0]} tag needs the {kinds[0]}'s name")


CUSTOM_TAG = obj(
    {
        "literal": obj({"value": STR}),
        "header": obj({"name": STR, "defaultValue": STR}),
        "environment": obj({"name": STR, "defaultValue": STR}),
        "formatter": obj({"value": STR}),
    },
    hooks=(_custom_tag,),
)

TRACING = obj(
    {
        "match": _MODE,
        "providers": _PROVIDER_REFS,
        "randomSamplingPercentage": PERCENT,
        "disableSpanReporting": BOOL,
        "customTags": MapOf(CUSTOM_TAG),
        "useRequestIdForTraceSampling": BOOL,
        "enableIstioTags": BOOL,
    }
)


def _cel(text: str) -> str | None:
    try:
        cel.parse(text)
    except cel.CelError as e:
        return f"not an expression the proxies evaluate: {e}"
    return None


def _label_name(key: object) -> str | None:
    if not isinstance(key, str) or not _LABEL.match(key):
        return f"tag {key!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
    return None


def _tag_override(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    """istiod's rule: UPSERT needs a value, REMOVE takes none."""
    remove = "operation" in fields and fields["operation"].value == "REMOVE"
    if remove and "value" in fields:
        c.error(fields["value"], "a REMOVE takes no value")
    if not remove and "value" not in fields:
        c.error(node.missing("value"), "an UPSERT needs a value")


def _metric_selector(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "customMetric" in fields:
        c.warn(fields["customMetric"], "custom metrics are not supported: ignored")
    metric = fields["metric"].value if "metric" in fields else "ALL_METRICS"
    if metric not in METRICS and metric != "ALL_METRICS":
        c.warn(fields["metric"], f"{metric} is not reported by waypoints' HTTP requests: ignored")


_METRIC_NAMES = (
    "ALL_METRICS",
    *METRICS,
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
)
METRICS_ENTRY = obj(
    {
        "providers": _PROVIDER_REFS,
        "overrides": ListOf(
            obj(
                {
                    "match": obj(
                        {
                            "metric": Str(choices=_METRIC_NAMES),
                            "customMetric": STR,
                            "mode": Str(choices=("CLIENT_AND_SERVER", "CLIENT", "SERVER")),
                        },
                        hooks=(_metric_selector,),
                    ),
                    "disabled": BOOL,
                    "tagOverrides": MapOf(
                        obj(
                            {
                                "operation": Str(choices=("UPSERT", "REMOVE")),
                                "value": Str(checks=(_cel,)),
                            },
                            hooks=(_tag_override,),
                        ),
                        key=_label_name,
                    ),
                }
            )
        ),
        "reportingInterval": DURATION,
    }
)
ACCESS_LOGGING_ENTRY = obj(
    {
        "match": _MODE,
        "providers": _PROVIDER_REFS,
        "disabled": BOOL,
        "filter": obj({"expression": Str(checks=(_cel,))}),
    }
)


def _telemetry_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    targets = [fields[k] for k in ("targetRef", "targetRefs") if k in fields]
    if "selector" in fields and targets:
        c.error(fields["selector"], "selector and targetRef(s) are mutually exclusive")
    if "tracing" in fields and len(fields["tracing"].value) > 1:
        c.warn(
            c.index(fields["tracing"], 1),
            "only the first tracing entry is used (Istio supports one tracing configuration)",
        )
    for i, entry in enumerate(fields["metrics"].value if "metrics" in fields else ()):
        if "reportingInterval" in entry:
            where = c.child(c.index(fields["metrics"], i), "reportingInterval")
            c.warn(where, "ignored: Prometheus scrapes the proxies' current values")


TELEMETRY_SPEC = obj(
    {
        "selector": WORKLOAD_SELECTOR,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "tracing": ListOf(TRACING),
        "metrics": ListOf(METRICS_ENTRY),
        "accessLogging": ListOf(ACCESS_LOGGING_ENTRY),
    },
    hooks=(_telemetry_spec,),
)

KINDS: dict[str, KindInfo] = {
    "Telemetry": custom_resource(
        "Telemetry", ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"), TELEMETRY_SPEC
    ),
}
