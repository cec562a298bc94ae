"""ztunnel's local-config format: what parses, to which model values, and every error's wording."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztunnel_py.model import (
    Action,
    Authorization,
    GatewayAddress,
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
from ztunnel_py.xds.localconfig import (
    ConfigError,
    LocalConfig,
    load_local_config,
    parse_local_config,
)

EXAMPLE = """\
workloads:
- uid: c1//v1/Pod/demo/app-a
  name: app-a
  namespace: demo
  serviceAccount: app-a
  workloadIps: ["127.0.0.1", "::1"]
  protocol: HBONE
  node: dev
  canonicalName: app
  canonicalRevision: v1
  workloadName: app-a
  waypoint: {destination: "/127.0.0.9", hboneMtlsPort: 15008}
  authorizationPolicies: [demo/sel]
  status: Unhealthy
  capacity: 3
  locality: {region: r1, zone: z1}
  services:
    "demo/web.demo.svc.cluster.local": {80: 8080, "81": 8081}
- name: app-b
  namespace: demo
  workloadIps: []
  hostname: b.example.com
  network: net1
  services:
    "demo/web.demo.svc.cluster.local":
services:
- name: web
  namespace: demo
  hostname: web.demo.svc.cluster.local
  vips: ["/127.10.0.1", "net1/10.0.0.1"]
  ports: {80: 8080, 90: 0}
  subjectAltNames: ["spiffe://cluster.local/ns/demo/sa/web"]
  waypoint: {destination: {namespace: demo, hostname: wp.demo.svc.cluster.local}}
policies:
- name: block-9000
  namespace: demo
  scope: Namespace
  action: Deny
  dryRun: false
  rules: [[[{destinationPorts: [9000]}]]]
- name: sel
  namespace: demo
  scope: WorkloadSelector
  action: Allow
  dryRun: true
  rules:
  - - - principals: [{Exact: cluster.local/ns/a/sa/b}, {Presence: {}}]
        notNamespaces: [{Prefix: kube-}, {Suffix: -system}]
        serviceAccounts: [{namespace: a, serviceAccount: b}]
        sourceIps: ["10.0.0.0/8", "192.168.1.1"]
        notDestinationIps: ["fd00::/8"]
        notDestinationPorts: ["22"]
    - []
