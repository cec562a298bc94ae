"""L4 policy end to end: a table of AuthorizationPolicy and PeerAuthentication cases, each
applied to the testbed through the control plane and checked with a real client (curl)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

WEB = "cluster.local/ns/apps/sa/web"
CURL = "cluster.local/ns/clients/sa/curl"
ECHO = {"matchLabels": {"app": "echo"}}


def ap(name: str, spec: dict[str, Any], namespace: str = "apps", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": spec,
    }


def pa(name: str, spec: dict[str, Any], namespace: str = "apps") -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def allow(*rules: dict[str, Any], selector: dict[str, Any] | None = ECHO) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": "ALLOW", "rules": list(rules)}
    if selector is not None:
        spec["selector"] = selector
    return spec


def deny(*rules: dict[str, Any], selector: dict[str, Any] | None = ECHO) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": "DENY", "rules": list(rules)}
    if selector is not None:
        spec["selector"] = selector
    return spec


def source(**fields: Any) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def ports(*values: str, negate: bool = False) -> dict[str, Any]:
    return {"to": [{"operation": {"notPorts" if negate else "ports": list(values)}}]}


def when(key: str, *values: str) -> dict[str, Any]:
    return {"when": [{"key": key, "values": list(values)}]}


@dataclass(frozen=True)
class Case:
    name: str
    resources: tuple[dict[str, Any], ...]
    client: str
    server: str
    allowed: bool
    port: int = 8080


STRICT = pa("strict", {"mtls": {"mode": "STRICT"}})
CASES = [
    Case("no policy: mesh client allowed", (), "web-1", "echo-2", True),
    Case("no policy: plaintext client allowed (PERMISSIVE)", (), "legacy-1", "echo-1", True),
    Case("ALLOW principal web: web allowed",
         (ap("p", allow(source(principals=[WEB]))),), "web-1", "echo-2", True),
    Case("ALLOW principal web: curl denied",
         (ap("p", allow(source(principals=[WEB]))),), "curl-2", "echo-2", False),
    Case("ALLOW principal web: plaintext denied (no identity)",
         (ap("p", allow(source(principals=[WEB]))),), "legacy-1", "echo-1", False),
    Case("ALLOW principal prefix wildcard: web allowed",
         (ap("p", allow(source(principals=["cluster.local/ns/apps/*"]))),), "web-1", "echo-1",
         True),
    Case("ALLOW principal prefix wildcard: curl denied",
         (ap("p", allow(source(principals=["cluster.local/ns/apps/*"]))),), "curl-2", "echo-1",
         False),
    Case("ALLOW principal suffix wildcard: curl allowed",
         (ap("p", allow(source(principals=["*/sa/curl"]))),), "curl-2", "echo-2", True),
    Case("ALLOW notPrincipals web: curl allowed",
         (ap("p", allow(source(notPrincipals=[WEB]))),), "curl-2", "echo-2", True),
    Case("ALLOW notPrincipals web: web denied",
         (ap("p", allow(source(notPrincipals=[WEB]))),), "web-1", "echo-2", False),
    Case("ALLOW notPrincipals web: plaintext allowed",
         (ap("p", allow(source(notPrincipals=[WEB]))),), "legacy-1", "echo-1", True),
    Case("ALLOW namespace apps: web allowed",
         (ap("p", allow(source(namespaces=["apps"]))),), "web-1", "echo-2", True),
    Case("ALLOW namespace apps: curl denied",
         (ap("p", allow(source(namespaces=["apps"]))),), "curl-2", "echo-2", False),
    Case("ALLOW notNamespaces clients: web allowed",
         (ap("p", allow(source(notNamespaces=["clients"]))),), "web-1", "echo-2", True),
    Case("ALLOW notNamespaces clients: curl denied",
         (ap("p", allow(source(notNamespaces=["clients"]))),), "curl-2", "echo-1", False),
    Case("ALLOW service account curl (exact principal): curl allowed across nodes",
         (ap("p", allow(source(principals=[CURL]))),), "curl-2", "echo-1", True),
    Case("ALLOW ipBlocks node1 pods: web allowed",
         (ap("p", allow(source(ipBlocks=["10.244.1.0/24"]))),), "web-1", "echo-2", True),
    Case("ALLOW ipBlocks node1 pods: curl denied",
         (ap("p", allow(source(ipBlocks=["10.244.1.0/24"]))),), "curl-2", "echo-2", False),
    Case("ALLOW ipBlocks: plaintext from that block allowed",
         (ap("p", allow(source(ipBlocks=["10.244.1.250/32"]))),), "legacy-1", "echo-2", True),
    Case("ALLOW notIpBlocks node2 pods: curl denied",
         (ap("p", allow(source(notIpBlocks=["10.244.2.0/24"]))),), "curl-2", "echo-1", False),
    Case("ALLOW notIpBlocks node2 pods: web allowed",
         (ap("p", allow(source(notIpBlocks=["10.244.2.0/24"]))),), "web-1", "echo-1", True),
    Case("ALLOW port 8080: allowed", (ap("p", allow(ports("8080"))),), "web-1", "echo-2", True),
    Case("ALLOW port 9090 only: 8080 denied",
         (ap("p", allow(ports("9090"))),), "web-1", "echo-2", False),
    Case("DENY notPorts 9090: 8080 denied",
         (ap("p", deny(ports("9090", negate=True))),), "web-1", "echo-2", False),
    Case("DENY principal web: web denied",
         (ap("p", deny(source(principals=[WEB]))),), "web-1", "echo-2", False),
    Case("DENY principal web: curl allowed",
         (ap("p", deny(source(principals=[WEB]))),), "curl-2", "echo-2", True),
    Case("DENY takes precedence over a matching ALLOW",
         (ap("a", allow(source(principals=[WEB]))), ap("d", deny(source(namespaces=["apps"])))),
         "web-1", "echo-2", False),
    Case("DENY and ALLOW for different callers: allowed caller passes",
         (ap("a", allow(source(principals=[WEB]))), ap("d", deny(source(principals=[CURL])))),
         "web-1", "echo-2", True),
    Case("ALLOW with no rules denies everything",
         (ap("p", {"selector": ECHO, "action": "ALLOW"}),), "web-1", "echo-2", False),
    Case("DENY with an empty rule denies everything",
         (ap("p", deny({})),), "curl-2", "echo-2", False),
    Case("dry-run DENY only logs: allowed",
         (ap("p", deny(source(principals=[WEB])),
             annotations={"istio.io/dry-run": "true"}),), "web-1", "echo-2", True),
    Case("when source.namespace apps: web allowed",
         (ap("p", allow(when("source.namespace", "apps"))),), "web-1", "echo-2", True),
    Case("when source.namespace apps: curl denied",
         (ap("p", allow(when("source.namespace", "apps"))),), "curl-2", "echo-2", False),
    Case("when destination.port 8080: allowed",
         (ap("p", allow(when("destination.port", "8080"))),), "curl-2", "echo-1", True),
    Case("namespace-wide ALLOW (no selector) applies to echo: curl denied",
         (ap("p", allow(source(principals=[WEB]), selector=None)),), "curl-2", "echo-2", False),
    Case("selector for another app does not apply: curl allowed",
         (ap("p", allow(source(principals=[WEB]), selector={"matchLabels": {"app": "web"}})),),
         "curl-2", "echo-2", True),
    Case("mesh-wide DENY in the root namespace: curl denied",
         (ap("p", deny(source(principals=[CURL]), selector=None), namespace="istio-system"),),
         "curl-2", "echo-1", False),
    Case("mesh-wide DENY in the root namespace: web allowed",
         (ap("p", deny(source(principals=[CURL]), selector=None), namespace="istio-system"),),
         "web-1", "echo-1", True),
    Case("policy in another namespace does not apply: curl allowed",
         (ap("p", allow(source(principals=[WEB]), selector=None), namespace="clients"),),
         "curl-2", "echo-2", True),
    Case("STRICT namespace: plaintext client denied", (STRICT,), "legacy-1", "echo-1", False),
    Case("STRICT namespace: mesh client allowed", (STRICT,), "web-1", "echo-1", True),
    Case("PERMISSIVE namespace: plaintext client allowed",
         (pa("permissive", {"mtls": {"mode": "PERMISSIVE"}}),), "legacy-1", "echo-1", True),
    Case("STRICT with port 8080 PERMISSIVE: plaintext to 8080 allowed",
         (pa("strict-ports", {"selector": ECHO, "mtls": {"mode": "STRICT"},
                              "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}),),
         "legacy-1", "echo-1", True),
    Case("STRICT with port 9090 PERMISSIVE: plaintext to 8080 denied",
         (pa("strict-ports", {"selector": ECHO, "mtls": {"mode": "STRICT"},
                              "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}}),),
         "legacy-1", "echo-1", False),
    Case("mesh-wide STRICT in the root namespace: plaintext denied",
         (pa("default", {"mtls": {"mode": "STRICT"}}, namespace="istio-system"),),
         "legacy-1", "echo-2", False),
    Case("mesh-wide STRICT, namespace PERMISSIVE overrides: plaintext allowed",
         (pa("default", {"mtls": {"mode": "STRICT"}}, namespace="istio-system"),
          pa("permissive", {"mtls": {"mode": "PERMISSIVE"}})), "legacy-1", "echo-2", True),
]  # fmt: skip


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("t"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def ip_of(bed: Testbed, name: str) -> str:
    return str(bed.topology.pod(name).ip)


def served_policies(bed: Testbed, node: str) -> list[str]:
    done = bed.exec(node, ["curl", "-sS", "http://127.0.0.1:15000/config_dump"])
    dump: dict[str, Any] = json.loads(done.stdout)
    return sorted(f"{p['namespace']}/{p['name']}" for p in dump.get("policies", []))


def settle(bed: Testbed, node: str, before: list[str]) -> bool:
    """Wait until the destination agent's policies changed (or 3 s); whether they did. Every
    case changes them: a PeerAuthentication of any mode brings istiod's static STRICT policy."""
    deadline = time.monotonic() + 3
    while served_policies(bed, node) == before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def settle_empty(bed: Testbed) -> None:
    """Wait until no agent serves a policy (the table's starting point), so the next case's
    `before` is not a leftover of this one on the other node."""
    deadline = time.monotonic() + 5
    for node in (n.name for n in bed.topology.nodes):
        while served_policies(bed, node):
            assert time.monotonic() < deadline, f"{node} still serves {served_policies(bed, node)}"
            time.sleep(0.05)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_policy_case(bed: Testbed, case: Case) -> None:
    node = bed.topology.pod(case.server).node
    text = yaml.safe_dump_all(case.resources)
    before = served_policies(bed, node)
    if case.resources:
        bed.apply(text)
        # Otherwise an "allowed" case would pass with a policy the control plane rejected.
        assert settle(bed, node, before)
    try:
        done = bed.exec(
            case.client,
            ["curl", "-sS", "--max-time", "3",
             f"http://{ip_of(bed, case.server)}:{case.port}/"],
            timeout=15,
        )  # fmt: skip
        assert (done.returncode == 0) == case.allowed, (done.stdout, done.stderr)
        if "dry-run" in case.name:
            log = Path(str(bed.status().node(node).log)).read_text()
            assert "dry-run policy apps/p would DENY" in log
    finally:
        if case.resources:
            bed.delete(text)
            settle_empty(bed)
