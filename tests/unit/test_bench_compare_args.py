"""`bench compare` settings from the command line: defaults, --quick, and bad values."""

from __future__ import annotations

import argparse

import pytest

from ztunnel_py.bench.args import add_bench_arguments
from ztunnel_py.bench.compare import FULL, QUICK, main, plan_from_args
from ztunnel_py.testbed.errors import TestbedError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["compare", *argv])


def test_full_and_quick_plans_follow_istios_method() -> None:
    for plan in (plan_from_args(parse()), plan_from_args(parse("--quick"))):
        assert (plan.rate, plan.connections, plan.response_bytes) == (1000, 16, 1024)
    assert plan_from_args(parse()) == FULL
    assert FULL.pods_per_node == (2, 8, 32) and FULL.latency_seconds >= 30
    assert plan_from_args(parse("--quick")) == QUICK


def test_pods_per_node_and_latency_seconds_override_the_plan() -> None:
    plan = plan_from_args(parse("--quick", "--pods-per-node", "8,2,8", "--latency-seconds", "7"))
    assert plan.pods_per_node == (2, 8)
    assert plan.latency_seconds == 7.0
    assert plan.throughput_seconds == QUICK.throughput_seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [("2,x", "comma-separated counts"), ("1,8", "at least 2"), ("", "comma-separated counts")],
)
def test_bad_pods_per_node_is_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(TestbedError, match=message):
        plan_from_args(parse("--pods-per-node", value))


def test_an_output_directory_that_cannot_be_made_fails_before_any_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(parse("--quick", "--out", "/proc/no-such-dir/report")) == 1
    err = capsys.readouterr().err
    assert "--out /proc/no-such-dir/report: cannot create the directory" in err
    assert "bringing up" not in err
