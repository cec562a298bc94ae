"""Translation golden cases: each kind of resource to the workload API's model."""

from __future__ import annotations

import ipaddress

from tests.unit.cp_support import store_with, translated
from ztunnel_py.controlplane.resources import ResourceKey
from ztunnel_py.controlplane.translate import MeshOptions
from ztunnel_py.model import (
    Action,
    Authorization,
    Match,
    NetworkAddress,
    PolicyScope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ztunnel_py.model.workload import AppProtocol, NetworkMode

ip = ipaddress.ip_address
net = ipaddress.ip_network

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
"""

WEB = """
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c8f5d-x2x9k
  generateName: web-7d4b9c8f5d-
  namespace: demo
  labels: {app: web, version: v2, pod-template-hash: 7d4b9c8f5d}
  annotations: {ambient.istio.io/redirection: enabled}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c8f5d, uid: u1, controller: true}
spec:
  serviceAccountName: web-sa
  nodeName: node-1
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 8080, name: http}, {containerPort: 9090, name: metrics}]
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: grpc, port: 9000, targetPort: 9001}
  - {name: plain, port: 7000}
  - {name: dns, port: 53, protocol: UDP}
"""


def test_pod_in_an_ambient_namespace() -> None:
    t = translated(NAMESPACES + WEB)
    assert t.workloads == {
        "Kubernetes//Pod/demo/web-7d4b9c8f5d-x2x9k": Workload(
            uid="Kubernetes//Pod/demo/web-7d4b9c8f5d-x2x9k",
            name="web-7d4b9c8f5d-x2x9k",
            namespace="demo",
            addresses=(ip("10.0.0.5"), ip("fd00::5")),
            service_account="web-sa",
            trust_domain="cluster.local",
            node="node-1",
            tunnel_protocol=TunnelProtocol.HBONE,
            canonical_name="web",
            canonical_revision="v2",
            workload_name="web",
            workload_type="pod",
            # every port, the UDP one too (a UDP port's name is not a TCP container port's)
            services={
                "demo/web.demo.svc.cluster.local": {80: 8080, 9000: 9001, 7000: 7000, 53: 53}
            },
            status=WorkloadStatus.HEALTHY,
        )
    }


def test_service() -> None:
    t = translated(NAMESPACES + WEB)
    assert t.services == {
        "demo/web.demo.svc.cluster.local": Service(
            name="web",
            namespace="demo",
            hostname="web.demo.svc.cluster.local",
            vips=(NetworkAddress("", ip("10.96.0.10")), NetworkAddress("", ip("fd00:96::10"))),
            ports={80: 0, 9000: 9001, 7000: 7000, 53: 53},
            # the port names say HTTP and gRPC; "plain" says nothing, nor does a UDP port
            app_protocols={80: AppProtocol.HTTP11, 9000: AppProtocol.GRPC},
        )
    }


def test_options_set_trust_domain_cluster_and_domain() -> None:
    options = MeshOptions(trust_domain="example.org", domain_suffix="corp", cluster_id="c1")
    t = translated(NAMESPACES + WEB, options)
    (w,) = t.workloads.values()
    assert (w.uid, w.trust_domain, w.cluster_id) == (
        "c1//Pod/demo/web-7d4b9c8f5d-x2x9k",
        "example.org",
        "c1",
    )
    assert list(w.services) == ["demo/web.demo.svc.corp"]


def pod(
    name: str, namespace: str = "demo", labels: str = "{}", extra: str = "", ip_: str = "10.0.0.9"
) -> str:
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}
spec: {{{extra}}}
status: {{podIP: {ip_}}}
"""


SIDECAR_POD = """
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: legacy
  labels: {labels}
  annotations: {{sidecar.istio.io/status: '{{"containers":["istio-proxy"]}}'}}
spec: {{}}
status: {{podIP: {ip}}}
"""


REDIRECTED = "{ambient.istio.io/redirection: enabled}"


def redirected(name: str, namespace: str = "demo", ip_: str = "10.0.0.9", extra: str = "") -> str:
    return pod(name, namespace, ip_=ip_, extra=extra).replace(
        "labels: {}}", f"labels: {{}}, annotations: {REDIRECTED}}}"
    )


