"""AuthorizationPolicy and PeerAuthentication to L4 `Authorization`s, the way istiod converts
them (`pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go`).

AuthorizationPolicy: scope GLOBAL in the root namespace without a selector, NAMESPACE without a
selector, WORKLOAD_SELECTOR with one; each rule becomes a rule whose clauses are `to` (ports),
`from` (sources) and one clause per L4 `when` condition. Policies with `targetRef(s)` belong to
a waypoint and are not converted. HTTP attributes: an ALLOW rule that needs them is dropped (it
can never match at L4); a DENY rule is enforced without them. istiod keeps an operation or
source whose only fields were HTTP ones as an empty match, which ztunnel treats as "never
matches", so such a DENY rule silently did nothing; we drop the whole clause instead, so the rule
applies at L4 as istiod's code comment and Istio's documentation promise ("more restrictive").

PeerAuthentication (docs/istio-compat.md, "PeerAuthentication"): the effective mode for a workload
is resolved mesh -> namespace -> workload (oldest policy wins at each level). STRICT references the
static DENY policy `<root>/istio_converted_static_strict` ("principal not present" = plaintext); a
workload policy with port-level exceptions becomes `converted_peer_authentication_<name>`. Where
istiod's conditions for inheriting the parent mode disagree with its own comments (a namespace
policy with mode UNSET, a PERMISSIVE workload policy with a STRICT port under a STRICT mesh), we
follow the documented inheritance, so the converted policy always exists when a workload references
it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.validation.istio_security import L4_CONDITIONS, l7_attributes
from ztunnel_py.model import (
    Action,
    Authorization,
    Cidr,
    Match,
    PolicyScope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)

DRY_RUN_ANNOTATION = "istio.io/dry-run"
STATIC_STRICT_NAME = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"

PRESENCE = StringMatch(StringMatchKind.PRESENCE)
_Rule = tuple[tuple[Match, ...], ...]


# --- AuthorizationPolicy -----------------------------------------------------------------------


def has_target_refs(policy: Resource) -> bool:
    return bool(policy.spec.get("targetRef") or policy.spec.get("targetRefs"))


def selector_labels(resource: Resource) -> Mapping[str, str] | None:
    """`spec.selector.matchLabels` of a policy; None without a selector ({} selects all)."""
    selector = resource.spec.get("selector")
    if selector is None:
        return None
    labels: Mapping[str, str] = selector.get("matchLabels") or {}
    return labels


def authorization(policy: Resource, root_namespace: str) -> Authorization | None:
    """The L4 form of an AuthorizationPolicy; None if a waypoint enforces it (targetRefs)."""
    if has_target_refs(policy):
        return None
    spec = policy.spec
    if selector_labels(policy) is not None:
        scope = PolicyScope.WORKLOAD_SELECTOR
    elif policy.namespace == root_namespace:
        scope = PolicyScope.GLOBAL
    else:
        scope = PolicyScope.NAMESPACE
    action = Action.DENY if spec.get("action") == "DENY" else Action.ALLOW
    rules = tuple(
        r
        for r in (_rule(action, rule, policy.namespace) for rule in spec.get("rules") or ())
        if r is not None
    )
    dry_run = policy.annotations.get(DRY_RUN_ANNOTATION, "").lower() == "true"
    return Authorization(policy.name, policy.namespace, scope, action, rules, dry_run)


def _rule(action: Action, rule: Mapping[str, Any], namespace: str) -> _Rule | None:
    if action is Action.ALLOW and l7_attributes(rule):
        return None
    clauses: list[tuple[Match, ...]] = []
    to = [operation_match(entry["operation"]) for entry in rule.get("to") or ()]
    if to and all(not m.is_empty() for m in to):
        clauses.append(tuple(to))
    sources = [source_match(entry["source"], namespace) for entry in rule.get("from") or ()]
    if sources and all(not m.is_empty() for m in sources):
        clauses.append(tuple(sources))
    for when in rule.get("when") or ():
        if when["key"] in L4_CONDITIONS:
            clauses.append((condition_match(when),))
    return tuple(clauses)


def operation_match(op: Mapping[str, Any]) -> Match:
    return Match(
        destination_ports=_ports(op.get("ports")),
        not_destination_ports=_ports(op.get("notPorts")),
    )


def source_match(src: Mapping[str, Any], namespace: str) -> Match:
    return Match(
        source_ips=_cidrs(src.get("ipBlocks")),
        not_source_ips=_cidrs(src.get("notIpBlocks")),
        namespaces=string_matches(src.get("namespaces")),
        not_namespaces=string_matches(src.get("notNamespaces")),
        service_accounts=account_matches(src.get("serviceAccounts"), namespace),
        not_service_accounts=account_matches(src.get("notServiceAccounts"), namespace),
        principals=string_matches(src.get("principals")),
        not_principals=string_matches(src.get("notPrincipals")),
    )


def condition_match(when: Mapping[str, Any]) -> Match:
    key = when["key"]
    values, not_values = when.get("values"), when.get("notValues")
    fields: dict[str, Any] = {}
    if key == "source.ip":
        fields = {"source_ips": _cidrs(values), "not_source_ips": _cidrs(not_values)}
    elif key == "destination.ip":
        fields = {"destination_ips": _cidrs(values), "not_destination_ips": _cidrs(not_values)}
    elif key == "destination.port":
        fields = {"destination_ports": _ports(values), "not_destination_ports": _ports(not_values)}
    elif key == "source.namespace":
        fields = {
            "namespaces": string_matches(values),
            "not_namespaces": string_matches(not_values),
        }
    elif key == "source.principal":
        fields = {
            "principals": string_matches(values),
            "not_principals": string_matches(not_values),
        }
    return Match(**fields)


def string_matches(values: Iterable[str] | None) -> tuple[StringMatch, ...]:
    """Istio's wildcard strings: `*` presence, `*x` suffix, `x*` prefix, else exact."""
    out: list[StringMatch] = []
    for v in values or ():
        if v == "*":
            out.append(PRESENCE)
        elif v.startswith("*"):
            out.append(StringMatch(StringMatchKind.SUFFIX, v[1:]))
        elif v.endswith("*"):
            out.append(StringMatch(StringMatchKind.PREFIX, v[:-1]))
        else:
            out.append(StringMatch(StringMatchKind.EXACT, v))
    return tuple(out)


