"""Waypoints end to end: Istio's resources applied to the testbed, real clients, real kernel path.

One 2-node ambient testbed with Istio's waypoint Gateway applied and namespace `apps` labelled
`istio.io/use-waypoint: waypoint`. Clients in `web-1` call the `echo` service (VIP 10.96.0.10;
echo-1 is version v1, echo-2 v2) with curl, nghttp, a grpcio client and a keep-alive Python
client; the control plane compiles HTTPRoute, VirtualService, DestinationRule and
AuthorizationPolicy into the waypoint's configuration over xDS. Each test restores what it
applied, so they can run in any order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns.conftest import unique_prefix
from tests.netns.test_controlplane import debug_config
from ztunnel_py.testbed.resources import ObjectRef
from ztunnel_py.testbed.status import WaypointStatus
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

ECHO_VIP = "10.96.0.10"
WAYPOINT_ID = "spiffe://cluster.local/ns/apps/sa/waypoint"

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def apps_namespace(*, waypoint: bool) -> str:
    labels = "istio.io/dataplane-mode: ambient"
    if waypoint:
        labels += ", istio.io/use-waypoint: waypoint"
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: apps, labels: {{{labels}}}}}\n"


def service(name: str, selector: str, target_port: int = 8080) -> str:
    """A Service of namespace apps with one http port 80."""
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\n"
        f"spec:\n  selector: {selector}\n"
        f"  ports: [{{name: http, port: 80, targetPort: {target_port}}}]\n"
    )


# an HTTPRoute for the echo service, with these rules
ECHO_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
"""

# Per-version services for HTTPRoute backends (Gateway API routes to Services, not subsets).
VERSION_SERVICES = (
    service("echo-v1", "{app: echo, version: v1}")
    + "---\n"
    + service("echo-v2", "{app: echo, version: v2}")
)

HTTP_ROUTE = (
    ECHO_ROUTE
    + """\
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-route, value: v2-only}]}
    backendRefs: [{name: echo-v2, port: 80}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: split}]}
    backendRefs: [{name: echo-v1, port: 80, weight: 80}, {name: echo-v2, port: 80, weight: 20}]
"""
)

VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: apps}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: echo, subset: v2}}]
    headers: {response: {set: {x-served-through: canary}}}
  - route: [{destination: {host: echo, subset: v1}}]
"""


def policy(name: str, action: str, rule: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: apps}}\n"
        'spec:\n  targetRefs: [{kind: Service, group: "", name: echo}]\n'
        f"  action: {action}\n  rules:\n{rule}"
    )


DENY_DELETE = policy("no-delete", "DENY", '  - to: [{operation: {methods: ["DELETE"]}}]\n')
ALLOW_PUBLIC = policy("public-only", "ALLOW", '  - to: [{operation: {paths: ["/public/*"]}}]\n')

# Sends `count` requests on one keep-alive connection (a new one if the server closes it),
# `interval` seconds apart, and prints one JSON line per answer: status, the answering pod
# and version, the headers the app saw, and the client's local port (a new port: a new
# connection).
CLIENT = r"""
import http.client, json, sys, time
host, path, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
headers = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
conn = None
for _ in range(count):
    for attempt in range(2):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, 80, timeout=10)
            conn.request("GET", path, headers=headers)
            local = conn.sock.getsockname()[1]
            r = conn.getresponse()
            body = r.read()
            break
        except (OSError, http.client.HTTPException) as e:
            conn = None
            if attempt:
                print(json.dumps({"error": str(e)}), flush=True)
                body = None
    if body is None:
        continue
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    print(json.dumps({"status": r.status, "pod": answer.get("pod"),
                      "version": answer.get("version"), "client": answer.get("client"),
                      "headers": answer.get("headers", {}), "local": local,
                      "served_through": r.getheader("x-served-through")}), flush=True)
    time.sleep(interval)
