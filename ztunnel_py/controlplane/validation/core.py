"""The core/v1 kinds: Namespace, Pod and Service.

They list every field of the Kubernetes API, so a typo is an unknown field; the parts the mesh
reads (labels, ports, IPs, selectors, service accounts) are checked in depth, the rest (probes,
volumes, security contexts...) is accepted as written.
"""

from __future__ import annotations

from collections.abc import Mapping

from ztunnel_py.controlplane.validation.kube import (
    LABELS,
    KindInfo,
    kube_object,
    names,
    port_name,
)
from ztunnel_py.model.names import dns1035_label, dns1123_label, dns1123_subdomain
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    INT,
    PORT,
    STR,
    Checker,
    IntOrStr,
    ListOf,
    Node,
    Str,
    cidr,
    hostname,
    ip_address,
    obj,
    strings,
)

API_VERSIONS = ("v1",)
PROTOCOL = Str(choices=("TCP", "UDP", "SCTP"))

# --- Namespace ---------------------------------------------------------------------------------

NAMESPACE = kube_object(dns1123_label, obj({"finalizers": strings()}), spec_required=False)

# --- Pod ---------------------------------------------------------------------------------------

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

_CONTAINER_FIELDS = names(
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

_POD_SPEC_FIELDS = names(
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
            names(
                "containerStatuses ephemeralContainerStatuses initContainerStatuses message "
                "nominatedNodeName qosClass reason resize resourceClaimStatuses startTime "
                "observedGeneration"
            ),
            ANY,
        ),
    },
    hooks=(_pod_ips_agree,),
)

POD = kube_object(dns1123_subdomain, POD_SPEC, spec_required=True, status=POD_STATUS)

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
        c.error(node.missing("ports"), "required field is missing")
    if kind == "ExternalName" and "externalName" not in fields:
        c.error(node.missing("externalName"), "required for type ExternalName")
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

KINDS = (
    KindInfo("Namespace", API_VERSIONS, NAMESPACE, namespaced=False),
    KindInfo("Pod", API_VERSIONS, POD),
    KindInfo("Service", API_VERSIONS, SERVICE),
)
