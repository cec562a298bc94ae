"""The dependency rules of docs/architecture.md, checked on the source with `ast`.

Every import in every module under ztunnel_py/ (function-level and TYPE_CHECKING imports
included: they are dependencies too) is folded into packages: a top-level subpackage
(`ztunnel_py/agent/...` is `agent`), a top-level module (`cli`, `config`), or the root
package itself (`ztunnel_py`, for `from ztunnel_py import __version__`). On that graph:

- no import cycle between packages;
- the sides (agent, canary, controlplane, testbed, waypoint) never import each other, and no shared
  package imports a side or a driver (bench, cli);
- `model` and `protocol` import no I/O library and nothing of ours but each other; the one
  exception is `protocol/zds.py`, which decodes the enrollment datagrams with the generated
  `ztunnel_py.proto.zds_pb2` messages;
- only `redirect` imports bcc or pyroute2;
- protobuf (`ztunnel_py.proto`, `google.protobuf`) is imported only at the boundaries that
  speak it: xds/, controlplane/, identity/caclient.py, protocol/zds.py.

Each failure names the files and lines that make the offending edge. The checker is also run on
a small generated tree with an injected cycle, so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ztunnel_py

PACKAGE = "ztunnel_py"
SOURCE = Path(ztunnel_py.__file__).resolve().parent
SIDES = frozenset({"agent", "canary", "controlplane", "testbed", "waypoint"})
DRIVERS = frozenset({"bench", "cli", "ctl"})  # start the sides as processes, or dispatch to them
PURE = frozenset({"model", "protocol"})
# Libraries that do I/O or need a kernel or a server: none of them in a sans-IO core.
IO_LIBRARIES = frozenset(
    {
        "asyncio",
        "bcc",
        "grpc",
        "kubernetes",
        "pyroute2",
        "select",
        "selectors",
        "socket",
        "ssl",
        "subprocess",
        "threading",
        "trio",
    }
)
KERNEL_LIBRARIES = frozenset({"bcc", "pyroute2"})
PROTOBUF_USERS = ("xds/", "controlplane/", "identity/caclient.py", "protocol/zds.py")


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module, where it is imported (path relative to the package directory)."""

    file: str
    line: int
    module: str

    @property
    def where(self) -> str:
        return f"{PACKAGE}/{self.file}:{self.line}"

    @property
    def ours(self) -> bool:
        return self.module == PACKAGE or self.module.startswith(PACKAGE + ".")

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    @property
    def protobuf(self) -> bool:
        return self.module.split(".")[:2] in (["ztunnel_py", "proto"], ["google", "protobuf"])


