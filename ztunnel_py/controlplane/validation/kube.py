"""What every Kubernetes object shares: naming rules, labels, `metadata`, and the `KindInfo`
an API group module describes each of its kinds with.

A kind's schema is `kube_object(name_check, spec)`: apiVersion, kind, metadata (checked in
depth: names, namespace, labels, annotations, timestamps), spec, and status (accepted as
written unless the kind's module describes it, as `core.py` does for Pods).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ztunnel_py.model.names import dns1123_label, dns1123_subdomain
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    INT,
    STR,
    Checker,
    Hook,
    ListOf,
    MapOf,
    Node,
    Obj,
    Schema,
    Str,
    StrCheck,
    obj,
    strings,
)


@dataclass(frozen=True, slots=True)
class KindInfo:
    kind: str
    api_versions: tuple[str, ...]
    schema: Schema
    namespaced: bool = True


def names(text: str) -> tuple[str, ...]:
    """Field names written as one space-separated string (long lists of unchecked fields)."""
    return tuple(text.split())


# --- names -------------------------------------------------------------------------------------

_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA_SVC_NAME = re.compile(r"^[-a-z0-9]+$")


def label_key(key: object) -> str | None:
    """A qualified name: `[prefix/]name` (Kubernetes label and annotation keys)."""
    if not isinstance(key, str):
        return f"label key {key!r} must be a string"
    if not key:
        return "label key must not be empty: an empty key can never match"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns1123_subdomain(prefix)):
        return f"invalid label key {key!r}: the prefix must be a DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"invalid label key {key!r}: the name part must be 1-63 characters of letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def label_value(text: str) -> str | None:
    if text and (len(text) > 63 or not _LABEL_NAME.match(text)):
        return (
            f"invalid label value {text!r}: at most 63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def port_name(text: str) -> str | None:
    """IANA_SVC_NAME, as Kubernetes requires for container port names and named targetPorts."""
    if (
        not 1 <= len(text) <= 15
        or not _IANA_SVC_NAME.match(text)
        or not any(ch.isalpha() for ch in text)
        or text.startswith("-")
        or text.endswith("-")
        or "--" in text
    ):
        return (
            f"invalid port name {text!r}: 1-15 lowercase letters, digits and '-', with at least "
            "one letter, no '-' at either end and no '--'"
        )
    return None


LABELS = MapOf(Str(checks=(label_value,)), key=label_key)
SELECTOR_MATCH_LABELS = obj({"matchLabels": LABELS})

# --- metadata ----------------------------------------------------------------------------------


def _timestamp(text: str) -> str | None:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return f"{text!r} is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z)"
    return None


def _annotation_key(key: object) -> str | None:
    problem = label_key(key)
    return problem.replace("label key", "annotation key") if problem else None


def _no_generate_name(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "generateName" in fields and "name" not in fields:
        c.error(fields["generateName"], "generateName is not supported here: set metadata.name")


OWNER_REFERENCE = obj(
    {
        "apiVersion": STR,
        "kind": STR,
        "name": STR,
        "uid": STR,
        "controller": BOOL,
        "blockOwnerDeletion": BOOL,
    },
    required=("apiVersion", "kind", "name"),
)


def metadata(name_check: StrCheck) -> Obj:
    return obj(
        {
            "name": Str(checks=(name_check,)),
            "generateName": STR,
            "namespace": Str(checks=(dns1123_label,)),
            "labels": LABELS,
            "annotations": MapOf(STR, key=_annotation_key),
            "uid": STR,
            "resourceVersion": STR,
            "generation": INT,
            "creationTimestamp": Str(checks=(_timestamp,)),
            "deletionTimestamp": Str(checks=(_timestamp,)),
            "deletionGracePeriodSeconds": INT,
            "ownerReferences": ListOf(OWNER_REFERENCE),
            "finalizers": strings(),
            "managedFields": ANY,
            "selfLink": STR,
        },
        required=("name",),
        hooks=(_no_generate_name,),
    )


def kube_object(
    name_check: StrCheck,
    spec: Schema | None,
    *,
    spec_required: bool,
    status: Schema = ANY,
    hooks: tuple[Hook, ...] = (),
) -> Obj:
    fields: dict[str, Schema] = {
        "apiVersion": STR,
        "kind": STR,
        "metadata": metadata(name_check),
        "status": status,
    }
    if spec is not None:
        fields["spec"] = spec
    return obj(
        fields, required=("metadata", "spec") if spec_required else ("metadata",), hooks=hooks
    )


def custom_resource(
    kind: str,
    api_versions: tuple[str, ...],
    spec: Schema,
    *,
    spec_required: bool = True,
    hooks: tuple[Hook, ...] = (),
) -> KindInfo:
    """A namespaced custom resource (Istio's and the Gateway API's kinds): its name is a DNS
    subdomain, its status is the controller's business."""
    return KindInfo(
        kind,
        api_versions,
        kube_object(dns1123_subdomain, spec, spec_required=spec_required, hooks=hooks),
    )