"""


def waypoint_testbed(tag: str, pods_per_node: int) -> Iterator[Testbed]:
    """A 2-node ambient testbed whose namespace `apps` uses a waypoint, torn down after."""
    tb = Testbed.up(prefix=unique_prefix(tag), nodes=2, pods_per_node=pods_per_node)
    try:
        tb.apply(GATEWAY + "---\n" + apps_namespace(waypoint=True))
        wait_until(lambda: answered_by_waypoint(tb), "traffic to take the waypoint")
        yield tb
    finally:
        tb.down()


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from waypoint_testbed("wp", pods_per_node=2)


def wait_until(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def waypoint(bed: Testbed) -> WaypointStatus:
    (only,) = bed.status().waypoints
    return only


def curl(bed: Testbed, *args: str, pod: str = "web-1") -> subprocess.CompletedProcess[str]:
    return bed.exec(pod, ["curl", "-sS", "--max-time", "10", *args], timeout=30)


def answer(bed: Testbed, path: str = "/", *args: str) -> dict[str, Any]:
    done = curl(bed, *args, f"http://{ECHO_VIP}{path}")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def status(bed: Testbed, path: str) -> str:
    return curl(bed, "-o", "/dev/null", "-w", "%{http_code}", f"http://{ECHO_VIP}{path}").stdout


def answered_by_waypoint(bed: Testbed) -> bool:
    done = curl(bed, f"http://{ECHO_VIP}/")
    if done.returncode != 0:
        return False
    return str(json.loads(done.stdout)["client"]).startswith(waypoint(bed).ip + ":")


def requests(
    bed: Testbed,
    path: str,
    count: int,
    *,
    interval: float = 0.0,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    argv = [sys.executable, "-c", CLIENT, ECHO_VIP, path, str(count), str(interval)]
    if headers:
        argv.append(json.dumps(headers))
    done = bed.exec("web-1", argv, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def waypoint_metrics(bed: Testbed) -> str:
    done = bed.exec(
        waypoint(bed).pod, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"]
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def waypoint_requests(bed: Testbed, **labels: str) -> float:
    """istio_requests_total{reporter="waypoint", ...} summed over the other labels."""
    total = 0.0
    for line in waypoint_metrics(bed).splitlines():
        if not line.startswith("istio_requests_total{"):
            continue
        tags = line[line.index("{") + 1 : line.rindex("}")]
        wanted = {"reporter": "waypoint", **labels}
        if all(f'{k}="{v}"' in tags for k, v in wanted.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def agent_opened(bed: Testbed, node: str) -> str:
    """The node agent's istio_tcp_connections_opened_total lines (reporter=destination)."""
    done = bed.exec(node, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"])
    assert done.returncode == 0, done.stderr
    return "\n".join(
        line
        for line in done.stdout.splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
        and 'reporter="destination"' in line
    )


def log_of(path: str | None) -> str:
    return Path(path or "").read_text(errors="replace")


def test_service_traffic_traverses_the_waypoint(bed: Testbed) -> None:
    wp = waypoint(bed)
    before = waypoint_requests(bed, destination_service="echo.apps.svc.cluster.local")
    answers = requests(bed, "/", 20)
    assert len(answers) == 20 and {a["status"] for a in answers} == {200}
    # The app sees the waypoint as its client, and both versions serve.
    assert {a["client"].rsplit(":", 1)[0] for a in answers} == {wp.ip}
    assert {a["pod"] for a in answers} == {"echo-1", "echo-2"}
    # Istio's request metrics count exactly the requests made, from web to echo.
    wait_until(
        lambda: (
            waypoint_requests(bed, destination_service="echo.apps.svc.cluster.local") == before + 20
        ),
        "the waypoint's istio_requests_total",
        within=5,
    )
    counted = waypoint_requests(
        bed, source_workload="web-1", response_code="200", connection_security_policy="mutual_tls"
    )
    assert counted >= 20
    # The destination agents accepted the waypoint's tunnels: their L4 view of the caller is
    # the waypoint's identity, not web's.
    wait_until(
        lambda: f'source_principal="{WAYPOINT_ID}"' in agent_opened(bed, "node2"),
        "node2's agent to count a connection from the waypoint",
    )
    # (their access logs name it too, as each tunnel closes: see the TCP port's test, whose
    # tunnels close with the client's connection, while these are pooled)
    # The waypoint's access log names the caller and the request.
    wp_log = log_of(wp.log)
    assert 'src.identity="spiffe://cluster.local/ns/apps/sa/web"' in wp_log
    assert 'method="GET" path="/" protocol="HTTP/1.1"' in wp_log and "response_code=200" in wp_log


def test_an_httproute_adds_headers_routes_by_path_and_splits_80_20(bed: Testbed) -> None:
    bed.apply(VERSION_SERVICES)
    bed.apply(HTTP_ROUTE)
    try:
        wait_until(
            lambda: answer(bed, "/v2/x")["headers"].get("x-route") == "v2-only", "the HTTPRoute"
        )
        for _ in range(5):
            routed = answer(bed, "/v2/x")
            assert routed["version"] == "v2" and routed["headers"]["x-route"] == "v2-only"
        answers = requests(bed, "/", 1000)
        assert len(answers) == 1000 and {a["status"] for a in answers} == {200}
        assert {a["headers"]["x-route"] for a in answers} == {"split"}
        share = Counter(a["version"] for a in answers)["v1"] / 1000
        assert 0.75 <= share <= 0.85, share
    finally:
        bed.delete(HTTP_ROUTE)
        bed.delete(VERSION_SERVICES)


def test_a_virtualservice_routes_to_destinationrule_subsets(bed: Testbed) -> None:
    bed.apply(VIRTUAL_SERVICE)
    try:
        # Only the VirtualService sets this response header: once it shows, its routes apply.
        wait_until(
            lambda: (
                requests(bed, "/", 1, headers={"x-canary": "yes"})[0]["served_through"] == "canary"
            ),
            "the VirtualService",
        )
        canary = requests(bed, "/", 10, headers={"x-canary": "yes"})
        assert {a["version"] for a in canary} == {"v2"}
        assert {a["served_through"] for a in canary} == {"canary"}
        assert {a["version"] for a in requests(bed, "/", 10)} == {"v1"}
    finally:
        bed.delete(VIRTUAL_SERVICE)


def test_grpc_unary_and_streaming_pass_through_the_waypoint(bed: Testbed) -> None:
    client = [sys.executable, "-m", "ztunnel_py.testbed.grpcclient", "--target", f"{ECHO_VIP}:9090"]
    done = bed.exec("web-1", [*client, "unary", "--request", '{"hello": "mesh"}'], timeout=60)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.splitlines()[0])
    assert reply["pod"] in ("echo-1", "echo-2")
    streamed = bed.exec("web-1", [*client, "stream", "--count", "5"], timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    assert len(streamed.stdout.splitlines()) == 5
    failing = bed.exec("web-1", [*client, "unary", "--request", '{"status": 7}'], timeout=60)
    assert failing.returncode == 7  # PERMISSION_DENIED, from the app, through trailers
    wait_until(
        lambda: waypoint_requests(bed, request_protocol="grpc", grpc_response_status="7") >= 1,
        "a grpc_response_status=7 request in the waypoint's metrics",
    )
    assert waypoint_requests(bed, request_protocol="grpc", grpc_response_status="0") >= 2


def test_http2_with_prior_knowledge_works_with_nghttp_and_curl(bed: Testbed) -> None:
    before = waypoint_requests(bed, destination_service="echo.apps.svc.cluster.local")
    done = bed.exec("web-1", ["nghttp", "-v", f"http://{ECHO_VIP}:8082/headers"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert ":status: 200" in done.stdout
    prior = curl(bed, "--http2-prior-knowledge", f"http://{ECHO_VIP}:8082/")
    assert prior.returncode == 0, prior.stderr
    # HTTP/2 end to end, and through the waypoint: the app saw its address, and it counted both
    assert json.loads(prior.stdout)["protocol"] == "HTTP/2"
    assert json.loads(prior.stdout)["client"].startswith(waypoint(bed).ip + ":")
    wait_until(
        lambda: (
            waypoint_requests(bed, destination_service="echo.apps.svc.cluster.local") == before + 2
        ),
        "the waypoint to count both requests",
        within=5,
    )


def test_l7_policies_deny_delete_and_allow_only_public_paths(bed: Testbed) -> None:
    bed.apply(DENY_DELETE)
    try:
        wait_until(
            lambda: (
                curl(bed, "-X", "DELETE", f"http://{ECHO_VIP}/x").stdout == "RBAC: access denied"
            ),
            "the DENY policy",
        )
        denied = curl(
            bed, "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", f"http://{ECHO_VIP}/x"
        )
        assert denied.stdout == "403"
        assert answer(bed, "/x")["pod"].startswith("echo-")
        wp_log = log_of(waypoint(bed).log)
        assert 'method="DELETE" path="/x"' in wp_log and "response_code=403" in wp_log
        assert "explicitly denied by: apps/no-delete" in wp_log
    finally:
        bed.delete(DENY_DELETE)
    bed.apply(ALLOW_PUBLIC)
    try:
        code = ["-o", "/dev/null", "-w", "%{http_code}"]
        wait_until(
            lambda: curl(bed, *code, f"http://{ECHO_VIP}/private").stdout == "403",
            "the ALLOW policy",
        )
        assert status(bed, "/public/page") == "200"
        assert status(bed, "/publicity") == "403"
        assert "allowed by: apps/public-only" in log_of(waypoint(bed).log)
    finally:
        bed.delete(ALLOW_PUBLIC)
        wait_until(
            lambda: curl(bed, *code, f"http://{ECHO_VIP}/private").stdout == "200", "no policy"
        )


def test_removing_the_label_returns_to_the_direct_path_without_dropping_connections(
    bed: Testbed,
) -> None:
    web1, wp = bed.status().pod("web-1").ip, waypoint(bed).ip
    # A keep-alive client that lives across the change: 30 requests, 0.2 s apart.
    argv = [sys.executable, "-c", CLIENT, ECHO_VIP, "/", "30", "0.2"]
    long_lived = subprocess.Popen(
        bed.exec_argv("web-1", argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.0)
        bed.apply(apps_namespace(waypoint=False))
        changed = time.monotonic()
        # probes back to back; a probe that began by `sent` and took the direct path shows the
        # change was in effect by then
        while True:
            sent = time.monotonic()
            if answer(bed)["client"].rsplit(":", 1)[0] == web1:
                break
            assert sent - changed < 5.0, "new connections still go through the waypoint"
        assert sent - changed < 1.0
        out, err = long_lived.communicate(timeout=60)
    finally:
        if long_lived.poll() is None:
            long_lived.kill()
        bed.apply(apps_namespace(waypoint=True))
        wait_until(lambda: answered_by_waypoint(bed), "traffic to take the waypoint again")
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 30 and all(a.get("status") == 200 for a in answers), err
    # one connection all along (the client reconnects only if it is dropped), which keeps the
    # path it was opened on: the waypoint
    assert len({a["local"] for a in answers}) == 1, answers
    assert {a["client"].rsplit(":", 1)[0] for a in answers} == {wp}


def test_a_service_label_overrides_its_namespace_both_ways(bed: Testbed) -> None:
    """`istio.io/use-waypoint` on the Service wins over the namespace's: `none` opts the
    service out of the namespace's waypoint, and a service can use a waypoint its namespace
    does not."""
    web1, wp = bed.status().pod("web-1").ip, waypoint(bed).ip
    path = bed.config_dir / ObjectRef("Service", "apps", "echo").file_name
    original = path.read_text()

    def labelled(value: str) -> str:
        document = yaml.safe_load(original)
        document["metadata"].setdefault("labels", {})["istio.io/use-waypoint"] = value
        return str(yaml.safe_dump(document))

    def caller() -> str:
        return str(answer(bed)["client"]).rsplit(":", 1)[0]

    try:
        bed.apply(labelled("none"))
        wait_until(lambda: caller() == web1, "echo to opt out of the namespace's waypoint")
        bed.apply(apps_namespace(waypoint=False) + "---\n" + labelled("waypoint"))
        wait_until(lambda: caller() == wp, "echo to use the waypoint on its own label")
    finally:
        bed.apply(apps_namespace(waypoint=True) + "---\n" + original)
        wait_until(lambda: answered_by_waypoint(bed), "traffic to take the waypoint again")


def test_a_waypoint_for_all_traffic_also_takes_pod_addressed_calls(bed: Testbed) -> None:
    wp, echo2 = waypoint(bed), bed.status().pod("echo-2").ip

    def client_of_pod_call() -> str:
        done = curl(bed, f"http://{echo2}:8080/")
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["client"]).rsplit(":", 1)[0]

    # istio.io/waypoint-for: service (the default): a pod IP is reached directly.
    assert client_of_pod_call() == bed.status().pod("web-1").ip
    bed.apply(GATEWAY.replace("waypoint-for: service", "waypoint-for: all"))
    try:
        wait_until(lambda: client_of_pod_call() == wp.ip, "pod traffic to take the waypoint")
        assert answered_by_waypoint(bed)  # and service traffic still does
    finally:
        bed.apply(GATEWAY)
        wait_until(
            lambda: client_of_pod_call() == bed.status().pod("web-1").ip, "the direct path back"
        )


RATE_LIMIT = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: ratelimit, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  url: python://local_ratelimit
  phase: AUTHZ
  pluginConfig: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 60s}
"""


def test_an_installed_user_filter_enabled_by_a_wasmplugin_limits_the_rate(bed: Testbed) -> None:
    # The example filter package (examples/ratelimit-filter) is installed by scripts/install.sh.
    bed.apply(RATE_LIMIT)
    try:
        wait_until(lambda: status(bed, "/") == "429", "the rate limiter", within=20)
        done = curl(bed, "-i", f"http://{ECHO_VIP}/")
        assert "429" in done.stdout.splitlines()[0] and "x-ratelimit-limit: 5" in done.stdout
        assert done.stdout.endswith("local_rate_limited")
        assert 'response_code=429 response_flags="RL"' in log_of(waypoint(bed).log)
    finally:
        bed.delete(RATE_LIMIT)
        wait_until(lambda: status(bed, "/") == "200", "no rate limit")


# An Upgrade request to the pod app, which answers 101 and then echoes raw bytes.
UPGRADE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(b"GET /chat HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
status = head.split(b"\r\n", 1)[0].decode()
s.sendall(b"raw bytes after the switch")
echoed = b""
while len(echoed) < 26:
    chunk = s.recv(4096)
    if not chunk:
        break
    echoed += chunk
print(status)
print(echoed.decode())
"""


def test_a_websocket_style_upgrade_passes_through_the_waypoint(bed: Testbed) -> None:
    done = bed.exec("web-1", [sys.executable, "-c", UPGRADE, ECHO_VIP], timeout=30)
    assert done.returncode == 0, done.stderr
    status_line, echoed = done.stdout.splitlines()[:2]
    assert status_line.startswith("HTTP/1.1 101") and echoed == "raw bytes after the switch"


# A service whose port is declared TCP (name prefix `tcp-`), with one endpoint: the waypoint
# relays its connections at L4 instead of parsing HTTP.
TCP_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: echo-tcp, namespace: apps}
spec:
  clusterIP: 10.96.5.5
  selector: {app: echo, version: v1}
  ports: [{name: tcp-web, port: 8080, targetPort: 8080}]
"""


def test_a_tcp_port_is_proxied_at_l4_by_the_waypoint(bed: Testbed) -> None:
    def waypoint_counts() -> tuple[float, float]:
        tcp = 0.0
        for line in waypoint_metrics(bed).splitlines():
            if (
                line.startswith("istio_tcp_connections_opened_total{")
                and 'reporter="waypoint"' in line
            ):
                tcp += float(line.rsplit(" ", 1)[1])
        return tcp, waypoint_requests(bed, destination_service="echo-tcp.apps.svc.cluster.local")

    def tunnels_from_waypoint() -> int:
        """The destination agents' access-log lines of closed tunnels from the waypoint to a
        pod's port 8080 (logged as each closes: these close with the client's connection)."""
        return sum(
            "connection complete" in line
            and 'direction="inbound"' in line
            and f'src.identity="{WAYPOINT_ID}"' in line
            and ":8080" in line.partition("dst.hbone_addr=")[2].partition(" ")[0]
            for node in ("node1", "node2")
            for line in log_of(bed.status().node(node).log).splitlines()
        )

    bed.apply(TCP_SERVICE)
    try:
        before = waypoint_counts()
        logged_before = tunnels_from_waypoint()

        def through_waypoint() -> bool:
            done = curl(bed, "http://10.96.5.5:8080/")
            if done.returncode != 0:
                return False
            return str(json.loads(done.stdout)["client"]).startswith(waypoint(bed).ip + ":")

        wait_until(through_waypoint, "echo-tcp through the waypoint")
        tcp, requests_counted = waypoint_counts()
        assert tcp > before[0]  # relayed as TCP connections...
        assert requests_counted == before[1] == 0  # ...not parsed as HTTP requests
        # the destination agent saw the waypoint's identity, not web's
        wait_until(lambda: tunnels_from_waypoint() > logged_before, "the agent to log the tunnel")
    finally:
        bed.delete(TCP_SERVICE)


# Routes to a Service without endpoints and to a port nothing listens on; anything else has no
# route (an HTTPRoute attached to a Service replaces its default route).
FAILING_ROUTES = (
    service("nobody", "{app: nobody}")
    + "---\n"
    + service("echo-closed", "{app: echo, version: v1}", target_port=9)
    + "---\n"
    + ECHO_ROUTE
    + """\
  - matches: [{path: {type: PathPrefix, value: /ok}}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /nobody}}]
    backendRefs: [{name: nobody, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /closed}}]
    backendRefs: [{name: echo-closed, port: 80}]
