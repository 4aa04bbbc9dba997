"""Pool start A/B: ``Pool(2)`` plus a first ``map`` in fresh processes, split in two.

    python bench/pool_start_ab.py [-n ROUNDS] [--extra MODS] [NAME=SRC ...]

Each round runs one fresh interpreter per source tree (``NAME=SRC``: a ``src`` folder
holding ``polyproc``; default: this checkout's) and one for the stdlib's fork ``Pool``,
in alternating order, and prints the medians of: total, ``Pool(2)`` alone, the first
``map`` alone (ms), and the caller's CPU in each (``time.process_time``: its threads
included). ``--extra`` imports modules first: the process's size and what it has
imported move this figure (docs/architecture.md, "Stop 23"), so compare trees in one
run, never across runs. ``polyproc bench``'s case is one child per sample, inside the
bench's own process; this is the same work in a script of the size a user writes.
"""

from __future__ import annotations

import os
import sys
import time

# Only these at the top: the child is this file too, and what it imports is part of what
# is measured (the driver's own imports are in ``main``).
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def inc(x: int) -> int:
    return x + 1


def _child(impl: str) -> None:
    for name in filter(None, os.environ.get("POOL_AB_EXTRA", "").split(",")):
        __import__(name)
    # What either pool's creation imports lazily, imported before the clock (as the bench).
    import multiprocessing.pool
    import multiprocessing.popen_fork
    import multiprocessing.queues
    import multiprocessing.synchronize  # noqa: F401

    import polyproc._launch.fork
    import polyproc._pool.pool  # noqa: F401

    make = multiprocessing.Pool if impl == "stdlib" else polyproc._pool.pool.Pool
    t0, c0 = time.perf_counter(), time.process_time()
    p = make(2)
    t1, c1 = time.perf_counter(), time.process_time()
    p.map(inc, range(2), chunksize=1)
    t2, c2 = time.perf_counter(), time.process_time()
    figures = (t2 - t0, t1 - t0, t2 - t1, c1 - c0, c2 - c1)
    print(" ".join(f"{x * 1e3:.3f}" for x in figures), flush=True)
    p.terminate()
    p.join()


def main() -> None:
    import argparse
    import statistics
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=30)
    ap.add_argument("--extra", default="", help="modules to import first, comma-separated")
    ap.add_argument("trees", nargs="*", help="NAME=SRC (default: this checkout's src)")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees) or {"polyproc": SRC}
    order = [*trees, "stdlib"]
    samples: dict[str, list[list[float]]] = {k: [] for k in order}
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            env = dict(os.environ, POOL_AB_EXTRA=args.extra)
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # as the bench: bytecode cached
            env.pop("POLYPROC_START_METHOD", None)  # library defaults
            env["PYTHONPATH"] = trees.get(name, SRC)
            impl = "stdlib" if name == "stdlib" else "polyproc"
            out = subprocess.run(
                [sys.executable, __file__, "--child", impl],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            samples[name].append([float(x) for x in out.split()])
    base = statistics.median(s[0] for s in samples["stdlib"])
    print(f"{args.rounds} rounds; ms, medians: total = Pool(2) + first map; caller CPU")
    for name in order:
        total, create, first, ccpu, mcpu = (
            statistics.median(c) for c in zip(*samples[name], strict=True)
        )
        print(
            f"{name:10s} {total:6.2f} = {create:5.2f} + {first:5.2f}   "
            f"cpu {ccpu:5.2f} + {mcpu:5.2f}   stdlib/this {base / total:.2f}x"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2])
    else:
        main()
