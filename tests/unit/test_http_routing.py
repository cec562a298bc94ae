"""Route matching, weighted backends, header operations, rewrites and redirects, with the
Gateway API conformance cases (httproute-rewrite-path, httproute-redirect-path,
httproute-redirect-port-and-scheme) and Envoy's prefix_rewrite semantics."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ztunnel_py.http.message import Headers, RequestHead
from ztunnel_py.http.routing import (
    apply_header_ops,
    match_route,
    pick_backend,
    redirect_location,
    rewrite_request,
)
from ztunnel_py.model.http import (
    Backend,
    HeaderMatch,
    HeaderOps,
    MatchKind,
    PathMatch,
    QueryMatch,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
)

EXACT, PREFIX, SUFFIX, REGEX, PRESENT = (
    MatchKind.EXACT,
    MatchKind.PREFIX,
    MatchKind.SUFFIX,
    MatchKind.REGEX,
    MatchKind.PRESENT,
)


def req(
    path: str = "/",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    authority: str = "echo.apps.svc.cluster.local:80",
    scheme: str = "http",
) -> RequestHead:
    return RequestHead(method, path, authority, Headers(headers or []), scheme)


def matches(m: RouteMatch, head: RequestHead, port: int | None = 80) -> bool:
    return match_route([Route("r", matches=(m,))], head, port) is not None


@pytest.mark.parametrize(
    ("pm", "path", "ok"),
    [
        (PathMatch(EXACT, "/a"), "/a", True),
        (PathMatch(EXACT, "/a"), "/a/", False),
        (PathMatch(EXACT, "/a"), "/A", False),
        (PathMatch(EXACT, "/a", ignore_case=True), "/A", True),
        # Gateway API PathPrefix: element-wise, a trailing slash in the value ignored
        (PathMatch(PREFIX, "/abc"), "/abc", True),
        (PathMatch(PREFIX, "/abc"), "/abc/", True),
        (PathMatch(PREFIX, "/abc"), "/abc/def", True),
        (PathMatch(PREFIX, "/abc"), "/abcd", False),
        (PathMatch(PREFIX, "/abc/"), "/abc/def", True),
        (PathMatch(PREFIX, "/abc/"), "/abc", True),
        (PathMatch(PREFIX, "/abc/"), "/abcd", False),
        (PathMatch(PREFIX, "/"), "/anything", True),
        (PathMatch(PREFIX, "/v1", ignore_case=True), "/V1/x", True),
        # VirtualService prefix: a plain string prefix
        (PathMatch(PREFIX, "/abc", segment_prefix=False), "/abcd", True),
        (PathMatch(PREFIX, "/abc", segment_prefix=False), "/ab", False),
        # regex: RE2-style full match
        (PathMatch(REGEX, "/v[0-9]+/.*"), "/v12/items", True),
        (PathMatch(REGEX, "/v[0-9]+"), "/v12/items", False),
        (PathMatch(REGEX, "/v[0-9]+"), "/x/v12", False),
    ],
)
def test_path_matches(pm: PathMatch, path: str, ok: bool) -> None:
    assert matches(RouteMatch(path=pm), req(path)) is ok


def test_path_match_ignores_the_query() -> None:
    assert matches(RouteMatch(path=PathMatch(EXACT, "/a")), req("/a?x=/b"))


def test_invalid_regex_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        PathMatch(REGEX, "(")


@pytest.mark.parametrize(
    ("hm", "headers", "ok"),
    [
        (HeaderMatch("X-Env", EXACT, "prod"), [("x-env", "prod")], True),
        (HeaderMatch("x-env", EXACT, "prod"), [("x-env", "Prod")], False),
        (HeaderMatch("x-env", EXACT, "prod"), [], False),
        (HeaderMatch("x-env", PREFIX, "pr"), [("x-env", "prod")], True),
        (HeaderMatch("x-env", SUFFIX, "od"), [("x-env", "prod")], True),
        (HeaderMatch("x-env", REGEX, "p.*d"), [("x-env", "prod")], True),
        (HeaderMatch("x-env", REGEX, "p"), [("x-env", "prod")], False),
        (HeaderMatch("x-env", PRESENT), [("x-env", "")], True),
        (HeaderMatch("x-env", PRESENT), [], False),
        # VirtualService withoutHeaders: the request must not carry a match
        (HeaderMatch("x-env", EXACT, "prod", invert=True), [("x-env", "dev")], True),
        (HeaderMatch("x-env", EXACT, "prod", invert=True), [("x-env", "prod")], False),
        (HeaderMatch("x-env", EXACT, "prod", invert=True), [], True),
        (HeaderMatch("x-env", PRESENT, invert=True), [], True),
        (HeaderMatch("x-env", PRESENT, invert=True), [("x-env", "a")], False),
        # repeated fields are matched joined with commas, as Envoy does
        (HeaderMatch("x-env", EXACT, "a,b"), [("x-env", "a"), ("x-env", "b")], True),
    ],
)
def test_header_matches(hm: HeaderMatch, headers: list[tuple[str, str]], ok: bool) -> None:
    assert matches(RouteMatch(headers=(hm,)), req(headers=headers)) is ok


def test_authority_header_match_uses_the_host_without_port() -> None:
    m = RouteMatch(headers=(HeaderMatch(":authority", EXACT, "echo.apps.svc.cluster.local"),))
    assert matches(m, req())
    assert not matches(m, req(authority="other:80"))


def test_every_condition_of_a_match_must_hold() -> None:
    m = RouteMatch(
        path=PathMatch(PREFIX, "/api"),
        method="POST",
        headers=(HeaderMatch("x-a", EXACT, "1"), HeaderMatch("x-b", PRESENT)),
        query=(QueryMatch("v", EXACT, "2"),),
        port=8080,
    )
    good = req("/api/x?v=2", "POST", [("x-a", "1"), ("x-b", "")])
    assert matches(m, good, 8080)
    assert not matches(m, good, 80)
    assert not matches(m, req("/api/x?v=2", "GET", [("x-a", "1"), ("x-b", "")]), 8080)
    assert not matches(m, req("/api/x?v=3", "POST", [("x-a", "1"), ("x-b", "")]), 8080)
    assert not matches(m, req("/api/x?v=2", "POST", [("x-a", "1")]), 8080)
    assert not matches(m, req("/apix?v=2", "POST", [("x-a", "1"), ("x-b", "")]), 8080)


@pytest.mark.parametrize(
    ("qm", "query", "ok"),
    [
        (QueryMatch("v", EXACT, "1"), "v=1", True),
        (QueryMatch("v", EXACT, "1"), "a=2&v=1", True),
        (QueryMatch("v", EXACT, "1"), "v=2", False),
        (QueryMatch("v", EXACT, "1"), "", False),
        # the first value counts
        (QueryMatch("v", EXACT, "1"), "v=2&v=1", False),
        # VirtualService `exact: ""` matches a bare `?key`
        (QueryMatch("debug", EXACT, ""), "debug", True),
        (QueryMatch("debug", EXACT, ""), "debug=", True),
        (QueryMatch("v", REGEX, "[0-9]+"), "v=42", True),
        (QueryMatch("v", REGEX, "[0-9]+"), "v=4x", False),
        (QueryMatch("v", PREFIX, "ab"), "v=abc", True),
        (QueryMatch("v", SUFFIX, "bc"), "v=abc", True),
        (QueryMatch("v", SUFFIX, "bc"), "v=abx", False),
        (QueryMatch("v", PRESENT), "v", True),
        (QueryMatch("v", PRESENT), "w=1", False),
        # percent-encoded values are compared decoded
        (QueryMatch("name", EXACT, "a b"), "name=a%20b", True),
    ],
)
def test_query_matches(qm: QueryMatch, query: str, ok: bool) -> None:
    path = "/p?" + query if query else "/p"
    assert matches(RouteMatch(query=(qm,)), req(path)) is ok


def test_first_route_wins_and_the_passing_match_is_returned() -> None:
    catch_all = Route("all")
    r1 = Route(
        "api",
        matches=(
            RouteMatch(path=PathMatch(EXACT, "/exact")),
            RouteMatch(path=PathMatch(PREFIX, "/api")),
        ),
    )
    r2 = Route("post", matches=(RouteMatch(method="POST"),))
    routes = [r1, r2, catch_all]
    got = match_route(routes, req("/api/v1", "POST"), 80)
    assert got is not None and got[0] is r1 and got[1] is r1.matches[1]
    got = match_route(routes, req("/other", "POST"), 80)
    assert got is not None and got[0] is r2
    got = match_route(routes, req("/other"), 80)
    assert got is not None and got[0] is catch_all
    assert match_route([r1, r2], req("/other"), 80) is None
    assert match_route([], req("/"), 80) is None


# weighted backends


def test_pick_backend_follows_the_weights() -> None:
    a, b, c = Backend("ns/a", 80, weight=1), Backend("ns/b", 80, weight=3), Backend("ns/c", 80, 0)
    rng = random.Random(1234)
    n = 20_000
    counts = Counter(pick_backend([a, c, b], rng.random) for _ in range(n))
    assert counts[c] == 0
    # 4 sigma of a binomial(n, 1/4)
    sigma = (n * 0.25 * 0.75) ** 0.5
    assert abs(counts[a] - n / 4) < 4 * sigma
    assert counts[a] + counts[b] == n


def test_pick_backend_edges() -> None:
    a, b = Backend("ns/a", 80, weight=0), Backend("ns/b", 80, weight=5)
    assert pick_backend([a, b], lambda: 0.0) is b
    assert pick_backend([b, a], lambda: 0.9999999999) is b
    assert pick_backend([a], lambda: 0.5) is None
    assert pick_backend([], lambda: 0.5) is None


# header operations


def test_header_ops_remove_then_set_then_add() -> None:
    """The conformance request of httproute-rewrite-path's header case."""
    h = Headers(
        [
            ("x-header-remove", "remove-val"),
            ("x-header-add-append", "append-val-1"),
            ("x-header-set", "set-val"),
        ]
    )
    ops = HeaderOps(
        set=(("X-Header-Set", "set-overwrites-values"),),
        add=(("X-Header-Add", "header-val-1"), ("X-Header-Add-Append", "header-val-2")),
        remove=("X-Header-Remove",),
    )
    apply_header_ops(h, ops)
    assert "x-header-remove" not in h
    assert h.joined("x-header-add") == "header-val-1"
    assert h.joined("x-header-add-append") == "append-val-1,header-val-2"
    assert h.get_all("x-header-set") == ["set-overwrites-values"]


