"""The public surface and the package's shape: exports, forbidden imports, layers.

* every name in ``polyproc.__all__`` exists and is exported once; the stdlib's
  ``multiprocessing`` names are all there (drop-in);
* polyproc's own source never imports ``multiprocessing`` or
  ``concurrent.futures.process`` (checked in the source and in a live interpreter);
* a lower layer never imports a higher one (docs/architecture.md): never at import
  time, and lazily (inside a function) only where the table below says why.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import multiprocessing  # the stdlib, to compare names with: tests may import it
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import polyproc
import polyproc.errors

SRC = Path(__file__).resolve().parents[2] / "src" / "polyproc"

pytestmark = pytest.mark.timeout(60)


# -- exports --------------------------------------------------------------------------------------


def test_all_is_a_literal_without_duplicates() -> None:
    assert len(polyproc.__all__) == len(set(polyproc.__all__))
    tree = ast.parse((SRC / "__init__.py").read_text())
    literal = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
    ]
    assert len(literal) == 1 and isinstance(literal[0].value, ast.List)  # tools can read it


@pytest.mark.parametrize("name", sorted(polyproc.__all__))
def test_every_exported_name_exists(name: str) -> None:
    value = getattr(polyproc, name)  # lazy names (PEP 562) load here
    assert value is not None
    module = getattr(value, "__module__", None)
    assert module is None or module.startswith("polyproc") or name == "TimeoutError", (
        f"polyproc.{name} comes from {module}"
    )


def test_each_object_is_exported_under_one_name() -> None:
    seen: dict[int, str] = {}
    for name in polyproc.__all__:
        obj = getattr(polyproc, name)
        assert id(obj) not in seen, f"{name} and {seen.get(id(obj))} are the same object"
        seen[id(obj)] = name


def test_nothing_public_is_exported_by_accident() -> None:
    for name, value in vars(polyproc).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", "").startswith("polyproc"):
            assert name in polyproc.__all__, f"polyproc.{name} is public but not in __all__"
    assert dir(polyproc) == sorted(polyproc.__all__)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError):
        polyproc.no_such_thing  # type: ignore[attr-defined]  # noqa: B018


def test_the_stdlib_names_are_all_there() -> None:
    # ``reducer`` is the stdlib's pluggable pickler (a context attribute); polyproc's serializer
    # is carried by the Context instead, so the name has no meaning here.
    missing = set(multiprocessing.__all__) - set(polyproc.__all__) - {"reducer"}
    assert not missing


def test_error_names() -> None:
    e = polyproc.errors
    for name in ("ProcessError", "BufferTooShort", "AuthenticationError", "TimeoutError"):
        assert issubclass(getattr(polyproc, name), e.PolyprocError)
        assert issubclass(getattr(polyproc, name), e.ProcessError)
    assert issubclass(polyproc.TimeoutError, builtins.TimeoutError)
    assert issubclass(e.SerializationError, e.ProcessError)
    assert issubclass(e.ProtocolError, OSError) and issubclass(e.ProtocolError, e.PolyprocError)


@pytest.mark.parametrize("face", ["process", "context", "connection"])
def test_stdlib_named_faces(face: str) -> None:
    module = importlib.import_module(f"polyproc.{face}")
    for name in module.__all__:
        assert hasattr(module, name), f"polyproc.{face}.{name}"
    stdlib = importlib.import_module(f"multiprocessing.{face}")
    wanted = {
        "process": {"BaseProcess", "current_process", "active_children", "parent_process"},
        "context": {
            "Process",
            "ProcessError",
            "BufferTooShort",
            "TimeoutError",
            "AuthenticationError",
            "BaseContext",
            "ForkProcess",
            "SpawnProcess",
            "ForkServerProcess",
        },
        "connection": {"Client", "Listener", "Pipe", "wait", "Connection"},
    }[face]
    assert wanted <= set(dir(stdlib))  # what users import from the stdlib module ...
    assert wanted <= set(dir(module))  # ... they import from ours


def test_faces_are_the_same_objects() -> None:
    import polyproc.context
    import polyproc.process

    assert polyproc.process.Process is polyproc.Process
    assert polyproc.process.current_process is polyproc.current_process
    assert polyproc.context.Process is polyproc.Process
    assert polyproc.context.ProcessError is polyproc.ProcessError


# -- forbidden imports ---------------------------------------------------------------------------

_FORBIDDEN = ("multiprocessing", "concurrent.futures.process")


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in _FORBIDDEN)


def _python_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    return files


def test_source_never_imports_multiprocessing() -> None:
    offenders = []
    for path in _python_files():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, (ast.Name, ast.Attribute))
                and getattr(node.func, "id", getattr(node.func, "attr", ""))
                in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                if _is_forbidden(name):
                    offenders.append(f"{path.relative_to(SRC.parent)}:{node.lineno} imports {name}")
    assert not offenders


def test_a_live_interpreter_never_loads_multiprocessing() -> None:
    """Import polyproc, start a child with each method: neither side loads the stdlib's engine."""
    program = """
import sys
import polyproc

def report(conn):
    conn.send(sorted(m for m in sys.modules if m.startswith("multiprocessing")
                     or m == "concurrent.futures.process"))

if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        r, w = polyproc.Pipe(duplex=False)
        p = polyproc.get_context(method).Process(target=report, args=(w,))
        p.start()
        w.close()
        assert r.recv() == [], method
        p.join()
    loaded = [m for m in sys.modules if m.startswith("multiprocessing")
              or m == "concurrent.futures.process"]
    assert not loaded, loaded
    print("clean")
"""
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        cwd=str(SRC.parent),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- layers ---------------------------------------------------------------------------------------

