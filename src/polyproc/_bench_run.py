"""The bench's model and runner: cases, finding them, running each impl in a fresh interpreter.

``_bench.py`` (the driver behind ``polyproc bench``) reads what this returns and
prints it (table, Markdown, JSON, plot); this module prints nothing but the one
marker line of a ``--one`` child::

    discover(bench_dir) ─► [Discovered(module, Case)] ─► select(quick, filters)
    run_case(d) ─► for each round, for each impl (interleaved):
                     run_one ─► python -m polyproc._bench --one MODULE CASE IMPL
                                  └─ run_in_child: the workload once, one marker line
                 ─► CaseResult(samples, medians, ratio, met)
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Case",
    "CaseResult",
    "Discovered",
    "RESULT_MARKER",
    "MISSING_PREFIX",
    "BUILTIN_IMPLS",
    "FLOOR",
    "find_bench_dir",
    "discover",
    "select",
    "impl_available",
    "child_env",
    "run_one",
    "run_case",
    "run_in_child",
]


#: The child prints exactly one line starting with this; anything else it prints is noise.
RESULT_MARKER = "POLYPROC_BENCH_RESULT "
#: How a child says "the workload needs a package that is not installed" (not a failure).
MISSING_PREFIX = "missing: "
#: Implementations that need nothing beyond polyproc and Python itself.
BUILTIN_IMPLS = ("polyproc", "stdlib")
#: The machine's floor for a case (bare syscalls, memcpy): shown beside the libraries so
#: that every ratio sits next to what this machine can do in the same run.
FLOOR = "floor"


@dataclass(frozen=True)
class Case:
    """One benchmark figure measured for several implementations.

    ``impls`` maps an implementation name to a zero-argument function that runs
    the workload once (in a fresh process) and returns the figure in ``unit``.
    ``target`` is the ratio polyproc must reach against ``baseline`` (oriented so
    that bigger is better), or None when the case is informative only.
    """

    name: str
    unit: str
    impls: Mapping[str, Callable[[], float]]
    baseline: str = "stdlib"
    higher_is_better: bool = True
    target: float | None = None
    quick: bool = False
    repeat: int = 5
    note: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def ratio(self, ours: float, base: float) -> float:
        """polyproc relative to the baseline, > 1 meaning polyproc is better."""
        if ours <= 0 or base <= 0:
            return float("nan")
        return ours / base if self.higher_is_better else base / ours


# -- finding and loading the cases ----------------------------------------------------------


def _has_benches(d: Path) -> bool:
    return d.is_dir() and any(d.glob("bench_*.py"))


def find_bench_dir(*starts: Path) -> Path | None:
    """``$POLYPROC_BENCH_DIR``, else the first ``bench/`` found walking up from each start.

    The defaults are the current directory and this package's own location, so a
    source checkout finds its ``bench/`` from anywhere inside it.
    """
    env = os.environ.get("POLYPROC_BENCH_DIR")
    if env:
        return Path(env).resolve() if _has_benches(Path(env)) else None
    for start in starts or (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if _has_benches(d / "bench"):
                return (d / "bench").resolve()
    return None


@dataclass(frozen=True)
class Discovered:
    """A case and the bench module (by import name) it came from."""

    module: str
    case: Case


def _import_bench(module: str, bench_dir: Path) -> Any:
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    return importlib.import_module(module)


def discover(bench_dir: Path) -> tuple[list[Discovered], dict[str, str]]:
    """Every case of every ``bench_*.py`` module, and the modules that failed to import."""
    found: list[Discovered] = []
    broken: dict[str, str] = {}
    for path in sorted(bench_dir.glob("bench_*.py")):
        name = path.stem
        try:
            cases = _import_bench(name, bench_dir).CASES
        except Exception as exc:  # a broken module must not hide the others
            broken[name] = f"{type(exc).__name__}: {exc}"
            continue
        found.extend(Discovered(name, c) for c in cases)
    return found, broken


def select(
    cases: Iterable[Discovered], *, quick: bool = False, filters: Sequence[str] = ()
) -> list[Discovered]:
    """The cases to run: ``quick`` ones only if asked; any filter matching module or name."""
    out = []
    for d in cases:
        if quick and not d.case.quick:
            continue
        label = f"{d.module}:{d.case.name}".lower()
        if filters and not any(f.lower() in label for f in filters):
            continue
        out.append(d)
    return out


def impl_available(impl: str) -> bool:
    """polyproc and stdlib always run; any other impl needs the package it is named after."""
    return impl in BUILTIN_IMPLS or impl == FLOOR or importlib.util.find_spec(impl) is not None


# -- running ------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """Every sample of one case, and what they add up to."""

    module: str
    case: Case
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: why the case did not run at all (a module it needs is not installed), or None
    missing: str | None = None

    def median(self, impl: str) -> float | None:
        s = self.samples.get(impl)
        return statistics.median(s) if s else None

    @property
    def ratio(self) -> float | None:
        ours, base = self.median("polyproc"), self.median(self.case.baseline)
        if ours is None or base is None:
            return None
        return self.case.ratio(ours, base)

    @property
    def absolute(self) -> float | None:
        raw = self.case.extra.get("absolute")
        return float(raw) if raw is not None else None

    @property
    def met(self) -> bool | None:
        """True/False against the target(s); None when the case has none or lacks figures."""
        checks: list[bool] = []
        if self.case.target is not None:
            r = self.ratio
            if r is None or math.isnan(r):
                return None
            checks.append(r >= self.case.target)
        if self.absolute is not None:
            ours = self.median("polyproc")
            if ours is None:
                return None
            checks.append(
                ours >= self.absolute if self.case.higher_is_better else ours <= self.absolute
            )
        return all(checks) if checks else None


def child_env(bench_dir: Path) -> dict[str, str]:
    """The fresh interpreter imports this very polyproc and the bench modules by name.

    Bytecode caching is on in the children (see below), whatever the shell says.

    Both go on PYTHONPATH (not only sys.path) because the workload's own children,
    spawned by polyproc or the stdlib, must import ``bench_<area>`` too.
    """
    env = dict(os.environ)
    # Measure as an installed package runs: with its bytecode cached. A dev shell's
    # PYTHONDONTWRITEBYTECODE would make every fresh child recompile each module
    # edited since the last cached compile (ms per start, on the polyproc side only:
    # the stdlib's bytecode is always cached). Dropped for every impl alike.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    parts = [str(bench_dir), pkg_parent] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["POLYPROC_BENCH_DIR"] = str(bench_dir)
    return env


def run_one(
    bench_dir: Path, module: str, case: str, impl: str, *, timeout: float = 300.0
) -> tuple[float | None, str | None]:
    """Run one impl once in a fresh interpreter: (figure, None) or (None, error text)."""
    cmd = [sys.executable, "-m", "polyproc._bench", "--one", module, case, impl]
    try:
        proc = subprocess.run(
            cmd,
            cwd=bench_dir,
            env=child_env(bench_dir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            reply = json.loads(line[len(RESULT_MARKER) :])
            if "error" in reply:
                return None, str(reply["error"])
            return float(reply["value"]), None
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return None, f"exit code {proc.returncode}, no result: {tail}"


def run_case(
    bench_dir: Path, d: Discovered, *, repeat: int | None = None, timeout: float = 300.0
) -> CaseResult:
    """All impls of one case, ``repeat`` rounds each, interleaved round by round."""
    res = CaseResult(d.module, d.case)
    impls = [i for i in d.case.impls if impl_available(i)]
    res.skipped = [i for i in d.case.impls if i not in impls]
    for _ in range(repeat or d.case.repeat):
        for impl in impls:
            if impl in res.errors:
                continue  # it failed once: the rest of its runs would fail the same way
            value, error = run_one(bench_dir, d.module, d.case.name, impl, timeout=timeout)
            if error is not None and error.startswith(MISSING_PREFIX):
                # The workload needs an optional package (NumPy) that is not installed: the
                # case is skipped with a note, as the tour skips it, not counted as an error.
                res.missing = error.removeprefix(MISSING_PREFIX)
                res.skipped = list(d.case.impls)
                res.samples.clear()
                res.errors.clear()
                return res
            if error is not None:
                res.errors[impl] = error
            elif value is not None:
                res.samples.setdefault(impl, []).append(value)
    return res


def run_in_child(module: str, case_name: str, impl: str) -> int:
    """The ``--one`` side: run one impl once here and print the marker line."""
    bench_dir = Path(os.environ.get("POLYPROC_BENCH_DIR") or Path.cwd())
    try:
        cases = {c.name: c for c in _import_bench(module, bench_dir).CASES}
        value = float(cases[case_name].impls[impl]())
        reply: dict[str, Any] = {"value": value}
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top in ("polyproc", module) or not top:  # our own code is broken: an error
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            reply = {"error": f"{MISSING_PREFIX}{top} is not installed"}
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(reply), flush=True)
    return 0 if "value" in reply else 1
