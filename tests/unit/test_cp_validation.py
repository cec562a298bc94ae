"""Validation: every bad input is rejected with its file, document, field path and reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.cp_support import diagnostics, store_with, yaml_text
from ztunnel_py.controlplane.resources import Document, Origin, Resource, ResourceKey
from ztunnel_py.controlplane.sources.yamldocs import Parsed, parse_documents
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import translate
from ztunnel_py.controlplane.translate.services import cluster_ips as service_cluster_ips
from ztunnel_py.controlplane.validation import validate_document

POD = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: web, image: nginx, ports: [{containerPort: 8080, name: http}]}]
status: {podIP: 10.0.0.5}
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def policy(spec: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: demo}\n" + yaml_text(spec)
    )


def pa(spec: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: pa, namespace: demo}\n" + yaml_text(spec)
    )


def service_entry(spec: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: ext, namespace: demo}\n" + yaml_text(spec)
    )


def only_error(text: str) -> tuple[str, str]:
    errors = [d for d in diagnostics(text) if d.is_error]
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0].path, errors[0].reason


# (case, document, field path, reason)
CASES = [
    (
        "unknown kind",
        "apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n",
        "kind",
        "unknown kind 'Deployment' (supported: Namespace, Pod, Service, ServiceEntry, "
        "WorkloadEntry, VirtualService, DestinationRule, AuthorizationPolicy, "
        "PeerAuthentication, RequestAuthentication, Gateway, HTTPRoute, Canary, WasmPlugin)",
    ),
    (
        "kind in the wrong case",
        "apiVersion: v1\nkind: pod\nmetadata: {name: x}\n",
        "kind",
        "unknown kind 'pod' (did you mean 'Pod'?)",
    ),
    ("missing kind", "apiVersion: v1\nmetadata: {name: x}\n", "kind", "required field is missing"),
    (
        "wrong apiVersion",
        POD.replace("apiVersion: v1", "apiVersion: v2"),
        "apiVersion",
        "apiVersion 'v2' is not served for kind Pod (use v1)",
    ),
    (
        "not a mapping",
        "- a\n- b\n",
        "",
        "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), got a list",
    ),
    (
        "missing name",
        "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
        "metadata.name",
        "required field is missing",
    ),
    (
        "bad namespace name",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: Demo_1}\n",
        "metadata.name",
        "'Demo_1' is not a valid name: at most 63 lowercase letters, digits and "
        "'-', starting and ending with a letter or digit",
    ),
    (
        "unknown field",
        POD.replace("  serviceAccountName: web", "  serviceAcountName: web"),
        "spec.serviceAcountName",
        "unknown field 'serviceAcountName' (did you mean 'serviceAccountName'?)",
    ),
    (
        "wrong type",
        POD.replace("podIP: 10.0.0.5", "podIP: [10.0.0.5]"),
        "status.podIP",
        "expected a string, got a list",
    ),
    (
        "bad pod IP",
        POD.replace("10.0.0.5", "10.0.0.256"),
        "status.podIP",
        "'10.0.0.256' is not an IP address",
    ),
    (
        "container port out of range",
        POD.replace("containerPort: 8080", "containerPort: 70000"),
        "spec.containers[0].ports[0].containerPort",
        "port 70000 out of range 1-65535",
    ),
    (
        "bad container port name",
        POD.replace("name: http", "name: HTTP_1"),
        "spec.containers[0].ports[0].name",
        "invalid port name 'HTTP_1': 1-15 lowercase letters, digits and '-', with at least one "
        "letter, no '-' at either end and no '--'",
    ),
    (
        "empty label key",
        POD.replace("labels: {app: web}", 'labels: {"": web}'),
        'metadata.labels[""]',
        "label key must not be empty: an empty key can never match",
    ),
    (
        "bad label value",
        POD.replace("labels: {app: web}", "labels: {app: -web}"),
        "metadata.labels.app",
        "invalid label value '-web': at most 63 letters, digits, '-', '_' and '.', starting and "
        "ending with a letter or digit",
    ),
    (
        "boolean where a string belongs",
        POD.replace("labels: {app: web}", "labels: {on: yes}"),
        "metadata.labels[True]",
        "label key True must be a string",
    ),
    (
        "boolean where a string belongs, said once",
        POD.replace("namespace: demo", "namespace: no"),
        "metadata.namespace",
        "expected a string, got a boolean (YAML reads yes/no/on/off/true/false as booleans: "
        "quote it)",
    ),
    (
        "service port out of range",
        SERVICE.replace("port: 80", "port: 0"),
        "spec.ports[0].port",
        "port 0 out of range 1-65535",
    ),
    (
        "bad named targetPort",
        SERVICE.replace("targetPort: http", "targetPort: http_port"),
        "spec.ports[0].targetPort",
        "invalid port name 'http_port': 1-15 lowercase letters, digits and '-', with at least one "
        "letter, no '-' at either end and no '--'",
    ),
    (
        "bad clusterIP",
        SERVICE.replace("10.96.0.10", "10.96.0"),
        "spec.clusterIP",
        "'10.96.0' is not an IP address",
    ),
    (
        "unnamed ports",
        SERVICE.replace(
            "ports: [{name: http, port: 80, targetPort: http}]",
            "ports: [{name: a, port: 80}, {port: 81}]",
        ),
        "spec.ports[1]",
        "a name is required when a Service has more than one port",
    ),
    (
        "empty selector key",
        SERVICE.replace("selector: {app: web}", 'selector: {"": web}'),
        'spec.selector[""]',
        "label key must not be empty: an empty key can never match",
    ),
    (
        "selector key syntax",
        SERVICE.replace("selector: {app: web}", 'selector: {"a b": web}'),
        'spec.selector["a b"]',
        "invalid label key 'a b': the name part must be 1-63 characters of letters, digits, '-', "
        "'_' and '.', starting and ending with a letter or digit",
    ),
    (
        "service name starts with a digit",
        SERVICE.replace("name: web, namespace", "name: 1web, namespace"),
        "metadata.name",
        "'1web' is not a valid name: at most 63 lowercase letters, "
        "digits and '-', starting with a letter and ending with a letter or digit",
    ),
    (
        "bad CIDR",
        policy("""
        spec:
          rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]
        """),
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "bad CIDR range (10.0.0.0/33): not an address prefix",
    ),
    (
        "bad remote CIDR",
        policy("""
        spec:
          action: DENY
          rules: [{from: [{source: {notRemoteIpBlocks: [fe80::/129]}}]}]
        """),
        "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
        "bad CIDR range (fe80::/129): not an address prefix",
    ),
    (
        "port not a string",
        policy("""
        spec:
          rules: [{to: [{operation: {ports: [8080]}}]}]
        """),
        "spec.rules[0].to[0].operation.ports[0]",
        "expected a string, got an integer (quote it)",
    ),
    (
        "port out of range",
        policy("""
        spec:
          rules: [{to: [{operation: {notPorts: ["65536"]}}]}]
        """),
        "spec.rules[0].to[0].operation.notPorts[0]",
        "bad port (65536): not a number within 0-65535",
    ),
    (
        "empty source",
        policy("""
        spec:
          rules: [{from: [{source: {}}]}]
        """),
        "spec.rules[0].from[0].source",
        "`from.source` must not be empty",
    ),
    (
        "condition without values",
        policy("""
        spec:
          rules: [{when: [{key: source.ip}]}]
        """),
        "spec.rules[0].when[0]",
        "at least one of `values` or `notValues` must be set for key source.ip",
    ),
    (
        "unknown condition",
        policy("""
        spec:
          rules: [{when: [{key: source.port, values: ["80"]}]}]
        """),
        "spec.rules[0].when[0].values",
        "invalid `value` for `key` source.port: unknown attribute: source.port",
    ),
    (
        "bad condition value",
        policy("""
        spec:
          rules: [{when: [{key: destination.port, notValues: ["http"]}]}]
        """),
        "spec.rules[0].when[0].notValues",
        "invalid `notValue` for `key` destination.port: bad port (http): not a number within "
        "0-65535",
    ),
    (
        "DENY without rules",
        policy("""
        spec:
          action: DENY
        """),
        "spec",
        "DENY action without `rules` is meaningless as it will never be triggered, add an empty "
        "rule `{}` if you want it be triggered for every request",
    ),
    (
        "CUSTOM without provider",
        policy("""
        spec:
          action: CUSTOM
          rules: [{}]
        """),
        "spec.provider",
        "`provider.name` must not be empty",
    ),
    (
        "CUSTOM with principals",
        policy("""
        spec:
          action: CUSTOM
          provider: {name: ext-authz}
          rules: [{from: [{source: {principals: [a]}}]}]
        """),
        "spec.rules[0]",
        "From.Principals is currently not supported with CUSTOM action",
    ),
    (
        "empty from",
        policy("""
        spec:
          rules: [{from: []}]
        """),
        "spec.rules[0].from",
        "`from` must not be empty",
    ),
    (
        "empty principal",
        policy("""
        spec:
          rules: [{from: [{source: {principals: [""]}}]}]
        """),
        "spec.rules[0].from[0].source.principals[0]",
        "empty value not allowed, found in Principals",
    ),
    (
        "service account with a wildcard",
        policy("""
        spec:
          rules: [{from: [{source: {serviceAccounts: ["ns/*"]}}]}]
        """),
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "wildcard not allowed, found in ServiceAccounts",
    ),
    (
        "wildcard in a selector",
        policy("""
        spec:
          selector: {matchLabels: {app: "web*"}}
        """),
        "spec.selector.matchLabels.app",
        "wildcard is not supported in selector: 'app=web*'",
    ),
    (
        "unknown action",
        policy("""
        spec:
          action: REJECT
        """),
        "spec.action",
        "'REJECT' is not one of ALLOW, DENY, AUDIT, CUSTOM",
    ),
    (
        "selector and targetRefs",
        policy("""
        spec:
          selector: {matchLabels: {app: web}}
          targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
        """),
        "spec",
        "only one of targetRefs or workloadSelector can be set",
    ),
    (
        "serviceAccounts with principals",
        policy("""
        spec:
          rules: [{from: [{source: {serviceAccounts: [a], principals: ["*"]}}]}]
        """),
        "spec.rules[0].from[0].source.serviceAccounts",
        "cannot set serviceAccounts with namespaces or principals",
    ),
    (
        "dry-run annotation",
        policy("""
        spec: {}
        """).replace(
            "namespace: demo}", 'namespace: demo, annotations: {"istio.io/dry-run": "maybe"}}'
        ),
        'metadata.annotations["istio.io/dry-run"]',
        "'maybe' is not one of true, false",
    ),
    (
        "mTLS mode",
        pa("""
        spec: {mtls: {mode: STRIKT}}
        """),
        "spec.mtls.mode",
        "'STRIKT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ),
    (
        "portLevelMtls without selector",
        pa("""
        spec:
          mtls: {mode: STRICT}
          portLevelMtls: {9090: {mode: PERMISSIVE}}
        """),
        "spec.portLevelMtls",
        "mesh/namespace peer authentication cannot have port level mTLS",
    ),
    (
        "portLevelMtls port",
        pa("""
        spec:
          selector: {matchLabels: {app: web}}
          portLevelMtls: {0: {mode: PERMISSIVE}}
        """),
        "spec.portLevelMtls[0]",
        "port 0 out of range 1-65535",
    ),
    (
        "service entry host *",
        service_entry("""
        spec: {hosts: ["*"], ports: [{number: 80, name: http}]}
        """),
        "spec.hosts[0]",
        "'*' is not allowed as a ServiceEntry host: name the hosts "
        "(wildcards like *.example.com are fine)",
    ),
    (
        "service entry address",
        service_entry("""
        spec: {hosts: [a.example.com], addresses: [300.0.0.1]}
        """),
        "spec.addresses[0]",
        "'300.0.0.1' is not a CIDR or IP address",
    ),
    (
        "service entry endpoint port",
        service_entry("""
        spec:
          hosts: [a.example.com]
          ports: [{number: 80, name: http}]
          endpoints: [{address: 10.1.0.1, ports: {https: 8443}}]
        """),
        "spec.endpoints[0].ports.https",
        "endpoint port 'https' is not a port of this ServiceEntry (ports: http)",
    ),
    (
        "service entry duplicate port",
        service_entry("""
        spec:
          hosts: [a.example.com]
          ports: [{number: 80, name: http}, {number: 80, name: web}]
        """),
        "spec.ports[1]",
        "duplicate port number 80 (same as [0])",
    ),
    (
        "service entry selector and endpoints",
        service_entry("""
        spec:
          hosts: [a.example.com]
          workloadSelector: {labels: {app: a}}
          endpoints: [{address: 10.1.0.1}]
        """),
        "spec.workloadSelector",
        "workloadSelector and endpoints are mutually exclusive",
    ),
    (
        "workload entry address",
        """
        apiVersion: networking.istio.io/v1beta1
        kind: WorkloadEntry
        metadata: {name: vm, namespace: demo}
        spec: {address: "bad address!", serviceAccount: vm}
        """,
        "spec.address",
        "'bad address!' is not an IP address, a host name or a unix:// path",
    ),
    (
        "gateway listener port",
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: waypoint, namespace: demo}
        spec:
          gatewayClassName: istio-waypoint
          listeners: [{name: mesh, port: 150080, protocol: HBONE}]
        """,
        "spec.listeners[0].port",
        "port 150080 out of range 1-65535",
    ),
    (
        "httproute backend weight",
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: demo}
        spec:
          parentRefs: [{group: "", kind: Service, name: web, port: 80}]
          rules: [{backendRefs: [{name: web-v1, port: 80, weight: -1}]}]
        """,
        "spec.rules[0].backendRefs[0].weight",
        "weight -1 out of range 0-1000000",
    ),
    (
        "virtual service destination",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: vs, namespace: demo}
        spec:
          hosts: [web]
          http: [{route: [{destination: {subset: v1}}]}]
        """,
        "spec.http[0].route[0].destination.host",
        "required field is missing",
    ),
    (
        "destination rule subset",
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: dr, namespace: demo}
        spec:
          host: web
          subsets: [{name: v1, labels: {version: v1}}, {name: v1}]
        """,
        "spec.subsets[1]",
        "duplicate subset name 'v1' (same as [0])",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejected_with_path_and_reason(text: str, path: str, reason: str) -> None:
    assert only_error(text) == (path, reason)


def test_error_names_file_document_and_line() -> None:
    text = POD + "---\n" + SERVICE.replace("port: 80", "port: 99999")
    (error,) = [d for d in diagnostics(text, "apps/web.yaml") if d.is_error]
    assert str(error) == (
        "apps/web.yaml:doc[1]: spec.ports[0].port: port 99999 out of range 1-65535 "
        "(line 16, column 30)"
    )


def test_yaml_syntax_error_has_line_and_column() -> None:
    text = POD + "---\nkind: Service\nmetadata: {name: x\n"
    (error,) = diagnostics(text, "bad.yaml")
    assert error.origin == Origin("bad.yaml", 1)
    assert (error.line, error.column) == (11, 1)
    assert error.reason.startswith("invalid YAML: while parsing a flow mapping")


def test_duplicate_yaml_keys_are_rejected() -> None:
    (error,) = diagnostics("apiVersion: v1\nkind: Namespace\nkind: Pod\n")
    assert (error.line, error.reason) == (3, "invalid YAML: duplicate key 'kind'")


def test_every_problem_of_a_document_is_reported() -> None:
    text = POD.replace("10.0.0.5", "x").replace("containerPort: 8080", "containerPort: -1")
    paths = [d.path for d in diagnostics(text) if d.is_error]
    assert paths == ["spec.containers[0].ports[0].containerPort", "status.podIP"]


def test_list_items_are_validated_with_their_path() -> None:
    text = yaml_text("""
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Namespace, metadata: {name: a}}
        - {apiVersion: v1, kind: Namespace, metadata: {name: B}}
        """)
    (error,) = diagnostics(text)
    assert error.path == "items[1].metadata.name"


def test_http_attributes_at_l4_get_istiods_status_and_the_webhooks_warning() -> None:
    """istiod's status for a DENY enforced without its HTTP parts, and the webhook's warning for
    a DENY rule made only of HTTP attributes (here rule 1)."""
    text = policy("""
        spec:
          action: DENY
          rules:
          - from: [{source: {namespaces: [foo]}}]
          - to: [{operation: {methods: [GET], paths: [/admin]}}]
            when: [{key: "request.headers[x-user]", values: [bob]}]
        """)
    deny_rule, status = diagnostics(text)
    assert (deny_rule.is_error, deny_rule.path) == (False, "spec.rules[1]")
    assert deny_rule.reason == (
        "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to "
        "the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify "
        "the port"
    )
    assert (status.is_error, status.path) == (False, "spec")
    assert status.reason == (
        "ztunnel does not support HTTP attributes (found: methods, paths, "
        "request.headers[x-user]). In ambient mode you must use a waypoint proxy to enforce HTTP "
        "rules. DENY policy with HTTP attributes is enforced without the HTTP rules. This will be "
        "more restrictive than requested."
    )


# istiod's TestConvertAuthorizationPolicyStatus cases: the policy and the status it expects
ISTIOD_STATUS_CASES = [
    (
        "no status - policy is fine",
        """
          rules:
          - from: [{source: {principals: [trust/ns/echo-1234/]}}]
            to: [{operation: {ports: ["80"]}}]
        """,
        None,
    ),
    (
        "unsupported AUDIT action",
        """
          action: AUDIT
          rules: [{from: [{source: {principals: [trust/ns/echo-1234/]}}]}]
        """,
        "ztunnel does not support the AUDIT action",
    ),
    (
        "unsupported CUSTOM action",
        """
          action: CUSTOM
          provider: {name: ext-authz}
          rules: [{to: [{operation: {ports: ["80"]}}]}]
        """,
        "ztunnel does not support the CUSTOM action",
    ),
    (
        "unsupported HTTP methods",
        """
          rules:
          - from: [{source: {requestPrincipals: [example.com/sub-1]}}]
            to: [{operation: {methods: [GET]}}]
            when: [{key: request.auth.presenter, values: [presenter.example.com]}]
        """,
        "ztunnel does not support HTTP attributes (found: methods, request.auth.presenter, "
        "requestPrincipals). In ambient mode you must use a waypoint proxy to enforce HTTP "
        "rules. Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be "
        "more restrictive than requested.",
    ),
]


@pytest.mark.parametrize(
    ("spec", "status"),
    [c[1:] for c in ISTIOD_STATUS_CASES],
    ids=[c[0] for c in ISTIOD_STATUS_CASES],
)
def test_istiods_conversion_status_is_a_warning(spec: str, status: str | None) -> None:
    found = diagnostics(policy("spec:" + spec))
    assert not [d for d in found if d.is_error]
    reasons = [d.reason for d in found]
    if status is None:
        assert reasons == []
    else:
        (reason,) = reasons
        # AUDIT and CUSTOM: istiod's text, then what it means here
        assert reason == status or reason.startswith(status + ": ztunnel does not enforce")


def test_principals_and_namespaces_are_accepted_as_istios_webhook_accepts_them() -> None:
    """The webhook only refuses empty strings: any other principal or namespace is a valid
    match (it may simply never match); a `spiffe://` principal gets a warning saying so."""
    text = policy("""
        spec:
          rules:
          - from:
            - source:
                principals: [cluster.local/ns/a, "cluster.local/*/sa/b", "*", any-thing]
                notPrincipals: ["spiffe://cluster.local/ns/a/sa/b"]
            - source: {namespaces: [Foo, "a*b"]}
        """)
    (hint,) = diagnostics(text)
    assert (hint.is_error, hint.path) == (False, "spec.rules[0].from[0].source.notPrincipals[0]")
    assert hint.reason == (
        "principal 'spiffe://cluster.local/ns/a/sa/b' never matches: principals are written "
        "without 'spiffe://', e.g. 'cluster.local/ns/a/sa/b'"
    )


def test_a_selector_without_labels_is_a_warning() -> None:
    (warning,) = diagnostics(policy("spec: {selector: {}}\n"))
    assert (warning.is_error, warning.path, warning.reason) == (
        False,
        "spec.selector",
        "workload selector specified without labels",
    )


def test_waypoint_policies_are_not_checked_for_l4() -> None:
    text = policy("""
        spec:
          targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
          action: CUSTOM
          provider: {name: ext-authz}
          rules: [{to: [{operation: {methods: [GET]}}]}]
        """)
    assert diagnostics(text) == []


def test_peer_authentication_disable_is_warned() -> None:
    (warning,) = diagnostics(pa("spec: {mtls: {mode: DISABLE}}\n"))
    assert (warning.is_error, warning.path) == (False, "spec.mtls")
    assert warning.reason.startswith("mTLS mode DISABLE is not supported in ambient mode")


def test_objects_from_the_api_server_tolerate_unknown_fields() -> None:
    text = POD.replace("  serviceAccountName: web", "  serviceAccountName: web\n  newField: 1")
    assert [d for d in diagnostics(text) if d.is_error]
    assert diagnostics(text, strict=False) == []
    bad_ip = POD.replace("10.0.0.5", "nope")
    assert [d.path for d in diagnostics(bad_ip, strict=False)] == ["status.podIP"]


def test_valid_resources_of_every_kind_pass() -> None:
    text = "\n---\n".join(
        [
            POD,
            SERVICE,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: "
            "{istio.io/dataplane-mode: ambient}}\n",
            service_entry("""
                spec:
                  hosts: [api.example.com]
                  addresses: [240.0.0.1]
                  ports: [{number: 443, name: tls, protocol: TLS}]
                  resolution: STATIC
                  endpoints: [{address: 10.1.0.1, ports: {tls: 8443}}]
                """),
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, "
            "namespace: demo}\nspec: {address: 10.2.0.1, labels: {app: vm}, ports: {http: 8080}}\n",
            policy("""
                spec:
                  selector: {matchLabels: {app: web}}
                  action: ALLOW
                  rules:
                  - from: [{source: {principals: ["cluster.local/ns/demo/sa/*", "*"]}}]
                    to: [{operation: {ports: ["8080"]}}]
                    when: [{key: source.ip, notValues: [10.0.0.0/8]}]
                """),
            pa("""
                spec:
                  selector: {matchLabels: {app: web}}
                  mtls: {mode: STRICT}
                  portLevelMtls: {9090: {mode: PERMISSIVE}}
                """),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint,"
            " namespace: demo}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: "
            "mesh, port: 15008, protocol: HBONE}]\n",
        ]
    )
    assert diagnostics(text) == []


# --- nothing crashes ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["10.0.0.1", "80", "*", "", "spec", "ambient", "cluster.local/ns/a/sa/b"]),
)
_keys = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "status",
        "name",
        "namespace",
        "labels",
        "selector",
        "matchLabels",
        "ports",
        "port",
        "targetPort",
        "rules",
        "from",
        "to",
        "when",
        "source",
        "operation",
        "principals",
        "ipBlocks",
        "key",
        "values",
        "mtls",
        "mode",
        "portLevelMtls",
        "hosts",
        "endpoints",
        "address",
        "podIP",
        "podIPs",
        "containers",
        "clusterIP",
        "action",
        "listeners",
        "x",
    ]
) | st.integers(0, 70000)
_trees = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=40,
)
_kinds = st.sampled_from(
    [
        "Pod",
        "Service",
        "Namespace",
        "ServiceEntry",
        "WorkloadEntry",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "Gateway",
        "HTTPRoute",
        "VirtualService",
        "DestinationRule",
        "WasmPlugin",
        "List",
    ]
)


@st.composite
def _objects(draw: st.DrawFn) -> dict[object, object]:
    body: dict[object, object] = dict(draw(st.dictionaries(_keys, _trees, max_size=6)))
    body["kind"] = draw(_kinds)
    body["apiVersion"] = draw(
        st.sampled_from(
            [
                "v1",
                "networking.istio.io/v1",
                "security.istio.io/v1",
                "gateway.networking.k8s.io/v1",
                "extensions.istio.io/v1alpha1",
            ]
        )
    )
    if draw(st.booleans()):
        body["metadata"] = {"name": draw(st.sampled_from(["a", "b"])), "namespace": "demo"}
    return body


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_file_contents_never_crash(text: str | bytes) -> None:
    """Either the file is refused as a whole with one error naming it, or every document in it
    is served or rejected with a reason."""
    store = ConfigStore(report=False)
    parsed = parse_documents(text, "f.yaml")
    store.apply({"f.yaml": parsed})
    assert all(str(d).startswith("f.yaml:doc[") for d in store.diagnostics())
    if parsed.error is not None:
        assert store.diagnostics() == (parsed.error,)
        assert store.current().version == 0 and not store.resources()
    else:
        assert_consistent(store, parsed.documents, {})


VALID = parse_documents(
    yaml_text(
        "\n---\n".join(
            [
                POD,
                SERVICE,
                policy("""
                    spec:
                      selector: {matchLabels: {app: web}}
                      rules:
                      - from: [{source: {principals: ["*"], notIpBlocks: [10.0.0.0/8]}}]
                        to: [{operation: {ports: ["8080"], methods: [GET]}}]
                        when: [{key: destination.port, values: ["80"]}]
                    """),
                pa("""
                    spec:
                      selector: {matchLabels: {app: web}}
                      mtls: {mode: STRICT}
                      portLevelMtls: {9090: {mode: PERMISSIVE}}
                    """),
                service_entry("""
                    spec:
                      hosts: [a.example.com]
                      ports: [{number: 80, name: http, targetPort: 8080}]
                      endpoints: [{address: 10.1.0.1, ports: {http: 81}}]
                    """),
            ]
        )
    ),
    "valid.yaml",
).documents


def _paths(tree: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def _replace(tree: object, path: tuple[object, ...], value: object) -> object:
    if not path:
        return value
    if isinstance(tree, dict):
        return {k: _replace(v, path[1:], value) if k == path[0] else v for k, v in tree.items()}
    assert isinstance(tree, list)
    return [_replace(v, path[1:], value) if i == path[0] else v for i, v in enumerate(tree)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_documents_never_crash(data: st.DataObject) -> None:
    """Valid documents with one value replaced anywhere reach the semantic checks and the
    translator; none of it may raise, and the store must keep serving the last good state."""
    store = ConfigStore(report=False)
    store.apply({"f.yaml": Parsed(VALID)})
    good = store.current()
    assert len(good.workloads) == 2 and not [d for d in store.diagnostics() if d.is_error]
    before = dict(store.resources())
    mutated = []
    for doc in VALID:
        path = data.draw(st.sampled_from(_paths(doc.body)))
        mutated.append(Document(doc.origin, _replace(doc.body, path, data.draw(_trees))))
    store.apply({"f.yaml": Parsed(tuple(mutated))})
    assert store.current().version >= good.version
    assert_consistent(store, tuple(mutated), before)


@st.composite
def _documents(draw: st.DrawFn) -> dict[object, object]:
    """Random objects, valid documents and new valid versions of them, renamed copies
    (clusterIP clashes, duplicates) and broken versions of valid ones (the store falls back to
    their last good version)."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(_objects())
    body = draw(st.sampled_from([doc.body for doc in VALID]))
    assert isinstance(body, dict)
    if choice == 1:
        return body
    if choice == 2:
        meta = body["metadata"]
        labels = {**meta.get("labels", {}), "rev": draw(st.sampled_from(["1", "2"]))}
        return {**body, "metadata": {**meta, "labels": labels}}
    if choice == 3:
        name = draw(st.sampled_from(["web", "web2"]))
        renamed = _replace(body, ("metadata", "name"), name)
    else:
        renamed = _replace(body, draw(st.sampled_from(_paths(body))), draw(_trees))
    return renamed if isinstance(renamed, dict) else body


