"""How a Canary's progress reads for a person, without I/O: the controller's one line per step,
and `ztunnel-py canary status` (a table of Canaries, then each one's steps with the weights, every
metric's value against its threshold, and the decision)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ztunnel_py.canary.analysis import Status


def check_text(check: Mapping[str, Any]) -> str:
    """`request-success-rate 99.5% (min 99) ok` / `... - (max 500) FAILED: no values found`."""
    value = check.get("value")
    shown = "-" if value is None else f"{value:.4g}{check.get('unit', '')}"
    verdict = "ok" if check.get("ok") else f"FAILED: {check.get('error', '')}"
    return f"{check.get('metric')} {shown} ({check.get('threshold')}) {verdict}"


def weights_text(step: Mapping[str, Any]) -> str:
    """`100/0 +mirror -> 75/25`: the weights a step measured at, and those it left."""
    after = _weights(step.get("primaryWeight"), step.get("canaryWeight"), step.get("mirror"))
    if "fromPrimaryWeight" not in step:
        return after
    before = _weights(
        step.get("fromPrimaryWeight"), step.get("fromCanaryWeight"), step.get("fromMirror")
    )
    return after if before == after else f"{before} -> {after}"


def _weights(primary: object, canary: object, mirror: object) -> str:
    return f"{primary}/{canary}" + (" +mirror" if mirror else "")


def step_line(who: str, step: Mapping[str, Any]) -> str:
    """The controller's log line for one step."""
    checks = "; ".join(check_text(c) for c in step.get("checks") or ())
    return (
        f"{step.get('time')} {who} {step.get('phase')} {weights_text(step)}"
        + (f" [{checks}]" if checks else "")
        + f": {step.get('decision')}"
    )


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def status_text(canaries: Sequence[Mapping[str, Any]], steps: int = 20) -> str:
    """`canary status`: one row per Canary, then the last `steps` steps of each."""
    if not canaries:
        return "no Canary objects (apply one: see `ztunnel-py canary --help`)"
    rows = [["CANARY", "TARGET", "PHASE", "WEIGHT (PRIMARY/CANARY)", "FAILED CHECKS", "MESSAGE"]]
    details: list[str] = []
    for doc in canaries:
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        who = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
        status = Status.from_dict(doc.get("status"))
        analysis = spec.get("analysis") or {}
        versions = spec.get("versions") or {}
        target = (spec.get("targetRef") or {}).get("name", "?")
        rows.append(
            [
                who,
                f"{target} {versions.get('primary', '?')}->{versions.get('canary', '?')}",
                status.phase or "(not started)",
                f"{status.primary_weight}/{status.canary_weight}"
                + (" +mirror" if status.mirrored else ""),
                f"{status.failed_checks}/{analysis.get('threshold', 1)}",
                status.message,
            ]
        )
        if status.steps:
            step_rows = [["TIME", "PHASE", "WEIGHTS (PRIMARY/CANARY)", "CHECKS", "DECISION"]]
            for step in status.steps[-steps:]:
                checks = "; ".join(check_text(c) for c in step.get("checks") or ()) or "-"
                step_rows.append(
                    [
                        str(step.get("time")),
                        str(step.get("phase")),
                        weights_text(step),
                        checks,
                        str(step.get("decision")),
                    ]
                )
            details += ["", f"{who}:", *_table(step_rows)]
    return "\n".join([*_table(rows), *details])
