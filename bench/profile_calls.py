"""Where a call's time goes, in figures that load does not distort much (issue #14).

``python bench/profile_calls.py [submit|apply|get|map|imap|xmap|pipe|socket ...] [--lib std]
[-n N]`` (``map``/``imap``/``xmap``: ``Pool.map``, ``list(Pool.imap)``,
``list(Executor.map)`` of ``inc`` over ``range(1M)``, default chunks)
prints, per call: the caller's CPU (all its threads, ``getrusage``), its children's CPU
(workers, manager server: psutil), and the caller's voluntary context switches (each
one a block and a later wake-up). ``--profile`` adds a cProfile of the calling thread
timed with ``time.thread_time`` (CPU, not wall), so the call counts and call paths are
those of this machine even when it is shared. Wall time is printed too, for a
same-run comparison only. Not a ``bench_*`` module: ``polyproc bench`` does not run it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def inc(x: int) -> int:
    return x + 1


def _setup(what: str, lib: str) -> tuple[Callable[[int], Any], Callable[[], Any], int]:
    """(one call, teardown, warm-up calls) for ``what`` with polyproc or the stdlib."""
    if lib == "pp":
        import polyproc as mp
        from polyproc.futures import ProcessPoolExecutor as Executor
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        def Executor(n: int) -> Any:  # noqa: N802 - the class it stands for
            return ProcessPoolExecutor(n, mp_context=mp.get_context("fork"))

    if what == "submit":
        ex = Executor(2)
        return (lambda i: ex.submit(inc, i).result()), ex.shutdown, 200
    if what == "xmap":
        ex = Executor(2)
        return (lambda i: list(ex.map(inc, range(1_000_000)))), ex.shutdown, 1
    if what in ("apply", "map", "imap"):
        pool = mp.get_context("fork").Pool(2)
        if what == "apply":
            return (lambda i: pool.apply(inc, (i,))), pool.terminate, 200
        if what == "imap":
            return (lambda i: list(pool.imap(inc, range(1_000_000)))), pool.terminate, 1
        return (lambda i: pool.map(inc, range(1_000_000))), pool.terminate, 1
    if what == "get":
        manager = mp.Manager()
        d = manager.dict()
        d["k"] = 1
        return (lambda i: d["k"]), manager.shutdown, 200
    raise SystemExit(f"unknown call {what!r}")


def _children_cpu(kids: list[Any]) -> tuple[float, float]:
    import psutil

    cpu = vcsw = 0.0
    for k in kids:
        try:
            t = k.cpu_times()
            cpu += t.user + t.system
            vcsw += k.num_ctx_switches().voluntary
        except psutil.Error:
            pass
    return cpu, vcsw


def measure(what: str, lib: str, n: int, profile: bool) -> None:
    if what in ("pipe", "socket"):
        from bench_foundation import _raw_ping_pong

        r0, c0 = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        wall = _raw_ping_pong(what, n)
        r1, c1 = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        mine = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n * 1e6
        theirs = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / n * 1e6
        print(
            f"floor {what}: wall {wall:.1f} us, caller CPU {mine:.1f} us, "
            f"child CPU {theirs:.1f} us, caller blocks {(r1.ru_nvcsw - r0.ru_nvcsw) / n:.2f}"
        )
        return
    import psutil

    call, close, warm = _setup(what, lib)
    try:
        for i in range(warm):
            call(i)
        kids = psutil.Process().children(recursive=True)
        r0, k0 = resource.getrusage(resource.RUSAGE_SELF), _children_cpu(kids)
        prof = cProfile.Profile(time.thread_time) if profile else None
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        for i in range(n):
            call(i)
        if prof is not None:
            prof.disable()
        wall = (time.perf_counter() - t0) / n * 1e6
        r1, k1 = resource.getrusage(resource.RUSAGE_SELF), _children_cpu(kids)
    finally:
        close()
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n * 1e6
    print(
        f"{lib} {what}: wall {wall:.1f} us, caller CPU {cpu:.1f} us, children CPU "
        f"{(k1[0] - k0[0]) / n * 1e6:.1f} us, caller blocks {(r1.ru_nvcsw - r0.ru_nvcsw) / n:.2f}, "
        f"children blocks {(k1[1] - k0[1]) / n:.2f} (per call)"
    )
    if prof is not None:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        print(f"  {stats.total_calls / n:.0f} Python calls per call (profiled: CPU inflated)")
        stats.sort_stats("tottime").print_stats(15)
        print(out.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("calls", nargs="*", default=["pipe", "socket", "submit", "apply", "get"])
    p.add_argument("--lib", choices=["pp", "std"], default="pp")
    p.add_argument("-n", type=int, default=3000, help="calls (maps for 'map')")
    p.add_argument("--profile", action="store_true", help="cProfile the calling thread (CPU)")
    args = p.parse_args()
    for what in args.calls:
        maps = what in ("map", "imap", "xmap")
        measure(what, args.lib, 3 if maps and args.n == 3000 else args.n, args.profile)


if __name__ == "__main__":
    main()
