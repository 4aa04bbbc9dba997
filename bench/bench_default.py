"""The default start method (issue 11): what a short script costs, polyproc's default vs the stdlib's.

The stdlib's default on Linux before 3.14 is fork; polyproc's is ``auto`` (a pool's
first workers forked from the caller at creation, its replacements from a template
forked then, where no other thread can hold a lock). Each impl runs in a fresh
interpreter; the whole-script and import cases time a further child process, as a
user's shell would. Runs of the two impls are interleaved, round by round, so a
change in the machine's load falls on both.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from polyproc._bench import Case

SCRIPT = """
import {module} as mp

def f(x):
    return x * 2

if __name__ == "__main__":
    with mp.Pool(2) as p:
        assert p.map(f, range(4)) == [0, 2, 4, 6]
"""

RUNS = 9  # per sample: the median of these is one sample


def inc(x: int) -> int:
    return x + 1


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's machine caches bytecode
    env.pop("POLYPROC_START_METHOD", None)
    return env


def _script_seconds(module: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "short.py"
        path.write_text(SCRIPT.format(module=module))
        env = _env()
        subprocess.run([sys.executable, str(path)], env=env, check=True)  # bytecode cached
        times = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(path)], env=env, check=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def script_polyproc() -> float:
    return _script_seconds("polyproc")


def script_stdlib() -> float:
    return _script_seconds("multiprocessing")


def _import_ms(module: str) -> float:
    """``import module`` in a fresh interpreter, by ``-X importtime`` (its cumulative us)."""
    env = _env()
    samples = []
    for _ in range(RUNS):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        last = [ln for ln in err.splitlines() if ln.rstrip().endswith(f"| {module}")][-1]
        samples.append(int(last.split("|")[1]) / 1000)
    return statistics.median(samples)


def import_polyproc() -> float:
    return _import_ms("polyproc")


def import_stdlib() -> float:
    return _import_ms("multiprocessing")


def _pool_start(make: Any) -> float:
    from bench_pool import import_pool_modules

    import_pool_modules("auto")  # imports are not pool start (bench_pool._start says which)
    t0 = time.perf_counter()
    p = make()
    p.map(inc, range(2), chunksize=1)
    elapsed = time.perf_counter() - t0
    p.terminate()
    p.join()
    return elapsed * 1000


def start_polyproc() -> float:
    import polyproc

    return _pool_start(lambda: polyproc.Pool(2))


def start_stdlib() -> float:
    import multiprocessing

    return _pool_start(lambda: multiprocessing.Pool(2))


def _round_trip(pool: Any, n: int = 20) -> float:
    for _ in range(5):
        pool.apply(inc, (1,))
    t0 = time.perf_counter()
    for _ in range(n):
        pool.apply(inc, (1,))
    return (time.perf_counter() - t0) / n


def _replacement(plain_pool: Any, pool: Any, crash: bool, n: int = 20) -> float:
    """ms from a worker's end to the next answer, less a plain round trip."""
    import polyproc

    plain = _round_trip(plain_pool)
    plain_pool.terminate()
    plain_pool.join()
    _round_trip(pool, 1)
    total = 0.0
    for _ in range(n):
        if crash:
            try:
                pool.apply(os._exit, (3,))
            except polyproc.WorkerLostError:
                pass
        t0 = time.perf_counter()
        pool.apply(inc, (1,))
        total += time.perf_counter() - t0
    pool.terminate()
    pool.join()
    return max(0.0, total / n - plain) * 1000


def replace_polyproc() -> float:
    import polyproc

    return _replacement(polyproc.Pool(1), polyproc.Pool(1), crash=True)


def replace_stdlib() -> float:
    # The stdlib's Pool hangs on a crash (bpo-22393): its nearest figure is a worker
    # replaced after each task (maxtasksperchild=1), forked by its handler thread.
    import multiprocessing

    return _replacement(
        multiprocessing.Pool(1), multiprocessing.Pool(1, maxtasksperchild=1), crash=False
    )


CASES: list[Case] = [
    Case(
        "short script as a process (import, Pool(2), map 4, exit)",
        "ms",
        impls={"polyproc": script_polyproc, "stdlib": script_stdlib},
        higher_is_better=False,
        target=1 / 1.1,
        quick=True,
        repeat=7,
        note="issue 11: <= 1.1x the stdlib's fork default",
    ),
    Case(
        "import polyproc vs import multiprocessing",
        "ms",
        impls={"polyproc": import_polyproc, "stdlib": import_stdlib},
        higher_is_better=False,
        target=None,
        quick=True,
        repeat=3,
        extra={"absolute": "25"},
        note="issue 11: <= 25 ms",
    ),
    Case(
        "pool start + first map, library defaults",
        "ms",
        impls={"polyproc": start_polyproc, "stdlib": start_stdlib},
        higher_is_better=False,
        target=1.0,
        quick=True,
        repeat=9,
        note="polyproc auto vs the stdlib's fork",
    ),
    Case(
        "replacement worker after a crash",
        "ms",
        impls={"polyproc": replace_polyproc, "stdlib": replace_stdlib},
        higher_is_better=False,
        target=None,
        repeat=5,
        extra={"absolute": "3"},
        note="issue 11: <= 3 ms; stdlib: maxtasksperchild=1 (it hangs on a crash)",
    ),
]

if __name__ == "__main__":  # pragma: no cover - a quick manual run
    names = sys.argv[1:] or [n for n in dir() if n.endswith(("_polyproc", "_stdlib"))]
    for name in names:
        print(name, globals()[name](), flush=True)
    os._exit(0)
