"""Pool and executor benchmarks: polyproc beside the stdlib, each impl in a fresh interpreter.

Every impl function builds its pool, measures, tears it down, and returns one figure.
The stdlib is imported lazily inside its functions (polyproc itself never imports it).
Where the stdlib is very slow (chunksize=1 at ~5k tasks/s), it runs fewer tasks: the
figure is a rate, so the ratio is fair and a run stays short.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from polyproc._bench import Case

WORKERS = 2


def inc(x: int) -> int:
    return x + 1


def burn(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


# -- helpers ---------------------------------------------------------------------------
def _pp_pool(method: str | None = None) -> Any:
    import polyproc

    return polyproc.get_context(method).Pool(WORKERS)


def _std_pool(method: str | None = None) -> Any:
    import multiprocessing

    return multiprocessing.get_context(method or "forkserver").Pool(WORKERS)


def _pp_exec() -> Any:
    from polyproc.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(WORKERS)


def _std_exec() -> Any:
    import concurrent.futures
    import multiprocessing

    return concurrent.futures.ProcessPoolExecutor(
        WORKERS, mp_context=multiprocessing.get_context("forkserver")
    )


def _warm(pool: Any) -> None:
    if hasattr(pool, "submit"):
        for f in [pool.submit(inc, i) for i in range(WORKERS * 4)]:
            f.result()
    else:
        pool.map(inc, range(WORKERS * 4), chunksize=1)


def _rate(n: int, run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return n / (time.perf_counter() - t0)


# -- tiny tasks, chunksize=1 -------------------------------------------------------------
def tiny_cs1_polyproc(n: int = 50_000) -> float:
    with _pp_pool() as p:
        _warm(p)
        return _rate(n, lambda: p.map(inc, range(n), chunksize=1))


def tiny_cs1_stdlib_pool(n: int = 20_000) -> float:
    with _std_pool() as p:
        _warm(p)
        return _rate(n, lambda: p.map(inc, range(n), chunksize=1))


def tiny_cs1_stdlib_executor(n: int = 5_000) -> float:
    with _std_exec() as ex:
        _warm(ex)
        return _rate(n, lambda: list(ex.map(inc, range(n), chunksize=1)))


def tiny_cs1_polyproc_executor(n: int = 50_000) -> float:
    with _pp_exec() as ex:
        _warm(ex)
        return _rate(n, lambda: list(ex.map(inc, range(n), chunksize=1)))


# -- default settings: adaptive batching ---------------------------------------------------
def exec_map_polyproc(n: int = 200_000) -> float:
    with _pp_exec() as ex:
        _warm(ex)
        return _rate(n, lambda: list(ex.map(inc, range(n))))


def exec_map_stdlib(n: int = 5_000) -> float:
    with _std_exec() as ex:
        _warm(ex)
        return _rate(n, lambda: list(ex.map(inc, range(n))))


def pool_imap_polyproc(n: int = 200_000) -> float:
    with _pp_pool() as p:
        _warm(p)
        return _rate(n, lambda: list(p.imap(inc, range(n))))


def pool_imap_stdlib(n: int = 20_000) -> float:
    with _std_pool() as p:
        _warm(p)
        return _rate(n, lambda: list(p.imap(inc, range(n))))


# -- separate submits ------------------------------------------------------------------
def submits_polyproc(n: int = 200_000) -> float:
    with _pp_exec() as ex:
        _warm(ex)
        return _rate(n, lambda: [f.result() for f in [ex.submit(inc, i) for i in range(n)]])


def submits_stdlib(n: int = 10_000) -> float:
    with _std_exec() as ex:
        _warm(ex)
        return _rate(n, lambda: [f.result() for f in [ex.submit(inc, i) for i in range(n)]])


# -- round trips (microseconds, lower is better) ---------------------------------------------
def _round_trip(call: Callable[[int], Any], n: int) -> float:
    for i in range(50):
        call(i)
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(n):
            call(i)
        samples.append((time.perf_counter() - t0) / n * 1e6)
    samples.sort()
    return samples[len(samples) // 2]


def submit_rt_polyproc() -> float:
    with _pp_exec() as ex:
        return _round_trip(lambda i: ex.submit(inc, i).result(), 1000)


def submit_rt_stdlib() -> float:
    with _std_exec() as ex:
        return _round_trip(lambda i: ex.submit(inc, i).result(), 300)


def apply_rt_polyproc() -> float:
    with _pp_pool() as p:
        return _round_trip(lambda i: p.apply(inc, (i,)), 1000)


def apply_rt_stdlib() -> float:
    with _std_pool() as p:
        return _round_trip(lambda i: p.apply(inc, (i,)), 200)


# -- CPU-bound scaling ------------------------------------------------------------------
def _efficiency(make: Callable[[int], Any]) -> float:
    work = [300_000] * 16
    times = {}
    for k in (1, 2):
        with make(k) as p:
            p.map(inc, range(k * 2), chunksize=1)
            t0 = time.perf_counter()
            p.map(burn, work, chunksize=1)
            times[k] = time.perf_counter() - t0
    return 100.0 * times[1] / (2 * times[2])


def scaling_polyproc() -> float:
    import polyproc

    return _efficiency(lambda k: polyproc.Pool(k))


def scaling_stdlib() -> float:
    import multiprocessing

    return _efficiency(lambda k: multiprocessing.get_context("forkserver").Pool(k))


# -- pool start (seconds to a pool that has answered once, lower is better) ----------------
def _start(make: Callable[[], Any]) -> float:
    # Imports are not pool start: load both packages' pool modules before the clock.
    import multiprocessing.pool  # noqa: F401

    import polyproc._pool.pool  # noqa: F401

    t0 = time.perf_counter()
    p = make()
    p.map(inc, range(WORKERS), chunksize=1)
    elapsed = time.perf_counter() - t0
    p.terminate()
    p.join()
    return elapsed


def _start_case(method: str) -> Case:
    return Case(
        f"pool start + first map ({method})",
        "s",
        impls={
            "polyproc": lambda: _start(lambda: _pp_pool(method)),
            "stdlib": lambda: _start(lambda: _std_pool(method)),
        },
        higher_is_better=False,
        target=1.0,
        quick=method == "forkserver",
        repeat=5,
    )


CASES: list[Case] = [
    Case(
        "tiny tasks chunksize=1 vs Pool",
        "tasks/s",
        impls={"polyproc": tiny_cs1_polyproc, "stdlib": tiny_cs1_stdlib_pool},
        target=5.0,
        quick=True,
        repeat=3,
    ),
    Case(
        "tiny tasks chunksize=1 vs ProcessPoolExecutor",
        "tasks/s",
        impls={"polyproc": tiny_cs1_polyproc_executor, "stdlib": tiny_cs1_stdlib_executor},
        target=10.0,
        quick=True,
        repeat=3,
    ),
    Case(
        "Executor.map 200k tiny, defaults",
        "tasks/s",
        impls={"polyproc": exec_map_polyproc, "stdlib": exec_map_stdlib},
        target=100.0,
        quick=True,
        repeat=3,
        note="stdlib runs 5k tasks (a rate)",
    ),
    Case(
        "Pool.imap 200k tiny, defaults vs Executor.map",
        "tasks/s",
        impls={"polyproc": pool_imap_polyproc, "stdlib": exec_map_stdlib},
        target=100.0,
        repeat=3,
        note="baseline: stdlib ProcessPoolExecutor.map, as the issue asks",
    ),
    Case(
        "Pool.imap 200k tiny, defaults vs Pool.imap",
        "tasks/s",
        impls={"polyproc": pool_imap_polyproc, "stdlib": pool_imap_stdlib},
        target=None,
        repeat=3,
    ),
    Case(
        "200k separate submits",
        "tasks/s",
        impls={"polyproc": submits_polyproc, "stdlib": submits_stdlib},
        target=20.0,
        quick=True,
        repeat=3,
        note="stdlib runs 10k submits (a rate)",
    ),
    Case(
        "submit().result() round trip",
        "us",
        impls={"polyproc": submit_rt_polyproc, "stdlib": submit_rt_stdlib},
        higher_is_better=False,
        target=None,
        quick=True,
        repeat=3,
        note="issue target: <= 60 us absolute",
    ),
    Case(
        "Pool.apply round trip",
        "us",
        impls={"polyproc": apply_rt_polyproc, "stdlib": apply_rt_stdlib},
        higher_is_better=False,
        target=None,
        repeat=3,
        note="issue target: <= 60 us absolute",
    ),
    Case(
        "CPU-bound scaling efficiency, 2 workers",
        "%",
        impls={"polyproc": scaling_polyproc, "stdlib": scaling_stdlib},
        target=None,
        repeat=3,
        note="issue target: >= 97 % absolute",
    ),
    _start_case("fork"),
    _start_case("spawn"),
    _start_case("forkserver"),
]

if __name__ == "__main__":  # pragma: no cover - a quick manual run
    import sys

    names = sys.argv[1:] or [n for n in dir() if n.endswith(("_polyproc", "_stdlib"))]
    for name in names:
        print(name, globals()[name](), flush=True)
    os._exit(0)
