"""Writes workloads and services in ztunnel's local-config YAML format (LOCAL_XDS_PATH).

The testbed hands the same file to the control plane and to every agent, so both sides see the
pods as workloads without a Kubernetes API. Keys are ztunnel's camelCase names; port maps use
integer keys, as ztunnel's own example files do.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from ztunnel_py.model import Service, Workload

YamlMap = dict[str, object]


def workload_entry(workload: Workload) -> YamlMap:
    entry: YamlMap = {
        "uid": workload.uid,
        "name": workload.name,
        "namespace": workload.namespace,
        "serviceAccount": workload.service_account,
        "trustDomain": workload.trust_domain,
        "workloadIps": [str(ip) for ip in workload.addresses],
        "protocol": workload.tunnel_protocol.value,
        "node": workload.node,
    }
    optional = {
        "canonicalName": workload.canonical_name,
        "canonicalRevision": workload.canonical_revision,
        "workloadName": workload.workload_name,
        "workloadType": workload.workload_type,
        "clusterId": workload.cluster_id,
    }
    entry.update({key: value for key, value in optional.items() if value})
    entry["services"] = {key: dict(ports) for key, ports in workload.services.items()}
    return entry


def service_entry(service: Service) -> YamlMap:
    return {
        "name": service.name,
        "namespace": service.namespace,
        "hostname": service.hostname,
        "vips": [str(vip) for vip in service.vips],
        "ports": dict(service.ports),
    }


def render(workloads: Iterable[Workload], services: Iterable[Service]) -> str:
    """The YAML document: `workloads`, `services` and an empty `policies` list."""
    document: YamlMap = {
        "workloads": [workload_entry(w) for w in workloads],
        "services": [service_entry(s) for s in services],
        "policies": [],
    }
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
