"""PeerAuthentication to L4 policies, as istiod converts it, checked two ways: the exact
policies produced, and what the agent's policy engine then decides for plaintext and mTLS
connections on each port."""

from __future__ import annotations

import ipaddress

import pytest

from tests.unit.cp_support import store_with, translated
from ztunnel_py.controlplane.translate import Translation
from ztunnel_py.model import (
    Action,
    Authorization,
    Identity,
    Match,
    PolicyScope,
    StringMatch,
    StringMatchKind,
    Workload,
)
from ztunnel_py.policy.rbac import Connection, evaluate

PRESENCE = StringMatch(StringMatchKind.PRESENCE)
STRICT_KEY = "istio-system/istio_converted_static_strict"
STATIC_STRICT = Authorization(
    "istio_converted_static_strict",
    "istio-system",
    PolicyScope.WORKLOAD_SELECTOR,
    Action.DENY,
    (((Match(not_principals=(PRESENCE,)),),),),
)

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: demo, labels: {app: api}}
spec: {}
status: {podIP: 10.0.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: other, labels: {app: web}}
spec: {}
status: {podIP: 10.0.0.7}
"""


def peer_auth(name: str, namespace: str, spec: str, created: str = "") -> str:
    stamp = f", creationTimestamp: '{created}'" if created else ""
    return (
        f"---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}{stamp}}}\nspec: {spec}\n"
    )


MESH_STRICT = peer_auth("default", "istio-system", "{mtls: {mode: STRICT}}")


def policy_keys(t: Translation) -> dict[str, tuple[str, ...]]:
    return {w.name: w.authorization_policies for w in t.workloads.values()}


def allowed(t: Translation, workload: str, port: int, mtls: bool) -> bool:
    """The agent's decision for a connection to `workload` on `port`."""
    (w,) = [w for w in t.workloads.values() if w.name == workload]
    return evaluate(_policies_for(t, w), _connection(w, port, mtls)).allowed


def _policies_for(t: Translation, w: Workload) -> list[Authorization]:
    found = [p for p in t.policies.values() if p.scope is PolicyScope.GLOBAL]
    found += [
        p
        for p in t.policies.values()
        if p.scope is PolicyScope.NAMESPACE and p.namespace == w.namespace
    ]
    found += [t.policies[k] for k in w.authorization_policies if k in t.policies]
    return found


def _connection(w: Workload, port: int, mtls: bool) -> Connection:
    peer = Identity("cluster.local", "client", "client") if mtls else None
    return Connection(ipaddress.ip_address("10.9.9.9"), peer, w.addresses[0], port)


def test_mesh_wide_strict() -> None:
    t = translated(PODS + MESH_STRICT)
    assert t.policies == {STRICT_KEY: STATIC_STRICT}
    assert policy_keys(t) == {"web": (STRICT_KEY,), "api": (STRICT_KEY,), "other": (STRICT_KEY,)}
    assert not allowed(t, "web", 8080, mtls=False)
    assert allowed(t, "web", 8080, mtls=True)


def test_permissive_is_nothing() -> None:
    t = translated(PODS + peer_auth("default", "istio-system", "{mtls: {mode: PERMISSIVE}}"))
    # As istiod: the static policy is sent once any PeerAuthentication exists, referenced by none
    assert t.policies == {STRICT_KEY: STATIC_STRICT}
    assert policy_keys(t) == {"web": (), "api": (), "other": ()}
    assert allowed(t, "web", 8080, mtls=False)


def test_namespace_level_overrides_mesh() -> None:
    t = translated(PODS + MESH_STRICT + peer_auth("relaxed", "demo", "{mtls: {mode: PERMISSIVE}}"))
    assert policy_keys(t) == {"web": (), "api": (), "other": (STRICT_KEY,)}
    t = translated(PODS + peer_auth("tight", "other", "{mtls: {mode: STRICT}}"))
    assert policy_keys(t) == {"web": (), "api": (), "other": (STRICT_KEY,)}
    # A namespace policy with mode UNSET inherits the mesh's STRICT.
    t = translated(PODS + MESH_STRICT + peer_auth("unset", "demo", "{}"))
    assert policy_keys(t)["web"] == (STRICT_KEY,)


def test_workload_level_overrides_namespace() -> None:
    t = translated(
        PODS
        + MESH_STRICT
        + peer_auth(
            "web-open", "demo", "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}"
        )
    )
    assert policy_keys(t) == {"web": (), "api": (STRICT_KEY,), "other": (STRICT_KEY,)}
    t = translated(
        PODS
        + peer_auth(
            "web-strict", "demo", "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}"
        )
    )
    assert policy_keys(t) == {"web": (STRICT_KEY,), "api": (), "other": ()}


