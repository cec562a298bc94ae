"""The control plane's development source: ztunnel's local-config file, serving snapshots and
telling the CA which identities each node hosts."""

from __future__ import annotations

import os
from pathlib import Path

from ztunnel_py.controlplane.sources.localconfig import LocalConfigSource
from ztunnel_py.model import Identity

CONFIG = """
workloads:
- uid: c1//v1/Pod/demo/app-a
  name: app-a
  namespace: demo
  serviceAccount: app-a
  workloadIps: ["10.0.0.1"]
  protocol: HBONE
  node: node-1
  services: {"demo/web.demo.svc.cluster.local": {80: 8080}}
- name: app-b
  namespace: demo
  workloadIps: ["10.0.0.2"]
  trustDomain: example.org
  node: node-1
  services: {}
- name: app-c
  namespace: other
  serviceAccount: c
  workloadIps: ["10.0.0.3"]
  node: node-2
  services: {}
- name: nowhere
  namespace: other
  workloadIps: ["10.0.0.4"]
  services: {}
services:
- name: web
  namespace: demo
  hostname: web.demo.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {80: 8080}
"""


def source_with(tmp_path: Path, text: str) -> LocalConfigSource:
    path = tmp_path / "local.yaml"
    path.write_text(text)
    source = LocalConfigSource(path)
    assert source.reload_if_changed()
    return source


def test_identities_are_grouped_by_node_with_defaults(tmp_path: Path) -> None:
    source = source_with(tmp_path, CONFIG)
    assert source.identities_on_node("node-1") == {
        Identity("cluster.local", "demo", "app-a"),
        Identity("example.org", "demo", "default"),
    }
    assert source.identities_on_node("node-2") == {Identity("cluster.local", "other", "c")}
    assert source.identities_on_node("node-9") == frozenset()
    snapshot = source.current()
    assert (snapshot.version, len(snapshot.workloads), len(snapshot.services)) == (1, 4, 1)


def test_empty_file_means_no_workloads(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text("")
    source = LocalConfigSource(path)
    assert not source.reload_if_changed()  # nothing new to publish
    assert source.identities_on_node("node-1") == frozenset()


def test_broken_or_missing_file_keeps_the_last_good_state(tmp_path: Path) -> None:
    source = source_with(tmp_path, CONFIG)
    assert not source.reload_if_changed()
    good = source.current()

    source.path.write_text("workloads: [{namespace: x, node: node-2}]\n")  # no workloadIps
    os.utime(source.path, ns=(1, 1))
    assert not source.reload_if_changed()
    assert source.current() is good
    assert Identity("cluster.local", "other", "c") in source.identities_on_node("node-2")

    source.path.write_text(
        "workloads: [{namespace: x, node: node-2, workloadIps: [10.0.0.9], services: {}}]\n"
    )
    assert source.reload_if_changed()
    assert source.current().version == good.version + 1
    assert source.identities_on_node("node-2") == {Identity("cluster.local", "x", "default")}
    assert source.identities_on_node("node-1") == frozenset()

    source.path.unlink()
    assert not source.reload_if_changed()
    assert source.identities_on_node("node-2") == {Identity("cluster.local", "x", "default")}