def test_tunnel_protocol_follows_the_redirection_annotation() -> None:
    """As istiod: HBONE once the CNI side marked the pod redirected, or when the pod terminates
    HBONE itself (native tunnel); a pod of an ambient namespace not redirected yet is TCP."""
    t = translated(
        NAMESPACES
        + pod("a")
        + redirected("b", ip_="10.0.0.10")
        + redirected("c", namespace="legacy", ip_="10.0.0.11")
        + pod("d", namespace="legacy", labels="{istio.io/dataplane-mode: ambient}", ip_="10.0.0.12")
        + redirected("f", extra="hostNetwork: true", ip_="10.0.0.14")
        + SIDECAR_POD.format(name="g", labels="{}", ip="10.0.0.15")
        + SIDECAR_POD.format(name="h", labels="{networking.istio.io/tunnel: http}", ip="10.0.0.16")
    )
    tunnels = {w.name: (w.tunnel_protocol, w.native_tunnel) for w in t.workloads.values()}
    assert tunnels == {
        "a": (TunnelProtocol.NONE, False),
        "b": (TunnelProtocol.HBONE, False),
        "c": (TunnelProtocol.HBONE, False),
        "d": (TunnelProtocol.NONE, False),
        "f": (TunnelProtocol.HBONE, False),
        # a sidecar pod speaks HBONE only when its sidecar says it terminates it
        "g": (TunnelProtocol.NONE, False),
        "h": (TunnelProtocol.HBONE, True),
    }
    modes = {w.name: w.network_mode for w in t.workloads.values()}
    assert modes["f"] is NetworkMode.HOST_NETWORK and modes["b"] is NetworkMode.STANDARD


def test_defaults_for_a_bare_pod() -> None:
    (w,) = translated(pod("solo")).workloads.values()
    assert (w.service_account, w.node, w.canonical_name, w.canonical_revision) == (
        "default",
        "",
        "solo",
        "latest",
    )
    assert (w.workload_name, w.workload_type, w.namespace) == ("solo", "pod", "demo")


def test_pods_without_an_ip_or_finished_are_not_workloads() -> None:
    t = translated(
        pod("running")
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: demo}\nspec: {}\n"
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: demo}\nspec: {}\n"
        "status: {phase: Succeeded, podIP: 10.0.0.7}\n"
    )
    assert [w.name for w in t.workloads.values()] == ["running"]


def test_only_ready_pods_that_are_not_terminating_are_healthy() -> None:
    """istiod: UNHEALTHY unless the Ready condition is True, and while terminating."""

    def with_status(name: str, ip_: str, status: str, meta: str = "") -> str:
        return (
            pod(name, ip_=ip_)
            .replace(f"status: {{podIP: {ip_}}}", f"status: {{podIP: {ip_}, {status}}}")
            .replace("labels: {}}", f"labels: {{}}{meta}}}")
        )

    ready = "conditions: [{type: Ready, status: 'True'}]"
    t = translated(
        with_status("slow", "10.0.0.9", "conditions: [{type: Ready, status: 'False'}]")
        + with_status("fresh", "10.0.0.10", "conditions: [{type: PodScheduled, status: 'True'}]")
        + with_status("going", "10.0.0.11", ready, ", deletionTimestamp: '2024-05-01T00:00:00Z'")
        + with_status("fine", "10.0.0.12", ready)
    )
    health = {w.name: w.status for w in t.workloads.values()}
    assert health == {
        "slow": WorkloadStatus.UNHEALTHY,
        "fresh": WorkloadStatus.UNHEALTHY,
        "going": WorkloadStatus.UNHEALTHY,
        "fine": WorkloadStatus.HEALTHY,
    }


def test_canonical_labels_in_priority_order() -> None:
    labels = (
        "{service.istio.io/canonical-name: canon, app.kubernetes.io/name: k8s, app: a, "
        "app.kubernetes.io/version: '1.2', version: v9}"
    )
    (w,) = translated(pod("x", labels=labels)).workloads.values()
    assert (w.canonical_name, w.canonical_revision) == ("canon", "1.2")


