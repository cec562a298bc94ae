"""Traffic management at the waypoint end to end: DestinationRule traffic policies and the
VirtualService resilience features, applied through the control plane, exercised with real
clients on the kernel path.

One 2-node ambient testbed with 4 pods per node (echo-1, echo-1-3 are version v1; echo-2,
echo-2-3 are v2), the waypoint Gateway, namespace `apps` using it. Clients in `web-1` call
services through the waypoint. Some tests give endpoints their own behaviour the way one does
in Kubernetes, by changing Pod objects: a named container port that points v2 at a port where
nothing listens (a backend failing half of its requests), or an extra label (an endpoint
joining a Service). Each test restores what it changed.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns.test_controlplane import debug_config
from tests.netns.test_waypoint import (
    ECHO_VIP,
    curl,
    wait_until,
    waypoint,
    waypoint_requests,
    waypoint_testbed,
)
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.resources import ObjectRef
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

HALF_VIP = "10.96.7.7"
SINGLE_VIP = "10.96.7.8"
STICKY_VIP = "10.96.7.9"
V1_PODS = ("echo-1", "echo-1-3")
V2_PODS = ("echo-2", "echo-2-3")

# `count` requests from each of `threads` threads, each on a keep-alive connection of its own;
# one JSON line per answer: status, the answering pod and version, how long it took, and the
# headers a test looks at.
LOAD = r"""
import http.client, json, sys, threading, time
host, path, count, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
headers = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
header_sets = headers if isinstance(headers, list) else [headers]  # request i: set i mod len
lock = threading.Lock()
start = time.monotonic()
def worker():
    conn = None
    for i in range(count):
        began = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, 80, timeout=20)
            conn.request("GET", path, headers=header_sets[i % len(header_sets)])
            r = conn.getresponse()
            body = r.read()
            try:
                answer = json.loads(body)
            except ValueError:
                answer = {}
            out = {"status": r.status, "pod": answer.get("pod"), "version": answer.get("version"),
                   "at": began - start, "ms": (time.monotonic() - began) * 1000,
                   "overloaded": r.getheader("x-envoy-overloaded"),
                   "set_cookie": r.getheader("set-cookie")}
        except (OSError, http.client.HTTPException) as e:
            conn = None
            out = {"error": str(e), "at": began - start}
        with lock:
            print(json.dumps(out), flush=True)
