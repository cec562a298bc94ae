"""The xDS client's pure parts: the node it presents and how it names stream terminations."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ztunnel_py.telemetry.metrics import XdsMetrics
from ztunnel_py.xds.client import StreamEnd, agent_node, termination_reason


def test_node_id_and_metadata_follow_ztunnel() -> None:
    node = agent_node("10.0.0.5", "ztunnel-abc", "istio-system", "worker-1", {"EXTRA": "x"})
    assert node.id == "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
    assert node.metadata == {
        "EXTRA": "x",
        "NAME": "ztunnel-abc",
        "NAMESPACE": "istio-system",
        "INSTANCE_IPS": "10.0.0.5",
        "NODE_NAME": "worker-1",
    }


@pytest.mark.parametrize(
    ("end", "worked", "reason"),
    [
        (StreamEnd(None, ""), True, "Complete"),
        (StreamEnd(grpc.StatusCode.CANCELLED, "x"), True, "Reconnect"),
        (StreamEnd(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), False, "Reconnect"),
        (StreamEnd(grpc.StatusCode.UNAVAILABLE, "transport is closing"), True, "Reconnect"),
        (StreamEnd(grpc.StatusCode.UNAVAILABLE, "received prior goaway: x"), True, "Reconnect"),
        (StreamEnd(grpc.StatusCode.UNAVAILABLE, "failed to connect"), False, "ConnectionError"),
        (StreamEnd(grpc.StatusCode.UNAVAILABLE, "Socket closed"), True, "Error"),
        (StreamEnd(grpc.StatusCode.UNAUTHENTICATED, "no token"), False, "Error"),
        (StreamEnd(grpc.StatusCode.INTERNAL, "bad", decode_error=True), True, "Error"),
    ],
)
def test_termination_reasons(end: StreamEnd, worked: bool, reason: str) -> None:
    assert termination_reason(end, worked) == reason


def test_xds_metric_families() -> None:
    registry = CollectorRegistry()
    metrics = XdsMetrics(registry)
    metrics.terminated("Reconnect")
    metrics.received("type.googleapis.com/istio.workload.Address", 100)
    metrics.received("type.googleapis.com/istio.workload.Address", 20)
    text = generate_latest(registry).decode()
    assert 'istio_xds_connection_terminations_total{reason="Reconnect"} 1.0' in text
    url = 'url="type.googleapis.com/istio.workload.Address"'
    assert f"istio_xds_message_total{{{url}}} 2.0" in text
    assert f"istio_xds_message_bytes_total{{{url}}} 120.0" in text
    with pytest.raises(ValueError, match="not in"):
        metrics.terminated("Oops")
