"""The testbed's Kubernetes resources, and the watched directory the control plane reads them from.

`up` writes what it creates into `<state dir>/config/` as the Kubernetes API would show it:
one Namespace per Kubernetes namespace (ambient ones labelled `istio.io/dataplane-mode:
ambient`, or `istio-injection: enabled` in sidecar mode, where their pods also carry the
injector's `sidecar.istio.io/status` and `networking.istio.io/tunnel: http`), one Pod per pod
(labels, service account, node, container ports, pod IPs) and one Service per service
(selector, ports with target ports, cluster IPs). The control plane runs with `--config-dir` on
that directory and derives the same workloads the CNI plugin enrolls
(uid `Kubernetes//Pod/<namespace>/<name>`). Once the plugin has enrolled a pod, the testbed
annotates it `ambient.istio.io/redirection: enabled` (`set_redirection`), as Istio's CNI agent
patches the pod in the API server: only then does the control plane send it as HBONE.

`testbed apply -f` / `testbed delete -f` put user documents into (or take them out of) the same
directory, kubectl-style: every object lives in its own file, named after its kind, namespace
and name, so applying an object again replaces the earlier version. Before anything is written,
`check` runs the control plane's own validation (`ztunnel-py controlplane validate`, the same
checks a running control plane applies) on the objects: alone (kubectl's `--dry-run=client`) or
together with what the directory already holds (`server`, the default, which also sees conflicts
between resources).
Files are written atomically (a temporary file, then a rename), so the watcher never reads half
a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.topology import (
    GRPC_PORT,
    H2_PORT,
    HTTP_PORT,
    IPERF_PORT,
    MODE_AMBIENT,
    MODE_SIDECAR,
    PodPlan,
    ServicePlan,
    Topology,
)

Document = dict[str, Any]

# Characters kept in file names; anything else (e.g. from a user's odd name) becomes '_'.
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")

# What the CNI side puts on a pod whose traffic it has redirected to its node's agent.
REDIRECTION = "ambient.istio.io/redirection"
REDIRECTION_ENABLED = "enabled"

# What Istio's injector puts on a pod whose sidecar terminates HBONE.
TUNNEL_LABEL = "networking.istio.io/tunnel"
SIDECAR_STATUS = "sidecar.istio.io/status"
SIDECAR_STATUS_VALUE = '{"containers":["istio-proxy"],"initContainers":["istio-init"]}'

# The pod app's container ports by number.
_CONTAINER_PORT_NAMES = {
    HTTP_PORT: "http",
    H2_PORT: "http2",
    GRPC_PORT: "grpc",
    IPERF_PORT: "iperf3",
}


def namespace_resource(name: str, labels: Mapping[str, str]) -> Document:
    metadata: Document = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def pod_resource(
    pod: PodPlan, ports: Sequence[int], mode: str = MODE_AMBIENT, redirected: bool = False
) -> Document:
    """The Pod as the API server would report it once running (status with its IPs), its
    container listening on `ports`; in sidecar mode a pod of the mesh carries what the injector
    adds for an HBONE sidecar; `redirected`: what the CNI side adds once it enrolled it."""
    metadata: Document = {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels}
    if mode == MODE_SIDECAR and pod.ambient:
        metadata["labels"][TUNNEL_LABEL] = "http"
        metadata["annotations"] = {SIDECAR_STATUS: SIDECAR_STATUS_VALUE}
    if redirected:
        metadata.setdefault("annotations", {})[REDIRECTION] = REDIRECTION_ENABLED
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "serviceAccountName": pod.service_account,
            "nodeName": pod.node,
            "containers": [
                {
                    "name": pod.app,
                    "image": "ztunnel-py/podserver",
                    "ports": [
                        {"name": _CONTAINER_PORT_NAMES[p], "containerPort": p, "protocol": "TCP"}
                        for p in ports
                    ],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIP": pod.ip,
            "podIPs": [{"ip": ip} for ip in pod.ips],
        },
    }


def service_resource(service: ServicePlan) -> Document:
    spec: Document = {
        "selector": {"app": service.name},
        "ports": [
            {"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": "TCP"}
            | ({"appProtocol": p.app_protocol} if p.app_protocol else {})
            for p in service.ports
        ],
        "clusterIP": service.vip,
        "clusterIPs": list(service.vips),
    }
    if service.vip6 is not None:
        spec["ipFamilies"] = ["IPv4", "IPv6"]
        spec["ipFamilyPolicy"] = "RequireDualStack"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.name, "namespace": service.namespace},
        "spec": spec,
    }


def topology_resources(topology: Topology, redirected: bool = False) -> list[Document]:
    """Namespaces, Pods and Services of everything `up` creates, in that order; `redirected`:
    as they are once the CNI plugin enrolled the pods of ambient namespaces."""
    namespaces = dict.fromkeys(p.namespace for p in topology.pods)
    enrolled = redirected and topology.mode == MODE_AMBIENT
    return [
        *(namespace_resource(ns, topology.namespace_labels[ns]) for ns in namespaces),
        *(
            pod_resource(p, topology.server_ports(p), topology.mode, enrolled and p.ambient)
            for p in topology.pods
        ),
        *(service_resource(s) for s in topology.services),
    ]


@dataclass(frozen=True, slots=True)
class Finding:
    """A diagnostic of the control plane's validation about one of the objects checked."""

    severity: str  # error, warning or note
    text: str


VALIDATE_TIMEOUT = 120.0


