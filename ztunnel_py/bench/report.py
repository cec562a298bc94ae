"""The report of `ztunnel-py bench compare`: terminal table, JSON, PNG plots and an HTML page.

Everything here renders a `CompareResult`; nothing measures. The table's rows and the targets are
computed once (`rows`, `targets`) and drawn twice, as plain text and as HTML, so the two never
disagree. Every mesh figure is shown beside the no-mesh baseline of the same run: throughput and
connection rate as a ratio, latency as a delta in ms, costs absolute (no mesh runs no mesh
processes). matplotlib is imported only by `write_png`, so the table and the JSON work without the
`bench` extra.
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
    MODES,
    NONE,
    PERCENTILES,
    SIDECAR,
    CompareResult,
    Cost,
    Figure,
    ModeResult,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MODE_TITLES = {NONE: "no mesh", SIDECAR: "sidecar", AMBIENT: "ambient"}
MODE_COLOURS = {NONE: "#8c8c8c", SIDECAR: "#e07b28", AMBIENT: "#2b6cb0"}
MESH_MODES = (SIDECAR, AMBIENT)
NA = "n/a"
# Costs of the no-mesh run: it has no data-plane processes to measure.
NO_PROCESSES = "-"
WIDTH = 110
THROUGHPUT_TARGET = 0.25
ISTIO_ZTUNNEL_VCPU = 0.06

MET = "met"
NOT_MET = "not met"
INFO = "info"

PUBLISHED_TITLE = (
    "Istio's published figures (other hardware, shown for context, not comparable one-to-one)"
)
LEGEND = "cells: median [low-high over the repeats] (vs no mesh of this run: ratio, or delta in ms)"


class ReportError(Exception):
    """The report cannot be written (a missing optional dependency)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table: a label and one cell per mode, in `MODES` order."""

    label: str
    cells: tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets with its verdict; printed, never asserted."""

    name: str
    status: str  # MET, NOT_MET, NA or INFO
    detail: tuple[str, ...]


# ---- numbers -------------------------------------------------------------------------------


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


def _percentile(name: str) -> Callable[[ModeResult], Figure]:
    return lambda m: m.latency_ms.percentile(name)


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


def targets(result: CompareResult) -> list[Target]:
    """The issue's targets with their verdicts against this run."""
    return [
        _throughput_target(result),
        _latency_target(result),
        _memory_target(result),
        _cpu_target(result),
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


def table(result: CompareResult) -> str:
    """The terminal report: header, results table, targets, Istio's figures and path checks."""
    lines = ["ztunnel-py bench compare: no mesh vs sidecar vs ambient"]
    lines.append(f"when: {result.started} (took {_took(result.seconds)})")
    lines += _pack("machine:", [f"{k} {v}" for k, v in result.machine.items()] or ["unknown"])
    lines += _pack("settings:", [f"{k} {v}" for k, v in settings_lines(result)])
    lines.append("")

    body = rows(result)
    header = Row("", (MODE_TITLES[NONE], MODE_TITLES[SIDECAR], MODE_TITLES[AMBIENT]))
    label_width = max(len(r.label) for r in (header, *body))
    widths = [max(len(r.cells[i]) for r in (header, *body)) for i in range(3)]

    def line(r: Row) -> str:
        cells = "  ".join(c.ljust(w) for c, w in zip(r.cells, widths, strict=True))
        return f"{r.label.ljust(label_width)}  {cells}".rstrip()

    lines.append(LEGEND)
    lines.append(line(header))
    lines.append("-" * (label_width + sum(widths) + 2 * len(widths)))
    lines += [line(r) for r in body]
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
    for name in MODES:
        path = _mode(result, name).path
        lines.append(f"  {MODE_TITLES[name]}: {'ok' if path.ok else 'FAILED'}")
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


def _mode_bars(
    ax: Axes,
    result: CompareResult,
    pick: Callable[[ModeResult], Figure],
    title: str,
    unit: str,
) -> None:
    """One bar per mode, whiskers for the range, the no-mesh median as a dashed line."""
    figures = [pick(_mode(result, name)) for name in MODES]
    xs: list[float] = list(range(len(MODES)))
    ax.bar(
        xs,
        [_height(f) for f in figures],
        yerr=_errors(figures),
        capsize=6,
        color=[MODE_COLOURS[m] for m in MODES],
    )
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


def _latency(ax: Axes, result: CompareResult) -> None:
    width = 0.26
    xs = list(range(len(PERCENTILES)))
    base = _mode(result, NONE).latency_ms
    for i, name in enumerate(MODES):
        figures = [_mode(result, name).latency_ms.percentile(p) for p in PERCENTILES]
        positions = [x + (i - 1) * width for x in xs]
        ax.bar(
            positions,
            [_height(f) for f in figures],
            width,
            yerr=_errors(figures),
            capsize=3,
            color=MODE_COLOURS[name],
            label=MODE_TITLES[name],
        )
        labels = [
            "" if name == NONE else _delta_text(f, base.percentile(p))
            for p, f in zip(PERCENTILES, figures, strict=True)
        ]
        _label_bars(ax, positions, figures, labels, fontsize=7)
    ax.set_xticks(xs, list(PERCENTILES))
    ax.set_title(f"latency @ {result.settings.plan.rate} req/s (deltas vs no mesh)")
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
    """One 1600x1000 PNG with the five plots and the targets, drawn off screen (Agg)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as PlotFigure
    except ImportError as e:
        raise ReportError(
            "the PNG report needs matplotlib: pip install 'ztunnel_py[bench]' "
            "(or run scripts/install.sh)"
        ) from e

    # A bare Figure on an Agg canvas: no pyplot, no global backend, no display needed.
    fig = PlotFigure(figsize=(16, 10), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    _mode_bars(
        axes[0][0],
        result,
        lambda m: m.throughput_gbps,
        "throughput, single iperf3 stream",
        "Gbit/s",
    )
    _latency(axes[0][1], result)
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
    for name in MODES:
        check = _mode(result, name).path
        verdict = '<span class="ok">ok</span>' if check.ok else '<span class="failed">FAILED</span>'
        lines = [_e(e) for e in check.evidence] + [f"problem: {_e(p)}" for p in check.problems]
        path_rows.append([_e(MODE_TITLES[name]), verdict, "<br>".join(lines)])
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
