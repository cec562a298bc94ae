"""The control plane's configuration: `controlplane run` flags in, a typed config out, and the
flag combinations that are refused before anything starts."""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from ztunnel_py.config import ConfigValueError
from ztunnel_py.controlplane.args import add_controlplane_arguments
from ztunnel_py.controlplane.config import ControlPlaneConfig, config_from_args
from ztunnel_py.model.address import SocketAddr


def parse(*argv: str) -> ControlPlaneConfig:
    parser = argparse.ArgumentParser()
    add_controlplane_arguments(parser)
    return config_from_args(parser.parse_args(["run", *argv]))


def test_defaults() -> None:
    assert parse() == ControlPlaneConfig(
        data_dir=Path("/var/lib/ztunnel-py/controlplane"),
        listen=SocketAddr.parse("0.0.0.0:15012"),
        monitoring=SocketAddr.parse("0.0.0.0:15014"),
    )


def test_flags_become_typed_values() -> None:
    config = parse(
        "--data-dir", "/tmp/cp",
        "--listen", "[::1]:16012",
        "--monitoring", "127.0.0.1:16014",
        "--config-dir", "/etc/mesh",
        "--kubernetes",
        "--kubeconfig", "/root/.kube/config",
        "--trust-domain", "example.org",
        "--root-namespace", "mesh-system",
        "--max-cert-ttl", "2h",
        "--serving-ip", "10.0.0.1", "fd00::1",
        "--log-level", "info,controlplane.store=debug",
    )  # fmt: skip
    assert config == ControlPlaneConfig(
        data_dir=Path("/tmp/cp"),
        listen=SocketAddr.parse("[::1]:16012"),
        monitoring=SocketAddr.parse("127.0.0.1:16014"),
        config_dir=Path("/etc/mesh"),
        kubernetes=True,
        kubeconfig=Path("/root/.kube/config"),
        trust_domain="example.org",
        root_namespace="mesh-system",
        max_cert_ttl=timedelta(hours=2),
        serving_ips=(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")),
        log_level="info,controlplane.store=debug",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--local-config", "l.yaml", "--config-dir", "d"], "--local-config cannot be combined"),
        (["--local-config", "l.yaml", "--kubernetes"], "--local-config cannot be combined"),
        (["--kubeconfig", "k"], "--kubeconfig is only used with --kubernetes"),
    ],
)
def test_conflicting_flags_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigValueError, match=message):
        parse(*argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-level", "loud"], "invalid level 'loud'"),
        (["--local-config", "l.yaml", "--kubernetes"], "--local-config cannot be combined"),
    ],
)
def test_bad_configuration_stops_the_process_before_it_starts(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    cli = [sys.executable, "-m", "ztunnel_py.cli", "controlplane", "run"]
    result = subprocess.run(
        [*cli, "--data-dir", str(tmp_path), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ztunnel-py controlplane: ")
    assert message in result.stderr
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize(("env", "expected"), [("json", "json"), ("plain", "plain"), ("", "plain")])
def test_log_format_follows_the_environment_as_the_agents(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: str
) -> None:
    monkeypatch.setenv("LOG_FORMAT", env)
    parser = argparse.ArgumentParser()
    add_controlplane_arguments(parser)
    assert parser.parse_args(["run"]).log_format == expected
