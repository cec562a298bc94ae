"""Our control plane's workload xDS for a realistic cluster, field by field against istiod's.

`tests/fixtures/istio/mesh/cluster.yaml` is a cluster as `kubectl get -o yaml` shows it: an
ambient and a plain namespace, a Deployment's pods (one terminating), a StatefulSet's pod that
is not Ready, a DaemonSet's host-network pod, a finished Job's pod, kube-dns with port 53 over
UDP and TCP, a dual-stack Service with a named target port, Services with node-local and
closest-first traffic and a headless one publishing not-ready addresses, a ServiceEntry with an
endpoint, a WorkloadEntry, a mesh-wide STRICT PeerAuthentication and two AuthorizationPolicies.
`istiod.yaml` is what istiod sends for it (see that file and the README). The known differences
are explicit here: our Service model keeps one target per service port, so the UDP and TCP
entries of a port arrive as one (the agent collapses them anyway: the workload API has no
protocol per port); `appProtocol` is our extension for waypoints and not compared.

The agent side is checked with the same data: istiod's messages, decoded by the agent, give the
model our control plane translates to.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from tests.unit.cp_support import store_with
from ztunnel_py.controlplane.snapshot import MeshSnapshot
from ztunnel_py.model import Service
from ztunnel_py.proto import authorization_pb2, workload_pb2
from ztunnel_py.xds.convert import (
    address_from_proto,
    address_to_proto,
    authorization_from_proto,
    authorization_to_proto,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "istio" / "mesh"
ISTIOD: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "istiod.yaml").read_text())


@pytest.fixture(scope="module")
def ours() -> MeshSnapshot:
    store = store_with(("cluster.yaml", (FIXTURES / "cluster.yaml").read_text()))
    assert not [d for d in store.diagnostics() if d.is_error]
    return store.current()


def _text_ips(message: dict[str, Any]) -> dict[str, Any]:
    """Protobuf JSON of a workload or service with its IPs as text (they are base64 bytes)."""
    out = dict(message)
    if "addresses" in out and out["addresses"] and isinstance(out["addresses"][0], str):
        out["addresses"] = [
            str(ipaddress.ip_address(base64.b64decode(a))) for a in out["addresses"]
        ]
    elif "addresses" in out:
        out["addresses"] = [
            {**a, "address": str(ipaddress.ip_address(base64.b64decode(a["address"])))}
            for a in out["addresses"]
        ]
    return out


def _byte_ips(message: dict[str, Any]) -> dict[str, Any]:
    """The reverse of `_text_ips`, to build istiod's message from the fixture."""
    out = dict(message)

    def packed(text: str) -> str:
        return base64.b64encode(ipaddress.ip_address(text).packed).decode()

    if out.get("addresses") and isinstance(out["addresses"][0], str):
        out["addresses"] = [packed(a) for a in out["addresses"]]
    elif "addresses" in out:
        out["addresses"] = [{**a, "address": packed(a["address"])} for a in out["addresses"]]
    return out


def _ports(ports: list[dict[str, int]]) -> list[tuple[int, int]]:
    return [(p["servicePort"], p.get("targetPort", 0)) for p in ports]


def _compare(ours: dict[str, Any], istiod: dict[str, Any], where: str) -> None:
    """Field by field; port lists with the one known difference (one entry per port)."""
    assert ours.keys() == istiod.keys(), where
    for field, expected in istiod.items():
        actual = ours[field]
        if field == "ports":
            for p in actual:
                p.pop("appProtocol", None)
            assert _ports(actual) == list(dict.fromkeys(_ports(expected))), f"{where}.ports"
        elif field == "services":
            assert actual.keys() == expected.keys(), f"{where}.services"
            for key in expected:
                assert _ports(actual[key]["ports"]) == list(
                    dict.fromkeys(_ports(expected[key]["ports"]))
                ), f"{where}.services[{key}]"
        else:
            assert actual == expected, f"{where}.{field}"


def test_workloads_as_istiod_builds_them(ours: MeshSnapshot) -> None:
    assert sorted(ours.workloads) == sorted(ISTIOD["workloads"])
    for uid, expected in ISTIOD["workloads"].items():
        message = json_format.MessageToDict(address_to_proto(ours.workloads[uid]))
        _compare(_text_ips(message["workload"]), expected, uid)


def test_services_as_istiod_builds_them(ours: MeshSnapshot) -> None:
    assert sorted(ours.services) == sorted(ISTIOD["services"])
    for key, expected in ISTIOD["services"].items():
        message = json_format.MessageToDict(address_to_proto(ours.services[key]))
        _compare(_text_ips(message["service"]), expected, key)


def test_policies_as_istiod_converts_them(ours: MeshSnapshot) -> None:
    assert sorted(ours.policies) == sorted(ISTIOD["policies"])
    for key, expected in ISTIOD["policies"].items():
        actual = json_format.MessageToDict(authorization_to_proto(ours.policies[key]))
        _compare(actual, expected, key)


def test_the_agent_reads_istiods_messages_as_our_translation(ours: MeshSnapshot) -> None:
    """istiod's messages, built from the fixture as protobuf, decoded by the agent: the model
    is the one our control plane produces (ports compared as the agent keeps them: one target
    per service port)."""
    for uid, message in ISTIOD["workloads"].items():
        pb = json_format.ParseDict({"workload": _byte_ips(message)}, workload_pb2.Address())
        notes: list[str] = []
        assert address_from_proto(pb, notes) == ours.workloads[uid], uid
        assert notes == [], uid
    for key, message in ISTIOD["services"].items():
        pb = json_format.ParseDict({"service": _byte_ips(message)}, workload_pb2.Address())
        decoded = address_from_proto(pb)
        assert isinstance(decoded, Service)
        # the app protocol is our extension: istiod's message has none
        assert decoded == dataclasses.replace(ours.services[key], app_protocols={}), key
    for key, message in ISTIOD["policies"].items():
        pb = json_format.ParseDict(message, authorization_pb2.Authorization())
        assert authorization_from_proto(pb) == ours.policies[key], key
