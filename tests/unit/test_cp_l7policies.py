"""AuthorizationPolicies with targetRefs as waypoints get them: attachment (Gateway, Service,
GatewayClass), attribute translation (cases after Istio's authz builder testdata), unsupported
attributes and actions, and decisions made by the one policy evaluator on real requests."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.unit.waypoint_support import (
    documents,
    namespace,
    pod,
    service,
    store_with,
    translation,
    warnings,
    waypoint,
)
from ztunnel_py.controlplane.translate.l7policies import request_principal
from ztunnel_py.model import (
    Action,
    Identity,
    Match,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel_py.model.policy import (
    ClaimCondition,
    HeaderCondition,
    RequestPrincipalMatch,
    WaypointPolicy,
)
from ztunnel_py.policy.rbac import Connection, HttpAttributes, PolicySet

USE = "istio.io/use-waypoint"
ECHO = "apps/echo.apps.svc.cluster.local"
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
SERVICE_REF = {"group": "", "kind": "Service", "name": "echo"}
E, P, S, PRESENT = (
    StringMatchKind.EXACT,
    StringMatchKind.PREFIX,
    StringMatchKind.SUFFIX,
    StringMatchKind.PRESENCE,
)


def policy(
    name: str = "p",
    ns: str = "apps",
    targets: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": {"targetRefs": targets if targets is not None else [GATEWAY_REF], **spec},
    }


def mesh() -> str:
    return (
        documents(
            namespace("apps", **{USE: "waypoint"}),
            namespace("istio-system"),
            service("echo"),
            service("other", ip="10.96.0.20"),
            pod("echo-0", labels={"app": "echo"}),
        )
        + "---\n"
        + waypoint()
    )


def waypoint_policies(*objects: dict[str, Any]) -> tuple[dict[str, WaypointPolicy], list[str]]:
    t, diagnostics = translation(mesh(), documents(*objects))
    # never sent to node agents
    assert t.policies == {}
    return dict(t.waypoints["apps/waypoint"].policies), warnings(diagnostics)


def single(*objects: dict[str, Any]) -> tuple[WaypointPolicy, list[str]]:
    policies, problems = waypoint_policies(*objects)
    (found,) = policies.values()
    return found, problems


def sm(kind: StringMatchKind, value: str = "") -> StringMatch:
    return StringMatch(kind, value)


# --- attachment ------------------------------------------------------------------------------


def test_gateway_target_applies_to_every_request() -> None:
    found, problems = single(policy(rules=[{}]))
    assert (found.services, found.key, problems) == ((), "apps/p", [])


def test_service_target_applies_to_that_service() -> None:
    found, _ = single(policy(targets=[SERVICE_REF], rules=[{}]))
    assert found.services == (ECHO,)
    assert found.applies_to(ECHO) and not found.applies_to("apps/other.apps.svc.cluster.local")


def test_gateway_class_from_the_root_namespace_applies_to_all_waypoints() -> None:
    ref = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}
    found, _ = single(policy(ns="istio-system", targets=[ref], rules=[{}]))
    assert found.services == ()
    policies, problems = waypoint_policies(policy(targets=[ref], rules=[{}]))
    assert policies == {}
    assert problems == [
        "spec.targetRefs[0]: only the GatewayClass istio-waypoint, targeted from the root "
        "namespace istio-system, applies to waypoints"
    ]


def test_targets_that_do_not_attach_are_reported() -> None:
    refs = [
        {**GATEWAY_REF, "name": "ingress"},
        {**SERVICE_REF, "name": "missing"},
        {**SERVICE_REF, "namespace": "other"},
        {"group": "apps", "kind": "Deployment", "name": "echo"},
    ]
    policies, problems = waypoint_policies(policy(targets=refs, rules=[{}]))
    assert policies == {}
    assert problems == [
        "spec.targetRefs[0]: Gateway apps/ingress is not a waypoint: not applied",
        "spec.targetRefs[1]: Service apps/missing not found",
        "spec.targetRefs[2]: a targetRef must be in the resource's own namespace",
        "spec.targetRefs[3]: targetRef kind apps/Deployment is not supported",
    ]


def test_a_gateway_target_covers_its_service_targets() -> None:
    found, _ = single(policy(targets=[SERVICE_REF, GATEWAY_REF], rules=[{}]))
    assert found.services == ()


def test_selector_policies_are_not_for_waypoints() -> None:
    t, _ = translation(
        mesh(),
        documents(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "l4", "namespace": "apps"},
                "spec": {"selector": {"matchLabels": {"app": "echo"}}, "rules": [{}]},
            }
        ),
    )
    assert set(t.policies) == {"apps/l4"}
    assert t.waypoints["apps/waypoint"].policies == {}


# --- attributes ------------------------------------------------------------------------------


def test_paths_methods_hosts_and_ports() -> None:
    op = {
        "paths": ["/exact", "/prefix/*", "*/suffix", "*"],
        "notPaths": ["/admin*"],
        "methods": ["GET", "HEAD"],
        "notMethods": ["DELETE"],
        "hosts": ["echo.apps*", "*.example.com"],
        "notHosts": ["bad.example.com"],
        "ports": ["80"],
        "notPorts": ["9090"],
    }
    found, problems = single(policy(rules=[{"to": [{"operation": op}]}]))
    assert problems == []
    assert found.policy.rules == (
        (
            (
                Match(
                    destination_ports=(80,),
                    not_destination_ports=(9090,),
                    paths=(sm(E, "/exact"), sm(P, "/prefix/"), sm(S, "/suffix"), sm(PRESENT)),
                    not_paths=(sm(P, "/admin"),),
                    methods=(sm(E, "GET"), sm(E, "HEAD")),
                    not_methods=(sm(E, "DELETE"),),
                    hosts=(sm(P, "echo.apps"), sm(S, ".example.com")),
                    not_hosts=(sm(E, "bad.example.com"),),
                ),
            ),
        ),
    )


def test_sources_and_conditions() -> None:
    rule = {
        "from": [
            {"source": {"principals": ["cluster.local/ns/apps/sa/client"], "notNamespaces": ["x"]}},
            {"source": {"ipBlocks": ["10.0.0.0/8"]}},
        ],
        "when": [
            {"key": "request.headers[X-Token]", "values": ["secret*"]},
            {"key": "request.headers[x-debug]", "notValues": ["1"]},
            {"key": "source.namespace", "values": ["apps"]},
            {"key": "source.serviceAccount", "values": ["client", "ops/admin"]},
        ],
    }
    found, problems = single(policy(rules=[rule]))
    assert problems == []
    assert found.policy.rules == (
        (
            (
                Match(
                    principals=(sm(E, "cluster.local/ns/apps/sa/client"),),
                    not_namespaces=(sm(E, "x"),),
                ),
                Match(source_ips=(ipaddress.ip_network("10.0.0.0/8"),)),
            ),
            (Match(headers=(HeaderCondition("x-token", (sm(P, "secret"),)),)),),
            (Match(not_headers=(HeaderCondition("x-debug", (sm(E, "1"),)),)),),
            (Match(namespaces=(sm(E, "apps"),)),),
            (
                Match(
                    service_accounts=(
                        ServiceAccountMatch("apps", "client"),
                        ServiceAccountMatch("ops", "admin"),
                    )
                ),
            ),
        ),
    )


@pytest.mark.parametrize(
    ("action", "expected", "dry_run"),
    [("DENY", Action.DENY, False), ("AUDIT", Action.AUDIT, False), ("ALLOW", Action.ALLOW, True)],
)
def test_actions_and_dry_run(action: str, expected: Action, dry_run: bool) -> None:
    annotations = {"istio.io/dry-run": "true"} if dry_run else {}
    found, _ = single(policy(action=action, annotations=annotations, rules=[{}]))
    assert (found.policy.action, found.policy.dry_run) == (expected, dry_run)


def test_custom_denies_everything_it_targets() -> None:
    found, problems = single(policy(action="CUSTOM", provider={"name": "ext"}, rules=[{}]))
    assert (found.policy.action, found.policy.rules) == (Action.DENY, ((),))
    assert problems == [
        "spec.action: CUSTOM (ext_authz) is not supported: as istiod does for a CUSTOM policy "
        "whose provider it cannot use, every request the policy targets is denied"
    ]


# istiod's requestPrincipalGenerator (generator.go), value by value
@pytest.mark.parametrize(
    ("value", "issuer", "subject"),
    [
        ("*", sm(PRESENT), sm(PRESENT)),
        ("https://example.com/alice", sm(E, "https://example.com"), sm(E, "alice")),
        ("https://example.com/*", sm(E, "https://example.com"), sm(PRESENT)),
        ("https://example.com/al*", sm(E, "https://example.com"), sm(P, "al")),
        ("*/alice", sm(PRESENT), sm(E, "alice")),
        ("*.example.com/alice", sm(S, ".example.com"), sm(E, "alice")),
        ("*@example.com", sm(PRESENT), sm(S, "@example.com")),
        ("issuer-foo*", sm(P, "issuer-foo"), sm(PRESENT)),
        ("no-slash", sm(E, "no-slash"), sm(E, "")),
    ],
)
def test_request_principals_split_at_the_last_slash(
    value: str, issuer: StringMatch, subject: StringMatch
) -> None:
    assert request_principal(value) == RequestPrincipalMatch(issuer, subject)


def test_request_principals_and_end_user_conditions() -> None:
    rule = {
        "from": [{"source": {"requestPrincipals": ["*"], "notRequestPrincipals": ["x/bot"]}}],
        "when": [
            {"key": "request.auth.principal", "values": ["iss/alice"]},
            {"key": "request.auth.audiences", "values": ["echo*"]},
            {"key": "request.auth.presenter", "notValues": ["cli"]},
            {"key": "request.auth.claims[groups]", "values": ["admin"]},
            {"key": "request.auth.claims[org][team]", "values": ["mesh", "*-ops"]},
        ],
    }
    found, problems = single(policy(rules=[rule]))
    assert problems == []
    any_principal = RequestPrincipalMatch(sm(PRESENT), sm(PRESENT))
    assert found.policy.rules == (
        (
            (
                Match(
                    request_principals=(any_principal,),
                    not_request_principals=(RequestPrincipalMatch(sm(E, "x"), sm(E, "bot")),),
                ),
            ),
            (Match(request_principals=(RequestPrincipalMatch(sm(E, "iss"), sm(E, "alice")),)),),
            (Match(claims=(ClaimCondition(("aud",), (sm(P, "echo"),)),)),),
            (Match(not_claims=(ClaimCondition(("azp",), (sm(E, "cli"),)),)),),
            (Match(claims=(ClaimCondition(("groups",), (sm(E, "admin"),)),)),),
            (Match(claims=(ClaimCondition(("org", "team"), (sm(E, "mesh"), sm(S, "-ops"))),)),),
        ),
    )


def test_a_malformed_claims_key_is_rejected_as_istios_webhook_rejects_it() -> None:
    rule = {
        "to": [{"operation": {"methods": ["GET"]}}],
        "when": [{"key": "request.auth.claims[]", "values": ["x"]}],
    }
    # the store refuses the policy at validation, so translation never sees it
    store = store_with(
        ("f.yaml", "---\n".join([mesh(), documents(policy(action="DENY", rules=[rule]))]))
    )
    errors = [d.reason for d in store.diagnostics() if d.is_error]
    assert any("should have format a[b]" in e for e in errors), errors


def test_unsupported_attributes_drop_an_allow_rule() -> None:
    rules = [
        {"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/8"]}}]},
        {"to": [{"operation": {"paths": ["/api/{*}"]}}]},
        {"to": [{"operation": {"methods": ["GET"]}}]},
    ]
    found, problems = single(policy(rules=rules))
    assert found.policy.rules == (((Match(methods=(sm(E, "GET"),)),),),)
    assert problems == [
        "spec.rules[0].from[0].source.remoteIpBlocks: waypoints cannot evaluate "
        "remoteIpBlocks: in an ALLOW policy the whole rule is left out (it allows nothing)",
        "spec.rules[1].to[0].operation.paths: waypoints cannot evaluate path templates "
        "({*}, {**}): in an ALLOW policy the whole rule is left out (it allows nothing)",
    ]


def test_unsupported_attributes_widen_a_deny_rule() -> None:
    rule = {
        "to": [{"operation": {"methods": ["POST"], "paths": ["/a/{**}"]}}],
        "when": [{"key": "connection.sni", "values": ["echo.example"]}],
    }
    found, problems = single(policy(action="DENY", rules=[rule]))
    assert found.policy.rules == (((Match(methods=(sm(E, "POST"),)),),),)
    assert problems == [
        "spec.rules[0].to[0].operation.paths: waypoints cannot evaluate path templates "
        "({*}, {**}): ignored, which denies more than requested",
        "spec.rules[0].when[0]: waypoints cannot evaluate connection.sni: "
        "ignored, which denies more than requested",
    ]


# --- decisions, by the evaluator the waypoint runs -----------------------------------------------


def decide(
    policies: dict[str, WaypointPolicy],
    method: str,
    path: str,
    jwt: dict[str, Any] | None = None,
    **headers: str,
) -> bool:
    conn = Connection(
        ipaddress.ip_address("10.1.0.99"),
        Identity("cluster.local", "apps", "client"),
        ipaddress.ip_address("10.96.0.10"),
        80,
        HttpAttributes(method, path, "echo.apps:80", headers, jwt=jwt),
    )
    chosen = [p.policy for p in policies.values() if p.applies_to(ECHO)]
    return PolicySet(chosen).evaluate(conn).allowed


def test_decisions() -> None:
    policies, _ = waypoint_policies(
        policy(
            "deny-delete", action="DENY", rules=[{"to": [{"operation": {"methods": ["DELETE"]}}]}]
        ),
        policy(
            "public",
            targets=[SERVICE_REF],
            rules=[
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/apps/sa/client"]}}],
                    "to": [{"operation": {"paths": ["/public/*"]}}],
                },
                {"when": [{"key": "request.headers[x-admin]", "values": ["yes"]}]},
            ],
        ),
    )
    assert decide(policies, "GET", "/public/x")
    assert not decide(policies, "DELETE", "/public/x")
    assert not decide(policies, "GET", "/private")
    assert decide(policies, "GET", "/private", **{"x-admin": "yes"})


def test_decisions_on_the_end_user() -> None:
    """Istio's documented pattern: only admins may DELETE, everyone else needs a token."""
    policies, problems = waypoint_policies(
        policy(
            "require-jwt",
            rules=[{"from": [{"source": {"requestPrincipals": ["https://issuer.example/*"]}}]}],
        ),
        policy(
            "admins-delete",
            action="DENY",
            rules=[
                {
                    "to": [{"operation": {"methods": ["DELETE"]}}],
                    "when": [{"key": "request.auth.claims[group]", "notValues": ["admin"]}],
                }
            ],
        ),
    )
    assert problems == []
    admin = {"iss": "https://issuer.example", "sub": "alice", "group": "admin"}
    user = {"iss": "https://issuer.example", "sub": "bob", "group": "dev"}
    other = {"iss": "https://elsewhere", "sub": "alice", "group": "admin"}
    assert decide(policies, "DELETE", "/x", jwt=admin)
    assert not decide(policies, "DELETE", "/x", jwt=user)
    assert decide(policies, "GET", "/x", jwt=user)
    assert not decide(policies, "GET", "/x", jwt=other)
    assert not decide(policies, "GET", "/x")
