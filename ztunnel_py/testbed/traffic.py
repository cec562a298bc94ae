"""Real clients run inside testbed pods: curl for HTTP, iperf3 for throughput.

Until transparent capture exists, clients reach the mesh through the pod's SOCKS5 listener
(127.0.0.1:15080 inside the pod): curl natively, iperf3 through proxychains4. With `via_mesh`
False the same clients go straight to the destination, for baselines.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed

SOCKS5 = "127.0.0.1:15080"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    pod: str
    namespace: str
    client: str


def proxychains_config(state_dir: Path) -> Path:
    """A proxychains4 config sending every TCP connect through the pod's SOCKS5 listener."""
    path = state_dir / "proxychains.conf"
    if not path.exists():
        host, port = SOCKS5.split(":")
        path.write_text(
            "strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 10000\n"
            f"[ProxyList]\nsocks5 {host} {port}\n"
        )
    return path


def http_get(
    bed: Testbed, pod: str, host: str, port: int, *, via_mesh: bool = True, path: str = "/"
) -> HttpAnswer:
    """GET http://host:port/path from `pod`; the answer of the testbed's pod HTTP server."""
    argv = ["curl", "-sS", "--max-time", "10"]
    if via_mesh:
        argv += ["--socks5", SOCKS5]
    argv.append(f"http://{host}:{port}{path}")
    done = bed.exec(pod, argv, timeout=20)
    if done.returncode != 0:
        raise TestbedError(f"curl from {pod} to {host}:{port} failed: {done.stderr.strip()}")
    try:
        body: dict[str, Any] = json.loads(done.stdout)
        return HttpAnswer(str(body["pod"]), str(body["namespace"]), str(body["client"]))
    except (ValueError, KeyError) as e:
        raise TestbedError(f"unexpected answer from {host}:{port}: {done.stdout[:200]!r}") from e


def iperf3(
    bed: Testbed, pod: str, host: str, *, seconds: int, via_mesh: bool = True, port: int = 5201
) -> dict[str, Any]:
    """Run a single-stream iperf3 client from `pod`; returns iperf3's JSON result."""
    argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"]
    if via_mesh:
        argv = ["proxychains4", "-q", "-f", str(proxychains_config(bed.state_dir)), *argv]
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
