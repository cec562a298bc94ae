"""RequestAuthentications with `targetRefs`: the JWT rules waypoints apply (istiod's
`pilot/pkg/security/authn`, as it builds a waypoint's `jwt_authn` filter).

Attachment is an AuthorizationPolicy's (the waypoint's Gateway, a Service or ServiceEntry it
serves, the GatewayClass `istio-waypoint` from the root namespace); a RequestAuthentication
without targetRefs is for sidecars and gateways, which this mesh does not have, and validation
says so. Each `jwtRules` entry becomes a `JwtRule` with its keys inline: `jwks` as written, else
the key set the resolver fetched from `jwksUri` (or found through the issuer's OpenID discovery),
within the rule's `timeout`. A key set that cannot be had is a warning on the rule, and the rule
goes out with the reason instead of keys: the waypoint then rejects that issuer's tokens.

Where the resolver finds hosts: `mesh_hosts` maps a Service's hostname and port to its ready
endpoints' addresses and target port (this control plane's stand-in for cluster DNS and
kube-proxy).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ztunnel_py.controlplane.jwks import DEFAULT_TIMEOUT, HostAddresses, JwksResult
from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.validation.routing import parse_duration
from ztunnel_py.model import Service, Workload, WorkloadStatus
from ztunnel_py.model.authn import (
    DEFAULT_SPACE_DELIMITED_CLAIMS,
    ClaimToHeader,
    JwtHeader,
    JwtRule,
)

Problem = tuple[str, str]
# (issuer, jwksUri, timeout in seconds) -> the key set or why there is none
KeyLookup = Callable[[str, str, float], JwksResult]

OFFLINE = "not fetched: this translation runs without a key resolver (controlplane validate)"


def jwt_rules(
    resource: Resource, keys: KeyLookup | None
) -> tuple[tuple[JwtRule, ...], list[Problem]]:
    """The RequestAuthentication's rules as waypoints apply them, and what went wrong."""
    problems: list[Problem] = []
    origin = f"RequestAuthentication {resource.namespace}/{resource.name}"
    rules = []
    for i, rule in enumerate(resource.spec.get("jwtRules") or ()):
        rules.append(_rule(rule, keys, origin, f"spec.jwtRules[{i}]", problems))
    return tuple(rules), problems


def _rule(
    rule: Mapping[str, Any],
    keys: KeyLookup | None,
    origin: str,
    where: str,
    problems: list[Problem],
) -> JwtRule:
    issuer: str = rule["issuer"]
    jwks: str = rule.get("jwks") or ""
    error = ""
    if not jwks:
        uri: str = rule.get("jwksUri") or ""
        if keys is None:
            error = OFFLINE
        else:
            timeout = parse_duration(rule.get("timeout")) or DEFAULT_TIMEOUT
            found = keys(issuer, uri, timeout)
            jwks, error = found.keys, found.error
            if error:
                problems.append(
                    (
                        f"{where}.jwksUri" if uri else f"{where}.issuer",
                        f"{error}: waypoints reject every token of this issuer until the keys "
                        "can be fetched",
                    )
                )
    extra = tuple(rule.get("spaceDelimitedClaims") or ())
    return JwtRule(
        issuer=issuer,
        audiences=tuple(rule.get("audiences") or ()),
        jwks=jwks,
        jwks_error=error,
        forward_original_token=bool(rule.get("forwardOriginalToken", False)),
        output_payload_to_header=(rule.get("outputPayloadToHeader") or "").lower(),
        output_claim_to_headers=tuple(
            ClaimToHeader(c["header"].lower(), c["claim"])
            for c in rule.get("outputClaimToHeaders") or ()
        ),
        from_headers=tuple(
            JwtHeader(h["name"].lower(), h.get("prefix") or "")
            for h in rule.get("fromHeaders") or ()
        ),
        from_params=tuple(rule.get("fromParams") or ()),
        from_cookies=tuple(rule.get("fromCookies") or ()),
        space_delimited_claims=tuple(sorted({*DEFAULT_SPACE_DELIMITED_CLAIMS, *extra})),
        origin=origin,
    )


def mesh_hosts(services: Mapping[str, Service], workloads: Sequence[Workload]) -> HostAddresses:
    """(hostname, port) of a Service -> its healthy endpoints' (address, target port)."""
    by_host: dict[str, list[Service]] = defaultdict(list)
    for service in services.values():
        by_host[service.hostname].append(service)
    members: dict[str, list[Workload]] = defaultdict(list)
    for workload in workloads:
        if workload.status is WorkloadStatus.HEALTHY:
            for key in workload.services:
                members[key].append(workload)

    def resolve(host: str, port: int) -> Sequence[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for service in by_host.get(host.lower().rstrip("."), ()):
            for workload in members.get(service.key, ()):
                target = workload.services[service.key].get(port)
                if target:
                    found.extend((str(ip), target) for ip in workload.addresses)
        return found

    return resolve
