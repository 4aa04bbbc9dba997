"""The driver behind ``polyproc bench``: run the chosen cases, print and write the figures.

The cases, their discovery and the fresh-interpreter runs are ``_bench_run.py``'s
(re-exported here); this module is the command line and the output: table,
Markdown, JSON, plot.

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
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ._bench_run import BUILTIN_IMPLS as BUILTIN_IMPLS
from ._bench_run import FLOOR as FLOOR
from ._bench_run import MISSING_PREFIX as MISSING_PREFIX
from ._bench_run import RESULT_MARKER as RESULT_MARKER
from ._bench_run import Case as Case
from ._bench_run import CaseResult as CaseResult
from ._bench_run import Discovered as Discovered
from ._bench_run import _has_benches
from ._bench_run import child_env as child_env
from ._bench_run import discover as discover
from ._bench_run import find_bench_dir as find_bench_dir
from ._bench_run import impl_available as impl_available
from ._bench_run import run_case as run_case
from ._bench_run import run_in_child as run_in_child
from ._bench_run import run_one as run_one
from ._bench_run import select as select

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
