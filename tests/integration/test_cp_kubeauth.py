"""In-cluster identity against the stand-in API server: service-account tokens checked with
TokenReview (audience istio-ca) and node-scoped impersonation for the node agents' account,
a workload's own token good for its own identity only; the CA's root kept in a Secret and
published as istio-ca-root-cert; and deploy/'s RBAC rules against every request the control
plane's Kubernetes code makes (exactly the verbs it uses, no more)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest
import yaml

from tests.integration.kube_support import FakeApiServer, api_client, running_api_server
from ztunnel_py.cni.kube import lookup
from ztunnel_py.cni.spec import CniError, PodRef
from ztunnel_py.controlplane.ca import CaRequestError, CertificateService, SignRequest
from ztunnel_py.controlplane.kubeauth import KubernetesAuthenticator, store_pods, token_reviewer
from ztunnel_py.controlplane.kubeca import (
    CONFIGMAP_KEY,
    ROOT_CONFIGMAP,
    RootPublisher,
    publish_root,
    secret_ca,
)
from ztunnel_py.controlplane.nodeauth import NodeTokenStore, TokenAuthenticator
from ztunnel_py.controlplane.sources.kube import WATCHED_KINDS, KubeSource
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.identity.pki import CertificateAuthority, generate_key, make_csr, uri_sans
from ztunnel_py.model.identity import Identity

REPO = Path(__file__).resolve().parents[2]
WEB_POD, WEB_UID = "web-6d8f7b9c5d-4xk2p", "11111111-0000-4000-8000-000000000001"


def review(sa: str, audiences: list[str] | None = None, **extra: str) -> dict[str, Any]:
    namespace, name = sa.split("/")
    return {
        "authenticated": True,
        "audiences": ["istio-ca"] if audiences is None else audiences,
        "user": {
            "username": f"system:serviceaccount:{namespace}:{name}",
            "uid": "0f7e",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            "extra": {f"authentication.kubernetes.io/{k}": [v] for k, v in extra.items()},
        },
    }


TOKENS = {
    # the node agent on worker-1; the API server names the node (Kubernetes 1.30 and later)
    "ztunnel-1": review(
        "istio-system/ztunnel", **{"pod-name": "ztunnel-x7k2p", "node-name": "worker-1"}
    ),
    # one whose pod the control plane has not seen, without the node in the token
    "ztunnel-unseen": review("istio-system/ztunnel", **{"pod-name": "ztunnel-q9w8e"}),
    # a workload's own token: its node comes from its pod in the watched configuration
    "web": review("demo/web", **{"pod-name": WEB_POD, "pod-uid": WEB_UID}),
    "web-old-pod": review("demo/web", **{"pod-name": WEB_POD, "pod-uid": "0000"}),
    "other-audience": review("istio-system/ztunnel", ["https://kubernetes.default.svc"]),
    "unbound": review("demo/web"),
}


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    with running_api_server() as server:
        server.token_reviews = dict(TOKENS)
        yield server


@pytest.fixture
def store(api_server: FakeApiServer) -> Iterator[ConfigStore]:
    store = ConfigStore(report=False)
    source = KubeSource(store, api_client(api_server), batch_window=0.05, initial_sync_timeout=30)
    source.start()
    try:
        assert source.synced.wait(35)
        yield store
    finally:
        source.stop()


def sign(service: CertificateService, token: str, identity: str, impersonate: bool) -> list[str]:
    parsed = Identity.parse(identity)
    return service.create(
        SignRequest(
            csr_pem=make_csr(generate_key(), parsed),
            validity_seconds=3600,
            impersonated_identity=identity if impersonate else None,
            metadata={"authorization": f"Bearer {token}"},
            peer="ipv4:10.244.1.3:40000",
        )
    )


def refusal(service: CertificateService, token: str, identity: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(CaRequestError) as caught:
        sign(service, token, identity, impersonate=True)
    return caught.value.code, caught.value.message


def test_tokens_are_reviewed_and_scoped_to_their_node(
    api_server: FakeApiServer, store: ConfigStore, tmp_path: Path
) -> None:
    node_tokens = NodeTokenStore(tmp_path / "tokens.json")
    authenticator = KubernetesAuthenticator(
        token_reviewer(api_client(api_server)),
        store_pods(store),
        TokenAuthenticator(node_tokens),
        "cluster.local",
    )
    service = CertificateService(
        CertificateAuthority.create("cluster.local"),
        authenticator,
        store,
        "cluster.local",
        timedelta(hours=1),
    )
    web = "spiffe://cluster.local/ns/demo/sa/web"
    # The node agent impersonates a workload on its node: signed, for that identity.
    chain = sign(service, "ztunnel-1", web, impersonate=True)
    assert uri_sans(chain[0]) == [web]
    assert api_server.review_bodies[0]["spec"] == {"token": "ztunnel-1", "audiences": ["istio-ca"]}
    # ...but not for an identity no workload of its node has.
    code, message = refusal(service, "ztunnel-1", "spiffe://cluster.local/ns/demo/sa/db")
    assert code is grpc.StatusCode.PERMISSION_DENIED and "on node worker-1" in message
    # Within a minute the same token is not reviewed again.
    sign(service, "ztunnel-1", web, impersonate=True)
    assert len(api_server.review_bodies) == 1

    # A workload's own token: its own identity only (its node from its pod, uid checked).
    assert uri_sans(sign(service, "web", web, impersonate=False)[0]) == [web]
    code, message = refusal(service, "web", "spiffe://cluster.local/ns/demo/sa/db")
    assert code is grpc.StatusCode.PERMISSION_DENIED and "only ask for its own identity" in message

    for token, why in (
        ("ztunnel-unseen", "bound to pod istio-system/ztunnel-q9w8e, which is not known"),
        ("web-old-pod", "bound to an earlier pod demo/web-6d8f7b9c5d-4xk2p"),
        ("other-audience", "not valid for audience 'istio-ca'"),
        ("unbound", "is not bound to a pod"),
        ("forged", "rejected the token: invalid bearer token"),
    ):
        code, message = refusal(service, token, web)
        assert (code, why in message) == (grpc.StatusCode.UNAUTHENTICATED, True), message
    # Refusals are not cached: a token that becomes valid works at once.
    api_server.token_reviews["forged"] = TOKENS["ztunnel-1"]
    assert sign(service, "forged", web, impersonate=True)

    # Node tokens (the testbed's) keep working, without asking the API server.
    reviews = len(api_server.review_bodies)
    node_token = node_tokens.issue("worker-1", timedelta(hours=1))
    assert sign(service, node_token, web, impersonate=True)
    assert len(api_server.review_bodies) == reviews


def test_the_root_ca_lives_in_a_secret_and_is_published_per_namespace(
    api_server: FakeApiServer, tmp_path: Path
) -> None:
    api = api_client(api_server)
    first = secret_ca(api, "istio-system/istio-ca-secret", tmp_path / "a", "cluster.local")
    secret = api_server.objects["istio-system/secrets/istio-ca-secret"]
    assert set(secret["data"]) == {"ca-cert.pem", "ca-key.pem"}
    # Another replica, or a restart with an empty data directory: the same root.
    again = secret_ca(api, "istio-system/istio-ca-secret", tmp_path / "b", "cluster.local")
    assert again.root_pem == first.root_pem
    assert (tmp_path / "b" / "root-key.pem").stat().st_mode & 0o077 == 0

    publisher = RootPublisher(api, first.root_pem, lambda: ["demo", "istio-system"])
    publisher.publish_all()
    for ns in ("demo", "istio-system"):
        published = api_server.objects[f"{ns}/configmaps/{ROOT_CONFIGMAP}"]
        assert published["data"] == {CONFIGMAP_KEY: first.root_pem}
    assert publish_root(api, "demo", first.root_pem) is None  # already right: no write
    other = CertificateAuthority.create("cluster.local").root_pem
    assert publish_root(api, "demo", other) == "updated"
    assert api_server.objects[f"demo/configmaps/{ROOT_CONFIGMAP}"]["data"][CONFIGMAP_KEY] == other


# --- RBAC: deploy/controlplane.yaml against the requests -------------------------------------


def rbac_attributes(request: str) -> tuple[str, str, str, str]:
    """`METHOD /path` as the API server authorizes it: (namespace, group, resource, verb)."""
    method, path = request.split(" ", 1)
    parts = urlparse(path).path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    verb = {
        "LIST": "list",
        "WATCH": "watch",
        "POST": "create",
        "PUT": "update",
        "GET": "get",
    }[method]
    return namespace, group, resource, verb


def granted(
    manifest: str = "controlplane.yaml", account: str = "istiod"
) -> tuple[set[tuple[str, str, str]], dict[str, set[tuple[str, str, str]]]]:
    """(cluster-wide, per-namespace) (group, resource, verb) a service account of
    istio-system has by `manifest`."""
    docs = list(yaml.safe_load_all((REPO / "deploy" / manifest).read_text()))
    bound = {
        (d["kind"].removesuffix("Binding"), d["roleRef"]["name"], d["metadata"].get("namespace"))
        for d in docs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and {"kind": "ServiceAccount", "name": account, "namespace": "istio-system"}
        in d["subjects"]
    }
    cluster: set[tuple[str, str, str]] = set()
    namespaced: dict[str, set[tuple[str, str, str]]] = {}
    for d in docs:
        key = (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        if d["kind"] not in ("ClusterRole", "Role") or key not in bound:
            continue
        triples = {
            (g, r, v)
            for rule in d["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        if d["kind"] == "ClusterRole":
            cluster |= triples
        else:
            namespaced.setdefault(d["metadata"]["namespace"], set()).update(triples)
    return cluster, namespaced


def test_rbac_grants_exactly_what_the_control_plane_asks_for(
    api_server: FakeApiServer, store: ConfigStore, tmp_path: Path
) -> None:
    api = api_client(api_server)
    authenticator = KubernetesAuthenticator(
        token_reviewer(api),
        store_pods(store),
        TokenAuthenticator(NodeTokenStore(tmp_path / "t.json")),
        "cluster.local",
    )
    authenticator.authenticate({"authorization": "Bearer ztunnel-1"})
    ca = secret_ca(api, "istio-system/istio-ca-secret", tmp_path / "ca", "cluster.local")
    publish_root(api, "demo", ca.root_pem)
    publish_root(api, "demo", CertificateAuthority.create("cluster.local").root_pem)
    deadline = time.monotonic() + 5
    while not any(r.startswith("WATCH /api/v1/pods") for r in api_server.requests):
        assert time.monotonic() < deadline
        time.sleep(0.02)

    cluster, namespaced = granted()
    used = {rbac_attributes(r) for r in api_server.requests}
    for namespace, group, resource, verb in used:
        allowed = (group, resource, verb) in cluster | namespaced.get(namespace, set())
        assert allowed, f"{verb} {group}/{resource} in {namespace or 'all namespaces'}"
    # Nothing granted that the code does not use: its list/watch kinds, TokenReview, the CA's
    # Secret and ConfigMaps.
    expected = {(k.group, k.plural, v) for k in WATCHED_KINDS for v in ("list", "watch")}
    expected |= {("authentication.k8s.io", "tokenreviews", "create")}
    expected |= {("", "configmaps", v) for v in ("get", "create", "update")}
    assert cluster == expected
    assert namespaced == {"istio-system": {("", "secrets", "get"), ("", "secrets", "create")}}
    assert {(g, r, v) for _, g, r, v in used} >= expected - {
        (k.group, k.plural, "watch") for k in WATCHED_KINDS if k.kind not in ("Pod", "Namespace")
    }


def test_the_cni_plugin_reads_pods_from_the_api_with_exactly_its_rbac(
    api_server: FakeApiServer, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": f"http://127.0.0.1:{api_server.server_address[1]}"},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "cni-token"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    meta = lookup(str(kubeconfig), PodRef("demo", WEB_POD))
    assert (meta.service_account, meta.enroll) == ("web", True)
    assert meta.labels["app"] == "web"
    with pytest.raises(CniError, match="cannot read pod demo/nope"):
        lookup(str(kubeconfig), PodRef("demo", "nope"))
    cluster, namespaced = granted("cni.yaml", "ztunnel-py-cni")
    used = {rbac_attributes(r)[1:] for r in api_server.requests}
    assert namespaced == {}
    assert used == cluster == {("", "namespaces", "get"), ("", "pods", "get")}
