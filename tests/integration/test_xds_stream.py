"""Workload xDS end to end: the real server and the real client over gRPC/TLS on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from tests.integration.xds_support import (
    ControlPlane,
    by_key,
    eventually,
    http_get,
    policy,
    service,
    workload,
)
from ztunnel_py.admin.readiness import Readiness
from ztunnel_py.controlplane.memsource import MemorySnapshotSource
from ztunnel_py.protocol.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, Request
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.metrics import XdsMetrics
from ztunnel_py.transport.grpc_channel import ControlPlaneChannel
from ztunnel_py.xds.client import DELTA_ADS, XdsClient, agent_node
from ztunnel_py.xds.convert import encode_request


@pytest.fixture
def source() -> MemorySnapshotSource:
    s = MemorySnapshotSource()
    s.replace(**by_key([workload(1), workload(2)], [service()], [policy()]))
    return s


@pytest.fixture
def cp(tmp_path: Path, source: MemorySnapshotSource) -> Iterator[ControlPlane]:
    running = ControlPlane(tmp_path, source).start()
    try:
        yield running
    finally:
        running.stop()
        running.close_channels()


@asynccontextmanager
async def running(client: XdsClient) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield
        nursery.cancel_scope.cancel()


def synced(state: ProxyState, workloads: int, services: int = 1, policies: int = 1) -> bool:
    return (len(state.workloads()), len(state.services()), len(state.policies())) == (
        workloads,
        services,
        policies,
    )


def metric_lines(registry: CollectorRegistry, name: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_initial_sync_and_readiness_after_both_acks(cp: ControlPlane) -> None:
    state, readiness, registry = ProxyState(), Readiness(), CollectorRegistry()
    client = cp.client(state, readiness=readiness, metrics=XdsMetrics(registry))
    assert readiness.pending == ["xds Address", "xds Authorization"]
    async with running(client):
        await eventually(lambda: readiness.ready, within=5)
        assert synced(state, workloads=2)
        assert state.workload_by_uid(workload(1).uid) == workload(1)
        assert state.service_by_key(service().key) == service()
        assert state.policy(policy().key) == policy()
        assert f'istio_xds_message_total{{url="{ADDRESS_TYPE}"}} 1.0' in metric_lines(
            registry, "istio_xds_message_total"
        )

        # The client is ready once it applied both responses; the server sees the ACKs a
        # moment later.
        def acked() -> bool:
            debug = cp.debug()
            return all(
                peer["types"][type_url]["ackedVersion"] == debug["version"]
                for peer in debug["clients"]
                for type_url in (ADDRESS_TYPE, AUTHORIZATION_TYPE)
            )

        await eventually(acked, within=5)
        (peer,) = cp.debug()["clients"]
        assert peer["node"] == "node-1"
        assert peer["nodeId"].startswith("ztunnel~10.0.0.10~ztunnel-node-1.istio-system~")
        for type_url in (ADDRESS_TYPE, AUTHORIZATION_TYPE):
            assert peer["types"][type_url]["wildcard"] is True


async def test_add_change_delete_reach_the_agent_within_a_second(
    cp: ControlPlane, source: MemorySnapshotSource
) -> None:
    state = ProxyState()
    client = cp.client(state)
    async with running(client):
        await eventually(lambda: synced(state, workloads=2), within=5)
        received = client.status.resources_received[ADDRESS_TYPE]

        source.replace(**by_key([workload(1), workload(2), workload(3)], [service()], [policy()]))
        await eventually(lambda: state.workload_by_uid(workload(3).uid) is not None)
        # only the new resource travelled
        assert client.status.resources_received[ADDRESS_TYPE] == received + 1

        moved = workload(2, node="node-2")
        changed = service(ports={80: 9090})
        source.replace(**by_key([workload(1), moved, workload(3)], [changed], [policy()]))
        await eventually(
            lambda: (
                state.workload_by_uid(moved.uid) == moved
                and state.service_by_key(changed.key) == changed
            )
        )
        assert state.endpoints(changed, 80)

        source.replace(**by_key([workload(1)], [], [policy("allow-all", 1)]))
        await eventually(
            lambda: (
                synced(state, workloads=1, services=0)
                and state.policy(policy().key) is None
                and state.policy(policy("allow-all").key) is not None
            )
        )
        assert state.workload_by_ip(workload(2).addresses[0]) is None
    # istiod's push metrics: why each change was pushed, how long each response took, and how
    # long each change took to reach the proxy (three changes, each pushed to the one proxy)
    assert metric_lines(cp.registry, "pilot_push_triggers") == [
        'pilot_push_triggers{type="config"} 1.0',
        'pilot_push_triggers{type="endpoint"} 3.0',
        'pilot_push_triggers{type="service"} 2.0',
    ]
    assert metric_lines(cp.registry, "pilot_proxy_convergence_time_count") == [
        "pilot_proxy_convergence_time_count 3.0"
    ]
    # the initial response and three pushes of Address; under a second each
    assert 'pilot_xds_push_time_count{type="wds"} 4.0' in metric_lines(
        cp.registry, "pilot_xds_push_time_count"
    )
    assert 'pilot_xds_push_time_bucket{le="1.0",type="wds"} 4.0' in metric_lines(
        cp.registry, "pilot_xds_push_time_bucket"
    )


async def test_invalid_resource_is_nacked_and_the_valid_part_applied(
    cp: ControlPlane, source: MemorySnapshotSource
) -> None:
    state, registry = ProxyState(), CollectorRegistry()
    client = cp.client(state, metrics=XdsMetrics(registry))
    async with running(client):
        await eventually(lambda: synced(state, workloads=2), within=5)
        broken = workload(3, namespace="")  # no namespace: no identity, the agent refuses it
        unencodable = workload(4, workload_type="statefulset")
        source.replace(
            **by_key(
                [workload(1), workload(2, node="node-9"), broken, unencodable, workload(5)],
                [service()],
                [policy()],
            )
        )
        await eventually(lambda: bool(cp.debug()["rejected"]))
        # the valid part of the same response was applied
        assert state.workload_by_uid(workload(5).uid) is not None
        assert state.workload_by_uid(workload(2).uid).node == "node-9"  # type: ignore[union-attr]
        assert state.workload_by_uid(broken.uid) is None
        (rejected,) = cp.debug()["rejected"]
        assert rejected["resource"] == broken.uid
        assert rejected["reason"] == "workload has no namespace"
        assert rejected["node"] == "node-1" and rejected["type"] == ADDRESS_TYPE
        # what the server could not encode is not served, and says why
        assert "statefulset" in cp.debug()["invalid"][unencodable.uid]
        assert client.status.nacks == 1
        # istiod's name (no _total) and type name (wds: the Address type)
        assert metric_lines(cp.registry, "pilot_total_xds_rejects") == [
            'pilot_total_xds_rejects{type="wds"} 1.0'
        ]
        # istiod's /debug/syncz: the proxy's last nonce of the type it rejected is not ACKed
        (status,) = cp.view("/debug/syncz")
        address = status["resources"][ADDRESS_TYPE]
        assert address["lastError"] and address["acked"] != address["sent"]

        source.replace(**by_key([workload(1), workload(3), workload(5)], [service()], [policy()]))
        await eventually(lambda: state.workload_by_uid(workload(3).uid) is not None)
        await eventually(lambda: cp.debug()["rejected"] == [])


async def test_istiod_debug_views_of_a_connected_proxy(cp: ControlPlane) -> None:
    """istiod's /debug/syncz and /debug/config_dump?proxyID=, for the tools (istioctl
    proxy-status, x internal-debug) that read them."""
    state = ProxyState()
    async with running(cp.client(state)):
        await eventually(lambda: synced(state, workloads=2), within=5)

        def all_acked() -> bool:
            types = [t for s in cp.view("/debug/syncz") for t in s["resources"].values()]
            return bool(types) and all(t.get("acked") == t["sent"] for t in types)

        await eventually(all_acked)
        (status,) = cp.view("/debug/syncz")
        assert {k: status[k] for k in ("proxy", "proxy_type")} == {
            "proxy": "ztunnel-node-1.istio-system",
            "proxy_type": "ztunnel",
        }
        assert set(status["resources"]) == {ADDRESS_TYPE, AUTHORIZATION_TYPE}
        assert cp.view("/debug/syncz?namespace=other") == []
        dump = cp.view("/debug/config_dump?proxyID=ztunnel-node-1.istio-system")
        names = sorted(
            c["resource"]["workload"]["name"]
            for c in dump["configs"]
            if "workload" in c["resource"]
        )
        assert names == ["pod-1", "pod-2"]
        assert {c["resource"]["@type"] for c in dump["configs"]} == {
            "type.googleapis.com/istio.workload.Address"
        }
        policies = cp.view("/debug/config_dump?proxyID=ztunnel-node-1&types=wads")["configs"]
        assert [c["resource"]["name"] for c in policies] == [policy().name]
        assert metric_lines(cp.registry, "pilot_xds_pushes") == [
            'pilot_xds_pushes{type="wads"} 1.0',
            'pilot_xds_pushes{type="wds"} 1.0',
        ]
    assert cp.monitoring is not None
    base = f"http://127.0.0.1:{cp.monitoring.port}/debug/config_dump"
    assert http_get(base) == (400, "You must provide a proxyID in the query string\n")
    status_code, text = http_get(base + "?proxyID=nobody.nowhere")
    assert status_code == 404 and text.startswith("Proxy not connected to this Pilot instance")


async def test_readiness_is_held_until_the_first_ack_of_each_type(
    tmp_path: Path, source: MemorySnapshotSource
) -> None:
    bad_policy = dataclasses.replace(policy(), name="")
    source.replace(**by_key([workload(1)], [service()], [bad_policy]))
    cp = ControlPlane(tmp_path, source)
    cp.start()
    port = cp.port
    cp.stop()  # the control plane is down when the agent starts
    state, readiness, registry = ProxyState(), Readiness(), CollectorRegistry()
    client = cp.client(state, readiness=readiness, metrics=XdsMetrics(registry))
    try:
        async with running(client):
            await eventually(lambda: client.status.last_error != "", within=5)
            assert readiness.pending == ["xds Address", "xds Authorization"]
            assert 'reason="ConnectionError"' in "".join(
                metric_lines(registry, "istio_xds_connection_terminations_total")
            )
            cp.port = port
            cp.start()
            # Address is ACKed; the only policy is NACKed: not ready
            await eventually(lambda: client.status.nacks == 1, within=5)
            assert readiness.pending == ["xds Authorization"]
            assert len(state.workloads()) == 1
            source.replace(**by_key([workload(1)], [service()], [policy()]))
            await eventually(lambda: readiness.ready)
            assert state.policy(policy().key) == policy()
    finally:
        cp.stop()
        cp.close_channels()


async def test_reconnect_resends_only_what_changed_and_state_survives_the_outage(
    cp: ControlPlane, source: MemorySnapshotSource
) -> None:
    state, registry = ProxyState(), CollectorRegistry()
    client = cp.client(state, metrics=XdsMetrics(registry))
    async with running(client):
        await eventually(lambda: synced(state, workloads=2), within=5)
        before = dict(client.status.resources_received)
        port = cp.port
        cp.stop()
        await eventually(lambda: not client.status.connected, within=5)
        # the control plane is gone: the agent keeps serving its last state
        await trio.sleep(0.3)
        assert synced(state, workloads=2)
        assert client.known(ADDRESS_TYPE).keys() == {
            workload(1).uid,
            workload(2).uid,
            "demo/" + service().hostname,
        }

        changed = workload(1, node="node-7")
        source.replace(**by_key([changed, workload(3)], [service()], [policy()]))
        cp.port = port
        cp.start()
        await eventually(
            lambda: (
                state.workload_by_uid(changed.uid) == changed
                and state.workload_by_uid(workload(2).uid) is None
                and state.workload_by_uid(workload(3).uid) is not None
            ),
            within=5,
        )
        # the server was told what the agent had: only the changed and new workloads came
        assert client.status.resources_received[ADDRESS_TYPE] == before[ADDRESS_TYPE] + 2
        assert client.status.resources_received[AUTHORIZATION_TYPE] == before[AUTHORIZATION_TYPE]
        assert client.status.streams == 2
        (peer,) = cp.debug()["clients"]
        assert peer["types"][ADDRESS_TYPE]["resources"] == 3


async def test_a_burst_of_changes_is_coalesced_into_few_pushes(
    cp: ControlPlane, source: MemorySnapshotSource
) -> None:
    state = ProxyState()
    client = cp.client(state)
    async with running(client):
        await eventually(lambda: synced(state, workloads=2), within=5)
        responses = client.status.responses[ADDRESS_TYPE]
        pushes = cp.debug()["pushes"]
        workloads = [workload(1), workload(2)]
        for i in range(100):
            workloads.append(workload(100 + i))
            source.replace(**by_key(workloads, [service()], [policy()]))
            await trio.sleep(0.001)
        await eventually(lambda: synced(state, workloads=102), within=2)
        await trio.sleep(0.3)  # anything still in flight
        assert client.status.responses[ADDRESS_TYPE] - responses <= 5
        assert cp.debug()["pushes"] - pushes <= 5
        assert client.status.responses[AUTHORIZATION_TYPE] == 1  # unchanged type: no push


def call(channel: ControlPlaneChannel, metadata: tuple[tuple[str, str], ...], raw: bytes) -> bytes:
    """One request on a raw Delta ADS stream; returns the first response (or raises)."""
    stream = channel.get().stream_stream(DELTA_ADS, None, None)
    responses: Any = stream(iter([raw]), metadata=metadata, timeout=5)
    response: bytes = next(responses)
    responses.cancel()
    return response


async def test_unauthenticated_streams_are_refused(cp: ControlPlane, tmp_path: Path) -> None:
    channel = cp.channel(None)
    hello = encode_request(Request(ADDRESS_TYPE))
    for metadata in ((), (("authorization", "Bearer ztpy-node-forged"),)):
        with pytest.raises(grpc.RpcError) as info:
            await trio.to_thread.run_sync(call, channel, metadata, hello)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED

    bad = tmp_path / "bad-token"
    bad.write_text("ztpy-node-forged\n")
    state, registry = ProxyState(), CollectorRegistry()
    client = cp.client(state, metrics=XdsMetrics(registry), token_file=bad)
    async with running(client):
        await eventually(lambda: "UNAUTHENTICATED" in client.status.last_error, within=5)
        assert "unknown node token" in client.status.last_error
        assert state.workloads() == []
        assert 'reason="Error"' in "".join(
            metric_lines(registry, "istio_xds_connection_terminations_total")
        )


async def test_a_node_may_not_claim_another_nodes_name(cp: ControlPlane) -> None:
    state = ProxyState()
    client = XdsClient(
        cp.channel(cp.token_file("node-1")),
        agent_node("10.0.0.11", "ztunnel-x", "istio-system", "node-2"),
        StateFeed(state),
    )
    async with running(client):
        await eventually(lambda: "PERMISSION_DENIED" in client.status.last_error, within=5)
        assert state.workloads() == []


async def test_bad_requests_end_the_stream_cleanly(cp: ControlPlane) -> None:
    channel = cp.channel(cp.token_file("node-1"))
    metadata = channel.metadata()
    cases = {
        b"\x12\x05ab": "not a DeltaDiscoveryRequest",
        encode_request(Request("type.googleapis.com/envoy.config.cluster.v3.Cluster")): (
            "is not served here"
        ),
    }
    for raw, message in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            await trio.to_thread.run_sync(call, channel, metadata, raw)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
    # the server still serves everyone else
    response = await trio.to_thread.run_sync(
        call, channel, metadata, encode_request(Request(ADDRESS_TYPE))
    )
    assert response


async def test_monitoring_endpoints(cp: ControlPlane) -> None:
    assert cp.monitoring is not None
    base = f"http://127.0.0.1:{cp.monitoring.port}"
    assert await trio.to_thread.run_sync(http_get, base + "/ready") == (200, "ready\n")
    status, text = await trio.to_thread.run_sync(http_get, base + "/metrics")
    assert status == 200 and "pilot_xds 0.0" in text
    status, text = await trio.to_thread.run_sync(http_get, base + "/nope")
    assert status == 404 and "/debug/xds" in text