def test_header_ops_set_what_was_just_removed_and_add_to_a_set() -> None:
    h = Headers([("x-a", "old"), ("x-a", "older")])
    apply_header_ops(h, HeaderOps(set=(("x-a", "new"),), add=(("x-a", "more"),), remove=("x-a",)))
    assert h.get_all("x-a") == ["new", "more"]
    assert not HeaderOps()


# rewrites

PREFIX_TABLE = [
    # the table of Gateway API's HTTPPathModifier.ReplacePrefixMatch
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    # conformance httproute-rewrite-path
    ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
    ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
    ("/strip-prefix", "/strip-prefix", "/", "/"),
    (
        "/prefix/rewrite-path-and-modify-headers/one",
        "/prefix/rewrite-path-and-modify-headers",
        "/prefix",
        "/prefix/one",
    ),
    # the root prefix
    ("/bar", "/", "/xyz", "/xyz/bar"),
    ("/bar", "/", "/xyz/", "/xyz/bar"),
]


@pytest.mark.parametrize(("path", "prefix", "replacement", "want"), PREFIX_TABLE)
def test_gateway_replace_prefix_match(path: str, prefix: str, replacement: str, want: str) -> None:
    m = RouteMatch(path=PathMatch(PREFIX, prefix))
    head = req(path)
    assert matches(m, head)
    rewrite_request(head, Rewrite(prefix=replacement), m)
    assert head.path == want


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "want"),
    [
        # Envoy prefix_rewrite over a VirtualService (plain) prefix match
        ("/foo/x", "/foo", "/bar", "/bar/x"),
        ("/foobar", "/foo", "/bar", "/barbar"),
        ("/foo/x", "/foo/", "/", "/x"),
        # Istio turns `uri: /` over prefix `/foo` into a regex rewrite: no doubled slash
        ("/foo/x", "/foo", "/", "/x"),
    ],
)
def test_virtualservice_prefix_rewrite(path: str, prefix: str, replacement: str, want: str) -> None:
    m = RouteMatch(path=PathMatch(PREFIX, prefix, segment_prefix=False))
    head = req(path)
    rewrite_request(head, Rewrite(prefix=replacement), m)
    assert head.path == want


