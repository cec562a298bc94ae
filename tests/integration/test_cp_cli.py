"""`ztunnel-py controlplane validate` and `run --config-dir`, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from tests.integration.ca_support import free_port
from ztunnel_py.identity.caclient import CaError, GrpcCaClient
from ztunnel_py.identity.pki import generate_key, make_csr
from ztunnel_py.model import Identity
from ztunnel_py.model.address import SocketAddr

CLI = [sys.executable, "-m", "ztunnel_py.cli", "controlplane"]
WEB = Identity("cluster.local", "demo", "web")

GOOD = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: node-1}
status: {podIP: 10.0.0.5}
"""

BAD = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 100000}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: demo}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
kind: Deployment
apiVersion: apps/v1
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: oops
"""


def validate(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "validate", str(directory)], capture_output=True, text=True, timeout=30, check=False
    )


def test_validate_clean_directory(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "web.yaml").write_text(GOOD)
    result = validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "1 files, 2 resources accepted (1 workloads, 0 services, 0 policies, 0 waypoints, "
        "0 HTTP services): "
        "0 errors, 0 warnings\n"
    )


def test_validate_reports_every_problem_and_fails(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    result = validate(tmp_path)
    assert result.returncode == 1
    bad = tmp_path / "bad.yaml"
    assert result.stdout.splitlines() == [
        f"{bad}:doc[0]: spec.ports[0].targetPort: port 100000 out of range 1-65535 "
        "(line 6, column 34)",
        f"{bad}:doc[1]: spec: warning: ztunnel does not support HTTP attributes (found: "
        "methods). In ambient mode you must use a waypoint proxy to enforce HTTP rules. DENY "
        "policy with HTTP attributes is enforced without the HTTP rules. This will be more "
        "restrictive than requested. (line 12, column 3)",
        f"{bad}:doc[1]: spec.rules[0]: warning: configured AuthorizationPolicy will deny all "
        "traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY "
        "rule; it is recommended to explicitly specify the port (line 13, column 11)",
        f"{bad}:doc[2]: kind: note: skipped: Deployment (apps/v1) is not a kind the ztunnel-py "
        "control plane uses (line 15, column 7)",
        f"{bad}:doc[3]: <document>: invalid YAML: while parsing a flow mapping: expected ',' or "
        "'}', but got '<stream end>' (line 22, column 1)",
    ]
    assert result.stderr.endswith(": 2 errors, 2 warnings, 1 skipped (kinds not used)\n")


GITOPS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec: {replicas: 2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: demo}
data: {a: b}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: demo}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: networking.istio.io/v1beta1
kind: ProxyConfig
metadata: {name: mesh-default, namespace: istio-system}
spec: {concurrency: 2}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec: {selector: {istio: ingressgateway}, servers: []}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: things.example.com}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicies
metadata: {name: typo, namespace: demo}
"""