def account_matches(
    values: Iterable[str] | None, namespace: str
) -> tuple[ServiceAccountMatch, ...]:
    out = []
    for v in values or ():
        ns, slash, sa = v.partition("/")
        out.append(ServiceAccountMatch(ns, sa) if slash else ServiceAccountMatch(namespace, v))
    return tuple(out)


def _ports(values: Iterable[str] | None) -> tuple[int, ...]:
    return tuple(int(v) for v in values or ())


def _cidrs(values: Iterable[str] | None) -> tuple[Cidr, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values or ())


# --- PeerAuthentication ------------------------------------------------------------------------


def static_strict_policy(root_namespace: str) -> Authorization:
    return Authorization(
        STATIC_STRICT_NAME,
        root_namespace,
        PolicyScope.WORKLOAD_SELECTOR,
        Action.DENY,
        (((Match(not_principals=(PRESENCE,)),),),),
    )


def converted_name(peer_authentication: Resource) -> str:
    return CONVERTED_PREFIX + peer_authentication.name


def _mode(mtls: Mapping[str, Any] | None) -> str:
    """UNSET, DISABLE, PERMISSIVE or STRICT (absent = UNSET)."""
    if not mtls:
        return "UNSET"
    mode: str = mtls.get("mode") or "UNSET"
    return mode


def _port_modes(pa: Resource) -> list[tuple[int, str]]:
    levels = pa.spec.get("portLevelMtls") or {}
    return sorted((int(port), _mode(mtls)) for port, mtls in levels.items())


def is_namespace_level(pa: Resource) -> bool:
    labels = selector_labels(pa)
    return not labels


def _parent_strict(namespace_pa: Resource | None, mesh_pa: Resource | None) -> bool:
    """Whether the mode a workload inherits (namespace, else mesh) is STRICT."""
    if namespace_pa is not None and _mode(namespace_pa.spec.get("mtls")) != "UNSET":
        return _mode(namespace_pa.spec.get("mtls")) == "STRICT"
    return mesh_pa is not None and _mode(mesh_pa.spec.get("mtls")) == "STRICT"