def assert_consistent(
    store: ConfigStore, docs: tuple[Document, ...], before: Mapping[ResourceKey, Resource]
) -> None:
    """What the store promises after applying `docs` over the resources it served `before`:
    it serves the translation of exactly the resources it accepted; every problem validation
    finds is reported, and every rejected object has an error saying why; a valid object is
    served, unless a reported conflict names it; a rejected object it served before is still
    served in its last good version, unless a reported conflict names it."""
    served = store.resources()
    reported = set(store.diagnostics())
    snapshot, translation = store.current(), translate(served.values(), store.options)
    assert (
        snapshot.workloads,
        snapshot.services,
        snapshot.policies,
        snapshot.http_services,
        snapshot.waypoints,
    ) == (
        translation.workloads,
        translation.services,
        translation.policies,
        translation.http_services,
        translation.waypoints,
    )

    def conflict(key: ResourceKey) -> bool:
        return any(str(key) in d.reason for d in reported)

    outcomes = [outcome for doc in docs for outcome in validate_document(doc)]
    accepted = {o.key for o in outcomes if o.resource is not None}
    for outcome in outcomes:
        assert set(outcome.diagnostics) <= reported
        if outcome.resource is not None:
            assert served.get(outcome.resource.key) == outcome.resource or conflict(outcome.key)
            continue
        if outcome.skipped:  # a kind the control plane does not use: a note, not an error
            assert not any(d.is_error for d in outcome.diagnostics)
            continue
        assert any(d.is_error for d in outcome.diagnostics)
        key = outcome.key
        if key is not None and key in before and key not in accepted:
            assert served.get(key) == before[key] or conflict(key)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_documents(), max_size=5), st.lists(_documents(), max_size=5))
