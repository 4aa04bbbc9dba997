"""Scale-out benchmarks: a polyproc Pool on Dask and on Ray beside each engine used directly.

Run as a script (``python bench/bench_scale.py [--json PATH]``), once, side by side:
one Dask ``LocalCluster`` of 2 worker processes and one local Ray (``num_cpus=2``)
are started once and every implementation runs on them in turn, so only the ratios
mean anything. ``polyproc bench`` does not run these (``CASES`` is empty): it starts a
fresh interpreter per figure, and a cluster per figure would cost more than the
figures measure.

The issue's three cases, at the issue's sizes:

* overhead: 10,000 tasks of 10 ms (``time.sleep``), polyproc ``Pool.map`` vs
  ``client.map`` + ``gather`` and vs ``ray.get([f.remote(x) ...])`` (target <= 5%);
* tiny tasks: 100,000 ``x + 1`` with polyproc ``map`` and ``imap`` vs the engine
  directly (``N_DIRECT`` tasks: a rate, so the ratio is fair; 100,000 single cluster
  tasks would take minutes) and vs Ray's own ``ray.util.multiprocessing.Pool``
  (``map`` on 100,000, ``imap`` on ``N_DIRECT_IMAP``: a rate) (targets >= 10x); the
  median of ``REPEAT`` runs of each, alternating;
* a 64 MiB array shared by 100 tasks: the bytes polyproc put in the object store, and
  the time of the 100 tasks against the time of one (target: sent once).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from polyproc._bench import Case

CASES: list[Case] = []  # see the module docstring: run this file as a script

N_SLOW = 10_000
N_TINY = 100_000
N_DIRECT = 5000
N_DIRECT_IMAP = 2000
REPEAT = 5


def inc(x: int) -> int:
    return x + 1


def ten_ms(x: int) -> int:
    time.sleep(0.01)
    return x


def total(arr: Any, i: int) -> float:
    return float(arr[::4096].sum()) + i


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rate(n: int, fn: Callable[[], Any]) -> float:
    return n / _time(fn)


class Table:
    """The figures of one run: printed as they come, then as a Markdown table and JSON."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, engine: str, figure: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append(
            {"engine": engine, "figure": figure, "value": value, "unit": unit, "note": note}
        )
        shown = f"{value:,.0f}" if unit == "tasks/s" else f"{value:.2f}"
        print(f"{engine:<5} {figure:<58} {shown:>12} {unit:<8} {note}", flush=True)

    def markdown(self) -> str:
        out = ["| engine | figure | value | compared |", "|---|---|---|---|"]
        for r in self.rows:
            shown = f"{r['value']:,.0f}" if r["unit"] == "tasks/s" else f"{r['value']:.2f}"
            out.append(f"| {r['engine']} | {r['figure']} | {shown} {r['unit']} | {r['note']} |")
        return "\n".join(out)


def _overhead(kind: str, pool: Any, client: Any, t: Table) -> None:
    import ray

    if kind == "dask":
        direct = _time(lambda: client.gather(client.map(ten_ms, range(N_SLOW), pure=False)))
    else:
        rten = ray.remote(ten_ms)
        direct = _time(lambda: ray.get([rten.remote(x) for x in range(N_SLOW)]))
    _settle(kind, client)
    ours = _time(lambda: pool.map(ten_ms, range(N_SLOW)))
    floor = N_SLOW * 0.01 / 2
    how = "client.map + gather" if kind == "dask" else "ray.get([f.remote(x) ...])"
    t.add(kind, f"{N_SLOW:,} x 10 ms: {how}", direct, "s", f"floor {floor:.0f} s")
    t.add(
        kind,
        f"{N_SLOW:,} x 10 ms: polyproc Pool.map",
        ours,
        "s",
        f"overhead {100 * (ours / direct - 1):+.1f}% (target <= +5%)",
    )


def _settle(kind: str, client: Any) -> None:
    """Clean up after a direct run of thousands of cluster tasks, so the next figure does
    not pay for it: collect its garbage here (thousands of futures and refs: a full
    collection would otherwise land in the middle of the next run), and wait for Dask's
    scheduler to forget its tasks."""
    gc.collect()
    if kind != "dask":
        return

    def count(dask_scheduler: Any) -> int:
        return len(dask_scheduler.tasks)

    deadline = time.monotonic() + 30
    while client.run_on_scheduler(count) and time.monotonic() < deadline:
        time.sleep(0.05)


