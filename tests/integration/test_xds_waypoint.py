"""The waypoints' L7 xDS end to end: the control plane (configuration directory, store,
translation, xDS server) in process, real xDS clients over gRPC/TLS on 127.0.0.1. A client
configured as a waypoint receives exactly its own HttpServices, policies and request
authentications, follows file
changes within a second, is refused when its credential's node does not host its pod; agents
see the waypoint address in the workload API and nothing of the L7 types."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.integration.test_cp_files import write
from tests.integration.xds_support import ControlPlane, eventually, http_get, workload
from ztunnel_py.controlplane.memsource import MemorySnapshotSource
from ztunnel_py.controlplane.snapshot import WaypointScope
from ztunnel_py.controlplane.sources.files import DirectorySource
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.model import GatewayAddress, NamespacedHostname
from ztunnel_py.model.authn import WaypointAuthentication
from ztunnel_py.model.http import Backend, HttpService, Route
from ztunnel_py.model.policy import WaypointPolicy
from ztunnel_py.protocol.xds import WORKLOAD_TYPES
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.xds.client import XdsClient, agent_node
from ztunnel_py.xds.convert import WORKLOAD_DECODERS, DecodedResponse
from ztunnel_py.xds.l7convert import (
    AUTHENTICATION_TYPE,
    HTTP_SERVICE_TYPE,
    L7_DECODERS,
    WAYPOINT_POLICY_TYPE,
)

ECHO = "apps/echo.apps.svc.cluster.local"
WAYPOINT_GA = GatewayAddress(NamespacedHostname("apps", "waypoint.apps.svc.cluster.local"))

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-0, namespace: apps, labels: {app: echo}}
spec: {nodeName: node-2, containers: [{name: app, image: app}]}
status: {podIP: 10.1.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.1.10, selector: {app: cart}, ports: [{name: http, port: 80}]}
"""