"""
)

# Sends argv[2] (with Python escapes) on a new connection to argv[1]:80 and prints all it
# reads until the server closes the connection (a timeout if it never does).
RAW_REQUEST = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(sys.argv[2].encode("latin-1").decode("unicode_escape").encode("latin-1"))
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode("latin-1"))
"""


def test_bad_requests_and_failing_upstreams_get_envoys_answers_from_the_waypoint(
    bed: Testbed,
) -> None:
    def raw(request: str) -> str:
        done = bed.exec("web-1", [sys.executable, "-c", RAW_REQUEST, ECHO_VIP, request])
        assert done.returncode == 0, done.stderr  # the waypoint closed the connection
        return done.stdout

    def code(*args: str) -> str:
        return curl(bed, "-o", "/dev/null", "-w", "%{http_code}", *args).stdout

    # malformed HTTP: 400, then the connection is closed
    bad = raw("GET / HTTP/1.1\\r\\nHost: echo\\r\\nno colon here\\r\\n\\r\\n")
    assert bad.startswith("HTTP/1.1 400 "), bad
    # Envoy's header limits: more than 100 headers, or more than 60 KiB of them
    many = [arg for i in range(101) for arg in ("-H", f"x-h{i}: v")]
    assert code(*many, f"http://{ECHO_VIP}/") == "431"
    assert code("-H", "x-big: " + "a" * 61 * 1024, f"http://{ECHO_VIP}/") == "431"
    bed.apply(FAILING_ROUTES)
    try:
        wait_until(lambda: code(f"http://{ECHO_VIP}/elsewhere") == "404", "the routes")
        nobody = curl(bed, "-w", " %{http_code}", f"http://{ECHO_VIP}/nobody")
        assert nobody.stdout == "no healthy upstream 503"
        closed = curl(bed, "-w", " %{http_code}", f"http://{ECHO_VIP}/closed")
        assert closed.stdout.startswith("upstream connect error") and closed.stdout.endswith(" 503")
        # the waypoint still serves, and its access log says why each request failed
        assert code(f"http://{ECHO_VIP}/ok") == "200"
        lines = log_of(waypoint(bed).log).splitlines()

        def flags(path: str, status: int) -> set[str]:
            return {
                line.partition("response_flags=")[2].partition(" ")[0].strip('"')
                for line in lines
                if f'path="{path}"' in line and f"response_code={status} " in line
            }

        assert flags("/elsewhere", 404) == {"NR"}
        assert flags("/nobody", 503) == {"UH"}
        (closed_flags,) = flags("/closed", 503)
        assert "UF" in closed_flags.split(","), closed_flags
    finally:
        bed.delete(FAILING_ROUTES)


