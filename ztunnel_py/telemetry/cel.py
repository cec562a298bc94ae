"""The part of CEL (Common Expression Language) Istio's Telemetry expressions use, over Envoy's
request attributes: access-log filters (`response.code >= 400`) and metric tag values
(`request.headers['x-user']`). Sans-IO: `parse` once (the control plane validates with it, the
proxy compiles with it), then `evaluate` per request against a lookup of attributes.

Grammar: literals (strings in single or double quotes, integers, `true`, `false`, `null`),
attributes (`request.host`, `connection.mtls`), indexing with a string (`request.headers['x']`),
`!`, `-` (negation), `*`, `/`, `%`, `+`, `-`, comparisons (`==`, `!=`, `<`, `<=`, `>`, `>=`),
`in` a list literal, `&&`, `||`, `? :`, parentheses, list literals, and the functions
`has(attribute)`, `size(x)`, `x.startsWith(s)`, `x.endsWith(s)`, `x.contains(s)`,
`x.matches(regex)`, `string(x)`, `int(x)`. Attributes an expression may name are Envoy's (see
`ATTRIBUTES`); a missing attribute or header makes a comparison false (CEL's "no such key"
error, which Envoy's filters treat as "does not match") and a tag value absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ATTRIBUTES", "CelError", "Expression", "parse"]

# Envoy's attributes a proxy answers (maps: `request.headers`, `response.headers`).
ATTRIBUTES = frozenset(
    {
        "request.path",
        "request.url_path",
        "request.host",
        "request.scheme",
        "request.method",
        "request.headers",
        "request.useragent",
        "request.id",
        "request.protocol",
        "request.duration",
        "request.size",
        "request.total_size",
        "response.code",
        "response.code_details",
        "response.flags",
        "response.grpc_status",
        "response.headers",
        "response.size",
        "response.total_size",
        "source.address",
        "source.port",
        "destination.address",
        "destination.port",
        "connection.mtls",
        "connection.requested_server_name",
        "upstream.address",
        "upstream.port",
        "xds.cluster_name",
        "xds.route_name",
    }
)

Lookup = Callable[[str], Any]


class CelError(ValueError):
    """An expression that cannot be parsed, or names an unknown attribute."""


class _Missing(Exception):
    """An attribute or key the request does not have (CEL's "no such key")."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>\d+)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>&&|\|\||==|!=|<=|>=|[<>!+\-*/%()\[\].,?:])
    )""",
    re.VERBOSE,
)
_BINARY = {
    "||": 1,
    "&&": 2,
    "==": 3,
    "!=": 3,
    "<": 3,
    "<=": 3,
    ">": 3,
    ">=": 3,
    "in": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
}
_METHODS = ("startsWith", "endsWith", "contains", "matches")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise CelError(f"unexpected {text[pos:].strip()[:20]!r} at offset {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# The parsed form: nested tuples (kind, ...).
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise CelError(
                f"expected {value!r}, the expression ended"
                if value
                else "the expression ends too early"
            )
        if value is not None and tok[1] != value:
            raise CelError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def expression(self) -> Node:
        cond = self.binary(1)
        tok = self.peek()
        if tok is not None and tok[1] == "?":
            self.take("?")
            yes = self.expression()
            self.take(":")
            return ("cond", cond, yes, self.expression())
        return cond

    def binary(self, level: int) -> Node:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok is None or tok[1] not in _BINARY or _BINARY[tok[1]] < level:
                return left
            op = self.take()[1]
            right = self.binary(_BINARY[op] + 1)
            left = ("op", op, left, right)

    def unary(self) -> Node:
        tok = self.peek()
        if tok is not None and tok[1] in ("!", "-"):
            self.take()
            return ("not" if tok[1] == "!" else "neg", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while (tok := self.peek()) is not None and tok[1] in (".", "["):
            self.take()
            if tok[1] == "[":
                key = self.expression()
                self.take("]")
                node = ("index", node, key)
                continue
            name = self.take()
            if name[0] != "name":
                raise CelError(f"expected a name after '.', got {name[1]!r}")
            if (nxt := self.peek()) is not None and nxt[1] == "(":
                if name[1] not in _METHODS:
                    raise CelError(f"unknown function {name[1]!r}")
                node = ("call", name[1], [node, *self.arguments()])
            elif node[0] == "attr":
                node = ("attr", f"{node[1]}.{name[1]}")
            else:
                raise CelError(f"field {name[1]!r} of a value that has none")
        return node

    def arguments(self) -> list[Node]:
        self.take("(")
        args: list[Node] = []
        while (tok := self.peek()) is not None and tok[1] != ")":
            args.append(self.expression())
            if (tok := self.peek()) is not None and tok[1] == ",":
                self.take(",")
        self.take(")")
        return args

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "number":
            return ("lit", int(value))
        if kind == "string":
            return ("lit", bytes(value[1:-1], "utf-8").decode("unicode_escape"))
        if value == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if value == "[":
            items: list[Node] = []
            while (tok := self.peek()) is not None and tok[1] != "]":
                items.append(self.expression())
                if (tok := self.peek()) is not None and tok[1] == ",":
                    self.take(",")
            self.take("]")
            return ("list", items)
        if kind == "name":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            if (tok := self.peek()) is not None and tok[1] == "(":
                if value not in ("has", "size", "string", "int"):
                    raise CelError(f"unknown function {value!r}")
                return ("call", value, self.arguments())
            return ("attr", value)
        raise CelError(f"unexpected {value!r}")


def _check(node: Node) -> None:
    """Every attribute named is one of Envoy's."""
    kind = node[0]
    if kind == "attr":
        if node[1] not in ATTRIBUTES:
            raise CelError(f"unknown attribute {node[1]!r}")
    elif kind == "index":
        _check(node[1])
        _check(node[2])
    elif kind in ("op",):
        _check(node[2])
        _check(node[3])
    elif kind in ("not", "neg"):
        _check(node[1])
    elif kind == "cond":
        for child in node[1:]:
            _check(child)
    elif kind in ("call", "list"):
        for child in node[-1]:
            _check(child)


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    tree: Node

    def evaluate(self, lookup: Lookup) -> Any:
        """The value for one request (None when it names something the request lacks)."""
        try:
            return _eval(self.tree, lookup)
        except (_Missing, TypeError, ValueError, ZeroDivisionError, re.error):
            return None

    def matches(self, lookup: Lookup) -> bool:
        """For filters: true only when the expression is `true`."""
        return self.evaluate(lookup) is True


