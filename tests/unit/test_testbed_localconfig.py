"""The testbed's local-config file: ztunnel's format, and read back the same by our parser."""

from __future__ import annotations

import pytest
import yaml

from ztunnel_py.agent.localconfig import parse_local_config
from ztunnel_py.testbed.localconfig import render
from ztunnel_py.testbed.topology import plan

# Keys ztunnel's local-config accepts (reference section 9.2); anything else is rejected there.
WORKLOAD_KEYS = {
    "uid", "name", "namespace", "serviceAccount", "trustDomain", "workloadIps", "protocol",
    "node", "network", "hostname", "canonicalName", "canonicalRevision", "workloadName",
    "workloadType", "waypoint", "networkGateway", "nativeTunnel", "applicationTunnel",
    "authorizationPolicies", "status", "clusterId", "locality", "networkMode", "capacity",
    "services",
}  # fmt: skip
SERVICE_KEYS = {"name", "namespace", "hostname", "vips", "ports", "subjectAltNames", "waypoint"}


def test_document_uses_ztunnel_keys_and_values() -> None:
    t = plan("zt-", nodes=2, pods_per_node=3)
    doc = yaml.safe_load(render(t.workloads(), t.mesh_services()))
    assert set(doc) == {"workloads", "services", "policies"}
    assert doc["policies"] == []
    workloads = {w["name"]: w for w in doc["workloads"]}
    assert set(workloads) == {p.name for p in t.pods}
    for entry in doc["workloads"]:
        assert set(entry) <= WORKLOAD_KEYS
    echo = workloads["echo-1"]
    assert echo["uid"] == "Kubernetes//Pod/apps/echo-1"
    assert echo["serviceAccount"] == "echo"
    assert echo["workloadIps"] == ["10.244.1.10"]
    assert echo["protocol"] == "HBONE"
    assert echo["node"] == "node1"
    assert echo["canonicalName"] == "echo"
    assert echo["services"] == {"apps/echo.apps.svc.cluster.local": {80: 8080, 5201: 5201}}
    assert workloads["web-1"]["services"] == {}
    # Not in an ambient namespace, so not enrolled: reached in plain TCP.
    assert workloads["legacy-1"]["protocol"] == "TCP"
    assert workloads["legacy-1"]["namespace"] == "legacy"
    services = {s["name"]: s for s in doc["services"]}
    for entry in doc["services"]:
        assert set(entry) <= SERVICE_KEYS
    assert services["echo"] == {
        "name": "echo",
        "namespace": "apps",
        "hostname": "echo.apps.svc.cluster.local",
        "vips": ["/10.96.0.10"],
        "ports": {80: 8080, 5201: 5201},
    }
    assert services["store"]["vips"] == ["/10.96.0.20"]


@pytest.mark.parametrize("dual_stack", [False, True])
def test_agent_parser_reads_back_the_same_workloads_and_services(dual_stack: bool) -> None:
    t = plan("zt-", nodes=2, pods_per_node=3, dual_stack=dual_stack)
    parsed = parse_local_config(render(t.workloads(), t.mesh_services()), "testbed")
    assert list(parsed.workloads) == t.workloads()
    assert list(parsed.services) == t.mesh_services()
    assert parsed.policies == ()