"""


def test_example_parses_to_model_values() -> None:
    cfg = parse_local_config(EXAMPLE, "example.yaml")
    a, b = cfg.workloads
    assert a.uid == "c1//v1/Pod/demo/app-a"
    assert a.addresses == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert a.tunnel_protocol is TunnelProtocol.HBONE
    assert a.identity.principal == "cluster.local/ns/demo/sa/app-a"
    assert a.services == {"demo/web.demo.svc.cluster.local": {80: 8080, 81: 8081}}
    assert a.waypoint == GatewayAddress(NetworkAddress.parse("/127.0.0.9"), 15008)
    assert a.authorization_policies == ("demo/sel",)
    assert a.status is WorkloadStatus.UNHEALTHY
    assert a.capacity == 3
    assert (a.canonical_name, a.canonical_revision, a.workload_name) == ("app", "v1", "app-a")
    # defaults, as ztunnel fills them
    assert b.uid == "Kubernetes//Pod/demo/app-b"
    assert b.service_account == "default"
    assert b.trust_domain == "cluster.local"
    assert b.tunnel_protocol is TunnelProtocol.NONE
    assert b.status is WorkloadStatus.HEALTHY
    assert b.capacity == 1
    assert b.network == "net1" and b.hostname == "b.example.com" and b.addresses == ()
    assert b.services == {"demo/web.demo.svc.cluster.local": {}}

    (svc,) = cfg.services
    assert svc.key == "demo/web.demo.svc.cluster.local"
    assert svc.vips == (NetworkAddress.parse("/127.10.0.1"), NetworkAddress.parse("net1/10.0.0.1"))
    assert svc.ports == {80: 8080, 90: 0}
    assert svc.waypoint == GatewayAddress(
        NamespacedHostname("demo", "wp.demo.svc.cluster.local"), 15008
    )

    deny, sel = cfg.policies
    assert (deny.key, deny.scope, deny.action, deny.dry_run) == (
        "demo/block-9000",
        PolicyScope.NAMESPACE,
        Action.DENY,
        False,
    )
    assert deny.rules[0][0][0].destination_ports == (9000,)
    assert sel.dry_run and sel.scope is PolicyScope.WORKLOAD_SELECTOR
    (rule,) = sel.rules
    (match,), empty_clause = rule
    assert empty_clause == ()
    assert match.principals == (
        StringMatch(StringMatchKind.EXACT, "cluster.local/ns/a/sa/b"),
        StringMatch(StringMatchKind.PRESENCE),
    )
    assert match.not_namespaces == (
        StringMatch(StringMatchKind.PREFIX, "kube-"),
        StringMatch(StringMatchKind.SUFFIX, "-system"),
    )
    assert match.service_accounts == (ServiceAccountMatch("a", "b"),)
    assert match.source_ips == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
    )
    assert match.not_destination_ips == (ipaddress.ip_network("fd00::/8"),)
    assert match.not_destination_ports == (22,)


@pytest.mark.parametrize("text", ["", "# nothing\n", "{}", "workloads: []\n"])
def test_empty_documents_are_empty_configs(text: str) -> None:
    assert parse_local_config(text) == LocalConfig()


W = "workloads:\n- namespace: demo\n  workloadIps: [10.0.0.1]\n  services: {}\n"
S = "services:\n- {name: s, namespace: n, hostname: h, vips: [/10.1.0.1], ports: {80: 80}}\n"
P = "policies:\n- {name: p, namespace: n, scope: Global, action: Allow, dryRun: false, rules: %s}\n"

ERRORS = [
    # (document, expected message)
    (
        "a: [",
        "f.yaml:1:5: invalid YAML: while parsing a flow node: expected the node content, but "
        "found '<stream end>'",
    ),
    ("a: b: c", "f.yaml:1:5: invalid YAML: mapping values are not allowed here"),
    ("[1, 2]", "f.yaml: expected a mapping, got a list"),
    ("x: 1", "f.yaml:1:4: x: unknown field 'x' (expected one of: policies, services, workloads)"),
    ("workloads: {}", "f.yaml:1:12: workloads: expected a list, got a mapping"),
    ("workloads: [3]", "f.yaml:1:13: workloads[0]: expected a mapping, got an integer"),
    (
        "workloads:\n- namespace: a\n  services: {}\n",
        "f.yaml:2:3: workloads[0].workloadIps: required field is missing",
    ),
    (
        W.replace("10.0.0.1", "10.0.0.300"),
        "f.yaml:3:17: workloads[0].workloadIps[0]: '10.0.0.300' is not an IP address",
    ),
    (
        W.replace("10.0.0.1", "net9/10.0.0.1"),
        "workloads[0].workloadIps[0]: 'net9/10.0.0.1' names network 'net9' but the "
        "workload's network is ''",
    ),
    (
        W + "  workloadIp: x\n",
        "workloads[0].workloadIp: unknown field 'workloadIp' (did you mean 'workloadIps'?)",
    ),
    (W + "  protocol: UDP\n", "workloads[0].protocol: 'UDP' is not one of TCP, HBONE"),
    (W + "  status: ok\n", "workloads[0].status: 'ok' is not one of Healthy, Unhealthy"),
    (W + "  capacity: -1\n", "workloads[0].capacity: capacity -1 out of range 0-4294967295"),
    (W + "  capacity: many\n", "workloads[0].capacity: expected an integer, got a string"),
    (
        W.replace("namespace: demo", "namespace: no"),
        "workloads[0].namespace: expected a string, got a boolean (YAML reads yes/no",
    ),
    (
        W.replace("services: {}", "services: {web: {}}"),
        "workloads[0].services.web: 'web' is not a 'namespace/hostname' key",
    ),
    (
        W.replace("services: {}", "services: {a/b: {80: 70000}}"),
        'workloads[0].services["a/b"][80]: port 70000 out of range 1-65535',
    ),
    (
        W.replace("services: {}", "services: {a/b: {0: 80}}"),
        'workloads[0].services["a/b"][0]: port 0 out of range 1-65535',
    ),
    (
        W.replace("services: {}", "services: {a/b: {http: 80}}"),
        "'http' is not a port number (1-65535, as a string)",
    ),
    (W + "  authorizationPolicies: [nope]\n", "'nope' is not a 'namespace/name' key"),
    (
        W + "  waypoint: {destination: '/1.2.3.4', port: 1}\n",
        "workloads[0].waypoint.port: unknown field 'port' (expected one of: destination,",
    ),
    (
        W + "  waypoint: {destination: bogus}\n",
        "workloads[0].waypoint.destination: 'bogus' is neither a 'network/IP' address nor",
    ),
    (W + "  applicationTunnel: {protocol: SOCKS}\n", "'SOCKS' is not one of NONE, PROXY"),
    (
        W + W[len("workloads:\n") :],
        "workloads[1]: duplicate uid 'Kubernetes//Pod/demo/' (same as [0])",
    ),
    (S.replace("[/10.1.0.1]", "[10.1.0.1.5]"), "services[0].vips[0]: '10.1.0.1.5' is not a"),
    (S.replace("ports: {80: 80}", "ports: []"), "services[0].ports: expected a mapping, got a"),
    (S.replace("name: s, ", ""), "services[0].name: required field is missing"),
    (S + "- {name: t, namespace: n, hostname: h2, vips: [/10.1.0.1], ports: {}}\n", "services[1]"),
    (S.replace("ports:", "endpoints: {}, ports:"), "endpoints are derived from each workload"),
    (S.replace("ports: {80: 80}", "ports: {80: 80, '80': 81}"), "port 80 is listed twice"),
    (P % "[[[{}]]]", None),
    (P.replace("dryRun: false, ", "") % "[]", "policies[0].dryRun: required field is missing"),
    (P.replace("Global", "Cluster") % "[]", "'Cluster' is not one of Global, Namespace"),
    (P.replace("Allow", "Audit") % "[]", "policies[0].action: 'Audit' is not one of Allow, Deny"),
    (P % "[[{ports: [1]}]]", "policies[0].rules[0][0]: expected a list, got a mapping"),
    (P % "[[[{ports: [1]}]]]", "policies[0].rules[0][0][0].ports: unknown field 'ports'"),
    (
        P % "[[[{principals: [x]}]]]",
        "policies[0].rules[0][0][0].principals[0]: expected a mapping, got a string",
    ),
    (
        P % "[[[{principals: [{Regex: x}]}]]]",
        "principals[0].Regex: unknown field 'Regex' (expected one of: Exact, Prefix",
    ),
    (P % "[[[{principals: [{Exact: a, Prefix: b}]}]]]", "expected exactly one of Exact, Prefix"),
    (P % "[[[{principals: [{Presence: x}]}]]]", "Presence takes no value"),
    (P % "[[[{sourceIps: [10.0.0.0/33]}]]]", "'10.0.0.0/33' is not a CIDR"),
    (
        P % "[[[{destinationPorts: [99999]}]]]",
        "destinationPorts[0]: port 99999 out of range 0-65535",
    ),
    (
        P % "[[[{serviceAccounts: [{namespace: a}]}]]]",
        "serviceAccounts[0].serviceAccount: required field is missing",
    ),
    ("workloads:\n- namespace: a\n  namespace: b\n", "f.yaml:3:3: invalid YAML: duplicate key"),
    ("a: 2001-02-30", "f.yaml: invalid YAML: day is out of range for month"),
    ("a: &a [*a]", "f.yaml: recursive YAML aliases are not supported"),
    ("a: !!python/object:os.system x", "could not determine a constructor for the tag"),
    ("a: 1\n---\nb: 2\n", "expected a single document in the stream"),
    ("[" * 2000 + "]" * 2000, "f.yaml: invalid YAML: nested too deeply"),
    (b"\xff\xfe\x00bad", "f.yaml"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_file_path_and_problem(text: str | bytes, expected: str | None) -> None:
    if expected is None:  # a Match with no fields is legal (it simply never matches)
        parse_local_config(text, "f.yaml")
        return
    with pytest.raises(ConfigError) as info:
        parse_local_config(text, "f.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("f.yaml")


def test_error_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_local_config(W.replace("10.0.0.1", "10.0.0.300"), "f.yaml")
    e = info.value
    assert (e.source, e.path, e.line, e.column) == ("f.yaml", "workloads[0].workloadIps[0]", 3, 17)
    assert e.problem == "'10.0.0.300' is not an IP address"


def test_every_problem_is_reported_at_once() -> None:
    text = W.replace("10.0.0.1", "10.0.0.300") + "  protocol: UDP\n" + S.replace("name: s, ", "")
    with pytest.raises(ConfigError) as info:
        parse_local_config(text, "f.yaml")
    assert str(info.value).splitlines() == [
        "f.yaml:3:17: workloads[0].workloadIps[0]: '10.0.0.300' is not an IP address",
        "f.yaml:5:13: workloads[0].protocol: 'UDP' is not one of TCP, HBONE",
        "f.yaml:7:3: services[0].name: required field is missing",
    ]
    # the first problem is the one callers that show a single problem see
    assert (info.value.path, info.value.line) == ("workloads[0].workloadIps[0]", 3)


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_local_config("\n".join(lines))


def test_aliases_and_merge_keys_work() -> None:
    text = """
