"""The testbed's Kubernetes resources: they pass `controlplane validate`, the control plane's
translation of them is the mesh the testbed plans, and apply/delete name files kubectl-style."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.cp_support import translate_directory
from ztunnel_py.controlplane.translate import MeshOptions
from ztunnel_py.controlplane.validate_cli import validate_directory
from ztunnel_py.model import TunnelProtocol
from ztunnel_py.testbed import resources
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.topology import plan


@pytest.mark.parametrize("dual_stack", [False, True])
def test_generated_directory_validates_and_translates_to_the_planned_mesh(
    tmp_path: Path, dual_stack: bool
) -> None:
    t = plan("zt-", nodes=2, pods_per_node=3, dual_stack=dual_stack)
    # as they are once the CNI plugin enrolled the pods and they were marked redirected
    resources.write(tmp_path, resources.topology_resources(t, redirected=True))
    out, err = io.StringIO(), io.StringIO()
    assert validate_directory(tmp_path, MeshOptions(), out, err) == 0, out.getvalue()
    assert out.getvalue() == ""  # not even a warning
    # ...and the command a person runs says the same.
    done = subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "controlplane", "validate", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert f"{len(t.pods)} workloads, {len(t.services)} services" in done.stderr
    workloads, services = translate_directory(tmp_path)
    for planned in t.workloads():
        got = workloads[planned.uid]
        assert got.uid == f"Kubernetes//Pod/{planned.namespace}/{planned.name}"
        for field in ("name", "namespace", "addresses", "service_account", "node",
                      "tunnel_protocol", "canonical_name", "services"):  # fmt: skip
            assert getattr(got, field) == getattr(planned, field), (planned.name, field)
    assert len(workloads) == len(t.pods)
    assert workloads["Kubernetes//Pod/legacy/legacy-1"].tunnel_protocol is TunnelProtocol.NONE
    for planned_svc in t.mesh_services():
        got_svc = services[planned_svc.key]
        for field in ("name", "namespace", "hostname", "vips", "ports"):
            assert getattr(got_svc, field) == getattr(planned_svc, field), field
    assert len(services) == len(t.services)


def test_enrolled_pods_are_marked_redirected_and_let_go(tmp_path: Path) -> None:
    """The testbed patches the Pods as Istio's CNI agent does: the control plane sends a pod
    as HBONE only while it carries `ambient.istio.io/redirection: enabled`."""
    t = plan("zt-", nodes=1, pods_per_node=2)
    resources.write(tmp_path, resources.topology_resources(t))
    echo = t.pod("echo-1")
    assert translate_directory(tmp_path)[0][echo.uid].tunnel_protocol is TunnelProtocol.NONE
    assert resources.set_redirection(tmp_path, [echo], True) == [
        resources.ObjectRef("Pod", echo.namespace, echo.name)
    ]
    assert resources.set_redirection(tmp_path, [echo], True) == []  # already so: unchanged
    assert translate_directory(tmp_path)[0][echo.uid].tunnel_protocol is TunnelProtocol.HBONE
    resources.set_redirection(tmp_path, [echo], False)
    document = yaml.safe_load((tmp_path / "pod_apps_echo-1.yaml").read_text())
    assert "annotations" not in document["metadata"]
    assert translate_directory(tmp_path)[0][echo.uid].tunnel_protocol is TunnelProtocol.NONE


def test_files_are_named_by_kind_namespace_and_name_and_replaced(tmp_path: Path) -> None:
    t = plan("zt-", nodes=1, pods_per_node=2)
    resources.write(tmp_path, resources.topology_resources(t))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "namespace_apps.yaml" in names
    assert "namespace_legacy.yaml" in names
    assert "pod_apps_echo-1.yaml" in names
    assert "service_apps_echo.yaml" in names
    ns = yaml.safe_load((tmp_path / "namespace_apps.yaml").read_text())
    assert ns["metadata"]["labels"] == {"istio.io/dataplane-mode": "ambient"}
    assert (
        "labels" not in yaml.safe_load((tmp_path / "namespace_legacy.yaml").read_text())["metadata"]
    )
    text = "kind: Service\nmetadata: {name: echo, namespace: apps}\nspec: {clusterIP: 10.96.0.99}\n"
    [(ref, document)] = resources.parse(text, "svc.yaml")
    resources.write(tmp_path, [document])
    replaced = yaml.safe_load((tmp_path / ref.file_name).read_text())
    assert replaced["spec"] == {"clusterIP": "10.96.0.99"}
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert resources.remove(tmp_path, [ref, ref]) == [(ref, True), (ref, False)]
    assert not (tmp_path / ref.file_name).exists()


def test_multi_document_input_and_clear_errors() -> None:
    text = (
        "---\nkind: Namespace\nmetadata: {name: x}\n---\n---\n"
        "kind: Pod\nmetadata: {name: p, namespace: x}\n"
    )
    refs = [str(ref) for ref, _ in resources.parse(text, "f.yaml")]
    assert refs == ["Namespace x", "Pod x/p"]
    with pytest.raises(
        TestbedError, match=r"f\.yaml: not valid YAML: line 3 column 1: expected the node content"
    ):
        resources.parse("kind: Pod\nmetadata: [\n", "f.yaml")
    with pytest.raises(TestbedError, match=r"f\.yaml: document 1: kind: missing"):
        resources.parse("kind: Pod\nmetadata: {name: a}\n---\nmetadata: {name: b}\n", "f.yaml")
    with pytest.raises(TestbedError, match=r"f\.yaml: document 0: metadata\.name: missing"):
        resources.parse("kind: Pod\nmetadata: {namespace: a}\n", "f.yaml")
    with pytest.raises(TestbedError, match=r"f\.yaml: document 0: not a Kubernetes object"):
        resources.parse("- a list\n", "f.yaml")
    with pytest.raises(TestbedError, match=r"f\.yaml: no objects"):
        resources.parse("---\n", "f.yaml")


def test_odd_names_stay_inside_the_directory(tmp_path: Path) -> None:
    ref = resources.ObjectRef("Service", "../..", "a/b")
    assert "/" not in ref.file_name
    assert ref.file_name == "service_.._.._a_b.yaml"
