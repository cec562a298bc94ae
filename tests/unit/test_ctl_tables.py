"""`ztunnel-py zc` and `proxy-status` tables from real dumps: a ProxyState loaded from
ztunnel's local-config format dumps itself as /config_dump does, and the tables show what
`istioctl ztunnel-config` shows for it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ztunnel_py.ctl import tables
from ztunnel_py.ctl.waypoint import deployment, gateway
from ztunnel_py.state.mesh import ProxyState

LOCAL = """\
workloads:
- uid: Kubernetes//Pod/apps/echo-1
  name: echo-1
  namespace: apps
  serviceAccount: echo
  workloadIps: ["10.244.1.10"]
  protocol: HBONE
  node: node1
  services: {"apps/echo.apps.svc.cluster.local": {80: 8080}}
- uid: Kubernetes//Pod/apps/echo-2
  name: echo-2
  namespace: apps
  serviceAccount: echo
  workloadIps: ["10.244.2.10"]
  protocol: HBONE
  node: node2
  status: Unhealthy
  services: {"apps/echo.apps.svc.cluster.local": {80: 8080}}
- uid: Kubernetes//Pod/legacy/legacy-1
  name: legacy-1
  namespace: legacy
  workloadIps: ["10.244.1.250"]
  protocol: TCP
  node: node1
  services: {}
services:
- name: echo
  namespace: apps
  hostname: echo.apps.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
  waypoint: {destination: {namespace: apps, hostname: waypoint.apps.svc.cluster.local},
             hboneMtlsPort: 15008}
policies:
- name: deny-web
  namespace: apps
  scope: Namespace
  action: Deny
  dryRun: false
  rules: [[[{principals: [{Exact: "cluster.local/ns/apps/sa/web"}]}]]]
"""


def dump(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "local.yaml"
    path.write_text(LOCAL)
    state = ProxyState()
    state.reload_local_config(path)
    return state.dump()


def test_workloads_services_and_policies(tmp_path: Path) -> None:
    d = dump(tmp_path)
    assert tables.render(tables.WORKLOAD_COLUMNS, tables.workload_rows(d)).splitlines() == [
        "NAMESPACE  POD NAME  ADDRESS       NODE   WAYPOINT  PROTOCOL",
        "apps       echo-1    10.244.1.10   node1  None      HBONE",
        "apps       echo-2    10.244.2.10   node2  None      HBONE",
        "legacy     legacy-1  10.244.1.250  node1  None      TCP",
    ]
    ((ns, name, vip, waypoint, endpoints),) = tables.service_rows(d)
    assert (ns, name, vip, endpoints) == ("apps", "echo", "10.96.0.10", "1/2")
    assert "waypoint.apps.svc.cluster.local" in waypoint
    assert tables.policy_rows(d) == [("apps", "deny-web", "Deny", "Namespace")]


def cert(start: str, end: str, serial: str) -> dict[str, str]:
    return {"pem": "", "serialNumber": serial, "validFrom": start, "expirationTime": end}


def test_certificates_one_row_per_certificate() -> None:
    d = {
        "certificates": [
            {
                "identity": "spiffe://cluster.local/ns/apps/sa/echo",
                "state": "Available",
                "certChain": [cert("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "17")],
                "rootCerts": [cert("2026-01-01T00:00:00Z", "2036-01-01T00:00:00Z", "1")],
            },
            {
                "identity": "spiffe://cluster.local/ns/apps/sa/web",
                "state": "Unavailable: the CA refused",
                "certChain": [],
                "rootCerts": [],
            },
        ]
    }
    now = datetime(2026, 12, 3, tzinfo=UTC)
    assert tables.certificate_rows(d, now) == [
        ("spiffe://cluster.local/ns/apps/sa/echo", "Leaf", "Available", "false", "17",
         "2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("spiffe://cluster.local/ns/apps/sa/echo", "Root", "Available", "true", "1",
         "2036-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ("spiffe://cluster.local/ns/apps/sa/web", "NA", "Unavailable", "false", "NA", "NA", "NA"),
    ]  # fmt: skip


def test_connections_name_their_workloads(tmp_path: Path) -> None:
    d = dump(tmp_path)
    d["workloadState"] = {
        "Kubernetes//Pod/apps/echo-1": {
            "state": "Up",
            "info": {"name": "echo-1", "namespace": "apps", "serviceAccount": "echo"},
            "connections": {
                "inbound": [
                    {
                        "src": "10.244.1.250:40000",
                        "originalDst": "10.244.1.10:8080",
                        "actualDst": "10.244.1.10:8080",
                        "protocol": "TCP",
                    }
                ],
                "outbound": [
                    {
                        "src": "10.244.1.10:41000",
                        "originalDst": "10.96.0.10:80",
                        "actualDst": "10.244.2.10:15008",
                        "protocol": "HBONE",
                    }
                ],
            },
        }
    }
    assert tables.connection_rows(d) == [
        ("echo-1.apps", "inbound", "echo-1.apps", "legacy-1.legacy", "echo-1.apps", "TCP"),
        ("echo-1.apps", "outbound", "echo-1.apps", "echo-2.apps", "10.96.0.10:80", "HBONE"),
    ]
    assert tables.connection_rows(d, "inbound", raw=True) == [
        ("echo-1.apps", "inbound", "10.244.1.10:8080", "10.244.1.250:40000",
         "10.244.1.10:8080", "TCP"),
    ]  # fmt: skip


def test_proxy_status_shows_each_clients_ack_state() -> None:
    address = "type.googleapis.com/istio.workload.Address"
    authz = "type.googleapis.com/istio.security.Authorization"
    debug = {
        "clients": [
            {
                "node": "node1",
                "nodeId": "ztunnel~10.250.0.11~ztunnel-node1.istio-system~istio-system.svc",
                "connectedAt": "2026-12-05T12:00:00+00:00",
                "types": {
                    address: {"ackedNonce": "1-3", "pendingNonces": [], "lastNack": None},
                    authz: {
                        "ackedNonce": "1-2",
                        "lastNonce": "1-4",
                        "pendingNonces": [],
                        "lastNack": {"nonce": "1-4"},
                    },
                },
            }
        ]
    }
    assert tables.proxy_status_rows(debug) == [
        ("ztunnel-node1.istio-system", "ztunnel", "node1", "ACKED", "NACKED", "-", "-",
         "2026-12-05T12:00:00+00:00"),
    ]  # fmt: skip


def test_generated_waypoint_objects_are_named_after_the_gateway() -> None:
    gw = gateway("reviews-wp", "bookinfo", "workload")
    assert gw["metadata"]["labels"] == {"istio.io/waypoint-for": "workload"}
    assert gw["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
    docs = deployment("reviews-wp", "bookinfo", "registry.example/ztunnel-py:1")
    assert [(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs] == [
        ("ServiceAccount", "reviews-wp", "bookinfo"),
        ("Deployment", "reviews-wp", "bookinfo"),
        ("Service", "reviews-wp", "bookinfo"),
    ]
    pod = docs[1]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["waypoint", "run", "--gateway-name=reviews-wp"]
    assert container["image"] == "registry.example/ztunnel-py:1"
    assert pod["serviceAccountName"] == "reviews-wp"
    assert docs[2]["spec"]["selector"] == {"gateway.networking.k8s.io/gateway-name": "reviews-wp"}