x-common: &common {namespace: demo, services: {}}
workloads:
- <<: *common
  name: a
  workloadIps: [10.0.0.1]
"""
    with pytest.raises(ConfigError, match="unknown field 'x-common'"):
        parse_local_config(text)
    text = """
workloads:
- &a {name: a, namespace: demo, workloadIps: [10.0.0.1], services: {}}
- <<: *a
  name: b
  workloadIps: [10.0.0.2]
"""
    _, b = parse_local_config(text).workloads
    assert (b.name, b.namespace, str(b.addresses[0])) == ("b", "demo", "10.0.0.2")


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(EXAMPLE)
    assert len(load_local_config(path).workloads) == 2
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read the file"):
        load_local_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_local_config(tmp_path)


VOCABULARY = [
    "workloads",
    "services",
    "policies",
    "namespace",
    "name",
    "uid",
    "workloadIps",
    "services",
    "vips",
    "ports",
    "rules",
    "scope",
    "action",
    "dryRun",
    "protocol",
    "waypoint",
    "destination",
    "principals",
    "Exact",
    "Presence",
    "sourceIps",
    "destinationPorts",
    "hostname",
    "capacity",
    "a/b",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.sampled_from(["10.0.0.1", "/10.0.0.1", "10.0.0.0/8", "HBONE", "Allow", "Global", "x/y"]),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(VOCABULARY), st.integers(0, 70000), st.text(max_size=4)),
            children,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


def config_or_error(text: str | bytes, source: str) -> None:
    """The parser's documented outcome for any input: a LocalConfig of model objects, or one
    ConfigError whose message starts with the file (and, for a value, its line and column)."""
    try:
        result = parse_local_config(text, source)
    except ConfigError as e:
        assert e.source == source and e.problem
        where = source if e.line is None else f"{source}:{e.line}:{e.column}"
        assert str(e).startswith(f"{where}: ") and "\n" not in e.problem
    else:
        assert isinstance(result, LocalConfig)
        assert all(isinstance(w, Workload) for w in result.workloads)
        assert all(isinstance(s, Service) for s in result.services)
        assert all(isinstance(p, Authorization) for p in result.policies)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(st.sampled_from(["workloads", "services", "policies"]), documents),
    cut=st.integers(0, 400),
    junk=st.text(max_size=3),
)
def test_random_documents_give_config_or_config_error(doc: object, cut: int, junk: str) -> None:
    text = yaml.safe_dump(doc)
    for candidate in (text, text[:cut] + junk + text[cut:]):
        config_or_error(candidate, "fuzz.yaml")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_config_or_config_error(data: bytes) -> None:
    config_or_error(data, "bytes.yaml")


def _mutate(data: st.DataObject, node: object, depth: int = 0) -> object:
    """Replace, drop or keep parts of a valid document, so validation runs deep."""
    choice = data.draw(st.integers(0, 9), label=f"choice@{depth}")
    if choice == 0:
        return data.draw(documents, label=f"replacement@{depth}")
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node, key=str)), label=f"key@{depth}")
        out = dict(node)
        if choice == 1:
            del out[key]
        else:
            out[key] = _mutate(data, node[key], depth + 1)
        return out
    if isinstance(node, list) and node:
        i = data.draw(st.integers(0, len(node) - 1), label=f"index@{depth}")
        return [*node[:i], _mutate(data, node[i], depth + 1), *node[i + 1 :]]
    return node


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_valid_document_gives_config_or_config_error(data: st.DataObject) -> None:
    doc = _mutate(data, yaml.safe_load(EXAMPLE))
    config_or_error(yaml.safe_dump(doc), "mut.yaml")