def parse(text: str) -> Expression:
    parser = _Parser(text)
    if not parser.tokens:
        raise CelError("empty expression")
    tree = parser.expression()
    if parser.peek() is not None:
        raise CelError(f"unexpected {parser.peek()[1]!r} after the expression")  # type: ignore[index]
    _check(tree)
    return Expression(text, tree)


def _eval(node: Node, lookup: Lookup) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "attr":
        value = lookup(node[1])
        if value is None:
            raise _Missing(node[1])
        return value
    if kind == "index":
        container = _eval(node[1], lookup)
        key = _eval(node[2], lookup)
        if isinstance(container, dict):
            found = container.get(key.lower() if isinstance(key, str) else key)
            if found is None:
                raise _Missing(str(key))
            return found
        return container[key]
    if kind == "not":
        return not _bool(_eval(node[1], lookup))
    if kind == "neg":
        return -_eval(node[1], lookup)
    if kind == "cond":
        return _eval(node[2] if _bool(_eval(node[1], lookup)) else node[3], lookup)
    if kind == "list":
        return [_eval(n, lookup) for n in node[1]]
    if kind == "call":
        return _call(node[1], node[2], lookup)
    op, left = node[1], node[2]
    if op in ("&&", "||"):
        # CEL's commutative logic: an error on one side does not matter if the other decides
        try:
            a: Any = _bool(_eval(left, lookup))
        except _Missing:
            a = None
        if (op == "&&" and a is False) or (op == "||" and a is True):
            return a
        b = _bool(_eval(node[3], lookup))
        if a is None:
            if (op == "&&" and not b) or (op == "||" and b):
                return b
            raise _Missing("operand")
        return b
    x, y = _eval(left, lookup), _eval(node[3], lookup)
    if op == "in":
        return x in y
    if op in ("==", "!="):
        return (x == y) is (op == "==")
    if type(x) is not type(y) and not (_number(x) and _number(y)):
        raise TypeError(f"no such overload: {type(x).__name__} {op} {type(y).__name__}")
    return {
        "<": lambda: x < y,
        "<=": lambda: x <= y,
        ">": lambda: x > y,
        ">=": lambda: x >= y,
        "+": lambda: x + y,
        "-": lambda: x - y,
        "*": lambda: x * y,
        "/": lambda: x // y if isinstance(x, int) else x / y,
        "%": lambda: x % y,
    }[op]()


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("not a bool")
    return v


def _call(name: str, args: list[Node], lookup: Lookup) -> Any:
    if name == "has":
        try:
            _eval(args[0], lookup)
        except _Missing:
            return False
        return True
    values = [_eval(a, lookup) for a in args]
    if name == "size":
        return len(values[0])
    if name == "string":
        v = values[0]
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    if name == "int":
        return int(values[0])
    target, arg = values[0], values[1]
    if not isinstance(target, str) or not isinstance(arg, str):
        raise TypeError(f"{name} needs strings")
    if name == "startsWith":
        return target.startswith(arg)
    if name == "endsWith":
        return target.endswith(arg)
    if name == "contains":
        return arg in target
    return re.search(arg, target) is not None