def test_workload_name_from_owners_as_istiod_derives_it() -> None:
    """istiod's GetWorkloadMetaFromPod: a pod with a generated name is named after its
    controller (a Deployment's ReplicaSet less its pod-template-hash, a CronJob's Job less its
    timestamp); any other pod after itself. The type is always POD."""

    def owned(name: str, kind: str, owner: str, labels: str = "{}", generated: bool = True) -> str:
        generate = f"  generateName: {owner}-\n" if generated else ""
        return (
            f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: demo\n"
            f"{generate}  labels: {labels}\n"
            f"  ownerReferences: [{{apiVersion: v1, kind: {kind}, name: {owner}, "
            "controller: true}]"
            f"\nspec: {{}}\nstatus: {{podIP: 10.0.1.{len(name)}}}\n"
        )

    t = translated(
        owned("job-1-abcde", "Job", "job-1")
        + owned("backup-28312345-xyz12", "Job", "backup-28312345")
        + owned("db-0", "StatefulSet", "db")
        + owned(
            "api-5f7b8c9d4-k2m3n", "ReplicaSet", "api-5f7b8c9d4", "{pod-template-hash: 5f7b8c9d4}"
        )
        + owned("rs-abc12-x1y2z", "ReplicaSet", "rs-abc12")
        + owned("static-web", "Node", "node-1", generated=False)
        + owned("named-x1y2z", "ReplicaSet", "named", "{service.istio.io/workload-name: billing}")
        + pod("web-5f7b8c9d4-k2m3n", ip_="10.0.2.1")
    )
    found = {w.name: (w.workload_name, w.workload_type) for w in t.workloads.values()}
    assert found == {
        "job-1-abcde": ("job-1", "pod"),
        "backup-28312345-xyz12": ("backup", "pod"),
        "db-0": ("db", "pod"),
        "api-5f7b8c9d4-k2m3n": ("api", "pod"),
        "rs-abc12-x1y2z": ("rs-abc12", "pod"),
        "static-web": ("static-web", "pod"),
        "named-x1y2z": ("billing", "pod"),  # the label wins
        "web-5f7b8c9d4-k2m3n": ("web-5f7b8c9d4-k2m3n", "pod"),
    }


def test_named_target_port_missing_on_a_pod_is_a_warning() -> None:
    store = store_with(("f.yaml", NAMESPACES + WEB + pod("odd", labels="{app: web}")))
    (warning,) = store.diagnostics()
    assert (warning.is_error, warning.path) == (False, "spec.ports[0].targetPort")
    assert warning.reason == (
        "port name 'http' is not declared by 1 of the 2 selected workloads (Pod odd): they get "
        "no endpoint for port 80"
    )
    odd = store.current().workloads["Kubernetes//Pod/demo/odd"]
    assert odd.services == {"demo/web.demo.svc.cluster.local": {9000: 9001, 7000: 7000, 53: 53}}


def test_headless_and_external_name_services() -> None:
    t = translated(
        """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: db.example.com}
"""
    )
    assert list(t.services) == ["demo/db.demo.svc.cluster.local"]
    assert t.services["demo/db.demo.svc.cluster.local"].vips == ()


SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: demo}
spec:
  hosts: [payments.example.com, pay.example.com]
  addresses: [240.0.0.10]
  ports:
  - {number: 443, name: https, protocol: HTTPS, targetPort: 8443}
  - {number: 53, name: dns, protocol: UDP}
  location: MESH_INTERNAL
  resolution: STATIC
  subjectAltNames: [spiffe://cluster.local/ns/pay/sa/payments]
  endpoints:
  - address: 10.9.0.1
    serviceAccount: payments
    labels: {app: pay, networking.istio.io/tunnel: http}
  - {address: 10.9.0.2, ports: {https: 9443}, weight: 3}
"""


def test_service_entry_with_endpoints() -> None:
    store = store_with(("f.yaml", SERVICE_ENTRY))
    snapshot = store.current()
    keys = ["demo/payments.example.com", "demo/pay.example.com"]
    assert snapshot.services["demo/payments.example.com"] == Service(
        name="payments",
        namespace="demo",
        hostname="payments.example.com",
        vips=(NetworkAddress("", ip("240.0.0.10")),),
        ports={443: 8443, 53: 53},
        subject_alt_names=("spiffe://cluster.local/ns/pay/sa/payments",),
        app_protocols={443: AppProtocol.TLS},
    )
    assert list(snapshot.services) == keys
    first = snapshot.workloads["Kubernetes/networking.istio.io/ServiceEntry/demo/payments/10.9.0.1"]
    assert first == Workload(
        uid="Kubernetes/networking.istio.io/ServiceEntry/demo/payments/10.9.0.1",
        name="payments",
        namespace="demo",
        addresses=(ip("10.9.0.1"),),
        service_account="payments",
        # istiod reads the ServiceEntry's labels here, not the endpoint's
        tunnel_protocol=TunnelProtocol.NONE,
        canonical_name="payments",
        canonical_revision="latest",
        workload_name="payments",
        workload_type="pod",
        services={k: {443: 8443, 53: 53} for k in keys},
    )
    second = snapshot.workloads[
        "Kubernetes/networking.istio.io/ServiceEntry/demo/payments/10.9.0.2"
    ]
    assert (second.services, second.capacity, second.tunnel_protocol) == (
        {k: {443: 9443, 53: 53} for k in keys},
        3,
        TunnelProtocol.NONE,
    )
    assert store.diagnostics() == ()


def test_a_service_entry_with_an_address_range_gets_no_service() -> None:
    """istiod sends only single addresses as VIPs: a ServiceEntry with a range (more than one
    IP) yields no service for any of its hosts, though its endpoints stay workloads."""
    store = store_with(
        ("f.yaml", SERVICE_ENTRY.replace("[240.0.0.10]", "[240.0.0.10, 240.1.0.0/16]"))
    )
    snapshot = store.current()
    assert snapshot.services == {}
    assert all(w.services == {} for w in snapshot.workloads.values())
    assert len(snapshot.workloads) == 2
    (warning,) = store.diagnostics()
    assert (warning.is_error, warning.path) == (False, "spec.addresses")
    assert warning.reason == (
        "address range 240.1.0.0/16 is not supported in ambient mode (only single addresses, "
        "e.g. /32): this ServiceEntry's hosts get no service, as with istiod"
    )


def test_workload_entry_selected_by_a_service_and_a_service_entry() -> None:
    t = translated(
        NAMESPACES
        + """
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: demo, labels: {team: a}}
spec:
  address: 10.5.0.1
  labels: {app: vm}
  ports: {http: 8081, https: 8444}
  serviceAccount: vm-sa
  network: vpc-1
  weight: 2
