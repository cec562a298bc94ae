"""The canary release rhythm without I/O: step by step through `analysis.advance` with check
results given, the PromQL each metric runs, the checks' verdicts on values, missing data and
Prometheus errors, and the routes written for each split."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import yaml

from tests.unit.test_flagger_canary import CANARY, document
from ztunnel_py.canary import analysis, metrics, report, routes
from ztunnel_py.canary.analysis import CheckResult, Routes, Status
from ztunnel_py.flagger import canary as flagger
from ztunnel_py.telemetry.promql import PrometheusError, Sample

OK = [CheckResult("request-success-rate", 100.0, "%", "min 99")]
BAD = [CheckResult("request-success-rate", 80.0, "%", "min 99", "80 < 99")]


def run(c: flagger.Canary, outcomes: list[list[CheckResult] | None]) -> list[analysis.Decision]:
    """Advance from a fresh status, one decision per outcome (None: a step without checks)."""
    status, decisions = Status(), []
    for i, checks in enumerate(outcomes):
        assert analysis.needs_checks(c, status) == (checks is not None), (i, status)
        decision = analysis.advance(c, status, checks, f"t{i}")
        decisions.append(decision)
        status = decision.status
    return decisions


def test_shadow_traffic_then_steps_then_promotion() -> None:
    c = flagger.read(document())  # mirror, stepWeight 20, maxWeight 50
    decisions = run(c, [None, None, OK, OK, OK, OK, None])
    assert [d.routes for d in decisions] == [
        Routes(100, 0),
        Routes(100, 0, mirror=True),
        Routes(80, 20),
        Routes(60, 40),
        Routes(50, 50),
        Routes(0, 100),
        Routes(0, 100),
    ]
    phases = [d.status.phase for d in decisions]
    assert phases == ["Initialized", *["Progressing"] * 4, "Promoting", "Succeeded"]
    final = decisions[-1].status.to_dict()
    assert final["conditions"][0]["status"] == "True" and final["canaryWeight"] == 100
    # each step records where it measured and what it decided
    step = final["steps"][2]
    assert (step["fromMirror"], step["canaryWeight"], step["checks"][0]["value"]) == (
        True,
        20,
        100.0,
    )
    assert report.weights_text(step) == "100/0 +mirror -> 80/20"
    # a finished canary stays as it is until its spec changes
    idle = analysis.advance(c, decisions[-1].status, None, "later")
    assert idle.routes is None and idle.status == decisions[-1].status


def test_failed_checks_halt_then_roll_back_at_the_threshold() -> None:
    c = flagger.read(document(analysis__mirror=False))  # threshold 2
    decisions = run(c, [None, None, BAD, OK, BAD, None])
    assert [d.routes for d in decisions] == [
        Routes(100, 0),
        Routes(80, 20),
        None,  # halted: the weights stay
        Routes(60, 40),  # a pass advances, failed checks are not forgotten
        None,
        Routes(100, 0),  # 2 failed checks: back to the primary, no mirror
    ]
    last = decisions[-1].status
    assert (last.phase, last.canary_weight, last.failed_checks) == ("Failed", 0, 2)
    assert last.to_dict()["conditions"][0]["status"] == "False"
    assert "Halt advancement of apps/echo (1/2 failed checks): request-success-rate 80 < 99" in (
        decisions[2].event
    )
    assert decisions[-1].event.startswith("Rolling back apps/echo: failed checks threshold")


def test_a_new_spec_starts_over_and_suspend_and_skip_are_honoured() -> None:
    c = flagger.read(document())
    progressed = run(c, [None, None, OK])[-1].status
    changed = flagger.read(document(analysis__stepWeight=10))
    restart = analysis.advance(changed, progressed, None, "t")
    assert restart.routes == Routes(100, 0) and restart.status.phase == "Initialized"
    assert len(restart.status.steps) == 1
    suspended = flagger.read(document(suspend=True))
    assert analysis.advance(suspended, progressed, None, "t").routes is None
    skip = flagger.read(document(skipAnalysis=True))
    skipped = run(skip, [None, None])[-1]
    assert skipped.routes == Routes(0, 100) and skipped.status.phase == "Succeeded"
    with pytest.raises(ValueError, match="needs its metric checks"):
        analysis.advance(c, run(c, [None, None])[-1].status, None, "t")


def test_mirroring_blue_green_runs_its_iterations_then_switches() -> None:
    c = flagger.read(document(analysis__stepWeight=None, analysis__iterations=2))
    decisions = run(c, [None, None, OK, OK, None])
    assert [d.routes for d in decisions] == [
        Routes(100, 0),
        Routes(100, 0, mirror=True),
        None,
        Routes(0, 100),
        Routes(0, 100),
    ]


def test_status_round_trips_and_garbage_starts_over() -> None:
    c = flagger.read(document())
    status = run(c, [None, None, OK])[-1].status
    assert Status.from_dict(status.to_dict()) == status
    assert Status.from_dict({"canaryWeight": "lots"}) == Status()
    assert Status.from_dict("nonsense") == Status()


def test_the_builtin_queries_are_flaggers_with_the_waypoint_reporter() -> None:
    c = flagger.read(document())
    rate, duration, breaker = c.analysis.metrics
    sel = (
        'reporter="waypoint", destination_workload_namespace="apps", '
        'destination_canonical_service="echo", destination_canonical_revision="v2"'
    )
    assert metrics.promql(c, rate) == (
        f'sum(rate(istio_requests_total{{{sel}, response_code!~"5.*"}}[10s])) / '
        f"sum(rate(istio_requests_total{{{sel}}}[10s])) * 100"
    )
    assert metrics.promql(c, duration) == (
        "histogram_quantile(0.99, sum(rate("
        f"istio_request_duration_milliseconds_bucket{{{sel}}}[10s])) by (le))"
    )
    assert metrics.promql(c, breaker) == breaker.query


def test_checks_fail_on_bad_values_missing_data_and_prometheus_errors() -> None:
    c = flagger.read(document())
    rate = c.analysis.metrics[0]

    def answering(*values: float) -> Any:
        return lambda query: [Sample({}, v) for v in values]

    assert metrics.check(c, rate, answering(99.5)).ok
    low = metrics.check(c, rate, answering(97.0))
    assert (low.value, low.failure) == (97.0, "97 < 99")
    for empty in (answering(), answering(math.nan)):
        missing = metrics.check(c, rate, empty)
        assert missing.value is None and missing.failure is not None
        assert "no values found: probably echo.apps version v2 is not receiving traffic" in (
            missing.failure
        )

    def down(query: str) -> list[Sample]:
        raise PrometheusError("Prometheus at http://p:9090 is not reachable: refused")

    results = metrics.measure(c, down)
    assert [r.ok for r in results] == [False, False, False]
    assert results[0].failure == (
        "not measured: Prometheus at http://p:9090 is not reachable: refused"
    )


def test_routes_are_a_virtual_service_and_subsets_the_control_plane_accepts() -> None:
    from tests.unit.cp_support import diagnostics

    c = flagger.read(
        document(
            service={
                "port": 80,
                "hosts": ["echo.example.com"],
                "timeout": "5s",
                "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}},
            }
        )
    )
    docs = routes.documents(c, Routes(75, 25, mirror=True))
    dr, vs = docs
    assert dr["spec"]["subsets"] == [
        {"name": "primary", "labels": {"version": "v1"}},
        {"name": "canary", "labels": {"version": "v2"}},
    ]
    assert dr["spec"]["trafficPolicy"] == {"loadBalancer": {"simple": "LEAST_REQUEST"}}
    route = vs["spec"]["http"][0]
    assert vs["spec"]["hosts"] == ["echo.example.com", "echo"]
    assert route["timeout"] == "5s"
    assert [d["weight"] for d in route["route"]] == [75, 25]
    assert route["mirror"] == {"host": "echo", "subset": "canary"}
    assert route["mirrorPercentage"] == {"value": 100}
    problems = [d for d in diagnostics(yaml.safe_dump_all(docs)) if d.is_error]
    assert problems == []
    assert "mirror" not in routes.virtual_service(c, Routes(100, 0))["spec"]["http"][0]


def test_status_text_shows_each_canary_and_its_steps() -> None:
    c = flagger.read(document())
    decisions = run(c, [None, None, BAD])
    doc = yaml.safe_load(CANARY) | {"status": decisions[-1].status.to_dict()}
    text = report.status_text([doc])
    assert re.search(r"apps/echo\s+echo v1->v2\s+Progressing\s+100/0 \+mirror\s+1/2", text)
    assert "request-success-rate 80% (min 99) FAILED: 80 < 99" in text
    assert report.status_text([]).startswith("no Canary objects")
