"""`ztunnel-py demo`: a 2-node mesh on the testbed, traffic through it, and what the wire shows.

Brings up the testbed with the mesh and sends HTTP from plain clients (no proxy settings: the
agent captures the pods' traffic) on one node, across nodes, to a pod IP and to a service VIP
(each answer names the pod that served it and the client address it saw, which must be the
caller's own; the destination agent's access log must name the caller's identity). A pod outside
the ambient namespaces reaches a meshed pod in plaintext (PERMISSIVE). iperf3 runs across nodes
while tcpdump records the fabric, then the demo reports what the capture holds: TLS 1.3 on
15008 and none of the payload in clear. Then L7: it applies Istio's waypoint Gateway, labels
namespace `apps` to use it, applies an HTTPRoute that adds a header and an AuthorizationPolicy
that denies DELETE, and checks that requests to the service go through the waypoint (the app
sees the waypoint as its client and the route's header), that DELETE gets `403`, and that the
waypoint counted them in `istio_requests_total`. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import HBONE_PORT
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.pcap import FabricCapture, analyze
from ztunnel_py.testbed.status import PodStatus
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import FABRIC_BRIDGE, HTTP_PORT, IPERF_PORT
from ztunnel_py.testbed.traffic import gbps, http_get, iperf3


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Demo:
    def __init__(self, bed: Testbed, out: Callable[[str], None]) -> None:
        self.bed = bed
        self.out = out
        self.status = bed.status()
        self.checks: list[Check] = []

    def pod(self, name_prefix: str, node: str) -> PodStatus:
        for p in self.status.pods:
            if p.name.startswith(name_prefix) and p.node == node:
                return p
        raise TestbedError(f"the testbed has no {name_prefix}* pod on {node}")

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))
        self.out(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")

    def agent_log(self, node: str) -> str:
        for n in self.status.nodes:
            if n.name == node and n.log:
                return Path(n.log).read_text(errors="replace")
        return ""

    def logged_identity(self, node: str, identity: str, target: str) -> bool:
        """The destination agent logged a completed connection from `identity` to `target`."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in self.agent_log(node).splitlines():
                if "connection complete" in line and identity in line and target in line:
                    return True
            time.sleep(0.2)
        return False

    def http(self, name: str, client: PodStatus, server: PodStatus) -> None:
        try:
            answer = http_get(self.bed, client.name, server.ip, HTTP_PORT)
        except TestbedError as e:
            self.record(name, False, str(e))
            return
        identity = f"spiffe://cluster.local/ns/{client.namespace}/sa/{client.service_account}"
        target = SocketAddr(server.ip, HTTP_PORT)
        logged = self.logged_identity(server.node, identity, str(target))
        ok = answer.pod == server.name and logged and answer.client_ip == client.ip
        self.record(
            name,
            ok,
            f"{client.name} -> {server.name} ({target}): answered by "
            f"{answer.pod}, which saw client {answer.client}; {server.node}'s agent "
            + ("logged " + identity if logged else "did NOT log the caller's identity"),
        )

    def plaintext(self, client: PodStatus, server: PodStatus) -> None:
        try:
            answer = http_get(self.bed, client.name, server.ip, HTTP_PORT)
        except TestbedError as e:
            self.record("from outside the mesh", False, str(e))
            return
        self.record(
            "from outside the mesh",
            answer.pod == server.name and answer.client_ip == client.ip,
            f"{client.name} (namespace {client.namespace}, not ambient, not enrolled) -> "
            f"{server.name}: plaintext accepted (PERMISSIVE), answered by {answer.pod}, which "
            f"saw client {answer.client}",
        )

    def vip(self, client: PodStatus) -> None:
        svc = next(s for s in self.status.services if s.name == "echo")
        port = svc.ports[0].port
        seen: Counter[str] = Counter()
        try:
            for _ in range(8):
                seen[http_get(self.bed, client.name, svc.vip, port).pod] += 1
        except TestbedError as e:
            self.record("service VIP", False, str(e))
            return
        spread = ", ".join(f"{pod} x{n}" for pod, n in sorted(seen.items()))
        ok = all(pod.startswith("echo-") for pod in seen)
        self.record(
            "service VIP",
            ok,
            f"{client.name} -> echo.{svc.namespace} {SocketAddr(svc.vip, port)}, "
            f"8 requests answered by {spread}",
        )

    def run(self, seconds: int) -> bool:
        web, legacy = self.pod("web-", "node1"), self.pod("legacy-", "node1")
        echo1, echo2 = self.pod("echo-", "node1"), self.pod("echo-", "node2")
        marker = f"ZTDEMO-{secrets.token_hex(8)}"
        pcap = self.bed.state_dir / "fabric.pcap"
        self.out(f"capturing the fabric ({FABRIC_BRIDGE} in {self.status.fabric.netns})")
        with FabricCapture(self.status.fabric.netns, FABRIC_BRIDGE, pcap, "tcp"):
            self.out("plain clients, captured by the mesh (no proxy settings):")
            self.http("same node", web, echo1)
            self.http("across nodes", web, echo2)
            self.vip(web)
            # Same node, so no plaintext crosses the fabric the capture below inspects.
            self.plaintext(legacy, echo1)
            try:
                http_get(self.bed, web.name, echo2.ip, HTTP_PORT, path=f"/?m={marker}")
                result = iperf3(self.bed, web.name, echo2.ip, seconds=seconds)
                self.record(
                    "iperf3 across nodes",
                    True,
                    f"{web.name} -> {echo2.name} for {seconds} s: {gbps(result):.2f} Gbit/s",
                )
            except TestbedError as e:
                self.record("iperf3 across nodes", False, str(e))
            time.sleep(0.5)
        report = analyze(pcap, {HBONE_PORT}, [marker.encode()])
        records = report.tls_records.get(HBONE_PORT, {})
        self.out(f"what the fabric capture holds ({report.packets} packets):")
        self.record(
            f"TLS 1.3 on {HBONE_PORT}",
            report.tls13_negotiated.get(HBONE_PORT, False)
            and records.get("application_data", 0) > 0,
            f"{report.tcp_payload_bytes.get(HBONE_PORT, 0)} bytes on port {HBONE_PORT} in TLS "
            "records "
            f"{dict(sorted(records.items()))}; ServerHello selected "
            + ("TLS 1.3" if report.tls13_negotiated.get(HBONE_PORT) else "no TLS 1.3"),
        )
        clear_ports = sorted(p for p in report.tcp_payload_bytes if p in (HTTP_PORT, IPERF_PORT))
        self.record(
            "no payload in clear",
            not report.markers_in_clear and not clear_ports,
            f"marker {marker} sent in an HTTP request "
            + ("FOUND in clear" if report.markers_in_clear else "not found in the capture")
            + "; "
            + (
                f"plaintext traffic on ports {clear_ports}"
                if clear_ports
                else "no plaintext traffic on the app ports 8080/5201"
            ),
        )
        self.out("L7 through a waypoint (Istio's Gateway, HTTPRoute, AuthorizationPolicy):")
        self.waypoint(web)
        return all(c.ok for c in self.checks)

    def waypoint(self, client: PodStatus) -> None:
        try:
            self.bed.apply(WAYPOINT_RESOURCES)
        except TestbedError as e:
            self.record("waypoint", False, str(e))
            return
        (wp,) = self.bed.status().waypoints
        self.record(
            "waypoint",
            wp.process.alive,
            f"Gateway apps/waypoint (class istio-waypoint) runs as pod {wp.pod} ({wp.ip}) with "
            f"identity spiffe://cluster.local/ns/apps/sa/{wp.service_account}",
        )
        svc = next(s for s in self.status.services if s.name == "echo")
        url = f"http://{SocketAddr(svc.vip, svc.ports[0].port)}/headers"
        answer: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done = self.bed.exec(client.name, ["curl", "-sS", "--max-time", "5", url])
            if done.returncode == 0:
                answer = json.loads(done.stdout)
                if answer.get("headers", {}).get("x-demo") == "via-waypoint":
                    break
            time.sleep(0.3)
        seen_from = str(answer.get("client", "")).rsplit(":", 1)[0]
        self.record(
            "HTTPRoute at the waypoint",
            answer.get("headers", {}).get("x-demo") == "via-waypoint" and seen_from == wp.ip,
            f"{client.name} -> {url}: answered by {answer.get('pod')}, which saw client "
            f"{answer.get('client')} (the waypoint) and the route's header "
            f"x-demo: {answer.get('headers', {}).get('x-demo')}",
        )
        done = self.bed.exec(
            client.name,
            ["curl", "-sS", "--max-time", "5", "-w", " %{http_code}", "-X", "DELETE", url],
        )
        self.record(
            "L7 authorization",
            done.stdout.strip() == "RBAC: access denied 403",
            f"DELETE {url}: {done.stdout.strip()!r} (AuthorizationPolicy apps/no-delete)",
        )
        metrics = self.bed.exec(
            wp.pod, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"]
        ).stdout
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("istio_requests_total{") and 'reporter="waypoint"' in line
        )
        self.record(
            "request metrics",
            counted >= 2,
            f'the waypoint\'s istio_requests_total{{reporter="waypoint"}} counts {counted:.0f} '
            "requests",
        )


WAYPOINT_RESOURCES = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-demo, value: via-waypoint}]}
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
"""


def main(args: argparse.Namespace) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    prefix: str = args.prefix
    try:
        out(f"bringing up a 2-node testbed with the mesh (prefix {prefix})")
        bed = Testbed.up(
            prefix=prefix, nodes=2, pods_per_node=2, progress=out, image_name=args.image
        )
    except TestbedError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    ok = False
    try:
        demo = Demo(bed, out)
        ok = demo.run(args.seconds)
        passed = sum(c.ok for c in demo.checks)
        out(f"\n{passed}/{len(demo.checks)} checks passed")
    except TestbedError as e:
        print(f"demo: {e}", file=sys.stderr)
    finally:
        if args.keep:
            out(
                f"testbed left up (--keep): `ztunnel-py testbed status --prefix {prefix}`, "
                f"`ztunnel-py testbed down --prefix {prefix}`"
            )
        else:
            bed.down(out)
    return 0 if ok else 1
