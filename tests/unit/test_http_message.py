"""HTTP messages: the Headers multi-map against a plain list model, hop-by-hop stripping and
authority parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel_py.http.message import Headers, RequestHead, split_authority, strip_hop_by_hop

NAMES = st.sampled_from(["a", "B", "content-type", "X-Y", "set-cookie", "te"])
VALUES = st.text(alphabet="abc ,;=", max_size=6)
OPS = st.lists(
    st.tuples(st.sampled_from(["set", "add", "remove", "setdefault"]), NAMES, VALUES),
    max_size=25,
)


class ListModel:
    """The obvious semantics over a list of (lower-case name, value)."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []

    def set(self, name: str, value: str) -> None:
        name = name.lower()
        idx = [i for i, (n, _) in enumerate(self.fields) if n == name]
        if not idx:
            self.fields.append((name, value))
            return
        first = idx[0]
        self.fields = [
            (n, value) if i == first else (n, v)
            for i, (n, v) in enumerate(self.fields)
            if n != name or i == first
        ]

    def add(self, name: str, value: str) -> None:
        self.fields.append((name.lower(), value))

    def remove(self, name: str) -> None:
        self.fields = [(n, v) for n, v in self.fields if n != name.lower()]

    def setdefault(self, name: str, value: str) -> str:
        for n, v in self.fields:
            if n == name.lower():
                return v
        self.add(name, value)
        return value


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_headers_behave_like_the_list_model(ops: list[tuple[str, str, str]]) -> None:
    h = Headers()
    model = ListModel()
    for op, name, value in ops:
        got = getattr(h, op)(name, value) if op != "remove" else h.remove(name)
        want = getattr(model, op)(name, value) if op != "remove" else model.remove(name)
        assert got == want
        assert h.items() == model.fields
    for name in ["a", "B", "content-type", "x-y", "missing"]:
        values = [v for n, v in model.fields if n == name.lower()]
        assert h.get_all(name) == values
        assert h.get(name) == (values[0] if values else None)
        assert h.joined(name) == (",".join(values) if values else None)
        assert (name in h) == bool(values)
    assert len(h) == len(model.fields)
    assert h.size() == sum(len(n) + len(v) + 32 for n, v in model.fields)
    copy = h.copy()
    copy.add("only-in-copy", "1")
    assert "only-in-copy" not in h


def test_headers_lower_case_names_on_the_way_in_and_compare_by_content() -> None:
    h = Headers([("Content-Type", "text/plain"), ("X-A", "1")])
    assert h.items() == [("content-type", "text/plain"), ("x-a", "1")]
    assert h == Headers([("content-type", "text/plain"), ("x-a", "1")])
    assert h != Headers([("x-a", "1"), ("content-type", "text/plain")])
    assert 3 not in h
    h.discard({"x-a"})
    assert h.items() == [("content-type", "text/plain")]


def test_strip_hop_by_hop_removes_the_fixed_set_and_fields_named_in_connection() -> None:
    h = Headers(
        [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("te", "gzip, trailers"),
            ("trailer", "grpc-status"),
            ("x-kept", "yes"),
        ]
    )
    strip_hop_by_hop(h)
    # te: trailers survives in place (gRPC needs it end to end), the rest of te does not
    assert h.items() == [("te", "trailers"), ("x-kept", "yes")]


def test_strip_hop_by_hop_keeps_upgrade_for_a_protocol_switch() -> None:
    h = Headers([("connection", "Upgrade"), ("upgrade", "websocket"), ("te", "gzip")])
    strip_hop_by_hop(h, keep_upgrade=True)
    assert h.items() == [("connection", "Upgrade"), ("upgrade", "websocket")]


@pytest.mark.parametrize(
    ("authority", "host", "port"),
    [
        ("example.com", "example.com", None),
        ("example.com:8080", "example.com", 8080),
        ("example.com:", "example.com", None),
        ("example.com:http", "example.com", None),
        ("10.0.0.1:80", "10.0.0.1", 80),
        ("[fd00::1]:443", "fd00::1", 443),
        ("[fd00::1]", "fd00::1", None),
        ("fd00::1", "fd00::1", None),
        ("[fd00::1", "[fd00::1", None),
    ],
)
def test_split_authority(authority: str, host: str, port: int | None) -> None:
    assert split_authority(authority) == (host, port)


def test_request_head_path_parts_and_copy() -> None:
    head = RequestHead("GET", "/a/b?x=1&y", "svc:80", Headers([("a", "1")]))
    assert (head.path_only, head.query, head.host) == ("/a/b", "x=1&y", "svc")
    assert RequestHead("GET", "/a", "svc").query == ""
    copy = head.copy()
    copy.headers.add("b", "2")
    copy.path = "/other"
    assert head.headers.items() == [("a", "1")]
    assert head.path == "/a/b?x=1&y"
