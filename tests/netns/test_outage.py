"""A control-plane outage longer than the certificates live: the agents' certificates expire,
new mesh traffic fails closed (never in clear), and it is back within seconds of the control
plane's return (the certificate backoff does not keep it down for minutes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed.pcap import FabricCapture, analyze
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import FABRIC_BRIDGE

pytestmark = pytest.mark.netns

# Short certificates keep the outage short: what is proved (expiry, then failing closed, then
# recovery) does not depend on the lifetime, only on the outage outlasting it.
TTL = 15  # seconds
OUTAGE = TTL + 15  # longer than TTL: every certificate in use at the start has expired


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("o"), nodes=2, pods_per_node=2, secret_ttl=f"{TTL}s")
    try:
        yield tb
    finally:
        tb.down()


def get(bed: Testbed, marker: str) -> bool:
    url = f"http://{bed.status().pod('echo-2').ip}:8080/?{marker}"
    done = bed.exec("web-1", ["curl", "-sS", "-o", "/dev/null", "--max-time", "2", url])
    return done.returncode == 0


def test_an_outage_longer_than_the_certificates_fails_closed_and_recovers_in_seconds(
    bed: Testbed, tmp_path: Path
) -> None:
    marker = "ZTTEST-outage-2b9e"
    assert get(bed, marker)
    pcap = tmp_path / "fabric.pcap"
    status = bed.status()
    with FabricCapture(status.fabric.netns, FABRIC_BRIDGE, pcap, "tcp", max_packets=50_000):
        assert bed.stop_controlplane() is not None
        stopped = time.monotonic()
        outcomes: list[tuple[float, bool]] = []
        while (elapsed := time.monotonic() - stopped) < OUTAGE:
            outcomes.append((elapsed, get(bed, marker)))
            time.sleep(3)
        bed.start_controlplane()
        restarted = time.monotonic()
        while not get(bed, marker):
            assert time.monotonic() - restarted < 30, "traffic did not come back in 30 s"
            time.sleep(0.5)
        recovered = time.monotonic() - restarted
    # Once the certificates had expired, new connections failed: closed, not in clear.
    assert not any(ok for t, ok in outcomes if t > TTL + 2), outcomes
    report = analyze(pcap, {15008}, [marker.encode()])
    assert report.markers_in_clear == []
    assert 8080 not in report.tcp_payload_bytes
    print(f"traffic back {recovered:.1f} s after the control plane")
    assert recovered < 15
    # And the agents fetched fresh certificates: the mesh keeps working.
    assert get(bed, marker)
