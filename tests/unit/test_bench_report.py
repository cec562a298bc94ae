"""The `bench compare` report: table figures against the baseline, targets, PNG, HTML and JSON."""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ztunnel_py.bench.report import (
    FLOOR_TITLE,
    MET,
    NA,
    ReportError,
    table,
    targets,
    write_html,
    write_json,
    write_png,
    write_report,
)
from ztunnel_py.bench.results import (
    AMBIENT,
    FLOOR,
    ISTIO_PUBLISHED,
    NONE,
    SIDECAR,
    CompareResult,
    Cost,
    Figure,
    L7Result,
    Latency,
    ModeResult,
    PathCheck,
    Plan,
    ProcessCost,
    Settings,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PODS = [2, 8, 32]


def fig(*values: float) -> Figure:
    return Figure(list(values))


def spread(median: float, repeat: int) -> Figure:
    """`repeat` values around `median` (10% either side), whose median is `median`."""
    if repeat == 1:
        return fig(median)
    return fig(median * 0.9, median, median * 1.1)


def latency(repeat: int, p50: float, p90: float, p99: float, rps: float = 999.0) -> Latency:
    return Latency(
        p50=spread(p50, repeat),
        p90=spread(p90, repeat),
        p99=spread(p99, repeat),
        achieved_rps=spread(rps, repeat),
        errors=fig(*[0.0] * repeat),
    )


def l7(
    repeat: int,
    targets: list[str],
    p50: float,
    p99: float,
    processes: dict[str, tuple[str, float, float]],
    rps: float = 999.0,
) -> L7Result:
    """An L7 section: `processes` maps each name to (role, CPU s/1000 requests, RSS MiB)."""
    return L7Result(
        targets=targets,
        latency_ms=latency(repeat, p50, (p50 + p99) / 2, p99, rps),
        processes=[
            ProcessCost(
                name,
                role,
                cpu_s_per_1000_requests=spread(cpu, repeat),
                system_s_per_1000_requests=spread(cpu * 0.3, repeat),
                rss_mib=spread(rss, repeat),
                pss_mib=spread(rss * 0.7, repeat),
            )
            for name, (role, cpu, rss) in processes.items()
        ],
        cpu_s_per_1000_requests=spread(sum(cpu for _, cpu, _ in processes.values()), repeat)
        if processes
        else Figure(),
        path=PathCheck(ok=True, evidence=[f"{len(processes)} processes counted every request"]),
    )


def mode(
    name: str,
    repeat: int,
    gbps: float,
    p50: float,
    p90: float,
    p99: float,
    conns: float,
    cost: dict[int, tuple[float, float, int]],
    path: PathCheck,
    l7: L7Result,
) -> ModeResult:
    return ModeResult(
        mode=name,
        throughput_gbps=spread(gbps, repeat),
        latency_ms=latency(repeat, p50, p90, p99),
        connections_per_s=spread(conns, repeat),
        costs=[
            Cost(
                pods_per_node=pods,
                cpu_s_per_1000_requests=spread(cpu, repeat),
                system_s_per_1000_requests=spread(cpu * 0.4, repeat),
                rss_mib=spread(rss, repeat),
                controlplane_rss_mib=spread(55.0, repeat),
                processes=procs,
            )
            for pods, (cpu, rss, procs) in cost.items()
        ],
        path=path,
        l7=l7,
    )


VIP = ["10.96.0.10:80"]


def compare(repeat: int = 1) -> CompareResult:
    """A realistic run: ambient at 0.25x throughput, ambient p99 below sidecar's, sidecar memory
    growing with pods, and a failed path check in sidecar mode."""
    return CompareResult(
        settings=Settings(
            plan=Plan(
                throughput_seconds=10,
                latency_seconds=30.0,
                warmup_seconds=2.0,
                cost_seconds=20.0,
                connection_rate_seconds=10.0,
                l7_seconds=30.0,
                rate=1000,
                connections=16,
                response_bytes=1024,
                pods_per_node=tuple(PODS),
            ),
            repeat=repeat,
            quick=False,
        ),
        machine={"cpus": "2", "kernel": "6.18.44", "python": "3.11.7", "cpu": "AMD EPYC"},
        modes={
            NONE: mode(
                NONE,
                repeat,
                12.0,
                0.50,
                0.80,
                1.20,
                2000.0,
                {},
                PathCheck(ok=True, evidence=["agents carried 0 connections"]),
                l7(repeat, ["10.244.1.10:8080", "10.244.2.10:8080"], 0.40, 1.00, {}),
            ),
            SIDECAR: mode(
                SIDECAR,
                repeat,
                2.4,
                1.40,
                2.10,
                4.70,
                400.0,
                {2: (0.41, 150.0, 4), 8: (0.43, 600.0, 16), 32: (0.45, 2400.0, 64)},
                PathCheck(
                    ok=False,
                    evidence=["client sidecar carried 12 connections"],
                    problems=["server sidecar carried 0 connections"],
                ),
                l7(
                    repeat,
                    VIP,
                    1.50,
                    2.10,
                    {
                        "sidecar web-1": ("sidecar", 0.30, 70.0),
                        "sidecar echo-1": ("sidecar", 0.10, 60.0),
                        "sidecar echo-2": ("sidecar", 0.12, 61.0),
                    },
                ),
            ),
            AMBIENT: mode(
                AMBIENT,
                repeat,
                3.0,
                1.10,
                1.60,
                2.41,
                800.0,
                {2: (0.13, 70.0, 2), 8: (0.14, 72.5, 2), 32: (0.15, 80.0, 2)},
                PathCheck(ok=True, evidence=["node1 agent carried 12 connections"]),
                l7(
                    repeat,
                    VIP,
                    1.90,
                    2.30,
                    {
                        "waypoint": ("waypoint", 0.45, 90.0),
                        "agent node1": ("agent", 0.20, 75.0),
                        "agent node2": ("agent", 0.08, 74.0),
                    },
                ),
            ),
        },
        published=[replace(p) for p in ISTIO_PUBLISHED],
        started="2026-11-26T10:00:00Z",
        seconds=754.0,
        floor=mode(
            FLOOR,
            repeat,
            6.0,
            0.60,
            0.90,
            1.40,
            1500.0,
            {2: (0.04, 30.0, 2)},
            PathCheck(ok=True, evidence=["floor relay of node1 counted 12 connections"]),
            L7Result(),
        ),
    )


def row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(label))


