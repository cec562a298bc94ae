"""ztunnel's local-config file (`LOCAL_XDS_PATH` / `LOCAL_XDS`): YAML in, model types out.

The format is ztunnel's own: top-level `workloads`, `services` and `policies` lists, camelCase
keys as in Istio's workload API, unknown keys rejected, required keys enforced. The file is
checked with the shared schema language (`CONFIG` below) and every problem is reported at once,
each with the file, line and column and the field path (`workloads[2].workloadIps[0]`), in one
`ConfigError`; no other exception escapes, whatever the input. Only a file without problems is
turned into model values, so the builders at the end trust the shapes they read.

Keys that ztunnel accepts but ztunnel_py does not act on yet (`networkGateway`,
`applicationTunnel` on workloads; `weightedWaypoints`, `visibility` on services) are validated,
so a file that works with ztunnel works here and a typo is still reported, and then dropped.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztunnel_py.model import (
    DEFAULT_TRUST_DOMAIN,
    Action,
    Authorization,
    GatewayAddress,
    IPAddress,
    Match,
    NamespacedHostname,
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
from ztunnel_py.model.ports import HBONE_PORT
from ztunnel_py.model.workload import (
    DEFAULT_CLUSTER_ID,
    HealthPolicy,
    IpFamilies,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    Locality,
    NetworkCidr,
    NetworkMode,
    pod_uid,
)
from ztunnel_py.yamlschema.loading import (
    YAML_ERRORS,
    PositionLoader,
    expansion_problem,
    syntax_problem,
)
from ztunnel_py.yamlschema.problems import Problem
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    PORT,
    STR,
    Checker,
    Int,
    IntOrStr,
    ListOf,
    MapOf,
    Node,
    Schema,
    Str,
    StrCheck,
    cidr,
    expected,
    ip_address,
    obj,
    port_key,
    port_string,
    strings,
)

# Aliases let a small file expand into a huge tree; past this many nodes we refuse the file.
MAX_EXPANDED_NODES = 1_000_000


class ConfigError(Exception):
    """A local-config file that cannot be used; the message has one line per problem,
    `file:line:column: field.path: reason`."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(_describe(source, p) for p in self.problems))

    # The first problem, for callers that show one.

    @property
    def path(self) -> str:
        return self.problems[0].path

    @property
    def problem(self) -> str:
        return self.problems[0].reason

    @property
    def line(self) -> int | None:
        return self.problems[0].line

    @property
    def column(self) -> int | None:
        return self.problems[0].column


def _describe(source: str, problem: Problem) -> str:
    where = source if problem.line is None else f"{source}:{problem.line}:{problem.column}"
    return (
        f"{where}: {problem.path}: {problem.reason}"
        if problem.path
        else f"{where}: {problem.reason}"
    )


@dataclass(frozen=True, slots=True)
class LocalConfig:
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple[Authorization, ...] = ()


