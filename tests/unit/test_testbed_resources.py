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
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.testbed import Testbed
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


def test_check_runs_the_control_planes_validation_on_what_would_be_written(
    tmp_path: Path,
) -> None:
    """`testbed apply` checks objects with `controlplane validate` before it writes: alone
    (kubectl's --dry-run=client) or beside the directory's contents (server), where a conflict
    with an object already there shows too; only findings about the new objects count."""
    t = plan("zt-", nodes=1, pods_per_node=2)
    resources.write(tmp_path, resources.topology_resources(t))
    taken = t.services[0].vip
    clash = yaml.safe_load(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: other, namespace: apps}}\n"
        f"spec: {{clusterIP: {taken}, ports: [{{port: 80}}]}}\n"
    )
    bad_policy = yaml.safe_load(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: apps}\n"
        'spec: {rules: [{from: [{source: {principals: [""]}}]}]}\n'
    )
    deployment = yaml.safe_load("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    server = resources.check(tmp_path, [clash, bad_policy, deployment])
    assert sorted((f.severity, f.text.split(":")[0]) for f in server) == [
        ("error", "AuthorizationPolicy apps/p"),
        ("error", "Service apps/other"),
        ("note", "Deployment d"),
    ]
    assert any("empty value not allowed, found in Principals" in f.text for f in server)
    assert any(f"clusterIP {taken} is already used" in f.text for f in server)
    client = resources.check(tmp_path, [clash, bad_policy], with_existing=False)
    assert [f.text.split(":")[0] for f in client if f.severity == "error"] == [
        "AuthorizationPolicy apps/p"
    ]
    assert resources.check(tmp_path, [resources.topology_resources(t)[-1]]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_apply_refuses_what_the_control_plane_rejects_and_dry_runs_write_nothing(
    tmp_path: Path,
) -> None:
    bed = Testbed(State.create(tmp_path / "state", "zt-", 1, 2, "none"))
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: apps}\n"
    bad = service + "spec: {ports: [{port: eighty}]}\n"
    with pytest.raises(TestbedError) as refused:
        bed.apply(bad, "bad.yaml")
    assert str(refused.value) == (
        "bad.yaml: rejected by the control plane's validation, nothing written:\n"
        "  Service apps/s: spec.ports[0].port: expected an integer, got a string"
    )
    assert not bed.config_dir.exists() or list(bed.config_dir.iterdir()) == []
    good = service + "spec: {ports: [{port: 80}]}\n"
    for mode in ("client", "server"):
        lines: list[str] = []
        assert [str(r) for r in bed.apply(good, dry_run=mode, progress=lines.append)] == [
            "Service apps/s"
        ]
        assert lines == [f"Service apps/s valid (dry run: {mode}, not written)"]
    assert not bed.config_dir.exists() or list(bed.config_dir.iterdir()) == []
    bed.apply(good)
    assert (bed.config_dir / "service_apps_s.yaml").exists()