def test_store_never_crashes_and_keeps_a_consistent_state(
    first: list[dict[object, object]], second: list[dict[object, object]]
) -> None:
    """After each change the store serves only resources that validate (this version's, or the
    last good one of a resource whose new version is rejected), every valid resource unless
    another one owns its clusterIP, no clusterIP twice, and a snapshot that is the translation
    of what it serves."""
    store = ConfigStore(report=False)
    served: dict[ResourceKey, Resource] = {}
    for batch in (first, second):
        docs = tuple(Document(Origin("f.yaml", i), body) for i, body in enumerate(batch))
        valid: dict[ResourceKey, Resource] = {}
        for doc in docs:
            for outcome in validate_document(doc):
                if outcome.resource is not None:
                    valid.setdefault(outcome.resource.key, outcome.resource)
        before = store.current()
        result = store.apply({"f.yaml": Parsed(docs)})
        accepted = store.resources()
        for key, resource in accepted.items():
            assert resource in (valid.get(key), served.get(key))
        cluster_ips = [
            ipaddress.ip_address(ip)
            for r in accepted.values()
            if r.kind == "Service"
            for ip in service_cluster_ips(r)
        ]
        assert len(cluster_ips) == len(set(cluster_ips))
        for key, resource in valid.items():
            if accepted.get(key) == resource:
                continue
            assert any(
                d.path == "spec.clusterIP" and f"{key} rejected" in d.reason
                for d in store.diagnostics()
            ), key
        snapshot = store.current()
        assert result.snapshot is snapshot
        expected = translate(accepted.values(), store.options)
        assert (snapshot.workloads, snapshot.services, snapshot.policies) == (
            expected.workloads,
            expected.services,
            expected.policies,
        )
        changed = (before.workloads, before.services, before.policies) != (
            snapshot.workloads,
            snapshot.services,
            snapshot.policies,
        )
        assert result.changed == changed
        assert snapshot.version == before.version + changed
        served = dict(accepted)


