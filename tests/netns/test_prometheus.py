"""The testbed's Prometheus: started in a network namespace of its own in ambient mode, scraping
every agent, the control plane and each waypoint pod as it comes and goes, answering PromQL over
the traffic that crossed the mesh; gone with `testbed down`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.netns.conftest import unique_prefix
from tests.netns.test_waypoint import (
    ECHO_VIP,
    GATEWAY,
    answered_by_waypoint,
    apps_namespace,
    curl,
    wait_until,
    waypoint,
)
from ztunnel_py.telemetry.promql import PrometheusError
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

STORE_WAYPOINT = GATEWAY.replace("namespace: apps", "namespace: db").replace(
    "name: waypoint,", "name: store-waypoint,"
)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("pm"), nodes=2, pods_per_node=2)
    try:
        tb.apply(GATEWAY + "---\n" + apps_namespace(waypoint=True))
        wait_until(lambda: answered_by_waypoint(tb), "traffic to take the waypoint")
        yield tb
    finally:
        prom = tb.status().prometheus
        tb.down()
        assert prom is not None and not namespaces.exists(prom.netns)


def up_targets(bed: Testbed) -> dict[tuple[str, str], float]:
    return {(s.labels["job"], s.labels["instance"]): s.value for s in bed.prometheus_query("up")}


def test_prometheus_runs_in_its_own_namespace_and_shows_in_status(bed: Testbed) -> None:
    status = bed.status()
    prom = status.prometheus
    assert prom is not None and prom.alive and prom.url == "http://10.250.0.3:9090"
    assert namespaces.exists(prom.netns)
    assert prom.netns not in (status.controlplane.netns, status.fabric.netns)
    # it listens inside its namespace (reached with `testbed exec prometheus`), not on the host
    ready = bed.exec("prometheus", ["curl", "-sS", "--max-time", "5", f"{prom.url}/-/ready"])
    assert ready.returncode == 0 and "Ready" in ready.stdout, ready.stderr
    assert (
        f":{prom.url.rsplit(':', 1)[1]} "
        not in subprocess.run(["ss", "-Htln"], capture_output=True, text=True, check=True).stdout
    )
    text = subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", "status", "--prefix", bed.prefix],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"prometheus     {prom.netns}  {prom.url}  pid {prom.pid} running" in text


def test_every_proxy_and_the_control_plane_are_scraped(bed: Testbed) -> None:
    status = bed.status()
    wp = waypoint(bed)
    expected = {
        ("ztunnel", f"{status.node('node1').ip}:15020"),
        ("ztunnel", f"{status.node('node2').ip}:15020"),
        ("controlplane", "10.250.0.2:15014"),
        ("waypoint", f"{wp.ip}:15020"),
    }
    wait_until(lambda: set(up_targets(bed)) == expected, "every target to be scraped", 20)
    wait_until(lambda: set(up_targets(bed).values()) == {1.0}, "every target to be up", 20)
    # the target labels say what was scraped
    waypoint_up = bed.prometheus_query('up{job="waypoint"}')
    assert [s.labels["pod"] for s in waypoint_up] == [wp.pod]


def test_promql_counts_the_requests_a_waypoint_served(bed: Testbed) -> None:
    query = (
        'sum(istio_requests_total{reporter="waypoint", '
        'destination_service="echo.apps.svc.cluster.local", response_code="200"})'
    )

    def counted() -> float:
        samples = bed.prometheus_query(query)
        return samples[0].value if samples else 0.0

    before = counted()
    for _ in range(20):
        done = curl(bed, "-o", "/dev/null", "-w", "%{http_code}", f"http://{ECHO_VIP}/")
        assert done.stdout == "200", done.stderr
    wait_until(lambda: counted() == before + 20, "Prometheus to count 20 more requests", 20)
    # both versions answered, and PromQL aggregates over them as a user would
    by_version = bed.prometheus_query(
        'sum by (destination_version) (istio_requests_total{reporter="waypoint"})'
    )
    assert {s.labels["destination_version"] for s in by_version} == {"v1", "v2"}


def test_a_waypoint_becomes_a_target_when_it_comes_and_stops_being_one_when_it_goes(
    bed: Testbed,
) -> None:
    bed.apply(STORE_WAYPOINT)
    try:
        store_wp = bed.status().waypoint("store-waypoint", "db")
        wait_until(
            lambda: up_targets(bed).get(("waypoint", f"{store_wp.ip}:15020")) == 1.0,
            "the new waypoint to be scraped",
            20,
        )
    finally:
        bed.delete(STORE_WAYPOINT)
    wait_until(
        lambda: ("waypoint", f"{store_wp.ip}:15020") not in up_targets(bed),
        "the removed waypoint to leave the targets",
        20,
    )


def test_a_query_prometheus_rejects_is_a_clear_error(bed: Testbed) -> None:
    with pytest.raises(PrometheusError, match=r"rejected the query \(bad_data\)"):
        bed.prometheus_query("sum(rate(istio_requests_total[5m])")
