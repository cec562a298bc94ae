"""The Canary format (flagger.app/v1beta1): what the control plane rejects, with the field and
the reason, and the typed values the canary controller reads from an accepted one."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.unit.cp_support import diagnostics
from ztunnel_py.flagger import canary

CANARY = """\
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: echo, namespace: apps}
spec:
  targetRef: {apiVersion: v1, kind: Service, name: echo}
  versions: {primary: v1, canary: v2}
  service: {port: 80, timeout: 10s, retries: {attempts: 2, perTryTimeout: 2s}}
  analysis:
    interval: 3s
    threshold: 2
    stepWeight: 20
    maxWeight: 50
    mirror: true
    metrics:
    - {name: request-success-rate, thresholdRange: {min: 99}, interval: 10s}
    - {name: request-duration, thresholdRange: {max: 500}, interval: 10s}
    - name: circuit-breaker-rate
      query: sum(rate(istio_requests_total{response_flags="UO"}[10s]))
      thresholdRange: {max: 1}
"""


def document(**changes: Any) -> dict[str, Any]:
    """The example Canary with `spec` fields replaced (dotted paths; None removes)."""
    doc: dict[str, Any] = yaml.safe_load(CANARY)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc["spec"]
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d.path, d.reason) for d in diagnostics(yaml.safe_dump(doc)) if d.is_error]


def test_the_example_is_accepted_and_read() -> None:
    assert errors(document()) == []
    c = canary.read(document())
    assert (c.name, c.namespace, c.target, c.primary, c.canary) == (
        "echo",
        "apps",
        "echo",
        "v1",
        "v2",
    )
    assert (c.hosts, c.gateways, c.apex) == (("echo",), ("mesh",), "echo")
    a = c.analysis
    assert (a.interval, a.threshold, a.max_weight, a.step_weights) == (3.0, 2, 50, (20, 40, 50))
    assert (a.mirror, a.mirror_weight, a.mirror_iterations) == (True, 100, 1)
    rate, duration, breaker = a.metrics
    assert (rate.min, rate.max, rate.interval, rate.unit) == (99.0, None, "10s", "%")
    assert duration.verdict(501) == "501 > 500" and duration.verdict(20) is None
    assert rate.verdict(98.5) == "98.5 < 99"
    assert breaker.query is not None and breaker.max == 1.0 and breaker.interval == "1m"


def test_step_weights_defaults_and_revisions() -> None:
    stepped = canary.read(document(analysis__stepWeight=None, analysis__stepWeights=[5, 25, 80]))
    assert stepped.analysis.step_weights == (5, 25)  # up to maxWeight
    plain = canary.read(document(analysis__maxWeight=None, analysis__threshold=None))
    assert (plain.analysis.max_weight, plain.analysis.threshold) == (100, 1)
    assert plain.analysis.step_weights == (20, 40, 60, 80, 100)
    assert plain.revision != canary.read(document()).revision
    assert canary.read(document()).revision == canary.read(copy.deepcopy(document())).revision
    # the deprecated scalar threshold: a minimum for the success rate, a maximum otherwise
    legacy = canary.read(
        document(
            analysis__metrics=[
                {"name": "request-success-rate", "threshold": 99},
                {"name": "request-duration", "threshold": 500},
            ]
        )
    )
    assert [(m.min, m.max) for m in legacy.analysis.metrics] == [(99.0, None), (None, 500.0)]
    bluegreen = canary.read(document(analysis__stepWeight=None, analysis__iterations=3))
    assert bluegreen.analysis.step_weights == () and bluegreen.analysis.mirror_iterations == 3


@pytest.mark.parametrize(
    ("changes", "path", "reason"),
    [
        (
            {"targetRef": {"kind": "Deployment", "name": "echo"}},
            "spec.targetRef.kind",
            "kind 'Deployment' is not supported by ztunnel-py's canary controller",
        ),
        ({"versions": None}, "spec.versions", "required field is missing: name the primary"),
        (
            {"versions": {"primary": "v1", "canary": "v1"}},
            "spec.versions.canary",
            "the canary version must differ",
        ),
        ({"service__port": None}, "spec.service.port", "required field is missing"),
        ({"analysis__interval": "soon"}, "spec.analysis.interval", "'soon' is not a duration"),
        ({"analysis__stepWeight": 0}, "spec.analysis.stepWeight", "stepWeight 0 out of range"),
        ({"analysis__stepWeight": 60}, "spec.analysis.stepWeight", "above maxWeight 50"),
        (
            {"analysis__stepWeight": None, "analysis__mirror": False},
            "spec.analysis.stepWeight",
            "required field is missing (or stepWeights)",
        ),
        (
            {"analysis__stepWeight": None, "analysis__stepWeights": [10, 10]},
            "spec.analysis.stepWeights",
            "step weights must increase",
        ),
        (
            {"analysis__mirror": False, "analysis__iterations": 5},
            "spec.analysis.iterations",
            "iterations without mirror (Flagger's blue/green) is not supported",
        ),
        (
            {"analysis__webhooks": []},
            "spec.analysis.webhooks",
            "is not supported by ztunnel-py's canary controller (no load tester",
        ),
        (
            {"analysis__metrics": [{"name": "error-rate", "thresholdRange": {"max": 1}}]},
            "spec.analysis.metrics[0].name",
            "metric 'error-rate' needs a PromQL `query`",
        ),
        (
            {"analysis__metrics": [{"name": "request-duration", "thresholdRange": {}}]},
            "spec.analysis.metrics[0].thresholdRange",
            "a threshold range needs min, max or both",
        ),
        (
            {"analysis__metrics": [{"name": "request-duration"}]},
            "spec.analysis.metrics[0].thresholdRange",
            "required field is missing (a metric gates on it)",
        ),
        (
            {
                "analysis__metrics": [
                    {"name": "request-duration", "thresholdRange": {"max": 5}},
                    {"name": "request-duration", "thresholdRange": {"max": 9}},
                ]
            },
            "spec.analysis.metrics[1]",
            "duplicate metric 'request-duration'",
        ),
        (
            {"analysis__metrics": [{"name": "x", "templateRef": {"name": "t"}, "query": "up"}]},
            "spec.analysis.metrics[0].templateRef",
            "no MetricTemplate objects",
        ),
        ({"provider": "linkerd"}, "spec.provider", "'linkerd' is not one of istio"),
        ({"metricsServer": "prometheus:9090"}, "spec.metricsServer", "is not an http:// URL"),
        (
            {"service__trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}},
            "spec.service.trafficPolicy.loadBalancer.simple",
            "'FASTEST' is not one of",
        ),
    ],
)
def test_bad_canaries_are_rejected_naming_the_field(
    changes: dict[str, Any], path: str, reason: str
) -> None:
    found = errors(document(**changes))
    assert any(p == path and reason in r for p, r in found), found
    # the controller, reading without positions, refuses the same document
    if path != "spec.service.trafficPolicy.loadBalancer.simple":
        assert any(p.startswith(path) for p in canary.problems_of(document(**changes)))


def test_the_controller_refuses_documents_without_name_or_spec() -> None:
    assert canary.problems_of({"metadata": {"name": "x"}}) == ["spec: required field is missing"]
    assert canary.problems_of({"spec": {}})[0] == "metadata: metadata.name is required"
    assert canary.problems_of(document()) == []
