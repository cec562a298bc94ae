"""Which identities a node hosts, from ztunnel's local-config YAML."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ztunnel_py.controlplane.registry import (
    LocalConfigError,
    LocalConfigRegistry,
    parse_workload_nodes,
)
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


def test_identities_are_grouped_by_node_with_defaults() -> None:
    nodes = parse_workload_nodes(CONFIG)
    assert nodes == {
        "node-1": {
            Identity("cluster.local", "demo", "app-a"),
            Identity("example.org", "demo", "default"),
        },
        "node-2": {Identity("cluster.local", "other", "c")},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: [", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("workloads: {a: 1}", "'workloads' must be a list"),
        ("workloads: [3]", r"workloads\[0\] must be a mapping"),
        ("workloads: [{node: n}]", r"workloads\[0\] has no 'namespace'"),
        ("workloads: [{namespace: a, node: [x]}]", "'node' must be a string"),
    ],
)
def test_broken_files_are_explained(text: str, message: str) -> None:
    with pytest.raises(LocalConfigError, match=message):
        parse_workload_nodes(text, "f.yaml")


def test_empty_file_means_no_workloads() -> None:
    assert parse_workload_nodes("") == {}


def test_registry_reloads_on_change_and_keeps_state_on_error(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(CONFIG)
    registry = LocalConfigRegistry(path)
    assert registry.reload_if_changed()
    assert not registry.reload_if_changed()
    assert Identity("cluster.local", "other", "c") in registry.identities_on_node("node-2")
    assert registry.identities_on_node("node-9") == frozenset()

    path.write_text("workloads: [")
    os.utime(path, ns=(1, 1))
    with pytest.raises(LocalConfigError):
        registry.reload_if_changed()
    assert Identity("cluster.local", "other", "c") in registry.identities_on_node("node-2")

    path.write_text("workloads: [{namespace: x, node: node-2}]\n")
    assert registry.reload_if_changed()
    assert registry.identities_on_node("node-2") == {Identity("cluster.local", "x", "default")}

    path.unlink()
    with pytest.raises(LocalConfigError, match="file not found"):
        registry.reload_if_changed()
    assert not registry.reload_if_changed()  # reported once
    assert registry.identities_on_node("node-2") == {Identity("cluster.local", "x", "default")}
