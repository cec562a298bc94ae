"""Istio metric families and labels as Prometheus text, the access log, and log formatting."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ztunnel_py.admin import serve_metrics
from ztunnel_py.model import Identity, NetworkAddress, Service, Workload
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.redirect.maps import PodCounters
from ztunnel_py.telemetry import accesslog
from ztunnel_py.telemetry.labels import (
    DENY,
    DESTINATION,
    SOURCE,
    TRAFFIC_LABEL_NAMES,
    TrafficLabels,
)
from ztunnel_py.telemetry.logs import (
    LevelSpecError,
    LogLevels,
    logger_name,
    parse_level_spec,
    setup_logging,
)
from ztunnel_py.telemetry.metrics import CaptureMetrics, Metrics

CLIENT = Workload(
    uid="u-client",
    name="client-7d9f-abcde",
    namespace="ns-a",
    addresses=(ipaddress.ip_address("10.0.0.1"),),
    service_account="client",
    canonical_name="client",
    canonical_revision="v1",
    workload_name="client",
)
SERVER = Workload(
    uid="u-server",
    name="server-5c6b-fghij",
    namespace="ns-b",
    addresses=(ipaddress.ip_address("10.0.0.2"),),
    service_account="server",
    canonical_name="server",
    canonical_revision="v2",
    workload_name="server",
    cluster_id="c1",
)
SVC = Service(
    "server", "ns-b", "server.ns-b.svc.cluster.local", (NetworkAddress.parse("/10.96.0.2"),)
)
CLIENT_ID = Identity("cluster.local", "ns-a", "client")

FAMILIES = {
    "istio_tcp_connections_opened": ("counter", TRAFFIC_LABEL_NAMES),
    "istio_tcp_connections_closed": ("counter", TRAFFIC_LABEL_NAMES),
    "istio_tcp_received_bytes": ("counter", TRAFFIC_LABEL_NAMES),
    "istio_tcp_sent_bytes": ("counter", TRAFFIC_LABEL_NAMES),
    "istio_tcp_connections_failed": ("counter", TRAFFIC_LABEL_NAMES),
    "istio_tcp_sockets_open": ("gauge", ("reporter",)),
    "istio_build": ("gauge", ("component", "tag")),
    "workload_manager_active_proxy_count": ("gauge", ()),
    "workload_manager_pending_proxy_count": ("gauge", ()),
    "workload_manager_proxies_started": ("counter", ()),
    "workload_manager_proxies_stopped": ("counter", ()),
}


@contextlib.contextmanager
def records_made() -> Iterator[list[logging.LogRecord]]:
    """Every `LogRecord` made while the block runs (the direct access-log path makes none)."""
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    logging.setLogRecordFactory(counting)
    try:
        yield made
    finally:
        logging.setLogRecordFactory(factory)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def fields(record: logging.LogRecord) -> dict[str, object]:
    value = record.__dict__["fields"]
    assert isinstance(value, dict)
    return value


def test_families_names_types_and_label_order(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry, tag="1.0.0")
    conn = metrics.open(TrafficLabels.build(SOURCE), "10.0.0.1:1234", "10.0.0.2:80")
    conn.add_bytes(1, 1)
    conn.close(DENY)
    text = generate_latest(registry).decode()
    for name, (kind, labels) in FAMILIES.items():
        series = name + ("_total" if kind == "counter" else "")
        assert f"# TYPE {series} {kind}\n" in text
        lines = [line for line in text.splitlines() if line.startswith(series + "{")]
        if labels:
            assert lines, name
            for line in lines:  # prometheus_client writes labels sorted by name
                assert re.findall(r'(\w+)="', line) == sorted(labels), line
        else:
            assert f"{series} " in text
    assert "_created" not in text
    assert "process_open_fds" in text and "process_max_fds" in text
    assert 'istio_build{component="ztunnel",tag="1.0.0"} 1.0' in text


def test_traffic_labels_are_istios_in_order() -> None:
    assert TRAFFIC_LABEL_NAMES == (
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
    )


def test_labels_from_workloads_and_identity() -> None:
    outbound = TrafficLabels.build(
        SOURCE,
        source=CLIENT,
        source_identity=CLIENT.identity,
        destination=SERVER,
        destination_service=SVC,
        mtls=True,
    )
    values = dict(zip(TRAFFIC_LABEL_NAMES, outbound.values(), strict=True))
    assert values == {
        "reporter": "source",
        "source_workload": "client",
        "source_canonical_service": "client",
        "source_canonical_revision": "v1",
        "source_workload_namespace": "ns-a",
        # the identity the agent presents for the source over HBONE, as ztunnel reports it
        "source_principal": "spiffe://cluster.local/ns/ns-a/sa/client",
        "source_app": "client",
        "source_version": "v1",
        "source_cluster": "Kubernetes",
        "destination_service": "server.ns-b.svc.cluster.local",
        "destination_service_namespace": "ns-b",
        "destination_service_name": "server",
        "destination_workload": "server",
        "destination_canonical_service": "server",
        "destination_canonical_revision": "v2",
        "destination_workload_namespace": "ns-b",
        "destination_principal": "spiffe://cluster.local/ns/ns-b/sa/server",
        "destination_app": "server",
        "destination_version": "v2",
        "destination_cluster": "c1",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    inbound = TrafficLabels.build(DESTINATION, source_identity=CLIENT_ID, destination=SERVER)
    assert inbound.source_principal == "spiffe://cluster.local/ns/ns-a/sa/client"
    assert inbound.source_workload_namespace == "ns-a"
    assert inbound.source_workload == "unknown"
    assert inbound.connection_security_policy == "unknown"
    assert TrafficLabels.build(DESTINATION).values().count("unknown") == 20
    with pytest.raises(ValueError, match="reporter"):
        TrafficLabels.build("sideways")


def test_bytes_swapped_for_source_reporter(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics(registry, process_metrics=False)
    caplog.set_level(logging.INFO, logger="access")
    out = metrics.open(TrafficLabels.build(SOURCE, source=CLIENT), "10.0.0.1:5000", "10.0.0.2:80")
    out.add_bytes(sent=100, recv=7)  # the client's request went out, a small reply came back
    out.close()
    inb = metrics.open(TrafficLabels.build(DESTINATION, destination=SERVER), "a:1", "b:2")
    inb.add_bytes(sent=7, recv=100)  # the request came in, the reply went back
    inb.close()
    s = samples(registry)
    by_reporter = {
        (name, labels["reporter"]): value
        for name in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total")
        for labels, value in s[name]
    }
    # Istio: received = request bytes, sent = response bytes, whoever reports
    assert by_reporter == {
        ("istio_tcp_received_bytes_total", "source"): 100,
        ("istio_tcp_received_bytes_total", "destination"): 100,
        ("istio_tcp_sent_bytes_total", "source"): 7,
        ("istio_tcp_sent_bytes_total", "destination"): 7,
    }
    # the access log shows each proxy's own view, unswapped
    first, second = (r for r in caplog.records if r.name == "access")
    assert (fields(first)["bytes_sent"], fields(first)["bytes_recv"]) == (100, 7)
    assert (fields(second)["bytes_sent"], fields(second)["bytes_recv"]) == (7, 100)


def test_close_flags_failed_counter_and_open_sockets(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry, process_metrics=False)
    labels = TrafficLabels.build(DESTINATION, destination=SERVER)
    ok = metrics.open(labels, "a:1", "b:2")
    denied = metrics.open(labels, "a:1", "b:2")
    s = samples(registry)
    assert s["istio_tcp_connections_opened_total"][0][1] == 2
    assert s["istio_tcp_sockets_open"] == [({"reporter": "destination"}, 2)]
    ok.close()
    denied.close(DENY, error="explicitly denied by: ns-b/deny")
    denied.close()  # idempotent
    with pytest.raises(ValueError, match="response flags"):
        metrics.open(labels, "a:1", "b:2").close("MAYBE")
    s = samples(registry)
    closed = {lab["response_flags"]: v for lab, v in s["istio_tcp_connections_closed_total"]}
    assert closed == {"-": 1, "DENY": 1}
    failed = s["istio_tcp_connections_failed_total"]
    assert [(lab["response_flags"], v) for lab, v in failed] == [("DENY", 1)]
    assert s["istio_tcp_sockets_open"] == [({"reporter": "destination"}, 1)]


def test_workload_manager_metrics(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry, process_metrics=False)
    metrics.set_proxy_counts(active=3, pending=1)
    metrics.proxy_started()
    metrics.proxy_started()
    metrics.proxy_stopped()
    s = samples(registry)
    assert s["workload_manager_active_proxy_count"] == [({}, 3)]
    assert s["workload_manager_pending_proxy_count"] == [({}, 1)]
    assert s["workload_manager_proxies_started_total"] == [({}, 2)]
    assert s["workload_manager_proxies_stopped_total"] == [({}, 1)]


def test_capture_counters_of_each_pod(registry: CollectorRegistry) -> None:
    pods = [("apps", "web-1", PodCounters(inbound=2, outbound=20, assigns=5, drops=1, exempt=4))]
    CaptureMetrics(registry, lambda: pods)
    s = samples(registry)
    web = {"namespace": "apps", "pod": "web-1"}
    assert s["ztunnel_py_capture_connections_total"] == [
        ({**web, "direction": "inbound"}, 2),
        ({**web, "direction": "outbound"}, 3),
    ]
    assert s["ztunnel_py_capture_redirected_packets_total"] == [(web, 20)]
    assert s["ztunnel_py_capture_dropped_packets_total"] == [
        ({**web, "reason": "fail_closed"}, 1),
        ({**web, "reason": "spoofed_source"}, 0),
    ]
    assert s["ztunnel_py_capture_exempt_packets_total"] == [(web, 4)]
    # Read at every scrape: a pod gone from the map is gone from the metrics.
    pods.clear()
    assert "ztunnel_py_capture_connections_total" not in samples(registry)


def test_two_metrics_on_one_registry_collide(registry: CollectorRegistry) -> None:
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    levels = setup_logging("debug", stream=stream)
    yield stream
    levels.reset()
    LogLevels("info")
    root.handlers[:] = before[0]
    root.setLevel(before[1])


LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t(\w+)\t(\S+)\t([^\t]+)(?:\t(.*))?$")


def test_access_log_lines_in_ztunnel_text_format(
    registry: CollectorRegistry, log_stream: io.StringIO
) -> None:
    metrics = Metrics(registry, process_metrics=False)
    labels = TrafficLabels.build(
        DESTINATION, source_identity=CLIENT_ID, destination=SERVER, mtls=True
    )
    conn = metrics.open(labels, "10.0.0.1:5000", "10.0.0.2:15008", "10.0.0.2:80")
    conn.add_bytes(sent=5, recv=12)
    conn.close(error="connection reset by peer")
    accesslog.connection_failed("10.0.0.9:1", "10.0.0.2:15008", DESTINATION, "early deny")
    lines = [LINE.match(line) for line in log_stream.getvalue().splitlines()]
    assert all(lines), log_stream.getvalue()
    opened, complete, failed = (m.groups() for m in lines if m)
    assert opened[:3] == ("debug", "access", "connection opened")
    # ztunnel's form: addresses and counts bare, every other value a quoted string
    assert opened[3] == (
        'src.addr=10.0.0.1:5000 src.namespace="ns-a" '
        'src.identity="spiffe://cluster.local/ns/ns-a/sa/client" dst.addr=10.0.0.2:15008 '
        'dst.hbone_addr=10.0.0.2:80 dst.workload="server-5c6b-fghij" dst.namespace="ns-b" '
        'dst.identity="spiffe://cluster.local/ns/ns-b/sa/server" direction="inbound"'
    )
    assert complete[:3] == ("error", "access", "connection complete")
    # the duration is whole milliseconds; a slow first call of the logging path can take one
    assert re.search(
        r'direction="inbound" bytes_sent=5 bytes_recv=12 duration="\d+ms" '
        r'error="connection reset by peer"$',
        complete[3],
    )
    assert failed == (
        "warn",
        "access",
        "connection failed",
        'src.addr=10.0.0.9:1 dst.addr=10.0.0.2:15008 direction="inbound" error="early deny"',
    )


def test_text_values_escaped_as_ztunnel_writes_them(log_stream: io.StringIO) -> None:
    accesslog.connection_failed(
        "10.0.0.9:1", "[fd00::2]:80", SOURCE, 'bad "name"\tab\x1b[31m\nnext line\0é'
    )
    accesslog.request_complete({"src.addr": "10.0.0.9:1", "response_code": 200, "ok": True})
    failed, request = (m.groups() for m in map(LINE.match, log_stream.getvalue().splitlines()))
    assert failed[3] == (
        'src.addr=10.0.0.9:1 dst.addr=[fd00::2]:80 direction="outbound" '
        'error="bad \\"name\\"\\tab\\u{1b}[31m\\nnext line\\0é"'
    )
    assert request[3] == "src.addr=10.0.0.9:1 response_code=200 ok=true"
    assert len(log_stream.getvalue().splitlines()) == 2  # a newline never splits a line


def test_outbound_hbone_lines_name_the_source_identity(log_stream: io.StringIO) -> None:
    hbone = TrafficLabels.build(
        SOURCE, source=CLIENT, source_identity=CLIENT.identity, destination=SERVER, mtls=True
    )
    Metrics(CollectorRegistry(), process_metrics=False).open(
        hbone, "10.0.0.1:5000", "10.0.0.2:15008", "10.0.0.2:80"
    ).close()
    complete = LINE.match(log_stream.getvalue().splitlines()[-1])
    assert complete is not None
    assert 'src.identity="spiffe://cluster.local/ns/ns-a/sa/client"' in complete.group(4)
    assert 'direction="outbound"' in complete.group(4)


def test_access_lines_in_json() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    levels = setup_logging("info", json_format=True, stream=stream)
    try:
        labels = TrafficLabels.build(DESTINATION, source_identity=CLIENT_ID, mtls=True)
        accesslog.connection_complete(
            labels, "10.0.0.1:5000", "10.0.0.2:15008", "10.0.0.2:80",
            bytes_sent=5, bytes_recv=12, duration_ms=3,
        )  # fmt: skip
    finally:
        levels.reset()
        root.handlers[:] = before
    line = json.loads(stream.getvalue())
    assert {k: line[k] for k in ("level", "scope", "message")} == {
        "level": "info",
        "scope": "access",
        "message": "connection complete",
    }
    assert {k: v for k, v in line.items() if k not in ("level", "scope", "message", "time")} == {
        "src.addr": "10.0.0.1:5000",
        "src.namespace": "ns-a",
        "src.identity": "spiffe://cluster.local/ns/ns-a/sa/client",
        "dst.addr": "10.0.0.2:15008",
        "dst.hbone_addr": "10.0.0.2:80",
        "direction": "inbound",
        "bytes_sent": 5,
        "bytes_recv": 12,
        "duration": "3ms",
    }


def test_identities_only_logged_for_mtls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="access")
    labels = TrafficLabels.build(DESTINATION, source_identity=CLIENT_ID, destination=SERVER)
    accesslog.connection_complete(
        labels, "a:1", "b:2", None, bytes_sent=0, bytes_recv=0, duration_ms=3
    )
    (record,) = caplog.records
    assert record.levelno == logging.INFO and record.getMessage() == "connection complete"
    assert fields(record)["src.identity"] is None and fields(record)["dst.identity"] is None
    assert fields(record)["duration"] == "3ms"


def test_json_format_and_our_module_targets() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    levels = setup_logging("info", json_format=True, stream=stream)
    try:
        logging.getLogger("ztunnel_py.agent.xds").info("connected", extra={"fields": {"n": 1}})
        logging.getLogger("ztunnel_py.agent.xds").debug("hidden")
        logging.getLogger("some.library").info("hidden too")
        logging.getLogger("some.library").warning("shown")
    finally:
        levels.reset()
        root.handlers[:] = before
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "info" and first["scope"] == "agent.xds"
    assert first["message"] == "connected" and first["n"] == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", first["time"])
    assert (second["level"], second["scope"], second["message"]) == (
        "warn",
        "some.library",
        "shown",
    )


def test_level_specs() -> None:
    assert parse_level_spec("info") == ("info", {})
    assert parse_level_spec("WARNING, access:debug,agent.xds=trace,") == (
        "warn",
        {"access": "debug", "agent.xds": "trace"},
    )
    assert parse_level_spec("ztunnel::proxy=off") == (None, {"ztunnel::proxy": "off"})
    for bad, message in [
        ("", "empty level"),
        ("loud", "invalid level 'loud'"),
        ("access=", "invalid level ''"),
        ("a b=info", "invalid module name"),
    ]:
        with pytest.raises(LevelSpecError, match=message):
            parse_level_spec(bad)
    assert logger_name("access") == "access"
    assert logger_name("agent.xds") == "ztunnel_py.agent.xds"
    assert logger_name("ztunnel::proxy") == "ztunnel_py.proxy"
    assert logger_name("ztunnel_py.admin") == "ztunnel_py.admin"


def test_level_changes_merge_and_reset() -> None:
    levels = LogLevels("warn,access=info")
    try:
        assert logging.getLogger("ztunnel_py").level == logging.WARNING
        assert logging.getLogger("access").level == logging.INFO
        levels.set("agent=trace")
        assert levels.describe() == "warn,access=info,agent=trace"
        assert logging.getLogger("ztunnel_py.agent").level == 5
        levels.set("off")
        assert not logging.getLogger("ztunnel_py.admin").isEnabledFor(logging.CRITICAL)
        assert logging.getLogger("ztunnel_py.agent.inpod").isEnabledFor(5)  # agent=trace stays
        levels.reset()
        assert levels.describe() == "warn,access=info"
        assert logging.getLogger("ztunnel_py.agent").level == logging.NOTSET
    finally:
        LogLevels("info")


async def test_scrape_after_traffic_with_curl(
    registry: CollectorRegistry, nursery: trio.Nursery
) -> None:
    metrics = Metrics(registry, tag="t")
    conn = metrics.open(TrafficLabels.build(SOURCE, source=CLIENT, destination=SERVER), "a", "b")
    conn.add_bytes(10, 20)
    listeners = await nursery.start(
        lambda task_status: serve_metrics(
            registry=registry, address=SocketAddr("127.0.0.1", 0), task_status=task_status
        )
    )
    port = listeners[0].socket.getsockname()[1]
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/stats/prometheus"],
        capture_stdout=True,
    )
    text = result.stdout.decode()
    assert 'istio_tcp_sockets_open{reporter="source"} 1.0' in text
    (received,) = [
        line for line in text.splitlines() if line.startswith("istio_tcp_received_bytes_total{")
    ]
    assert received.endswith("} 10.0")
    for label in (
        'reporter="source"',
        'source_workload="client"',
        'destination_workload="server"',
        'response_flags="-"',
        'connection_security_policy="unknown"',
    ):
        assert label in received


def test_control_characters_never_forge_or_shift_a_log_line(log_stream: io.StringIO) -> None:
    pod = "web\n2026-01-01T00:00:00.000000Z\tinfo\tinpod\tforged"
    log = logging.getLogger("ztunnel_py.inpod")
    log.info("enrolled pod %s", pod)
    log.info("x", extra={"fields": {"name": pod, "k\tey": "a\x1b[2Jb\u2028c"}})
    try:
        raise ValueError(f"bad name {pod!s}")
    except ValueError:
        log.exception("failed for %s", "p\r\nq")
    text = log_stream.getvalue()
    lines = text.splitlines()
    records = [line for line in lines if LINE.match(line)]
    assert len(records) == 3, text  # one line per record; a traceback's lines are indented
    assert all(line.startswith("  ") for line in lines if line not in records)
    assert "enrolled pod web\\n2026-01-01T00:00:00.000000Z\\tinfo\\tinpod\\tforged" in records[0]
    assert 'name="web\\n2026-01-01T00:00:00.000000Z\\tinfo\\tinpod\\tforged"' in records[1]
    # field values are quoted as ztunnel quotes them (Rust's Debug escapes)
    assert 'k\\tey="a\\u{1b}[2Jb\\u{2028}c"' in records[1]
    assert records[2].endswith("failed for p\\r\\nq")


def test_request_lines_the_same_with_or_without_the_logging_machinery(
    log_stream: io.StringIO,
) -> None:
    """A `request complete` line goes straight to the stream while our handler is the only
    one; with another handler attached it goes through `logging`: the line is the same."""
    fields = {
        "src.addr": "10.0.0.9:1",
        "method": "GET",
        "path": '/a"b\tc',
        "response_code": 503,
        "duration": "3ms",
        "upstream_host": "10.0.0.2:80",
    }
    root = logging.getLogger()
    # only the handler setup_logging installed (pytest adds its capture handlers to the root)
    everyone = list(root.handlers)
    root.handlers[:] = [h for h in everyone if getattr(h, "stream", None) is log_stream]
    try:
        with records_made() as made:
            accesslog.request_complete(dict(fields), error=True)
    finally:
        root.handlers[:] = everyone
    assert made == []  # no LogRecord: written directly
    seen: list[logging.LogRecord] = []
    collect = logging.Handler()
    collect.emit = seen.append  # type: ignore[method-assign]
    access = logging.getLogger("access")
    access.addHandler(collect)
    try:
        accesslog.request_complete(dict(fields), error=True)
    finally:
        access.removeHandler(collect)
    assert len(seen) == 1  # the second line went through a LogRecord
    direct, logged = (m.groups() for m in map(LINE.match, log_stream.getvalue().splitlines()))
    assert direct == logged
    assert direct[:3] == ("warn", "access", "request complete")
    assert direct[3] == (
        'src.addr=10.0.0.9:1 method="GET" path="/a\\"b\\tc" response_code=503 '
        'duration="3ms" upstream_host=10.0.0.2:80'
    )


class _ShortWrites(io.StringIO):
    """A stream that takes at most `most` characters a write; with `fail`, its first write
    takes them and then raises (a write that failed part way), later ones work."""

    def __init__(self, most: int, fail: bool = False) -> None:
        super().__init__()
        self.most = most
        self.fail = fail

    def write(self, s: str) -> int:
        written = super().write(s[: self.most])
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        return written


@pytest.fixture
def only_our_handler() -> Iterator[None]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    yield
    LogLevels("info")
    root.handlers[:] = before[0]
    root.setLevel(before[1])


def _only(stream: io.StringIO) -> None:
    """Leave the handler `setup_logging` installed for `stream` the root's only one (pytest
    adds its capture handlers): the line goes straight to the stream."""
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if getattr(h, "stream", None) is stream]


@pytest.mark.usefixtures("only_our_handler")
def test_a_short_write_is_finished_as_the_same_line() -> None:
    stream = _ShortWrites(most=7)
    setup_logging("info", stream=stream)
    _only(stream)
    accesslog.request_complete({"method": "GET", "path": "/a", "response_code": 200})
    accesslog.request_complete({"method": "PUT", "path": "/b", "response_code": 201})
    lines = stream.getvalue().splitlines()
    assert [LINE.match(line).groups()[3] for line in lines] == [  # type: ignore[union-attr]
        'method="GET" path="/a" response_code=200',
        'method="PUT" path="/b" response_code=201',
    ]


@pytest.mark.usefixtures("only_our_handler")
def test_a_failing_write_is_reported_never_written_twice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = _ShortWrites(most=10, fail=True)
    setup_logging("info", stream=stream)
    _only(stream)
    with records_made() as made:
        accesslog.request_complete({"method": "GET", "path": "/a"})
    # the first 10 characters went out, the write failed, and nothing wrote the line again
    assert len(stream.getvalue()) == 10
    # reported as `logging` reports a failing stream, naming the record
    assert len(made) == 1
    assert made[0].getMessage() == "request complete"
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err
    assert "OSError: disk full" in err
