"""AuthorizationPolicy and PeerAuthentication to L4 `Authorization`s, exactly as istiod converts
them (`pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go`).

AuthorizationPolicy (`convertAuthorizationPolicy`, `handleRule`): scope GLOBAL in the root
namespace without a selector, NAMESPACE without a selector, WORKLOAD_SELECTOR with one (a
`selector: {}` without labels selects no workload: istiod attaches a workload's policies by
their labels, and there are none). Only ALLOW and DENY reach ztunnel; AUDIT and CUSTOM policies
are not converted (`ztunnel does not support the <action> action`), nor are policies with
`targetRef(s)`, which a waypoint enforces. Each rule becomes a rule whose clauses are `to` (one
match per entry: its ports), `from` (one match per entry: its L4 source fields) and one clause
per `when` condition. HTTP attributes (hosts, methods, paths, remote IP blocks, request
principals, non-L4 `when` keys) are left out of their match, so an entry or condition made only
of them is an empty match, which ztunnel never matches: in a DENY rule such a clause makes the
rule match nothing at L4 (a DENY with only HTTP attributes has no effect on ztunnel) and a mixed
entry is enforced without its HTTP parts; an ALLOW rule with any HTTP attribute is omitted.
Validation reports istiod's status text for such a policy as a warning.

PeerAuthentication (docs/istio-compat.md, "PeerAuthentication"), as istiod: the effective mode
for a workload is resolved mesh -> namespace -> workload (oldest policy wins at each level);
STRICT references the static DENY policy `<root>/istio_converted_static_strict` ("principal not
present" = plaintext), which is sent whenever any PeerAuthentication exists; a workload policy
with port-level settings becomes `converted_peer_authentication_<name>`. istiod's conditions are
copied as they are, including where they disagree with its own comments: a PERMISSIVE or DISABLE
workload policy with a STRICT port under a STRICT mesh, and an UNSET workload policy with a
PERMISSIVE port under a namespace policy of mode UNSET, reference a converted policy istiod
never creates, so the workload is left without STRICT enforcement (`peer_authentication_gaps`
names them, as warnings).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.validation.istio_security import http_attributes
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
    """`spec.selector.matchLabels` of a policy; None without a selector ({} when it has no
    labels)."""
    selector = resource.spec.get("selector")
    if selector is None:
        return None
    labels: Mapping[str, str] = selector.get("matchLabels") or {}
    return labels


def authorization(policy: Resource, root_namespace: str) -> Authorization | None:
    """The L4 form of an AuthorizationPolicy; None if ztunnel does not enforce it (a waypoint's
    policy, AUDIT, CUSTOM)."""
    if has_target_refs(policy):
        return None
    spec = policy.spec
    action_name = spec.get("action") or "ALLOW"
    if action_name not in ("ALLOW", "DENY"):
        return None
    action = Action.DENY if action_name == "DENY" else Action.ALLOW
    if selector_labels(policy) is not None:
        scope = PolicyScope.WORKLOAD_SELECTOR
    elif policy.namespace == root_namespace:
        scope = PolicyScope.GLOBAL
    else:
        scope = PolicyScope.NAMESPACE
    rules = tuple(
        r
        for r in (_rule(action, rule, policy.namespace) for rule in spec.get("rules") or ())
        if r is not None
    )
    dry_run = policy.annotations.get(DRY_RUN_ANNOTATION, "").lower() == "true"
    return Authorization(policy.name, policy.namespace, scope, action, rules, dry_run)


def _rule(action: Action, rule: Mapping[str, Any], namespace: str) -> _Rule | None:
    if action is Action.ALLOW and http_attributes(rule):
        return None  # an HTTP rule can never match at L4
    clauses: list[tuple[Match, ...]] = []
    to = tuple(operation_match(entry["operation"]) for entry in rule.get("to") or ())
    if to:
        clauses.append(to)
    sources = tuple(source_match(entry["source"], namespace) for entry in rule.get("from") or ())
    if sources:
        clauses.append(sources)
    clauses.extend((condition_match(when),) for when in rule.get("when") or ())
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
    """Mesh- or namespace-wide for the mode a workload inherits: no selector labels."""
    labels = selector_labels(pa)
    return not labels


def is_parent(pa: Resource) -> bool:
    """A parent when a workload policy is converted: only a policy without any selector (one
    with `selector: {}` counts for the mode, as above, but is not a parent here: istiod indexes
    parents by a nil selector)."""
    return selector_labels(pa) is None


def _strict(pa: Resource | None) -> bool:
    return pa is not None and _mode(pa.spec.get("mtls")) == "STRICT"


def _unset(pa: Resource | None) -> bool:
    return pa is None or _mode(pa.spec.get("mtls")) == "UNSET"


def convert_peer_authentication(
    pa: Resource,
    namespace_pa: Resource | None,
    mesh_pa: Resource | None,
    root_namespace: str,
) -> Authorization | None:
    """istiod's convertPeerAuthentication: the DENY policy of a workload-level
    PeerAuthentication with port-level settings, given its namespace's and the mesh's oldest
    selector-less policies; None when none is needed."""
    if pa.namespace == root_namespace or selector_labels(pa) is None or not _port_modes(pa):
        return None
    mode = _mode(pa.spec.get("mtls"))
    ns, mesh = namespace_pa, mesh_pa
    plaintext = Match(not_principals=(PRESENCE,))
    clauses: list[tuple[Match, ...]] = [(plaintext,)] if mode == "STRICT" else []
    rules: list[_Rule] = []
    found_non_strict = False
    for port, port_mode in _port_modes(pa):
        if port_mode == "STRICT":
            # istiod's condition, grouped as Go groups it: the last alternative (no namespace
            # mode, a STRICT mesh) holds whatever the workload's own mode is
            if (
                mode == "STRICT"
                or (mode == "UNSET" and ns is not None and _strict(ns))
                or (_unset(ns) and _strict(mesh))
            ):
                continue
            rules.append(((Match(not_principals=(PRESENCE,), destination_ports=(port,)),),))
        elif port_mode in ("PERMISSIVE", "DISABLE"):
            if mode in ("PERMISSIVE", "DISABLE"):
                continue
            if mode == "UNSET" and (
                (ns is not None and not _strict(ns))
                or (ns is None and mesh is not None and not _strict(mesh))
                or (ns is None and mesh is None)
            ):
                continue
            found_non_strict = True
            clauses.append((Match(not_destination_ports=(port,)),))
    if mode == "STRICT" and not found_non_strict:
        return None  # plain STRICT: the static policy covers it
    if not clauses and not rules:
        return None
    merge_strict = (_strict(mesh) and (ns is None or _unset(ns) or _strict(ns))) or _strict(ns)
    if merge_strict and found_non_strict:
        # Fold the inherited STRICT in, so the static policy can be left off the workload.
        clauses.append((plaintext,))
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


def applicable_peer_authentications(
    candidates: Iterable[Resource], root_namespace: str, namespace: str, labels: Mapping[str, str]
) -> list[Resource]:
    """istiod's fetchPeerAuthentications: the root namespace's policies without a selector,
    and those of the workload's namespace without a selector or whose labels it carries."""

    def applies(pa: Resource) -> bool:
        selector = selector_labels(pa)
        if pa.namespace == root_namespace and selector is None:
            return True
        if pa.namespace != namespace:
            return False
        return selector is None or all(labels.get(k) == v for k, v in selector.items())

    return [pa for pa in candidates if applies(pa)]


def workload_peer_authentication_keys(
    applicable: Sequence[Resource], root_namespace: str
) -> list[str]:
    """istiod's `convertedSelectorPeerAuthentications`: the PeerAuthentication-derived policy
    keys for a workload, given the PeerAuthentications that apply to it
    (`applicable_peer_authentications`)."""
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
                # (istiod looks for PERMISSIVE only here, not DISABLE)
                if "PERMISSIVE" in port_modes:
                    port_policy, strict = converted_key, False
            elif "STRICT" in port_modes:
                port_policy = converted_key
    keys = {f"{root_namespace}/{STATIC_STRICT_NAME}"} if strict else set()
    if port_policy:
        keys.add(port_policy)
    return sorted(keys)