def cells(text: str, label: str) -> list[str]:
    """A table row's cells: columns are separated by two or more spaces."""
    return re.split(r"\s{2,}", row(text, label).strip())[1:]


def test_table_shows_every_mesh_figure_against_the_no_mesh_baseline() -> None:
    text = table(compare())
    assert cells(text, "throughput") == ["12.0", "2.40 (0.20x)", "3.00 (0.25x)"]
    assert cells(text, "latency p50 @ 1000 req/s") == ["0.50", "1.40 (+0.90)", "1.10 (+0.60)"]
    assert cells(text, "latency p99 @ 1000 req/s") == ["1.20", "4.70 (+3.50)", "2.41 (+1.21)"]
    assert cells(text, "connection rate") == ["2000", "400 (0.20x)", "800 (0.40x)"]
    # costs are absolute; no mesh has no data-plane processes
    assert cells(text, "CPU s/1000 req @ 32 pods/node") == ["-", "0.450", "0.150"]
    # the kernel's part of it, and its share
    assert cells(text, "  of which system @ 32 pods/node") == ["-", "0.180 (40%)", "0.060 (40%)"]
    assert cells(text, "data-plane RSS MiB @ 2 pods/node") == ["-", "150 (4 proc)", "70.0 (2 proc)"]
    assert cells(text, "data-plane RSS MiB @ 32 pods/node") == [
        "-",
        "2400 (64 proc)",
        "80.0 (2 proc)",
    ]
    assert "[" not in row(text, "throughput")  # one repeat: no ranges
    lines = text.splitlines()
    assert "when: 2026-11-26T10:00:00Z (took 12 min 34 s)" in lines
    machine = lines.index("machine: cpus 2; kernel 6.18.44; python 3.11.7; cpu AMD EPYC")
    settings = " ".join(lines[machine + 1 : lines.index("")])
    assert settings.startswith("settings: ")
    for expected in (
        "load 1000 req/s open loop over 16 connections",
        "throughput run 10 s;",
        "latency run 30 s;",
        "pods per node 2, 8, 32;",
        "repeat 1;",
        "quick no",
    ):
        assert expected in settings, settings
    assert all(len(line) <= 110 for line in lines), max(lines, key=len)
    assert "\x1b" not in text


