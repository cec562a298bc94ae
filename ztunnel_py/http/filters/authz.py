"""L7 authorization: the request against the policies that apply to it, as Envoy's RBAC filter
runs them at a waypoint (istiod's CUSTOM > DENY > ALLOW order; AUDIT only logged).

The decision is `policy.rbac.PolicySet.evaluate` on a `Connection` carrying the request's HTTP
attributes: one evaluator for L4 and L7. The source is the client's mTLS identity and address,
the destination the address and port the client's tunnel named (the service VIP and port), the
end user the payload of the JWT the authentication filter verified (if any). A
denied request gets `403` with body `RBAC: access denied` and response code details
`rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]]` (or `[none]` when ALLOW policies
exist and none matched), and no response flag, as Envoy reports it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from ztunnel_py.http.filter import Filter, LocalReply, RequestContext
from ztunnel_py.http.message import split_authority
from ztunnel_py.policy.rbac import Connection, HttpAttributes, PolicySet

log = logging.getLogger(__name__)

__all__ = ["DENIED_BODY", "AuthorizationFilter"]

DENIED_BODY = "RBAC: access denied"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host, _ = split_authority(text)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return ipaddress.IPv4Address(0)


class AuthorizationFilter(Filter):
    name = "authz"

    def __init__(self, policies: Callable[[RequestContext], PolicySet | None]) -> None:
        """`policies` gives the compiled policies that apply to a request (None: none)."""
        self._policies = policies

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        policies = self._policies(ctx)
        if policies is None or not len(policies):
            return None
        req = ctx.request
        headers: dict[str, str] = {}
        for name, value in req.headers:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        down = ctx.downstream
        dst_host, dst_port = split_authority(down.destination)
        conn = Connection(
            src_ip=_ip(down.peer_address),
            src_identity=down.peer_identity,
            dst_ip=_ip(dst_host),
            dst_port=dst_port or ctx.port or 0,
            http=HttpAttributes(
                req.method, req.path_only, req.authority, headers, jwt=ctx.jwt_payload
            ),
        )
        decision = policies.evaluate(conn)
        what = f"{req.method} {req.path_only} from {down.peer_identity or down.peer_address}"
        for dry in decision.dry_run_matches:
            log.info(
                "policy %s (%s, not enforced) matched %s", dry.policy_key, dry.action.name, what
            )
        ctx.authz_decision = decision.reason
        if decision.allowed:
            return None
        if decision.policy_key is not None:
            ns, _, name = decision.policy_key.partition("/")
            matched = f"ns[{ns}]-policy[{name}]"
        else:
            matched = "none"
        return LocalReply(403, DENIED_BODY, details=f"rbac_access_denied_matched_policy[{matched}]")