def _tiny(kind: str, pool: Any, client: Any, t: Table) -> None:
    import ray

    if kind == "dask":
        direct: Callable[[], Any] = lambda: client.gather(  # noqa: E731
            client.map(inc, range(N_DIRECT), pure=False)
        )
    else:
        rinc = ray.remote(inc)
        direct = lambda: ray.get([rinc.remote(x) for x in range(N_DIRECT)])  # noqa: E731
    direct()  # warm
    rp: Any = None
    if kind == "ray":
        from ray.util.multiprocessing import Pool as RayPool

        rp = RayPool(2)
        rp.map(inc, range(1000))
    samples: dict[str, list[float]] = {k: [] for k in ("direct", "map", "imap", "rmap", "rimap")}
    try:
        for _ in range(REPEAT):  # alternating, so a burst of load hits all alike
            samples["direct"].append(_rate(N_DIRECT, direct))
            _settle(kind, client)
            samples["map"].append(_rate(N_TINY, lambda: pool.map(inc, range(N_TINY))))
            samples["imap"].append(_rate(N_TINY, lambda: sum(pool.imap(inc, range(N_TINY)))))
            if rp is not None:
                samples["rmap"].append(_rate(N_TINY, lambda: rp.map(inc, range(N_TINY))))
                samples["rimap"].append(
                    _rate(N_DIRECT_IMAP, lambda: sum(rp.imap(inc, range(N_DIRECT_IMAP))))
                )
    finally:
        if rp is not None:
            rp.terminate()
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    how = "client.map + gather" if kind == "dask" else "ray.get([f.remote(x) ...])"
    t.add(kind, f"x+1: {how} ({N_DIRECT:,} tasks)", med["direct"], "tasks/s")
    for face in ("map", "imap"):
        note = f"{med[face] / med['direct']:,.0f}x the engine directly"
        if rp is not None:
            theirs = med["r" + face]
            note += f"; {med[face] / theirs:.1f}x ray.util.multiprocessing.Pool.{face}"
        t.add(kind, f"x+1: polyproc Pool.{face} ({N_TINY:,} tasks)", med[face], "tasks/s", note)
    if rp is not None:
        t.add(kind, f"x+1: ray Pool.map ({N_TINY:,} tasks)", med["rmap"], "tasks/s")
        t.add(kind, f"x+1: ray Pool.imap ({N_DIRECT_IMAP:,} tasks)", med["rimap"], "tasks/s")


def _big(kind: str, pool: Any, t: Table) -> None:
    """Two fresh 64 MiB arrays: one task on the first, 100 tasks on the second (each time
    including its one put), so the ratio is what 99 more tasks cost (~100x if per task)."""
    import numpy as np

    one_arr = np.ones(64 << 17)  # 64 MiB
    arr = np.full(64 << 17, 2.0)
    stats = pool._engine.cluster.stats
    one = _time(lambda: pool.apply(total, (one_arr, 0)))
    before = dict(stats)
    hundred = _time(lambda: pool.starmap(total, [(arr, i) for i in range(100)]))
    put, puts = stats["bytes_put"] - before["bytes_put"], stats["puts"] - before["puts"]
    t.add(
        kind,
        "64 MiB array x 100 tasks: MiB put in the object store",
        put / 2**20,
        "MiB",
        f"{puts} put(s), {stats['tasks'] - before['tasks']} cluster tasks (per task: 6,400 MiB)",
    )
    t.add(kind, "64 MiB array: 1 task", one, "s")
    t.add(kind, "64 MiB array: 100 tasks", hundred, "s", f"{hundred / one:.2f}x one task")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures here too")
    opts = ap.parse_args()
    from distributed import Client

    import polyproc
    from polyproc.backends.dask import local_cluster
    from polyproc.backends.ray import init_local

    # Ray's workers start from the raylet: give them this checkout's sys.path (and so
    # this module, whose functions they unpickle by reference).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cluster = local_cluster(2)
    client = Client(cluster, set_as_default=False)
    init_local(2, log_to_driver=False)
    t = Table()
    try:
        for kind, spec in (("dask", client), ("ray", "ray")):
            with polyproc.Pool(2, backend=spec) as pool:
                pool.map(inc, range(1000))  # warm: workers up, functions imported
                _overhead(kind, pool, client, t)
                _tiny(kind, pool, client, t)
                _big(kind, pool, t)
    finally:
        client.close()
        cluster.close()
        import ray

        ray.shutdown()
    print()
    print(t.markdown())
    if opts.json:
        import cloudpickle
        import dask
        import numpy
        import ray

        doc = {
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_at_end": os.getloadavg(),
                "versions": {
                    "dask": dask.__version__,
                    "ray": ray.__version__,
                    "numpy": numpy.__version__,
                    "cloudpickle": cloudpickle.__version__,
                },
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "sizes": {"slow": N_SLOW, "tiny": N_TINY, "direct": N_DIRECT, "repeat": REPEAT},
            "rows": t.rows,
        }
        with open(opts.json, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_scale  # the functions by reference, as ``bench_scale.inc``, not ``__main__``

    bench_scale.main()