def test_floor_table_puts_ambient_as_a_ratio_of_the_floor() -> None:
    text = table(compare(repeat=3))
    floor = text[text.index(FLOOR_TITLE) :]
    header = next(line for line in floor.splitlines() if line.lstrip().startswith("no mesh"))
    assert re.split(r"\s{2,}", header.strip()) == [
        "no mesh",
        "floor",
        "sidecar",
        "ambient",
        "ambient / floor",
    ]
    assert cells(floor, "throughput") == ["12.0", "6.00", "2.40", "3.00", "0.50x"]
    # latency: the delay each adds over no mesh, and ambient's as a multiple of the floor's
    assert cells(floor, "latency p50") == ["0.50", "+0.10", "+0.90", "+0.60", "6.00x"]
    assert cells(floor, "latency p99") == ["1.20", "+0.20", "+3.50", "+1.21", "6.05x"]
    assert cells(floor, "connection rate") == ["2000", "1500", "400", "800", "0.53x"]
    # CPU per proxy on the path (each mode's total / 2), with its user/system split
    assert cells(floor, "CPU s/1000 req per proxy @ 2") == ["-", "0.020", "0.205", "0.065", "3.25x"]
    assert cells(floor, "  of which user") == ["-", "0.012", "0.123", "0.039", "3.25x"]
    assert cells(floor, "  of which system") == ["-", "0.008", "0.082", "0.026", "3.25x"]
    assert cells(floor, "RSS MiB per process @ 2") == ["-", "15.0", "37.5", "35.0", "2.33x"]
    # a run without the floor (an older results.json) shows n/a in its column and the ratio
    result = compare()
    result.floor = None
    text = table(result)
    assert cells(text[text.index(FLOOR_TITLE) :], "throughput") == ["12.0", NA, "2.40", "3.00", NA]


def test_repeated_runs_show_median_and_range() -> None:
    text = table(compare(repeat=3))
    assert cells(text, "throughput") == [
        "12.0 [10.8-13.2]",
        "2.40 [2.16-2.64] (0.20x)",
        "3.00 [2.70-3.30] (0.25x)",
    ]
    assert cells(text, "latency p99")[2] == "2.41 [2.17-2.65] (+1.21)"
    assert cells(text, "data-plane RSS MiB @ 32")[1] == "2400 [2160-2640] (64 proc)"
    assert "repeat 3;" in text
    assert all(len(line) <= 110 for line in text.splitlines()), max(text.splitlines(), key=len)


def test_targets_report_met_and_not_met_with_their_numbers() -> None:
    result = compare()
    verdicts = {t.name: t for t in targets(result)}
    throughput = verdicts["ambient throughput >= 0.25x no mesh"]
    assert throughput.status == MET and "0.25x" in throughput.detail[0]
    assert verdicts["ambient p99 below sidecar p99 @ 1000 req/s"].status == MET
    assert verdicts["ambient memory @ 32 pods/node below sidecar"].status == MET
    cpu = verdicts["ambient CPU per 1000 req/s vs Istio's 0.06 vCPU per ztunnel"]
    assert (
        cpu.detail[0]
        == "ours: 0.130 / 0.140 / 0.150 vCPU at 2 / 8 / 32 pods/node, summed over the agents"
    )
    assert "two agents are on the path" in cpu.detail[1]
    assert "~0.065 / 0.070 / 0.075; Istio: 0.06 vCPU" in cpu.detail[1]

    result.modes[AMBIENT].throughput_gbps = fig(2.9)
    result.modes[AMBIENT].latency_ms.p99 = fig(5.0)
    result.modes[AMBIENT].costs[-1].rss_mib = fig(3000.0)
    text = table(result)
    assert "  ambient throughput >= 0.25x no mesh: not met\n    0.24x: 2.90 of 12.0 Gbit/s" in text
    assert "ambient p99 below sidecar p99 @ 1000 req/s: not met" in text
    assert "ambient 5.00 ms, sidecar 4.70 ms" in text
    assert "ambient memory @ 32 pods/node below sidecar: not met" in text


def test_l7_table_shows_each_process_on_the_path_and_latency_against_no_mesh() -> None:
    text = table(compare())
    l7 = text.split("L7: HTTP/1.1 to the echo service through the HTTP filter engine\n")[1]
    assert l7.startswith(
        "load to: no mesh 10.244.1.10:8080, 10.244.2.10:8080; sidecar (HTTP engine) "
        "10.96.0.10:80;\n  ambient + waypoint 10.96.0.10:80\n"
    )
    assert cells(l7, "latency p99 @ 1000 req/s") == ["1.00", "2.10 (+1.10)", "2.30 (+1.30)"]
    assert cells(l7, "CPU s/1000 req, sidecar web-1") == ["-", "0.300", "-"]
    assert cells(l7, "CPU s/1000 req, waypoint") == ["-", "-", "0.450"]
    assert cells(l7, "  of which system, waypoint") == ["-", "-", "0.135 (30%)"]
    assert cells(l7, "CPU s/1000 req, agent node2") == ["-", "-", "0.080"]
    assert cells(l7, "CPU s/1000 req, the whole path") == ["-", "0.520", "0.730"]
    assert cells(l7, "RSS MiB, waypoint") == ["-", "-", "90.0"]
    assert cells(l7, "PSS MiB, sidecar echo-2") == ["-", "42.7", "-"]
    # the L4 table above is unchanged
    assert cells(text, "latency p99 @ 1000 req/s") == ["1.20", "4.70 (+3.50)", "2.41 (+1.21)"]


