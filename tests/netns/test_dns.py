"""DNS end to end: the testbed's cluster DNS, the agent's DNS proxy and port-53 capture, with
real clients (dig, curl, getent, Python's resolver) in real pods.

One dual-stack ambient testbed with one node: `web-1` (enrolled, namespace apps), `echo-1`
(enrolled, behind service `echo`), `legacy-1` (not enrolled), the cluster DNS (dnsmasq, TTL 5)
and its fake upstream zone `external.test`. The proxy answers mesh names with TTL 30 and
forwards the rest, which is how a test tells who answered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns.conftest import unique_prefix
from tests.netns.test_waypoint import wait_until
from ztunnel_py.bench import dns as dns_bench
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

ECHO_VIP, ECHO_VIP6 = "10.96.0.10", "fd00:10:96::10"
ECHO_FQDN = "echo.apps.svc.cluster.local"
CLUSTER_DNS6 = "fd00:10:250::5"
PROXY_TTL, CLUSTER_DNS_TTL = 30, 5


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("dns"), nodes=1, pods_per_node=2, dual_stack=True)
    try:
        yield tb
    finally:
        tb.down()


def dig(bed: Testbed, pod: str, *args: str) -> dict[str, object]:
    """dig's answer: status, flags and the answer records as (name, ttl, type, data)."""
    lines = bed.exec(pod, ["dig", "+time=2", "+tries=1", *args]).stdout.splitlines()
    header = next((x for x in lines if "status:" in x), "")
    flags = next((x for x in lines if x.startswith(";; flags:")), "")
    records = []
    for line in lines:
        if line.startswith(";") or not line.strip():
            continue
        name, ttl, _cls, rtype, data = line.split(None, 4)
        records.append((name, int(ttl), rtype, data))
    return {
        "status": header.split("status:")[1].split(",")[0].strip() if header else "",
        "flags": flags.split("flags:")[1].split(";")[0].split() if flags else [],
        "records": records,
        "output": "\n".join(lines),
    }


