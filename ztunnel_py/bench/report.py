"""The report of `ztunnel-py bench compare`: terminal table, JSON, PNG plots and an HTML page.

Everything here renders a `CompareResult`; nothing measures. The tables' rows and the targets are
computed once (`rows` for L4, `l7_rows` for L7, `targets`) and drawn twice, as plain text and as
HTML, so the two never disagree. Every mesh figure is shown beside the no-mesh baseline of the
same run: throughput and connection rate as a ratio, latency as a delta in ms, costs absolute (no
mesh runs no mesh processes). matplotlib is imported only by `write_png`, so the table and the
JSON work without the `bench` extra.
"""

from __future__ import annotations

import base64
import html
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ztunnel_py.bench.results import (
    AMBIENT,
    FLOOR,
    MODES,
    NONE,
    PERCENTILES,
    SIDECAR,
    SIDECAR_PROXY,
    WAYPOINT,
    CompareResult,
    Cost,
    Figure,
    Latency,
    ModeResult,
    PathCheck,
    ProcessCost,
)

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

MODE_TITLES = {NONE: "no mesh", SIDECAR: "sidecar", AMBIENT: "ambient"}
L7_TITLES = {NONE: "no mesh", SIDECAR: "sidecar (HTTP engine)", AMBIENT: "ambient + waypoint"}
MODE_COLOURS = {NONE: "#8c8c8c", SIDECAR: "#e07b28", AMBIENT: "#2b6cb0"}
MESH_MODES = (SIDECAR, AMBIENT)
NA = "n/a"
# Costs of the no-mesh run: it has no data-plane processes to measure.
NO_PROCESSES = "-"
WIDTH = 110
THROUGHPUT_TARGET = 0.25
ISTIO_ZTUNNEL_VCPU = 0.06
# The waypoint's targets: CPU seconds per 1000 requests (= vCPU at 1000 req/s), resident memory
# in MB (10^6 bytes), and p99 added over no mesh; beside them Envoy's waypoint (Istio 1.24).
WAYPOINT_CPU_TARGET = 0.5
WAYPOINT_RSS_TARGET_MB = 100.0
L7_ADDED_P99_TARGET_MS = 1.5
ENVOY_WAYPOINT_VCPU = 0.25
ENVOY_WAYPOINT_MB = 60.0
MB_PER_MIB = 2**20 / 1e6

MET = "met"
NOT_MET = "not met"
INFO = "info"

PUBLISHED_TITLE = (
    "Istio's published figures (other hardware, shown for context, not comparable one-to-one)"
)
LEGEND = "cells: median [low-high over the repeats] (vs no mesh of this run: ratio, or delta in ms)"
L7_TITLE = "L7: HTTP/1.1 to the echo service through the HTTP filter engine"
FLOOR_TITLE = "the floor: a plaintext splice relay pair in the agents' place"
FLOOR_NOTE = (
    "the same capture and listeners as the agents, no TLS, HBONE, policy or metrics, os.splice "
    "both ways: what any user-space two-hop proxy costs on this machine. CPU per proxy is the "
    "data-plane processes' total / 2 (two proxies on the path; sidecar mode's idle sidecars "
    "included). Last column: ambient / floor (for latency: of the delay added over no mesh)"
)
FLOOR_HEAD = ("no mesh", "floor", "sidecar", "ambient", "ambient / floor")
# Two proxies carry each connection in every mode: client side and server side.
PROXIES_ON_PATH = 2


class ReportError(Exception):
    """The report cannot be written (a missing optional dependency)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table: a label and one cell per mode, in `MODES` order."""

    label: str
    cells: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets with its verdict; printed, never asserted."""

    name: str
    status: str  # MET, NOT_MET, NA or INFO
    detail: tuple[str, ...]


# ---- numbers -------------------------------------------------------------------------------


Fmt = Callable[[float], str]


def _num(v: float) -> str:
    """About three significant figures, so 0.17 ms and 12.3 Gbit/s both stay readable."""
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _cpu(v: float) -> str:
    # vCPU per 1000 rps is compared with Istio's 0.06, so keep the third decimal
    return f"{v:.3f}" if abs(v) < 10 else _num(v)


def _count(v: float) -> str:
    return f"{v:.0f}"


def _signed(v: float) -> str:
    text = _num(abs(v))
    return ("-" if v < 0 and float(text) != 0 else "+") + text


def _value(figure: Figure, fmt: Callable[[float], str]) -> str:
    """Median, and the range when there is more than one repeat; n/a when nothing was measured."""
    if not figure.values:
        return NA
    text = fmt(figure.median)
    if len(figure.values) > 1:
        text += f" [{fmt(figure.low)}-{fmt(figure.high)}]"
    return text


def ratio(mesh: Figure, base: Figure) -> float | None:
    """mesh / no mesh (medians), or None when either is missing or the baseline is zero."""
    if not mesh.values or not base.values or base.median == 0:
        return None
    return mesh.median / base.median


def delta(mesh: Figure, base: Figure) -> float | None:
    """mesh - no mesh (medians), or None when either is missing."""
    if not mesh.values or not base.values:
        return None
    return mesh.median - base.median


def _ratio_text(mesh: Figure, base: Figure) -> str:
    r = ratio(mesh, base)
    return NA if r is None else f"{r:.2f}x"


def _delta_text(mesh: Figure, base: Figure) -> str:
    d = delta(mesh, base)
    return NA if d is None else _signed(d)


# ---- rows and targets ----------------------------------------------------------------------


def _mode(result: CompareResult, name: str) -> ModeResult:
    # a mode that did not run renders as n/a everywhere (empty figures)
    return result.modes.get(name) or ModeResult(mode=name)


def _compared(
    result: CompareResult,
    pick: Callable[[ModeResult], Figure],
    fmt: Callable[[float], str],
    compare: Callable[[Figure, Figure], str],
) -> tuple[str, str, str]:
    base = pick(_mode(result, NONE))
    cells = [_value(base, fmt)]
    for name in MESH_MODES:
        mesh = pick(_mode(result, name))
        value = _value(mesh, fmt)
        cells.append(value if value == NA else f"{value} ({compare(mesh, base)})")
    return cells[0], cells[1], cells[2]


def _absolute(
    result: CompareResult, pick: Callable[[ModeResult], Figure], fmt: Callable[[float], str]
) -> tuple[str, str, str]:
    a, b, c = (_value(pick(_mode(result, name)), fmt) for name in MODES)
    return a, b, c


def _cost_cells(
    result: CompareResult, pods: int, cell: Callable[[Cost], str]
) -> tuple[str, str, str]:
    cells = [NO_PROCESSES]
    for name in MESH_MODES:
        cost = _mode(result, name).cost(pods)
        cells.append(NA if cost is None else cell(cost))
    return cells[0], cells[1], cells[2]


def _cost_figure(pods: int, pick: Callable[[Cost], Figure]) -> Callable[[ModeResult], Figure]:
    """A figure of the cost run with `pods` pods per node (empty when it did not run)."""

    def figure(mode: ModeResult) -> Figure:
        cost = mode.cost(pods)
        return Figure() if cost is None else pick(cost)

    return figure


def _rss(cost: Cost) -> str:
    value = _value(cost.rss_mib, _num)
    return value if value == NA else f"{value} ({cost.processes} proc)"


def _system_part(cost: Cost | ProcessCost) -> str:
    """The cell of a cost's system CPU: seconds per 1000 requests and its share of the total."""
    system, total = cost.system_s_per_1000_requests, cost.cpu_s_per_1000_requests
    value = _value(system, _cpu)
    if value == NA or not total.values or total.median == 0:
        return value
    return f"{value} ({system.median / total.median:.0%})"


