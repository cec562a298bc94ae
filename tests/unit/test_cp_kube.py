"""The Kubernetes source's event handling, replayed from recorded list responses and watch
events (ADDED, MODIFIED, BOOKMARK, DELETED, ERROR 410 Gone -> relist) into a real store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ztunnel_py.controlplane.sources.kube import (
    WATCHED_KINDS,
    KindState,
    Outcome,
    WatchedKind,
    decode_line,
    handle_event,
    relist,
)
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.model import Identity, TunnelProtocol, WorkloadStatus

FIXTURES = Path(__file__).parent.parent / "fixtures" / "controlplane" / "kube"
KINDS = {k.kind: k for k in WATCHED_KINDS}
POD, NAMESPACE, SERVICE, POLICY = (
    KINDS["Pod"],
    KINDS["Namespace"],
    KINDS["Service"],
    KINDS["AuthorizationPolicy"],
)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def events(name: str) -> list[object]:
    return [decode_line(line) for line in (FIXTURES / name).read_bytes().splitlines()]


def listed(store: ConfigStore, kind: WatchedKind, name: str) -> KindState:
    state = KindState(kind)
    outcome = relist(kind, fixture(name), state.known)
    state.update(outcome)
    store.apply(outcome.changes)
    return state


def replay(store: ConfigStore, state: KindState, event: object) -> Outcome:
    outcome = handle_event(state.kind, event)
    state.update(outcome)
    store.apply(outcome.changes)
    return outcome


def addresses(store: ConfigStore) -> dict[str, str]:
    return {w.name: str(w.addresses[0]) for w in store.current().workloads.values()}


def test_list_then_watch_then_relist_after_410() -> None:
    store = ConfigStore(report=False)
    listed(store, NAMESPACE, "namespaces-list.json")
    listed(store, SERVICE, "services-list.json")
    pods = listed(store, POD, "pods-list.json")
    assert pods.resource_version == "1010"
    assert addresses(store) == {
        "web-6d8f7b9c5d-4xk2p": "10.244.1.5",
        "web-6d8f7b9c5d-9zq7m": "10.244.2.7",
    }
    first = store.current().workloads["Kubernetes//Pod/demo/web-6d8f7b9c5d-4xk2p"]
    assert first.tunnel_protocol is TunnelProtocol.HBONE
    assert (first.workload_name, first.service_account, first.node) == ("web", "web", "worker-1")
    assert first.services == {"demo/web.demo.svc.cluster.local": {80: 8080}}
    assert store.diagnostics() == ()

    added, modified, bookmark, deleted, gone = events("pods-watch.jsonl")
    replay(store, pods, added)
    new = store.current().workloads["Kubernetes//Pod/demo/web-6d8f7b9c5d-k8s2w"]
    assert new.status is WorkloadStatus.UNHEALTHY
    replay(store, pods, modified)
    new = store.current().workloads["Kubernetes//Pod/demo/web-6d8f7b9c5d-k8s2w"]
    assert new.status is WorkloadStatus.HEALTHY
    version = store.current().version
    outcome = replay(store, pods, bookmark)
    assert (outcome.changes, pods.resource_version, store.current().version) == (
        {},
        "1012",
        version,
    )
    replay(store, pods, deleted)
    assert "web-6d8f7b9c5d-9zq7m" not in addresses(store)
    assert pods.resource_version == "1013"
    outcome = replay(store, pods, gone)
    assert (outcome.relist, pods.needs_list) == (True, True)
    assert outcome.problem == "Pod watch expired (too old resource version: 1013 (1500)): relisting"

    # Relist: one pod moved, one is new, the unchanged one is not re-sent.
    outcome = relist(POD, fixture("pods-relist.json"), pods.known)
    assert sorted(outcome.changes) == [
        "kube:Pod/demo/web-6d8f7b9c5d-4xk2p",
        "kube:Pod/demo/web-6d8f7b9c5d-m3n4b",
    ]
    pods.update(outcome)
    store.apply(outcome.changes)
    assert pods.resource_version == "1500"
    assert addresses(store) == {
        "web-6d8f7b9c5d-4xk2p": "10.244.1.6",
        "web-6d8f7b9c5d-k8s2w": "10.244.1.9",
        "web-6d8f7b9c5d-m3n4b": "10.244.2.11",
    }
    web = Identity("cluster.local", "demo", "web")
    assert store.identities_on_node("worker-1") == store.identities_on_node("worker-2") == {web}


def test_relist_removes_objects_deleted_while_not_watching() -> None:
    store = ConfigStore(report=False)
    pods = listed(store, POD, "pods-list.json")
    outcome = relist(POD, {"metadata": {"resourceVersion": "2000"}, "items": []}, pods.known)
    assert outcome.changes == {
        "kube:Pod/demo/web-6d8f7b9c5d-4xk2p": None,
        "kube:Pod/demo/web-6d8f7b9c5d-9zq7m": None,
    }
    pods.update(outcome)
    store.apply(outcome.changes)
    assert store.current().workloads == {}
    assert pods.known == {}


def test_invalid_update_keeps_the_last_good_policy() -> None:
    store = ConfigStore(report=False)
    state = KindState(POLICY)
    good, bad, fixed = events("authorizationpolicies-watch.jsonl")
    replay(store, state, good)
    served = store.current().policies["demo/web-allow"]
    replay(store, state, bad)
    assert store.current().policies["demo/web-allow"] == served
    (error, note) = store.diagnostics()
    assert str(error) == (
        "kube:AuthorizationPolicy/demo/web-allow:doc[0]: "
        "spec.rules[0].from[0].source.principals[0]: empty value not allowed, found in Principals"
    )
    assert note.reason == (
        "AuthorizationPolicy demo/web-allow rejected: still serving its last good version"
    )
    replay(store, state, fixed)
    assert store.current().policies["demo/web-allow"] != served
    assert store.diagnostics() == ()


def test_malformed_events_are_ignored() -> None:
    for event in (
        None,
        [],
        {"type": "ADDED"},
        {"type": "ADDED", "object": "x"},
        {"type": "SURPRISE", "object": {}},
        {"type": "ADDED", "object": {"metadata": {"namespace": "demo"}}},
        decode_line(b"{not json"),
    ):
        outcome = handle_event(POD, event)
        assert (outcome.changes, outcome.relist) == ({}, False)
        assert outcome.problem


def test_other_watch_errors_restart_the_watch() -> None:
    event = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd down"}}
    outcome = handle_event(POD, event)
    assert (outcome.restart, outcome.relist) == (True, False)


def test_malformed_list_restarts() -> None:
    assert relist(POD, {"kind": "Status", "code": 403}, {}).restart


def test_cluster_scoped_names() -> None:
    ns = {"type": "ADDED", "object": {"kind": "Namespace", "metadata": {"name": "demo"}}}
    assert list(handle_event(NAMESPACE, ns).changes) == ["kube:Namespace/demo"]