def test_rewrite_full_path_keeps_the_query_and_sets_the_authority() -> None:
    m = RouteMatch(path=PathMatch(PREFIX, "/full/one"))
    head = req("/full/one/two?x=1")
    rewrite_request(head, Rewrite(path="/one", authority="other.apps:9090"), m)
    assert (head.path, head.authority) == ("/one?x=1", "other.apps:9090")


def test_prefix_rewrite_of_an_exact_match_replaces_the_whole_path() -> None:
    m = RouteMatch(path=PathMatch(EXACT, "/old"))
    head = req("/old?q")
    rewrite_request(head, Rewrite(prefix="/new"), m)
    assert head.path == "/new?q"


def test_prefix_rewrite_without_a_path_condition_replaces_the_leading_slash() -> None:
    head = req("/a/b")
    rewrite_request(head, Rewrite(prefix="/v2/"), RouteMatch())
    assert head.path == "/v2/a/b"


def test_authority_only_rewrite_leaves_the_path() -> None:
    head = req("/a?b")
    rewrite_request(head, Rewrite(authority="x"), RouteMatch())
    assert (head.path, head.authority) == ("/a?b", "x")


# redirects

REDIRECT_PATH_CASES = [
    # conformance httproute-redirect-path: (request path, match prefix, redirect, location path)
    (
        "/original-prefix/lemon",
        "/original-prefix",
        Redirect(prefix="/replacement-prefix"),
        "http://gw/replacement-prefix/lemon",
    ),
    (
        "/full/path/original",
        "/full",
        Redirect(path="/full-path-replacement"),
        "http://gw/full-path-replacement",
    ),
    (
        "/path-and-host",
        "/path-and-host",
        Redirect(host="example.org", prefix="/replacement-prefix"),
        "http://example.org/replacement-prefix",
    ),
    (
        "/path-and-status",
        "/path-and-status",
        Redirect(status=301, prefix="/replacement-prefix"),
        "http://gw/replacement-prefix",
    ),
    (
        "/full-path-and-host",
        "/full-path-and-host",
        Redirect(host="example.org", path="/replacement-full"),
        "http://example.org/replacement-full",
    ),
]