#: docs/architecture.md, lowest first. A module not listed here fails the test: place it there.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "_pool_errors", "_importhook", "_serialize", "_context", "util"),
    1: ("_transport",),
    2: ("_protocol",),
    3: ("_launch",),
    4: ("_process", "_parent", "_connection", "_listener", "_shm", "_sync", "_queues"),
    5: ("_pool", "_manager"),
    6: (
        "__init__",
        "_api",
        "pool",
        "managers",
        "connection",
        "queues",
        "synchronize",
        "sharedctypes",
        "shared_memory",
        "process",
        "context",
        "futures",
        "dummy",
        "heap",
        "reduction",
        "forkserver",
    ),
    7: ("cli", "_tour", "backends", "_bench", "_bench_run", "__main__"),
}
_LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}

#: Upward imports allowed *inside functions* (resolved at call time, never at import), and why.
#: Keyed by (importing top-level module, imported top-level module).
#: (The factories live in the public layer, ``polyproc.context``, and launchers take a
#: ``LaunchSpec``, so neither ``_context`` nor ``_launch`` reaches up for them; and
#: tests/foundation/test_import_graph.py checks that no import, lazy or not, makes a circle.)
LAZY_UPWARD: dict[tuple[str, str], str] = {
    (
        "_launch",
        "_connection",
    ): "spawn and forkserver talk to the new interpreter over a Connection",
    ("_pool", "backends"): "a pool's backend= (use_backend, POLYPROC_BACKEND) picks its engine; "
    "a cluster plugin is loaded by name only when one is asked for",
}


