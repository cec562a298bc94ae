"""Pods, WorkloadEntries and ServiceEntry endpoints to workload-API `Workload`s.

Follows istiod's ambient index: uids `Kubernetes//Pod/<ns>/<name>`,
`Kubernetes/networking.istio.io/WorkloadEntry/<ns>/<name>` and
`Kubernetes/networking.istio.io/ServiceEntry/<ns>/<name>/<address>`; canonical name and
revision from the usual labels; workload name and type from the pod's controller.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.model import IPAddress, TunnelProtocol, WorkloadStatus

DATAPLANE_MODE = "istio.io/dataplane-mode"
AMBIENT = "ambient"
# Set by istio-cni on pods it has redirected: the pod is in the mesh whatever its labels say.
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
# A workload (a VM's WorkloadEntry, a pod with an HBONE-capable sidecar) that terminates HBONE
# itself.
TUNNEL_LABEL = "networking.istio.io/tunnel"
SIDECAR_STATUS = "sidecar.istio.io/status"
NETWORK_LABEL = "topology.istio.io/network"
WORKLOAD_NAME_LABEL = "service.istio.io/workload-name"
AUTO_REGISTRATION_GROUP = "istio.io/autoRegistrationGroup"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = (
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
)
# <deployment>-<pod-template-hash>-<5 random characters>
_DEPLOYMENT_POD = re.compile(r"^(?P<name>.+)-[a-z0-9]{5,10}-[a-z0-9]{5}$")
_REPLICA_SET = re.compile(r"^(?P<name>.+)-[a-z0-9]{5,10}$")
_CRON_JOB = re.compile(r"^(?P<name>.+)-\d{8,10}$")


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    return _first(labels, _CANONICAL_NAME_LABELS, workload_name), _first(
        labels, _CANONICAL_REVISION_LABELS, "latest"
    )


def _first(labels: Mapping[str, str], keys: tuple[str, ...], default: str) -> str:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return default


def pod_workload_name(pod: Resource) -> tuple[str, str]:
    """(workload name, workload type) from the pod's controller, as istiod derives them."""
    owners = pod.metadata.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is None:
        # No owner recorded (a hand-written Pod): recognise a Deployment's pod name.
        match = _DEPLOYMENT_POD.match(pod.name)
        return (match["name"], "deployment") if match else (pod.name, "pod")
    kind, name = owner["kind"], owner["name"]
    if kind == "ReplicaSet":
        match = _REPLICA_SET.match(name)
        return (match["name"], "deployment") if match else (name, "pod")
    if kind == "Job":
        match = _CRON_JOB.match(name)
        return (match["name"], "cronjob") if match else (name, "job")
    return name, "pod"


@functools.lru_cache(maxsize=1 << 16)
def ip(text: str) -> IPAddress:
    """A validated IP string as an address (cached: translation runs on every change)."""
    return ipaddress.ip_address(text)


def pod_addresses(pod: Resource) -> tuple[IPAddress, ...]:
    status = pod.status
    ips = [entry["ip"] for entry in status.get("podIPs") or ()]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return tuple(ip(text) for text in ips)


def pod_is_terminated(pod: Resource) -> bool:
    return pod.status.get("phase") in ("Succeeded", "Failed")


def pod_status(pod: Resource) -> WorkloadStatus:
    for condition in pod.status.get("conditions") or ():
        if condition["type"] == "Ready":
            ready = condition["status"] == "True"
            return WorkloadStatus.HEALTHY if ready else WorkloadStatus.UNHEALTHY
    return WorkloadStatus.HEALTHY


def pod_tunnel(pod: Resource, namespace_labels: Mapping[str, str]) -> TunnelProtocol:
    """HBONE for pods enrolled in ambient (namespace labelled, not opted out by the pod) and
    for pods whose sidecar terminates HBONE (labelled `networking.istio.io/tunnel: http`)."""
    if (
        pod.annotations.get(AMBIENT_REDIRECTION) == "enabled"
        or pod.labels.get(TUNNEL_LABEL) == "http"
    ):
        return TunnelProtocol.HBONE
    if pod.spec.get("hostNetwork") or SIDECAR_STATUS in pod.annotations:
        return TunnelProtocol.NONE
    mode = pod.labels.get(DATAPLANE_MODE)
    if mode == AMBIENT or (mode is None and namespace_labels.get(DATAPLANE_MODE) == AMBIENT):
        return TunnelProtocol.HBONE
    return TunnelProtocol.NONE


def entry_tunnel(labels: Mapping[str, str], annotations: Mapping[str, str]) -> TunnelProtocol:
    """istiod's setTunnelProtocol for WorkloadEntries and ServiceEntry endpoints."""
    if annotations.get(AMBIENT_REDIRECTION) == "enabled" or labels.get(TUNNEL_LABEL) == "http":
        return TunnelProtocol.HBONE
    return TunnelProtocol.NONE


def pod_named_ports(pod: Resource) -> dict[str, int]:
    """Container port name -> number (TCP ports), for named Service targetPorts."""
    ports: dict[str, int] = {}
    for container in pod.spec.get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") and port.get("protocol", "TCP") == "TCP":
                ports.setdefault(port["name"], port["containerPort"])
    return ports


def workload_entry_labels(entry: Resource) -> dict[str, str]:
    return {**entry.labels, **(entry.spec.get("labels") or {})}


def workload_entry_name(entry: Resource) -> str:
    return (
        entry.labels.get(WORKLOAD_NAME_LABEL)
        or entry.annotations.get(AUTO_REGISTRATION_GROUP)
        or entry.name
    )


def parse_address(address: str) -> IPAddress | None:
    try:
        return ip(address)
    except ValueError:
        return None


def capacity(spec: Mapping[str, Any]) -> int:
    weight = spec.get("weight") or 0
    return int(weight) if weight > 0 else 1