def _percentile(name: str) -> Callable[[ModeResult], Figure]:
    return lambda m: m.latency_ms.percentile(name)


def _l7_percentile(name: str) -> Callable[[ModeResult], Figure]:
    return lambda m: m.l7.latency_ms.percentile(name)


def rows(result: CompareResult) -> list[Row]:
    """The results table, one row per figure, cells in `MODES` order."""
    rate = result.settings.plan.rate
    out = [
        Row(
            "throughput, 1 stream (Gbit/s)",
            _compared(result, lambda m: m.throughput_gbps, _num, _ratio_text),
        )
    ]
    for p in PERCENTILES:
        out.append(
            Row(
                f"latency {p} @ {rate} req/s (ms)",
                _compared(result, _percentile(p), _num, _delta_text),
            )
        )
    out.append(
        Row("achieved rate (req/s)", _absolute(result, lambda m: m.latency_ms.achieved_rps, _num))
    )
    out.append(Row("request errors", _absolute(result, lambda m: m.latency_ms.errors, _count)))
    out.append(
        Row(
            "connection rate (conn/s)",
            _compared(result, lambda m: m.connections_per_s, _num, _ratio_text),
        )
    )
    for pods in result.settings.plan.pods_per_node:
        out.append(
            Row(
                f"latency p99 @ {pods} pods/node (ms)",
                _compared(result, _cost_figure(pods, lambda c: c.p99_ms), _num, _delta_text),
            )
        )
        out.append(
            Row(
                f"CPU s/1000 req @ {pods} pods/node",
                _cost_cells(result, pods, lambda c: _value(c.cpu_s_per_1000_requests, _cpu)),
            )
        )
        out.append(
            Row(
                f"  of which system @ {pods} pods/node",
                _cost_cells(result, pods, _system_part),
            )
        )
        out.append(Row(f"data-plane RSS MiB @ {pods} pods/node", _cost_cells(result, pods, _rss)))
        out.append(
            Row(
                f"data-plane PSS MiB @ {pods} pods/node",
                _cost_cells(result, pods, lambda c: _value(c.pss_mib, _num)),
            )
        )
        out.append(
            Row(
                f"control-plane RSS MiB @ {pods} pods/node",
                _cost_cells(result, pods, lambda c: _value(c.controlplane_rss_mib, _num)),
            )
        )
    return out


def _titles(titles: dict[str, str]) -> tuple[str, ...]:
    return tuple(titles[m] for m in MODES)


def _per(figure: Figure, count: float) -> Figure:
    return Figure([v / count for v in figure.values]) if count else Figure()


def _user(cost: Cost) -> Figure:
    """The user-space part of a cost's CPU, per repeat."""
    total, system = cost.cpu_s_per_1000_requests.values, cost.system_s_per_1000_requests.values
    if len(total) != len(system):  # a run that did not record the split
        return Figure()
    return Figure([t - s for t, s in zip(total, system, strict=True)])


def _median(figure: Figure) -> float | None:
    return figure.median if figure.values else None


def _of_floor(ours: float | None, floor: float | None) -> str:
    if ours is None or floor is None or floor <= 0:
        return NA
    return f"{ours / floor:.2f}x"


