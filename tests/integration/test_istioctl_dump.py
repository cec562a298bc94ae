"""The agent's `/config_dump` as `istioctl ztunnel-config` reads it.

istioctl decodes the dump with Go's encoding/json into the structs of its
`istioctl/pkg/writer/ztunnel/configdump/api.go` (`ZtunnelDump` and friends): a string where it
expects a number, a float for a uint32, a port key that is not a uint16 or a list where it wants an
object fails the whole command. The spec below is those structs, field by field and type by type;
`go_decode` applies Go's rules (null leaves the zero value, names match case-insensitively,
unknown keys are ignored, integers must be whole and in range). A real agent process, fed by a local
config and a real CA, with a pod enrolled, is decoded, then the values istioctl's tables print are
checked.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ca_support import RunningCa, free_port, start_ca
from tests.integration.test_agent_app import agent_argv, config_dump, pod_namespace
from ztunnel_py.cni.enroll import enroll_pod


class GoDecodeError(Exception):
    pass


STRING, BOOL, ANY = "string", "bool", "any"


@dataclass(frozen=True)
class UInt:
    bits: int


@dataclass(frozen=True)
class Int:
    bits: int


@dataclass(frozen=True)
class Slice:
    item: object


@dataclass(frozen=True)
class Map:
    value: object
    key: object = STRING


@dataclass(frozen=True)
class Struct:
    fields: dict[str, object]


@dataclass(frozen=True)
class Ptr:
    item: object


def zero(spec: object) -> object:
    if spec == STRING:
        return ""
    if spec == BOOL:
        return False
    if isinstance(spec, UInt | Int):
        return 0
    if isinstance(spec, Struct):
        return {name: zero(t) for name, t in spec.fields.items()}
    return None  # slices, maps, pointers, interfaces


def _integer(spec: UInt | Int, value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GoDecodeError(f"{path}: cannot unmarshal {value!r} into Go int{spec.bits}")
    low, high = (
        (0, 2**spec.bits - 1)
        if isinstance(spec, UInt)
        else (-(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1)
    )
    if not low <= value <= high:
        raise GoDecodeError(f"{path}: {value} out of range for {type(spec).__name__}{spec.bits}")
    return value


def go_decode(spec: object, value: object, path: str = "$") -> object:
    """`value` (parsed JSON) decoded into `spec` as Go's encoding/json would; raises
    GoDecodeError where Go returns an error."""
    if value is None:
        return zero(spec)
    if spec == ANY:
        return value
    if spec == STRING:
        if not isinstance(value, str):
            raise GoDecodeError(f"{path}: cannot unmarshal {value!r} into Go string")
        return value
    if spec == BOOL:
        if not isinstance(value, bool):
            raise GoDecodeError(f"{path}: cannot unmarshal {value!r} into Go bool")
        return value
    if isinstance(spec, UInt | Int):
        return _integer(spec, value, path)
    if isinstance(spec, Ptr):
        return go_decode(spec.item, value, path)
    if isinstance(spec, Slice):
        if not isinstance(value, list):
            raise GoDecodeError(f"{path}: cannot unmarshal {type(value).__name__} into a slice")
        return [go_decode(spec.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(spec, Map):
        if not isinstance(value, dict):
            raise GoDecodeError(f"{path}: cannot unmarshal {type(value).__name__} into a map")
        out: dict[object, object] = {}
        for k, v in value.items():
            key: object = k
            if isinstance(spec.key, UInt | Int):
                if not re.fullmatch(r"-?\d+", k):
                    raise GoDecodeError(f"{path}: map key {k!r} is not a number")
                key = _integer(spec.key, int(k), f"{path} key")
            out[key] = go_decode(spec.value, v, f"{path}[{k!r}]")
        return out
    assert isinstance(spec, Struct)
    if not isinstance(value, dict):
        raise GoDecodeError(f"{path}: cannot unmarshal {type(value).__name__} into a struct")
    decoded = {}
    for name, field_spec in spec.fields.items():
        # an exact match first, then any spelling of the name (encoding/json's rule)
        key = name if name in value else next((k for k in value if k.lower() == name.lower()), None)
        raw = value.get(key) if key is not None else None
        decoded[name] = go_decode(field_spec, raw, f"{path}.{name}")
    return decoded


def _fields(names: str, spec: object = STRING) -> dict[str, object]:
    return dict.fromkeys(names.split(), spec)


# istioctl/pkg/writer/ztunnel/configdump/api.go
GATEWAY = Struct({"destination": STRING})
WORKLOAD = Struct(
    {
        "uid": STRING,
        "workloadIps": Slice(STRING),
        "waypoint": Ptr(GATEWAY),
        "networkGateway": Ptr(GATEWAY),
        **_fields(
            "protocol name namespace serviceAccount workloadName workloadType canonicalName "
            "canonicalRevision clusterId trustDomain"
        ),
        "locality": Struct(_fields("region zone subzone")),
        **_fields("node network status hostname"),
        "capacity": UInt(32),
        "applicationTunnel": Struct({"protocol": STRING, "port": Ptr(UInt(16))}),
        "authorizationPolicies": Slice(STRING),
    }
)
ENDPOINT = Struct({**_fields("workloadUid service address"), "port": Map(UInt(16), UInt(16))})
SERVICE = Struct(
    {
        **_fields("name namespace hostname"),
        "vips": Slice(STRING),
        "ports": Map(Int(64)),
        "loadBalancer": Ptr(
            Struct({"mode": STRING, "routingPreferences": Slice(STRING), "healthPolicy": STRING})
        ),
        "waypoint": Ptr(GATEWAY),
        "endpoints": Map(Ptr(ENDPOINT)),
        "subjectAltNames": Slice(STRING),
        "ipFamilies": STRING,
    }
)
STRING_MATCH = Struct({**_fields("Exact Suffix Prefix"), "Presence": ANY})
ACCOUNT_MATCH = Struct(_fields("namespace serviceAccount"))
MATCH = Struct(
    {
        **_fields("namespaces notNamespaces principals notPrincipals", Slice(STRING_MATCH)),
        **_fields("sourceIps notSourceIps destinationIps notDestinationIps", Slice(STRING)),
        **_fields("destinationPorts notDestinationPorts", Slice(UInt(16))),
        **_fields("serviceAccounts notServiceAccounts", Slice(ACCOUNT_MATCH)),
    }
)
POLICY = Struct(
    {**_fields("name namespace scope action"), "rules": Slice(Slice(Slice(Ptr(MATCH))))}
)
CERT = Struct(_fields("pem serialNumber validFrom expirationTime"))
CERTS = Struct(
    {
        "identity": STRING,
        "state": STRING,
        "certChain": Slice(Ptr(CERT)),
        "rootCerts": Slice(Ptr(CERT)),
    }
)
CONNECTION = Struct(_fields("src originalDst actualDst protocol"))
WORKLOAD_STATE = Struct(
    {
        "state": STRING,
        "connections": Struct({"inbound": Slice(CONNECTION), "outbound": Slice(CONNECTION)}),
        "info": Struct(_fields("name namespace trustDomain serviceAccount")),
    }
)
# configdump.go's rawDump: each section is then decoded as a list or as a map of its items
RAW_DUMP = Struct(
    {
        **_fields("services workloads policies certificates", ANY),
        "workloadstate": Map(WORKLOAD_STATE),
    }
)


def istioctl_prime(parsed: object) -> dict[str, Any]:
    """configdump.go's ConfigWriter.Prime on the parsed JSON: the dump as istioctl holds it,
    or GoDecodeError."""
    raw = go_decode(RAW_DUMP, parsed)
    assert isinstance(raw, dict)
    out: dict[str, Any] = {"workloadState": raw["workloadstate"]}
    for section, spec in (
        ("services", SERVICE),
        ("workloads", WORKLOAD),
        ("certificates", CERTS),
        ("policies", POLICY),
    ):
        value = raw[section]
        if isinstance(value, dict):
            value = list(value.values())
        out[section] = go_decode(Slice(Ptr(spec)), value, f"$.{section}")
    return out


MESH = """
workloads:
- uid: Kubernetes//Pod/apps/web-1
  name: web-1
  namespace: apps
  serviceAccount: web
  workloadName: web
  canonicalName: web
  canonicalRevision: v1
  workloadIps: ["10.1.0.1", "fd00::1"]
  protocol: HBONE
  node: node-a
  network: net-1
  locality: {region: eu, zone: eu-1}
  waypoint: {destination: "net-1/10.96.0.9", hboneMtlsPort: 15008}
  authorizationPolicies: [apps/deny-admin]
  services: {apps/echo.apps.svc.cluster.local: {80: 8080}}