def convert_peer_authentication(
    pa: Resource,
    namespace_pa: Resource | None,
    mesh_pa: Resource | None,
    root_namespace: str,
) -> Authorization | None:
    """The DENY policy for a workload-level PeerAuthentication with port-level settings."""
    if pa.namespace == root_namespace or is_namespace_level(pa) or not _port_modes(pa):
        return None
    mode = _mode(pa.spec.get("mtls"))
    parent_strict = _parent_strict(namespace_pa, mesh_pa)
    rules: list[_Rule] = []
    clauses: list[tuple[Match, ...]] = []
    if mode == "STRICT":
        clauses.append((Match(not_principals=(PRESENCE,)),))
    found_non_strict = False
    for port, port_mode in _port_modes(pa):
        if port_mode == "STRICT":
            if mode == "STRICT" or (mode == "UNSET" and parent_strict):
                continue  # the parent STRICT already covers this port
            rules.append(((Match(not_principals=(PRESENCE,), destination_ports=(port,)),),))
        elif port_mode in ("PERMISSIVE", "DISABLE"):
            if mode in ("PERMISSIVE", "DISABLE") or (mode == "UNSET" and not parent_strict):
                continue  # nothing is STRICT around this port
            found_non_strict = True
            clauses.append((Match(not_destination_ports=(port,)),))
    if mode == "STRICT" and not found_non_strict:
        return None  # plain STRICT: the static policy covers it
    if not clauses and not rules:
        return None
    if parent_strict and found_non_strict:
        # Fold the inherited STRICT in, so the static policy can be left off the workload.
        clauses.append((Match(not_principals=(PRESENCE,)),))
    if clauses:
        rules.append(tuple(clauses))
    return Authorization(
        converted_name(pa), pa.namespace, PolicyScope.WORKLOAD_SELECTOR, Action.DENY, tuple(rules)
    )


def oldest(policies: Sequence[Resource]) -> Resource | None:
    """istiod's conflict rule: the oldest policy wins (file order when there is no timestamp)."""
    return min(policies, key=creation_order, default=None)


def creation_order(resource: Resource) -> tuple[str, str, int, str]:
    created = resource.metadata.get("creationTimestamp") or ""
    return (created, resource.origin.source, resource.origin.index, resource.name)


def workload_peer_authentication_keys(
    applicable: Sequence[Resource], root_namespace: str
) -> list[str]:
    """istiod's `convertedSelectorPeerAuthentications`: the PeerAuthentication-derived policy
    keys for a workload, given the PeerAuthentications in its namespace and the root namespace
    that select it (or have no selector)."""
    mesh = oldest(
        [p for p in applicable if is_namespace_level(p) and p.namespace == root_namespace]
    )
    namespace = oldest(
        [p for p in applicable if is_namespace_level(p) and p.namespace != root_namespace]
    )
    workload = oldest(
        [p for p in applicable if not is_namespace_level(p) and p.namespace != root_namespace]
    )
    strict = mesh is not None and _mode(mesh.spec.get("mtls")) == "STRICT"
    if namespace is not None and _mode(namespace.spec.get("mtls")) != "UNSET":
        strict = _mode(namespace.spec.get("mtls")) == "STRICT"
    port_policy = ""
    if workload is not None:
        mode = _mode(workload.spec.get("mtls"))
        if mode == "STRICT":
            strict = True
        elif mode in ("PERMISSIVE", "DISABLE"):
            strict = False
        port_modes = [m for _, m in _port_modes(workload)]
        converted_key = f"{workload.namespace}/{converted_name(workload)}"
        if port_modes:
            if mode == "STRICT":
                if any(m in ("PERMISSIVE", "DISABLE") for m in port_modes):
                    port_policy, strict = converted_key, False
            elif mode in ("PERMISSIVE", "DISABLE"):
                if "STRICT" in port_modes:
                    port_policy = converted_key
            elif strict:
                if any(m in ("PERMISSIVE", "DISABLE") for m in port_modes):
                    port_policy, strict = converted_key, False
            elif "STRICT" in port_modes:
                port_policy = converted_key
    keys = {f"{root_namespace}/{STATIC_STRICT_NAME}"} if strict else set()
    if port_policy:
        keys.add(port_policy)
    return sorted(keys)
