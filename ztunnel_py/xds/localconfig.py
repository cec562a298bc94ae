"""ztunnel's local-config file (`LOCAL_XDS_PATH` / `LOCAL_XDS`): YAML in, model types out.

The format is ztunnel's own (docs/istio-compat.md, "Local configuration file"): top-level
`workloads`, `services` and `policies`, camelCase keys, unknown keys rejected, required keys
enforced. Every problem becomes a `ConfigError` naming the file, the line and column, the field path
(`workloads[2].workloadIps[0]`) and what was expected; no other exception escapes, whatever the
input.

Keys that ztunnel accepts but ztunnel_py does not act on yet (`networkGateway`, `nativeTunnel`,
`applicationTunnel`, `locality`, `networkMode` on workloads; `canonical`, `loadBalancer`,
`ipFamilies`, `cidrVips`, `weightedWaypoints`, `visibility` on services) are validated, so a file
that works with ztunnel works here and a typo is still reported, and then dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ztunnel_py.model import (
    DEFAULT_TRUST_DOMAIN,
    Action,
    Authorization,
    Cidr,
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
from ztunnel_py.model.workload import pod_uid
from ztunnel_py.yamlpos import (
    Position,
    PositionLoader,
    describe_value,
    expansion_problem,
    position,
)

# Aliases let a small file expand into a huge tree; past this many nodes we refuse the file.
MAX_EXPANDED_NODES = 1_000_000

_T = TypeVar("_T")


class ConfigError(Exception):
    """A local-config file that cannot be used; the message says where and what is wrong."""

    def __init__(
        self,
        source: str,
        path: str,
        problem: str,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        self.line = line
        self.column = column
        where = source if line is None else f"{source}:{line}:{column}"
        super().__init__(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")


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
        raise ConfigError(source, "", f"cannot read the file: {e.strerror or e}") from None
    return parse_local_config(data, source)


def parse_local_config(text: str | bytes, source: str = "<inline>") -> LocalConfig:
    """Parse local-config YAML (`source` names it in errors); raises ConfigError only."""
    loader: PositionLoader | None = None
    try:
        loader = PositionLoader(text)
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "syntax error"
        if e.context:
            problem += f" ({e.context})"
        raise _at(
            source, "", f"invalid YAML: {problem}", position(mark) if mark else None
        ) from None
    except yaml.reader.ReaderError as e:
        problem = f"{e.reason} (character {e.character!r} at offset {e.position})"
        raise ConfigError(source, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, "", f"invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(source, "", "invalid YAML: nested too deeply") from None
    except Exception as e:  # PyYAML's constructors raise ValueError & co on odd input
        raise ConfigError(source, "", f"invalid YAML: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    _check_expansion(doc, source)
    return _Reader(source, loader.positions).config(_Node(doc, "", None))


# --- YAML loading with positions ---------------------------------------------------------------


def _at(source: str, path: str, problem: str, mark: Position | None) -> ConfigError:
    if mark is None:
        return ConfigError(source, path, problem)
    return ConfigError(source, path, problem, *mark)


def _check_expansion(doc: object, source: str) -> None:
    problem = expansion_problem(doc, MAX_EXPANDED_NODES)
    if problem is not None:
        raise ConfigError(source, "", problem)


# --- schema walking ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    value: object
    path: str
    mark: Position | None


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else repr(key)


_WORKLOAD_KEYS = frozenset(
    {
        "uid",
        "name",
        "namespace",
        "serviceAccount",
        "trustDomain",
        "workloadIps",
        "protocol",
        "node",
        "network",
        "hostname",
        "canonicalName",
        "canonicalRevision",
        "workloadName",
        "workloadType",
        "waypoint",
        "networkGateway",
        "nativeTunnel",
        "applicationTunnel",
        "authorizationPolicies",
        "status",
        "clusterId",
        "locality",
        "networkMode",
        "capacity",
        "services",
    }
)
_SERVICE_KEYS = frozenset(
    {
        "name",
        "namespace",
        "hostname",
        "vips",
        "ports",
        "subjectAltNames",
        "waypoint",
        "canonical",
        "loadBalancer",
        "ipFamilies",
        "cidrVips",
        "weightedWaypoints",
        "visibility",
    }
)
_POLICY_KEYS = frozenset({"name", "namespace", "scope", "action", "rules", "dryRun"})
_MATCH_KEYS = frozenset(
    {
        "namespaces",
        "notNamespaces",
        "serviceAccounts",
        "notServiceAccounts",
        "principals",
        "notPrincipals",
        "sourceIps",
        "notSourceIps",
        "destinationIps",
        "notDestinationIps",
        "destinationPorts",
        "notDestinationPorts",
    }
)
_HINTS = {
    "endpoints": "endpoints are derived from each workload's 'services' map",
    "workloadIp": "use 'workloadIps', a list",
}


class _Reader:
    """Walks the loaded document; each method validates one shape and returns model values."""

    def __init__(self, source: str, marks: dict[int, dict[Any, Position]]) -> None:
        self.source = source
        self.positions = marks

    def error(self, node: _Node, problem: str) -> ConfigError:
        return _at(self.source, node.path, problem, node.mark)

    # generic shapes

    def child(self, parent: _Node, key: object, value: object, path: str) -> _Node:
        mark = self.positions.get(id(parent.value), {}).get(key, parent.mark)
        return _Node(value, path, mark)

    def mapping(
        self, node: _Node, allowed: frozenset[str], required: frozenset[str] = frozenset()
    ) -> dict[str, _Node]:
        value = node.value
        if not isinstance(value, dict):
            raise self.error(node, f"expected a mapping, got {describe_value(value)}")
        fields: dict[str, _Node] = {}
        for key, item in value.items():
            path = f"{node.path}.{_key_text(key)}" if node.path else _key_text(key)
            child = self.child(node, key, item, path)
            if not isinstance(key, str) or key not in allowed:
                hint = _HINTS.get(key) if isinstance(key, str) else None
                expected = (
                    "; " + hint if hint else f" (expected one of: {', '.join(sorted(allowed))})"
                )
                raise self.error(child, f"unknown key {_key_text(key)!r}{expected}")
            fields[key] = child
        for key in sorted(required - fields.keys()):
            raise self.error(node, f"missing required key {key!r}")
        return fields

    def items(self, node: _Node) -> list[_Node]:
        value = node.value
        if not isinstance(value, list):
            raise self.error(node, f"expected a list, got {describe_value(value)}")
        return [self.child(node, i, item, f"{node.path}[{i}]") for i, item in enumerate(value)]

    def entries(self, node: _Node) -> list[tuple[_Node, _Node]]:
        """(key, value) nodes of a mapping with free-form keys."""
        value = node.value
        if not isinstance(value, dict):
            raise self.error(node, f"expected a mapping, got {describe_value(value)}")
        out = []
        for key, item in value.items():
            label = f'"{key}"' if isinstance(key, str) else repr(key)
            path = f"{node.path}[{label}]"
            child = self.child(node, key, item, path)
            out.append((_Node(key, path, child.mark), child))
        return out

    def listof(self, node: _Node, parse: Callable[[_Node], _T]) -> tuple[_T, ...]:
        return tuple(parse(item) for item in self.items(node))

    def string(self, node: _Node) -> str:
        if not isinstance(node.value, str):
            raise self.error(node, f"expected a string, got {describe_value(node.value)}")
        return node.value

    def boolean(self, node: _Node) -> bool:
        if not isinstance(node.value, bool):
            raise self.error(node, f"expected true or false, got {describe_value(node.value)}")
        return node.value

    def integer(self, node: _Node, low: int, high: int, what: str = "an integer") -> int:
        value = node.value
        # Ports may be written as strings ("80"); the length bound keeps int() cheap and safe.
        if isinstance(value, str) and value.strip().isdecimal() and len(value) <= 20:
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(node, f"expected {what}, got {describe_value(value)}")
        if not low <= value <= high:
            raise self.error(node, f"{value} is out of range: expected {what} in {low}..{high}")
        return value

    def port(self, node: _Node, allow_zero: bool = False) -> int:
        return self.integer(node, 0 if allow_zero else 1, 65535, "a port number")

    def choice(self, node: _Node, choices: tuple[str, ...]) -> str:
        value = node.value
        if not isinstance(value, str) or value not in choices:
            shown = repr(value) if isinstance(value, str) else describe_value(value)
            raise self.error(node, f"{shown} is not one of: {', '.join(choices)}")
        return value

    def optional(
        self, fields: dict[str, _Node], key: str, parse: Callable[[_Node], _T], default: _T
    ) -> _T:
        node = fields.get(key)
        return default if node is None else parse(node)

    def optional_list(
        self, fields: dict[str, _Node], key: str, parse: Callable[[_Node], _T]
    ) -> tuple[_T, ...]:
        node = fields.get(key)
        return () if node is None else self.listof(node, parse)

    # addresses

    def ip(self, node: _Node) -> IPAddress:
        text = self.string(node)
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            raise self.error(node, f"{text!r} is not an IP address") from None

    def network_address(self, node: _Node) -> NetworkAddress:
        text = self.string(node)
        try:
            return NetworkAddress.parse(text)
        except ValueError:
            raise self.error(
                node, f"{text!r} is not a 'network/IP' address (e.g. '/10.0.0.1')"
            ) from None

    def cidr(self, node: _Node) -> Cidr:
        text = self.string(node)
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.error(
                node, f"{text!r} is not a CIDR (e.g. '10.0.0.0/8' or '10.0.0.1')"
            ) from None

    def namespaced(self, node: _Node, what: str) -> str:
        text = self.string(node)
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name:
            raise self.error(node, f"{text!r} is not a '{what}' key")
        return text

    def gateway(self, node: _Node, extra_keys: frozenset[str] = frozenset()) -> GatewayAddress:
        keys = frozenset({"destination", "hboneMtlsPort"}) | extra_keys
        fields = self.mapping(node, keys, frozenset({"destination"}))
        dest_node = fields["destination"]
        destination: NetworkAddress | NamespacedHostname
        if isinstance(dest_node.value, dict):
            keys = frozenset({"namespace", "hostname"})
            dest = self.mapping(dest_node, keys, keys)
            destination = NamespacedHostname(
                self.string(dest["namespace"]), self.string(dest["hostname"])
            )
        else:
            text = self.string(dest_node)
            try:
                destination = NetworkAddress.parse(text)
            except ValueError:
                namespace, sep, hostname = text.partition("/")
                if not sep or not namespace or not hostname:
                    raise self.error(
                        dest_node,
                        f"{text!r} is neither a 'network/IP' address nor a 'namespace/hostname'",
                    ) from None
                destination = NamespacedHostname(namespace, hostname)
        port = self.optional(fields, "hboneMtlsPort", self.port, 15008)
        return GatewayAddress(destination, port)

    def port_map(self, node: _Node, allow_zero_target: bool) -> dict[int, int]:
        ports: dict[int, int] = {}
        for key, value in self.entries(node):
            service_port = self.port(key)
            if service_port in ports:
                raise self.error(key, f"port {service_port} is listed twice")
            ports[service_port] = self.port(value, allow_zero=allow_zero_target)
        return ports

    # the document

    def config(self, node: _Node) -> LocalConfig:
        if node.value is None:
            return LocalConfig()
        fields = self.mapping(node, frozenset({"workloads", "services", "policies"}))
        workloads = self.optional_list(fields, "workloads", self.workload)
        services = self.optional_list(fields, "services", self.service)
        policies = self.optional_list(fields, "policies", self.policy)
        self.unique(fields, "workloads", [w.uid for w in workloads], "uid")
        self.unique(fields, "services", [s.key for s in services], "service")
        self.unique(fields, "policies", [p.key for p in policies], "policy")
        vips = [[str(v) for v in s.vips] for s in services]
        self.unique_nested(fields, "services", vips, "vips", "VIP")
        return LocalConfig(workloads, services, policies)

    def unique(self, fields: dict[str, _Node], section: str, keys: list[str], what: str) -> None:
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in seen:
                item = self.items(fields[section])[i]
                raise self.error(
                    item, f"duplicate {what} {key!r} (already defined by {section}[{seen[key]}])"
                )
            seen[key] = i

    def unique_nested(
        self, fields: dict[str, _Node], section: str, keys: list[list[str]], sub: str, what: str
    ) -> None:
        seen: dict[str, int] = {}
        for i, group in enumerate(keys):
            for j, key in enumerate(group):
                if key in seen and seen[key] != i:
                    item = self.items(fields[section])[i]
                    node = self.items(self.mapping(item, _SERVICE_KEYS)[sub])[j]
                    raise self.error(
                        node, f"duplicate {what} {key!r} (already used by {section}[{seen[key]}])"
                    )
                seen.setdefault(key, i)

    def workload(self, node: _Node) -> Workload:
        f = self.mapping(node, _WORKLOAD_KEYS, frozenset({"namespace", "workloadIps", "services"}))
        text = self.string
        namespace = text(f["namespace"])
        name = self.optional(f, "name", text, "")
        network = self.optional(f, "network", text, "")
        cluster_id = self.optional(f, "clusterId", text, "") or "Kubernetes"
        addresses = tuple(self.workload_ip(n, network) for n in self.items(f["workloadIps"]))
        services: dict[str, dict[int, int]] = {}
        for key, value in self.entries(f["services"]):
            service = self.namespaced(key, "namespace/hostname")
            services[service] = {} if value.value is None else self.port_map(value, False)
        self.optional(f, "networkGateway", self.gateway, None)
        self.optional(f, "nativeTunnel", self.boolean, False)
        self.optional(f, "applicationTunnel", self.application_tunnel, None)
        self.optional(f, "locality", self.locality, None)
        self.optional(f, "networkMode", lambda n: self.choice(n, ("Standard", "HostNetwork")), "")
        protocol = self.optional(f, "protocol", lambda n: self.choice(n, ("TCP", "HBONE")), "TCP")
        status = self.optional(f, "status", lambda n: self.choice(n, ("Healthy", "Unhealthy")), "")
        return Workload(
            uid=self.optional(f, "uid", text, "") or pod_uid(namespace, name, cluster_id),
            name=name,
            namespace=namespace,
            addresses=addresses,
            service_account=self.optional(f, "serviceAccount", text, "") or "default",
            trust_domain=self.optional(f, "trustDomain", text, "") or DEFAULT_TRUST_DOMAIN,
            node=self.optional(f, "node", text, ""),
            network=network,
            hostname=self.optional(f, "hostname", text, ""),
            tunnel_protocol=TunnelProtocol(protocol),
            canonical_name=self.optional(f, "canonicalName", text, ""),
            canonical_revision=self.optional(f, "canonicalRevision", text, ""),
            workload_name=self.optional(f, "workloadName", text, ""),
            workload_type=self.optional(f, "workloadType", text, "") or "deployment",
            waypoint=self.optional(f, "waypoint", self.gateway, None),
            services=services,
            authorization_policies=self.optional_list(
                f, "authorizationPolicies", lambda p: self.namespaced(p, "namespace/name")
            ),
            status=WorkloadStatus(status) if status else WorkloadStatus.HEALTHY,
            cluster_id=cluster_id,
            capacity=self.optional(f, "capacity", lambda n: self.integer(n, 0, 2**32 - 1), 1),
        )

    def workload_ip(self, node: _Node, network: str) -> IPAddress:
        text = self.string(node)
        if "/" not in text:
            return self.ip(node)
        address = self.network_address(node)
        if address.network != network:
            raise self.error(
                node,
                f"{text!r} names network {address.network!r} but the workload's network is "
                f"{network!r} (set 'network', or list plain IPs)",
            )
        return address.address

    def application_tunnel(self, node: _Node) -> None:
        f = self.mapping(node, frozenset({"protocol", "port"}), frozenset({"protocol"}))
        self.choice(f["protocol"], ("NONE", "PROXY"))
        self.optional(f, "port", self.port, 0)

    def locality(self, node: _Node) -> None:
        for child in self.mapping(node, frozenset({"region", "zone", "subzone"})).values():
            self.string(child)

    def service(self, node: _Node) -> Service:
        f = self.mapping(
            node, _SERVICE_KEYS, frozenset({"name", "namespace", "hostname", "vips", "ports"})
        )
        self.optional(f, "canonical", self.boolean, False)
        self.optional(f, "loadBalancer", self.load_balancer, None)
        self.optional(f, "ipFamilies", lambda n: self.choice(n, ("Dual", "IPv4", "IPv6")), "")
        self.optional_list(f, "cidrVips", self.cidr)
        self.optional_list(f, "weightedWaypoints", self.weighted)
        self.optional(f, "visibility", lambda n: self.choice(n, ("Public", "Namespace")), "")
        return Service(
            name=self.string(f["name"]),
            namespace=self.string(f["namespace"]),
            hostname=self.string(f["hostname"]),
            vips=self.listof(f["vips"], self.network_address),
            ports=self.port_map(f["ports"], allow_zero_target=True),
            subject_alt_names=self.optional_list(f, "subjectAltNames", self.string),
            waypoint=self.optional(f, "waypoint", self.gateway, None),
        )

    def load_balancer(self, node: _Node) -> None:
        f = self.mapping(node, frozenset({"mode", "routingPreferences", "healthPolicy"}))
        modes = ("Standard", "Strict", "Failover", "Passthrough")
        self.optional(f, "mode", lambda n: self.choice(n, modes), "")
        self.optional(f, "healthPolicy", lambda n: self.choice(n, ("OnlyHealthy", "AllowAll")), "")
        scopes = ("Region", "Zone", "Subzone", "Node", "Cluster", "Network")
        self.optional_list(f, "routingPreferences", lambda s: self.choice(s, scopes))

    def weighted(self, node: _Node) -> None:
        self.gateway(node, frozenset({"weight"}))
        weight = self.mapping(node, frozenset({"destination", "hboneMtlsPort", "weight"})).get(
            "weight"
        )
        if weight is not None:
            self.integer(weight, 0, 2**32 - 1)

    def policy(self, node: _Node) -> Authorization:
        f = self.mapping(node, _POLICY_KEYS, _POLICY_KEYS)
        scopes = tuple(s.value for s in PolicyScope)
        # ztunnel's format knows Allow and Deny; Audit exists only for waypoints
        actions = (Action.ALLOW.value, Action.DENY.value)
        rules = self.listof(
            f["rules"],
            lambda rule: self.listof(rule, lambda clause: self.listof(clause, self.match)),
        )
        return Authorization(
            name=self.string(f["name"]),
            namespace=self.string(f["namespace"]),
            scope=PolicyScope(self.choice(f["scope"], scopes)),
            action=Action(self.choice(f["action"], actions)),
            rules=rules,
            dry_run=self.boolean(f["dryRun"]),
        )

    def match(self, node: _Node) -> Match:
        f = self.mapping(node, _MATCH_KEYS)
        strings, cidrs = self.string_match, self.cidr

        def ports(n: _Node) -> int:
            return self.port(n, allow_zero=True)

        return Match(
            namespaces=self.optional_list(f, "namespaces", strings),
            not_namespaces=self.optional_list(f, "notNamespaces", strings),
            service_accounts=self.optional_list(f, "serviceAccounts", self.sa_match),
            not_service_accounts=self.optional_list(f, "notServiceAccounts", self.sa_match),
            principals=self.optional_list(f, "principals", strings),
            not_principals=self.optional_list(f, "notPrincipals", strings),
            source_ips=self.optional_list(f, "sourceIps", cidrs),
            not_source_ips=self.optional_list(f, "notSourceIps", cidrs),
            destination_ips=self.optional_list(f, "destinationIps", cidrs),
            not_destination_ips=self.optional_list(f, "notDestinationIps", cidrs),
            destination_ports=self.optional_list(f, "destinationPorts", ports),
            not_destination_ports=self.optional_list(f, "notDestinationPorts", ports),
        )

    def string_match(self, node: _Node) -> StringMatch:
        kinds = frozenset(k.value for k in StringMatchKind)
        f = self.mapping(node, kinds)
        if len(f) != 1:
            raise self.error(
                node, "expected exactly one of Exact, Prefix, Suffix, Presence (e.g. {Exact: x})"
            )
        ((key, child),) = f.items()
        kind = StringMatchKind(key)
        if kind is StringMatchKind.PRESENCE:
            if child.value not in (None, {}, []):
                raise self.error(child, "Presence takes no value (write {Presence: {}})")
            return StringMatch(kind)
        return StringMatch(kind, self.string(child))

    def sa_match(self, node: _Node) -> ServiceAccountMatch:
        keys = frozenset({"namespace", "serviceAccount"})
        f = self.mapping(node, keys, keys)
        return ServiceAccountMatch(self.string(f["namespace"]), self.string(f["serviceAccount"]))