- uid: Kubernetes//Pod/apps/echo-1
  name: echo-1
  namespace: apps
  serviceAccount: echo
  workloadIps: ["10.1.0.2"]
  node: node-b
  status: Unhealthy
  capacity: 3
  services: {apps/echo.apps.svc.cluster.local: {80: 8080, 53: 5353}}
services:
- name: echo
  namespace: apps
  hostname: echo.apps.svc.cluster.local
  vips: ["/10.96.0.1", "/fd00:96::1"]
  ports: {80: 8080, 53: 0}
  ipFamilies: Dual
  loadBalancer: {routingPreferences: [Node, Zone], mode: Failover, healthPolicy: AllowAll}
policies:
- name: deny-admin
  namespace: apps
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - principals: [{Presence: {}}, {Suffix: /sa/admin}]
        notNamespaces: [{Exact: kube-system}]
        sourceIps: [10.0.0.0/8]
        destinationIps: [10.1.0.1]
        destinationPorts: [9000]
        notDestinationPorts: [9001]
        serviceAccounts: [{namespace: apps, serviceAccount: admin}]
"""


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[RunningCa]:
    (tmp_path / "mesh.yaml").write_text(MESH)
    running = start_ca(tmp_path / "ca", tmp_path / "mesh.yaml")
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.netns
def test_istioctl_decodes_a_real_agents_dump(tmp_path: Path, ca: RunningCa) -> None:
    admin = free_port()
    argv = agent_argv(tmp_path, tmp_path / "mesh.yaml", admin)
    argv[argv.index("--ca-address") + 1] = str(ca.address)
    argv[argv.index("--ca-root-cert") + 1] = str(ca.root_path)
    argv[argv.index("--auth-token") + 1] = str(ca.token_file("node-a"))
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        config_dump(admin)  # the agent is up
        with pod_namespace() as sandbox:
            enroll_pod(
                str(tmp_path / "ztunnel.sock"),
                "Kubernetes//Pod/apps/web-1",
                "web-1",
                "apps",
                "web",
                f"/proc/{sandbox.pid}/ns/net",
            )
            deadline = time.monotonic() + 20
            while True:
                dump = istioctl_prime(config_dump(admin))
                states = [c["state"] for c in dump["certificates"]]
                if states == ["Available"] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert states == ["Available"], err

    # `istioctl zc workloads`: NAMESPACE, POD NAME, ADDRESS, NODE, WAYPOINT, PROTOCOL
    rows = sorted(
        (
            w["namespace"],
            w["name"],
            w["workloadIps"][0],
            w["node"],
            (w["waypoint"] or {}).get("destination", "None"),
            w["protocol"],
        )
        for w in dump["workloads"]
    )
    assert rows == [
        ("apps", "echo-1", "10.1.0.2", "node-b", "None", "TCP"),
        ("apps", "web-1", "10.1.0.1", "node-a", "net-1/10.96.0.9", "HBONE"),
    ]
    web = next(w for w in dump["workloads"] if w["name"] == "web-1")
    assert web["locality"] == {"region": "eu", "zone": "eu-1", "subzone": ""}
    assert (web["trustDomain"], web["clusterId"], web["network"]) == (
        "cluster.local",
        "Kubernetes",
        "net-1",
    )
    assert web["authorizationPolicies"] == ["apps/deny-admin"]
    echo = next(w for w in dump["workloads"] if w["name"] == "echo-1")
    assert (echo["status"], echo["capacity"]) == ("Unhealthy", 3)

    (svc,) = dump["services"]
    assert svc["ports"] == {"53": 0, "80": 8080} and svc["ipFamilies"] == "Dual"
    assert svc["vips"] == ["/10.96.0.1", "/fd00:96::1"]
    assert svc["loadBalancer"] == {
        "mode": "Failover",
        "routingPreferences": ["Node", "Zone"],
        "healthPolicy": "AllowAll",
    }
    assert {uid: e["port"] for uid, e in svc["endpoints"].items()} == {
        "Kubernetes//Pod/apps/web-1": {80: 8080},
        "Kubernetes//Pod/apps/echo-1": {53: 5353, 80: 8080},
    }

    # `istioctl zc policies`: NAMESPACE, POLICY NAME, ACTION, SCOPE; and the rules as JSON
    (pol,) = dump["policies"]
    assert (pol["namespace"], pol["name"], pol["action"], pol["scope"]) == (
        "apps",
        "deny-admin",
        "Deny",
        "WorkloadSelector",
    )
    (((match,),),) = pol["rules"]
    assert match["principals"][1]["Suffix"] == "/sa/admin"
    assert match["principals"][0]["Presence"] is not None
    assert (match["destinationPorts"], match["notDestinationPorts"]) == ([9000], [9001])
    assert match["serviceAccounts"] == [{"namespace": "apps", "serviceAccount": "admin"}]

    # `istioctl zc certificates`: the serial read as a base-10 big integer, times as RFC 3339
    (cert,) = dump["certificates"]
    assert cert["identity"] == "spiffe://cluster.local/ns/apps/sa/web"
    leaf = cert["certChain"][0]
    assert int(leaf["serialNumber"], 10) > 0
    not_before, not_after = (
        datetime.strptime(leaf[k], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        for k in ("validFrom", "expirationTime")
    )
    assert not_before <= datetime.now(UTC) < not_after
    assert cert["rootCerts"] and cert["rootCerts"][0]["pem"]

    # `istioctl zc connections` reads workloadState
    state = dump["workloadState"]["Kubernetes//Pod/apps/web-1"]
    assert state["info"] == {
        "name": "web-1",
        "namespace": "apps",
        "trustDomain": "cluster.local",
        "serviceAccount": "web",
    }
    assert state["connections"] == {"inbound": [], "outbound": []}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"workloads": [{"capacity": 1.5}]}', "cannot unmarshal 1.5 into Go int32"),
        (b'{"workloads": [{"capacity": -1}]}', "out of range for UInt32"),
        (b'{"services": [{"endpoints": {"u": {"port": {"http": 80}}}}]}', "is not a number"),
        (b'{"services": [{"ports": {"80": "8080"}}]}', "into Go int64"),
        (b'{"policies": [{"rules": [{"a": 1}]}]}', "into a slice"),
        (b'{"workloadState": {"p": {"info": []}}}', "into a struct"),
    ],
)
def test_the_go_decoder_refuses_what_istioctl_refuses(body: bytes, error: str) -> None:
    """The spec is only worth something if it fails where Go fails."""
    with pytest.raises(GoDecodeError, match=re.escape(error)):
        istioctl_prime(json.loads(body))


def test_the_go_decoder_accepts_what_go_accepts() -> None:
    dump = istioctl_prime(
        json.loads(
            b'{"WORKLOADS": {"a": {"uid": "a", "capacity": null, "unknown": [1]}}, '
            b'"services": null}'
        )
    )
    assert dump["workloads"][0]["uid"] == "a" and dump["workloads"][0]["capacity"] == 0
    assert dump["services"] is None and dump["workloadState"] is None
