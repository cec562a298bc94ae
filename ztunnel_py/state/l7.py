"""The waypoint's L7 configuration: routes per service, the policies and the request
authentications that target it.

Fed by the xDS client (`HttpService`, `HttpAuthorization` and `HttpAuthentication` resources, see
`xds/l7convert.py`), last good state kept when the control plane is away or a resource is
rejected. Answers the engine: the routes of a service, its subsets, the policies that apply to a
request for it (compiled into a `PolicySet` once per service after each change) and the JWT rules
(merged from every RequestAuthentication that applies, ordered by issuer as istiod orders them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ztunnel_py.model.authn import JwtRule, WaypointAuthentication
from ztunnel_py.model.http import HttpService, Subset
from ztunnel_py.model.policy import WaypointPolicy
from ztunnel_py.policy.rbac import PolicySet

__all__ = ["L7State"]


class L7State:
    def __init__(self) -> None:
        self._services: dict[str, HttpService] = {}
        self._policies: dict[str, WaypointPolicy] = {}
        self._compiled: dict[str, PolicySet] = {}
        self._authentications: dict[str, WaypointAuthentication] = {}
        self._jwt_rules: dict[str, tuple[JwtRule, ...]] = {}
        self.version = 0

    def apply_services(self, upserts: Iterable[HttpService], removed: Iterable[str]) -> None:
        for key in removed:
            self._services.pop(key, None)
        for s in upserts:
            self._services[s.key] = s
        self.version += 1

    def apply_policies(self, upserts: Iterable[WaypointPolicy], removed: Iterable[str]) -> None:
        for key in removed:
            self._policies.pop(key, None)
        for p in upserts:
            self._policies[p.key] = p
        self._compiled.clear()
        self.version += 1

    def apply_authentications(
        self, upserts: Iterable[WaypointAuthentication], removed: Iterable[str]
    ) -> None:
        for key in removed:
            self._authentications.pop(key, None)
        for a in upserts:
            self._authentications[a.key] = a
        self._jwt_rules.clear()
        self.version += 1

    def service(self, key: str) -> HttpService | None:
        return self._services.get(key)

    def subset(self, config: HttpService | None, service: str, name: str) -> Subset | None:
        if config is None:
            return None
        return config.subset(service, name)

    def policies_for(self, service: str) -> PolicySet:
        """Policies targeting the waypoint as a whole or `service`, in key order (policy order
        only matters for which policy a decision names)."""
        compiled = self._compiled.get(service)
        if compiled is None:
            chosen = [
                p.policy for key, p in sorted(self._policies.items()) if p.applies_to(service)
            ]
            compiled = self._compiled[service] = PolicySet(chosen)
        return compiled

    def jwt_rules_for(self, service: str) -> tuple[JwtRule, ...]:
        """The JWT rules of every RequestAuthentication targeting the waypoint as a whole or
        `service`, ordered by issuer (stable for equal issuers: in resource-name order)."""
        rules = self._jwt_rules.get(service)
        if rules is None:
            merged = [
                rule
                for _, a in sorted(self._authentications.items())
                if a.applies_to(service)
                for rule in a.rules
            ]
            rules = self._jwt_rules[service] = tuple(sorted(merged, key=lambda r: r.issuer))
        return rules

    def dump(self) -> dict[str, Any]:
        """`/config_dump` sections `httpRoutes`, `waypointPolicies` and
        `requestAuthentications`."""
        return {
            "httpRoutes": [
                {
                    "service": s.service,
                    "sources": list(s.sources),
                    "routes": [
                        {
                            "name": r.name,
                            "origin": r.origin,
                            "backends": [b.cluster for b in r.backends],
                        }
                        for r in s.routes
                    ],
                    # the DestinationRule policies the waypoint will apply (their state, once
                    # a request used them, is in `clusters`)
                    "trafficPolicies": [
                        {
                            "service": c.service,
                            "subset": c.subset or None,
                            "port": c.port or None,
                            "origin": c.policy.origin or None,
                        }
                        for c in s.clusters
                    ],
                }
                for _, s in sorted(self._services.items())
            ],
            "waypointPolicies": [
                {
                    "name": p.policy.name,
                    "namespace": p.policy.namespace,
                    "action": p.policy.action.value,
                    "services": list(p.services) or ["*"],
                    "dryRun": p.policy.dry_run,
                }
                for _, p in sorted(self._policies.items())
            ],
            "requestAuthentications": [
                {
                    "name": a.name,
                    "namespace": a.namespace,
                    "services": list(a.services) or ["*"],
                    "issuers": [
                        {"issuer": r.issuer, "keys": "inline" if r.jwks else r.jwks_error}
                        for r in a.rules
                    ],
                }
                for _, a in sorted(self._authentications.items())
            ],
        }