def test_l7_targets_compare_the_waypoint_with_its_targets_and_envoy() -> None:
    result = compare()
    verdicts = {t.name: t for t in targets(result)}
    cpu = verdicts["L7: waypoint CPU <= 0.5 s per 1000 requests (vCPU at 1000 req/s)"]
    assert cpu.status == MET
    assert cpu.detail[0] == "waypoint 0.450: 0.90x the target, 1.80x Envoy's ~0.25 vCPU"
    assert cpu.detail[1] == (
        "whole path: ambient + waypoint 0.730 (waypoint and agents), "
        "sidecar mode 0.520 (client and echo sidecars)"
    )
    memory = verdicts["L7: waypoint RSS <= 100 MB"]
    assert memory.status == MET
    assert memory.detail[0].startswith("waypoint 94 MB (90.0 MiB RSS, 63.0 MiB PSS): 0.94x")
    assert memory.detail[1] == "sidecars on the path (3): 70.0 / 60.0 / 61.0 MiB RSS each"
    p99 = verdicts["L7: ambient + waypoint p99 <= no mesh + 1.5 ms @ 1000 req/s"]
    assert p99.status == MET
    assert p99.detail == (
        "ambient + waypoint 2.30 ms, no mesh 1.00 ms: +1.30 ms, 0.87x the budget",
        "sidecar (HTTP engine) 2.10 ms: +1.10 ms",
    )

    # a saturated waypoint: every target missed, and the table says why
    result.modes[AMBIENT].l7 = l7(
        1,
        VIP,
        1846.0,
        2427.0,
        {"waypoint": ("waypoint", 1.239, 105.0), "agent node1": ("agent", 0.3, 80.0)},
        rps=520.0,
    )
    result.modes[AMBIENT].l7.latency_ms.errors = fig(187.0)
    text = table(result)
    assert "L7: waypoint CPU <= 0.5 s per 1000 requests (vCPU at 1000 req/s): not met" in text
    assert "waypoint 1.239: 2.48x the target, 4.96x Envoy's ~0.25 vCPU" in text
    assert "the path carried only 520 of the 1000 req/s offered: it is saturated" in text
    assert "187 requests failed or timed out" in text
    assert "L7: waypoint RSS <= 100 MB: not met\n    waypoint 110 MB (105 MiB RSS" in text
    assert "+2426 ms, 1617x the budget" in text
    assert all(len(line) <= 110 for line in text.splitlines()), max(text.splitlines(), key=len)


def test_published_figures_and_path_checks_are_printed() -> None:
    text = table(compare())
    published = text.split("Istio's published figures (other hardware, shown for context, ")[1]
    assert "ztunnel CPU and memory: 0.06 vCPU, 12 MB per ztunnel" in published
    assert "conditions: Istio 1.24, 1000 HTTP rps, 1 KB payload" in published
    assert "source: https://github.com/istio/ztunnel/issues/1174" in published
    checks = text.split("path checks\n")[1]
    assert "  no mesh: ok\n    agents carried 0 connections" in checks
    assert "  sidecar: FAILED\n" in checks
    assert "problem: server sidecar carried 0 connections" in checks
    assert "  L7, ambient + waypoint: ok\n    3 processes counted every request" in checks
    assert "  L7, no mesh: ok\n" in checks


def test_probe_text_cannot_send_escape_sequences_to_the_terminal() -> None:
    result = compare()
    result.modes[AMBIENT].path.problems.append("agent said \x1b[31mred\x1b[0m\x07")
    result.machine["kernel"] = "6.18\r\x1b[2J"
    text = table(result)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "problem: agent said ?[31mred?[0m?" in text


