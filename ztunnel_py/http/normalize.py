"""Request path normalization before routing and authorization (Istio's default `BASE`).

What Envoy does with `normalize_path: true`, which istiod sets for every proxy by default, so a
policy on `/admin` cannot be bypassed with `/public/../admin` or `/%61dmin`:

- percent-encoded unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) are decoded, other
  percent-encodings are kept with upper-case hex digits (RFC 3986 section 6.2.2.2);
- backslashes become slashes;
- dot segments are removed (RFC 3986 section 5.2.4); the path is absolute;
- `%00` (an encoded NUL) makes the request invalid (400).

Slashes are not merged and `%2F` is not decoded (that is `MERGE_SLASHES`/`DECODE_AND_MERGE_
SLASHES`, which are opt-in). The query string is left as it is. The normalized path is also what
goes upstream, as with Envoy.
"""

from __future__ import annotations

__all__ = ["InvalidPath", "normalize_path"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


class InvalidPath(ValueError):
    """The path cannot be normalized safely."""


def _decode_unreserved(path: str) -> str:
    if "%" not in path:
        return path
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            code = int(path[i + 1 : i + 3], 16)
            if code == 0:
                raise InvalidPath("path contains an encoded NUL (%00)")
            ch = chr(code)
            out.append(ch if ch in _UNRESERVED else "%" + path[i + 1 : i + 3].upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    # a trailing "." or ".." leaves a directory: keep the trailing slash
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def normalize_path(target: str) -> str:
    """The normalized request target (path and query); `InvalidPath` for a bad one."""
    if target == "*":
        return target
    path, sep, query = target.partition("?")
    # a backslash is a slash, the first one too (Istio: `\da` is `/da`)
    path = path.replace("\\", "/")
    if not path.startswith("/"):
        raise InvalidPath(f"request target {target[:60]!r} is not an absolute path")
    if "\x00" in path:
        raise InvalidPath("path contains a NUL")
    path = _decode_unreserved(path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path + sep + query