def floor_rows(result: CompareResult) -> list[Row]:
    """The floor beside the modes, medians only (the ranges are in the main table): the L4
    figures measured the same way, latency as the delay added over no mesh, and ambient's
    figure as a ratio of the floor's."""
    floor = result.floor or ModeResult(mode=FLOOR)
    base = _mode(result, NONE)
    shown = (floor, _mode(result, SIDECAR), _mode(result, AMBIENT))
    rate = result.settings.plan.rate

    def row(label: str, base_cell: str, values: list[float | None], fmt: Fmt) -> Row:
        cells = [NA if v is None else fmt(v) for v in values]
        return Row(label, (base_cell, *cells, _of_floor(values[2], values[0])))

    def base_cell(pick: Callable[[ModeResult], Figure]) -> str:
        median = _median(pick(base))
        return NA if median is None else _num(median)

    def absolute(label: str, pick: Callable[[ModeResult], Figure]) -> Row:
        return row(label, base_cell(pick), [_median(pick(m)) for m in shown], _num)

    out = [absolute("throughput, 1 stream (Gbit/s)", lambda m: m.throughput_gbps)]
    for p in PERCENTILES:
        pick = _percentile(p)
        added = [delta(pick(m), pick(base)) for m in shown]
        out.append(row(f"latency {p} @ {rate} req/s (ms)", base_cell(pick), added, _signed))
    out.append(absolute("connection rate (conn/s)", lambda m: m.connections_per_s))
    if not result.settings.plan.pods_per_node:
        return out
    pods = min(result.settings.plan.pods_per_node)
    costs = [m.cost(pods) for m in shown]

    def per_proxy(label: str, pick: Callable[[Cost], Figure], fmt: Fmt) -> Row:
        values = [None if c is None else _median(_per(pick(c), PROXIES_ON_PATH)) for c in costs]
        return row(label, NO_PROCESSES, values, fmt)

    out.append(
        per_proxy(
            f"CPU s/1000 req per proxy @ {pods} pods/node",
            lambda c: c.cpu_s_per_1000_requests,
            _cpu,
        )
    )
    out.append(per_proxy("  of which user", _user, _cpu))
    out.append(per_proxy("  of which system", lambda c: c.system_s_per_1000_requests, _cpu))
    rss = [None if c is None else _median(_per(c.rss_mib, c.processes)) for c in costs]
    out.append(row(f"RSS MiB per process @ {pods} pods/node", NO_PROCESSES, rss, _num))
    return out


def l7_rows(result: CompareResult) -> list[Row]:
    """The L7 table: latency against no mesh, then CPU and memory of each process on the path
    ("-" in the modes it is not part of)."""
    rate = result.settings.plan.rate
    out = [
        Row(
            f"latency {p} @ {rate} req/s (ms)",
            _compared(result, _l7_percentile(p), _num, _delta_text),
        )
        for p in PERCENTILES
    ]
    out.append(
        Row(
            "achieved rate (req/s)", _absolute(result, lambda m: m.l7.latency_ms.achieved_rps, _num)
        )
    )
    out.append(Row("request errors", _absolute(result, lambda m: m.l7.latency_ms.errors, _count)))
    names: list[str] = []
    for mode in MODES:
        names += [p.name for p in _mode(result, mode).l7.processes if p.name not in names]

    def per_process(name: str, cell: Callable[[ProcessCost], str]) -> tuple[str, str, str]:
        found = [_mode(result, mode).l7.process(name) for mode in MODES]
        a, b, c = (NO_PROCESSES if p is None else cell(p) for p in found)
        return a, b, c

    for name in names:
        out.append(
            Row(
                f"CPU s/1000 req, {name}",
                per_process(name, lambda p: _value(p.cpu_s_per_1000_requests, _cpu)),
            )
        )
        out.append(Row(f"  of which system, {name}", per_process(name, _system_part)))
    total = _absolute(result, lambda m: m.l7.cpu_s_per_1000_requests, _cpu)
    out.append(Row("CPU s/1000 req, the whole path", (NO_PROCESSES, total[1], total[2])))
    for name in names:
        out.append(Row(f"RSS MiB, {name}", per_process(name, lambda p: _value(p.rss_mib, _num))))
    for name in names:
        out.append(Row(f"PSS MiB, {name}", per_process(name, lambda p: _value(p.pss_mib, _num))))
    return out


def _throughput_target(result: CompareResult) -> Target:
    name = f"ambient throughput >= {THROUGHPUT_TARGET:.2f}x no mesh"
    amb, base = _mode(result, AMBIENT).throughput_gbps, _mode(result, NONE).throughput_gbps
    r = ratio(amb, base)
    if r is None:
        return Target(name, NA, ("not measured, or a zero no-mesh baseline",))
    status = MET if r >= THROUGHPUT_TARGET else NOT_MET
    detail = f"{r:.2f}x: {_num(amb.median)} of {_num(base.median)} Gbit/s"
    return Target(name, status, (detail,))


def _latency_target(result: CompareResult) -> Target:
    name = f"ambient p99 below sidecar p99 @ {result.settings.plan.rate} req/s"
    amb, side = _mode(result, AMBIENT).latency_ms.p99, _mode(result, SIDECAR).latency_ms.p99
    if not amb.values or not side.values:
        return Target(name, NA, ("not measured",))
    status = MET if amb.median < side.median else NOT_MET
    details = [f"ambient {_num(amb.median)} ms, sidecar {_num(side.median)} ms"]
    if result.settings.plan.pods_per_node:
        pods = max(result.settings.plan.pods_per_node)
        amb_cost, side_cost = _mode(result, AMBIENT).cost(pods), _mode(result, SIDECAR).cost(pods)
        if amb_cost and side_cost and amb_cost.p99_ms.values and side_cost.p99_ms.values:
            details.append(
                f"with {pods} pods/node (cost run): ambient {_num(amb_cost.p99_ms.median)} ms, "
                f"sidecar {_num(side_cost.p99_ms.median)} ms"
            )
    return Target(name, status, tuple(details))