workers = [threading.Thread(target=worker) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from waypoint_testbed("tp", pods_per_node=4)


def load(
    bed: Testbed,
    vip: str,
    path: str,
    count: int,
    *,
    threads: int = 1,
    headers: dict[str, str] | list[dict[str, str]] | None = None,
    timeout: float = 180,
) -> list[dict[str, Any]]:
    """`count` requests on each of `threads` connections from web-1; with a list of header sets,
    request i sends set i modulo its length (one process asks for several users at once)."""
    argv = [sys.executable, "-c", LOAD, vip, path, str(count), str(threads)]
    if headers:
        argv.append(json.dumps(headers))
    done = bed.exec("web-1", argv, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def statuses(answers: list[dict[str, Any]]) -> Counter[int]:
    return Counter(a.get("status", 0) for a in answers)


def config_dump(bed: Testbed) -> dict[str, Any]:
    done = bed.exec(
        waypoint(bed).pod, ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/config_dump"]
    )
    assert done.returncode == 0, done.stderr
    dump: dict[str, Any] = json.loads(done.stdout)
    return dump


def policy_known(bed: Testbed, service: str, origin: str) -> bool:
    """The waypoint has the traffic policy from `origin` for `service` (not used yet: its
    cluster starts fresh with the first request)."""
    key = f"apps/{service}.apps.svc.cluster.local"
    for http in config_dump(bed)["httpRoutes"]:
        if http["service"] == key:
            return any(p["origin"] == origin for p in http["trafficPolicies"])
    return False


def route_known(bed: Testbed, service: str, origin: str) -> bool:
    """The waypoint routes `service` by a route from `origin` (e.g. "VirtualService apps/x")."""
    key = f"apps/{service}.apps.svc.cluster.local"
    return any(
        r["origin"].startswith(origin + " ")
        for http in config_dump(bed)["httpRoutes"]
        if http["service"] == key
        for r in http["routes"]
    )


def cluster_view(bed: Testbed, name: str) -> dict[str, Any] | None:
    return next((c for c in config_dump(bed)["clusters"] if c["name"] == name), None)


# --- Pods changed the Kubernetes way -------------------------------------------------------------


def pod_object(bed: Testbed, name: str) -> dict[str, Any]:
    path = bed.config_dir / ObjectRef("Pod", "apps", name).file_name
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def apply_objects(bed: Testbed, *documents: dict[str, Any]) -> None:
    bed.apply("---\n".join(yaml.safe_dump(d) for d in documents))


def with_port(pod: dict[str, Any], name: str, number: int) -> dict[str, Any]:
    changed = json.loads(json.dumps(pod))
    changed["spec"]["containers"][0]["ports"].append(
        {"name": name, "containerPort": number, "protocol": "TCP"}
    )
    return changed


def with_label(pod: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    changed = json.loads(json.dumps(pod))
    changed["metadata"].setdefault("labels", {})[key] = value
    return changed


def service(name: str, vip: str, selector: str, target: str = "8080") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\n"
        f"spec:\n  clusterIP: {vip}\n  selector: {selector}\n"
        f"  ports: [{{name: http, port: 80, targetPort: {target}}}]\n"
    )


def reaches(bed: Testbed, vip: str, path: str = "/") -> bool:
    done = curl(bed, "-o", "/dev/null", "-w", "%{http_code}", f"http://{vip}{path}")
    return done.stdout == "200"


@pytest.fixture
def half(bed: Testbed) -> Iterator[str]:
    """Service `half` (all four echo pods) on the container port named `web`: 8080 on the v1
    pods, 9999 on the v2 ones, where nothing listens. Half of its endpoints fail every
    request (the destination's agent cannot reach the app: a connection failure)."""
    originals = [pod_object(bed, p) for p in (*V1_PODS, *V2_PODS)]
    changed = [with_port(p, "web", 8080) for p in originals[:2]]
    changed += [with_port(p, "web", 9999) for p in originals[2:]]
    text = service("half", HALF_VIP, "{app: echo}", "web")
    apply_objects(bed, *changed)
    bed.apply(text)
    try:
        wait_until(lambda: reaches(bed, HALF_VIP), "service half")
        yield HALF_VIP
    finally:
        bed.delete(text)
        apply_objects(bed, *originals)


def virtual_service(host: str, route: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {host}, namespace: apps}}\n"
        f"spec:\n  hosts: [{host}]\n  http:\n{route}"
    )


def destination_rule(host: str, spec: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {host}, namespace: apps}}\n"
        f"spec:\n  host: {host}\n{spec}"
    )


# --- retries -------------------------------------------------------------------------------------

NO_RETRIES = virtual_service(
    "half", "  - route: [{destination: {host: half}}]\n    retries: {attempts: 0}\n"
)
THREE_RETRIES = virtual_service(
    "half",
    "  - route: [{destination: {host: half}}]\n"
    '    retries: {attempts: 3, perTryTimeout: 5s, retryOn: "5xx,gateway-error,connect-failure,'
    'refused-stream"}\n'
    "    timeout: 15s\n",
)


def test_three_retries_turn_a_backend_failing_half_its_requests_into_success(
    bed: Testbed, half: str
) -> None:
    bed.apply(NO_RETRIES)
    try:
        wait_until(lambda: statuses(load(bed, half, "/", 10))[503] > 0, "retries to be turned off")
        plain = statuses(load(bed, half, "/", 200))
        # without retries about half of the requests hit a failing endpoint
        assert 0.3 < plain[503] / 200 < 0.7, plain
        bed.apply(THREE_RETRIES)
        wait_until(
            lambda: statuses(load(bed, half, "/", 20))[200] == 20, "the retry policy", within=20
        )
        retried = statuses(load(bed, half, "/", 400))
        assert retried[200] / 400 >= 0.99, retried
    finally:
        bed.delete(THREE_RETRIES)