def test_port_level_permissive_under_strict() -> None:
    spec = (
        "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, "
        "portLevelMtls: {9090: {mode: PERMISSIVE}}}"
    )
    t = translated(PODS + peer_auth("web-metrics", "demo", spec))
    assert t.policies == {
        STRICT_KEY: STATIC_STRICT,
        "demo/converted_peer_authentication_web-metrics": Authorization(
            "converted_peer_authentication_web-metrics",
            "demo",
            PolicyScope.WORKLOAD_SELECTOR,
            Action.DENY,
            (
                (
                    (Match(not_principals=(PRESENCE,)),),
                    (Match(not_destination_ports=(9090,)),),
                ),
            ),
        ),
    }
    assert policy_keys(t)["web"] == ("demo/converted_peer_authentication_web-metrics",)
    assert allowed(t, "web", 9090, mtls=False)
    assert not allowed(t, "web", 8080, mtls=False)
    assert allowed(t, "web", 8080, mtls=True)


def test_port_level_permissive_under_inherited_strict() -> None:
    spec = "{selector: {matchLabels: {app: web}}, portLevelMtls: {9090: {mode: PERMISSIVE}}}"
    t = translated(PODS + MESH_STRICT + peer_auth("web-metrics", "demo", spec))
    converted = t.policies["demo/converted_peer_authentication_web-metrics"]
    # The inherited STRICT is folded into the converted policy; the static one is not listed.
    assert converted.rules == (
        (
            (Match(not_destination_ports=(9090,)),),
            (Match(not_principals=(PRESENCE,)),),
        ),
    )
    assert policy_keys(t) == {
        "web": ("demo/converted_peer_authentication_web-metrics",),
        "api": (STRICT_KEY,),
        "other": (STRICT_KEY,),
    }
    assert allowed(t, "web", 9090, mtls=False)
    assert not allowed(t, "web", 8080, mtls=False)
    assert not allowed(t, "api", 9090, mtls=False)


def test_port_level_strict_under_permissive() -> None:
    spec = (
        "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, "
        "portLevelMtls: {8443: {mode: STRICT}, 8080: {mode: STRICT}}}"
    )
    t = translated(PODS + peer_auth("web-tls", "demo", spec))
    converted = t.policies["demo/converted_peer_authentication_web-tls"]
    assert converted.rules == (
        ((Match(not_principals=(PRESENCE,), destination_ports=(8080,)),),),
        ((Match(not_principals=(PRESENCE,), destination_ports=(8443,)),),),
    )
    assert policy_keys(t)["web"] == ("demo/converted_peer_authentication_web-tls",)
    assert not allowed(t, "web", 8443, mtls=False)
    assert allowed(t, "web", 80, mtls=False)
    assert allowed(t, "web", 8443, mtls=True)


def test_port_level_strict_under_strict_is_plain_strict() -> None:
    spec = (
        "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, "
        "portLevelMtls: {80: {mode: STRICT}}}"
    )
    t = translated(PODS + peer_auth("web", "demo", spec))
    assert t.policies == {STRICT_KEY: STATIC_STRICT}
    assert policy_keys(t)["web"] == (STRICT_KEY,)


@pytest.mark.parametrize("mode", ["PERMISSIVE", "DISABLE"])
def test_port_level_non_strict_under_permissive_is_nothing(mode: str) -> None:
    spec = f"{{selector: {{matchLabels: {{app: web}}}}, portLevelMtls: {{80: {{mode: {mode}}}}}}}"
    t = translated(PODS + peer_auth("web", "demo", spec))
    assert t.policies == {STRICT_KEY: STATIC_STRICT}
    assert allowed(t, "web", 8080, mtls=False)


def test_oldest_policy_wins_at_each_level() -> None:
    store = store_with(
        (
            "f.yaml",
            PODS
            + peer_auth("newer", "demo", "{mtls: {mode: STRICT}}", "2024-06-01T00:00:00Z")
            + peer_auth("older", "demo", "{mtls: {mode: PERMISSIVE}}", "2024-01-01T00:00:00Z"),
        )
    )
    assert store.current().policies == {STRICT_KEY: STATIC_STRICT}
    (warning,) = store.diagnostics()
    assert warning.reason == (
        "ignored: PeerAuthentication older is also namespace-wide and older (the oldest one "
        "applies)"
    )


def test_root_namespace_selector_is_ignored_with_a_warning() -> None:
    store = store_with(
        (
            "f.yaml",
            PODS
            + peer_auth(
                "x", "istio-system", "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}"
            ),
        )
    )
    assert store.current().policies == {STRICT_KEY: STATIC_STRICT}
    (warning,) = store.diagnostics()
    assert warning.path == "spec.selector"


def test_authorization_and_peer_authentication_keys_together() -> None:
    text = (
        PODS
        + MESH_STRICT
        + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: "
        "web-allow, namespace: demo}\nspec: {selector: {matchLabels: {app: web}}, rules: "
        "[{from: [{source: {namespaces: [client]}}]}]}\n"
    )
    t = translated(text)
    assert policy_keys(t)["web"] == ("demo/web-allow", STRICT_KEY)
    assert allowed(t, "web", 80, mtls=True)
    assert not allowed(t, "web", 80, mtls=False)
