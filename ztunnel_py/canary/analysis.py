"""The release rhythm of one Canary, without I/O: its status and the metric checks of this
step in, the next status, the weights to write and what was decided out.

Flagger's progressive canary, as its scheduler runs it once per `analysis.interval`:

- a new Canary, or a new spec (its revision), starts over: all traffic to the primary
  (`Initialized`);
- the next step starts the analysis (`Progressing`): shadow traffic first when `mirror` is
  set (every request still answered by the primary, a copy of `mirrorWeight` percent sent to
  the canary), else the first step weight;
- each following step runs the metric checks. All pass: advance (mirrored checks up to
  `iterations`, then the first step weight; then the next step weight up to `maxWeight`; past
  that, promotion: all traffic to the canary, `Promoting`, and `Succeeded` at the next step).
  Any fails (a value out of its range, no value at all, Prometheus unreachable or refusing the
  query): the weights stay, the failed checks are counted, and once they reach `threshold` the
  next step rolls back to the last stable weights (all traffic to the primary, no mirror) and
  the Canary is `Failed`. Missing data is never a pass;
- `skipAnalysis` promotes at once; `suspend` leaves everything as it is.

Each step is kept in the status (the weights, each metric's value and verdict, the decision),
with Flagger's `Promoted` condition: `Unknown` while progressing, `True` once `Succeeded`,
`False` once `Failed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.flagger.canary import TOTAL_WEIGHT, Canary

INITIALIZED = "Initialized"
PROGRESSING = "Progressing"
PROMOTING = "Promoting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL = (SUCCEEDED, FAILED)
# the steps the status keeps (the oldest go first)
MAX_STEPS = 50


@dataclass(frozen=True, slots=True)
class Routes:
    """The traffic split to write: weights in percent, and whether the canary gets copies."""

    primary: int
    canary: int
    mirror: bool = False

    @classmethod
    def stable(cls) -> Routes:
        return cls(TOTAL_WEIGHT, 0)

    @classmethod
    def promoted(cls) -> Routes:
        return cls(0, TOTAL_WEIGHT)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One metric's check: its value (None when there was none) and why it failed, if it did."""

    metric: str
    value: float | None
    unit: str
    bounds: str  # "min 99", "max 500", "min 1, max 2"
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": None if self.value is None else round(self.value, 3),
            "unit": self.unit,
            "threshold": self.bounds,
            "ok": self.ok,
            **({"error": self.failure} if self.failure else {}),
        }


