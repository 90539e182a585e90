"""The package's shape, read from its source with ``ast``: the request's way reads off the tree.

Layers, top to bottom: ``cli`` (and ``__main__``) builds the ``app``; the ``app`` mounts ``api``
(HTTP only); everything else is the domain below them and never imports upwards. Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"
#: the layers above the domain, and what each may import of them
UPPER = {
    "gateway.__main__": ("gateway.cli",),
    "gateway.cli": ("gateway.cli", "gateway.app"),
    "gateway.app": ("gateway.api",),
    "gateway.api": ("gateway.api",),
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """The gateway modules ``path`` imports (``from gateway.x import y`` names module x.y if
    that is a module, else x)."""
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "gateway":
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in MODULES else node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "gateway")


GRAPH = {name: {i for i in _imports(path) if i != name} for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    for layer in UPPER:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_the_graph_is_read() -> None:
    # A reader that found nothing would pass every rule below.
    assert len(MODULES) > 50
    assert "gateway.routing.dispatch" in GRAPH["gateway.app"]
    assert "gateway.errors" in GRAPH["gateway.api.chat"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_it(module: str) -> None:
    own = _layer(module)
    allowed = UPPER.get(own, ()) if own else ()
    upward = [
        dep
        for dep in sorted(GRAPH[module])
        if (layer := _layer(dep)) is not None and layer != own and layer not in allowed
    ]
    assert upward == [], f"{module} imports {upward}: move what it needs into the domain"


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text("utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by what its parts do"