def _memory_target(result: CompareResult) -> Target:
    if not result.settings.plan.pods_per_node:
        return Target("ambient memory below sidecar", NA, ("no pods-per-node values",))
    pods = max(result.settings.plan.pods_per_node)
    name = f"ambient memory @ {pods} pods/node below sidecar"
    amb, side = _mode(result, AMBIENT).cost(pods), _mode(result, SIDECAR).cost(pods)
    if amb is None or side is None or not amb.rss_mib.values or not side.rss_mib.values:
        return Target(name, NA, ("not measured",))
    status = MET if amb.rss_mib.median < side.rss_mib.median else NOT_MET
    detail = (
        f"ambient {_num(amb.rss_mib.median)} MiB in {amb.processes} processes, "
        f"sidecar {_num(side.rss_mib.median)} MiB in {side.processes} processes"
    )
    return Target(name, status, (detail,))


def _cpu_target(result: CompareResult) -> Target:
    name = f"ambient CPU per 1000 req/s vs Istio's {ISTIO_ZTUNNEL_VCPU} vCPU per ztunnel"
    measured = [
        (pods, cost)
        for pods in result.settings.plan.pods_per_node
        if (cost := _mode(result, AMBIENT).cost(pods)) is not None
        and cost.cpu_s_per_1000_requests.values
    ]
    if not measured:
        return Target(name, NA, ("not measured",))
    # CPU seconds per 1000 requests is vCPU at 1000 req/s; the sum covers both agents on the path
    values = " / ".join(_cpu(c.cpu_s_per_1000_requests.median) for _, c in measured)
    halves = " / ".join(_cpu(c.cpu_s_per_1000_requests.median / 2) for _, c in measured)
    pods = " / ".join(str(p) for p, _ in measured)
    return Target(
        name,
        INFO,
        (
            f"ours: {values} vCPU at {pods} pods/node, summed over the agents",
            "two agents are on the path (client node and server node) and Istio's figure is per "
            f"ztunnel: ours per agent ~{halves}; Istio: {ISTIO_ZTUNNEL_VCPU} vCPU",
        ),
    )


def _saturation(result: CompareResult, mode: str) -> list[str]:
    """A note when the L7 run of `mode` did not keep the offered rate or lost requests."""
    rate = result.settings.plan.rate
    lat = _mode(result, mode).l7.latency_ms
    if not lat.achieved_rps.values:
        return []
    notes = []
    if lat.achieved_rps.median < 0.95 * rate:
        notes.append(
            f"the path carried only {_num(lat.achieved_rps.median)} of the {rate} req/s offered: "
            "it is saturated, so latency is mostly queueing"
        )
    if lat.errors.median:
        notes.append(f"{_count(lat.errors.median)} requests failed or timed out")
    return notes


def _waypoint(result: CompareResult) -> ProcessCost | None:
    found = _mode(result, AMBIENT).l7.role(WAYPOINT)
    return found[0] if found else None


def _waypoint_cpu_target(result: CompareResult) -> Target:
    name = f"L7: waypoint CPU <= {WAYPOINT_CPU_TARGET} s per 1000 requests (vCPU at 1000 req/s)"
    waypoint = _waypoint(result)
    if waypoint is None or not waypoint.cpu_s_per_1000_requests.values:
        return Target(name, NA, ("not measured",))
    cpu = waypoint.cpu_s_per_1000_requests.median
    details = [
        f"waypoint {_cpu(cpu)}: {_num(cpu / WAYPOINT_CPU_TARGET)}x the target, "
        f"{_num(cpu / ENVOY_WAYPOINT_VCPU)}x Envoy's ~{ENVOY_WAYPOINT_VCPU} vCPU"
    ]
    path = {m: _mode(result, m).l7.cpu_s_per_1000_requests for m in (AMBIENT, SIDECAR)}
    if all(f.values for f in path.values()):
        details.append(
            f"whole path: ambient + waypoint {_cpu(path[AMBIENT].median)} (waypoint and agents), "
            f"sidecar mode {_cpu(path[SIDECAR].median)} (client and echo sidecars)"
        )
    details += _saturation(result, AMBIENT)
    return Target(name, MET if cpu <= WAYPOINT_CPU_TARGET else NOT_MET, tuple(details))


def _waypoint_memory_target(result: CompareResult) -> Target:
    name = f"L7: waypoint RSS <= {WAYPOINT_RSS_TARGET_MB:.0f} MB"
    waypoint = _waypoint(result)
    if waypoint is None or not waypoint.rss_mib.values:
        return Target(name, NA, ("not measured",))
    mb = waypoint.rss_mib.median * MB_PER_MIB
    details = [
        f"waypoint {mb:.0f} MB ({_num(waypoint.rss_mib.median)} MiB RSS, "
        f"{_value(waypoint.pss_mib, _num)} MiB PSS): {_num(mb / WAYPOINT_RSS_TARGET_MB)}x the "
        f"target, {_num(mb / ENVOY_WAYPOINT_MB)}x Envoy's ~{ENVOY_WAYPOINT_MB:.0f} MB"
    ]
    sidecars = _mode(result, SIDECAR).l7.role(SIDECAR_PROXY)
    if sidecars and all(p.rss_mib.values for p in sidecars):
        each = " / ".join(_num(p.rss_mib.median) for p in sidecars)
        details.append(f"sidecars on the path ({len(sidecars)}): {each} MiB RSS each")
    return Target(name, MET if mb <= WAYPOINT_RSS_TARGET_MB else NOT_MET, tuple(details))


def _l7_latency_target(result: CompareResult) -> Target:
    rate = result.settings.plan.rate
    name = f"L7: ambient + waypoint p99 <= no mesh + {L7_ADDED_P99_TARGET_MS} ms @ {rate} req/s"
    base = _mode(result, NONE).l7.latency_ms.p99
    amb = _mode(result, AMBIENT).l7.latency_ms.p99
    added = delta(amb, base)
    if added is None:
        return Target(name, NA, ("not measured",))
    details = [
        f"ambient + waypoint {_num(amb.median)} ms, no mesh {_num(base.median)} ms: "
        f"{_signed(added)} ms, {_num(added / L7_ADDED_P99_TARGET_MS)}x the budget"
    ]
    side = delta(_mode(result, SIDECAR).l7.latency_ms.p99, base)
    if side is not None:
        details.append(
            f"sidecar (HTTP engine) {_num(_mode(result, SIDECAR).l7.latency_ms.p99.median)} ms: "
            f"{_signed(side)} ms"
        )
    details += _saturation(result, AMBIENT)
    return Target(name, MET if added <= L7_ADDED_P99_TARGET_MS else NOT_MET, tuple(details))