def curl(bed: Testbed, pod: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return bed.exec(pod, ["curl", "-sS", "--max-time", "5", *args, url], timeout=20)


def status_code(bed: Testbed, url: str) -> str:
    return curl(bed, "web-1", url, "-o", "/dev/null", "-w", "%{http_code}").stdout


def metrics(bed: Testbed) -> dict[str, list[tuple[dict[str, str], float]]]:
    done = bed.exec("node1", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"])
    assert done.returncode == 0, done.stderr
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(done.stdout):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(bed: Testbed, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in metrics(bed).get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


def config_dump(bed: Testbed) -> dict[str, object]:
    done = bed.exec(
        "node1", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/config_dump"]
    )
    assert done.returncode == 0, done.stderr
    dump: dict[str, object] = json.loads(done.stdout)
    return dump


# --- the cluster DNS and resolv.conf --------------------------------------------------------


def test_pods_get_kubelets_resolv_conf(bed: Testbed) -> None:
    text = bed.exec("web-1", ["cat", "/etc/resolv.conf"]).stdout
    assert text.splitlines() == [
        "search apps.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 10.250.0.5",
        f"nameserver {CLUSTER_DNS6}",
        "options ndots:5",
    ]
    assert (
        "search legacy.svc.cluster.local"
        in bed.exec("legacy-1", ["cat", "/etc/resolv.conf"]).stdout
    )


def test_a_pod_outside_the_mesh_uses_the_cluster_dns_directly(bed: Testbed) -> None:
    before = total(bed, "istio_dns_requests_total")
    answer = dig(bed, "legacy-1", ECHO_FQDN)
    assert answer["records"] == [(ECHO_FQDN + ".", CLUSTER_DNS_TTL, "A", ECHO_VIP)]
    upstream = dig(bed, "legacy-1", "api.external.test")
    assert upstream["records"] == [("api.external.test.", CLUSTER_DNS_TTL, "A", "10.250.0.6")]
    assert dig(bed, "legacy-1", "nothing.apps.svc.cluster.local")["status"] == "NXDOMAIN"
    # never the real network: a name outside the fake zone is NXDOMAIN, at once
    assert dig(bed, "legacy-1", "example.com")["status"] == "NXDOMAIN"
    assert total(bed, "istio_dns_requests_total") == before


# --- the proxy ------------------------------------------------------------------------------


def test_services_resolve_by_every_name_and_are_reached_through_the_mesh(bed: Testbed) -> None:
    opened = total(
        bed,
        "istio_tcp_connections_opened_total",
        reporter="destination",
        source_canonical_service="web",
    )
    for url in ("http://echo/", "http://echo.apps/", f"http://{ECHO_FQDN}/"):
        done = curl(bed, "web-1", url)
        assert done.returncode == 0, f"{url}: {done.stderr}"
        assert json.loads(done.stdout)["pod"] == "echo-1"
    assert (
        total(
            bed,
            "istio_tcp_connections_opened_total",
            reporter="destination",
            source_canonical_service="web",
        )
        >= opened + 3
    )
    answered = total(bed, "istio_dns_requests_total", source_canonical_service="web")
    assert answered >= 3


def test_the_proxy_answers_both_families_over_udp_and_tcp(bed: Testbed) -> None:
    for extra in ((), ("+tcp",), (f"@{CLUSTER_DNS6}",), ("+tcp", f"@{CLUSTER_DNS6}")):
        a = dig(bed, "web-1", *extra, ECHO_FQDN)
        assert a["records"] == [(ECHO_FQDN + ".", PROXY_TTL, "A", ECHO_VIP)], a["output"]
        assert "aa" in a["flags"]
        aaaa = dig(bed, "web-1", *extra, "AAAA", ECHO_FQDN)
        assert aaaa["records"] == [(ECHO_FQDN + ".", PROXY_TTL, "AAAA", ECHO_VIP6)], aaaa["output"]
    tcp = total(bed, "istio_dns_requests_total", request_protocol="tcp", request_query_type="aaaa")
    assert tcp >= 2


def test_search_domains_are_expanded_by_the_proxy(bed: Testbed) -> None:
    # what a resolver with ndots:5 asks first for `echo.apps`: answered, with a CNAME
    answer = dig(bed, "web-1", "echo.apps.apps.svc.cluster.local")
    assert answer["records"] == [
        ("echo.apps.apps.svc.cluster.local.", PROXY_TTL, "CNAME", "echo.apps."),
        ("echo.apps.", PROXY_TTL, "A", ECHO_VIP),
    ]
    assert dig(bed, "web-1", "echo")["records"] == [("echo.", PROXY_TTL, "A", ECHO_VIP)]


def test_getent_and_pythons_resolver(bed: Testbed) -> None:
    done = bed.exec("web-1", ["getent", "ahostsv4", "echo"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == ECHO_VIP
    assert "echo.apps.svc.cluster.local" in done.stdout  # the canonical name, via the search list
    script = (
        "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo("
        "'echo.apps', 80, proto=socket.IPPROTO_TCP)}))"
    )
    done = bed.exec("web-1", ["python3", "-c", script])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted([ECHO_VIP, ECHO_VIP6]))


def test_other_names_are_forwarded_and_unknown_ones_are_nxdomain(bed: Testbed) -> None:
    labels = {"source_canonical_service": "web", "request_protocol": "udp"}
    before = total(bed, "istio_dns_upstream_requests_total", **labels)
    answer = dig(bed, "web-1", "api.external.test")
    assert answer["records"] == [("api.external.test.", CLUSTER_DNS_TTL, "A", "10.250.0.6")]
    assert dig(bed, "web-1", "nope.external.test")["status"] == "NXDOMAIN"
    assert dig(bed, "web-1", "nothing.apps.svc.cluster.local")["status"] == "NXDOMAIN"
    assert dig(bed, "web-1", "MX", ECHO_FQDN)["status"] == "NOERROR"  # forwarded: not A/AAAA
    assert total(bed, "istio_dns_upstream_requests_total", **labels) == before + 4
    assert total(bed, "istio_dns_upstream_failures_total", **labels) == 0
    assert total(bed, "istio_dns_upstream_request_duration_seconds_count", **labels) == before + 4


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp(bed: Testbed) -> None:
    udp = dig(bed, "web-1", "+noedns", "+ignore", "large.external.test")
    assert "tc" in udp["flags"]
    assert 0 < len(udp["records"]) < 60
    retried = dig(bed, "web-1", "+noedns", "large.external.test")
    assert "tc" not in retried["flags"]
    assert len(retried["records"]) == 60
    assert "Truncated, retrying in TCP mode" in str(retried["output"])


TCP_REUSE_CLIENT = """
import socket, sys, time
import dns.message
server, sport = sys.argv[1], int(sys.argv[2])
query = dns.message.make_query("echo.apps.svc.cluster.local", "A").to_wire()
for attempt in range(2):
    s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", sport))
    s.settimeout(10)
    start = time.monotonic()
    try:
        s.connect((server, 53))
        s.sendall(len(query).to_bytes(2, "big") + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - start
        rrset = dns.message.from_wire(data[2:]).answer[0]
        result = f"{elapsed:.3f} {rrset.ttl} {rrset[0]}"
        # the proxy closes the idle connection first, so its end stays in TIME_WAIT
        while s.recv(65536):
            pass
    except Exception as e:
        result = f"- {type(e).__name__}: {e}"
    finally:
        s.close()
    print(result, flush=True)
"""


@pytest.mark.parametrize(
    ("resolver", "sport"), [("10.250.0.5", 61600), (CLUSTER_DNS6, 61601)], ids=["ipv4", "ipv6"]
)
def test_dns_over_tcp_from_a_port_the_proxy_holds_in_time_wait(
    bed: Testbed, resolver: str, sport: int
) -> None:
    # The second connection's SYN meets the proxy's TIME_WAIT socket of the first: the capture
    # leaves it to the kernel's listener lookup, which must give it the proxy's listener of its
    # family, at once (not the cluster DNS, which answers with its own TTL).
    argv = [sys.executable, "-c", TCP_REUSE_CLIENT, resolver, str(sport)]
    done = bed.exec("web-1", argv, timeout=40)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [f"{PROXY_TTL} {ECHO_VIP}"] * 2, lines
    assert float(lines[1].split()[0]) < 1.0, lines


def test_dns_entries_in_config_dump(bed: Testbed) -> None:
    section = config_dump(bed)["dns"]
    assert isinstance(section, dict)
    assert section["enabled"] is True
    assert section["upstreams"] == ["10.250.0.5:53", f"[{CLUSTER_DNS6}]:53"]
    entries = {e["hostname"]: e for e in section["entries"]}
    assert entries[ECHO_FQDN]["addresses"] == [ECHO_VIP, ECHO_VIP6]
    web = bed.status().pod("web-1").uid
    assert sorted(section["pods"][web]) == [
        "tcp 127.0.0.1:15053",
        "tcp [::1]:15053",
        "udp 127.0.0.1:15053",
        "udp [::1]:15053",
    ]


def test_dns_fails_open_while_the_agent_is_down_and_tcp_stays_closed(bed: Testbed) -> None:
    bed.kill_agent("node1")
    try:
        for extra in ((), ("+tcp",), (f"@{CLUSTER_DNS6}",)):
            answer = dig(bed, "web-1", *extra, ECHO_FQDN)
            # the cluster DNS answered (its TTL), not the proxy
            assert answer["records"] == [(ECHO_FQDN + ".", CLUSTER_DNS_TTL, "A", ECHO_VIP)], answer[
                "output"
            ]
        done = curl(bed, "web-1", "http://10.250.0.6/")
        assert done.returncode != 0, "TCP must stay captured (and dropped) without the agent"
    finally:
        bed.start_agent("node1")
    wait_until(
        lambda: (
            dig(bed, "web-1", ECHO_FQDN)["records"] == [(ECHO_FQDN + ".", PROXY_TTL, "A", ECHO_VIP)]
        ),
        "the restarted agent's proxy to answer again",
    )
    assert json.loads(curl(bed, "web-1", "http://echo/").stdout)["pod"] == "echo-1"


# --- ServiceEntry and egress -----------------------------------------------------------------

EGRESS_NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: istio-egress}
"""
SERVICE_ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-api
  namespace: istio-egress
  labels: {LABELS}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"""
EGRESS_WAYPOINT = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress-waypoint, namespace: istio-egress, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
"""
EGRESS_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: external-api, namespace: istio-egress}
spec:
  parentRefs: [{kind: ServiceEntry, group: networking.istio.io, name: external-api}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-egress, value: via-waypoint}]}
    backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.external.test, port: 80}]
"""
DENY_BLOCKED = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: external-api-blocked, namespace: istio-egress}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: external-api}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/blocked/*"]}}]}]
"""
REGISTRY_ONLY = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"""


def service_entry(*, waypoint: bool) -> str:
    labels = "{istio.io/use-waypoint: egress-waypoint}" if waypoint else "{}"
    return SERVICE_ENTRY.replace("{LABELS}", labels)


def external_answer(bed: Testbed, url: str = "http://api.external.test/") -> dict[str, object]:
    done = curl(bed, "web-1", url)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    assert answer["pod"] == "external"
    return answer


def egress_headers(bed: Testbed) -> list[str]:
    """The request headers the external server saw, as `name: value`."""
    headers = external_answer(bed)["headers"]
    assert isinstance(headers, dict)
    return [f"{k}: {v}" for k, v in headers.items()]


def vip_records(bed: Testbed, qtype: str) -> list[tuple[str, int, str, str]]:
    answer = dig(bed, "web-1", qtype, "api.external.test")
    return answer["records"]  # type: ignore[return-value]


def test_a_service_entry_host_gets_an_allocated_vip_and_its_connections(bed: Testbed) -> None:
    bed.apply(EGRESS_NAMESPACE + "---\n" + service_entry(waypoint=False))
    try:
        wait_until(
            lambda: [r[3] for r in vip_records(bed, "A")] == ["240.240.0.1"],
            "the ServiceEntry's VIP to be answered",
        )
        assert vip_records(bed, "A") == [("api.external.test.", PROXY_TTL, "A", "240.240.0.1")]
        assert vip_records(bed, "AAAA") == [("api.external.test.", PROXY_TTL, "AAAA", "2001:2::1")]
        # a pod outside the mesh still gets the real address from the cluster DNS
        outside = dig(bed, "legacy-1", "api.external.test")["records"]
        assert outside == [("api.external.test.", CLUSTER_DNS_TTL, "A", "10.250.0.6")]

        labels = {"reporter": "source", "destination_service": "api.external.test"}
        before = total(bed, "istio_tcp_connections_opened_total", **labels)
        for family in ("-4", "-6"):
            done = curl(bed, "web-1", "http://api.external.test/", family)
            assert done.returncode == 0, f"{family}: {done.stderr}"
            assert json.loads(done.stdout)["pod"] == "external"
        assert total(bed, "istio_tcp_connections_opened_total", **labels) == before + 2
        log = str(bed.status().nodes[0].log)
        with open(log) as f:
            assert 'dst.service="api.external.test" dst.workload="external-api"' in f.read()
    finally:
        bed.delete(service_entry(waypoint=False))


def test_egress_through_a_waypoint_applies_routes_and_policies(bed: Testbed) -> None:
    bed.apply(EGRESS_NAMESPACE + "---\n" + EGRESS_WAYPOINT)
    bed.apply(service_entry(waypoint=True) + "---\n" + EGRESS_ROUTE)
    try:
        wait_until(
            lambda: "x-egress: via-waypoint" in egress_headers(bed),
            "the egress waypoint's route to add its header",
        )
        waypoint_ip = bed.status().waypoint("egress-waypoint", "istio-egress").ip
        assert str(external_answer(bed)["client"]).startswith(waypoint_ip + ":")

        bed.apply(DENY_BLOCKED)
        blocked = "http://api.external.test/blocked/x"
        wait_until(lambda: status_code(bed, blocked) == "403", "the DENY on the ServiceEntry")
        assert external_answer(bed, "http://api.external.test/open")["path"] == "/open"
    finally:
        bed.delete(DENY_BLOCKED + "---\n" + EGRESS_ROUTE + "---\n" + service_entry(waypoint=True))
        bed.delete(EGRESS_WAYPOINT)


def test_registry_only_refuses_undeclared_destinations(bed: Testbed) -> None:
    bed.apply(EGRESS_NAMESPACE + "---\n" + service_entry(waypoint=False))
    try:
        external_answer(bed, "http://10.250.0.6/")  # allowed by default (ALLOW_ANY)
        bed.apply(REGISTRY_ONLY)
        wait_until(
            lambda: curl(bed, "web-1", "http://10.250.0.6/").returncode != 0,
            "REGISTRY_ONLY to refuse an undeclared address",
        )
        # declared hosts still work, and so does the mesh
        assert external_answer(bed)["pod"] == "external"
        assert json.loads(curl(bed, "web-1", "http://echo/").stdout)["pod"] == "echo-1"
        bed.delete(REGISTRY_ONLY)
        wait_until(
            lambda: curl(bed, "web-1", "http://10.250.0.6/").returncode == 0,
            "ALLOW_ANY again once the ConfigMap is gone",
        )
    finally:
        bed.delete(REGISTRY_ONLY + "---\n" + service_entry(waypoint=False))


def test_the_bench_load_generator_measures_both_paths(bed: Testbed) -> None:
    results = dns_bench.measure(bed, queries=200, concurrency=4)
    for name, paths in results.items():
        for path, result in paths.items():
            assert (result.queries, result.failures) == (200, 0), (name, path, result)
            assert result.qps > 0 and 0 < result.p50_ms <= result.p99_ms
    table = dns_bench.render(results, 200, 4)
    assert table.count("(proxy / direct)") == 2