@pytest.mark.parametrize(("path", "prefix", "redirect", "location"), REDIRECT_PATH_CASES)
def test_redirect_paths(path: str, prefix: str, redirect: Redirect, location: str) -> None:
    m = RouteMatch(path=PathMatch(PREFIX, prefix))
    head = req(path, authority="gw")
    assert matches(m, head)
    assert redirect_location(head, redirect, m) == location


def test_redirect_rule_order_segment_prefix() -> None:
    """`/full` must not catch `/full-path-and-host` (the conformance manifest relies on it)."""
    full = Route("full", matches=(RouteMatch(path=PathMatch(PREFIX, "/full")),))
    host = Route("host", matches=(RouteMatch(path=PathMatch(PREFIX, "/full-path-and-host")),))
    got = match_route([full, host], req("/full-path-and-host"), 80)
    assert got is not None and got[0] is host


@pytest.mark.parametrize(
    ("listener_authority", "scheme", "redirect", "location"),
    [
        # conformance httproute-redirect-port-and-scheme, listener on port 80
        ("gw", "http", Redirect(host="example.org"), "http://example.org/p"),
        ("gw", "http", Redirect(host="example.org", port=80), "http://example.org/p"),
        ("gw", "http", Redirect(host="example.org", port=8080), "http://example.org:8080/p"),
        ("gw", "http", Redirect(scheme="https", host="example.org"), "https://example.org/p"),
        (
            "gw",
            "http",
            Redirect(scheme="https", host="example.org", port=443),
            "https://example.org/p",
        ),
        (
            "gw",
            "http",
            Redirect(scheme="https", host="example.org", port=8443),
            "https://example.org:8443/p",
        ),
        # listener on port 8080
        ("gw:8080", "http", Redirect(host="example.org"), "http://example.org:8080/p"),
        ("gw:8080", "http", Redirect(host="example.org", port=80), "http://example.org/p"),
        ("gw:8080", "http", Redirect(scheme="https", host="example.org"), "https://example.org/p"),
        # listener on port 443 (https)
        ("example.org", "https", Redirect(host="example.org"), "https://example.org/p"),
        ("example.org", "https", Redirect(host="example.org", port=443), "https://example.org/p"),
        (
            "example.org",
            "https",
            Redirect(host="example.org", port=8443),
            "https://example.org:8443/p",
        ),
        (
            "example.org",
            "https",
            Redirect(scheme="http", host="example.org"),
            "http://example.org/p",
        ),
        (
            "example.org",
            "https",
            Redirect(scheme="http", host="example.org", port=80),
            "http://example.org/p",
        ),
        (
            "example.org",
            "https",
            Redirect(scheme="http", host="example.org", port=8080),
            "http://example.org:8080/p",
        ),
        # a scheme given and no port: the scheme's well-known port, even if the scheme is the
        # request's own (Gateway API: "If redirect scheme is not-empty, the redirect port MUST
        # be the well-known port associated with the redirect scheme")
        ("example.org:8443", "https", Redirect(scheme="https"), "https://example.org/p"),
    ],
)
def test_redirect_port_and_scheme(
    listener_authority: str, scheme: str, redirect: Redirect, location: str
) -> None:
    head = req("/p", authority=listener_authority, scheme=scheme)
    assert redirect_location(head, redirect, RouteMatch()) == location


def test_redirect_keeps_the_query_and_brackets_ipv6() -> None:
    head = req("/a?x=1", authority="[fd00::1]:8080")
    assert redirect_location(head, Redirect(), RouteMatch()) == "http://[fd00::1]:8080/a?x=1"
    assert redirect_location(head, Redirect(host="fd00::2", port=80), RouteMatch()) == (
        "http://[fd00::2]/a?x=1"
    )
