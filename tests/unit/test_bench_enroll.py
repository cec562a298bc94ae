"""`bench enroll`'s sans-IO parts: its arguments, the statistics over the pods' timings, the
target verdicts, the table, the capture-counter check and the lean pods' addresses."""

from __future__ import annotations

import argparse
import ipaddress

import pytest

from ztunnel_py.bench.args import add_bench_arguments
from ztunnel_py.bench.enroll import (
    FULL_PODS,
    MAX_PODS,
    MAX_RUN_PODS,
    QUICK_PODS,
    PodTiming,
    Round,
    captured_outbound,
    lean_pod,
    main,
    parse_pods,
    pod_counts,
    render,
    summarize,
    verdicts,
)
from ztunnel_py.testbed.topology import plan


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["enroll", *argv])


def test_pod_counts_default_quick_and_explicit() -> None:
    assert pod_counts(parse()) == FULL_PODS == (8, 64, 256)
    assert pod_counts(parse("--quick")) == QUICK_PODS
    assert pod_counts(parse("--pods", "64,8,8", "--quick")) == (8, 64)
    args = parse("--repeat", "3", "--json")
    assert (args.repeat, args.json, args.prefix) == (3, True, "zt-benchenr-")


@pytest.mark.parametrize(
    ("text", "message"),
    [("8,x", "comma-separated"), ("", "comma-separated"), ("0,8", "between 1"), ("9999", "and")],
)
def test_bad_pod_counts_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pods(text)


def test_bad_arguments_exit_2_before_any_testbed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(parse("--pods", "8,y")) == 2
    assert main(parse("--repeat", "0")) == 2
    many = ",".join(str(n) for n in range(MAX_PODS - 20, MAX_PODS + 1))
    assert main(parse("--pods", many, "--repeat", "10")) == 2
    err = capsys.readouterr().err
    assert "--pods takes comma-separated counts" in err and "--repeat must be" in err
    assert f"at most {MAX_RUN_PODS} pods per run" in err


def _round(pods: int, served: list[float], rss_growth_kb: float, captured: int) -> Round:
    # a quarter of the growth during the ADD, the rest with the first connection
    add, conn = int(rss_growth_kb * 256), int(rss_growth_kb * 768)
    timings = [
        PodTiming(f"enroll-{i}", s / 2, s / 2 + 1, s, 1, add, conn) for i, s in enumerate(served)
    ]
    return Round(
        pods,
        timings,
        rss_before=10 << 20,
        rss_after=(10 << 20) + int(rss_growth_kb * 1024 * pods),
        pss_before=8 << 20,
        pss_after=(8 << 20) + int(rss_growth_kb * 512 * pods),
        captured=captured,
    )


def test_summary_pools_rounds_and_splits_the_time() -> None:
    rounds = [
        _round(4, [10.0, 20.0, 30.0, 40.0], 80.0, 4),
        _round(4, [50.0, 60.0, 70.0, 80.0], 40.0, 3),
    ]
    s = summarize(rounds)
    assert (s.pods, s.rounds, s.enrolled, s.captured) == (4, 2, 8, 7)
    assert (s.p50_ms, s.p90_ms, s.max_ms) == (40.0, 80.0, 80.0)
    assert s.mean_ms == pytest.approx(45.0)
    # ADD took half of each pod's time, the connect 1 ms, the answer the rest
    assert s.add_ms == pytest.approx(22.5)
    assert s.connect_ms == pytest.approx(1.0)
    assert s.serve_ms == pytest.approx(45.0 - 22.5 - 1.0)
    assert s.rss_kb_per_pod == pytest.approx(60.0, abs=0.01)
    assert s.pss_kb_per_pod == pytest.approx(30.0, abs=0.01)
    assert s.add_rss_kb_per_pod == pytest.approx(60.0 / 4, abs=0.01)
    assert s.connection_rss_kb_per_pod == pytest.approx(60.0 * 3 / 4, abs=0.01)