---
apiVersion: v1
kind: Service
metadata: {name: vm, namespace: demo}
spec: {clusterIP: 10.96.1.1, selector: {app: vm}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm-se, namespace: demo}
spec:
  hosts: [vm.internal]
  ports: [{number: 443, name: https}, {number: 8000, name: other, targetPort: 8001}]
  workloadSelector: {labels: {app: vm}}
"""
    )
    assert t.workloads == {
        "Kubernetes/networking.istio.io/WorkloadEntry/demo/vm-1": Workload(
            uid="Kubernetes/networking.istio.io/WorkloadEntry/demo/vm-1",
            name="vm-1",
            namespace="demo",
            addresses=(ip("10.5.0.1"),),
            service_account="vm-sa",
            network="vpc-1",
            tunnel_protocol=TunnelProtocol.NONE,
            canonical_name="vm",
            canonical_revision="latest",
            workload_name="vm-1",
            workload_type="pod",
            services={
                "demo/vm.demo.svc.cluster.local": {80: 8081},
                "demo/vm.internal": {443: 8444, 8000: 8001},
            },
            capacity=2,
        )
    }


def test_workload_entry_with_a_host_name() -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db, namespace:"
        " demo}\nspec: {address: db.vm.example.com}\n"
    )
    (w,) = translated(text).workloads.values()
    assert (w.addresses, w.hostname) == ((), "db.vm.example.com")


# --- AuthorizationPolicy -----------------------------------------------------------------------


def authz(name: str, namespace: str, spec: str, annotations: str = "{}") -> str:
    return (
        f"---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: "
        f"{{name: {name}, namespace: {namespace}, annotations: {annotations}}}\n{spec}\n"
    )


EXACT = StringMatchKind.EXACT


def test_authorization_policy_rules_clauses_and_matches() -> None:
    text = authz(
        "allow-frontend",
        "demo",
        """spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/demo/sa/frontend, "cluster.local/ns/ops/*"]}
    - source: {namespaces: ["*"], notIpBlocks: [10.0.0.0/24, 10.1.2.3]}
    to: [{operation: {ports: ["8080", "8443"], notPorts: ["9090"]}}]
    when:
    - {key: source.namespace, values: [demo, "*-prod"], notValues: [kube-system]}
    - {key: destination.ip, values: [10.0.0.0/16]}
  - from: [{source: {serviceAccounts: [backup, "ops/admin"], ipBlocks: ["fd00::/8"]}}]""",
    )
    policy = translated(text).policies["demo/allow-frontend"]
    assert policy == Authorization(
        name="allow-frontend",
        namespace="demo",
        scope=PolicyScope.WORKLOAD_SELECTOR,
        action=Action.ALLOW,
        rules=(
            (
                (Match(destination_ports=(8080, 8443), not_destination_ports=(9090,)),),
                (
                    Match(
                        principals=(
                            StringMatch(EXACT, "cluster.local/ns/demo/sa/frontend"),
                            StringMatch(StringMatchKind.PREFIX, "cluster.local/ns/ops/"),
                        )
                    ),
                    Match(
                        namespaces=(StringMatch(StringMatchKind.PRESENCE),),
                        not_source_ips=(net("10.0.0.0/24"), net("10.1.2.3/32")),
                    ),
                ),
                (
                    Match(
                        namespaces=(
                            StringMatch(EXACT, "demo"),
                            StringMatch(StringMatchKind.SUFFIX, "-prod"),
                        ),
                        not_namespaces=(StringMatch(EXACT, "kube-system"),),
                    ),
                ),
                (Match(destination_ips=(net("10.0.0.0/16"),)),),
            ),
            (
                (
                    Match(
                        source_ips=(net("fd00::/8"),),
                        service_accounts=(
                            ServiceAccountMatch("demo", "backup"),
                            ServiceAccountMatch("ops", "admin"),
                        ),
                    ),
                ),
            ),
        ),
    )


def test_scopes_and_selection() -> None:
    text = (
        NAMESPACES
        + pod("web-1", labels="{app: web}")
        + pod("api-1", labels="{app: api}", ip_="10.0.0.20")
        + pod("web-2", namespace="legacy", labels="{app: web}", ip_="10.0.0.21")
        + authz("ns-wide", "demo", "spec: {action: DENY, rules: [{}]}")
        + authz("mesh-wide", "istio-system", "spec: {}")
        + authz("web-only", "demo", "spec: {selector: {matchLabels: {app: web}}}")
        + authz("all-web", "istio-system", "spec: {selector: {matchLabels: {app: web}}}")
        + authz("everyone-here", "demo", "spec: {selector: {}}")
    )
    t = translated(text)
    scopes = {k: p.scope for k, p in t.policies.items()}
    assert scopes == {
        "demo/ns-wide": PolicyScope.NAMESPACE,
        "istio-system/mesh-wide": PolicyScope.GLOBAL,
        "demo/web-only": PolicyScope.WORKLOAD_SELECTOR,
        "istio-system/all-web": PolicyScope.WORKLOAD_SELECTOR,
        "demo/everyone-here": PolicyScope.WORKLOAD_SELECTOR,
    }
    selected = {w.name: w.authorization_policies for w in t.workloads.values()}
    # `selector: {}` has no labels to select by: as with istiod, it guards no workload
    assert selected == {
        "web-1": ("demo/web-only", "istio-system/all-web"),
        "api-1": (),
        "web-2": ("istio-system/all-web",),
    }
    assert t.policies["demo/ns-wide"].rules == ((),)
    assert t.policies["istio-system/mesh-wide"].rules == ()


def test_dry_run_annotation() -> None:
    text = authz(
        "audit", "demo", "spec: {action: DENY, rules: [{}]}", '{"istio.io/dry-run": "true"}'
    )
    assert translated(text).policies["demo/audit"].dry_run


def test_http_rules_in_allow_match_nothing_and_in_deny_apply_at_l4() -> None:
    text = authz(
        "allow-get",
        "demo",
        """spec:
  rules:
  - to: [{operation: {methods: [GET], ports: ["80"]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
  - from: [{source: {namespaces: [demo]}}]""",
    ) + authz(
        "deny-post",
        "demo",
        """spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [foo]}}]
    to: [{operation: {methods: [POST]}}]
    when: [{key: "request.headers[x-a]", values: [b]}, {key: destination.port, values: ["80"]}]""",
    )
    t = translated(text)
    # Only the L4 rule survives in the ALLOW policy.
    assert t.policies["demo/allow-get"].rules == (
        ((Match(namespaces=(StringMatch(EXACT, "demo"),)),),),
    )
    # As istiod: the DENY rule keeps every entry and condition, an HTTP-only one as an empty
    # match, which ztunnel never matches (so at L4 this rule denies nothing).
    assert t.policies["demo/deny-post"].rules == (
        (
            (Match(),),
            (Match(namespaces=(StringMatch(EXACT, "foo"),)),),
            (Match(),),
            (Match(destination_ports=(80,)),),
        ),
    )


def test_waypoint_policies_are_not_sent_to_ztunnel() -> None:
    text = authz(
        "l7",
        "demo",
        "spec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n"
        "  rules: [{to: [{operation: {methods: [GET]}}]}]",
    )
    store = store_with(("f.yaml", text))
    assert store.current().policies == {}
    assert ResourceKey("AuthorizationPolicy", "demo", "l7") in store.resources()