def test_validate_skips_what_the_control_plane_does_not_use(tmp_path: Path) -> None:
    """A GitOps repository: Kubernetes and Istio kinds we do not consume are skipped with a
    note; an unknown kind in an API group we read is still an error (a typo); `--output json`
    gives the same for tools."""
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "repo.yaml").write_text(GITOPS)
    result = validate(tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(": ", 2)[2] for line in lines[:6]] == [
        "note: skipped: Deployment (apps/v1) is not a kind the ztunnel-py control plane uses "
        "(line 2, column 7)",
        "note: skipped: ConfigMap (v1) is not a kind the ztunnel-py control plane uses "
        "(line 7, column 7)",
        "note: skipped: Sidecar (networking.istio.io/v1) is not a kind the ztunnel-py control "
        "plane uses (line 12, column 7)",
        "note: skipped: ProxyConfig (networking.istio.io/v1beta1) is not a kind the ztunnel-py "
        "control plane uses (line 17, column 7)",
        "note: skipped: Gateway (networking.istio.io/v1) is not a kind the ztunnel-py control "
        "plane uses (line 22, column 7)",
        "note: skipped: CustomResourceDefinition (apiextensions.k8s.io/v1) is not a kind the "
        "ztunnel-py control plane uses (line 27, column 7)",
    ]
    assert "unknown kind 'AuthorizationPolicies'" in lines[6]
    assert result.stderr.endswith(": 1 errors, 0 warnings, 6 skipped (kinds not used)\n")
    as_json = subprocess.run(
        [*CLI, "validate", str(tmp_path), "--output", "json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    found = json.loads(as_json.stdout)
    assert [(d["document"], d["severity"]) for d in found] == [
        *((i, "note") for i in range(6)),
        (6, "error"),
    ]
    assert found[0]["file"] == str(tmp_path / "repo.yaml") and found[0]["line"] == 2


# A namespace using its waypoint, and routes for two of its services that cannot do all they
# ask for (documents 5 and 6).
ROUTES = """\
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: apps}
spec: {clusterIP: 10.96.0.200, selector: {gateway.networking.k8s.io/gateway-name: waypoint},
       ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: apps}
spec: {clusterIP: 10.96.0.11, selector: {app: shop}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{matches: [{path: {type: RegularExpression, value: "/v[2"}}],
           backendRefs: [{name: missing, port: 80}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: apps}
spec: {hosts: [shop], http: [{route: [{destination: {host: shop, subset: v3}}]}]}
"""


def test_validate_reports_what_routes_cannot_do(tmp_path: Path) -> None:
    """An HTTPRoute and a VirtualService that compile with problems: each problem is a warning
    at its field (the route is still served without what cannot work), as istiod reports them
    in the route's status."""
    (tmp_path / "routes.yaml").write_text(ROUTES)
    result = validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    where = f"{tmp_path / 'routes.yaml'}"
    assert result.stdout.splitlines() == [
        f"{where}:doc[5]: spec.rules[0].backendRefs[0]: warning: backend Service apps/missing "
        "not found: its share of the requests gets 500",
        f"{where}:doc[5]: spec.rules[0].matches[0]: warning: invalid regular expression "
        "'/v[2': unterminated character set at position 2: this match is left out",
        f'{where}:doc[6]: spec.http: warning: subset "v3" of shop.apps.svc.cluster.local is '
        "not defined by any DestinationRule: requests routed to it get 503 (no healthy "
        "upstream)",
    ]
    assert result.stderr.endswith("2 HTTP services): 0 errors, 3 warnings\n")


def test_validate_missing_directory(tmp_path: Path) -> None:
    result = validate(tmp_path / "nope")
    assert result.returncode == 1
    assert "not a directory" in result.stderr


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    config = tmp_path / "config"
    config.mkdir()
    port, monitoring = free_port(), free_port()
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
                "--monitoring",
                f"127.0.0.1:{monitoring}",
                "--config-dir",
                str(config),
                "--serving-ip",
                "127.0.0.1",
            ],
            stderr=out,
        )
    try:
        yield proc, port, monitoring, tmp_path
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def debug_config(monitoring: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitoring}/debug/config", timeout=5) as r:
        body: dict[str, object] = json.load(r)
        return body


async def test_ca_follows_pods_in_the_config_dir(
    controlplane: tuple[subprocess.Popen[bytes], int, int, Path],
) -> None:
    proc, port, monitoring, tmp_path = controlplane
    log = trio.Path(tmp_path / "controlplane.log")
    for _ in range(300):
        if "serving the CA on" in await log.read_text():
            break
        assert proc.poll() is None, await log.read_text()
        await trio.sleep(0.05)
    issued = await trio.run_process(
        [*CLI, "node-token", "node-1", "--data-dir", str(tmp_path / "data")],
        capture_stdout=True,
    )
    token = issued.stdout.decode().strip()
    (tmp_path / "token").write_text(token)
    client = GrpcCaClient(
        SocketAddr("127.0.0.1", port),
        tmp_path / "data" / "ca" / "root-cert.pem",
        tmp_path / "token",
    )
    try:
        with pytest.raises(CaError, match="PERMISSION_DENIED"):
            await client.sign(make_csr(generate_key(), WEB), WEB, timedelta(hours=1))

        (tmp_path / "config" / "web.yaml").write_text(GOOD)
        for _ in range(40):
            await trio.sleep(0.05)
            try:
                await client.sign(make_csr(generate_key(), WEB), WEB, timedelta(hours=1))
                break
            except CaError:
                continue
        else:
            raise AssertionError("the new Pod did not authorize node-1 within 2 s")

        # Everything but the syntax error (which would make the whole file ignored).
        (tmp_path / "config" / "broken.yaml").write_text(BAD.rpartition("---")[0])
        for _ in range(40):
            state = await trio.to_thread.run_sync(debug_config, monitoring)
            if state["errors"]:
                break
            await trio.sleep(0.05)
        assert state["workloads"] == 1
        # the bad port; the Deployment is skipped with a note
        assert len(state["errors"]) == 1  # type: ignore[arg-type]
        assert len(state["notes"]) == 1  # type: ignore[arg-type]
        # The broken file changed nothing: node-1 still hosts web.
        await client.sign(make_csr(generate_key(), WEB), WEB, timedelta(hours=1))
    finally:
        client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_run_with_a_missing_config_dir_fails_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "confg"
    done = subprocess.run(
        [*CLI, "run", "--data-dir", str(tmp_path / "data"), "--config-dir", str(missing)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == f"ztunnel-py controlplane: --config-dir {missing}: not a directory\n"
    assert not (tmp_path / "data").exists()  # nothing was started
