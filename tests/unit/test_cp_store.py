"""ConfigStore: last good configuration, conflicts between sources, versions, subscribers and
the CA's view of which identities live on which node."""

from __future__ import annotations

from tests.unit.cp_support import yaml_text
from ztunnel_py.controlplane.snapshot import MeshSnapshot, changed
from ztunnel_py.controlplane.sources.yamldocs import Parsed, parse_documents
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import MeshOptions, translate
from ztunnel_py.model import Identity


def pod(name: str, ip: str = "10.0.0.5", node: str = "node-1", sa: str = "") -> str:
    account = f"serviceAccountName: {sa}, " if sa else ""
    return (
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: "
        f"{{app: {name}}}}}\nspec: {{{account}nodeName: {node}}}\nstatus: {{podIP: {ip}}}\n"
    )


def service(name: str, cluster_ip: str, port: int = 80) -> str:
    return (
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n"
        f"spec: {{clusterIP: {cluster_ip}, selector: {{app: {name}}}, ports: [{{port: {port}}}]}}\n"
    )


def files(**contents: str) -> dict[str, Parsed | None]:
    return {f"{k}.yaml": parse_documents(yaml_text(v), f"{k}.yaml") for k, v in contents.items()}


def uids(snapshot: MeshSnapshot) -> list[str]:
    return sorted(snapshot.workloads)


def errors(store: ConfigStore) -> list[str]:
    return [str(d) for d in store.diagnostics() if d.is_error]


def test_versions_increase_only_on_change() -> None:
    store = ConfigStore(report=False)
    assert store.current().version == 0
    first = store.apply(files(a=pod("a")))
    assert (first.changed, first.snapshot.version) == (True, 1)
    again = store.apply(files(a=pod("a")))
    assert (again.changed, again.snapshot.version) == (False, 1)
    third = store.apply(files(a=pod("a", ip="10.0.0.6")))
    assert third.snapshot.version == 2
    assert store.apply({"a.yaml": None}).snapshot.workloads == {}


def test_syntax_error_keeps_the_whole_file() -> None:
    store = ConfigStore(report=False)
    store.apply(files(a=pod("a") + pod("b", ip="10.0.0.6")))
    served = store.current()
    result = store.apply(files(a=pod("a") + "---\nkind: [\n"))
    assert store.current() is served
    (error,) = result.new_diagnostics
    assert error.reason.endswith("; keeping the previous contents (2 resources)")
    store.apply(files(a=pod("a")))
    assert uids(store.current()) == ["Kubernetes//Pod/demo/a"]
    assert errors(store) == []


def test_invalid_new_version_keeps_last_good_and_others_update() -> None:
    store = ConfigStore(report=False)
    store.apply(files(a=pod("a") + pod("b", ip="10.0.0.6")))
    store.apply(files(a=pod("a", ip="10.0.0.99") + pod("b", ip="not-an-ip")))
    workloads = store.current().workloads
    assert [str(w.addresses[0]) for w in workloads.values()] == ["10.0.0.99", "10.0.0.6"]
    assert errors(store) == [
        "a.yaml:doc[1]: status.podIP: 'not-an-ip' is not an IP address (line 12, column 17)"
    ]


def test_a_new_invalid_resource_is_just_absent() -> None:
    store = ConfigStore(report=False)
    store.apply(files(a=pod("a", ip="bad")))
    assert store.current().workloads == {}


def test_unidentifiable_document_keeps_previous_resources() -> None:
    store = ConfigStore(report=False)
    store.apply(files(a=pod("a")))
    store.apply(files(a="apiVersion: v1\nkind: Pod\nmetadata: {name: [a]}\nspec: {}\n"))
    assert uids(store.current()) == ["Kubernetes//Pod/demo/a"]


