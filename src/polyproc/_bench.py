"""Benchmark cases, and the runner behind ``polyproc bench``.

A case measures one figure (a rate or a duration) for several implementations
(polyproc, the stdlib, loky, mpire ...). ``polyproc bench`` runs each
implementation in a fresh interpreter, ``repeat`` times, takes the median, and
prints the ratio of polyproc to the baseline, oriented so that > 1 is better.

::

    polyproc bench ─► find_bench_dir() ─► discover(): import bench/bench_*.py, read CASES
          │
          └─► for each case, for r in range(repeat), for each impl (interleaved, so a
              noisy neighbour hurts every impl alike):
                 python -m polyproc._bench --one MODULE CASE IMPL   (fresh interpreter)
                     └─ imports MODULE, calls case.impls[IMPL](), prints one marker line
                        "POLYPROC_BENCH_RESULT {json}" that the parent parses
          ─► CaseResult (samples, medians, ratio, met) ─► table / --json / --markdown / --plot

Implementations other than ``polyproc`` and ``stdlib`` are named after the
package they need (``loky``, ``mpire``); they run only when that package is
installed. A case may set ``extra={"absolute": "25"}``: polyproc's median must
then also be at most (or, for rates, at least) that figure, as when an issue
asks for "<= 25 us" rather than a ratio.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "Case",
    "CaseResult",
    "Discovered",
    "find_bench_dir",
    "discover",
    "select",
    "run_case",
    "format_table",
    "format_markdown",
    "results_json",
    "plot_ratios",
    "bench_main",
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


# -- reporting ----------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if x == 0:
        return "0"
    mag = abs(x)
    if mag >= 1e6:
        return f"{x / 1e6:.2f}M"
    if mag >= 1e4:
        return f"{x / 1e3:.1f}k"
    if mag >= 100:
        return f"{x:.0f}"
    if mag >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _target_text(r: CaseResult) -> str:
    parts = []
    if r.case.target is not None:
        parts.append(f">={r.case.target:g}x")
    if r.absolute is not None:
        parts.append(f"{'>=' if r.case.higher_is_better else '<='}{r.absolute:g}")
    return " ".join(parts) or "-"


def format_table(results: Sequence[CaseResult]) -> str:
    """Medians side by side, ratio vs the baseline (> 1 is better), target and verdict."""
    others = list(dict.fromkeys(i for r in results for i in r.case.impls if i not in BUILTIN_IMPLS))
    impls = ["polyproc", "stdlib", *others]
    head = ["case", "unit", *impls, "ratio", "target", "met"]
    rows = [head]
    for r in results:
        unit = r.case.unit + ("" if r.case.higher_is_better else " (lower)")
        cells = [f"{r.module.removeprefix('bench_')}: {r.case.name}", unit]
        for i in impls:
            if i in r.errors:
                cells.append("error")
            elif i in r.skipped:
                cells.append("skipped" if r.missing else "n/a")
            else:
                cells.append(_fmt(r.median(i)))
        ratio = r.ratio
        cells.append("-" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x")
        cells.append(_target_text(r))
        cells.append({True: "yes", False: "NO", None: "-"}[r.met])
        rows.append(cells)
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if c < 2 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    errors = [
        f"  {r.module}:{r.case.name} [{i}]: {e}" for r in results for i, e in r.errors.items()
    ]
    if errors:
        lines += ["", "errors:", *errors]
    skips = [f"  {r.module}:{r.case.name}: {r.missing}" for r in results if r.missing]
    if skips:
        lines += ["", "skipped (an optional package is missing):", *skips]
    return "\n".join(lines)


def format_markdown(results: Sequence[CaseResult]) -> str:
    """The same table as Markdown, for the README (``--markdown PATH``)."""
    cols = ["polyproc", "stdlib"] + ([FLOOR] if any(FLOOR in r.case.impls for r in results) else [])
    lines = [
        f"| case | unit | {' | '.join(cols)} | ratio | target | met |",
        f"|---|---|{'---:|' * len(cols)}---:|---|---|",
    ]
    for r in results:
        unit = r.case.unit + ("" if r.case.higher_is_better else ", lower is better")
        figs = ["error" if i in r.errors else _fmt(r.median(i)) for i in cols]
        ratio = r.ratio
        rtext = "-" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x"
        verdict = {True: "yes", False: "**no**", None: "-"}[r.met]
        target = _target_text(r).replace(">=", "≥ ").replace("<=", "≤ ")
        lines.append(
            f"| {r.module.removeprefix('bench_')}: {r.case.name} | {unit} | "
            f"{' | '.join(figs)} | {rtext} | {target} | {verdict} |"
        )
    info = machine_info()
    lines += [
        "",
        f"Medians of `polyproc bench` on {info['cpu']} x{info['cpus']}, Python "
        f"{info['python']}, {info['platform']}, {info['date']}.",
    ]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, for the README and --json."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("polyproc", "loky", "mpire", "numpy", "cloudpickle"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # not installed (or run from a source tree)
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def results_json(results: Sequence[CaseResult]) -> dict[str, Any]:
    cases = []
    for r in results:
        cases.append(
            {
                "module": r.module,
                "name": r.case.name,
                "unit": r.case.unit,
                "higher_is_better": r.case.higher_is_better,
                "baseline": r.case.baseline,
                "target": r.case.target,
                "absolute": r.absolute,
                "note": r.case.note,
                "samples": r.samples,
                "medians": {i: r.median(i) for i in r.samples},
                "ratio": r.ratio,
                "met": r.met,
                "errors": r.errors,
                "skipped": r.skipped,
                "missing": r.missing,
            }
        )
    return {"machine": machine_info(), "cases": cases}


def plot_ratios(results: Sequence[CaseResult], path: Path) -> None:
    """A bar chart of polyproc's ratio per case (log scale, 1 = the stdlib), targets marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'polyproc[plot]'") from None
    rows = [
        (f"{r.module.removeprefix('bench_')}: {r.case.name}", r.ratio, r.case.target)
        for r in results
        if r.ratio is not None and not math.isnan(r.ratio)
    ]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    labels = [x[0] for x in rows]
    ratios = [x[1] for x in rows]
    colors = ["tab:green" if t is None or v >= t else "tab:red" for _, v, t in rows]
    ax.barh(labels, ratios, color=colors)
    for y, (_, _, t) in enumerate(rows):
        if t is not None:
            ax.plot([t, t], [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("polyproc vs baseline (> 1 is better; black mark = target)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="only the quick subset (about a minute)")
    p.add_argument("--json", metavar="PATH", type=Path, help="write every sample and median here")
    p.add_argument("--plot", metavar="PATH.png", type=Path, help="bar chart of ratios (matplotlib)")
    p.add_argument("--markdown", metavar="PATH", type=Path, help="the table as Markdown (README)")
    p.add_argument(
        "--filter",
        metavar="SUBSTR",
        action="append",
        default=[],
        help="only cases whose 'module:name' contains SUBSTR (repeatable)",
    )
    p.add_argument("--repeat", metavar="N", type=int, help="runs per impl (default: per case)")
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=300.0,
        help="seconds one run may take (default 300)",
    )
    p.add_argument(
        "--bench-dir",
        metavar="DIR",
        type=Path,
        help="where bench_*.py live (default: $POLYPROC_BENCH_DIR or ./bench upwards)",
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")


def _line(r: CaseResult) -> str:
    figures = ", ".join(f"{i} {_fmt(r.median(i))}" for i in r.samples)
    verdict = {True: "met", False: "MISSED", None: ""}[r.met]
    ratio = r.ratio
    rtext = "" if ratio is None or math.isnan(ratio) else f" -> {ratio:.2f}x"
    err = f" [errors: {', '.join(r.errors)}]" if r.errors else ""
    if r.missing:
        return f"{r.case.name}: skipped, {r.missing}"
    return f"{r.case.name}: {figures} {r.case.unit}{rtext} {verdict}{err}".rstrip()


def bench_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``polyproc bench``: 0 when every run produced a figure, 1 when any errored, 2 on bad usage."""
    out = out or sys.stdout
    bench_dir = args.bench_dir.resolve() if args.bench_dir else find_bench_dir()
    if bench_dir is None or not _has_benches(bench_dir):
        print(
            "polyproc bench: no bench/ directory with bench_*.py found; run it from a "
            "polyproc checkout, or set POLYPROC_BENCH_DIR or --bench-dir",
            file=sys.stderr,
        )
        return 2
    found, broken = discover(bench_dir)
    for name, err in broken.items():
        print(f"polyproc bench: cannot import {name}: {err}", file=sys.stderr)
    chosen = select(found, quick=args.quick, filters=args.filter)
    if args.list:
        for d in chosen:
            flags = " (quick)" if d.case.quick else ""
            print(f"{d.module}:{d.case.name} [{', '.join(d.case.impls)}]{flags}", file=out)
        return 0
    if not chosen:
        print("polyproc bench: no case matches", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        # Checked before the run, not after minutes of benchmarks that could not be plotted.
        print(
            "polyproc bench: --plot needs matplotlib: pip install 'polyproc[plot]'", file=sys.stderr
        )
        return 2
    print(
        f"running {len(chosen)} cases from {bench_dir} (each run in a fresh interpreter)",
        file=out,
        flush=True,
    )
    results = []
    for n, d in enumerate(chosen, 1):
        r = run_case(bench_dir, d, repeat=args.repeat, timeout=args.timeout)
        results.append(r)
        print(f"[{n}/{len(chosen)}] {d.module}: {_line(r)}", file=out, flush=True)
    print("\nmedians; ratio = polyproc vs the baseline, > 1 is better\n", file=out)
    print(format_table(results), file=out)
    info = machine_info()
    print(f"\n{info['cpu']} x{info['cpus']}, Python {info['python']}, {info['platform']}", file=out)
    if args.json:
        args.json.write_text(json.dumps(results_json(results), indent=2) + "\n")
        print(f"wrote {args.json}", file=out)
    if args.markdown:
        args.markdown.write_text(format_markdown(results))
        print(f"wrote {args.markdown}", file=out)
    status = 1 if broken or any(r.errors for r in results) else 0
    if args.plot:
        try:
            plot_ratios(results, args.plot)
            print(f"wrote {args.plot}", file=out)
        except ImportError as exc:
            print(f"polyproc bench: {exc}", file=sys.stderr)
            status = status or 2
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m polyproc._bench``: the whole suite, or ``--one MODULE CASE IMPL`` for a child."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:
        if len(argv) != 4:
            print("usage: python -m polyproc._bench --one MODULE CASE IMPL", file=sys.stderr)
            return 2
        return run_in_child(argv[1], argv[2], argv[3])
    parser = argparse.ArgumentParser(prog="python -m polyproc._bench")
    add_arguments(parser)
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