def load_local_config(path: str | Path) -> LocalConfig:
    """Read and parse a local-config file; raises ConfigError only."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(
            source, [Problem("", f"cannot read the file: {e.strerror or e}")]
        ) from None
    return parse_local_config(data, source)


def parse_local_config(text: str | bytes, source: str = "<inline>") -> LocalConfig:
    """Parse local-config YAML (`source` names it in errors); raises ConfigError only."""
    loader: PositionLoader | None = None
    try:
        loader = PositionLoader(text)
        doc = loader.get_single_data()
    except YAML_ERRORS as e:
        raise ConfigError(source, [syntax_problem(e)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    too_big = expansion_problem(doc, MAX_EXPANDED_NODES)
    if too_big is not None:
        raise ConfigError(source, [Problem("", too_big)])
    if doc is None:
        return LocalConfig()
    checker = Checker(loader.positions)
    CONFIG.check(checker, Node(doc, ""))
    if checker.problems:
        raise ConfigError(source, checker.problems)
    return _config(doc)


# --- the format --------------------------------------------------------------------------------


def _namespaced(what: str) -> StrCheck:
    def check(text: str) -> str | None:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name:
            return f"{text!r} is not a '{what}' key"
        return None

    return check


_service_name = _namespaced("namespace/hostname")


def _service_key(key: object) -> str | None:
    return _service_name(str(key))


def _network_address(text: str) -> str | None:
    try:
        NetworkAddress.parse(text)
    except ValueError:
        return f"{text!r} is not a 'network/IP' address (e.g. '/10.0.0.1')"
    return None


def _workload_ip(text: str) -> str | None:
    return _network_address(text) if "/" in text else ip_address(text)


def _port(low: int) -> Schema:
    """A port as a number or a decimal string ("80"), as YAML map keys often are."""
    return IntOrStr(Int(low, 65535, "port"), Str(checks=(functools.partial(port_string, low=low),)))


def _destination(text: str) -> NetworkAddress | NamespacedHostname | None:
    try:
        return NetworkAddress.parse(text)
    except ValueError:
        namespace, sep, hostname = text.partition("/")
        return NamespacedHostname(namespace, hostname) if sep and namespace and hostname else None


NAMESPACED_HOSTNAME = obj({"namespace": STR, "hostname": STR}, required=("namespace", "hostname"))


class _Destination(Schema):
    """Where a gateway is: `network/IP`, `namespace/hostname`, or {namespace, hostname}."""

    def walk(self, c: Checker, node: Node) -> None:
        if isinstance(node.value, dict):
            NAMESPACED_HOSTNAME.walk(c, node)
        elif not isinstance(node.value, str):
            expected(c, node, "a string")
        elif _destination(node.value) is None:
            c.error(
                node, f"{node.value!r} is neither a 'network/IP' address nor a 'namespace/hostname'"
            )


@dataclass(frozen=True)
class _PortMap(Schema):
    """{service port: target port}; `null` means no ports where `null_is_empty`."""

    target: Schema
    null_is_empty: bool = False

    def walk(self, c: Checker, node: Node) -> None:
        if node.value is None and self.null_is_empty:
            return
        if not isinstance(node.value, dict):
            expected(c, node, "a mapping")
            return
        seen: set[int] = set()
        for key in node.value:
            child = c.child(node, key)
            problem = port_key(key)
            if problem:
                c.error(child, problem)
                continue
            if int(key) in seen:
                c.error(child, f"port {int(key)} is listed twice")
                continue
            seen.add(int(key))
            self.target.walk(c, child)


def _gateway(extra: Mapping[str, Schema] | None = None) -> Schema:
    return obj(
        {"destination": _Destination(), "hboneMtlsPort": _port(1), **(extra or {})},
        required=("destination",),
    )


GATEWAY = _gateway()


def _addresses_on_network(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    network = fields["network"].value if "network" in fields else ""
    ips = fields["workloadIps"]
    for i, text in enumerate(ips.value):
        if "/" in text and NetworkAddress.parse(text).network != network:
            c.error(
                c.index(ips, i),
                f"{text!r} names network {NetworkAddress.parse(text).network!r} but the "
                f"workload's network is {network!r} (set 'network', or list plain IPs)",
            )


WORKLOAD = obj(
    {
        "uid": STR,
        "name": STR,
        "namespace": STR,
        "serviceAccount": STR,
        "trustDomain": STR,
        "workloadIps": strings(_workload_ip),
        "protocol": Str(choices=tuple(p.value for p in TunnelProtocol)),
        "node": STR,
        "network": STR,
        "hostname": STR,
        "canonicalName": STR,
        "canonicalRevision": STR,
        "workloadName": STR,
        "workloadType": STR,
        "waypoint": GATEWAY,
        "networkGateway": GATEWAY,
        "nativeTunnel": BOOL,
        "applicationTunnel": obj(
            {"protocol": Str(choices=("NONE", "PROXY")), "port": PORT}, required=("protocol",)
        ),
        "authorizationPolicies": strings(_namespaced("namespace/name")),
        "status": Str(choices=tuple(s.value for s in WorkloadStatus)),
        "clusterId": STR,
        "locality": obj({"region": STR, "zone": STR, "subzone": STR}),
        "networkMode": Str(choices=tuple(m.value for m in NetworkMode)),
        "capacity": Int(0, 2**32 - 1, "capacity"),
        "services": MapOf(_PortMap(_port(1), null_is_empty=True), key=_service_key),
    },
    required=("namespace", "workloadIps", "services"),
    hooks=(_addresses_on_network,),
)

_LOAD_BALANCER = obj(
    {
        "mode": Str(choices=tuple(m.value for m in LoadBalancerMode)),
        "routingPreferences": ListOf(Str(choices=tuple(s.value for s in LoadBalancerScope))),
        "healthPolicy": Str(choices=tuple(h.value for h in HealthPolicy)),
    }
)

SERVICE = obj(
    {
        "name": STR,
        "namespace": STR,
        "hostname": STR,
        "vips": strings(_network_address),
        "ports": _PortMap(_port(0)),
        "subjectAltNames": strings(),
        "waypoint": GATEWAY,
        "canonical": BOOL,
        "loadBalancer": _LOAD_BALANCER,
        "ipFamilies": Str(choices=tuple(f.value for f in IpFamilies)),
        "cidrVips": strings(cidr),
        "weightedWaypoints": ListOf(_gateway({"weight": Int(0, 2**32 - 1, "weight")})),
        "visibility": Str(choices=("Public", "Namespace")),
    },
    required=("name", "namespace", "hostname", "vips", "ports"),
    hints={"endpoints": "endpoints are derived from each workload's 'services' map"},
)


def _one_match(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    # Every key is a match kind here (others are unknown fields); a null value is in
    # node.value but not in fields.
    if len(node.value) != 1:
        c.error(node, "expected exactly one of Exact, Prefix, Suffix, Presence (e.g. {Exact: x})")
        return
    ((key, value),) = node.value.items()
    if key == StringMatchKind.PRESENCE.value:
        if value not in (None, {}, []):
            c.error(c.child(node, key), "Presence takes no value (write {Presence: {}})")
    elif value is None:
        expected(c, c.child(node, key), "a string")


STRING_MATCH = obj(
    {
        **{kind.value: STR for kind in StringMatchKind if kind is not StringMatchKind.PRESENCE},
        StringMatchKind.PRESENCE.value: ANY,
    },
    hooks=(_one_match,),
)
SERVICE_ACCOUNT_MATCH = obj(
    {"namespace": STR, "serviceAccount": STR}, required=("namespace", "serviceAccount")
)


def _string_match(m: Mapping[str, str | None]) -> StringMatch:
    ((key, value),) = m.items()
    kind = StringMatchKind(key)
    return StringMatch(kind) if kind is StringMatchKind.PRESENCE else StringMatch(kind, value or "")


def _service_account_match(m: Mapping[str, str]) -> ServiceAccountMatch:
    return ServiceAccountMatch(m["namespace"], m["serviceAccount"])


def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


# A match's lists: YAML key -> (Match attribute, item schema, item value).
_MATCH_LISTS: dict[str, tuple[str, Schema, Callable[[Any], Any]]] = {
    "namespaces": ("namespaces", STRING_MATCH, _string_match),
    "notNamespaces": ("not_namespaces", STRING_MATCH, _string_match),
    "serviceAccounts": ("service_accounts", SERVICE_ACCOUNT_MATCH, _service_account_match),
    "notServiceAccounts": ("not_service_accounts", SERVICE_ACCOUNT_MATCH, _service_account_match),
    "principals": ("principals", STRING_MATCH, _string_match),
    "notPrincipals": ("not_principals", STRING_MATCH, _string_match),
    "sourceIps": ("source_ips", Str(checks=(cidr,)), _cidr),
    "notSourceIps": ("not_source_ips", Str(checks=(cidr,)), _cidr),
    "destinationIps": ("destination_ips", Str(checks=(cidr,)), _cidr),
    "notDestinationIps": ("not_destination_ips", Str(checks=(cidr,)), _cidr),
    "destinationPorts": ("destination_ports", _port(0), int),
    "notDestinationPorts": ("not_destination_ports", _port(0), int),
}

MATCH = obj({key: ListOf(item) for key, (_, item, _) in _MATCH_LISTS.items()})

POLICY = obj(
    {
        "name": STR,
        "namespace": STR,
        "scope": Str(choices=tuple(s.value for s in PolicyScope)),
        # ztunnel's format knows Allow and Deny; Audit exists only for waypoints
        "action": Str(choices=(Action.ALLOW.value, Action.DENY.value)),
        # rules: any rule matches; a rule's clauses must all match; a clause is a list of matches
        "rules": ListOf(ListOf(ListOf(MATCH))),
        "dryRun": BOOL,
    },
    required=("name", "namespace", "scope", "action", "rules", "dryRun"),
)


def _uid(w: Mapping[str, Any]) -> str:
    """A workload's uid, defaulted from its name as istiod names pods."""
    cluster_id = w.get("clusterId") or DEFAULT_CLUSTER_ID
    return w.get("uid") or pod_uid(w["namespace"], w.get("name") or "", cluster_id)