def test_zero_baseline_missing_cost_and_empty_figures_show_na() -> None:
    result = compare()
    result.modes[NONE].throughput_gbps = fig(0.0)
    result.modes[NONE].connections_per_s = Figure()
    del result.modes[SIDECAR].costs[1]  # no entry for 8 pods per node
    result.modes[AMBIENT].latency_ms.p90 = Figure()
    text = table(result)
    assert cells(text, "throughput") == ["0.00", "2.40 (n/a)", "3.00 (n/a)"]
    assert cells(text, "connection rate") == [NA, "400 (n/a)", "800 (n/a)"]
    assert cells(text, "CPU s/1000 req @ 8 pods/node") == ["-", NA, "0.140"]
    result.modes[AMBIENT].costs[0].system_s_per_1000_requests = Figure()  # an older results.json
    assert cells(table(result), "  of which system @ 2 pods/node") == ["-", "0.164 (40%)", NA]
    assert cells(text, "latency p90")[2] == NA
    assert "ambient throughput >= 0.25x no mesh: n/a" in text


def test_a_run_with_nothing_measured_still_renders(tmp_path: Path) -> None:
    result = compare()
    result.modes = {NONE: ModeResult(mode=NONE)}
    result.settings = replace(result.settings, plan=replace(result.settings.plan, pods_per_node=()))
    result.published = []
    result.machine = {}
    text = table(result)
    assert cells(text, "throughput") == [NA, NA, NA]
    assert all(t.status == NA for t in targets(result))
    assert "  ambient: FAILED" in text
    paths = write_report(result, tmp_path / "empty")
    assert paths["png"].read_bytes().startswith(PNG_SIGNATURE)
    assert "data:image/png;base64," in paths["html"].read_text()


def hostile() -> CompareResult:
    """A repeated run whose text carries markup, as a broken or malicious probe could return."""
    result = compare(repeat=3)
    result.modes[SIDECAR].path.problems.append("<script>alert('x')</script> & more")
    result.machine["note"] = '"quoted" <b>bold</b>'
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(hostile(), tmp_path_factory.mktemp("report") / "out")


def test_png_is_a_real_image_of_reasonable_size(report: dict[str, Path]) -> None:
    data = report["png"].read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 20_000 < len(data) < 1_000_000
    # IHDR: width and height, big-endian, right after the signature and chunk header
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1600, 1500)


def test_html_is_self_contained_and_escaped(report: dict[str, Path]) -> None:
    page = report["html"].read_text()
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1)) == report["png"].read_bytes()
    # nothing is loaded from elsewhere: no src/href to http(s) except links to sources
    assert not re.search(r"""src\s*=\s*["']?https?:""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    links = re.findall(r'<a href="([^"]+)"', page)
    assert "https://github.com/istio/ztunnel/issues/1174" in links
    assert all(link.startswith("https://") for link in links)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "&quot;quoted&quot; &lt;b&gt;bold&lt;/b&gt;" in page
    # the same figures as the table, and the rest of the report
    assert "2.40 [2.16-2.64] (0.20x)" in page
    assert "2.41 [2.17-2.65] (+1.21)" in page
    assert "FAILED" in page and "not comparable one-to-one" in page
    assert "Istio 1.24, 1000 HTTP rps, 1 KB payload" in page
    assert "coordinated omission" in page and "VmRSS" in page and "lower bounds" in page
    assert "<h2>L7: HTTP/1.1 to the echo service through the HTTP filter engine</h2>" in page
    assert "<td>CPU s/1000 req, waypoint</td>" in page and "L7, ambient + waypoint" in page
    assert "istio.io/use-waypoint" in page
    assert '<span class="met">met</span>' in page


def test_html_turns_only_web_sources_into_links(tmp_path: Path) -> None:
    result = compare()
    result.published[0] = replace(result.published[0], source="javascript:alert(1)")
    png = tmp_path / "p.png"
    png.write_bytes(PNG_SIGNATURE)
    write_html(result, tmp_path / "r.html", png)
    page = (tmp_path / "r.html").read_text()
    assert 'href="javascript' not in page and "javascript:alert(1)" in page


def test_json_round_trips_to_the_same_table(report: dict[str, Path], tmp_path: Path) -> None:
    loaded = CompareResult.from_dict(json.loads(report["json"].read_text()))
    assert loaded.modes[SIDECAR].path.problems[-1].startswith("<script>")
    again = tmp_path / "again.json"
    write_json(loaded, again)
    assert json.loads(again.read_text()) == json.loads(report["json"].read_text())
    assert table(CompareResult.from_dict(json.loads(again.read_text()))) == table(loaded)
    assert table(loaded) == table(hostile())


def test_table_and_json_work_without_matplotlib_and_png_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = compare()
    assert "0.25x" in table(result)
    write_json(result, tmp_path / "r.json")
    with pytest.raises(ReportError, match=r"pip install 'ztunnel_py\[bench\]'"):
        write_png(result, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()