def test_retries_also_mask_failures_that_strike_at_random(bed: Testbed) -> None:
    """Every endpoint fails half its requests at random (`/flaky/50`): four tries all fail
    for one request in sixteen, whatever endpoints they reach."""

    def echo_retries(attempts: int) -> str:
        return virtual_service(
            "echo",
            "  - route: [{destination: {host: echo}}]\n"
            f'    retries: {{attempts: {attempts}, retryOn: "5xx"}}\n',
        )

    bed.apply(echo_retries(0))
    try:
        # not a wait on failures: without the VirtualService the default retries fail on
        # /flaky/100 too, but mask most failures of the /flaky/50 run below
        wait_until(lambda: route_known(bed, "echo", "VirtualService apps/echo"), "no retries")
        plain = statuses(load(bed, ECHO_VIP, "/flaky/50", 300))
        assert 0.38 < plain[200] / 300 < 0.62, plain
        bed.apply(echo_retries(3))
        wait_until(lambda: statuses(load(bed, ECHO_VIP, "/flaky/50", 20))[200] >= 17, "3 retries")
        retried = statuses(load(bed, ECHO_VIP, "/flaky/50", 300))
        assert retried[200] / 300 > 0.88, retried  # 15/16 expected
    finally:
        bed.delete(echo_retries(3))


# --- outlier detection ---------------------------------------------------------------------------

EJECTING = destination_rule(
    "half",
    "  trafficPolicy:\n"
    "    loadBalancer: {simple: ROUND_ROBIN}\n"
    "    outlierDetection: {consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 4s,\n"
    "                       maxEjectionPercent: 50}\n",
)


def test_an_ejected_endpoint_gets_no_traffic_until_its_ejection_ends(
    bed: Testbed, half: str
) -> None:
    bed.apply(NO_RETRIES)
    bed.apply(EJECTING)
    name = "outbound|80||half.apps.svc.cluster.local"
    try:
        wait_until(lambda: policy_known(bed, "half", "DestinationRule apps/half"), "the policy")
        # requests of at least 40 ms each, for about 8 s
        answers = load(bed, half, "/delay/40", 170)
        failures = sorted(a["at"] for a in answers if a.get("status") != 200)
        # round robin: each failing endpoint is tried within the first four requests, fails
        # once and is ejected at once
        assert len(failures) >= 2 and failures[1] < 1.0, failures
        first, both_out = failures[:2]
        assert [t for t in failures if both_out < t < first + 3.9] == [], failures
        # they come back 4 s after (at the next 1 s sweep), fail again, and are ejected again
        # (for 8 s: no third round within the run)
        returned = [t for t in failures if first + 3.9 <= t <= both_out + 5.5]
        assert len(returned) == 2 and len(failures) == 4, failures
        view = cluster_view(bed, name)
        assert view is not None and view["origin"] == "DestinationRule apps/half"
        endpoints = view["outlierDetection"]["endpoints"]
        v2_ips = {bed.status().pod(p).ip for p in V2_PODS}
        ejected = {a.split(":")[0] for a, e in endpoints.items() if e["ejections"] >= 1}
        assert ejected == v2_ips
        assert all(
            e["lastEjection"] == "consecutive gateway errors"
            for a, e in endpoints.items()
            if a.split(":")[0] in v2_ips
        )
    finally:
        bed.delete(EJECTING)
        bed.delete(NO_RETRIES)


# --- circuit breakers ----------------------------------------------------------------------------

SINGLE = service("single", SINGLE_VIP, "{app: echo, version: v1}")