def _is_module(source: Path, dotted: str) -> bool:
    parts = dotted.split(".")[1:]
    path = source.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_in(source: Path) -> list[Import]:
    """Every import of every module below `source` (the ztunnel_py package directory)."""
    found = []
    for path in sorted(source.rglob("*.py")):
        file = path.relative_to(source)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [Import(str(file), node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative to the file's package
                    package = [PACKAGE, *file.parts[:-1]]
                    base = package[: len(package) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                for alias in node.names:
                    # `from a import b` imports module a.b when b is one, else a name of a.
                    candidate = f"{module}.{alias.name}"
                    ours = module == PACKAGE or module.startswith(PACKAGE + ".")
                    if ours and _is_module(source, candidate):
                        found.append(Import(str(file), node.lineno, candidate))
                    else:
                        found.append(Import(str(file), node.lineno, module))
    return found


def package_of_file(file: str) -> str:
    parts = Path(file).parts
    if len(parts) > 1:
        return parts[0]
    return PACKAGE if parts[0] == "__init__.py" else parts[0].removesuffix(".py")


def package_of_module(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def package_edges(imports: Iterable[Import]) -> dict[tuple[str, str], list[Import]]:
    """(importing package, imported package) -> the imports that make that edge."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        if imp.ours:
            source, target = package_of_file(imp.file), package_of_module(imp.module)
            if source != target:
                edges[source, target].append(imp)
    return edges


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one package."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first package (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def places(imports: Iterable[Import]) -> str:
    return ", ".join(dict.fromkeys(i.where for i in imports))


def describe_cycle(cycle: list[str], edges: dict[tuple[str, str], list[Import]]) -> str:
    lines = [" -> ".join(cycle)]
    for a, b in itertools.pairwise(cycle):
        lines.append(f"  {a} -> {b}: {places(edges[a, b])}")
    return "\n".join(lines)


def violations(imports: list[Import]) -> Iterator[str]:
    """Every broken rule, one message each."""
    edges = package_edges(imports)
    for cycle in cycles(edges):
        yield "import cycle: " + describe_cycle(cycle, edges)
    for (source, target), via in sorted(edges.items()):
        where = places(via)
        if source in SIDES and target in SIDES:
            yield f"side {source} imports side {target}: {where}"
        elif source not in SIDES | DRIVERS and target in SIDES | DRIVERS:
            yield f"shared package {source} imports {target}: {where}"
    for imp in imports:
        package = package_of_file(imp.file)
        if package in PURE:
            zds_messages = imp.file == "protocol/zds.py" and imp.protobuf
            if imp.ours and package_of_module(imp.module) not in PURE and not zds_messages:
                yield f"{package} imports {imp.module}: {imp.where}"
            elif not imp.ours and imp.top in IO_LIBRARIES:
                yield f"{package} imports {imp.module}, an I/O library: {imp.where}"
        if imp.top in KERNEL_LIBRARIES and package != "redirect":
            yield f"{imp.module} imported outside redirect/: {imp.where}"
        if imp.protobuf and package != "proto" and not imp.file.startswith(PROTOBUF_USERS):
            yield f"protobuf ({imp.module}) imported outside the wire boundaries: {imp.where}"


def test_the_package_graph_follows_the_dependency_rules() -> None:
    imports = imports_in(SOURCE)
    assert len({package_of_file(i.file) for i in imports}) >= 15  # the walk found the tree
    found = list(violations(imports))
    assert not found, "\n".join(found)


def test_the_sides_and_pure_cores_exist_where_the_rules_look() -> None:
    # A renamed package would make its rules vacuous: fail instead.
    present = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}
    expected = {"agent", "controlplane", "testbed", "bench", "redirect", "xds", *PURE}
    assert expected <= present
    assert (SOURCE / "cli.py").is_file() and (SOURCE / "protocol" / "zds.py").is_file()


def _tree(root: Path, files: dict[str, str]) -> Path:
    source = root / PACKAGE
    for name, text in {"__init__.py": "", **files}.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return source


def test_the_checker_finds_an_injected_cycle_and_names_its_files(tmp_path: Path) -> None:
    source = _tree(
        tmp_path,
        {
            "xds/__init__.py": "",
            "xds/client.py": "from ztunnel_py.agent import state\n",
            "agent/__init__.py": "",
            "agent/state.py": "import trio\n",
            "agent/app.py": "import trio\n\n\ndef main():\n    from ..xds.client import run\n",
            "model/__init__.py": "from ztunnel_py import xds\n",
        },
    )
    found = list(violations(imports_in(source)))
    assert found == [
        "import cycle: agent -> xds -> agent\n"
        "  agent -> xds: ztunnel_py/agent/app.py:5\n"
        "  xds -> agent: ztunnel_py/xds/client.py:1",
        "shared package xds imports agent: ztunnel_py/xds/client.py:1",
        "model imports ztunnel_py.xds: ztunnel_py/model/__init__.py:1",
    ]


def test_the_checker_enforces_each_boundary(tmp_path: Path) -> None:
    source = _tree(
        tmp_path,
        {
            "protocol/__init__.py": "",
            "protocol/zds.py": "from ztunnel_py.proto import zds_pb2\n",
            "protocol/xds.py": "import socket\nfrom ztunnel_py.proto import discovery_pb2\n",
            "proto/__init__.py": "",
            "proto/zds_pb2.py": "from google.protobuf import descriptor\n",
            "proto/discovery_pb2.py": "",
            "testbed/__init__.py": "from ztunnel_py.controlplane import app\n",
            "controlplane/__init__.py": "",
            "controlplane/app.py": "import pyroute2\n",
            "bench/__init__.py": "from ztunnel_py import agent, testbed\n",
            "agent/__init__.py": "",
        },
    )
    assert sorted(violations(imports_in(source))) == [
        "protobuf (ztunnel_py.proto.discovery_pb2) imported outside the wire boundaries: "
        "ztunnel_py/protocol/xds.py:2",
        "protocol imports socket, an I/O library: ztunnel_py/protocol/xds.py:1",
        "protocol imports ztunnel_py.proto.discovery_pb2: ztunnel_py/protocol/xds.py:2",
        "pyroute2 imported outside redirect/: ztunnel_py/controlplane/app.py:1",
        "side testbed imports side controlplane: ztunnel_py/testbed/__init__.py:1",
    ]