def test_last_good_version_is_served_when_the_new_one_is_invalid() -> None:
    store = store_with(("f.yaml", POD + "---\n" + SERVICE))
    before = store.current()
    store.apply(
        {
            "f.yaml": parse_documents(
                yaml_text(POD.replace("10.0.0.5", "x") + "---\n" + SERVICE), "f.yaml"
            )
        }
    )
    assert store.current() == before
    notes = [d.reason for d in store.diagnostics() if not d.is_error]
    assert notes == ["Pod demo/web rejected: still serving its last good version"]


@pytest.mark.parametrize(
    ("api_version", "kind", "skipped"),
    [
        ("apps/v1", "Deployment", True),
        ("example.com/v1alpha1", "Widget", True),
        ("v1", "ConfigMap", True),
        # malformed: an error to fix, never set aside unseen
        ("cluster.local/ns/a/sa/b", "Widget", False),
        ("Example.com/v1", "Widget", False),
        ("example.com/v1", "widget", False),
        ("security.istio.io/v1", "AuthorizationPolicies", False),  # a typo in a group we read
    ],
)
def test_only_well_formed_objects_of_kinds_not_used_are_skipped(
    api_version: str, kind: str, skipped: bool
) -> None:
    body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", "namespace": "a"}}
    (outcome,) = validate_document(Document(Origin("f.yaml", 0), body))
    assert outcome.resource is None and outcome.skipped is skipped
    assert any(d.is_error for d in outcome.diagnostics) is not skipped