def targets(result: CompareResult) -> list[Target]:
    """The issue's targets with their verdicts against this run."""
    return [
        _throughput_target(result),
        _latency_target(result),
        _memory_target(result),
        _cpu_target(result),
        _waypoint_cpu_target(result),
        _waypoint_memory_target(result),
        _l7_latency_target(result),
    ]


# ---- header --------------------------------------------------------------------------------


def _seconds(v: float) -> str:
    return f"{v:g} s"


def settings_lines(result: CompareResult) -> list[tuple[str, str]]:
    """The run's settings as (name, value) pairs, for the header of every format."""
    s, plan = result.settings, result.settings.plan
    return [
        ("load", f"{plan.rate} req/s open loop over {plan.connections} connections, HTTP/1.1"),
        ("response body", f"{plan.response_bytes} bytes"),
        ("throughput run", _seconds(plan.throughput_seconds)),
        ("latency run", _seconds(plan.latency_seconds)),
        ("cost run", f"{_seconds(plan.cost_seconds)} per pods-per-node value"),
        ("connection-rate run", _seconds(plan.connection_rate_seconds)),
        ("L7 run", _seconds(plan.l7_seconds)),
        ("pods per node", ", ".join(str(p) for p in plan.pods_per_node) or "none"),
        ("repeat", str(s.repeat)),
        ("quick", "yes" if s.quick else "no"),
    ]


def _took(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


# ---- terminal table ------------------------------------------------------------------------


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ", break_on_hyphens=False
    ) or [indent]


def _pack(prefix: str, items: list[str]) -> list[str]:
    """`prefix` then the items separated by "; ", breaking lines between items, not inside."""
    lines = [prefix]
    for i, item in enumerate(items):
        text = item + (";" if i < len(items) - 1 else "")
        if len(lines[-1]) + 1 + len(text) > WIDTH and lines[-1].strip() != prefix:
            lines.append("  " + text)
        else:
            lines[-1] += " " + text
    return lines


def _printable(line: str) -> str:
    # evidence and machine facts come from probes: no escape sequences reach the terminal
    return "".join(c if c.isprintable() else "?" for c in line)


def _text_table(head: tuple[str, ...], body: list[Row]) -> list[str]:
    header = Row("", head)
    label_width = max(len(r.label) for r in (header, *body))
    widths = [max(len(r.cells[i]) for r in (header, *body)) for i in range(len(head))]

    def line(r: Row) -> str:
        cells = "  ".join(c.ljust(w) for c, w in zip(r.cells, widths, strict=True))
        return f"{r.label.ljust(label_width)}  {cells}".rstrip()

    return [
        line(header),
        "-" * (label_width + sum(widths) + 2 * len(widths)),
        *(line(r) for r in body),
    ]


def _l7_targets(result: CompareResult) -> list[str]:
    """Where each mode's L7 load went, e.g. "sidecar (HTTP engine) 10.96.0.10:80"."""
    return [
        f"{L7_TITLES[mode]} {', '.join(_mode(result, mode).l7.targets) or NA}" for mode in MODES
    ]


def _path_checks(result: CompareResult) -> list[tuple[str, PathCheck]]:
    """Every path check of the run, L4 then L7 for each mode, with its title."""
    out = []
    for name in MODES:
        mode = _mode(result, name)
        out += [(MODE_TITLES[name], mode.path), (f"L7, {L7_TITLES[name]}", mode.l7.path)]
    if result.floor is not None:
        out.append(("floor relays", result.floor.path))
    return out


def table(result: CompareResult) -> str:
    """The terminal report: header, results table, targets, Istio's figures and path checks."""
    lines = ["ztunnel-py bench compare: no mesh vs sidecar vs ambient"]
    lines.append(f"when: {result.started} (took {_took(result.seconds)})")
    lines += _pack("machine:", [f"{k} {v}" for k, v in result.machine.items()] or ["unknown"])
    lines += _pack("settings:", [f"{k} {v}" for k, v in settings_lines(result)])
    lines.append("")

    lines.append(LEGEND)
    lines += _text_table(_titles(MODE_TITLES), rows(result))
    lines.append("")
    lines.append(FLOOR_TITLE)
    lines += _wrap(FLOOR_NOTE, "")
    lines += _text_table(FLOOR_HEAD, floor_rows(result))
    lines.append("")
    lines.append(L7_TITLE)
    lines += _pack("load to:", _l7_targets(result))
    lines += _text_table(_titles(L7_TITLES), l7_rows(result))
    lines.append("")

    lines.append("targets (printed, not asserted)")
    for t in targets(result):
        lines.append(f"  {t.name}: {t.status}")
        for d in t.detail:
            lines += _wrap(d, "    ")
    lines.append("")

    lines.append(PUBLISHED_TITLE)
    for p in result.published:
        lines += _wrap(f"{p.what}: {p.value}", "  ")
        lines += _wrap(f"conditions: {p.conditions}", "    ")
        lines += _wrap(f"source: {p.source}", "    ")
    lines.append("")

    lines.append("path checks")
    for title, path in _path_checks(result):
        lines.append(f"  {title}: {'ok' if path.ok else 'FAILED'}")
        for e in path.evidence:
            lines += _wrap(e, "    ")
        for problem in path.problems:
            lines += _wrap(f"problem: {problem}", "    ")
    return "\n".join(_printable(line) for line in lines) + "\n"