@dataclass(frozen=True, slots=True)
class Status:
    """What the Canary's `status` says (Flagger's fields, plus the steps)."""

    phase: str = ""
    canary_weight: int = 0
    mirrored: bool = False
    failed_checks: int = 0
    iterations: int = 0
    revision: str = ""
    message: str = ""
    last_transition: str = ""
    steps: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def primary_weight(self) -> int:
        return TOTAL_WEIGHT - self.canary_weight

    def to_dict(self) -> dict[str, Any]:
        promoted = {SUCCEEDED: "True", FAILED: "False"}.get(self.phase, "Unknown")
        return {
            "phase": self.phase,
            "canaryWeight": self.canary_weight,
            "mirrored": self.mirrored,
            "failedChecks": self.failed_checks,
            "iterations": self.iterations,
            "lastAppliedSpec": self.revision,
            "lastTransitionTime": self.last_transition,
            "conditions": [
                {
                    "type": "Promoted",
                    "status": promoted,
                    "reason": self.phase,
                    "message": self.message,
                    "lastTransitionTime": self.last_transition,
                }
            ],
            "steps": [dict(s) for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: object) -> Status:
        """The status a Canary carries; anything unreadable is a status never written (the
        analysis then starts over, which is always safe: all traffic to the primary)."""
        if not isinstance(data, dict):
            return cls()
        try:
            steps = data.get("steps") or []
            return cls(
                phase=str(data.get("phase") or ""),
                canary_weight=int(data.get("canaryWeight") or 0),
                mirrored=bool(data.get("mirrored")),
                failed_checks=int(data.get("failedChecks") or 0),
                iterations=int(data.get("iterations") or 0),
                revision=str(data.get("lastAppliedSpec") or ""),
                message=_message(data),
                last_transition=str(data.get("lastTransitionTime") or ""),
                steps=tuple(s for s in steps if isinstance(s, dict))[-MAX_STEPS:],
            )
        except (TypeError, ValueError):
            return cls()


def _message(data: Mapping[str, Any]) -> str:
    conditions = data.get("conditions")
    if isinstance(conditions, list) and conditions and isinstance(conditions[0], dict):
        return str(conditions[0].get("message") or "")
    return ""


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    routes: Routes | None  # None: the weights stay as they are
    event: str


def needs_checks(canary: Canary, status: Status) -> bool:
    """This step evaluates the metrics (the driver then measures before `advance`)."""
    return (
        not canary.suspend
        and status.revision == canary.revision
        and status.phase == PROGRESSING
        and status.failed_checks < canary.analysis.threshold
    )


def advance(
    canary: Canary, status: Status, checks: Sequence[CheckResult] | None, now: str
) -> Decision:
    """One step of the analysis; `checks` are this step's results when `needs_checks`. The
    step kept in the status says the weights it started from (where the checks were measured)
    and the weights it left."""
    decision = _decide(canary, status, checks, now)
    steps = decision.status.steps
    if steps is status.steps or not steps:
        return decision
    started = {
        "fromPrimaryWeight": status.primary_weight,
        "fromCanaryWeight": status.canary_weight,
        "fromMirror": status.mirrored,
    }
    step = {**steps[-1], **(started if status.phase else {})}
    return dataclasses.replace(
        decision, status=dataclasses.replace(decision.status, steps=(*steps[:-1], step))
    )


def _decide(
    canary: Canary, status: Status, checks: Sequence[CheckResult] | None, now: str
) -> Decision:
    who = f"{canary.namespace}/{canary.name}"
    if canary.suspend:
        return Decision(status, None, f"{who} is suspended: nothing changes")
    if status.revision != canary.revision:
        fresh = Status(phase=INITIALIZED, revision=canary.revision)
        event = f"New revision of {who}: all traffic to {canary.primary}, analysis next"
        return _step(fresh, Routes.stable(), event, now, None)
    if status.phase in TERMINAL:
        return Decision(status, None, f"{who} is {status.phase}: waiting for a new revision")
    if status.phase == PROMOTING:
        done = dataclasses.replace(status, phase=SUCCEEDED)
        return _step(done, Routes.promoted(), f"Promotion of {who} completed", now, None)
    if status.phase == INITIALIZED:
        if canary.skip_analysis:
            promoted = dataclasses.replace(status, phase=SUCCEEDED, canary_weight=TOTAL_WEIGHT)
            event = f"Analysis skipped: all traffic to {canary.canary}, promotion completed"
            return _step(promoted, Routes.promoted(), event, now, None)
        started = dataclasses.replace(status, phase=PROGRESSING)
        return _start(canary, started, f"Starting the analysis of {who}: ", now)
    if status.failed_checks >= canary.analysis.threshold:
        failed = dataclasses.replace(status, phase=FAILED, canary_weight=0, mirrored=False)
        event = (
            f"Rolling back {who}: failed checks threshold reached {status.failed_checks}; "
            f"all traffic to {canary.primary}"
        )
        return _step(failed, Routes.stable(), event, now, None)
    if checks is None:
        raise ValueError(f"{who} is progressing: this step needs its metric checks")
    failures = [f"{c.metric} {c.failure}" for c in checks if not c.ok]
    if failures:
        halted = dataclasses.replace(status, failed_checks=status.failed_checks + 1)
        event = (
            f"Halt advancement of {who} ({halted.failed_checks}/{canary.analysis.threshold} "
            f"failed checks): " + "; ".join(failures)
        )
        return _step(halted, None, event, now, checks)
    return _advance(canary, status, checks, now)


def _start(canary: Canary, status: Status, prefix: str, now: str) -> Decision:
    a = canary.analysis
    if a.mirror:
        mirrored = dataclasses.replace(status, mirrored=True, canary_weight=0)
        event = f"{prefix}mirroring {a.mirror_weight}% of the traffic to {canary.canary}"
        return _step(mirrored, Routes(TOTAL_WEIGHT, 0, mirror=True), event, now, None)
    return _weight(canary, status, a.step_weights[0], prefix, now, None)


def _advance(canary: Canary, status: Status, checks: Sequence[CheckResult], now: str) -> Decision:
    a = canary.analysis
    if status.mirrored:
        iterations = status.iterations + 1
        counted = dataclasses.replace(status, iterations=iterations)
        if iterations < a.mirror_iterations:
            event = f"Mirrored check {iterations}/{a.mirror_iterations} passed"
            return _step(counted, None, event, now, checks)
        shadowless = dataclasses.replace(counted, mirrored=False)
        prefix = "Shadow traffic passed, stop mirroring: "
        if not a.step_weights:
            return _promote(canary, shadowless, prefix, now, checks)
        return _weight(canary, shadowless, a.step_weights[0], prefix, now, checks)
    later = [w for w in a.step_weights if w > status.canary_weight]
    if status.canary_weight < a.max_weight and later:
        return _weight(canary, status, later[0], "", now, checks)
    return _promote(canary, status, "", now, checks)


def _weight(
    canary: Canary,
    status: Status,
    weight: int,
    prefix: str,
    now: str,
    checks: Sequence[CheckResult] | None,
) -> Decision:
    moved = dataclasses.replace(status, canary_weight=weight)
    event = f"{prefix}advance {canary.canary} weight to {weight}%"
    return _step(moved, Routes(TOTAL_WEIGHT - weight, weight), event, now, checks)


def _promote(
    canary: Canary, status: Status, prefix: str, now: str, checks: Sequence[CheckResult]
) -> Decision:
    promoting = dataclasses.replace(status, phase=PROMOTING, canary_weight=TOTAL_WEIGHT)
    event = f"{prefix}analysis passed: promoting {canary.canary}, all traffic to it"
    return _step(promoting, Routes.promoted(), event, now, checks)


def _step(
    status: Status,
    routes: Routes | None,
    event: str,
    now: str,
    checks: Sequence[CheckResult] | None,
) -> Decision:
    step = {
        "time": now,
        "phase": status.phase,
        "primaryWeight": status.primary_weight,
        "canaryWeight": status.canary_weight,
        "mirror": status.mirrored,
        "checks": [c.to_dict() for c in checks or ()],
        "decision": event,
    }
    steps = (*status.steps, step)[-MAX_STEPS:]
    transition = (
        status.last_transition
        if status.steps and status.steps[-1].get("phase") == status.phase
        else now
    )
    recorded = dataclasses.replace(status, steps=steps, message=event, last_transition=transition)
    return Decision(recorded, routes, event)
