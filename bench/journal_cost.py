"""What the exactly-once journal costs: ``Pool(2).map`` of 100,000 tiny tasks, side by side.

::

    python bench/journal_cost.py [--tasks N] [--runs R] [--json PATH]

Each line runs in a fresh interpreter, interleaved run by run so that load on the
machine falls on all of them alike: the stdlib's ``multiprocessing.Pool``, polyproc
from ``--base`` if given (another checkout's ``src``, e.g. main's), polyproc from this checkout,
and this checkout with the journal switched off (what the journal itself costs).
All under fork. Each run: a warm-up map, then the best of 3 maps per shape; the
figure is the median over runs, in milliseconds. Results of each shape: ``x * 2``
(int), ``(x, x * 2)`` (a pair), ``str(x)``, ``[x, (x, x)]`` (nested), ``{"k": x}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1] / "src"


def num(x: int) -> int:
    return x * 2


def pair(x: int) -> tuple[int, int]:
    return (x, x * 2)


def text(x: int) -> str:
    return str(x)


def nested(x: int) -> list[Any]:
    return [x, (x, x)]


def mapping(x: int) -> dict[str, int]:
    return {"k": x}


SHAPES = {"int": num, "pair": pair, "str": text, "nested": nested, "dict": mapping}


def child(impl: str, tasks: int) -> dict[str, float]:
    """One run in this interpreter: best of 3 per shape, in ms."""
    if impl == "stdlib":
        import multiprocessing as mod
    else:
        import polyproc as mod

        if impl == "no-journal":
            from polyproc._pool import worker

            def _none() -> Any:
                raise OSError("journal switched off for the comparison")

            setattr(worker, "Journal", _none)  # noqa: B010 - workers forked after this
    ctx: Any = mod.get_context("fork")
    out = {}
    with ctx.Pool(2) as pool:
        pool.map(num, range(2000))
        for name, fn in SHAPES.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                got = pool.map(fn, range(tasks))
                best = min(best, time.perf_counter() - t0)
                assert len(got) == tasks and got[7] == fn(7)
            out[name] = best * 1000
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--base", type=Path, help="another checkout's src/ to compare (e.g. main's)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    impls: dict[str, Path | None] = {"stdlib": None, "this": HERE, "no-journal": HERE}
    if args.base is not None:
        impls = {"stdlib": None, "base": args.base, "this": HERE, "no-journal": HERE}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in impls}
    for _ in range(args.runs):
        for impl, src in impls.items():
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = str(src)
            mode = (
                "stdlib" if src is None else ("no-journal" if impl == "no-journal" else "polyproc")
            )
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(args.tasks)],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                check=True,
            )
            runs[impl].append(json.loads(out.stdout))
    medians = {
        impl: {s: statistics.median(r[s] for r in rs) for s in SHAPES} for impl, rs in runs.items()
    }
    print(f"Pool(2).map of {args.tasks:,} tasks, fork, median of {args.runs} runs (ms)")
    base = "base" in impls
    print(
        f"{'shape':<8}"
        + "".join(f"{impl:>12}" for impl in impls)
        + "   this/stdlib"
        + ("  this/base" if base else "")
    )
    for s in SHAPES:
        row = medians
        print(
            f"{s:<8}"
            + "".join(f"{row[impl][s]:12.0f}" for impl in impls)
            + f"   {row['this'][s] / row['stdlib'][s]:11.2f}"
            + (f"  {row['this'][s] / row['base'][s]:9.2f}" if base else "")
        )
    if args.json:
        args.json.write_text(json.dumps({"tasks": args.tasks, "runs": runs, "medians": medians}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
        sys.exit(0)
    sys.exit(main())
