"""The agent's configuration as ztunnel's environment gives it: control-plane addresses (IPv4,
bracketed IPv6, names, https://), roots (file, SYSTEM, inline PEM), extra headers (CA_HEADER_*,
XDS_HEADER_*), and what is refused."""

from __future__ import annotations

import argparse
import json
import logging
import ssl
from pathlib import Path

import pytest

from ztunnel_py.agent.args import add_agent_arguments
from ztunnel_py.config import ConfigValueError, parse_duration, parse_headers
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.runtime.args import unsupported_settings
from ztunnel_py.runtime.proxy import _config_dump, _node_metadata, config_from_args, prepare
from ztunnel_py.transport.roots import RootCerts, RootCertsError
from ztunnel_py.xds.client import agent_node

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def test_roots_from_a_file_are_read_each_time(tmp_path: Path) -> None:
    path = tmp_path / "root-cert.pem"
    roots = RootCerts.parse(str(path))
    assert roots == RootCerts(path=path)
    path.write_text("first")
    assert roots.read() == b"first"
    path.write_text("rotated")
    assert roots.read() == b"rotated"


def test_missing_root_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(RootCertsError, match=f"cannot read root certificate file {tmp_path}/x"):
        RootCerts.parse(str(tmp_path / "x")).read()


def test_inline_pem_roots() -> None:
    roots = RootCerts.parse(PEM)
    assert roots.read() == PEM.encode() + b"\n"
    assert str(roots) == "the inline PEM roots"


def test_system_roots_are_the_bundle_openssl_uses() -> None:
    roots = RootCerts.parse("SYSTEM")
    paths = ssl.get_default_verify_paths()
    bundle = Path(paths.cafile or paths.openssl_cafile)
    assert roots.read() == bundle.read_bytes()
    assert b"BEGIN CERTIFICATE" in roots.read()


def test_empty_roots_are_refused() -> None:
    with pytest.raises(ValueError, match="give a file path, SYSTEM or PEM text"):
        RootCerts.parse("  ")


def test_headers_are_lowercased_metadata() -> None:
    assert parse_headers(["X_TEAM=payments", "x-env=a=b", "empty="], "--xds-header") == (
        ("x_team", "payments"),
        ("x-env", "a=b"),
        ("empty", ""),
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("novalue", "is not NAME=VALUE"),
        ("=v", "is not NAME=VALUE"),
        ("bad name=v", "is not NAME=VALUE"),
        ("grpc-timeout=1S", "names starting with grpc- are reserved"),
        ("x=line\nbreak", "must be printable text"),
        ("x-bin=abc", "binary \\(-bin\\) headers like 'x-bin' are not supported"),
    ],
)
def test_bad_headers_say_why(item: str, message: str) -> None:
    with pytest.raises(ConfigValueError, match=message):
        parse_headers([item], "--xds-header")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return parser.parse_args(["--node", "n1", *argv])


def test_environment_gives_roots_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_ROOT_CA", PEM)
    monkeypatch.setenv("XDS_ROOT_CA", "SYSTEM")
    monkeypatch.setenv("XDS_HEADER_X_TEAM", "payments")
    monkeypatch.setenv("CA_HEADER_X_REGION", "eu")
    config = config_from_args(parse(["--xds-header", "x-extra=1"]))
    assert config.ca_root_cert == RootCerts(pem=PEM.encode() + b"\n")
    assert config.xds_root_cert == RootCerts(system=True)
    assert config.xds_headers == (("x_team", "payments"), ("x-extra", "1"))
    assert config.ca_headers == (("x_region", "eu"),)


def test_a_bad_header_stops_the_agent_naming_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDS_HEADER_GRPC-TIMEOUT", "1S")
    with pytest.raises(ConfigValueError, match="--xds-header: 'GRPC-TIMEOUT=1S'"):
        config_from_args(parse([]))


@pytest.mark.parametrize(
    ("flag", "target"),
    [
        ("[fd00::2]:15012", "ipv6:[fd00::2]:15012"),
        ("https://[fd00::2]:15012/", "ipv6:[fd00::2]:15012"),
        ("10.250.0.2:15012", "ipv4:10.250.0.2:15012"),
        ("https://istiod.istio-system.svc:15012", "dns:///istiod.istio-system.svc:15012"),
    ],
)
def test_control_plane_addresses_keep_their_host(flag: str, target: str) -> None:
    config = config_from_args(parse(["--xds-address", flag, "--ca-address", flag]))
    assert config.xds_address is not None
    # What the agent dials: an IPv6 address stays in brackets.
    assert config.xds_address.grpc_target == target
    assert config.ca_address == config.xds_address
    assert _config_dump(config)["xdsAddress"] == target.partition(":")[2].removeprefix("///")


