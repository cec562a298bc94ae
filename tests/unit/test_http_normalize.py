"""Request path normalization: Istio's default (`BASE`, Envoy's normalize_path), with the
examples of Istio's normalization reference and best-practice pages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztunnel_py.http.normalize import InvalidPath, normalize_path


@pytest.mark.parametrize(
    ("target", "normalized"),
    [
        # Istio's examples
        ("/a/../b", "/b"),
        ("\\da", "/da"),
        ("/some\\data", "/some/data"),
        ("/public/./data/abc/../xyz", "/public/data/xyz"),
        ("/some%2fdata/%61%62%63", "/some%2Fdata/abc"),  # %2f is DECODE_AND_MERGE_SLASHES only
        ("/a//b", "/a//b"),  # merging slashes is MERGE_SLASHES only
        # unreserved characters decoded, others kept with upper-case hex digits
        ("/%2D%2e%5F%7e%30%39%41%5A", "/-._~09AZ"),
        ("/%3f%23%25%5c", "/%3F%23%25%5C"),
        ("/%2561", "/%2561"),  # decoded once, never twice
        # dot segments, also when spelled with percent-encoded dots
        ("/public/../admin", "/admin"),
        ("/public/%2e%2E/admin", "/admin"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/b/..", "/a/"),
        ("/a/./", "/a/"),
        ("/..", "/"),
        ("/.", "/"),
        ("/a/.b/..c/", "/a/.b/..c/"),
        # the query string is left alone
        ("/a/../b?x=/../y&%61=1", "/b?x=/../y&%61=1"),
        ("/?", "/?"),
        # not percent-encodings: kept as they are
        ("/100%", "/100%"),
        ("/%zz/%4", "/%zz/%4"),
        ("*", "*"),
        ("/", "/"),
    ],
)
def test_normalize_path(target: str, normalized: str) -> None:
    assert normalize_path(target) == normalized


@pytest.mark.parametrize("target", ["/a%00b", "/a\x00", "http://host/x", "relative/path", ""])
def test_invalid_targets(target: str) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(target)


PATHS = st.text(alphabet="ab./\\%2eEf0-_~?=&", max_size=30).map(lambda p: "/" + p)


@given(PATHS)
def test_normalizing_is_idempotent_and_leaves_no_dot_segments(target: str) -> None:
    try:
        once = normalize_path(target)
    except InvalidPath:
        return
    assert normalize_path(once) == once
    path = once.partition("?")[0]
    assert path.startswith("/")
    assert "\\" not in path
    assert not any(seg in (".", "..") for seg in path.split("/"))