def check(
    directory: Path, documents: Sequence[Document], with_existing: bool = True
) -> list[Finding]:
    """The control plane's validation of `documents`, as they would be written into
    `directory` (beside its current contents when `with_existing`); only what concerns them.
    TestbedError if the validator cannot be run."""
    with tempfile.TemporaryDirectory(prefix="ztunnel-py-check-") as tmp:
        staging = Path(tmp)
        if with_existing and directory.is_dir():
            for path in directory.glob("*.yaml"):
                shutil.copyfile(path, staging / path.name)
        refs = write(staging, documents)
        ours = {str(staging / ref.file_name): ref for ref in refs}
        argv = [
            sys.executable,
            "-m",
            "ztunnel_py.cli",
            "controlplane",
            "validate",
            str(staging),
            "--output",
            "json",
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=VALIDATE_TIMEOUT, check=False
            )
            found = json.loads(done.stdout)
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            raise TestbedError(f"cannot run the control plane's validation: {exc}") from None
    findings = []
    for d in found:
        ref = ours.get(d["file"])
        if ref is None:
            continue  # about a file already there, not about what is being applied
        # no line numbers: they would be those of the file as written, not of the input
        field = f"{d['path']}: " if d["path"] else ""
        findings.append(Finding(d["severity"], f"{ref}: {field}{d['reason']}"))
    return findings


def set_redirection(directory: Path, pods: Iterable[PodPlan], enabled: bool) -> list[ObjectRef]:
    """Add (or remove) the redirection annotation on the Pods of `pods` in `directory`, as the
    CNI side patches a pod once it is enrolled (or let go); the refs of the files changed."""
    changed = []
    for pod in pods:
        ref = ObjectRef("Pod", pod.namespace, pod.name)
        path = directory / ref.file_name
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # gone or unreadable: nothing to patch
        if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
            continue
        metadata = document["metadata"]
        annotations = dict(metadata.get("annotations") or {})
        if enabled:
            annotations[REDIRECTION] = REDIRECTION_ENABLED
        else:
            annotations.pop(REDIRECTION, None)
        if annotations == (metadata.get("annotations") or {}):
            continue
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
        write_atomically(path, yaml.safe_dump(document, sort_keys=False))
        changed.append(ref)
    return changed


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What names a Kubernetes object: kind, namespace (empty when cluster-scoped), name."""

    kind: str
    namespace: str
    name: str

    @property
    def file_name(self) -> str:
        parts = (
            [self.kind.lower(), self.namespace, self.name]
            if self.namespace
            else [
                self.kind.lower(),
                self.name,
            ]
        )
        return "_".join(_UNSAFE.sub("_", part) for part in parts) + ".yaml"

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


def object_ref(document: object, origin: str) -> ObjectRef:
    """The kind, namespace and name of a document; TestbedError naming `origin` otherwise."""
    if not isinstance(document, dict):
        raise TestbedError(f"{origin}: not a Kubernetes object (a mapping with kind and metadata)")
    kind = document.get("kind")
    if not isinstance(kind, str) or not kind:
        raise TestbedError(f"{origin}: kind: missing (every object needs a kind, e.g. Service)")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise TestbedError(f"{origin}: metadata.name: missing (every object needs a name)")
    assert isinstance(metadata, dict)
    namespace = metadata.get("namespace", "")
    if not isinstance(namespace, str):
        raise TestbedError(f"{origin}: metadata.namespace: must be a string")
    return ObjectRef(kind, namespace, name)


def parse(text: str, source: str) -> list[tuple[ObjectRef, Document]]:
    """The objects of a multi-document YAML text (empty documents skipped).

    TestbedError for text that is not YAML, or a document that cannot be named."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TestbedError(f"{source}: not valid YAML:{where}: {problem}") from None
    objects = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        objects.append((object_ref(document, f"{source}: document {index}"), document))
    if not objects:
        raise TestbedError(f"{source}: no objects in it")
    return objects


def write_atomically(path: Path, text: str) -> None:
    # A hidden temporary name: the watcher skips dot files, so it only ever sees the rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(directory: Path, documents: Iterable[Document]) -> list[ObjectRef]:
    """Write each document to its own file in `directory`, replacing earlier versions; a file
    that already says exactly this is left alone (kubectl's "unchanged": no reload, no push)."""
    directory.mkdir(parents=True, exist_ok=True)
    refs = []
    for index, document in enumerate(documents):
        ref = object_ref(document, f"document {index}")
        path, text = directory / ref.file_name, yaml.safe_dump(document, sort_keys=False)
        try:
            unchanged = path.read_text() == text
        except (OSError, UnicodeDecodeError):
            unchanged = False
        if not unchanged:
            write_atomically(path, text)
        refs.append(ref)
    return refs


def documents(directory: Path) -> list[dict[str, Any]]:
    """Every object in `directory` (files that do not parse are skipped: the control plane
    reports them)."""
    found: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            found.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
    return found


def addresses_in_use(directory: Path) -> set[str]:
    """Pod IPs and cluster IPs of the Pods and Services in `directory`."""
    found: set[str] = set()
    for document in documents(directory):
        spec, status = document.get("spec"), document.get("status")
        if document.get("kind") == "Service" and isinstance(spec, dict):
            found.update(_strings([spec.get("clusterIP"), *(spec.get("clusterIPs") or [])]))
        elif document.get("kind") == "Pod" and isinstance(status, dict):
            ips = [
                entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)
            ]
            found.update(_strings([status.get("podIP"), *ips]))
    return found


def _strings(values: Iterable[object]) -> list[str]:
    return [v for v in values if isinstance(v, str)]


def remove(directory: Path, refs: Iterable[ObjectRef]) -> list[tuple[ObjectRef, bool]]:
    """Delete the files of `refs`; each with whether it existed."""
    result = []
    for ref in refs:
        path = directory / ref.file_name
        existed = path.exists()
        path.unlink(missing_ok=True)
        result.append((ref, existed))
    return result
