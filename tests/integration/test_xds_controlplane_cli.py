"""`ztunnel-py controlplane run` as a process: CA and workload xDS on one TLS port, monitoring on
another, and clients in this process (which runs no gRPC server) that get both back after the
control plane is stopped and started again on the same ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from tests.integration.ca_support import free_port, write_workloads
from tests.integration.xds_support import eventually, http_get
from ztunnel_py.admin.readiness import Readiness
from ztunnel_py.controlplane.nodeauth import TOKEN_FILE, NodeTokenStore
from ztunnel_py.identity.caclient import CaError, GrpcCaClient
from ztunnel_py.identity.pki import generate_key, make_csr
from ztunnel_py.model import Identity
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.transport.grpc_channel import ControlPlaneChannel
from ztunnel_py.xds.client import XDS_CHANNEL_OPTIONS, XdsClient, agent_node

ALICE = Identity("cluster.local", "demo", "alice")


class ControlPlaneProcess:
    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.config = tmp_path / "local.yaml"
        write_workloads(self.config, {"node-1": [("demo", "alice")]})
        self.port, self.monitoring = free_port(), free_port()
        self.log = tmp_path / "controlplane.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "ztunnel_py.cli", "controlplane", "run",
            "--data-dir", str(self.data),
            "--listen", f"127.0.0.1:{self.port}",
            "--monitoring", f"127.0.0.1:{self.monitoring}",
            "--local-config", str(self.config),
            "--serving-ip", "127.0.0.1",
        ]  # fmt: skip
        before = self.serving_lines()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stderr=out)
        deadline = time.monotonic() + 20
        while self.serving_lines() == before:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def serving_lines(self) -> int:
        return self.log.read_text().count("serving the CA on") if self.log.exists() else 0

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.proc = None
        return code

    @property
    def root(self) -> Path:
        return self.data / "ca" / "root-cert.pem"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.monitoring}{path}"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    running = ControlPlaneProcess(tmp_path)
    try:
        yield running
    finally:
        if running.proc is not None and running.proc.poll() is None:
            os.kill(running.proc.pid, signal.SIGKILL)
            running.proc.wait()


def token_for(cp: ControlPlaneProcess, tmp_path: Path) -> Path:
    token = tmp_path / "token"
    token.write_text(NodeTokenStore(cp.data / TOKEN_FILE).issue("node-1", timedelta(hours=1)))
    return token


async def test_the_ca_client_recovers_after_a_control_plane_restart(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    await trio.to_thread.run_sync(cp.start)
    ca = GrpcCaClient(
        SocketAddr("127.0.0.1", cp.port),
        cp.root,
        token_for(cp, tmp_path),
        timeout=timedelta(seconds=5),
    )

    async def sign() -> list[str]:
        return await ca.sign(make_csr(generate_key(), ALICE), ALICE, timedelta(hours=1))

    try:
        assert len(await sign()) == 2
        assert await trio.to_thread.run_sync(cp.stop) == 0
        with pytest.raises(CaError, match="UNAVAILABLE"):
            await sign()
        await trio.to_thread.run_sync(cp.start)
        for _ in range(40):
            try:
                assert len(await sign()) == 2
                return
            except CaError:
                await trio.sleep(0.25)
        raise AssertionError("the CA was not reached again after the restart")
    finally:
        ca.close()


async def test_the_xds_client_resyncs_after_a_control_plane_restart(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    await trio.to_thread.run_sync(cp.start)
    channel = ControlPlaneChannel(
        SocketAddr("127.0.0.1", cp.port),
        cp.root,
        token_for(cp, tmp_path),
        purpose="xDS",
        options=XDS_CHANNEL_OPTIONS,
    )
    state, readiness = ProxyState(), Readiness()
    xds = XdsClient(
        channel, agent_node("127.0.0.1", "z", "istio-system", "node-1"), StateFeed(state, readiness)
    )
    get: Callable[[str], tuple[int, str]] = http_get
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(xds.run)
            await eventually(lambda: readiness.ready, within=10)
            assert await trio.to_thread.run_sync(get, cp.url("/ready")) == (200, "ready\n")
            status, debug = await trio.to_thread.run_sync(get, cp.url("/debug/xds"))
            assert status == 200 and '"node": "node-1"' in debug
            status, metrics = await trio.to_thread.run_sync(get, cp.url("/metrics"))
            assert status == 200 and "pilot_xds 1.0" in metrics
            status, syncz = await trio.to_thread.run_sync(get, cp.url("/debug/syncz"))
            assert status == 200 and '"proxy": "z.istio-system"' in syncz
            status, dump = await trio.to_thread.run_sync(
                get, cp.url("/debug/config_dump?proxyID=z.istio-system")
            )
            assert status == 200 and '"configs"' in dump

            assert await trio.to_thread.run_sync(cp.stop) == 0
            await eventually(lambda: not xds.status.connected, within=5)
            await trio.to_thread.run_sync(cp.start)
            await eventually(lambda: xds.status.streams == 2, within=10)
            nursery.cancel_scope.cancel()
    finally:
        channel.close()