# ---- JSON ----------------------------------------------------------------------------------


def write_json(result: CompareResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


# ---- PNG -----------------------------------------------------------------------------------


def _errors(figures: list[Figure]) -> list[list[float]] | None:
    """Asymmetric whiskers (median to low, median to high), or None when nothing is repeated."""
    if not any(len(f.values) > 1 for f in figures):
        return None
    return [[f.median - f.low for f in figures], [f.high - f.median for f in figures]]


def _height(figure: Figure) -> float:
    # an unmeasured figure draws no bar (NaN), rather than a bar at zero that looks measured
    return figure.median if figure.values else math.nan


def _label_bars(
    ax: Axes, xs: list[float], figures: list[Figure], labels: list[str], fontsize: int
) -> None:
    """`labels` above the bars (above the whisker); "n/a" where nothing was measured."""
    for x, f, text in zip(xs, figures, labels, strict=True):
        if text or not f.values:
            ax.annotate(
                text if f.values else NA,
                (x, f.high),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=fontsize,
            )


def _bars(ax: Axes, figures: list[Figure], colours: list[str], capsize: int) -> list[float]:
    """One bar per figure at 0, 1, ... (their positions), whiskers for the range."""
    xs: list[float] = list(range(len(figures)))
    ax.bar(xs, [_height(f) for f in figures], yerr=_errors(figures), capsize=capsize, color=colours)
    return xs


def _mode_bars(
    ax: Axes,
    result: CompareResult,
    pick: Callable[[ModeResult], Figure],
    title: str,
    unit: str,
) -> None:
    """One bar per mode, whiskers for the range, the no-mesh median as a dashed line."""
    figures = [pick(_mode(result, name)) for name in MODES]
    xs = _bars(ax, figures, [MODE_COLOURS[m] for m in MODES], capsize=6)
    base = figures[0]
    if base.values:
        ax.axhline(base.median, color=MODE_COLOURS[NONE], linestyle="--", label="no mesh")
        ax.legend(loc="upper right", fontsize=8)
    labels = ["", *(_ratio_text(f, base) for f in figures[1:])]
    _label_bars(ax, xs, figures, labels, fontsize=9)
    ax.set_xticks(xs, [MODE_TITLES[m] for m in MODES])
    # unmeasured (NaN) bars do not count for autoscaling: keep every mode's slot in view
    ax.set_xlim(-0.5, len(MODES) - 0.5)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)


def _latency(
    ax: Axes,
    result: CompareResult,
    pick: Callable[[ModeResult], Latency],
    titles: dict[str, str],
    title: str,
) -> None:
    width = 0.26
    xs = list(range(len(PERCENTILES)))
    base = pick(_mode(result, NONE))
    for i, name in enumerate(MODES):
        figures = [pick(_mode(result, name)).percentile(p) for p in PERCENTILES]
        positions = [x + (i - 1) * width for x in xs]
        ax.bar(
            positions,
            [_height(f) for f in figures],
            width,
            yerr=_errors(figures),
            capsize=3,
            color=MODE_COLOURS[name],
            label=titles[name],
        )
        labels = [
            "" if name == NONE else _delta_text(f, base.percentile(p))
            for p, f in zip(PERCENTILES, figures, strict=True)
        ]
        _label_bars(ax, positions, figures, labels, fontsize=7)
    ax.set_xticks(xs, list(PERCENTILES))
    ax.set_title(f"{title} @ {result.settings.plan.rate} req/s (deltas vs no mesh)")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.margins(y=0.15)


def _cost_lines(
    ax: Axes, result: CompareResult, pick: Callable[[Cost], Figure], title: str, unit: str
) -> None:
    """One line per mesh mode over pods per node; no mesh has no processes, so a zero line."""
    pods_values = result.settings.plan.pods_per_node
    for name in MESH_MODES:
        points = [
            (pods, pick(cost))
            for pods in pods_values
            if (cost := _mode(result, name).cost(pods)) is not None and pick(cost).values
        ]
        if not points:
            continue
        figures = [f for _, f in points]
        ax.errorbar(
            [pods for pods, _ in points],
            [f.median for f in figures],
            yerr=_errors(figures),
            capsize=4,
            marker="o",
            color=MODE_COLOURS[name],
            label=MODE_TITLES[name],
        )
    ax.axhline(0, color=MODE_COLOURS[NONE], linestyle="--", label="no mesh (no processes)")
    if pods_values:
        ax.set_xticks(pods_values, [str(p) for p in pods_values])
    ax.set_title(title)
    ax.set_xlabel("pods per node")
    ax.set_ylabel(unit)
    ax.legend(loc="best", fontsize=8)


def _process_bars(
    ax: Axes,
    result: CompareResult,
    pick: Callable[[ProcessCost], Figure],
    title: str,
    unit: str,
    marks: tuple[tuple[float, str], ...],
) -> None:
    """One bar per process on the L7 path, in its mode's colour; `marks` are dashed reference
    lines (a target, Envoy's figure)."""
    from matplotlib.patches import Patch

    bars = [
        (name, process)
        for name in MESH_MODES
        for process in _mode(result, name).l7.processes
        if pick(process).values
    ]
    figures = [pick(p) for _, p in bars]
    xs = _bars(ax, figures, [MODE_COLOURS[name] for name, _ in bars], capsize=4)
    _label_bars(ax, xs, figures, [_num(f.median) for f in figures], fontsize=8)
    handles: list[Artist] = [
        ax.axhline(value, color="#c62828", linestyle=style, label=label)
        for (value, label), style in zip(marks, ("--", ":"), strict=False)
    ]
    handles += [Patch(color=MODE_COLOURS[name], label=L7_TITLES[name]) for name in MESH_MODES]
    # below the axes: the bars may reach any height
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    ax.set_xticks(xs, [p.name.replace(" ", "\n", 1) for _, p in bars], fontsize=8)
    ax.set_xlim(-0.5, max(len(bars), 1) - 0.5)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.margins(y=0.2)