def test_max_connections_queue_requests_and_overflow_gets_503_uo(bed: Testbed) -> None:
    one_connection = destination_rule(
        "single", "  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 1}}\n"
    )
    # Istio's circuit breaking task: one connection, one pending request, one request per
    # connection
    breaking = destination_rule(
        "single",
        "  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n"
        "      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n",
    )
    bed.apply(SINGLE)
    try:
        wait_until(lambda: reaches(bed, SINGLE_VIP), "service single")
        bed.apply(one_connection)
        name = "outbound|80||single.apps.svc.cluster.local"
        wait_until(lambda: policy_known(bed, "single", "DestinationRule apps/single"), "the limit")
        # maxConnections alone: requests wait for the connection of their endpoint (two
        # endpoints: at most two at a time), and all are served
        queued = load(bed, SINGLE_VIP, "/delay/400", 1, threads=10)
        assert statuses(queued) == {200: 10}, queued
        assert max(a["ms"] for a in queued) > 1000
        before = waypoint_requests(bed, response_flags="UO")
        bed.apply(breaking)
        wait_until(
            lambda: statuses(load(bed, SINGLE_VIP, "/delay/300", 1, threads=10))[503] > 0,
            "the pending limit",
        )
        answers = load(bed, SINGLE_VIP, "/delay/800", 1, threads=10)
        counted = statuses(answers)
        # one in flight and one pending per endpoint at most; the rest overflow at once
        assert counted[200] >= 2 and counted[503] >= 4, counted
        for a in answers:
            if a["status"] == 503:
                assert a["overloaded"] == "true" and a["ms"] < 400
        wait_until(
            lambda: waypoint_requests(bed, response_flags="UO") - before >= counted[503],
            "UO in the waypoint's istio_requests_total",
        )
        view = cluster_view(bed, name)
        assert view is not None and view["stats"]["upstream_rq_pending_overflow"] >= 4
    finally:
        bed.delete(breaking)
        bed.delete(SINGLE)


# --- load balancing ------------------------------------------------------------------------------


def test_round_robin_and_a_cookie_that_the_waypoint_sets(bed: Testbed) -> None:
    round_robin = destination_rule(
        "echo", "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n"
    )
    cookie = destination_rule(
        "echo",
        "  trafficPolicy:\n    loadBalancer:\n"
        "      consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}\n",
    )
    bed.apply(round_robin)
    try:
        wait_until(lambda: policy_known(bed, "echo", "DestinationRule apps/echo"), "the rule")
        wait_until(
            lambda: (
                Counter(a["pod"] for a in load(bed, ECHO_VIP, "/", 8))
                == Counter({p: 2 for p in (*V1_PODS, *V2_PODS)})
            ),
            "round robin",
        )
        spread = Counter(a["pod"] for a in load(bed, ECHO_VIP, "/", 40))
        assert spread == {p: 10 for p in (*V1_PODS, *V2_PODS)}
        bed.apply(cookie)
        wait_until(lambda: bool(load(bed, ECHO_VIP, "/", 1)[0]["set_cookie"]), "the session cookie")
        (first,) = load(bed, ECHO_VIP, "/", 1)
        assert "; Max-Age=60; Path=/; HttpOnly" in first["set_cookie"]
        value = first["set_cookie"].split(";")[0]
        followers = load(bed, ECHO_VIP, "/", 30, headers={"cookie": value})
        assert {a["pod"] for a in followers} == {first["pod"]}
        assert not any(a["set_cookie"] for a in followers)
    finally:
        bed.delete(cookie)


STICKY = service("sticky", STICKY_VIP, "{app: echo, pool: sticky}")
BY_USER = destination_rule(
    "sticky", "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n"
)
USERS = [f"user-{i}" for i in range(40)]


