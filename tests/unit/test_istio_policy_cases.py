"""Policy conversion and attachment checked against Istio's own cases, taken as data:

- istiod's ambient test data (tests/fixtures/istio/): AuthorizationPolicy and PeerAuthentication
  inputs and the `istio.security.Authorization` istiod produces for them, in istiod's YAML form;
- istiod's conversion rules for HTTP attributes, unsupported actions, `selector: {}` and the
  PeerAuthentication edge cases where its conditions leave a workload without STRICT;
- ztunnel's rbac tests (`src/rbac.rs`): the match semantics every connection is decided by.
"""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.cp_support import store_with, translated, yaml_text
from ztunnel_py.controlplane.sources.yamldocs import parse_documents
from ztunnel_py.controlplane.translate import Translation
from ztunnel_py.model import (
    Action,
    Authorization,
    Identity,
    Match,
    PolicyScope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel_py.policy.rbac import Connection, evaluate, policy_matches

FIXTURES = Path(__file__).parent.parent / "fixtures" / "istio"
ROOT = "istio-system"
STRICT_KEY = f"{ROOT}/istio_converted_static_strict"

# --- istiod's YAML form of an Authorization, read into our model ---------------------------------

_STRINGS = {
    "exact": StringMatchKind.EXACT,
    "prefix": StringMatchKind.PREFIX,
    "suffix": StringMatchKind.SUFFIX,
}


def _string(m: dict[str, Any]) -> StringMatch:
    ((kind, value),) = m.items()
    if kind == "presence":
        return StringMatch(StringMatchKind.PRESENCE)
    return StringMatch(_STRINGS[kind], value)


def _address(a: dict[str, Any]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network((base64.b64decode(a["address"]), a["length"]))


def _match(m: dict[str, Any]) -> Match:
    def strings(key: str) -> tuple[StringMatch, ...]:
        return tuple(_string(x) for x in m.get(key) or ())

    def accounts(key: str) -> tuple[ServiceAccountMatch, ...]:
        return tuple(
            ServiceAccountMatch(x["namespace"], x["serviceAccount"]) for x in m.get(key) or ()
        )

    def cidrs(key: str) -> tuple[Any, ...]:
        return tuple(_address(x) for x in m.get(key) or ())

    return Match(
        namespaces=strings("namespaces"),
        not_namespaces=strings("notNamespaces"),
        service_accounts=accounts("serviceAccounts"),
        not_service_accounts=accounts("notServiceAccounts"),
        principals=strings("principals"),
        not_principals=strings("notPrincipals"),
        source_ips=cidrs("sourceIps"),
        not_source_ips=cidrs("notSourceIps"),
        destination_ips=cidrs("destinationIps"),
        not_destination_ips=cidrs("notDestinationIps"),
        destination_ports=tuple(m.get("destinationPorts") or ()),
        not_destination_ports=tuple(m.get("notDestinationPorts") or ()),
    )


def istiod_authorization(path: Path, namespace: str) -> Authorization:
    doc = yaml.safe_load(path.read_text())
    return Authorization(
        name=doc["name"],
        namespace=doc.get("namespace", namespace),
        scope={
            "GLOBAL": PolicyScope.GLOBAL,
            "NAMESPACE": PolicyScope.NAMESPACE,
            "WORKLOAD_SELECTOR": PolicyScope.WORKLOAD_SELECTOR,
        }[doc.get("scope", "GLOBAL")],
        action=Action.DENY if doc.get("action") == "DENY" else Action.ALLOW,
        rules=tuple(
            tuple(tuple(_match(m) for m in r.get("matches") or ()) for r in g.get("rules") or ())
            for g in doc.get("groups") or ()
        ),
    )


def test_every_authorization_policy_attribute_as_istiod_converts_it() -> None:
    t = translated((FIXTURES / "allow-full-in.yaml").read_text())
    assert t.policies["cfg/allow"] == istiod_authorization(FIXTURES / "allow-full.yaml", "cfg")


# --- PeerAuthentication --------------------------------------------------------------------------

PA_CASES = sorted(
    p.name.removesuffix("-in.yaml") for p in (FIXTURES / "peer-authentication").glob("*-in.yaml")
)


def pod(namespace: str, labels: str = "{app: a}", name: str = "a-1", ip: str = "10.0.0.5") -> str:
    return (
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, "
        f"labels: {labels}}}\nspec: {{}}\nstatus: {{podIP: {ip}}}\n"
    )


@pytest.mark.parametrize("case", PA_CASES)
def test_peer_authentication_as_istiod_converts_it(case: str) -> None:
    """The converted policy istiod makes (or none), and the keys the selected workload lists,
    which name only policies that exist."""
    text = (FIXTURES / "peer-authentication" / f"{case}-in.yaml").read_text()
    namespaces = {d["metadata"].get("namespace", "default") for d in yaml.safe_load_all(text)}
    namespace = next(iter(namespaces - {ROOT}), "default")
    store = store_with(("in.yaml", text + pod(namespace)))
    t = store.current()
    converted = {k: p for k, p in t.policies.items() if k != STRICT_KEY}
    golden = FIXTURES / "peer-authentication" / f"{case}.yaml"
    if golden.exists():
        expected = istiod_authorization(golden, namespace)
        assert converted == {expected.key: expected}
    else:
        assert converted == {}
    # istiod sends its static STRICT policy whenever a PeerAuthentication exists
    assert STRICT_KEY in t.policies
    (workload,) = t.workloads.values()
    assert all(k in t.policies for k in workload.authorization_policies), (
        workload.authorization_policies
    )
    assert not [d for d in store.diagnostics() if d.is_error]


PODS = pod("demo", "{app: web}", "web", "10.0.0.5") + pod("demo", "{app: api}", "api", "10.0.0.6")


def peer_auth(name: str, namespace: str, spec: str) -> str:
    return (
        f"---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )


def decide(t: Translation, workload: str, port: int, mtls: bool) -> bool:
    (w,) = [w for w in t.workloads.values() if w.name == workload]
    found = [t.policies[k] for k in w.authorization_policies if k in t.policies]
    found += [p for p in t.policies.values() if p.scope is not PolicyScope.WORKLOAD_SELECTOR]
    peer = Identity("cluster.local", "client", "client") if mtls else None
    conn = Connection(ipaddress.ip_address("10.9.9.9"), peer, w.addresses[0], port)
    return evaluate(found, conn).allowed


MESH_STRICT = peer_auth("default", ROOT, "{mtls: {mode: STRICT}}")
WEB = "selector: {matchLabels: {app: web}}"


def test_permissive_workload_with_a_strict_port_under_a_strict_mesh() -> None:
    """istiod's conditions disagree here: the workload lists the converted policy, which istiod
    never creates (its STRICT-port test also holds for a PERMISSIVE workload), so the workload
    has no STRICT enforcement, the STRICT port included. We send the same, and say so."""
    spec = f"{{{WEB}, mtls: {{mode: PERMISSIVE}}, portLevelMtls: {{8443: {{mode: STRICT}}}}}}"
    store = store_with(("f.yaml", PODS + MESH_STRICT + peer_auth("web", "demo", spec)))
    t = store.current()
    key = "demo/converted_peer_authentication_web"
    web = t.workloads["Kubernetes//Pod/demo/web"]
    assert web.authorization_policies == (key,)
    assert key not in t.policies
    assert decide(t, "web", 8443, mtls=False)  # as with istiod: plaintext gets through
    assert not decide(t, "api", 8443, mtls=False)
    (gap,) = store.diagnostics()
    assert (gap.is_error, gap.path) == (False, "spec.portLevelMtls")
    assert gap.reason.startswith(
        "as istiod, the workloads this selects are sent without STRICT mTLS enforcement: they "
        f"reference {key}, which istiod does not create"
    )


def test_namespace_policy_with_mode_unset() -> None:
    """A namespace policy of mode UNSET inherits the mesh's STRICT for the workloads without a
    policy of their own; but a workload policy of mode UNSET with a PERMISSIVE port under it
    references a converted policy istiod does not make (its parent test sees a namespace
    policy that is not STRICT), leaving that workload permissive on every port."""
    unset_ns = peer_auth("unset", "demo", "{}")
    spec = f"{{{WEB}, portLevelMtls: {{9090: {{mode: PERMISSIVE}}}}}}"
    store = store_with(("f.yaml", PODS + MESH_STRICT + unset_ns + peer_auth("web", "demo", spec)))
    t = store.current()
    assert t.workloads["Kubernetes//Pod/demo/api"].authorization_policies == (STRICT_KEY,)
    assert not decide(t, "api", 8080, mtls=False)
    assert t.workloads["Kubernetes//Pod/demo/web"].authorization_policies == (
        "demo/converted_peer_authentication_web",
    )
    assert decide(t, "web", 8080, mtls=False)
    assert [d.path for d in store.diagnostics()] == ["spec.portLevelMtls"]


def test_an_empty_selector_is_namespace_wide_for_peer_authentication() -> None:
    """`selector: {}` has no labels: istiod counts it as namespace-wide for the mode."""
    t = translated(PODS + peer_auth("all", "demo", "{selector: {}, mtls: {mode: STRICT}}"))
    assert {w.name: w.authorization_policies for w in t.workloads.values()} == {
        "web": (STRICT_KEY,),
        "api": (STRICT_KEY,),
    }


def test_a_disable_port_under_an_inherited_strict_stays_strict() -> None:
    """istiod lists a converted policy for an UNSET workload under a STRICT mesh only for
    PERMISSIVE ports, not DISABLE ones: the static STRICT policy applies on every port."""
    spec = f"{{{WEB}, portLevelMtls: {{9090: {{mode: DISABLE}}}}}}"
    t = translated(PODS + MESH_STRICT + peer_auth("web", "demo", spec))
    assert t.workloads["Kubernetes//Pod/demo/web"].authorization_policies == (STRICT_KEY,)
    assert not decide(t, "web", 9090, mtls=False)


# --- AuthorizationPolicy: istiod's conversion --------------------------------------------------


def authz(name: str, spec: str, namespace: str = "demo") -> str:
    return (
        f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n"
    )


def test_a_deny_with_only_http_attributes_has_no_effect_at_l4() -> None:
    """istiod keeps the HTTP-only entry as an empty match, which ztunnel never matches."""
    spec = "  selector: {matchLabels: {app: web}}\n  action: DENY\n"
    spec += "  rules: [{to: [{operation: {methods: [POST]}}]}]"
    t = translated(PODS + authz("no-post", spec))
    assert t.policies["demo/no-post"].rules == (((Match(),),),)
    assert decide(t, "web", 8080, mtls=True)


def test_a_mixed_deny_is_enforced_without_its_http_parts() -> None:
    spec = "  selector: {matchLabels: {app: web}}\n  action: DENY\n"
    spec += '  rules: [{to: [{operation: {methods: [POST], ports: ["8080"]}}]}]'
    t = translated(PODS + authz("no-8080", spec))
    assert t.policies["demo/no-8080"].rules == (((Match(destination_ports=(8080,)),),),)
    assert not decide(t, "web", 8080, mtls=True)
    assert decide(t, "web", 9090, mtls=True)


def test_an_allow_rule_with_http_attributes_is_omitted() -> None:
    spec = "  selector: {matchLabels: {app: web}}\n  rules:\n"
    spec += "  - to: [{operation: {methods: [GET]}}]\n"
    spec += "  - from: [{source: {namespaces: [client]}}]"
    t = translated(PODS + authz("get-only", spec))
    exact = StringMatch(StringMatchKind.EXACT, "client")
    assert t.policies["demo/get-only"].rules == (((Match(namespaces=(exact,)),),),)
    assert decide(t, "web", 8080, mtls=True)  # the peer's namespace is "client"


@pytest.mark.parametrize("action", ["AUDIT", "CUSTOM"])
def test_audit_and_custom_policies_are_not_sent_to_ztunnel(action: str) -> None:
    provider = "  provider: {name: ext-authz}\n" if action == "CUSTOM" else ""
    store = store_with(
        ("f.yaml", PODS + authz("p", f"  action: {action}\n{provider}  rules: [{{}}]"))
    )
    assert store.current().policies == {}
    (status,) = store.diagnostics()
    assert not status.is_error
    assert status.reason.startswith(f"ztunnel does not support the {action} action")


def test_an_empty_selector_guards_no_workload() -> None:
    t = translated(PODS + authz("nobody", "  selector: {}\n  rules: [{}]"))
    assert t.policies["demo/nobody"].scope is PolicyScope.WORKLOAD_SELECTOR
    assert all(w.authorization_policies == () for w in t.workloads.values())


def test_a_rejected_policy_never_widens_access() -> None:
    """An invalid new version of a policy leaves the last accepted one in force, and the
    diagnostics say so."""
    allow = authz(
        "web-allow",
        "  selector: {matchLabels: {app: web}}\n"
        "  rules: [{from: [{source: {namespaces: [client]}}]}]",
    )
    store = store_with(("f.yaml", PODS + allow))
    first = store.current().policies["demo/web-allow"]
    broken = allow.replace("namespaces: [client]", 'principals: [""]')
    result = store.apply({"f.yaml": parse_documents(yaml_text(PODS + broken), "f.yaml")})
    assert result.snapshot.policies["demo/web-allow"] == first
    reasons = [d.reason for d in store.diagnostics()]
    assert "empty value not allowed, found in Principals" in reasons
    assert (
        "AuthorizationPolicy demo/web-allow rejected: still serving its last good version"
        in reasons
    )


# --- ztunnel's rbac cases ----------------------------------------------------------------------

PLAINTEXT = Connection(
    ipaddress.ip_address("127.0.0.1"), None, ipaddress.ip_address("127.0.0.2"), 8080
)
TLS = Connection(
    ipaddress.ip_address("127.0.0.1"),
    Identity("td", "namespace", "account"),
    ipaddress.ip_address("127.0.0.2"),
    8080,
)
TLS_ALT = Connection(
    ipaddress.ip_address("127.0.0.3"),
    Identity("td-alt", "ns-alt", "sa=alt"),
    ipaddress.ip_address("127.0.0.4"),
    9090,
)


def allow_policy(rules: tuple[Any, ...]) -> Authorization:
    return Authorization("p", "namespace", PolicyScope.GLOBAL, Action.ALLOW, rules)


def net(text: str) -> Any:
    return ipaddress.ip_network(text, strict=False)


EXACT = StringMatchKind.EXACT
# (field, values, plaintext, tls, tls_alt): ztunnel's rbac_test! table
RBAC_TABLE = [
    ("namespaces", (StringMatch(EXACT, "namespace"),), False, True, False),
    ("not_namespaces", (StringMatch(EXACT, "namespace"),), True, False, True),
    ("service_accounts", (ServiceAccountMatch("namespace", "account"),), False, True, False),
    ("not_service_accounts", (ServiceAccountMatch("namespace", "account"),), True, False, True),
    ("principals", (StringMatch(EXACT, "td/ns/namespace/sa/account"),), False, True, False),
    ("not_principals", (StringMatch(EXACT, "td/ns/namespace/sa/account"),), True, False, True),
    ("source_ips", (net("127.0.0.1/32"),), True, True, False),
    ("not_source_ips", (net("127.0.0.1/32"),), False, False, True),
    ("destination_ips", (net("127.0.0.2/32"),), True, True, False),
    ("not_destination_ips", (net("127.0.0.2/32"),), False, False, True),
    ("destination_ips", (net("127.0.0.1/24"),), True, True, True),  # cidr_range
    ("destination_ports", (8080,), True, True, False),
    ("not_destination_ports", (8080,), False, False, True),
]


@pytest.mark.parametrize(("field", "values", "plain", "tls", "alt"), RBAC_TABLE)
def test_ztunnel_rbac_match_table(
    field: str, values: tuple[Any, ...], plain: bool, tls: bool, alt: bool
) -> None:
    policy = allow_policy((((Match(**{field: values}),),),))
    assert (
        policy_matches(policy, PLAINTEXT),
        policy_matches(policy, TLS),
        policy_matches(policy, TLS_ALT),
    ) == (plain, tls, alt)


def test_ztunnel_rbac_empty_policy() -> None:
    # a match with nothing set never matches; a clause without matches, or a rule without
    # clauses, always does; a policy without rules never does
    assert not policy_matches(allow_policy((((Match(),),),)), PLAINTEXT)
    assert policy_matches(allow_policy((((),),)), PLAINTEXT)
    assert policy_matches(allow_policy(((),)), PLAINTEXT)
    assert not policy_matches(allow_policy(()), PLAINTEXT)


def test_ztunnel_rbac_nesting_and_multiple_rules() -> None:
    a, b = StringMatch(EXACT, "a"), StringMatch(EXACT, "b")
    nested = allow_policy(
        (((Match(namespaces=(a,)), Match(namespaces=(b,))), (Match(destination_ports=(80,)),)),)
    )
    multi = allow_policy((((Match(namespaces=(a,)),),), ((Match(namespaces=(b,)),),)))

    def conn(namespace: str, port: int) -> Connection:
        return Connection(
            ipaddress.ip_address("127.0.0.1"),
            Identity("td", namespace, "account"),
            ipaddress.ip_address("127.0.0.2"),
            port,
        )

    assert policy_matches(nested, conn("a", 80)) and policy_matches(nested, conn("b", 80))
    assert not policy_matches(nested, conn("bad", 80))
    assert not policy_matches(nested, conn("b", 12345))
    assert policy_matches(multi, conn("a", 80)) and policy_matches(multi, conn("b", 80))
    assert not policy_matches(multi, conn("bad", 80))


@pytest.mark.parametrize(
    ("kind", "value", "text", "expected"),
    [
        (StringMatchKind.EXACT, "foo", "foo", True),
        (StringMatchKind.EXACT, "foo", "not", False),
        (StringMatchKind.EXACT, "foo", "", False),
        (StringMatchKind.PREFIX, "foo", "foobar", True),
        (StringMatchKind.PREFIX, "foo", "notfoo", False),
        (StringMatchKind.PREFIX, "foo", "", False),
        (StringMatchKind.SUFFIX, "foo", "barfoo", True),
        (StringMatchKind.SUFFIX, "foo", "foonot", False),
        (StringMatchKind.SUFFIX, "foo", "", False),
        (StringMatchKind.PRESENCE, "", "foo", True),
        (StringMatchKind.PRESENCE, "", "", False),
    ],
)
def test_ztunnel_string_match(kind: StringMatchKind, value: str, text: str, expected: bool) -> None:
    assert StringMatch(kind, value).matches(text) is expected