def test_verdicts_judge_each_target() -> None:
    small = summarize([_round(8, [20.0] * 8, 90.0, 8)])
    large_flat = summarize([_round(256, [29.0] * 256, 95.0, 256)])
    met = verdicts([small, large_flat])
    assert [v.met for v in met] == [True, True, True, True]
    large_slow = summarize([_round(256, [60.0] * 256, 150.0, 256)])
    missed = verdicts([small, large_slow])
    assert [v.met for v in missed] == [False, False, False, True]
    assert "worst mean 60.0 ms at 256 pods" in missed[0].figure
    assert missed[1].figure == "3.00x"
    assert missed[2].figure.startswith("worst 150 KB, of which 38 KB grew during the ADD")
    assert missed[3].figure == "worst 38 KB"
    worse_enrollment = summarize([_round(256, [29.0] * 256, 600.0, 256)])
    assert not verdicts([small, worse_enrollment])[3].met


def test_table_shows_every_count_and_the_targets() -> None:
    table = render(
        [
            summarize([_round(8, [20.0] * 8, 90.0, 8)]),
            summarize([_round(64, [70.0] * 64, 90.0, 63)]),
        ]
    )
    lines = table.splitlines()
    row8 = next(line for line in lines if line.split()[0] == "8")
    row64 = next(line for line in lines if line.split()[0] == "64")
    assert "20.0" in row8 and row8.endswith("8/8")
    assert "70.0" in row64 and row64.endswith("63/64")
    assert "targets (printed, not asserted):" in table
    assert "<= 50 ms per pod (mean, every count): worst mean 70.0 ms at 64 pods: NOT met" in table
    assert "flat: mean at 64 pods within 1.5x of 8 pods: 3.50x: NOT met" in table
    assert "agent memory <= 100 KB per enrolled pod (RSS): worst 90 KB, of which 22 KB" in table
    assert (
        "the same for the enrollment alone (RSS growth across the ADD calls): worst 22 KB: met"
        in table
    )


METRICS = """\
# HELP ztunnel_py_capture_connections_total Connections the capture programs handed over
# TYPE ztunnel_py_capture_connections_total counter
ztunnel_py_capture_connections_total{namespace="apps",pod="enroll-0",direction="inbound"} 0.0
ztunnel_py_capture_connections_total{namespace="apps",pod="enroll-0",direction="outbound"} 2.0
ztunnel_py_capture_connections_total{namespace="apps",pod="enroll-1",direction="inbound"} 3.0
ztunnel_py_capture_connections_total{namespace="apps",pod="enroll-1",direction="outbound"} 0.0
ztunnel_py_capture_connections_total{namespace="db",pod="enroll-2",direction="outbound"} 1.0
"""


def test_capture_counters_prove_each_pods_outbound_connection() -> None:
    node = plan("zt-u-", nodes=1).nodes[0]
    pods = [lean_pod("zt-u-", node, k) for k in range(3)]
    # enroll-1 only had inbound; enroll-2 counted under another namespace is someone else
    assert captured_outbound(METRICS, pods) == 1
    assert captured_outbound("", pods) == 0


def test_lean_pods_get_distinct_addresses_outside_every_node_cidr() -> None:
    topology = plan("zt-u-", nodes=1)
    node = topology.nodes[0]
    pods = [lean_pod("zt-u-", node, k) for k in range(0, MAX_RUN_PODS, 97)]
    ips = [ipaddress.ip_address(p.ip) for p in pods]
    assert len(set(ips)) == len(ips)
    for ip in ips:
        assert ip in ipaddress.ip_network("10.245.0.0/16")
        assert ip not in ipaddress.ip_network(node.pod_cidr)
        assert ip.packed[-1] not in (0, 1, 255)  # not the network, the gateway or broadcast
    last = lean_pod("zt-u-", node, MAX_RUN_PODS - 1)
    assert last.ip == "10.245.255.251" and len(last.host_iface) <= 15
    assert {p.uid for p in pods} == {f"Kubernetes//Pod/apps/{p.name}" for p in pods}
    assert topology.pods[0].namespace == "apps"