def waypoint(ns: str, node: str, ip: str, vip: str) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: {ns}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: waypoint, namespace: {ns}}}
spec:
  clusterIP: {vip}
  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}
  ports: [{{name: mesh, port: 15008, appProtocol: hbone}}, {{name: status, port: 15021}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: {ns}
  labels: {{gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}
spec: {{nodeName: {node}, serviceAccountName: waypoint, containers: [{{name: wp, image: wp}}]}}
status: {{podIP: {ip}}}
"""


def deny(name: str, ns: str, method: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules: [{{to: [{{operation: {{methods: [{method}]}}}}]}}]
"""


# An EC P-256 public key (any key set will do: the waypoint side is not exercised here).
JWKS = (
    '{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", '
    '"x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", '
    '"y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
)


def request_authentication(ns: str, issuer: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {ns}}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules: [{{issuer: {issuer}, jwks: '{JWKS}'}}]
"""


def virtual_service(prefix: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: apps}}
spec:
  hosts: [echo]
  http:
  - match: [{{uri: {{prefix: {prefix}}}}}]
    route: [{{destination: {{host: echo}}}}]
"""


@dataclass
class WaypointFeed:
    """A waypoint's xDS handler: the workload API into a ProxyState, our L7 types into the
    waypoint's L7State."""

    state: ProxyState = field(default_factory=ProxyState)
    l7: L7State = field(default_factory=L7State)
    synced_types: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.feed = StateFeed(self.state)

    def apply(self, update: DecodedResponse) -> None:
        if update.type_url == HTTP_SERVICE_TYPE:
            services = [o for o in update.others if isinstance(o, HttpService)]
            self.l7.apply_services(services, update.removed)
        elif update.type_url == WAYPOINT_POLICY_TYPE:
            policies = [o for o in update.others if isinstance(o, WaypointPolicy)]
            self.l7.apply_policies(policies, update.removed)
        elif update.type_url == AUTHENTICATION_TYPE:
            found = [o for o in update.others if isinstance(o, WaypointAuthentication)]
            self.l7.apply_authentications(found, update.removed)
        else:
            self.feed.apply(update)

    def synced(self, type_url: str) -> None:
        self.synced_types.add(type_url)

    def services(self) -> set[str]:
        return {s["service"] for s in self.l7.dump()["httpRoutes"]}

    def policies(self) -> set[str]:
        return {f"{p['namespace']}/{p['name']}" for p in self.l7.dump()["waypointPolicies"]}

    def issuers(self) -> set[str]:
        return {r.issuer for r in self.l7.jwt_rules_for(ECHO)}


def waypoint_client(
    cp: ControlPlane, feed: WaypointFeed, *, node: str, pod: str = "waypoint-0", ns: str = "apps"
) -> XdsClient:
    info = agent_node(
        "10.1.9.1",
        pod,
        ns,
        node,
        metadata={"GATEWAY_NAME": "waypoint", "GATEWAY_NAMESPACE": ns},
        proxy_type="waypoint",
    )
    return XdsClient(
        cp.channel(cp.token_file(node)),
        info,
        feed,
        decoders={**WORKLOAD_DECODERS, **L7_DECODERS},
    )


@asynccontextmanager
async def running(*clients: XdsClient) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for client in clients:
            await nursery.start(client.run)
        yield
        nursery.cancel_scope.cancel()


@dataclass
class FileMesh:
    directory: Path
    cp: ControlPlane


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[FileMesh]:
    config = tmp_path / "config"
    write(config / "mesh.yaml", MESH)
    write(config / "waypoint-apps.yaml", waypoint("apps", "node-1", "10.1.9.1", "10.96.9.1"))
    write(config / "waypoint-shop.yaml", waypoint("shop", "node-2", "10.1.9.2", "10.96.9.2"))
    write(
        config / "policies.yaml",
        deny("no-delete", "apps", "DELETE") + "---" + deny("no-put", "shop", "PUT"),
    )
    write(config / "routes.yaml", virtual_service("/v1"))
    write(
        config / "authn.yaml",
        request_authentication("apps", "https://apps.example")
        + "---"
        + request_authentication("shop", "https://shop.example"),
    )
    store = ConfigStore(report=False)
    source = DirectorySource(config, store)
    source.sync()
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    cp = ControlPlane(tmp_path / "cp", store).start()
    try:
        yield FileMesh(config, cp)
    finally:
        cp.stop()
        cp.close_channels()
        stop.set()
        thread.join(5)


async def test_a_waypoint_gets_exactly_its_own_configuration(mesh: FileMesh) -> None:
    feed = WaypointFeed()
    async with running(waypoint_client(mesh.cp, feed, node="node-1")):
        await eventually(
            lambda: (
                feed.services() == {ECHO}
                and feed.policies() == {"apps/no-delete"}
                and feed.issuers() == {"https://apps.example"}
            ),
            within=5,
        )
        config = feed.l7.service(ECHO)
        assert config is not None and config.sources == ("VirtualService apps/echo",)
        assert config.routes[0].matches[0].path.value == "/v1"  # type: ignore[union-attr]
        # the workload API, whole, with the waypoint address where istiod sets it
        await eventually(lambda: feed.state.service_by_key(ECHO) is not None)
        assert feed.state.service_by_key(ECHO).waypoint == WAYPOINT_GA  # type: ignore[union-attr]
        assert feed.synced_types == {*WORKLOAD_TYPES, *L7_DECODERS}
        (client,) = mesh.cp.debug()["clients"]
        assert client["waypoint"] == {
            "gateway": "apps/waypoint",
            "pod": "apps/waypoint-0",
            "served": "apps/waypoint",
        }


async def test_file_changes_reach_the_waypoint_within_a_second(mesh: FileMesh) -> None:
    feed = WaypointFeed()
    async with running(waypoint_client(mesh.cp, feed, node="node-1")):
        await eventually(lambda: feed.services() == {ECHO}, within=5)
        write(mesh.directory / "routes.yaml", virtual_service("/v2"))

        def prefix() -> str | None:
            config = feed.l7.service(ECHO)
            return config.routes[0].matches[0].path.value if config and config.routes else None  # type: ignore[union-attr]

        took = await eventually(lambda: prefix() == "/v2", within=1.0)
        assert took < 1.0
        (mesh.directory / "routes.yaml").unlink()
        await eventually(lambda: prefix() is None, within=1.0)
        write(mesh.directory / "policies.yaml", deny("no-post", "apps", "POST"))
        await eventually(lambda: feed.policies() == {"apps/no-post"}, within=1.0)


async def test_an_agent_sees_the_waypoint_address_and_no_l7_types(mesh: FileMesh) -> None:
    state = ProxyState()
    agent = mesh.cp.client(state, node="node-2")
    # an agent node subscribing to the L7 types as well is sent none of them
    curious = WaypointFeed()
    nosy = XdsClient(
        mesh.cp.channel(mesh.cp.token_file("node-2")),
        agent_node("10.0.0.2", "ztunnel-x", "istio-system", "node-2"),
        curious,
        decoders={**WORKLOAD_DECODERS, **L7_DECODERS},
    )
    async with running(agent, nosy):
        await eventually(lambda: state.service_by_key(ECHO) is not None, within=5)
        assert state.service_by_key(ECHO).waypoint == WAYPOINT_GA  # type: ignore[union-attr]
        await eventually(lambda: HTTP_SERVICE_TYPE in curious.synced_types, within=5)
        assert (curious.services(), curious.policies()) == (set(), set())
        assert agent.status.responses.keys() == set(WORKLOAD_TYPES)


async def test_a_waypoint_stream_from_another_node_is_refused(mesh: FileMesh) -> None:
    feed = WaypointFeed()
    client = waypoint_client(mesh.cp, feed, node="node-3")
    async with running(client):
        await eventually(lambda: "PERMISSION_DENIED" in client.status.last_error, within=5)
        assert (
            "waypoint pod apps/waypoint-0 runs on node 'node-1', not on the credential's "
            "node 'node-3'" in client.status.last_error
        )
        assert feed.services() == set()


async def test_a_pod_that_is_not_the_waypoints_is_refused(mesh: FileMesh) -> None:
    feed = WaypointFeed()
    # echo-0 runs on node-2 but is not a pod of the waypoint it claims
    client = waypoint_client(mesh.cp, feed, node="node-2", pod="echo-0")
    async with running(client):
        await eventually(lambda: "PERMISSION_DENIED" in client.status.last_error, within=5)
        assert "pod apps/echo-0 is not a pod of waypoint apps/waypoint" in client.status.last_error


async def test_an_unknown_pod_is_served_once_it_appears(mesh: FileMesh) -> None:
    feed = WaypointFeed()
    client = waypoint_client(mesh.cp, feed, node="node-1", pod="waypoint-1")
    async with running(client):
        await eventually(lambda: HTTP_SERVICE_TYPE in feed.synced_types, within=5)
        assert feed.services() == set()
        second = waypoint("apps", "node-1", "10.1.9.3", "10.96.9.1").replace(
            "waypoint-0", "waypoint-1"
        )
        pod_doc = second.split("---")[-1]
        write(mesh.directory / "second-pod.yaml", pod_doc)
        await eventually(lambda: feed.services() == {ECHO}, within=1.0)
        # and when the pod moves to another node, the stream is cut
        write(
            mesh.directory / "second-pod.yaml",
            pod_doc.replace("nodeName: node-1", "nodeName: node-9"),
        )
        await eventually(lambda: "PERMISSION_DENIED" in client.status.last_error, within=1.0)


async def test_nacked_l7_resources_are_reported_and_replaced(tmp_path: Path) -> None:
    """A resource the waypoint cannot apply is NACKed with its reason; the server records it,
    and the next good version is accepted."""
    good = HttpService(ECHO, routes=(Route("r", backends=(Backend(ECHO, 80),)),))
    bad = HttpService(ECHO, routes=(Route("r", backends=(Backend("no-namespace", 80),)),))
    scope = WaypointScope(
        "apps/waypoint", WAYPOINT_GA, {"apps/waypoint-0": "node-1"}, frozenset({ECHO})
    )
    source = MemorySnapshotSource()
    pod = workload(0, uid="Kubernetes//Pod/apps/waypoint-0", name="waypoint-0", namespace="apps")
    source.replace(
        workloads={pod.uid: pod}, http_services={ECHO: bad}, waypoints={scope.name: scope}
    )
    cp = ControlPlane(tmp_path, source).start()
    try:
        feed = WaypointFeed()
        client = waypoint_client(cp, feed, node="node-1")
        async with running(client):
            await eventually(lambda: bool(cp.debug()["rejected"]), within=5)
            (rejected,) = cp.debug()["rejected"]
            assert (rejected["type"], rejected["resource"]) == (HTTP_SERVICE_TYPE, ECHO)
            assert (
                rejected["reason"]
                == "route 0 (r): backend service 'no-namespace' is not <namespace>/<hostname>"
            )
            assert feed.l7.service(ECHO) is None
            source.replace(http_services={ECHO: good})
            await eventually(lambda: feed.l7.service(ECHO) == good)
            await eventually(lambda: cp.debug()["rejected"] == [])
            _, text = http_get(f"http://127.0.0.1:{cp.monitoring.port}/metrics")  # type: ignore[union-attr]
            assert 'pilot_total_xds_rejects{type="HttpService"} 1.0' in text
    finally:
        cp.stop()
        cp.close_channels()
