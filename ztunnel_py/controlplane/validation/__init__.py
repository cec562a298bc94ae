"""Validation (the role Istio's Galley had): a parsed document in, a `Resource` or the reasons
it is rejected out.

`validate_document` checks one document alone: its kind and apiVersion, every field against the
kind's schema (`kinds.py` collects them from one module per API group), and the semantic rules
(CIDRs, ports, principals, selectors...).
Errors reject the resource; warnings (e.g. HTTP attributes in an L4 AuthorizationPolicy) are
reported and the resource is accepted. Conflicts between resources (duplicates, two Services on
one clusterIP) are the store's business (`store.py`), since they depend on what else is loaded.
A `kind: List` document is expanded into its items (`items[2].spec...`).

A GitOps repository holds much more than the mesh's kinds: a document of a kind the control
plane does not use (a Deployment, a ConfigMap, an Istio Sidecar or Telemetry, a CRD...) is
skipped with a note, not an error (`skipped`). An unknown kind in an API group the control plane
reads (`security.istio.io/v1 AuthorizationPolicys`) or in core `v1` is still an error: it is more
likely a typo than something to ignore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ztunnel_py.controlplane.resources import Diagnostic, Document, Resource, ResourceKey
from ztunnel_py.controlplane.validation import extensions, kinds, routing
from ztunnel_py.controlplane.validation.kube import KindInfo
from ztunnel_py.yamlschema.schema import Checker, Node, describe_value

DEFAULT_NAMESPACE = "default"
KINDS: dict[str, KindInfo] = {**kinds.KINDS, **extensions.KINDS, **routing.KINDS}


# API groups whose kinds the control plane reads (every group of a kind it validates; the core
# group is ""): an unknown kind there is an error
_OUR_GROUPS = frozenset(
    version.rpartition("/")[0] for info in KINDS.values() for version in info.api_versions
)
# kinds of those groups it knows and does not use, by group
_NOT_USED: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Endpoints",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "LimitRange",
            "ResourceQuota",
            "Node",
            "ReplicationController",
            "PodTemplate",
            "Event",
        }
    ),
    "networking.istio.io": frozenset(
        {"Gateway", "Sidecar", "EnvoyFilter", "ProxyConfig", "WorkloadGroup"}
    ),
    "gateway.networking.k8s.io": frozenset(
        {
            "GatewayClass",
            "GRPCRoute",
            "TCPRoute",
            "TLSRoute",
            "UDPRoute",
            "ReferenceGrant",
            "BackendTLSPolicy",
            "BackendLBPolicy",
        }
    ),
}


@dataclass(frozen=True, slots=True)
class Validated:
    """The outcome for one object: the resource if accepted, its key if it could be identified
    (so a rejected new version can fall back to the last good one), and the diagnostics;
    `skipped`: a kind the control plane does not use, set aside on purpose."""

    resource: Resource | None
    key: ResourceKey | None
    diagnostics: tuple[Diagnostic, ...]
    skipped: bool = False


def validate_document(doc: Document) -> list[Validated]:
    """Validate one document (several objects for a `kind: List`); never raises."""
    root = Node(doc.body, "", (doc.line, 1) if doc.line is not None else None)
    return _validate(doc, root)


def _validate(doc: Document, node: Node) -> list[Validated]:
    c = Checker(doc.positions, doc.strict)
    body = node.value
    if not isinstance(body, dict):
        c.error(
            node,
            "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), "
            f"got {describe_value(body)}",
        )
        return [Validated(None, None, _diagnostics(doc, c))]
    kind = body.get("kind")
    if kind == "List" and body.get("apiVersion") == "v1" and isinstance(body.get("items"), list):
        items = c.child(node, "items")
        return [r for i in range(len(items.value)) for r in _validate(doc, c.index(items, i))]
    api_version = body.get("apiVersion")
    if _not_used(kind, api_version):
        c.note(
            c.child(node, "kind"),
            f"skipped: {kind} ({api_version}) is not a kind the ztunnel-py control plane uses",
        )
        return [Validated(None, None, _diagnostics(doc, c), skipped=True)]
    info = _kind(c, node, kind)
    if info is None:
        return [Validated(None, None, _diagnostics(doc, c))]
    if api_version not in info.api_versions:
        where = c.child(node, "apiVersion") if "apiVersion" in body else node.missing("apiVersion")
        served = ", ".join(info.api_versions)
        reason = (
            f"apiVersion {api_version!r} is not served for kind {info.kind} (use {served})"
            if "apiVersion" in body
            else f"required field is missing (use {served})"
        )
        c.error(where, reason)
    key = _key(c, node, info)
    info.schema.check(c, node)
    diagnostics = _diagnostics(doc, c)
    if c.error_count or key is None or not isinstance(api_version, str):
        return [Validated(None, key, diagnostics)]
    return [Validated(Resource(key, api_version, body, doc.origin), key, diagnostics)]


_API_VERSION = re.compile(r"^([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?)/[a-z0-9]+$")
_KIND_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _not_used(kind: object, api_version: object) -> bool:
    """A well-formed object of a kind we do not use: a kind of another API group, or one of
    ours we know and leave alone (an Istio `networking.istio.io` Gateway, a Sidecar...)."""
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return False
    if api_version == "v1":
        return kind in _NOT_USED[""]
    m = _API_VERSION.match(api_version)
    if m is None or not _KIND_NAME.match(kind):
        return False  # malformed: an error below, never set aside unseen
    group = m.group(1)
    if group not in _OUR_GROUPS:
        return True
    return kind in _NOT_USED.get(group, frozenset())


def _diagnostics(doc: Document, c: Checker) -> tuple[Diagnostic, ...]:
    return tuple(Diagnostic.of(doc.origin, p) for p in c.problems)


def _kind(c: Checker, node: Node, kind: object) -> KindInfo | None:
    if kind is None:
        c.error(node.missing("kind"), "required field is missing")
        return None
    where = c.child(node, "kind")
    if not isinstance(kind, str):
        c.error(where, f"expected a string, got {describe_value(kind)}")
        return None
    info = KINDS.get(kind)
    if info is None:
        near = [k for k in KINDS if k.lower() == kind.lower()]
        hint = f" (did you mean {near[0]!r}?)" if near else f" (supported: {', '.join(KINDS)})"
        c.error(where, f"unknown kind {kind!r}{hint}")
    return info


def _key(c: Checker, node: Node, info: KindInfo) -> ResourceKey | None:
    """The object's identity, if its metadata is readable (even when other fields are not)."""
    meta = node.value.get("metadata")
    if not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    if not info.namespaced:
        if namespace is not None:
            c.warn(
                c.child(c.child(node, "metadata"), "namespace"),
                f"ignored: {info.kind} is not namespaced",
            )
        return ResourceKey(info.kind, "", name)
    if namespace is None:
        return ResourceKey(info.kind, DEFAULT_NAMESPACE, name)
    if not isinstance(namespace, str) or not namespace:
        return None
    return ResourceKey(info.kind, namespace, name)


__all__ = ["DEFAULT_NAMESPACE", "KINDS", "Validated", "validate_document"]