PROBLEM_ROUTE = (
    ECHO_ROUTE
    + """\
  - matches: [{path: {type: PathPrefix, value: /gone}}]
    backendRefs: [{name: missing, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/v[2"}}, {path: {value: /ok}}]
    backendRefs: [{name: echo, port: 80}]
"""
)


def test_route_problems_show_in_debug_config_and_the_route_serves_what_it_can(
    bed: Testbed,
) -> None:
    bed.apply(PROBLEM_ROUTE)
    try:
        # a backend that does not exist: its share gets 500, as in Gateway API
        wait_until(lambda: status(bed, "/gone/x") == "500", "the HTTPRoute")
        # the invalid match is left out, the valid one serves
        assert status(bed, "/ok") == "200" and status(bed, "/v2") == "404"
        problems = json.dumps(debug_config(bed))
        assert "backend Service apps/missing not found" in problems
        assert "invalid regular expression '/v[2'" in problems
    finally:
        bed.delete(PROBLEM_ROUTE)


def test_the_waypoint_keeps_its_last_configuration_while_the_control_plane_is_down(
    bed: Testbed,
) -> None:
    bed.apply(VERSION_SERVICES)
    bed.apply(HTTP_ROUTE)
    try:
        wait_until(lambda: answer(bed, "/v2/x")["headers"].get("x-route") == "v2-only", "routes")
        bed.stop_controlplane()
        try:
            for _ in range(3):
                routed = answer(bed, "/v2/x")
                assert routed["version"] == "v2" and routed["headers"]["x-route"] == "v2-only"
        finally:
            bed.start_controlplane()
    finally:
        bed.delete(HTTP_ROUTE)
        bed.delete(VERSION_SERVICES)