def test_duplicate_across_files_first_served_wins() -> None:
    store = ConfigStore(report=False)
    store.apply(files(b=pod("a", ip="10.0.0.2")))
    store.apply(files(a=pod("a", ip="10.0.0.1")))
    (w,) = store.current().workloads.values()
    assert str(w.addresses[0]) == "10.0.0.2"
    assert errors(store) == [
        "a.yaml:doc[0]: metadata.name: duplicate Pod demo/a: already defined at b.yaml:doc[0]; "
        "ignored"
    ]
    store.apply({"b.yaml": None})
    (w,) = store.current().workloads.values()
    assert str(w.addresses[0]) == "10.0.0.1"
    assert errors(store) == []


def test_duplicate_in_one_file() -> None:
    store = ConfigStore(report=False)
    store.apply(files(a=pod("a") + pod("a", ip="10.0.0.9")))
    assert errors(store) == [
        "a.yaml:doc[1]: metadata.name: duplicate Pod demo/a: already defined at a.yaml:doc[0]; "
        "ignored"
    ]


def test_cluster_ip_conflict() -> None:
    store = ConfigStore(report=False)
    store.apply(files(a=service("web", "10.96.0.1")))
    store.apply(files(b=service("api", "10.96.0.1")))
    assert list(store.current().services) == ["demo/web.demo.svc.cluster.local"]
    assert errors(store) == [
        "b.yaml:doc[0]: spec.clusterIP: clusterIP 10.96.0.1 is already used by Service demo/web "
        "(a.yaml:doc[0]); Service demo/api rejected"
    ]
    # A served Service that moves onto a taken IP keeps its previous version.
    store.apply(files(b=service("api", "10.96.0.2")))
    store.apply(files(b=service("api", "10.96.0.1", port=81)))
    api = store.current().services["demo/api.demo.svc.cluster.local"]
    assert (str(api.vips[0].address), api.ports) == ("10.96.0.2", {80: 80})


def test_a_service_that_lost_its_ip_stays_out_when_the_owner_changes() -> None:
    # web owns 10.96.0.1, api is refused. Then api's document becomes unreadable (so the
    # file's last good resources are kept, api among them) while web changes: web, served,
    # keeps its IP; api, never served, does not take it (found by the store's property test).
    store = ConfigStore(report=False)
    store.apply(files(a=service("web", "10.96.0.1") + service("api", "10.96.0.1")))
    unreadable = "---\nkind: Pod\n" * 2
    store.apply(files(a=unreadable + service("web", "10.96.0.1", port=81)))
    (web,) = store.current().services.values()
    assert web.name == "web" and web.ports == {81: 81}
    assert any("Service demo/api rejected" in e for e in errors(store))


def test_nodes_and_identities_for_the_ca() -> None:
    store = ConfigStore(report=False)
    pending = (
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: jobs}\n"
        "spec: {nodeName: node-2}\n"
    )
    finished = pending.replace("name: p,", "name: f,").replace(
        "spec: {nodeName: node-2}",
        "spec: {nodeName: node-2, serviceAccountName: done}\nstatus: {phase: Succeeded}",
    )
    store.apply(
        files(a=pod("a", sa="web") + pod("b", ip="10.0.0.6", node="node-2") + pending + finished)
    )
    assert store.identities_on_node("node-1") == {Identity("cluster.local", "demo", "web")}
    assert store.identities_on_node("node-2") == {
        Identity("cluster.local", "demo", "default"),
        Identity("cluster.local", "jobs", "default"),
    }
    assert store.identities_on_node("node-3") == frozenset()
    store.apply({"a.yaml": None})
    assert store.identities_on_node("node-1") == frozenset()


def test_subscribers_see_each_change_and_can_unsubscribe() -> None:
    store = ConfigStore(report=False)
    seen: list[int] = []

    def broken(_: MeshSnapshot) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    unsubscribe = store.subscribe(lambda s: seen.append(s.version))
    store.apply(files(a=pod("a")))
    store.apply(files(a=pod("a")))
    store.apply(files(a=pod("a", ip="10.0.0.7")))
    unsubscribe()
    store.apply({"a.yaml": None})
    assert seen == [1, 2]
    assert store.current().version == 3


