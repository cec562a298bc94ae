"""The Kubernetes source with the official client against an API server stand-in on
127.0.0.1 that replays recorded list responses and watch streams (chunked HTTP, as the real
API server sends them), including a 410 Gone that forces a relist and kinds whose CRDs are
not installed (404)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.kube_support import FakeApiServer, api_client, running_api_server
from ztunnel_py.controlplane.sources.kube import KubeSource
from ztunnel_py.controlplane.store import ConfigStore


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    with running_api_server() as server:
        yield server


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_list_watch_relist_through_the_official_client(api_server: FakeApiServer) -> None:
    store = ConfigStore(report=False)
    source = KubeSource(store, api_client(api_server), batch_window=0.05, initial_sync_timeout=5)
    source.start()
    try:
        assert source.synced.wait(5)

        def pod_ips() -> dict[str, str]:
            return {w.name: str(w.addresses[0]) for w in store.current().workloads.values()}

        # After the recorded watch (add, ready, delete), the 410 Gone and the relist:
        wait_until(
            lambda: (
                pod_ips()
                == {
                    "web-6d8f7b9c5d-4xk2p": "10.244.1.6",
                    "web-6d8f7b9c5d-k8s2w": "10.244.1.9",
                    "web-6d8f7b9c5d-m3n4b": "10.244.2.11",
                }
            )
        )
        wait_until(lambda: "demo/web-allow" in store.current().policies)
        wait_until(lambda: store.diagnostics() == ())
        policy = store.current().policies["demo/web-allow"]
        assert len(policy.rules[0][1]) == 1 and len(policy.rules[0][1][0].principals) == 2
        web = store.current().services["demo/web.demo.svc.cluster.local"]
        assert str(web.vips[0].address) == "10.96.12.34"
        assert api_server.requests.count("LIST /api/v1/pods") == 2
        assert "LIST /apis/networking.istio.io/v1/serviceentries" in api_server.requests
    finally:
        start = time.monotonic()
        source.stop()
        stopped = time.monotonic() - start
        api_server.closing.set()
    assert stopped < 2, f"the watches took {stopped:.1f}s to stop"