def _targets_panel(ax: Axes, result: CompareResult) -> None:
    ax.axis("off")
    text = ["targets (printed, not asserted)", ""]
    for t in targets(result):
        text += textwrap.wrap(f"{t.name}: {t.status}", 58, subsequent_indent="  ")
        for d in t.detail:
            text += textwrap.wrap(d, 58, initial_indent="  ", subsequent_indent="    ")
    ax.text(
        0, 1, "\n".join(text), va="top", ha="left", family="monospace", fontsize=8, parse_math=False
    )


def write_png(result: CompareResult, path: Path) -> None:
    """One 1600x1500 PNG with the eight plots (L4 in the first two rows, L7 in the third) and
    the targets, drawn off screen (Agg)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as PlotFigure
    except ImportError as e:
        raise ReportError(
            "the PNG report needs matplotlib: pip install 'ztunnel_py[bench]' "
            "(or run scripts/install.sh)"
        ) from e

    # A bare Figure on an Agg canvas: no pyplot, no global backend, no display needed.
    fig = PlotFigure(figsize=(16, 15), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3)
    _mode_bars(
        axes[0][0],
        result,
        lambda m: m.throughput_gbps,
        "throughput, single iperf3 stream",
        "Gbit/s",
    )
    _latency(axes[0][1], result, lambda m: m.latency_ms, MODE_TITLES, "latency")
    _mode_bars(axes[0][2], result, lambda m: m.connections_per_s, "connection rate", "conn/s")
    _cost_lines(
        axes[1][0],
        result,
        lambda c: c.cpu_s_per_1000_requests,
        "data-plane CPU per 1000 requests",
        "CPU s per 1000 requests",
    )
    _cost_lines(axes[1][1], result, lambda c: c.rss_mib, "data-plane memory (RSS)", "MiB")
    _targets_panel(axes[1][2], result)
    _latency(axes[2][0], result, lambda m: m.l7.latency_ms, L7_TITLES, "L7 latency")
    _process_bars(
        axes[2][1],
        result,
        lambda p: p.cpu_s_per_1000_requests,
        "L7: CPU per 1000 requests, each process on the path",
        "CPU s per 1000 requests",
        (
            (WAYPOINT_CPU_TARGET, "waypoint target"),
            (ENVOY_WAYPOINT_VCPU, "Envoy waypoint (Istio 1.24)"),
        ),
    )
    _process_bars(
        axes[2][2],
        result,
        lambda p: p.rss_mib,
        "L7: memory (RSS) of each process on the path",
        "MiB",
        (
            (WAYPOINT_RSS_TARGET_MB / MB_PER_MIB, "waypoint target (100 MB)"),
            (ENVOY_WAYPOINT_MB / MB_PER_MIB, "Envoy waypoint (60 MB)"),
        ),
    )
    repeats = (
        f", median of {result.settings.repeat} (whiskers: range)"
        if result.settings.repeat > 1
        else ""
    )
    fig.suptitle(f"ztunnel-py bench compare, {result.started}{repeats}", parse_math=False)
    fig.savefig(path, format="png")


# ---- HTML ----------------------------------------------------------------------------------


def methodology(result: CompareResult) -> list[str]:
    """How the figures were measured and what they are worth on this machine, as paragraphs."""
    s, plan = result.settings, result.settings.plan
    return [
        f"Throughput: one iperf3 stream for {plan.throughput_seconds} s from a pod on one node "
        "to a pod on the other node.",
        f"Latency: HTTP/1.1 requests with a {plan.response_bytes}-byte response body, sent open "
        f"loop at a fixed {plan.rate} requests/s over {plan.connections} connections for "
        f"{plan.latency_seconds:g} s. The load generator keeps its schedule and counts each "
        "request's latency from its scheduled send time, so queueing is not hidden "
        "(no coordinated omission).",
        "CPU: user + system time of every data-plane process (the node agents in ambient mode, "
        "the per-pod proxies in sidecar mode), read from /proc before and after the same "
        "open-loop load, per 1000 requests: the vCPU that 1000 requests/s would take. Memory: "
        "the sum of VmRSS of the same processes after the load, and the sum of their PSS "
        "(shared pages such as the interpreter and libraries divided among the processes that "
        "map them, so counted once). The p99 of each cost run shows how the number of pods, "
        "and so of sidecars, affects latency. The control plane is reported apart.",
        f"Connection rate: new TCP connections per second, each carrying one request, over "
        f"{plan.connection_rate_seconds:g} s.",
        f"L7: the same open-loop HTTP/1.1 load ({plan.rate} requests/s over {plan.connections} "
        f"keep-alive connections, {plan.response_bytes}-byte responses, the same warm-up, "
        f"{plan.l7_seconds:g} s counted) to the echo service's VIP, whose requests the HTTP "
        "filter engine handles: in ambient mode a waypoint (Istio's Gateway applied, namespace "
        "apps labelled istio.io/use-waypoint), in sidecar mode the client's sidecar on the "
        "service's http port. The VIP balances each request over the echo pods (one on each "
        "node); without a mesh there is no VIP, so the baseline spreads its connections over the "
        "same pods by pod IP. CPU: user + system time of each process on the path (waypoint and "
        "node agents; the client's and the echo pods' sidecars) per 1000 requests sent, warm-up "
        "included; memory: each one's VmRSS and PSS after the run. A path check proves the "
        "engine handled the requests: its istio_requests_total (reporter waypoint, or source in "
        "the client's sidecar) grew by the requests sent. The L7 run follows the L4 ones on the "
        "smallest testbed, so it leaves their figures alone.",
        "Floor: on the no-mesh testbed, once its own figures are taken, a floor relay takes "
        "each node agent's place: the same BPF capture programs with the pods enrolled as the "
        "agent enrolls them, the same listeners in each pod's network namespace, but plain TCP "
        "between the nodes (a 2-byte header carrying the destination port to the peer relay's "
        "15008) and every byte moved by os.splice through a pipe, never copied into Python; no "
        "TLS, HTTP/2, identity, policy or metrics. The same throughput, latency, connection-rate "
        "and cost runs (at the smallest pods-per-node count) go through it, and a path check "
        "proves they did (the relays' counters and the client pod's capture counters). It is "
        "what any user-space two-hop proxy costs on this machine, so ambient's figures as a "
        "ratio of the floor's travel between machines better than absolute ones.",
        f"Each figure is the median of {s.repeat} repeat(s); with more than one, the range "
        "(low-high) is shown. Mesh figures sit beside the no-mesh baseline of the same run.",
        "Caveats: on a small VM such as the 2-vCPU reference machine, every process shares the "
        "same two vCPUs, the load generator and the iperf3 ends included. Absolute numbers are "
        "therefore lower bounds; the ratios and deltas against the no-mesh baseline are the "
        "portable figures.",
    ]


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { font-family: ui-monospace, monospace; white-space: nowrap; }
th { background: #f2f2f2; }
.met { color: #1a7f37; font-weight: bold; } .not-met { color: #c62828; font-weight: bold; }
.ok { color: #1a7f37; font-weight: bold; } .failed { color: #c62828; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
p.note { color: #555; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _link(url: str) -> str:
    # Only web links become anchors: a source is data, never a javascript: URL.
    if url.startswith(("https://", "http://")):
        return f'<a href="{_e(url)}">{_e(url)}</a>'
    return _e(url)


def _html_table(head: list[str], body: list[list[str]], num_from: int = 1) -> str:
    """`body` cells are already HTML; columns from `num_from` on are set as numbers."""
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for cells in body:
        tds = "".join(
            f'<td class="num">{c}</td>' if i >= num_from else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        out.append(f"<tr>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(result: CompareResult, path: Path, png: Path) -> None:
    """One self-contained page: the PNG inline as a data: URI, inline CSS, no external loads."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ztunnel-py bench compare, {_e(result.started)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>ztunnel-py bench compare: no mesh vs sidecar vs ambient</h1>",
        f"<p>When: {_e(result.started)} (took {_e(_took(result.seconds))})</p>",
        "<h2>Results</h2>",
        f'<p class="note">{_e(LEGEND)}</p>',
        _html_table(
            ["", *(MODE_TITLES[m] for m in MODES)],
            [[_e(r.label), *(_e(c) for c in r.cells)] for r in rows(result)],
        ),
        f"<h2>{_e(FLOOR_TITLE)}</h2>",
        f'<p class="note">{_e(FLOOR_NOTE)}</p>',
        _html_table(
            ["", *FLOOR_HEAD],
            [[_e(r.label), *(_e(c) for c in r.cells)] for r in floor_rows(result)],
        ),
        f"<h2>{_e(L7_TITLE)}</h2>",
        f'<p class="note">load to: {_e("; ".join(_l7_targets(result)))}</p>',
        _html_table(
            ["", *(L7_TITLES[m] for m in MODES)],
            [[_e(r.label), *(_e(c) for c in r.cells)] for r in l7_rows(result)],
        ),
        f'<img alt="plots of the results" src="data:image/png;base64,{image}">',
        "<h2>Targets (printed, not asserted)</h2>",
    ]
    status_class = {MET: "met", NOT_MET: "not-met"}
    target_rows = []
    for t in targets(result):
        cls = status_class.get(t.status)
        status = f'<span class="{cls}">{_e(t.status)}</span>' if cls else _e(t.status)
        target_rows.append([_e(t.name), status, "<br>".join(_e(d) for d in t.detail)])
    parts.append(_html_table(["target", "verdict", "figures"], target_rows, num_from=3))
    parts.append(f"<h2>{_e(PUBLISHED_TITLE)}</h2>")
    parts.append(
        _html_table(
            ["figure", "value", "conditions", "source"],
            [
                [_e(p.what), _e(p.value), _e(p.conditions), _link(p.source)]
                for p in result.published
            ],
            num_from=4,
        )
    )
    parts.append("<h2>Path checks</h2>")
    path_rows = []
    for title, check in _path_checks(result):
        verdict = '<span class="ok">ok</span>' if check.ok else '<span class="failed">FAILED</span>'
        lines = [_e(e) for e in check.evidence] + [f"problem: {_e(p)}" for p in check.problems]
        path_rows.append([_e(title), verdict, "<br>".join(lines)])
    parts.append(_html_table(["mode", "path", "evidence and problems"], path_rows, num_from=3))
    parts.append("<h2>Settings</h2>")
    parts.append(
        _html_table(["setting", "value"], [[_e(k), _e(v)] for k, v in settings_lines(result)], 2)
    )
    parts.append("<h2>Machine</h2>")
    parts.append(
        _html_table(["property", "value"], [[_e(k), _e(v)] for k, v in result.machine.items()], 2)
    )
    parts.append("<h2>Methodology</h2>")
    parts += [f"<p>{_e(p)}</p>" for p in methodology(result)]
    parts.append("</body></html>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def write_report(result: CompareResult, directory: Path) -> dict[str, Path]:
    """results.json, report.png and report.html in `directory` (created); their paths by kind."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / "results.json",
        "png": directory / "report.png",
        "html": directory / "report.html",
    }
    write_json(result, paths["json"])
    write_png(result, paths["png"])
    write_html(result, paths["html"], paths["png"])
    return paths