def test_changed_gives_upserts_and_removals() -> None:
    store = ConfigStore(report=False)
    old = store.apply(files(a=pod("a") + pod("b", ip="10.0.0.6"))).snapshot
    new = store.apply(files(a=pod("a") + pod("c", ip="10.0.0.7"))).snapshot
    upserts, removals = changed(old.workloads, new.workloads)
    assert list(upserts) == ["Kubernetes//Pod/demo/c"]
    assert removals == {"Kubernetes//Pod/demo/b"}


def test_unchanged_workloads_are_reused_and_dependencies_rebuild_them() -> None:
    store = ConfigStore(report=False)
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n"
    first = store.apply(files(ns=namespace, a=pod("a") + pod("b", ip="10.0.0.6"))).snapshot
    uid_a, uid_b = "Kubernetes//Pod/demo/a", "Kubernetes//Pod/demo/b"
    second = store.apply(files(a=pod("a") + pod("b", ip="10.0.0.7"))).snapshot
    assert second.workloads[uid_a] is first.workloads[uid_a]
    assert second.workloads[uid_b] is not first.workloads[uid_b]
    # A Service selecting `a`, a pod's annotation, a policy: each rebuilds what depends on it.
    third = store.apply(files(svc=service("a", "10.96.0.1"))).snapshot
    assert list(third.workloads[uid_a].services) == ["demo/a.demo.svc.cluster.local"]
    assert third.workloads[uid_b] is second.workloads[uid_b]
    redirected = pod("a").replace(
        "labels: {app: a}}",
        "labels: {app: a}, annotations: {ambient.istio.io/redirection: enabled}}",
    )
    fourth = store.apply(files(a=redirected + pod("b", ip="10.0.0.7"))).snapshot
    assert fourth.workloads[uid_a].tunnel_protocol.value == "HBONE"
    assert fourth.workloads[uid_b] is third.workloads[uid_b]
    policy = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, "
        "namespace: demo}\nspec: {selector: {matchLabels: {app: b}}}\n"
    )
    fifth = store.apply(files(p=policy)).snapshot
    assert fifth.workloads[uid_b].authorization_policies == ("demo/p",)
    assert fifth.workloads[uid_a] is fourth.workloads[uid_a]


def policy(name: str, namespace: str = "demo", principal: str = "cluster.local/ns/a/sa/a") -> str:
    return (
        f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: "
        f"{{name: {name}, namespace: {namespace}}}\nspec: {{rules: [{{from: [{{source: "
        f"{{principals: [{principal}]}}}}]}}]}}\n"
    )


def test_unchanged_policies_are_reused_and_a_changed_one_is_translated_again() -> None:
    store = ConfigStore(report=False)
    first = store.apply(files(p=policy("p1") + policy("p2"))).snapshot
    second = store.apply(
        files(p=policy("p1") + policy("p2", principal="cluster.local/ns/b/sa/b"))
    ).snapshot
    assert second.policies["demo/p1"] is first.policies["demo/p1"]
    changed_rule = second.policies["demo/p2"].rules[0][0][0]
    assert [p.value for p in changed_rule.principals] == ["cluster.local/ns/b/sa/b"]
    # Re-read but equal (as when its file is saved again): still the same object.
    third = store.apply(
        files(p=policy("p1") + policy("p2", principal="cluster.local/ns/b/sa/b"))
    ).snapshot
    assert third.policies["demo/p2"] is second.policies["demo/p2"]


def test_a_new_root_namespace_translates_every_policy_again() -> None:
    mesh_wide = policy("mesh", namespace="istio-system")
    first = ConfigStore(report=False)
    assert first.apply(files(p=mesh_wide)).snapshot.policies["istio-system/mesh"].scope.name == (
        "GLOBAL"
    )
    translation = translate(first.resources().values())
    again = translate(
        first.resources().values(), MeshOptions(root_namespace="mesh-root"), translation.cache
    )
    assert again.policies["istio-system/mesh"].scope.name == "NAMESPACE"
