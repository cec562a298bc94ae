"""AuthorizationPolicies with `targetRefs`: the policies waypoints enforce, with HTTP attributes
(istiod's `pilot/pkg/security/authz`, as a waypoint's RBAC filters apply them).

Attachment (`policyattachment.go`): a targetRef to the waypoint's Gateway (in the policy's
namespace) applies to every request the waypoint serves; to a Service or ServiceEntry in the
policy's namespace, to the requests for that service at its waypoint; to the GatewayClass
`istio-waypoint` from the root namespace, to every request of every waypoint. Waypoints never
use selectors: a policy without targetRefs is for node agents only, and one with targetRefs is
never sent to them.

Attributes: `from` sources (principals, namespaces, serviceAccounts, ipBlocks and their not-
forms, matched against the client's certificate and address; requestPrincipals and
notRequestPrincipals, matched against the JWT the waypoint verified), `to` operations (ports,
hosts, methods, paths and their not-forms; `*`, `x*` and `*x` are presence, prefix and suffix),
and `when` conditions: the L4 keys (source.ip, source.namespace, source.principal,
destination.ip, destination.port), `source.serviceAccount`, `request.headers[<name>]` and the
end-user keys `request.auth.principal`, `request.auth.audiences`, `request.auth.presenter` and
`request.auth.claims[<name>]...` (values and notValues; each condition a clause of its own).

A request principal `iss/sub` is split at its last `/`, and each side matched as istiod's
`requestPrincipalGenerator` does: `*` is any principal; `*x` with a `/` is issuer suffix `x`
(any issuer for `*`) and exact subject, without one any issuer and subject suffix; `x*` with a
`/` is exact issuer and subject prefix (any subject for `*`), without one issuer prefix and any
subject. `request.auth.audiences` is the claim `aud`, `request.auth.presenter` the claim `azp`;
claim names are the bracketed segments (`[a][b]` is claim `b` inside `a`).

Actions ALLOW, DENY and AUDIT; the dry-run annotation. Attributes we cannot evaluate
(remoteIpBlocks, `remote.ip`, `connection.sni`, `experimental.*`, path templates `{*}`/`{**}`,
a malformed claims key) follow istiod's rule for generator errors: in an ALLOW policy the whole
rule is dropped (less is allowed), in a DENY or AUDIT policy only that attribute is (more is
denied). CUSTOM (ext_authz) needs an extension provider we do not have: istiod answers a CUSTOM
policy whose provider it cannot use with a deny-all filter, and so do we.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.translate.policies import (
    DRY_RUN_ANNOTATION,
    PRESENCE,
    account_matches,
    condition_match,
    operation_match,
    source_match,
    string_matches,
)
from ztunnel_py.controlplane.validation.istio_security import L4_CONDITIONS
from ztunnel_py.model import Action, Authorization, Match, PolicyScope, StringMatch
from ztunnel_py.model.policy import (
    ClaimCondition,
    HeaderCondition,
    RequestPrincipalMatch,
    StringMatchKind,
)

Problem = tuple[str, str]
_Rule = tuple[tuple[Match, ...], ...]

_ACTIONS = {"ALLOW": Action.ALLOW, "DENY": Action.DENY, "AUDIT": Action.AUDIT}
_UNSUPPORTED_SOURCE = ("remoteIpBlocks", "notRemoteIpBlocks")
_HEADER_KEY = "request.headers["
_CLAIMS_KEY = "request.auth.claims"
_PRINCIPAL_KEY = "request.auth.principal"
# `when` keys that are claims of the verified token
_CLAIM_KEYS = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}
_OPERATION_HTTP = (
    ("hosts", "hosts"),
    ("notHosts", "not_hosts"),
    ("methods", "methods"),
    ("notMethods", "not_methods"),
    ("paths", "paths"),
    ("notPaths", "not_paths"),
)


def _is_template(path: str) -> bool:
    return "{*}" in path or "{**}" in path


def waypoint_authorization(policy: Resource) -> tuple[Authorization, list[Problem]]:
    """The policy as waypoints enforce it, and what of it could not be applied (field path,
    reason)."""
    spec = policy.spec
    problems: list[Problem] = []
    dry_run = policy.annotations.get(DRY_RUN_ANNOTATION, "").lower() == "true"
    name = spec.get("action", "ALLOW")
    if name == "CUSTOM":
        problems.append(
            (
                "spec.action",
                "CUSTOM (ext_authz) is not supported: as istiod does for a CUSTOM policy "
                "whose provider it cannot use, every request the policy targets is denied",
            )
        )
        deny_all: tuple[_Rule, ...] = ((),)
        return Authorization(
            policy.name,
            policy.namespace,
            PolicyScope.WORKLOAD_SELECTOR,
            Action.DENY,
            deny_all,
            dry_run,
        ), problems
    action = _ACTIONS[name]
    rules: list[_Rule] = []
    for i, rule in enumerate(spec.get("rules") or ()):
        converted = _rule(action, rule, policy.namespace, f"spec.rules[{i}]", problems)
        if converted is not None:
            rules.append(converted)
    return Authorization(
        policy.name,
        policy.namespace,
        PolicyScope.WORKLOAD_SELECTOR,
        action,
        tuple(rules),
        dry_run,
    ), problems


def _unsupported(rule: Mapping[str, Any], where: str) -> list[Problem]:
    """The attributes of a rule a waypoint cannot evaluate."""
    found: list[Problem] = []
    for i, entry in enumerate(rule.get("from") or ()):
        for key in _UNSUPPORTED_SOURCE:
            if entry["source"].get(key):
                found.append((f"{where}.from[{i}].source.{key}", key))
    for i, entry in enumerate(rule.get("to") or ()):
        for key in ("paths", "notPaths"):
            if any(_is_template(p) for p in entry["operation"].get(key) or ()):
                found.append((f"{where}.to[{i}].operation.{key}", "path templates ({*}, {**})"))
    for i, when in enumerate(rule.get("when") or ()):
        key = when["key"]
        supported = (
            key in L4_CONDITIONS
            or key in ("source.serviceAccount", _PRINCIPAL_KEY)
            or _header_name(key) is not None
            or _claim_path(key) is not None
        )
        if not supported:
            found.append((f"{where}.when[{i}]", key))
    return found


def _claim_path(key: str) -> tuple[str, ...] | None:
    """The claim a `when` key names (istiod's `extractNameInNestedBrackets`); None if it is
    not a claim key or is malformed."""
    if key in _CLAIM_KEYS:
        return _CLAIM_KEYS[key]
    if not key.startswith(_CLAIMS_KEY):
        return None
    rest = key[len(_CLAIMS_KEY) :]
    names: list[str] = []
    at = 0
    while at < len(rest):
        end = rest.find("]", at + 1)
        nested = rest.find("[", at + 1)
        if rest[at] != "[" or end < 0 or 0 <= nested < end:
            # Not a sequence of [name]s: istiod takes everything between the outer brackets.
            whole = rest[1:-1] if rest.startswith("[") and rest.endswith("]") else ""
            return (whole,) if whole else None
        names.append(rest[at + 1 : end])
        at = end + 1
    return tuple(names) if names and all(names) else None


def request_principal(value: str) -> RequestPrincipalMatch:
    """istiod's matchers for one `requestPrincipals` value (see the module docstring)."""
    slash = value.rfind("/")
    issuer, subject = (value[:slash], value[slash + 1 :]) if slash >= 0 else (value, "")

    def of(kind: StringMatchKind, text: str) -> StringMatch:
        return StringMatch(kind, text)

    exact, prefix, suffix = StringMatchKind.EXACT, StringMatchKind.PREFIX, StringMatchKind.SUFFIX
    if value == "*":
        return RequestPrincipalMatch(PRESENCE, PRESENCE)
    if value.startswith("*"):
        if slash < 0:
            return RequestPrincipalMatch(PRESENCE, of(suffix, value[1:]))
        iss = PRESENCE if issuer == "*" else of(suffix, issuer[1:])
        return RequestPrincipalMatch(iss, of(exact, subject))
    if value.endswith("*"):
        if slash < 0:
            return RequestPrincipalMatch(of(prefix, value[:-1]), PRESENCE)
        sub = PRESENCE if subject == "*" else of(prefix, subject[:-1])
        return RequestPrincipalMatch(of(exact, issuer), sub)
    return RequestPrincipalMatch(of(exact, issuer), of(exact, subject))


def _request_principals(values: Iterable[str] | None) -> tuple[RequestPrincipalMatch, ...]:
    return tuple(request_principal(v) for v in values or ())


def _header_name(key: str) -> str | None:
    if key.startswith(_HEADER_KEY) and key.endswith("]") and len(key) > len(_HEADER_KEY) + 1:
        return key[len(_HEADER_KEY) : -1]
    return None


def _rule(
    action: Action, rule: Mapping[str, Any], namespace: str, where: str, problems: list[Problem]
) -> _Rule | None:
    unsupported = _unsupported(rule, where)
    if unsupported and action is Action.ALLOW:
        names = ", ".join(dict.fromkeys(what for _, what in unsupported))
        problems.append(
            (
                unsupported[0][0],
                f"waypoints cannot evaluate {names}: in an ALLOW policy the whole rule is left "
                "out (it allows nothing)",
            )
        )
        return None
    skipped = {path for path, _ in unsupported}
    for path, what in unsupported:
        problems.append(
            (path, f"waypoints cannot evaluate {what}: ignored, which denies more than requested")
        )
    clauses: list[tuple[Match, ...]] = []
    to = [
        _operation(entry["operation"], f"{where}.to[{i}].operation", skipped)
        for i, entry in enumerate(rule.get("to") or ())
    ]
    # An entry left empty matches every request, and so does the clause it is part of.
    if to and all(not m.is_empty() for m in to):
        clauses.append(tuple(to))
    sources = [_source(entry["source"], namespace) for entry in rule.get("from") or ()]
    if sources and all(not m.is_empty() for m in sources):
        clauses.append(tuple(sources))
    for i, when in enumerate(rule.get("when") or ()):
        if f"{where}.when[{i}]" in skipped:
            continue
        clauses.append((_condition(when, namespace),))
    return tuple(clauses)


def _source(src: Mapping[str, Any], namespace: str) -> Match:
    return dataclasses.replace(
        source_match(src, namespace),
        request_principals=_request_principals(src.get("requestPrincipals")),
        not_request_principals=_request_principals(src.get("notRequestPrincipals")),
    )


def _operation(op: Mapping[str, Any], where: str, skipped: set[str]) -> Match:
    fields: dict[str, Any] = {}
    for key, attribute in _OPERATION_HTTP:
        if f"{where}.{key}" not in skipped:
            fields[attribute] = string_matches(op.get(key))
    base = operation_match(op)
    return Match(
        destination_ports=base.destination_ports,
        not_destination_ports=base.not_destination_ports,
        **fields,
    )


def _condition(when: Mapping[str, Any], namespace: str) -> Match:
    key = when["key"]
    values, not_values = when.get("values"), when.get("notValues")
    header = _header_name(key)
    if header is not None:
        return Match(
            headers=(HeaderCondition(header, string_matches(values)),) if values else (),
            not_headers=(
                (HeaderCondition(header, string_matches(not_values)),) if not_values else ()
            ),
        )
    if key == _PRINCIPAL_KEY:
        return Match(
            request_principals=_request_principals(values),
            not_request_principals=_request_principals(not_values),
        )
    claim = _claim_path(key)
    if claim is not None:
        return Match(
            claims=(ClaimCondition(claim, string_matches(values)),) if values else (),
            not_claims=(ClaimCondition(claim, string_matches(not_values)),) if not_values else (),
        )
    if key == "source.serviceAccount":
        return Match(
            service_accounts=account_matches(values, namespace),
            not_service_accounts=account_matches(not_values, namespace),
        )
    return condition_match(when)
