"""Schemas of the kinds the control plane accepts, with the semantic rules Istio's and
Kubernetes' validation apply to them.

Core kinds (Namespace, Pod, Service) list every field of the Kubernetes API, so a typo is an
unknown field; the parts the mesh reads (labels, ports, IPs, selectors, service accounts) are
checked in depth, the rest (probes, volumes, security contexts...) is accepted as written.
Istio kinds (ServiceEntry, WorkloadEntry, AuthorizationPolicy, PeerAuthentication,
VirtualService, DestinationRule) and Gateway API kinds (Gateway, HTTPRoute) follow their CRDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ztunnel_py.controlplane.validation.schema import (
    LABELS,
    PORT,
    AnyValue,
    Bool,
    Checker,
    Hook,
    Int,
    IntOrStr,
    ListOf,
    MapOf,
    Node,
    Number,
    Obj,
    Schema,
    Str,
    StrCheck,
    cidr,
    dns1035_label,
    dns1123_label,
    dns1123_subdomain,
    hostname,
    ip_address,
    label_key,
    obj,
    port_name,
    port_string,
    strings,
)

ANY = AnyValue()
STR = Str()
INT = Int()
BOOL = Bool()


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _timestamp(text: str) -> str | None:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return f"{text!r} is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z)"
    return None


def _annotation_key(key: object) -> str | None:
    problem = label_key(key)
    return problem.replace("label key", "annotation key") if problem else None


def _no_generate_name(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "generateName" in fields and "name" not in fields:
        c.error(fields["generateName"], "generateName is not supported here: set metadata.name")


OWNER_REFERENCE = obj(
    {
        "apiVersion": STR,
        "kind": STR,
        "name": STR,
        "uid": STR,
        "controller": BOOL,
        "blockOwnerDeletion": BOOL,
    },
    required=("apiVersion", "kind", "name"),
)


def metadata(name_check: StrCheck) -> Obj:
    return obj(
        {
            "name": Str(checks=(name_check,)),
            "generateName": STR,
            "namespace": Str(checks=(dns1123_label,)),
            "labels": LABELS,
            "annotations": MapOf(STR, key=_annotation_key),
            "uid": STR,
            "resourceVersion": STR,
            "generation": INT,
            "creationTimestamp": Str(checks=(_timestamp,)),
            "deletionTimestamp": Str(checks=(_timestamp,)),
            "deletionGracePeriodSeconds": INT,
            "ownerReferences": ListOf(OWNER_REFERENCE),
            "finalizers": strings(),
            "managedFields": ANY,
            "selfLink": STR,
        },
        required=("name",),
        hooks=(_no_generate_name,),
    )


def kube_object(
    name_check: StrCheck, spec: Schema | None, *, spec_required: bool, hooks: tuple[Hook, ...] = ()
) -> Obj:
    fields: dict[str, Schema] = {
        "apiVersion": STR,
        "kind": STR,
        "metadata": metadata(name_check),
        "status": ANY,
    }
    if spec is not None:
        fields["spec"] = spec
    return obj(
        fields, required=("metadata", "spec") if spec_required else ("metadata",), hooks=hooks
    )


SELECTOR_MATCH_LABELS = obj({"matchLabels": LABELS})

# --- Namespace ---------------------------------------------------------------------------------

NAMESPACE = obj(
    {
        "apiVersion": STR,
        "kind": STR,
        "metadata": metadata(dns1123_label),
        "spec": obj({"finalizers": strings()}),
        "status": ANY,
    },
    required=("metadata",),
)

# --- Pod ---------------------------------------------------------------------------------------

PROTOCOL = Str(choices=("TCP", "UDP", "SCTP"))

CONTAINER_PORT = obj(
    {
        "containerPort": PORT,
        "hostIP": Str(checks=(ip_address,)),
        "hostPort": PORT,
        "name": Str(checks=(port_name,)),
        "protocol": PROTOCOL,
    },
    required=("containerPort",),
)

_CONTAINER_FIELDS = _names(
    "args command env envFrom image imagePullPolicy lifecycle livenessProbe readinessProbe "
    "resizePolicy resources restartPolicy securityContext startupProbe stdin stdinOnce "
    "terminationMessagePath terminationMessagePolicy tty volumeDevices volumeMounts workingDir"
)

CONTAINER = obj(
    {
        **dict.fromkeys(_CONTAINER_FIELDS, ANY),
        "name": Str(checks=(dns1123_label,)),
        "ports": ListOf(
            CONTAINER_PORT,
            unique_by=lambda p: p.get("name"),
            unique_what="port name",
        ),
    },
    required=("name",),
)

_POD_SPEC_FIELDS = _names(
    "activeDeadlineSeconds affinity automountServiceAccountToken dnsConfig dnsPolicy "
    "enableServiceLinks ephemeralContainers hostAliases hostIPC hostPID hostUsers hostname "
    "hostnameOverride imagePullSecrets nodeSelector os overhead preemptionPolicy priority "
    "priorityClassName readinessGates resourceClaims resources restartPolicy runtimeClassName "
    "schedulerName schedulingGates securityContext setHostnameAsFQDN shareProcessNamespace "
    "subdomain terminationGracePeriodSeconds tolerations topologySpreadConstraints volumes"
)


def _service_accounts_agree(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    name, legacy = fields.get("serviceAccountName"), fields.get("serviceAccount")
    if name is not None and legacy is not None and name.value != legacy.value:
        c.error(
            legacy,
            f"serviceAccount {legacy.value!r} (deprecated) differs from serviceAccountName "
            f"{name.value!r}: remove serviceAccount",
        )


POD_SPEC = obj(
    {
        **dict.fromkeys(_POD_SPEC_FIELDS, ANY),
        "containers": ListOf(CONTAINER, unique_by=lambda c: c.get("name"), unique_what="name"),
        "initContainers": ListOf(CONTAINER, unique_by=lambda c: c.get("name"), unique_what="name"),
        "serviceAccountName": Str(checks=(dns1123_subdomain,)),
        "serviceAccount": Str(checks=(dns1123_subdomain,)),
        "nodeName": Str(checks=(dns1123_subdomain,)),
        "hostNetwork": BOOL,
    },
    hooks=(_service_accounts_agree,),
)


def _pod_ips_agree(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    ip, ips = fields.get("podIP"), fields.get("podIPs")
    if ip is not None and ips is not None and ips.value and ips.value[0].get("ip") != ip.value:
        c.error(ips, f"podIPs[0] must equal podIP {ip.value!r}")


POD_STATUS = obj(
    {
        "podIP": Str(checks=(ip_address,)),
        "podIPs": ListOf(obj({"ip": Str(checks=(ip_address,))}, required=("ip",))),
        "hostIP": Str(checks=(ip_address,)),
        "hostIPs": ListOf(obj({"ip": Str(checks=(ip_address,))}, required=("ip",))),
        "phase": Str(choices=("Pending", "Running", "Succeeded", "Failed", "Unknown")),
        "conditions": ListOf(
            obj(
                {
                    "type": STR,
                    "status": Str(choices=("True", "False", "Unknown")),
                    "lastProbeTime": ANY,
                    "lastTransitionTime": ANY,
                    "reason": STR,
                    "message": STR,
                    "observedGeneration": INT,
                },
                required=("type", "status"),
            )
        ),
        **dict.fromkeys(
            _names(
                "containerStatuses ephemeralContainerStatuses initContainerStatuses message "
                "nominatedNodeName qosClass reason resize resourceClaimStatuses startTime "
                "observedGeneration"
            ),
            ANY,
        ),
    },
    hooks=(_pod_ips_agree,),
)

POD = obj(
    {
        "apiVersion": STR,
        "kind": STR,
        "metadata": metadata(dns1123_subdomain),
        "spec": POD_SPEC,
        "status": POD_STATUS,
    },
    required=("metadata", "spec"),
)

# --- Service -----------------------------------------------------------------------------------

SERVICE_PORT = obj(
    {
        "appProtocol": STR,
        "name": Str(checks=(dns1123_label,)),
        "nodePort": PORT,
        "port": PORT,
        "protocol": PROTOCOL,
        "targetPort": IntOrStr(PORT, Str(checks=(port_name,))),
    },
    required=("port",),
)


def _service_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    kind = fields["type"].value if "type" in fields else "ClusterIP"
    ports = fields.get("ports")
    if ports is not None:
        if len(ports.value) > 1:
            for i, port in enumerate(ports.value):
                if not port.get("name"):
                    c.error(
                        c.index(ports, i),
                        "a name is required when a Service has more than one port",
                    )
        seen: dict[tuple[int, str], int] = {}
        for i, port in enumerate(ports.value):
            key = (port["port"], port.get("protocol", "TCP"))
            if key in seen:
                c.error(
                    c.index(ports, i), f"duplicate port {key[0]}/{key[1]} (same as [{seen[key]}])"
                )
            seen.setdefault(key, i)
    elif kind != "ExternalName" and fields.get("clusterIP", Node("", "")).value != "None":
        c.error(Node(None, node.field_path("ports"), node.pos), "required field is missing")
    if kind == "ExternalName" and "externalName" not in fields:
        c.error(
            Node(None, node.field_path("externalName"), node.pos), "required for type ExternalName"
        )
    ip, ips = fields.get("clusterIP"), fields.get("clusterIPs")
    if ip is not None and ips is not None and ips.value and ips.value[0] != ip.value:
        c.error(ips, f"clusterIPs[0] must equal clusterIP {ip.value!r}")


def _cluster_ip(text: str) -> str | None:
    return None if text in ("", "None") else ip_address(text)


SERVICE_SPEC = obj(
    {
        "allocateLoadBalancerNodePorts": BOOL,
        "clusterIP": Str(checks=(_cluster_ip,)),
        "clusterIPs": ListOf(Str(checks=(_cluster_ip,))),
        "externalIPs": strings(ip_address),
        "externalName": Str(checks=(hostname,)),
        "externalTrafficPolicy": Str(choices=("Cluster", "Local")),
        "healthCheckNodePort": PORT,
        "internalTrafficPolicy": Str(choices=("Cluster", "Local")),
        "ipFamilies": ListOf(Str(choices=("IPv4", "IPv6"))),
        "ipFamilyPolicy": Str(choices=("SingleStack", "PreferDualStack", "RequireDualStack")),
        "loadBalancerClass": STR,
        "loadBalancerIP": Str(checks=(ip_address,)),
        "loadBalancerSourceRanges": strings(cidr),
        "ports": ListOf(SERVICE_PORT, unique_by=lambda p: p.get("name"), unique_what="port name"),
        "publishNotReadyAddresses": BOOL,
        "selector": LABELS,
        "sessionAffinity": Str(choices=("None", "ClientIP")),
        "sessionAffinityConfig": ANY,
        "trafficDistribution": STR,
        "type": Str(choices=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")),
    },
    hooks=(_service_spec,),
)

SERVICE = kube_object(dns1035_label, SERVICE_SPEC, spec_required=True)

# --- Istio: ServiceEntry and WorkloadEntry -----------------------------------------------------


def _endpoint_address(text: str) -> str | None:
    if text.startswith("unix://"):
        return None
    if ip_address(text) is None or hostname(text) is None:
        return None
    return f"{text!r} is not an IP address, a host name or a unix:// path"


def _port_map_key(key: object) -> str | None:
    if not isinstance(key, str):
        return f"port name {key!r} must be a string"
    return port_name(key)


def _workload_entry_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "address" not in fields and "network" not in fields:
        c.error(
            Node(None, node.field_path("address"), node.pos),
            "required field is missing (an address is needed unless a network is set)",
        )


WORKLOAD_ENTRY_SPEC = obj(
    {
        "address": Str(checks=(_endpoint_address,)),
        "ports": MapOf(PORT, key=_port_map_key),
        "labels": LABELS,
        "network": STR,
        "locality": STR,
        "weight": Int(0, 2**32 - 1, "weight"),
        "serviceAccount": Str(checks=(dns1123_subdomain,)),
    },
    hooks=(_workload_entry_spec,),
)

SERVICE_ENTRY_PROTOCOLS = (
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
)

SERVICE_ENTRY_PORT = obj(
    {
        "number": PORT,
        "protocol": Str(choices=SERVICE_ENTRY_PROTOCOLS),
        "name": Str(checks=(dns1123_label,)),
        "targetPort": PORT,
    },
    required=("number", "name"),
)


def _not_star(text: str) -> str | None:
    if text == "*":
        return (
            "'*' is not allowed as a ServiceEntry host: name the hosts "
            "(wildcards like *.example.com are fine)"
        )
    return hostname(text)


def _service_entry_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    endpoints, selector = fields.get("endpoints"), fields.get("workloadSelector")
    if endpoints is not None and selector is not None:
        c.error(selector, "workloadSelector and endpoints are mutually exclusive")
    names = {p["name"] for p in fields["ports"].value} if "ports" in fields else set()
    resolution = fields["resolution"].value if "resolution" in fields else "NONE"
    if endpoints is None:
        return
    for i, endpoint in enumerate(endpoints.value):
        entry = c.index(endpoints, i)
        if endpoint.get("ports"):
            ports = c.child(entry, "ports")
            for port in endpoint["ports"]:
                if port not in names:
                    c.error(
                        c.child(ports, port),
                        f"endpoint port {port!r} is not a port of this ServiceEntry "
                        f"(ports: {', '.join(sorted(names)) or 'none'})",
                    )
        address = endpoint.get("address", "")
        static = resolution == "STATIC" and not address.startswith("unix://")
        if static and address and ip_address(address):
            c.error(
                c.child(entry, "address"),
                f"resolution STATIC needs IP addresses, got {address!r}",
            )


SERVICE_ENTRY_SPEC = obj(
    {
        "hosts": strings(_not_star, min_items=1),
        "addresses": strings(cidr),
        "ports": ListOf(
            SERVICE_ENTRY_PORT,
            unique_by=lambda p: p.get("number"),
            unique_what="port number",
        ),
        "location": Str(choices=("MESH_EXTERNAL", "MESH_INTERNAL")),
        "resolution": Str(choices=("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")),
        "endpoints": ListOf(WORKLOAD_ENTRY_SPEC),
        "workloadSelector": obj({"labels": LABELS}),
        "exportTo": strings(),
        "subjectAltNames": strings(),
    },
    required=("hosts",),
    hooks=(_service_entry_spec,),
)

# --- Istio: AuthorizationPolicy ----------------------------------------------------------------


def _no_empty(text: str) -> str | None:
    return "empty value is not allowed" if text == "" else None


def _wildcard(text: str, what: str) -> str | None:
    """Istio string matches: exact, `*`, `prefix*` or `*suffix`; returns a problem."""
    if text == "":
        return f"empty {what} is not allowed"
    inner = text[1:] if text.startswith("*") else text
    inner = inner[:-1] if inner.endswith("*") and len(inner) > 0 else inner
    if "*" in inner:
        return f"invalid {what} {text!r}: '*' is only allowed at the start or the end"
    if text.startswith("*") and text.endswith("*") and len(text) > 1:
        return f"invalid {what} {text!r}: '*' is only allowed at the start or the end, not both"
    return None


def principal(text: str) -> str | None:
    """`<trust domain>/ns/<namespace>/sa/<account>`, `*`, or with a leading/trailing `*`."""
    problem = _wildcard(text, "principal")
    if problem:
        return problem
    if text.startswith("spiffe://"):
        return (
            f"invalid principal {text!r}: write it without 'spiffe://', "
            f"e.g. {text[len('spiffe://') :]!r}"
        )
    if "*" in text:
        return None
    parts = text.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts[::2]):
        return (
            f"malformed principal {text!r}: expected <trust domain>/ns/<namespace>/sa/"
            "<service account> (or a '*' prefix/suffix wildcard)"
        )
    return None


def namespace_match(text: str) -> str | None:
    problem = _wildcard(text, "namespace")
    if problem or "*" in text:
        return problem
    return dns1123_label(text)


def _service_account_ref(text: str) -> str | None:
    """`<account>` (in the policy's namespace) or `<namespace>/<account>`."""
    ns, slash, sa = text.rpartition("/")
    if slash and dns1123_label(ns):
        return f"invalid service account {text!r}: expected <account> or <namespace>/<account>"
    if dns1123_subdomain(sa):
        return f"invalid service account {text!r}: expected <account> or <namespace>/<account>"
    return None


_SOURCE_FIELDS = {
    "principals": principal,
    "notPrincipals": principal,
    "requestPrincipals": _no_empty,
    "notRequestPrincipals": _no_empty,
    "namespaces": namespace_match,
    "notNamespaces": namespace_match,
    "serviceAccounts": _service_account_ref,
    "notServiceAccounts": _service_account_ref,
    "ipBlocks": cidr,
    "notIpBlocks": cidr,
    "remoteIpBlocks": cidr,
    "notRemoteIpBlocks": cidr,
}
_OPERATION_FIELDS = {
    "hosts": _no_empty,
    "notHosts": _no_empty,
    "ports": port_string,
    "notPorts": port_string,
    "methods": _no_empty,
    "notMethods": _no_empty,
    "paths": _no_empty,
    "notPaths": _no_empty,
}


def _not_empty_object(what: str) -> Hook:
    def hook(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
        if not any(f.value for f in fields.values()):
            c.error(node, f"{what} must not be empty")

    return hook


def _accounts_alone(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    accounts = [k for k in ("serviceAccounts", "notServiceAccounts") if k in fields]
    others = [
        k for k in ("principals", "notPrincipals", "namespaces", "notNamespaces") if k in fields
    ]
    if accounts and others:
        c.error(
            fields[accounts[0]],
            f"{accounts[0]} cannot be combined with {', '.join(others)} in the same source",
        )


SOURCE = obj(
    {k: strings(check) for k, check in _SOURCE_FIELDS.items()},
    hooks=(_not_empty_object("from.source"), _accounts_alone),
)
OPERATION = obj(
    {k: strings(check) for k, check in _OPERATION_FIELDS.items()},
    hooks=(_not_empty_object("to.operation"),),
)

# L4 `when` keys (ztunnel can evaluate them) and how their values are checked.
L4_CONDITIONS: dict[str, Any] = {
    "source.ip": cidr,
    "source.namespace": namespace_match,
    "source.principal": principal,
    "destination.ip": cidr,
    "destination.port": port_string,
}
_L7_CONDITIONS = (
    "remote.ip",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "connection.sni",
    "source.serviceAccount",
)
_L7_CONDITION_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")


def is_known_condition(key: str) -> bool:
    return key in L4_CONDITIONS or key in _L7_CONDITIONS or key.startswith(_L7_CONDITION_PREFIXES)


def _condition(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    key = fields["key"].value
    if not is_known_condition(key):
        c.error(
            fields["key"],
            f"unknown condition key {key!r} (L4 keys: {', '.join(L4_CONDITIONS)})",
        )
        return
    if (
        not fields.get("values", Node([], "")).value
        and not fields.get("notValues", Node([], "")).value
    ):
        c.error(node, f"condition {key!r} needs values or notValues")
        return
    check = L4_CONDITIONS.get(key)
    if check is None:
        return
    for name in ("values", "notValues"):
        if name in fields:
            for i, value in enumerate(fields[name].value):
                problem = check(value)
                if problem:
                    c.error(c.index(fields[name], i), problem)


CONDITION = obj(
    {"key": STR, "values": strings(), "notValues": strings()},
    required=("key",),
    hooks=(_condition,),
)

RULE = obj(
    {
        "from": ListOf(obj({"source": SOURCE}, required=("source",))),
        "to": ListOf(obj({"operation": OPERATION}, required=("operation",))),
        "when": ListOf(CONDITION),
    }
)

POLICY_TARGET_REF = obj(
    {"group": STR, "kind": STR, "name": STR, "namespace": STR, "sectionName": STR},
    required=("kind", "name"),
)


def l7_attributes(rule: Mapping[str, Any]) -> list[str]:
    """The attributes of an AuthorizationPolicy rule that need HTTP (istiod's list), in order."""
    found: list[str] = []
    for to in rule.get("to") or ():
        op = to.get("operation") or {}
        for key in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"):
            if op.get(key) and key not in found:
                found.append(key)
    for source_entry in rule.get("from") or ():
        src = source_entry.get("source") or {}
        for key in (
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "requestPrincipals",
            "notRequestPrincipals",
        ):
            if src.get(key) and key not in found:
                found.append(key)
    for when in rule.get("when") or ():
        if when["key"] not in L4_CONDITIONS and when["key"] not in found:
            found.append(when["key"])
    return found


def _authorization_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    targets = [fields[k] for k in ("targetRef", "targetRefs") if k in fields]
    if "selector" in fields and targets:
        c.error(fields["selector"], "selector and targetRef(s) are mutually exclusive")
        return
    action = fields["action"].value if "action" in fields else "ALLOW"
    if action == "CUSTOM" and "provider" not in fields:
        c.error(Node(None, node.field_path("provider"), node.pos), "required for action CUSTOM")
    if "provider" in fields and action != "CUSTOM":
        c.error(fields["provider"], "provider is only allowed with action CUSTOM")
    if targets:
        return  # enforced by a waypoint, not at L4
    if action in ("AUDIT", "CUSTOM"):
        c.error(
            fields["action"],
            f"action {action} cannot be enforced by ztunnel at L4 (only ALLOW and DENY): "
            "attach the policy to a waypoint with targetRefs",
        )
        return
    rules = fields.get("rules")
    if rules is None:
        return
    dropped = 0
    for i, rule in enumerate(rules.value):
        attrs = l7_attributes(rule)
        if not attrs:
            continue
        consequence = (
            "in an ALLOW policy the rule is omitted and matches nothing"
            if action == "ALLOW"
            else "in a DENY policy the rule is enforced without them, which denies more than "
            "requested"
        )
        c.warn(
            c.index(rules, i),
            f"rule {i} uses HTTP attributes ({', '.join(attrs)}) that ztunnel cannot enforce "
            f"at L4; {consequence}. Use a waypoint (targetRefs) for HTTP rules",
        )
        dropped += 1
    if action == "ALLOW" and rules.value and dropped == len(rules.value):
        c.warn(
            rules,
            "every rule needs HTTP attributes: this ALLOW policy denies all traffic to "
            "the workloads it selects",
        )


DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _dry_run_annotation(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    annotations = fields["metadata"].value.get("annotations") or {}
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is not None and value not in ("true", "false"):
        where = c.child(c.child(fields["metadata"], "annotations"), DRY_RUN_ANNOTATION)
        c.error(where, f"{value!r} is not one of true, false")


AUTHORIZATION_POLICY_SPEC = obj(
    {
        "selector": SELECTOR_MATCH_LABELS,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "rules": ListOf(RULE),
        "action": Str(choices=("ALLOW", "DENY", "AUDIT", "CUSTOM")),
        "provider": obj({"name": STR}, required=("name",)),
    },
    hooks=(_authorization_spec,),
)

# --- Istio: PeerAuthentication -----------------------------------------------------------------

MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
MTLS = obj({"mode": Str(choices=MTLS_MODES)})


def port_key(key: object) -> str | None:
    """A port as a map key: 8080 in YAML, "8080" in JSON."""
    if isinstance(key, bool):
        return f"port {key!r} must be a number"
    if isinstance(key, int):
        return None if 1 <= key <= 65535 else f"port {key} out of range 1-65535"
    if isinstance(key, str):
        return port_string(key)
    return f"port {key!r} must be a number"


def _peer_authentication_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    selector = fields.get("selector")
    has_selector = selector is not None and bool(selector.value.get("matchLabels"))
    if "portLevelMtls" in fields and fields["portLevelMtls"].value and not has_selector:
        c.error(
            fields["portLevelMtls"],
            "portLevelMtls needs a selector: mesh- and namespace-wide PeerAuthentications "
            "cannot have port-level settings",
        )
    modes = [(fields["mtls"], fields["mtls"].value.get("mode"))] if "mtls" in fields else []
    if "portLevelMtls" in fields:
        modes += [
            (c.child(fields["portLevelMtls"], port), (value or {}).get("mode"))
            for port, value in fields["portLevelMtls"].value.items()
        ]
    for where, mode in modes:
        if mode == "DISABLE":
            c.warn(
                where,
                "mTLS mode DISABLE is not supported in ambient mode: it is treated as "
                "PERMISSIVE (plaintext accepted, HBONE still used between meshed pods)",
            )


PEER_AUTHENTICATION_SPEC = obj(
    {
        "selector": SELECTOR_MATCH_LABELS,
        "mtls": MTLS,
        "portLevelMtls": MapOf(MTLS, key=port_key),
    },
    hooks=(_peer_authentication_spec,),
)

# --- Gateway API: Gateway and HTTPRoute --------------------------------------------------------

WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_LISTENER = obj(
    {
        "name": Str(checks=(dns1123_subdomain,)),
        "hostname": Str(checks=(hostname,)),
        "port": PORT,
        "protocol": STR,
        "tls": ANY,
        "allowedRoutes": ANY,
    },
    required=("name", "port", "protocol"),
)


def _gateway_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    cls = fields["gatewayClassName"].value
    if cls != WAYPOINT_CLASS:
        c.warn(
            fields["gatewayClassName"],
            f"gateway class {cls!r} is stored but not used: only {WAYPOINT_CLASS!r} "
            "gateways (waypoints) are part of this mesh",
        )
        return
    listeners = fields["listeners"].value
    if not any(x["protocol"] == "HBONE" and x["port"] == 15008 for x in listeners):
        c.warn(fields["listeners"], "a waypoint needs a listener with protocol HBONE on port 15008")


GATEWAY_SPEC = obj(
    {
        "gatewayClassName": Str(checks=(dns1123_subdomain,)),
        "listeners": ListOf(
            GATEWAY_LISTENER, 1, unique_by=lambda x: x.get("name"), unique_what="listener name"
        ),
        "addresses": ListOf(obj({"type": STR, "value": STR}, required=("value",))),
        "infrastructure": obj({"labels": LABELS, "annotations": MapOf(STR), "parametersRef": ANY}),
        "backendTLS": ANY,
    },
    required=("gatewayClassName", "listeners"),
    hooks=(_gateway_spec,),
)

PARENT_REF = obj(
    {
        "group": STR,
        "kind": STR,
        "namespace": Str(checks=(dns1123_label,)),
        "name": STR,
        "sectionName": STR,
        "port": PORT,
    },
    required=("name",),
)
BACKEND_REF = obj(
    {
        "group": STR,
        "kind": STR,
        "name": STR,
        "namespace": Str(checks=(dns1123_label,)),
        "port": PORT,
        "weight": Int(0, 1_000_000, "weight"),
        "filters": ListOf(ANY),
    },
    required=("name",),
)
HTTP_HEADER_MATCH = obj(
    {"type": Str(choices=("Exact", "RegularExpression")), "name": STR, "value": STR},
    required=("name", "value"),
)
HTTP_ROUTE_MATCH = obj(
    {
        "path": obj(
            {"type": Str(choices=("Exact", "PathPrefix", "RegularExpression")), "value": STR}
        ),
        "headers": ListOf(HTTP_HEADER_MATCH),
        "queryParams": ListOf(HTTP_HEADER_MATCH),
        "method": Str(
            choices=("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
        ),
    }
)
HEADER_MODIFIER = obj(
    {
        "set": ListOf(obj({"name": STR, "value": STR}, required=("name", "value"))),
        "add": ListOf(obj({"name": STR, "value": STR}, required=("name", "value"))),
        "remove": strings(),
    }
)
HTTP_ROUTE_FILTER = obj(
    {
        "type": Str(
            choices=(
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "RequestMirror",
                "RequestRedirect",
                "URLRewrite",
                "ExtensionRef",
                "CORS",
            )
        ),
        "requestHeaderModifier": HEADER_MODIFIER,
        "responseHeaderModifier": HEADER_MODIFIER,
        "requestMirror": obj(
            {"backendRef": BACKEND_REF, "percent": Int(0, 100, "percent"), "fraction": ANY},
            required=("backendRef",),
        ),
        "requestRedirect": obj(
            {
                "scheme": Str(choices=("http", "https")),
                "hostname": Str(checks=(hostname,)),
                "path": ANY,
                "port": PORT,
                "statusCode": Int(300, 399, "status code"),
            }
        ),
        "urlRewrite": obj({"hostname": Str(checks=(hostname,)), "path": ANY}),
        "extensionRef": obj({"group": STR, "kind": STR, "name": STR}, required=("kind", "name")),
        "cors": ANY,
    },
    required=("type",),
)
HTTP_ROUTE_RULE = obj(
    {
        "name": STR,
        "matches": ListOf(HTTP_ROUTE_MATCH),
        "filters": ListOf(HTTP_ROUTE_FILTER),
        "backendRefs": ListOf(BACKEND_REF),
        "timeouts": obj({"request": STR, "backendRequest": STR}),
        "retry": obj(
            {"codes": ListOf(Int(400, 599, "status code")), "attempts": INT, "backoff": STR}
        ),
        "sessionPersistence": ANY,
    }
)
HTTP_ROUTE_SPEC = obj(
    {
        "parentRefs": ListOf(PARENT_REF),
        "hostnames": strings(hostname),
        "rules": ListOf(HTTP_ROUTE_RULE),
    }
)

# --- Istio: VirtualService and DestinationRule -------------------------------------------------

STRING_MATCH = obj({"exact": STR, "prefix": STR, "regex": STR})
PORT_SELECTOR = obj({"number": PORT})
DESTINATION = obj(
    {"host": Str(checks=(hostname,)), "subset": STR, "port": PORT_SELECTOR}, required=("host",)
)
HTTP_MATCH_REQUEST = obj(
    {
        "name": STR,
        "uri": STRING_MATCH,
        "scheme": STRING_MATCH,
        "method": STRING_MATCH,
        "authority": STRING_MATCH,
        "headers": MapOf(STRING_MATCH),
        "port": PORT,
        "sourceLabels": LABELS,
        "gateways": strings(),
        "queryParams": MapOf(STRING_MATCH),
        "ignoreUriCase": BOOL,
        "withoutHeaders": MapOf(STRING_MATCH),
        "sourceNamespace": STR,
        "statPrefix": STR,
    }
)
HTTP_ROUTE_DESTINATION = obj(
    {"destination": DESTINATION, "weight": Int(0, 100, "weight"), "headers": ANY},
    required=("destination",),
)
PERCENT = obj({"value": Number()})
HTTP_ROUTE = obj(
    {
        "name": STR,
        "match": ListOf(HTTP_MATCH_REQUEST),
        "route": ListOf(HTTP_ROUTE_DESTINATION),
        "redirect": ANY,
        "directResponse": ANY,
        "delegate": obj({"name": STR, "namespace": STR}),
        "rewrite": obj({"uri": STR, "authority": STR, "uriRegexRewrite": ANY}),
        "timeout": STR,
        "retries": obj(
            {
                "attempts": INT,
                "perTryTimeout": STR,
                "retryOn": STR,
                "retryRemoteLocalities": BOOL,
                "retryIgnorePreviousHosts": BOOL,
                "backoff": STR,
            }
        ),
        "fault": obj({"delay": ANY, "abort": ANY}),
        "mirror": DESTINATION,
        "mirrors": ListOf(obj({"destination": DESTINATION, "percentage": PERCENT})),
        "mirrorPercentage": PERCENT,
        "corsPolicy": ANY,
        "headers": ANY,
    }
)
L4_MATCH = obj(
    {
        "destinationSubnets": strings(cidr),
        "port": PORT,
        "sourceLabels": LABELS,
        "gateways": strings(),
        "sourceNamespace": STR,
        "sniHosts": strings(),
    }
)
ROUTE_DESTINATION = obj(
    {"destination": DESTINATION, "weight": Int(0, 100, "weight")}, required=("destination",)
)
VIRTUAL_SERVICE_SPEC = obj(
    {
        "hosts": strings(hostname),
        "gateways": strings(),
        "http": ListOf(HTTP_ROUTE),
        "tls": ListOf(obj({"match": ListOf(L4_MATCH), "route": ListOf(ROUTE_DESTINATION)})),
        "tcp": ListOf(obj({"match": ListOf(L4_MATCH), "route": ListOf(ROUTE_DESTINATION)})),
        "exportTo": strings(),
    }
)

TRAFFIC_POLICY = obj(
    {
        "loadBalancer": ANY,
        "connectionPool": ANY,
        "outlierDetection": ANY,
        "tls": ANY,
        "portLevelSettings": ListOf(ANY),
        "tunnel": ANY,
        "proxyProtocol": ANY,
        "retryBudget": ANY,
    }
)
DESTINATION_RULE_SPEC = obj(
    {
        "host": Str(checks=(hostname,)),
        "trafficPolicy": TRAFFIC_POLICY,
        "subsets": ListOf(
            obj(
                {
                    "name": Str(checks=(dns1123_label,)),
                    "labels": LABELS,
                    "trafficPolicy": TRAFFIC_POLICY,
                },
                required=("name",),
            ),
            unique_by=lambda s: s.get("name"),
            unique_what="subset name",
        ),
        "exportTo": strings(),
        "workloadSelector": obj({"matchLabels": LABELS}),
    },
    required=("host",),
)

# --- the table ---------------------------------------------------------------------------------

_ISTIO_NETWORKING = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
_ISTIO_SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
_GATEWAY_API = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")


@dataclass(frozen=True, slots=True)
class KindInfo:
    kind: str
    api_versions: tuple[str, ...]
    schema: Schema
    namespaced: bool = True


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("Namespace", ("v1",), NAMESPACE, namespaced=False),
        KindInfo("Pod", ("v1",), POD),
        KindInfo("Service", ("v1",), SERVICE),
        KindInfo(
            "ServiceEntry",
            _ISTIO_NETWORKING,
            kube_object(dns1123_subdomain, SERVICE_ENTRY_SPEC, spec_required=True),
        ),
        KindInfo(
            "WorkloadEntry",
            _ISTIO_NETWORKING,
            kube_object(dns1123_subdomain, WORKLOAD_ENTRY_SPEC, spec_required=True),
        ),
        KindInfo(
            "AuthorizationPolicy",
            _ISTIO_SECURITY,
            kube_object(
                dns1123_subdomain,
                AUTHORIZATION_POLICY_SPEC,
                spec_required=False,
                hooks=(_dry_run_annotation,),
            ),
        ),
        KindInfo(
            "PeerAuthentication",
            _ISTIO_SECURITY,
            kube_object(dns1123_subdomain, PEER_AUTHENTICATION_SPEC, spec_required=False),
        ),
        KindInfo(
            "Gateway",
            _GATEWAY_API,
            kube_object(dns1123_subdomain, GATEWAY_SPEC, spec_required=True),
        ),
        KindInfo(
            "HTTPRoute",
            _GATEWAY_API,
            kube_object(dns1123_subdomain, HTTP_ROUTE_SPEC, spec_required=True),
        ),
        KindInfo(
            "VirtualService",
            _ISTIO_NETWORKING,
            kube_object(dns1123_subdomain, VIRTUAL_SERVICE_SPEC, spec_required=True),
        ),
        KindInfo(
            "DestinationRule",
            _ISTIO_NETWORKING,
            kube_object(dns1123_subdomain, DESTINATION_RULE_SPEC, spec_required=True),
        ),
    )
}

__all__ = [
    "KINDS",
    "KindInfo",
    "is_known_condition",
    "l7_attributes",
    "principal",
]
