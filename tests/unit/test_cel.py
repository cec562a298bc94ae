"""The CEL subset of Telemetry expressions, over Envoy's attribute names."""

from __future__ import annotations

from typing import Any

import pytest

from ztunnel_py.telemetry.cel import CelError, parse

REQUEST: dict[str, Any] = {
    "request.method": "GET",
    "request.path": "/api/v1/items?x=1",
    "request.url_path": "/api/v1/items",
    "request.headers": {"x-user": "alice", "user-agent": "curl/8"},
    "response.code": 503,
    "response.flags": "UF,URX",
    "connection.mtls": True,
    "destination.port": 8080,
}


def value(text: str) -> Any:
    return parse(text).evaluate(REQUEST.get)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("response.code >= 400", True),
        ("response.code >= 400 && request.method == 'POST'", False),
        ("response.code == 200 || connection.mtls", True),
        ("!(response.code < 500)", True),
        ("request.headers['x-user']", "alice"),
        ('request.headers["X-User"] == "alice"', True),
        ("request.url_path.startsWith('/api/')", True),
        ("request.path.contains('x=1') ? 'query' : 'plain'", "query"),
        ("request.method in ['GET', 'HEAD']", True),
        ("has(request.headers['x-missing'])", False),
        ("size(request.url_path)", 13),
        ("destination.port % 1000 + 1", 81),
        ("string(connection.mtls)", "true"),
        ("response.flags.matches('^U')", True),
        ("-1 < 0", True),
        # a missing header: the comparison is not true, and an || can still decide
        ("request.headers['x-missing'] == 'a'", None),
        ("request.headers['x-missing'] == 'a' || response.code == 503", True),
        ("request.headers['x-missing'] == 'a' && response.code == 200", False),
        # mismatched types are an error, not a crash
        ("response.code > 'a'", None),
    ],
)
def test_expressions_evaluate_as_cel_does(text: str, expected: Any) -> None:
    assert value(text) == expected


def test_a_filter_matches_only_on_true() -> None:
    assert parse("response.code >= 500").matches(REQUEST.get)
    assert not parse("request.headers['nope'] == 'x'").matches(REQUEST.get)
    assert not parse("response.code").matches(REQUEST.get)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty expression"),
        ("response.code >=", "the expression ends too early"),
        ("request.bogus == 1", "unknown attribute 'request.bogus'"),
        ("launch()", "unknown function 'launch'"),
        ("response.code == 1 )", "unexpected ')' after the expression"),
        ("response.code # 1", "unexpected '# 1' at offset 13"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(text: str, error: str) -> None:
    with pytest.raises(CelError, match="^" + error.replace("(", r"\(").replace(")", r"\)")):
        parse(text)
