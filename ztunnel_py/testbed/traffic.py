"""Real clients run inside testbed pods: curl for HTTP, iperf3 for throughput.

The clients are plain, with no proxy settings: in an enrolled pod the agent captures their
connections transparently, so the same call goes through the mesh there and straight to the
destination from a pod outside the mesh (or in a testbed without it). `http_get(...,
socks5=True)` asks the pod's SOCKS5 listener (127.0.0.1:15080) instead, the mesh's explicit
proxy for clients that want one.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import SOCKS5_PORT
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed

SOCKS5 = SocketAddr("127.0.0.1", SOCKS5_PORT)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    pod: str
    namespace: str
    client: str

    @property
    def client_ip(self) -> str:
        """The address the server saw the request come from (without the port)."""
        return str(SocketAddr.parse(self.client).host)


def http_get(
    bed: Testbed, pod: str, host: str, port: int, *, path: str = "/", socks5: bool = False
) -> HttpAnswer:
    """GET http://host:port/path from `pod`; the answer of the testbed's pod HTTP server."""
    argv = ["curl", "-sS", "--max-time", "10"]
    if socks5:
        argv += ["--socks5", str(SOCKS5)]
    authority = SocketAddr(host, port)
    argv.append(f"http://{authority}{path}")
    done = bed.exec(pod, argv, timeout=20)
    if done.returncode != 0:
        raise TestbedError(f"curl from {pod} to {authority} failed: {done.stderr.strip()}")
    try:
        body: dict[str, Any] = json.loads(done.stdout)
        return HttpAnswer(str(body["pod"]), str(body["namespace"]), str(body["client"]))
    except (ValueError, KeyError) as e:
        raise TestbedError(f"unexpected answer from {authority}: {done.stdout[:200]!r}") from e


def iperf3(bed: Testbed, pod: str, host: str, *, seconds: int, port: int = 5201) -> dict[str, Any]:
    """Run a single-stream iperf3 client from `pod`; returns iperf3's JSON result."""
    argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"]
    try:
        done = bed.exec(pod, argv, timeout=seconds + 30)
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"iperf3 from {pod} to {host} did not finish") from e
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise TestbedError(
            f"iperf3 from {pod} to {host} failed: {done.stderr.strip() or done.stdout[:300]}"
        ) from None
    if "error" in result:
        raise TestbedError(f"iperf3 from {pod} to {host} failed: {result['error']}")
    return result


def gbps(result: dict[str, Any]) -> float:
    """Receiver-side throughput of an iperf3 JSON result, in Gbit/s."""
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