def _top(module: str) -> str | None:
    """``polyproc._launch.fork`` -> ``_launch``; ``polyproc`` -> ``__init__``; others -> None."""
    parts = module.split(".")
    if parts[0] != "polyproc":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module, line, lazy) for each polyproc import run outside ``if TYPE_CHECKING``."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit_one(stmt, lazy)
                continue
            visit_one(child, lazy)

    def visit_one(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:  # ``from . import x``: x may be a module
                found.append(
                    (f"{module}.{a.name}" if not node.module else module, node.lineno, lazy)
                )
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(node, True)
        else:
            visit(node, lazy)

    visit(ast.parse(path.read_text()), False)
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(
        {
            _top(".".join(p.relative_to(SRC.parent).with_suffix("").parts)) or "?"
            for p in _python_files()
        }
        - set(_LAYER_OF)
    )
    assert not unplaced, f"place these in docs/architecture.md and LAYERS here: {unplaced}"


def test_lower_layers_never_import_higher_ones() -> None:
    problems = []
    for path in _python_files():
        me = _top(".".join(path.relative_to(SRC.parent).with_suffix("").parts))
        if me not in _LAYER_OF:
            continue  # reported by test_every_module_has_a_layer
        for module, line, lazy in _imports(path):
            target = _top(module)
            if target is None or target not in _LAYER_OF:
                continue
            if _LAYER_OF[target] <= _LAYER_OF[me]:
                continue
            if lazy and (me, target) in LAZY_UPWARD:
                continue
            where = f"{path.relative_to(SRC.parent)}:{line}"
            kind = "inside a function" if lazy else "at import time"
            problems.append(
                f"{where}: layer {_LAYER_OF[me]} {me} imports layer "
                f"{_LAYER_OF[target]} {module} {kind}"
            )
    assert not problems, "\n".join(problems)


def test_import_polyproc_stays_light() -> None:
    """``import polyproc`` is on the path of every spawned child: no heavy layer at import."""
    program = (
        "import sys, polyproc; heavy = [m for m in ('polyproc._pool.engine', "
        "'polyproc._manager.server', 'numpy', 'polyproc.futures') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, env=_env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve_to_existing_modules() -> None:
    for module, _attr in polyproc._LAZY.values():  # type: ignore[attr-defined]
        assert importlib.util.find_spec(module) is not None, module


# -- public module names ---------------------------------------------------------------------------

_FACES = (
    "polyproc",
    "polyproc.process",
    "polyproc.context",
    "polyproc.pool",
    "polyproc.managers",
    "polyproc.queues",
    "polyproc.synchronize",
    "polyproc.connection",
    "polyproc.sharedctypes",
    "polyproc.shared_memory",
    "polyproc.futures",
)


def test_public_classes_name_their_public_module() -> None:
    """As the stdlib shows ``multiprocessing.pool.Pool``, we show ``polyproc.pool.Pool``."""
    import polyproc.connection
    import polyproc.managers
    import polyproc.pool
    import polyproc.queues
    import polyproc.shared_memory
    import polyproc.synchronize

    assert repr(polyproc.Process) == "<class 'polyproc.Process'>"
    assert repr(polyproc.pool.Pool) == "<class 'polyproc.pool.Pool'>"
    assert repr(polyproc.managers.BaseManager) == "<class 'polyproc.managers.BaseManager'>"
    assert polyproc.managers.SyncManager.__module__ == "polyproc.managers"
    assert polyproc.synchronize.Lock.__module__ == "polyproc.synchronize"
    assert polyproc.queues.Queue.__module__ == "polyproc.queues"
    assert polyproc.connection.Connection.__module__ == "polyproc.connection"
    assert polyproc.shared_memory.SharedMemory.__module__ == "polyproc.shared_memory"
    assert polyproc.context.SpawnProcess.__module__ == "polyproc.context"
    assert polyproc.Context.__module__ == "polyproc.context"


@pytest.mark.parametrize("face", _FACES)
def test_every_public_class_pickles_by_its_public_name(face: str) -> None:
    """pickle finds a class by ``__module__`` + ``__qualname__``: that must be the class."""
    import pickle

    module = importlib.import_module(face)
    for name in module.__all__:
        obj = getattr(module, name)
        if not isinstance(obj, type) or not obj.__module__.startswith("polyproc"):
            continue
        home = importlib.import_module(obj.__module__)
        assert getattr(home, obj.__qualname__, None) is obj, f"{face}.{name}: {obj.__module__}"
        assert pickle.loads(pickle.dumps(obj)) is obj


def test_public_objects_pickle_across_processes(ctx: Any) -> None:
    """A Lock, a Queue and public classes reach a child and come back under their public names."""
    import polyproc.managers
    import polyproc.pool

    from . import _targets

    lock, queue = ctx.Lock(), ctx.Queue()
    classes = [
        polyproc.Process,
        polyproc.pool.Pool,
        polyproc.managers.BaseManager,
        polyproc.context.SpawnProcess,
    ]
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_targets.use_and_describe, args=(w, lock, queue, classes))
    p.start()
    w.close()
    seen = r.recv()
    assert queue.get(timeout=10) == "from the child"
    p.join(10)
    r.close()
    queue.close()
    assert p.exitcode == 0
    assert seen["lock"] == "polyproc.synchronize.Lock"
    assert seen["queue"] == "polyproc.queues.Queue"
    assert seen["classes"] == classes
    assert seen["me"] == f"polyproc.context.{type(p).__name__}"


def test_a_process_subclass_pickles_across(ctx: Any) -> None:
    from . import _targets

    cls = _targets.GREETERS[ctx.start_method]
    r, w = ctx.Pipe(duplex=False)
    p = cls(w, "you")
    p.start()
    w.close()
    assert r.recv().startswith(f"hello you from {cls.__name__}-")  # a user's class: its name
    p.join(10)
    r.close()
    assert p.exitcode == 0


def test_no_module_is_over_600_lines() -> None:
    """A module past ~600 lines is doing two jobs (STYLE.md): split it along its seam."""
    root = Path(polyproc.__file__).parent
    long = {
        str(p.relative_to(root)): n
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"modules over 600 lines: {long}"
