"""`ztunnel-py controlplane` end to end: a real process on 127.0.0.1, node-token, signing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from tests.integration.ca_support import free_port, write_workloads
from ztunnel_py.identity.caclient import CaError, GrpcCaClient
from ztunnel_py.identity.pki import generate_key, identities_from_cert, make_csr
from ztunnel_py.model import Identity
from ztunnel_py.model.address import SocketAddr

ALICE = Identity("cluster.local", "demo", "alice")
BOB = Identity("cluster.local", "demo", "bob")
CLI = [sys.executable, "-m", "ztunnel_py.cli", "controlplane"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    config = tmp_path / "local.yaml"
    write_workloads(config, {"node-1": [("demo", "alice")], "node-2": [("demo", "bob")]})
    port = free_port()
    log = tmp_path / "controlplane.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *CLI,
                "run",
                "--data-dir",
                str(tmp_path / "data"),
                "--listen",
                f"127.0.0.1:{port}",
                "--local-config",
                str(config),
                "--serving-ip",
                "127.0.0.1",
                "--monitoring",
                f"127.0.0.1:{free_port()}",
            ],
            stderr=out,
        )
    try:
        yield proc, port, tmp_path
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_serving(log: trio.Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        text = await log.read_text()
        if "serving the CA on" in text:
            return
        assert proc.poll() is None, text
        await trio.sleep(0.05)
    raise AssertionError(f"control plane did not start:\n{await log.read_text()}")


async def test_controlplane_cli_end_to_end(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, tmp_path = server
    log = tmp_path / "controlplane.log"
    await wait_serving(trio.Path(log), proc)
    # the agent's log format: time, level, target, message, tab-separated
    (serving,) = [line for line in log.read_text().splitlines() if "serving the CA on" in line]
    timestamp, level, target, message = serving.split("\t")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", timestamp)
    assert (level, target) == ("info", "controlplane")
    assert message.startswith(f"serving the CA on 127.0.0.1:{port} ")
    root = tmp_path / "data" / "ca" / "root-cert.pem"
    assert root.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "data" / "ca" / "root-key.pem").stat().st_mode & 0o077 == 0

    issued = cli("node-token", "node-1", "--data-dir", str(tmp_path / "data"), "--ttl", "1h")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token and "\n" not in token
    assert token not in (tmp_path / "data" / "node-tokens.json").read_text()
    token_file = tmp_path / "token"
    token_file.write_text(token)

    client = GrpcCaClient(SocketAddr("127.0.0.1", port), root, token_file)
    chain = await client.sign(make_csr(generate_key(), ALICE), ALICE, timedelta(hours=1))
    assert identities_from_cert(chain[0]) == [ALICE]
    assert chain[-1] == root.read_text()
    with pytest.raises(CaError, match="PERMISSION_DENIED"):
        await client.sign(make_csr(generate_key(), BOB), BOB, timedelta(hours=1))
    client.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    text = log.read_text()
    assert "refused CreateCertificate from node node-1" in text
    assert "stopped" in text


def test_node_token_rejects_bad_input(tmp_path: Path) -> None:
    bad_node = cli("node-token", "no/slash", "--data-dir", str(tmp_path))
    assert bad_node.returncode == 1
    assert "node name" in bad_node.stderr
    bad_ttl = cli("node-token", "node-1", "--data-dir", str(tmp_path), "--ttl", "soon")
    assert bad_ttl.returncode == 2
    assert "not a duration" in bad_ttl.stderr
