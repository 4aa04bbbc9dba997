"""The module import graph has no circle, counting imports inside functions.

A lazy import inside a function hides a circle from the interpreter, not from the
reader: ``_context`` making a Pool by importing ``_pool`` while ``_pool`` imports
``_context`` means neither can be understood, tested or moved alone. So this test
parses every module under ``src/polyproc`` with :mod:`ast`, builds the graph of
polyproc-to-polyproc imports wherever they sit (module level or inside a function;
only ``if TYPE_CHECKING:`` blocks are left out, since they never run) and fails on
any strongly connected component of more than one module, or a module importing
itself, printing each circle it finds.

An edge goes to the module named: ``from .x import y`` is an edge to ``x`` (its
``__init__`` when it is a package), or to ``x.y`` when ``y`` is a submodule. The
implicit import of a parent package (``import a.b`` runs ``a/__init__``) is not an
edge: every module would then "import" ``polyproc/__init__``. Imports by a computed
name (``importlib.import_module(LAUNCHERS[method])``) are not seen; keep those pointing
down (the launcher table does).

One deliberate exception: imports inside a module-level ``__getattr__`` (PEP 562 lazy
names) are not edges. ``errors.py`` hands out ``BrokenProcessPool``/``WorkerLostError``
that way: they live in ``_pool_errors.py`` because they subclass
``concurrent.futures.BrokenExecutor`` (importing it doubles ``import polyproc``), and
subclass the tree's root from ``errors.py``. The lazy edge runs only after ``errors``
is whole, so it is a load order, not a circle of meaning.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "polyproc"

pytestmark = pytest.mark.timeout(60)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path | None]:
    """Every polyproc module: its source, or None for a C extension (a leaf: it imports nothing)."""
    found: dict[str, Path | None] = {_module_name(p): None for p in sorted(SRC.rglob("*.c"))}
    found.update({_module_name(p): p for p in sorted(SRC.rglob("*.py"))})
    assert len(found) > 20
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _imported(path: Path | None, me: str, modules: dict[str, Path | None]) -> set[str]:
    """The polyproc modules ``path`` imports anywhere that runs (TYPE_CHECKING blocks excluded)."""
    if path is None:
        return set()
    is_package = path.name == "__init__.py"
    package = me if is_package else me.rpartition(".")[0]
    out: set[str] = set()

    def resolve(name: str) -> None:
        # The deepest existing module: ``polyproc._pool.pool.Pool`` -> ``polyproc._pool.pool``.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("polyproc"):
            out.add(name)

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(node, ast.Module)
                and isinstance(child, ast.FunctionDef)
                and child.name == "__getattr__"
            ):
                continue  # PEP 562 lazy names: see the module docstring
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    walk_one(stmt)
                continue
            walk_one(child)

    def walk_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                resolve(sub if sub in modules else module)
        walk(node)

    walk(ast.parse(path.read_text()))
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the polyproc modules it imports (module level and inside functions)."""
    modules = _modules()
    return {name: _imported(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a circle in them (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # recursion depth is bounded by the module count
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _one_circle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete circle inside ``component``, for the failure message (BFS back to the start)."""
    start = component[0]
    members = set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component  # pragma: no cover - a component always has a circle


def test_the_graph_sees_function_level_imports() -> None:
    # A guard on the parser itself: the CLI imports the tour inside a function only.
    graph = import_graph()
    assert "polyproc._launch" in graph
    assert any(t.startswith("polyproc._tour") for t in graph["polyproc.cli"])


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e"]]
    assert _one_circle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_circle() -> None:
    graph = import_graph()
    problems = [
        " -> ".join(_one_circle(graph, c)) + f"   (component: {', '.join(c)})"
        for c in _cycles(graph)
    ]
    assert not problems, "import circles:\n" + "\n".join(problems)
