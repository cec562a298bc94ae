"""The filter chain's hook order and the loading of filters from installed entry points."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ztunnel_py.http.filter import (
    ENTRY_POINT_GROUP,
    Downstream,
    Filter,
    FilterChain,
    FilterError,
    LocalReply,
    RequestContext,
    load_filter,
)
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead


def ctx() -> RequestContext:
    return RequestContext(
        RequestHead("GET", "/", "svc"), Downstream(None, "10.0.0.1:1234", "10.0.0.2:80")
    )


class Recorder(Filter):
    def __init__(self, name: str, log: list[str], reply_at: str = "") -> None:
        self.tag = name
        self.log = log
        self.reply_at = reply_at

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        self.log.append(f"{self.tag}.req")
        ctx.request.headers.add("x-order", self.tag)
        return LocalReply(403, "no") if self.reply_at == "req" else None

    async def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk + self.tag.encode()

    async def on_request_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        trailers.add("x-t", self.tag)

    async def on_response_headers(self, ctx: RequestContext) -> LocalReply | None:
        self.log.append(f"{self.tag}.resp")
        return LocalReply(500) if self.reply_at == "resp" else None

    async def on_response_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        return chunk + self.tag.encode()

    async def on_response_trailers(self, ctx: RequestContext, trailers: Headers) -> None:
        trailers.add("x-t", self.tag)

    def on_log(self, ctx: RequestContext) -> None:
        self.log.append(f"{self.tag}.log")


async def test_request_hooks_in_order_response_hooks_in_reverse() -> None:
    log: list[str] = []
    chain = FilterChain([Recorder("a", log), Recorder("b", log), Recorder("c", log)])
    c = ctx()
    assert await chain.request_headers(c) is None
    assert c.request.headers.get_all("x-order") == ["a", "b", "c"]
    assert await chain.request_body(c, b"|", False) == b"|abc"
    t = Headers()
    await chain.request_trailers(c, t)
    assert t.get_all("x-t") == ["a", "b", "c"]
    c.response = ResponseHead(200)
    assert await chain.response_headers(c) is None
    assert await chain.response_body(c, b"|", True) == b"|cba"
    t = Headers()
    await chain.response_trailers(c, t)
    assert t.get_all("x-t") == ["c", "b", "a"]
    chain.log(c)
    assert log == [
        "a.req",
        "b.req",
        "c.req",
        "c.resp",
        "b.resp",
        "a.resp",
        "a.log",
        "b.log",
        "c.log",
    ]


async def test_a_local_reply_stops_the_chain() -> None:
    log: list[str] = []
    chain = FilterChain([Recorder("a", log), Recorder("b", log, "req"), Recorder("c", log)])
    reply = await chain.request_headers(ctx())
    assert reply == LocalReply(403, "no")
    assert log == ["a.req", "b.req"]
    log.clear()
    chain = FilterChain([Recorder("a", log), Recorder("b", log, "resp"), Recorder("c", log)])
    assert await chain.response_headers(ctx()) == LocalReply(500)
    assert log == ["c.resp", "b.resp"]


async def test_only_overridden_hooks_run() -> None:
    class HeadersOnly(Filter):
        async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
            ctx.request.headers.add("x-seen", "1")
            return None

    chain = FilterChain([HeadersOnly()])
    assert not chain.touches_request_body and not chain.touches_response_body
    assert FilterChain([Recorder("a", [])]).touches_response_body
    c = ctx()
    await chain.request_headers(c)
    assert c.request.headers.get("x-seen") == "1"
    assert await chain.request_body(c, b"x", True) == b"x"
    chain.log(c)


def test_context_flags_and_duration() -> None:
    c = ctx()
    assert c.flags_text == "-"
    c.flag("UF")
    c.flag("URX")
    c.flag("UF")
    c.flag("")
    assert c.flags_text == "UF,URX"
    c.end = c.start + 0.25
    assert c.duration_ms == pytest.approx(250.0)


class Configured(Filter):
    name = "configured"

    def __init__(self, config: Mapping[str, Any]) -> None:
        if "limit" not in config:
            raise ValueError("limit is required")
        self.limit = int(config["limit"])


def test_load_a_builtin() -> None:
    made = load_filter("configured", {"limit": 3}, builtins={"configured": Configured})
    assert isinstance(made, Configured) and made.limit == 3
    with pytest.raises(FilterError, match="rejected its configuration: limit is required"):
        load_filter("configured", {}, builtins={"configured": Configured})


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package installed the way pip lays it out: a module and a dist-info naming entry
    points of the group."""
    (tmp_path / "acme_filters.py").write_text(
        textwrap.dedent(
            """
            from ztunnel_py.http.filter import Filter

            class Tagger(Filter):
                def __init__(self, config):
                    self.tag = config.get("tag", "none")

            class NotAFilter:
                def __init__(self, config):
                    pass

            def broken(config):
                return object()
            """
        )
    )
    dist = tmp_path / "acme_filters-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-filters\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "tagger = acme_filters:Tagger\n"
        "not-a-filter = acme_filters:NotAFilter\n"
        "broken = acme_filters:broken\n"
        "missing = acme_filters_gone:Thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_load_an_installed_entry_point(installed: Path) -> None:
    made = load_filter("tagger", {"tag": "x"})
    assert isinstance(made, Filter) and made.tag == "x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "no HTTP filter named 'nope' is installed .*installed: .*tagger"),
        ("not-a-filter", "is not a ztunnel_py.http.filter.Filter"),
        ("broken", "did not build a Filter"),
        ("missing", "cannot be imported"),
    ],
)
def test_load_errors_are_clear(installed: Path, name: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        load_filter(name, {})