def test_a_consistent_hash_keeps_a_user_on_one_endpoint_while_another_is_added(
    bed: Testbed,
) -> None:
    pods = ("echo-1", "echo-1-3", "echo-2", "echo-2-3")
    originals = {p: pod_object(bed, p) for p in pods}
    newcomer = "echo-2-3"

    def pool(*members: str) -> None:
        apply_objects(
            bed,
            *(
                with_label(originals[p], "pool", "sticky") if p in members else originals[p]
                for p in pods
            ),
        )

    def mapping() -> dict[str, str]:
        # one request per user, all from one client process
        answers = load(bed, STICKY_VIP, "/", len(USERS), headers=[{"x-user": u} for u in USERS])
        return {u: a["pod"] for u, a in zip(USERS, answers, strict=True)}

    def hashed_over_three() -> bool:
        # the Service can answer before the DestinationRule reaches the waypoint; until then
        # requests are balanced one by one, which also reaches all three endpoints
        first = mapping()
        return len(set(first.values())) == 3 and mapping() == first

    three = ("echo-1", "echo-1-3", "echo-2")
    pool(*three)
    bed.apply(STICKY)
    bed.apply(BY_USER)
    try:
        wait_until(lambda: reaches(bed, STICKY_VIP), "service sticky")
        wait_until(hashed_over_three, "the hash over the three endpoints", within=20)
        before = mapping()
        assert before == mapping()  # stable while nothing changes
        pool(*three, newcomer)
        wait_until(lambda: newcomer in mapping().values(), "the fourth endpoint", within=20)
        after = mapping()
        moved_to_new = [u for u in USERS if after[u] == newcomer]
        between_old = [u for u in USERS if after[u] not in (before[u], newcomer)]
        # a ring: about a quarter moves to the new endpoint, few between the old ones (a modulo
        # would move most users between the old endpoints)
        assert moved_to_new and len(between_old) <= len(USERS) // 4, (before, after)
        pool(*three)
        wait_until(lambda: mapping() == before, "the three endpoints again", within=20)
        # a user whose endpoint stays, across 1,000 requests while the fourth endpoint joins
        user = next(u for u in USERS if before[u] == after[u])
        argv = [
            sys.executable,
            "-c",
            LOAD,
            STICKY_VIP,
            "/",
            "1000",
            "1",
            json.dumps({"x-user": user}),
        ]
        client = subprocess.Popen(
            bed.exec_argv("web-1", argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            time.sleep(1.0)
            pool(*three, newcomer)
            out, err = client.communicate(timeout=180)
        finally:
            if client.poll() is None:
                client.kill()
        answers = [json.loads(line) for line in out.splitlines()]
        assert len(answers) == 1000 and statuses(answers) == {200: 1000}, err
        assert {a["pod"] for a in answers} == {before[user]}
        # the endpoint was added meanwhile: other users do land on it
        wait_until(lambda: newcomer in mapping().values(), "the fourth endpoint", within=20)
    finally:
        bed.delete(BY_USER)
        bed.delete(STICKY)
        apply_objects(bed, *originals.values())


# --- faults --------------------------------------------------------------------------------------


def fault(percent: float) -> str:
    return virtual_service(
        "echo",
        "  - route: [{destination: {host: echo}}]\n"
        f"    fault: {{delay: {{percentage: {{value: {percent}}}, fixedDelay: 100ms}}}}\n",
    )


def test_a_100ms_delay_shows_in_latency_and_a_tenth_of_a_percent_hits_about_one_in_1000(
    bed: Testbed,
) -> None:
    always = fault(100)
    bed.apply(always)
    try:
        wait_until(lambda: load(bed, ECHO_VIP, "/", 1)[0]["ms"] >= 100, "the delay")
        delayed = load(bed, ECHO_VIP, "/", 20)
        assert all(a["status"] == 200 and a["ms"] >= 100 for a in delayed)
        bed.apply(fault(0.1))
        wait_until(
            lambda: all(a["ms"] < 100 for a in load(bed, ECHO_VIP, "/", 5)), "the 0.1 % delay"
        )
        before = waypoint_requests(bed, response_flags="DI")
        answers = load(bed, ECHO_VIP, "/", 2500, threads=4)
        assert statuses(answers) == {200: 10_000}
        # every request is counted when it is over
        injected = waypoint_requests(bed, response_flags="DI") - before
        # 10 expected in 10,000: about one in a thousand
        assert 2 <= injected <= 25, injected
    finally:
        bed.delete(always)


# --- mirroring -----------------------------------------------------------------------------------

SUBSETS = destination_rule(
    "echo", "  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n"
)
MIRRORED = virtual_service(
    "echo",
    "  - route: [{destination: {host: echo, subset: v1}}]\n"
    "    mirror: {host: echo, subset: v2}\n"
    "    mirrorPercentage: {value: 100}\n",
)


def test_mirrored_traffic_reaches_v2_while_clients_only_see_v1(bed: Testbed) -> None:
    def v2_saw(path: str) -> int:
        seen = 0
        for name in V2_PODS:
            log = bed.status().pod(name).processes[0].log
            seen += Path(log or "").read_text(errors="replace").count(f"GET {path} ")
        return seen

    bed.apply(SUBSETS)
    bed.apply(MIRRORED)
    try:
        probe = f"/probe-{secrets.token_hex(4)}"
        wait_until(lambda: bool(load(bed, ECHO_VIP, probe, 1)) and v2_saw(probe) > 0, "the mirror")
        path = f"/mirrored-{secrets.token_hex(4)}"
        shadow = {"destination_service": "echo.apps.svc.cluster.local-shadow"}

        def counts() -> tuple[float, float]:
            return (
                waypoint_requests(bed, destination_service="echo.apps.svc.cluster.local"),
                waypoint_requests(bed, destination_version="v2", **shadow),
            )

        # a copy is counted once answered, before it stops being in flight
        wait_until(lambda: config_dump(bed)["mirrors"]["inFlight"] == 0, "the probes' copies")
        before, shadow_before = counts()
        answers = load(bed, ECHO_VIP, path, 50)
        assert statuses(answers) == {200: 50}
        assert {a["version"] for a in answers} == {"v1"}
        wait_until(lambda: v2_saw(path) == 50, "50 copies at v2")
        # the copies are not the client's requests: they are counted under the shadow host,
        # answered by v2 (what a canary analysis measures while mirroring)
        wait_until(lambda: config_dump(bed)["mirrors"]["inFlight"] == 0, "the copies counted")
        assert counts() == (before + 50, shadow_before + 50)
        assert waypoint_requests(bed, destination_version="v1", **shadow) == 0
        mirrors = config_dump(bed)["mirrors"]
        assert mirrors["sent"] >= 50 and mirrors["inFlight"] == 0
    finally:
        bed.delete(MIRRORED)
        bed.delete(SUBSETS)


# --- bad input -----------------------------------------------------------------------------------


def test_invalid_traffic_policies_are_refused_and_the_last_good_one_keeps_serving(
    bed: Testbed,
) -> None:
    good = destination_rule("echo", "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n")
    bad = destination_rule(
        "echo",
        "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: ''}}\n"
        "    outlierDetection: {interval: soon}\n",
    )
    bed.apply(good)
    try:

        def round_robin() -> bool:
            # each of 8 requests in turn (4 distinct pods in 4 requests also happens by chance
            # under the default least-request balancing)
            return Counter(a["pod"] for a in load(bed, ECHO_VIP, "/", 8)) == {
                p: 2 for p in (*V1_PODS, *V2_PODS)
            }

        wait_until(round_robin, "round robin")
        field = "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName"
        # `testbed apply` refuses it as istiod's validating webhook does...
        with pytest.raises(TestbedError) as refusal:
            bed.apply(bad)
        assert field in str(refusal.value) and "must not be empty" in str(refusal.value)
        # ...and written straight into the directory (a sync tool, no webhook), the control
        # plane reports it and keeps serving the last good version
        (bed.config_dir / ObjectRef("DestinationRule", "apps", "echo").file_name).write_text(bad)

        def refused() -> list[str]:
            return [e for e in debug_config(bed).get("errors", []) if "destinationrule" in e]

        wait_until(lambda: len(refused()) == 2, "the errors")
        errors = refused()
        assert any(field in e and "must not be empty" in e for e in errors), errors
        assert any("spec.trafficPolicy.outlierDetection.interval" in e for e in errors), errors
        assert all("destinationrule_apps_echo.yaml" in e for e in errors), errors
        assert round_robin()  # still
    finally:
        bed.delete(good)