def _vips_unique(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    services = fields.get("services")
    if services is None:
        return
    owners: dict[str, int] = {}
    for i in range(len(services.value)):
        vips = c.child(c.index(services, i), "vips")
        for j, text in enumerate(vips.value):
            vip = str(NetworkAddress.parse(text))
            owner = owners.setdefault(vip, i)
            if owner != i:
                c.error(
                    c.index(vips, j), f"duplicate VIP {vip!r} (already used by services[{owner}])"
                )


CONFIG = obj(
    {
        "workloads": ListOf(WORKLOAD, unique_by=_uid, unique_what="uid"),
        "services": ListOf(
            SERVICE, unique_by=lambda s: f"{s['namespace']}/{s['hostname']}", unique_what="service"
        ),
        "policies": ListOf(
            POLICY, unique_by=lambda p: f"{p['namespace']}/{p['name']}", unique_what="policy"
        ),
    },
    hooks=(_vips_unique,),
)

# --- model values from a checked document ------------------------------------------------------


def _config(doc: Mapping[str, Any]) -> LocalConfig:
    return LocalConfig(
        workloads=tuple(_workload(w) for w in doc.get("workloads") or ()),
        services=tuple(_service(s) for s in doc.get("services") or ()),
        policies=tuple(_policy(p) for p in doc.get("policies") or ()),
    )


def _ports(ports: Mapping[int | str, int | str] | None) -> dict[int, int]:
    return {int(port): int(target) for port, target in (ports or {}).items()}


def _gateway_address(g: Mapping[str, Any] | None) -> GatewayAddress | None:
    if g is None:
        return None
    dest = g["destination"]
    destination = (
        NamespacedHostname(dest["namespace"], dest["hostname"])
        if isinstance(dest, dict)
        else _destination(dest)
    )
    assert destination is not None  # checked by _Destination
    port = g.get("hboneMtlsPort")
    return GatewayAddress(destination, HBONE_PORT if port is None else int(port))


def _address(text: str) -> IPAddress:
    return NetworkAddress.parse(text).address if "/" in text else ipaddress.ip_address(text)


def _workload(w: Mapping[str, Any]) -> Workload:
    status = w.get("status")
    capacity = w.get("capacity")
    return Workload(
        uid=_uid(w),
        name=w.get("name") or "",
        namespace=w["namespace"],
        addresses=tuple(_address(text) for text in w["workloadIps"]),
        service_account=w.get("serviceAccount") or "default",
        trust_domain=w.get("trustDomain") or DEFAULT_TRUST_DOMAIN,
        node=w.get("node") or "",
        network=w.get("network") or "",
        hostname=w.get("hostname") or "",
        tunnel_protocol=TunnelProtocol(w.get("protocol") or TunnelProtocol.NONE.value),
        canonical_name=w.get("canonicalName") or "",
        canonical_revision=w.get("canonicalRevision") or "",
        workload_name=w.get("workloadName") or "",
        workload_type=w.get("workloadType") or "deployment",
        waypoint=_gateway_address(w.get("waypoint")),
        services={name: _ports(ports) for name, ports in w["services"].items()},
        authorization_policies=tuple(w.get("authorizationPolicies") or ()),
        status=WorkloadStatus(status) if status else WorkloadStatus.HEALTHY,
        cluster_id=w.get("clusterId") or DEFAULT_CLUSTER_ID,
        capacity=1 if capacity is None else capacity,
        network_mode=NetworkMode(w.get("networkMode") or NetworkMode.STANDARD.value),
        locality=Locality(**(w.get("locality") or {})),
        native_tunnel=bool(w.get("nativeTunnel")),
    )


def _load_balancer(lb: Mapping[str, Any] | None) -> LoadBalancer | None:
    if lb is None:
        return None
    return LoadBalancer(
        mode=LoadBalancerMode(lb.get("mode") or LoadBalancerMode.STANDARD.value),
        routing_preferences=tuple(LoadBalancerScope(p) for p in lb.get("routingPreferences") or ()),
        health_policy=HealthPolicy(lb.get("healthPolicy") or HealthPolicy.ONLY_HEALTHY.value),
    )


def _service(s: Mapping[str, Any]) -> Service:
    return Service(
        name=s["name"],
        namespace=s["namespace"],
        hostname=s["hostname"],
        vips=tuple(NetworkAddress.parse(text) for text in s["vips"]),
        ports=_ports(s["ports"]),
        subject_alt_names=tuple(s.get("subjectAltNames") or ()),
        waypoint=_gateway_address(s.get("waypoint")),
        cidr_vips=tuple(
            NetworkCidr("", ipaddress.ip_network(c, strict=False)) for c in s.get("cidrVips") or ()
        ),
        ip_families=IpFamilies(s["ipFamilies"]) if s.get("ipFamilies") else None,
        load_balancer=_load_balancer(s.get("loadBalancer")),
        canonical=bool(s.get("canonical")),
    )


def _match(m: Mapping[str, Any]) -> Match:
    return Match(
        **{
            attribute: tuple(value(item) for item in m.get(key) or ())
            for key, (attribute, _, value) in _MATCH_LISTS.items()
        }
    )


def _policy(p: Mapping[str, Any]) -> Authorization:
    return Authorization(
        name=p["name"],
        namespace=p["namespace"],
        scope=PolicyScope(p["scope"]),
        action=Action(p["action"]),
        rules=tuple(
            tuple(tuple(_match(m) for m in clause) for clause in rule) for rule in p["rules"]
        ),
        dry_run=p["dryRun"],
    )
