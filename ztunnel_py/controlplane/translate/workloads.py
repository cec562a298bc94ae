"""Pods, WorkloadEntries and ServiceEntry endpoints to workload-API `Workload`s.

Follows istiod's ambient index (`workloads.go`): uids `Kubernetes//Pod/<ns>/<name>`,
`Kubernetes/networking.istio.io/WorkloadEntry/<ns>/<name>` and
`Kubernetes/networking.istio.io/ServiceEntry/<ns>/<name>/<address>`; canonical name and
revision from the usual labels; the workload name from the pod's controller, the workload type
always POD (istiod keeps it so for backwards compatibility). A pod is HBONE only once the CNI
side has redirected it (annotation `ambient.istio.io/redirection: enabled`) or when it
terminates HBONE itself (label `networking.istio.io/tunnel: http`, also `native_tunnel`): a pod
of an ambient namespace whose capture is not in place yet is sent as plain TCP. A pod that is
not Ready, or is terminating (`deletionTimestamp`), is UNHEALTHY; a host-network pod has
`network_mode` HOST_NETWORK.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.model import IPAddress, TunnelProtocol, WorkloadStatus
from ztunnel_py.model.workload import NetworkMode

# Set by the CNI side on pods it has redirected (and removed when it lets them go): only then is a
# pod reachable over HBONE.
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
REDIRECTION_ENABLED = "enabled"
# A workload (a VM's WorkloadEntry, a pod with an HBONE-capable sidecar) that terminates HBONE
# itself.
TUNNEL_LABEL = "networking.istio.io/tunnel"
NETWORK_LABEL = "topology.istio.io/network"
WORKLOAD_NAME_LABEL = "service.istio.io/workload-name"
AUTO_REGISTRATION_GROUP = "istio.io/autoRegistrationGroup"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = (
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
)
# a CronJob's Job: <cronjob>-<schedule time in minutes>
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


# istiod sends every workload as type POD (for backwards compatibility, its source says)
WORKLOAD_TYPE = "pod"
POD_TEMPLATE_HASH = "pod-template-hash"


def pod_workload_name(pod: Resource) -> str:
    """The name of the pod's workload as istiod derives it (`GetWorkloadMetaFromPod`): the
    `service.istio.io/workload-name` label; else, for a pod with a generated name, its
    controller's name, less the `-<pod-template-hash>` of a Deployment's ReplicaSet or the
    `-<timestamp>` of a CronJob's Job; otherwise the pod's own name."""
    if WORKLOAD_NAME_LABEL in pod.labels:
        return pod.labels[WORKLOAD_NAME_LABEL]
    if not pod.metadata.get("generateName"):
        return pod.name
    owners = pod.metadata.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), None)
    if owner is None:
        return pod.name
    kind, name = owner.get("kind"), owner.get("name") or pod.name
    template_hash = pod.labels.get(POD_TEMPLATE_HASH, "")
    if kind == "ReplicaSet" and template_hash and name.endswith(template_hash):
        return name.removesuffix(template_hash).removesuffix("-")
    if kind == "Job":
        match = _CRON_JOB.match(name)
        if match:
            return match["name"]
    return name


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
    """HEALTHY only for a Ready pod that is not terminating (Kubernetes' endpoint rule)."""
    if pod.metadata.get("deletionTimestamp"):
        return WorkloadStatus.UNHEALTHY
    for condition in pod.status.get("conditions") or ():
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            return WorkloadStatus.HEALTHY if ready else WorkloadStatus.UNHEALTHY
    return WorkloadStatus.UNHEALTHY


def pod_network_mode(pod: Resource) -> NetworkMode:
    return NetworkMode.HOST_NETWORK if pod.spec.get("hostNetwork") else NetworkMode.STANDARD


def tunnel(
    labels: Mapping[str, str], annotations: Mapping[str, str]
) -> tuple[TunnelProtocol, bool]:
    """istiod's setTunnelProtocol: (tunnel protocol, native tunnel) of a pod, WorkloadEntry or
    ServiceEntry endpoint."""
    if labels.get(TUNNEL_LABEL) == "http":
        return TunnelProtocol.HBONE, True
    if annotations.get(AMBIENT_REDIRECTION) == REDIRECTION_ENABLED:
        return TunnelProtocol.HBONE, False
    return TunnelProtocol.NONE, False


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
