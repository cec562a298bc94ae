"""security.istio.io: AuthorizationPolicy and PeerAuthentication, with the rules istiod applies
and what ztunnel can enforce at L4.

An AuthorizationPolicy that targets a waypoint (`targetRefs`) is checked for shape only; one
enforced by ztunnel gets errors for what L4 cannot do (AUDIT, CUSTOM) and warnings for rules
that use HTTP attributes. `L4_CONDITIONS` and `l7_attributes` are shared with the translation,
so validation and enforcement agree on what L4 means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ztunnel_py.controlplane.validation.kube import (
    SELECTOR_MATCH_LABELS,
    KindInfo,
    custom_resource,
)
from ztunnel_py.model.names import dns1123_label, dns1123_subdomain
from ztunnel_py.yamlschema.schema import (
    STR,
    Checker,
    Hook,
    ListOf,
    MapOf,
    Node,
    Str,
    StrCheck,
    cidr,
    obj,
    port_key,
    port_string,
    strings,
)

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

# --- AuthorizationPolicy -----------------------------------------------------------------------


def _no_empty(text: str) -> str | None:
    return "empty value is not allowed" if text == "" else None


def _wildcard(text: str, what: str) -> str | None:
    """Istio string matches: exact, `*`, `prefix*` or `*suffix`; returns a problem."""
    if text == "":
        return f"empty {what} is not allowed"
    inner = text[1:] if text.startswith("*") else text
    inner = inner[:-1] if inner.endswith("*") and len(inner) > 0 else inner
    if "*" in inner:
        return f"invalid {what} {text!r}: '*' is only allowed at the start or the end"
    if text.startswith("*") and text.endswith("*") and len(text) > 1:
        return f"invalid {what} {text!r}: '*' is only allowed at the start or the end, not both"
    return None


def principal(text: str) -> str | None:
    """`<trust domain>/ns/<namespace>/sa/<account>`, `*`, or with a leading/trailing `*`."""
    problem = _wildcard(text, "principal")
    if problem:
        return problem
    if text.startswith("spiffe://"):
        return (
            f"invalid principal {text!r}: write it without 'spiffe://', "
            f"e.g. {text[len('spiffe://') :]!r}"
        )
    if "*" in text:
        return None
    parts = text.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts[::2]):
        return (
            f"malformed principal {text!r}: expected <trust domain>/ns/<namespace>/sa/"
            "<service account> (or a '*' prefix/suffix wildcard)"
        )
    return None


def namespace_match(text: str) -> str | None:
    problem = _wildcard(text, "namespace")
    if problem or "*" in text:
        return problem
    return dns1123_label(text)


def _service_account_ref(text: str) -> str | None:
    """`<account>` (in the policy's namespace) or `<namespace>/<account>`."""
    ns, slash, sa = text.rpartition("/")
    if slash and dns1123_label(ns):
        return f"invalid service account {text!r}: expected <account> or <namespace>/<account>"
    if dns1123_subdomain(sa):
        return f"invalid service account {text!r}: expected <account> or <namespace>/<account>"
    return None


_SOURCE_FIELDS = {
    "principals": principal,
    "notPrincipals": principal,
    "requestPrincipals": _no_empty,
    "notRequestPrincipals": _no_empty,
    "namespaces": namespace_match,
    "notNamespaces": namespace_match,
    "serviceAccounts": _service_account_ref,
    "notServiceAccounts": _service_account_ref,
    "ipBlocks": cidr,
    "notIpBlocks": cidr,
    "remoteIpBlocks": cidr,
    "notRemoteIpBlocks": cidr,
}
_OPERATION_FIELDS = {
    "hosts": _no_empty,
    "notHosts": _no_empty,
    "ports": port_string,
    "notPorts": port_string,
    "methods": _no_empty,
    "notMethods": _no_empty,
    "paths": _no_empty,
    "notPaths": _no_empty,
}


def _not_empty_object(what: str) -> Hook:
    def hook(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
        if not any(f.value for f in fields.values()):
            c.error(node, f"{what} must not be empty")

    return hook


def _accounts_alone(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    accounts = [k for k in ("serviceAccounts", "notServiceAccounts") if k in fields]
    others = [
        k for k in ("principals", "notPrincipals", "namespaces", "notNamespaces") if k in fields
    ]
    if accounts and others:
        c.error(
            fields[accounts[0]],
            f"{accounts[0]} cannot be combined with {', '.join(others)} in the same source",
        )


SOURCE = obj(
    {k: strings(check) for k, check in _SOURCE_FIELDS.items()},
    hooks=(_not_empty_object("from.source"), _accounts_alone),
)
OPERATION = obj(
    {k: strings(check) for k, check in _OPERATION_FIELDS.items()},
    hooks=(_not_empty_object("to.operation"),),
)

# L4 `when` keys (ztunnel can evaluate them) and how their values are checked.
L4_CONDITIONS: dict[str, StrCheck] = {
    "source.ip": cidr,
    "source.namespace": namespace_match,
    "source.principal": principal,
    "destination.ip": cidr,
    "destination.port": port_string,
}
_L7_CONDITIONS = (
    "remote.ip",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "connection.sni",
    "source.serviceAccount",
)
_L7_CONDITION_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")


def is_known_condition(key: str) -> bool:
    return key in L4_CONDITIONS or key in _L7_CONDITIONS or key.startswith(_L7_CONDITION_PREFIXES)


def _condition(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    key = fields["key"].value
    if not is_known_condition(key):
        c.error(
            fields["key"],
            f"unknown condition key {key!r} (L4 keys: {', '.join(L4_CONDITIONS)})",
        )
        return
    if (
        not fields.get("values", Node([], "")).value
        and not fields.get("notValues", Node([], "")).value
    ):
        c.error(node, f"condition {key!r} needs values or notValues")
        return
    check = L4_CONDITIONS.get(key)
    if check is None:
        return
    for name in ("values", "notValues"):
        if name in fields:
            for i, value in enumerate(fields[name].value):
                problem = check(value)
                if problem:
                    c.error(c.index(fields[name], i), problem)


CONDITION = obj(
    {"key": STR, "values": strings(), "notValues": strings()},
    required=("key",),
    hooks=(_condition,),
)

RULE = obj(
    {
        "from": ListOf(obj({"source": SOURCE}, required=("source",))),
        "to": ListOf(obj({"operation": OPERATION}, required=("operation",))),
        "when": ListOf(CONDITION),
    }
)

POLICY_TARGET_REF = obj(
    {"group": STR, "kind": STR, "name": STR, "namespace": STR, "sectionName": STR},
    required=("kind", "name"),
)


def l7_attributes(rule: Mapping[str, Any]) -> list[str]:
    """The attributes of an AuthorizationPolicy rule that need HTTP (istiod's list), in order."""
    found: list[str] = []
    for to in rule.get("to") or ():
        op = to.get("operation") or {}
        for key in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"):
            if op.get(key) and key not in found:
                found.append(key)
    for source_entry in rule.get("from") or ():
        src = source_entry.get("source") or {}
        for key in (
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "requestPrincipals",
            "notRequestPrincipals",
        ):
            if src.get(key) and key not in found:
                found.append(key)
    for when in rule.get("when") or ():
        if when["key"] not in L4_CONDITIONS and when["key"] not in found:
            found.append(when["key"])
    return found


def _authorization_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    targets = [fields[k] for k in ("targetRef", "targetRefs") if k in fields]
    if "selector" in fields and targets:
        c.error(fields["selector"], "selector and targetRef(s) are mutually exclusive")
        return
    action = fields["action"].value if "action" in fields else "ALLOW"
    if action == "CUSTOM" and "provider" not in fields:
        c.error(node.missing("provider"), "required for action CUSTOM")
    if "provider" in fields and action != "CUSTOM":
        c.error(fields["provider"], "provider is only allowed with action CUSTOM")
    if targets:
        return  # enforced by a waypoint, not at L4
    if action in ("AUDIT", "CUSTOM"):
        c.error(
            fields["action"],
            f"action {action} cannot be enforced by ztunnel at L4 (only ALLOW and DENY): "
            "attach the policy to a waypoint with targetRefs",
        )
        return
    rules = fields.get("rules")
    if rules is None:
        return
    dropped = 0
    for i, rule in enumerate(rules.value):
        attrs = l7_attributes(rule)
        if not attrs:
            continue
        consequence = (
            "in an ALLOW policy the rule is omitted and matches nothing"
            if action == "ALLOW"
            else "in a DENY policy the rule is enforced without them, which denies more than "
            "requested"
        )
        c.warn(
            c.index(rules, i),
            f"rule {i} uses HTTP attributes ({', '.join(attrs)}) that ztunnel cannot enforce "
            f"at L4; {consequence}. Use a waypoint (targetRefs) for HTTP rules",
        )
        dropped += 1
    if action == "ALLOW" and rules.value and dropped == len(rules.value):
        c.warn(
            rules,
            "every rule needs HTTP attributes: this ALLOW policy denies all traffic to "
            "the workloads it selects",
        )


DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _dry_run_annotation(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    annotations = fields["metadata"].value.get("annotations") or {}
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is not None and value not in ("true", "false"):
        where = c.child(c.child(fields["metadata"], "annotations"), DRY_RUN_ANNOTATION)
        c.error(where, f"{value!r} is not one of true, false")


AUTHORIZATION_POLICY_SPEC = obj(
    {
        "selector": SELECTOR_MATCH_LABELS,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "rules": ListOf(RULE),
        "action": Str(choices=("ALLOW", "DENY", "AUDIT", "CUSTOM")),
        "provider": obj({"name": STR}, required=("name",)),
    },
    hooks=(_authorization_spec,),
)

# --- PeerAuthentication ------------------------------------------------------------------------

MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
MTLS = obj({"mode": Str(choices=MTLS_MODES)})


def _peer_authentication_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    selector = fields.get("selector")
    has_selector = selector is not None and bool(selector.value.get("matchLabels"))
    if "portLevelMtls" in fields and fields["portLevelMtls"].value and not has_selector:
        c.error(
            fields["portLevelMtls"],
            "portLevelMtls needs a selector: mesh- and namespace-wide PeerAuthentications "
            "cannot have port-level settings",
        )
    modes = [(fields["mtls"], fields["mtls"].value.get("mode"))] if "mtls" in fields else []
    if "portLevelMtls" in fields:
        modes += [
            (c.child(fields["portLevelMtls"], port), (value or {}).get("mode"))
            for port, value in fields["portLevelMtls"].value.items()
        ]
    for where, mode in modes:
        if mode == "DISABLE":
            c.warn(
                where,
                "mTLS mode DISABLE is not supported in ambient mode: it is treated as "
                "PERMISSIVE (plaintext accepted, HBONE still used between meshed pods)",
            )


PEER_AUTHENTICATION_SPEC = obj(
    {
        "selector": SELECTOR_MATCH_LABELS,
        "mtls": MTLS,
        "portLevelMtls": MapOf(MTLS, key=port_key),
    },
    hooks=(_peer_authentication_spec,),
)

KINDS: tuple[KindInfo, ...] = (
    custom_resource(
        "AuthorizationPolicy",
        API_VERSIONS,
        AUTHORIZATION_POLICY_SPEC,
        spec_required=False,
        hooks=(_dry_run_annotation,),
    ),
    custom_resource(
        "PeerAuthentication", API_VERSIONS, PEER_AUTHENTICATION_SPEC, spec_required=False
    ),
)
