"""L4 authorization semantics (docs/istio-compat.md, "Authorization"), attribute by attribute, and a
property test against a deliberately naive reference implementation."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel_py.model import (
    Action,
    Authorization,
    Identity,
    Match,
    PolicyScope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel_py.model.policy import ClaimCondition, HeaderCondition, RequestPrincipalMatch
from ztunnel_py.policy.rbac import (
    NO_ALLOW_POLICIES,
    NONE_ALLOWED,
    Connection,
    Decision,
    DryRunMatch,
    HttpAttributes,
    PolicySet,
    evaluate,
    policy_matches,
)

ALICE = Identity("cluster.local", "ns-a", "alice")
BOB = Identity("other.domain", "ns-b", "bob")


def conn(
    identity: Identity | None = ALICE,
    src: str = "10.0.0.1",
    dst: str = "10.1.0.1",
    port: int = 8080,
) -> Connection:
    return Connection(ipaddress.ip_address(src), identity, ipaddress.ip_address(dst), port)


def pol(
    *matches: Match,
    action: Action = Action.ALLOW,
    name: str = "p",
    dry_run: bool = False,
) -> Authorization:
    return Authorization(
        name, "demo", PolicyScope.NAMESPACE, action, (((*matches,),),) if matches else (), dry_run
    )


def exact(v: str) -> StringMatch:
    return StringMatch(StringMatchKind.EXACT, v)


def prefix(v: str) -> StringMatch:
    return StringMatch(StringMatchKind.PREFIX, v)


def suffix(v: str) -> StringMatch:
    return StringMatch(StringMatchKind.SUFFIX, v)


PRESENT = StringMatch(StringMatchKind.PRESENCE)


def net(v: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(v)


# (match, connection, expected) for every attribute and its not_ variant
ATTRIBUTE_CASES: list[tuple[str, Match, Connection, bool]] = [
    ("namespace exact", Match(namespaces=(exact("ns-a"),)), conn(), True),
    ("namespace exact miss", Match(namespaces=(exact("ns-b"),)), conn(), False),
    ("namespace any-of", Match(namespaces=(exact("x"), prefix("ns-"))), conn(), True),
    ("namespace suffix", Match(namespaces=(suffix("-a"),)), conn(), True),
    ("namespace prefix: all of it", Match(namespaces=(prefix("ns-a"),)), conn(), True),
    ("namespace suffix: all of it", Match(namespaces=(suffix("ns-a"),)), conn(), True),
    ("namespace prefix: longer", Match(namespaces=(prefix("ns-ab"),)), conn(), False),
    ("namespace empty suffix", Match(namespaces=(suffix(""),)), conn(), True),
    ("namespace empty exact plaintext", Match(namespaces=(exact(""),)), conn(None), True),
    ("namespace presence", Match(namespaces=(PRESENT,)), conn(), True),
    ("namespace presence plaintext", Match(namespaces=(PRESENT,)), conn(None), False),
    ("namespace exact plaintext", Match(namespaces=(exact("ns-a"),)), conn(None), False),
    ("not namespace hit", Match(not_namespaces=(exact("ns-a"),)), conn(), False),
    ("not namespace miss", Match(not_namespaces=(exact("ns-b"),)), conn(), True),
    ("not namespace plaintext", Match(not_namespaces=(PRESENT,)), conn(None), True),
    (
        "service account",
        Match(service_accounts=(ServiceAccountMatch("ns-a", "alice"),)),
        conn(),
        True,
    ),
    (
        "service account ignores trust domain",
        Match(service_accounts=(ServiceAccountMatch("ns-b", "bob"),)),
        conn(BOB),
        True,
    ),
    (
        "service account wrong sa",
        Match(service_accounts=(ServiceAccountMatch("ns-a", "bob"),)),
        conn(),
        False,
    ),
    (
        "service account plaintext",
        Match(service_accounts=(ServiceAccountMatch("ns-a", "alice"),)),
        conn(None),
        False,
    ),
    (
        "not service account hit",
        Match(not_service_accounts=(ServiceAccountMatch("ns-a", "alice"),)),
        conn(),
        False,
    ),
    (
        "not service account plaintext",
        Match(not_service_accounts=(ServiceAccountMatch("ns-a", "alice"),)),
        conn(None),
        True,
    ),
    ("principal exact", Match(principals=(exact("cluster.local/ns/ns-a/sa/alice"),)), conn(), True),
    (
        "principal with spiffe prefix never matches",
        Match(principals=(exact("spiffe://cluster.local/ns/ns-a/sa/alice"),)),
        conn(),
        False,
    ),
    ("principal prefix", Match(principals=(prefix("cluster.local/ns/ns-a/"),)), conn(), True),
    ("principal suffix", Match(principals=(suffix("/sa/alice"),)), conn(), True),
    ("principal presence", Match(principals=(PRESENT,)), conn(), True),
    ("principal presence plaintext", Match(principals=(PRESENT,)), conn(None), False),
    ("principal empty prefix plaintext", Match(principals=(prefix(""),)), conn(None), False),
    ("not principal presence mtls", Match(not_principals=(PRESENT,)), conn(), False),
    ("not principal presence plaintext", Match(not_principals=(PRESENT,)), conn(None), True),
    ("not principal miss", Match(not_principals=(suffix("/sa/bob"),)), conn(), True),
    ("source ip", Match(source_ips=(net("10.0.0.0/8"),)), conn(), True),
    ("source ip miss", Match(source_ips=(net("192.168.0.0/16"),)), conn(), False),
    ("source ip v6 vs v4", Match(source_ips=(net("::/0"),)), conn(), False),
    (
        "source ip v4-mapped",
        Match(source_ips=(net("10.0.0.1/32"),)),
        conn(src="::ffff:10.0.0.1"),
        True,
    ),
    ("source ip v6", Match(source_ips=(net("fd00::/8"),)), conn(src="fd00::1"), True),
    ("not source ip hit", Match(not_source_ips=(net("10.0.0.1/32"),)), conn(), False),
    ("not source ip miss", Match(not_source_ips=(net("10.0.0.2/32"),)), conn(), True),
    ("destination ip", Match(destination_ips=(net("10.1.0.0/16"),)), conn(), True),
    ("destination ip miss", Match(destination_ips=(net("10.2.0.0/16"),)), conn(), False),
    ("not destination ip hit", Match(not_destination_ips=(net("10.1.0.1/32"),)), conn(), False),
    ("not destination ip miss", Match(not_destination_ips=(net("10.9.0.0/16"),)), conn(), True),
    ("destination port", Match(destination_ports=(80, 8080)), conn(), True),
    ("destination port miss", Match(destination_ports=(80,)), conn(), False),
    ("not destination port hit", Match(not_destination_ports=(8080,)), conn(), False),
    ("not destination port miss", Match(not_destination_ports=(9090,)), conn(), True),
    (
        "all set attributes must pass",
        Match(namespaces=(exact("ns-a"),), destination_ports=(80,)),
        conn(),
        False,
    ),
    (
        "positive and negative of one attribute",
        Match(namespaces=(prefix("ns-"),), not_namespaces=(exact("ns-a"),)),
        conn(),
        False,
    ),
    (
        "STRICT with a permissive port: plaintext on 9090",
        Match(not_principals=(PRESENT,), not_destination_ports=(9090,)),
        conn(None, port=9090),
        False,
    ),
    (
        "STRICT with a permissive port: plaintext elsewhere",
        Match(not_principals=(PRESENT,), not_destination_ports=(9090,)),
        conn(None, port=8080),
        True,
    ),
    ("empty match never matches", Match(), conn(), False),
]

ISS = "https://issuer.example"
ALICE_JWT = {
    "iss": ISS,
    "sub": "alice",
    "aud": ["echo", "web"],
    "groups": ["admin", "dev"],
    "org": {"team": {"name": "mesh"}, "size": 3},
    "scope": ["read", "write"],
    "admin": True,
    "level": 7,
}


def jwt_request(payload: dict[str, Any] | None = ALICE_JWT) -> Connection:
    http = HttpAttributes("GET", "/", "echo", {}, jwt=payload)
    return Connection(
        ipaddress.ip_address("10.0.0.1"), ALICE, ipaddress.ip_address("10.1.0.1"), 80, http
    )


def principal(issuer: StringMatch, subject: StringMatch) -> Match:
    return Match(request_principals=(RequestPrincipalMatch(issuer, subject),))


def claim(*path: str, values: tuple[StringMatch, ...]) -> ClaimCondition:
    return ClaimCondition(path, values)


# (name, match, request, expected): end-user attributes from a verified JWT (waypoints)
JWT_CASES: list[tuple[str, Match, Connection, bool]] = [
    ("principal exact", principal(exact(ISS), exact("alice")), jwt_request(), True),
    ("principal other subject", principal(exact(ISS), exact("bob")), jwt_request(), False),
    ("principal any", principal(PRESENT, PRESENT), jwt_request(), True),
    ("principal any, no token", principal(PRESENT, PRESENT), jwt_request(None), False),
    ("principal issuer suffix", principal(suffix(".example"), exact("alice")), jwt_request(), True),
    ("principal without sub", principal(exact(ISS), PRESENT), jwt_request({"iss": ISS}), False),
    (
        "principal needs string claims",
        principal(PRESENT, PRESENT),
        jwt_request({"iss": ISS, "sub": 5}),
        False,
    ),
    (
        "not principal any, no token",
        Match(not_request_principals=(RequestPrincipalMatch(PRESENT, PRESENT),)),
        jwt_request(None),
        True,
    ),
    (
        "not principal any, token",
        Match(not_request_principals=(RequestPrincipalMatch(PRESENT, PRESENT),)),
        jwt_request(),
        False,
    ),
    (
        "claim in a list",
        Match(claims=(claim("groups", values=(exact("admin"),)),)),
        jwt_request(),
        True,
    ),
    (
        "claim not in the list",
        Match(claims=(claim("groups", values=(exact("ops"),)),)),
        jwt_request(),
        False,
    ),
    ("claim string", Match(claims=(claim("sub", values=(prefix("al"),)),)), jwt_request(), True),
    (
        "nested claim",
        Match(claims=(claim("org", "team", "name", values=(exact("mesh"),)),)),
        jwt_request(),
        True,
    ),
    (
        "nested claim through a non-object",
        Match(claims=(claim("sub", "x", values=(PRESENT,)),)),
        jwt_request(),
        False,
    ),
    (
        "numbers and booleans never match",
        Match(claims=(claim("level", values=(exact("7"),)), claim("admin", values=(PRESENT,)))),
        jwt_request(),
        False,
    ),
    (
        "an object never matches",
        Match(claims=(claim("org", values=(PRESENT,)),)),
        jwt_request(),
        False,
    ),
    ("audiences", Match(claims=(claim("aud", values=(exact("web"),)),)), jwt_request(), True),
    (
        "claim conditions are ANDed",
        Match(
            claims=(
                claim("groups", values=(exact("admin"),)),
                claim("scope", values=(exact("delete"),)),
            )
        ),
        jwt_request(),
        False,
    ),
    (
        "not claim hit",
        Match(not_claims=(claim("groups", values=(exact("dev"),)),)),
        jwt_request(),
        False,
    ),
    (
        "not claim without token",
        Match(not_claims=(claim("groups", values=(exact("dev"),)),)),
        jwt_request(None),
        True,
    ),
]


@pytest.mark.parametrize(
    ("match", "connection", "expected"),
    [case[1:] for case in JWT_CASES],
    ids=[case[0] for case in JWT_CASES],
)
def test_end_user_attribute(match: Match, connection: Connection, expected: bool) -> None:
    assert policy_matches(pol(match), connection) is expected
    # An agent's L4 decision has no request: end-user attributes never match there.
    l4 = Connection(connection.src_ip, connection.src_identity, connection.dst_ip, 80)
    assert policy_matches(pol(match), l4) is False


@pytest.mark.parametrize(
    ("match", "connection", "expected"),
    [case[1:] for case in ATTRIBUTE_CASES],
    ids=[case[0] for case in ATTRIBUTE_CASES],
)
def test_attribute(match: Match, connection: Connection, expected: bool) -> None:
    assert policy_matches(pol(match), connection) is expected


DECOYS = [
    pol(Match(principals=(exact("cluster.local/ns/x/sa/nobody"),)), name="decoy-principal"),
    pol(Match(namespaces=(prefix("zz-"),)), name="decoy-namespace"),
    pol(Match(source_ips=(net("192.168.0.0/16"),)), name="decoy-source"),
    pol(Match(destination_ports=(1,)), name="decoy-port"),
    pol(Match(not_destination_ports=(8080, 9090)), name="decoy-unfiled"),
]


@pytest.mark.parametrize(
    ("match", "connection", "expected"),
    [case[1:] for case in ATTRIBUTE_CASES],
    ids=[case[0] for case in ATTRIBUTE_CASES],
)
def test_attribute_in_a_compiled_set(match: Match, connection: Connection, expected: bool) -> None:
    """The same cases through `PolicySet`, whose index must find the rule under whatever
    attribute it was filed, among rules filed elsewhere."""
    decision = PolicySet([*DECOYS, pol(match, name="target")]).evaluate(connection)
    assert decision.allowed is expected
    assert decision.policy_key == ("demo/target" if expected else None)


def rules(*rules: tuple[tuple[Match, ...], ...]) -> Authorization:
    return Authorization("p", "demo", PolicyScope.NAMESPACE, Action.ALLOW, rules)


YES = Match(destination_ports=(8080,))
NO = Match(destination_ports=(1,))


def test_rule_clause_match_structure() -> None:
    c = conn()
    assert not policy_matches(rules(), c)  # zero rules never match
    assert policy_matches(rules(()), c)  # a rule with no clauses matches
    assert policy_matches(rules(((),)), c)  # a clause with no matches matches
    assert policy_matches(rules(((NO, YES),)), c)  # clause: any match
    assert not policy_matches(rules(((YES,), (NO,))), c)  # rule: all clauses
    assert policy_matches(rules(((NO,),), ((YES,),)), c)  # policy: any rule
    assert not policy_matches(rules(((Match(),),)), c)  # an empty Match is skipped
    assert policy_matches(rules(((Match(), YES),)), c)


def test_no_policies_allows() -> None:
    assert evaluate([], conn()) == Decision(True, None, NO_ALLOW_POLICIES)


def test_matching_deny_rejects_and_names_policy() -> None:
    d = evaluate([pol(YES, action=Action.DENY, name="block")], conn())
    assert d == Decision(False, "demo/block", "explicitly denied by: demo/block")


def test_deny_wins_over_allow() -> None:
    d = evaluate([pol(YES, name="ok"), pol(YES, action=Action.DENY, name="block")], conn())
    assert not d.allowed and d.policy_key == "demo/block"


def test_non_matching_deny_and_no_allow_allows() -> None:
    assert evaluate([pol(NO, action=Action.DENY)], conn()).allowed


def test_allow_policies_need_a_match() -> None:
    assert evaluate([pol(NO, name="a"), pol(YES, name="b")], conn()) == Decision(
        True, "demo/b", "allowed by: demo/b"
    )
    assert evaluate([pol(NO)], conn()) == Decision(False, None, NONE_ALLOWED)


def test_empty_allow_denies_everything_empty_deny_does_nothing() -> None:
    assert not evaluate([pol(action=Action.ALLOW)], conn()).allowed
    assert evaluate([pol(action=Action.DENY)], conn()).allowed


def test_dry_run_policies_are_reported_never_enforced() -> None:
    policies = [
        pol(YES, action=Action.DENY, name="would-deny", dry_run=True),
        pol(NO, name="would-not-allow", dry_run=True),
        pol(YES, name="would-allow", dry_run=True),
    ]
    d = evaluate(policies, conn())
    assert d.allowed and d.reason == NO_ALLOW_POLICIES
    assert d.dry_run_matches == (
        DryRunMatch("demo/would-deny", Action.DENY),
        DryRunMatch("demo/would-allow", Action.ALLOW),
    )
    # reported even when a real DENY rejects
    d = evaluate([*policies, pol(YES, action=Action.DENY, name="real")], conn())
    assert not d.allowed and len(d.dry_run_matches) == 2


# --- property test against a naive reference ----------------------------------------------------


def naive_evaluate(
    policies: list[Authorization], c: Connection
) -> tuple[bool, str | None, list[str]]:
    """Written straight from the rules in docs/istio-compat.md, with no shared code."""
    identity = "" if c.src_identity is None else str(c.src_identity)
    namespace = "" if c.src_identity is None else c.src_identity.namespace
    src = c.src_ip
    if src.version == 6 and src.ipv4_mapped is not None:
        src = src.ipv4_mapped

    def string_ok(m: StringMatch, value: str) -> bool:
        if m.kind == StringMatchKind.EXACT:
            return value == m.value
        if m.kind == StringMatchKind.PREFIX:
            return value[: len(m.value)] == m.value
        if m.kind == StringMatchKind.SUFFIX:
            return len(value) >= len(m.value) and value[len(value) - len(m.value) :] == m.value
        return len(value) > 0

    def principal_ok(m: StringMatch) -> bool:
        if not identity.startswith("spiffe://"):
            return False
        return string_ok(m, identity[len("spiffe://") :])

    def sa_ok(m: ServiceAccountMatch) -> bool:
        if c.src_identity is None:
            return False
        return (
            m.namespace == c.src_identity.namespace
            and m.service_account == c.src_identity.service_account
        )

    def cidr_ok(n: Any, addr: Any) -> bool:
        if n.version != addr.version:
            return False
        host_bits = int(n.max_prefixlen - n.prefixlen)
        return int(addr) >> host_bits == int(n.network_address) >> host_bits

    def both(pos: tuple[Any, ...], neg: tuple[Any, ...], ok: Any) -> bool:
        result = True
        if len(pos) > 0:
            result = False
            for x in pos:
                if ok(x):
                    result = True
        for x in neg:
            if ok(x):
                result = False
        return result

    def host_ok(m: StringMatch) -> bool:
        return c.http is not None and string_ok(
            StringMatch(m.kind, m.value.lower()), c.http.host.lower()
        )

    def header_ok(h: HeaderCondition) -> bool:
        if c.http is None:
            return False
        value = c.http.headers.get(h.name)
        return value is not None and any(string_ok(v, value) for v in h.values)

    def request_principal_ok(p: RequestPrincipalMatch) -> bool:
        jwt = c.http.jwt if c.http is not None else None
        if jwt is None:
            return False
        iss, sub = jwt.get("iss"), jwt.get("sub")
        if type(iss) is not str or type(sub) is not str:
            return False
        return string_ok(p.issuer, iss) and string_ok(p.subject, sub)

    def claim_ok(cond: ClaimCondition) -> bool:
        value: Any = c.http.jwt if c.http is not None else None
        for name in cond.path:
            if type(value) is not dict or name not in value:
                return False
            value = value[name]
        candidates = [value] if type(value) is str else value if type(value) is list else []
        return any(type(x) is str and string_ok(v, x) for x in candidates for v in cond.values)

    def http_ok(m: Match) -> bool:
        http_fields = [m.paths, m.not_paths, m.methods, m.not_methods, m.hosts, m.not_hosts]
        http_fields += [m.headers, m.not_headers, m.request_principals, m.not_request_principals]
        http_fields += [m.claims, m.not_claims]
        if all(len(f) == 0 for f in http_fields):
            return True
        if c.http is None:
            return False
        path, method = c.http.path, c.http.method
        headers_ok = all(header_ok(h) for h in m.headers) and not any(
            header_ok(h) for h in m.not_headers
        )
        claims_ok = all(claim_ok(x) for x in m.claims) and not any(
            claim_ok(x) for x in m.not_claims
        )
        return (
            both(m.paths, m.not_paths, lambda x: string_ok(x, path))
            and both(m.methods, m.not_methods, lambda x: string_ok(x, method))
            and both(m.hosts, m.not_hosts, host_ok)
            and headers_ok
            and both(m.request_principals, m.not_request_principals, request_principal_ok)
            and claims_ok
        )

    def match_ok(m: Match) -> bool:
        fields = [
            m.namespaces,
            m.not_namespaces,
            m.service_accounts,
            m.not_service_accounts,
            m.principals,
            m.not_principals,
            m.source_ips,
            m.not_source_ips,
            m.destination_ips,
            m.not_destination_ips,
            m.destination_ports,
            m.not_destination_ports,
            m.paths,
            m.not_paths,
            m.methods,
            m.not_methods,
            m.hosts,
            m.not_hosts,
            m.headers,
            m.not_headers,
            m.request_principals,
            m.not_request_principals,
            m.claims,
            m.not_claims,
        ]
        if all(len(f) == 0 for f in fields):
            return False
        return (
            both(m.namespaces, m.not_namespaces, lambda x: string_ok(x, namespace))
            and both(m.service_accounts, m.not_service_accounts, sa_ok)
            and both(m.principals, m.not_principals, principal_ok)
            and both(m.source_ips, m.not_source_ips, lambda n: cidr_ok(n, src))
            and both(m.destination_ips, m.not_destination_ips, lambda n: cidr_ok(n, c.dst_ip))
            and both(m.destination_ports, m.not_destination_ports, lambda p: p == c.dst_port)
            and http_ok(m)
        )

    def policy_ok(p: Authorization) -> bool:
        if len(p.rules) == 0:
            return False
        for rule in p.rules:
            all_clauses = True
            for clause in rule:
                if len(clause) > 0 and not any(match_ok(m) for m in clause):
                    all_clauses = False
            if all_clauses:
                return True
        return False

    # AUDIT policies (waypoints) are reported with the dry runs and never decide
    reported = [p for p in policies if p.dry_run or p.action == Action.AUDIT]
    dry_runs = [p.key for p in reported if policy_ok(p)]
    enforced = [p for p in policies if p not in reported]
    for p in enforced:
        if p.action == Action.DENY and policy_ok(p):
            return False, p.key, dry_runs
    allows = [p for p in enforced if p.action == Action.ALLOW]
    if not allows:
        return True, None, dry_runs
    for p in allows:
        if policy_ok(p):
            return True, p.key, dry_runs
    return False, None, dry_runs


small_text = st.sampled_from(
    [
        "",
        "ns-a",
        "ns-",
        "-a",
        "alice",
        "cluster.local/",
        "/sa/alice",
        "cluster.local/ns/ns-a/sa/alice",
    ]
)
string_matches = st.builds(StringMatch, st.sampled_from(list(StringMatchKind)), small_text)
sa_matches = st.builds(
    ServiceAccountMatch, st.sampled_from(["ns-a", "ns-b"]), st.sampled_from(["alice", "bob"])
)
cidrs = st.sampled_from(
    [net(n) for n in ("10.0.0.0/8", "10.0.0.1/32", "10.1.0.0/16", "0.0.0.0/0", "fd00::/8")]
)
ports = st.sampled_from([80, 8080, 9090])


def few(s: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    # Mostly unset: a match that sets only one or two attributes is what gets a rule filed
    # under each kind of attribute in turn.
    return st.one_of(st.just(()), st.just(()), st.lists(s, min_size=1, max_size=2).map(tuple))


paths = st.builds(
    StringMatch, st.sampled_from(list(StringMatchKind)), st.sampled_from(["/", "/api", "/api/x"])
)
methods = st.builds(
    StringMatch, st.sampled_from(list(StringMatchKind)), st.sampled_from(["GET", "DEL", "ETE"])
)
hosts = st.builds(
    StringMatch,
    st.sampled_from(list(StringMatchKind)),
    st.sampled_from(["Echo.apps", "echo", ":80"]),
)
header_conditions = st.builds(
    HeaderCondition,
    st.sampled_from(["X-User", "x-env"]),
    st.lists(string_matches, min_size=1, max_size=2).map(tuple),
)
jwt_texts = st.sampled_from(["", "alice", "admin", "https://issuer.example", "https://"])
jwt_strings = st.builds(StringMatch, st.sampled_from(list(StringMatchKind)), jwt_texts)
request_principals = st.builds(RequestPrincipalMatch, jwt_strings, jwt_strings)
claim_conditions = st.builds(
    ClaimCondition,
    st.sampled_from([("sub",), ("groups",), ("org", "team"), ("level",), ("missing",)]),
    st.lists(jwt_strings, min_size=1, max_size=2).map(tuple),
)
jwt_payloads = st.sampled_from(
    [
        None,
        {"iss": "https://issuer.example", "sub": "alice", "groups": ["admin", 3]},
        {"iss": "https://issuer.example", "sub": "admin", "org": {"team": "alice"}, "level": 2},
        {"iss": 7, "sub": "alice", "groups": "admin"},
        {"sub": "alice", "org": ["alice"], "groups": [3, True]},
    ]
)
matches = st.builds(
    Match,
    namespaces=few(string_matches),
    not_namespaces=few(string_matches),
    service_accounts=few(sa_matches),
    not_service_accounts=few(sa_matches),
    principals=few(string_matches),
    not_principals=few(string_matches),
    source_ips=few(cidrs),
    not_source_ips=few(cidrs),
    destination_ips=few(cidrs),
    not_destination_ips=few(cidrs),
    destination_ports=few(ports),
    not_destination_ports=few(ports),
    paths=few(paths),
    not_paths=few(paths),
    methods=few(methods),
    not_methods=few(methods),
    hosts=few(hosts),
    not_hosts=few(hosts),
    headers=few(header_conditions),
    not_headers=few(header_conditions),
    request_principals=few(request_principals),
    not_request_principals=few(request_principals),
    claims=few(claim_conditions),
    not_claims=few(claim_conditions),
)
policies = st.builds(
    Authorization,
    name=st.sampled_from(["p1", "p2", "p3", "p4", "p5"]),
    namespace=st.just("demo"),
    scope=st.just(PolicyScope.NAMESPACE),
    action=st.sampled_from(list(Action)),
    rules=st.lists(
        st.lists(st.lists(matches, max_size=2).map(tuple), max_size=2).map(tuple), max_size=2
    ).map(tuple),
    dry_run=st.booleans(),
)
connections = st.builds(
    Connection,
    src_ip=st.sampled_from(
        [ipaddress.ip_address(a) for a in ("10.0.0.1", "::ffff:10.0.0.1", "10.1.2.3", "fd00::5")]
    ),
    src_identity=st.sampled_from([ALICE, BOB, None]),
    dst_ip=st.sampled_from([ipaddress.ip_address(a) for a in ("10.1.0.1", "fd00::1")]),
    dst_port=ports,
    http=st.one_of(
        st.none(),
        st.builds(
            HttpAttributes,
            method=st.sampled_from(["GET", "DELETE"]),
            path=st.sampled_from(["/", "/api", "/api/x", "/apix"]),
            host=st.sampled_from(["echo.apps:80", "ECHO.apps", "other"]),
            headers=st.sampled_from([{}, {"x-user": "alice"}, {"x-env": "ns-a,ns-b"}]),
            jwt=jwt_payloads,
        ),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(policies, max_size=8), st.lists(connections, min_size=1, max_size=4))
def test_evaluate_agrees_with_naive_reference(
    ps: list[Authorization], cs: list[Connection]
) -> None:
    agrees_with_naive_reference(ps, cs)


def agrees_with_naive_reference(ps: list[Authorization], cs: list[Connection]) -> None:
    # One compiled set decides several connections, as an agent's does.
    compiled = PolicySet(ps)
    for c in cs:
        d = compiled.evaluate(c)
        dry_runs = [m.policy_key for m in d.dry_run_matches]
        assert (d.allowed, d.policy_key, dry_runs) == naive_evaluate(ps, c)


# End-user attributes alone: in the mixed matches above they are rarely the deciding ones.
jwt_matches = st.builds(
    Match,
    request_principals=few(request_principals),
    not_request_principals=few(request_principals),
    claims=few(claim_conditions),
    not_claims=few(claim_conditions),
)
jwt_policies = st.builds(
    Authorization,
    name=st.sampled_from(["p1", "p2", "p3"]),
    namespace=st.just("demo"),
    scope=st.just(PolicyScope.NAMESPACE),
    action=st.sampled_from(list(Action)),
    rules=st.lists(
        st.lists(st.lists(jwt_matches, min_size=1, max_size=2).map(tuple), max_size=2).map(tuple),
        max_size=2,
    ).map(tuple),
)
jwt_connections = st.builds(
    Connection,
    src_ip=st.just(ipaddress.ip_address("10.0.0.1")),
    src_identity=st.just(ALICE),
    dst_ip=st.just(ipaddress.ip_address("10.1.0.1")),
    dst_port=st.just(80),
    http=st.builds(
        HttpAttributes,
        method=st.just("GET"),
        path=st.just("/"),
        host=st.just("echo"),
        headers=st.just({}),
        jwt=jwt_payloads,
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(jwt_policies, max_size=4), st.lists(jwt_connections, min_size=1, max_size=4))
def test_end_user_attributes_agree_with_naive_reference(
    ps: list[Authorization], cs: list[Connection]
) -> None:
    agrees_with_naive_reference(ps, cs)