def test_the_ca_address_defaults_to_localhost() -> None:
    assert config_from_args(parse([])).ca_address == SocketAddr("localhost", 15012)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--xds-address", "fd00::2:15012"], r"--xds-address: .* goes in brackets"),
        (["--xds-address", "http://cp:15012"], "only https:// \\(TLS\\) is supported"),
        (["--ca-address", "cp"], r"--ca-address: 'cp' is not HOST:PORT, IP:PORT or \[IPv6\]:PORT"),
        (["--admin-address", "localhost:15000"], r"--admin-address: .*an IP address, not a name"),
        (["--metrics-address", "0.0.0.0:0"], "--metrics-address: .* from 1 to 65535"),
    ],
)
def test_bad_addresses_stop_the_agent_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigValueError, match=message):
        config_from_args(parse(argv))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("24h0m0s", 86400.0),  # how Go prints a day
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("10us", 1e-5),
        ("10\u00b5s", 1e-5),
        ("0", 0.0),
        ("60s", 60.0),
        ("5", 5.0),  # a bare number of seconds, as before
        ("1d", 86400.0),
        (" 5m ", 300.0),
    ],
)
def test_durations_in_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text, "--secret-ttl").total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 m", "-1s", "1x", "1h 30m", "h", "1.5.5s"])
def test_bad_durations_name_the_setting(text: str) -> None:
    with pytest.raises(ConfigValueError, match=r"--secret-ttl: .* is not a duration"):
        parse_duration(text, "--secret-ttl")


def test_ztunnel_environment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_ID", "plain-id")
    monkeypatch.setenv("ISTIO_META_CLUSTER_ID", "meta-id")  # istio-agent's name wins, as in ztunnel
    monkeypatch.setenv("CLUSTER_DOMAIN", "corp.example")
    monkeypatch.setenv("NETWORK", "net-1")
    monkeypatch.setenv("ISTIO_META_ZONE_HINT", "a")
    monkeypatch.setenv("POOL_UNUSED_RELEASE_TIMEOUT", "1m30s")
    monkeypatch.setenv("SECRET_TTL", "12h0m0s")
    config = config_from_args(parse(["--xds-address", "cp:15012"]))
    assert (config.cluster_id, config.cluster_domain, config.network) == (
        "meta-id",
        "corp.example",
        "net-1",
    )
    assert config.pool_idle_timeout.total_seconds() == 90
    assert config.secret_ttl.total_seconds() == 12 * 3600
    metadata = _node_metadata(config)
    assert metadata["CLUSTER_ID"] == "meta-id" and metadata["NETWORK"] == "net-1"
    assert metadata["ZONE_HINT"] == "a"
    node = agent_node("10.0.0.5", "ztunnel-a", "istio-system", "n1", cluster_domain="corp.example")
    assert node.id == "ztunnel~10.0.0.5~ztunnel-a.istio-system~istio-system.svc.corp.example"


def test_cluster_defaults_as_ztunnel() -> None:
    config = config_from_args(parse([]))
    assert (config.cluster_id, config.cluster_domain, config.network) == (
        "Kubernetes",
        "cluster.local",
        "",
    )
    assert "NETWORK" not in _node_metadata(config)
    assert config.pool_idle_timeout.total_seconds() == 300
    # the `config` section of /config_dump, with ztunnel's names and duration form
    dump = _config_dump(config)
    assert dump["secretTtl"] == {"secs": 86400, "nanos": 0}
    assert dump["poolUnusedReleaseTimeout"] == {"secs": 300, "nanos": 0}
    assert (dump["localNode"], dump["clusterId"], dump["proxyMode"]) == (
        "n1",
        "Kubernetes",
        "Shared",
    )
    assert dump["xdsAddress"] is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LOCAL_XDS": "workloads: []", "LOCAL_XDS_PATH": "/x.yaml"},
            "only one of --local-config \\(env LOCAL_XDS_PATH\\) or --local-xds",
        ),
        (
            {"LOCAL_XDS": "workloads: []", "XDS_ADDRESS": "cp:15012"},
            "choose one source of workloads",
        ),
        ({"POOL_UNUSED_RELEASE_TIMEOUT": "soon"}, "--pool-unused-release-timeout: 'soon'"),
    ],
)
def test_conflicting_or_bad_settings_stop_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigValueError, match=message):
        config_from_args(parse([]))


def test_unsupported_ztunnel_settings_are_named() -> None:
    lines = unsupported_settings({"FAKE_CA": "true", "XDS_ON_DEMAND": "true", "NODE_NAME": "n"})
    assert lines == [
        "XDS_ON_DEMAND is set but not supported, ignored: the whole mesh state is always fetched",
        "FAKE_CA is set but not supported, ignored: certificates always come from the CA",
    ]


def test_inline_local_config_and_json_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "LOCAL_XDS",
        "workloads:\n- {name: a, namespace: demo, workloadIps: [10.0.0.1], services: {}}\n",
    )
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("FAKE_CA", "true")
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        prepared = prepare(parse([]), "agent")
        assert not isinstance(prepared, int)
        _, levels, state = prepared
        levels.reset()
    finally:
        root.handlers[:] = before
    assert [w.name for w in state.workloads()] == ["a"]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert {"level": "warn", "scope": "runtime"}.items() <= lines[0].items()
    assert lines[0]["message"].startswith("FAKE_CA is set but not supported")
    assert lines[-1]["message"].endswith("1 workloads, 0 services, 0 policies")
