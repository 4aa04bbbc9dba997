"""Scale-out benchmarks: a polyproc Pool on Dask and on Ray beside each engine used directly.

Run as a script (``python bench/bench_scale.py``), once, side by side: one Dask
``LocalCluster`` of 2 worker processes and one local Ray (``num_cpus=2``) are
started once and every implementation runs on them in turn, so only the ratios
mean anything. ``polyproc bench`` does not run these (``CASES`` is empty): it
starts a fresh interpreter per figure, and a cluster per figure would cost more
than the figures measure.

Cases (sizes scaled down from the issue's, to keep a run to minutes on 2 cores):

* overhead: ``N_SLOW`` tasks of 10 ms (``time.sleep``), polyproc ``Pool.map`` vs
  ``client.map`` + ``gather`` and vs ``ray.get([f.remote(x) ...])``;
* tiny tasks: ``N_TINY`` ``x + 1`` with polyproc (``map`` and ``imap``) vs the engine
  directly (``N_DIRECT`` tasks: a rate, so the ratio is fair) and vs Ray's own
  ``ray.util.multiprocessing.Pool`` (``map`` and ``imap``);
* a 64 MiB array shared by 100 tasks: bytes polyproc put in the object store, and
  the time of the 100 tasks against the time of one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from polyproc._bench import Case

CASES: list[Case] = []  # see the module docstring: run this file as a script

N_SLOW = 1000
N_TINY = 100_000
N_DIRECT = 5000
N_DIRECT_IMAP = 2000


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


def _one(kind: str, spec: Any, client: Any, row: Callable[[str, str], None]) -> None:
    import numpy as np
    import ray

    import polyproc

    rinc = ray.remote(inc)
    rten = ray.remote(ten_ms)
    with polyproc.Pool(2, backend=spec) as pool:
        pool.map(inc, range(1000))  # warm: workers up, functions imported
        if kind == "dask":
            client.gather(client.map(inc, range(100), pure=False))
            direct_slow = _time(
                lambda: client.gather(client.map(ten_ms, range(N_SLOW), pure=False))
            )
            direct_tiny = _time(lambda: client.gather(client.map(inc, range(N_DIRECT), pure=False)))
        else:
            ray.get([rinc.remote(x) for x in range(100)])
            direct_slow = _time(lambda: ray.get([rten.remote(x) for x in range(N_SLOW)]))
            direct_tiny = _time(lambda: ray.get([rinc.remote(x) for x in range(N_DIRECT)]))
        ours_slow = _time(lambda: pool.map(ten_ms, range(N_SLOW)))
        row(f"{kind}: {N_SLOW} x 10 ms, engine directly (s)", f"{direct_slow:.2f}")
        row(
            f"{kind}: {N_SLOW} x 10 ms, polyproc Pool.map (s)",
            f"{ours_slow:.2f} ({100 * (ours_slow / direct_slow - 1):+.1f}%)",
        )
        ours_map = N_TINY / _time(lambda: pool.map(inc, range(N_TINY)))
        ours_imap = N_TINY / _time(lambda: sum(pool.imap(inc, range(N_TINY))))
        direct = N_DIRECT / direct_tiny
        row(f"{kind}: x+1, engine directly ({N_DIRECT} tasks, tasks/s)", f"{direct:,.0f}")
        row(
            f"{kind}: x+1, polyproc map ({N_TINY} tasks, tasks/s)",
            f"{ours_map:,.0f} ({ours_map / direct:.0f}x)",
        )
        row(
            f"{kind}: x+1, polyproc imap ({N_TINY} tasks, tasks/s)",
            f"{ours_imap:,.0f} ({ours_imap / direct:.0f}x)",
        )
        if kind == "ray":
            from ray.util.multiprocessing import Pool as RayPool

            rp = RayPool(2)
            try:
                rp.map(inc, range(1000))
                rmap = N_TINY / _time(lambda: rp.map(inc, range(N_TINY)))
                rimap = N_DIRECT_IMAP / _time(lambda: sum(rp.imap(inc, range(N_DIRECT_IMAP))))
            finally:
                rp.terminate()
            row(
                f"ray: x+1, ray.util.multiprocessing.Pool.map ({N_TINY}, tasks/s)",
                f"{rmap:,.0f} (polyproc map {ours_map / rmap:.1f}x)",
            )
            row(
                f"ray: x+1, ray.util.multiprocessing.Pool.imap ({N_DIRECT_IMAP}, tasks/s)",
                f"{rimap:,.0f} (polyproc imap {ours_imap / rimap:.0f}x)",
            )
        arr = np.ones(64 << 17)  # 64 MiB
        before = dict(pool._engine.cluster.stats)  # type: ignore[attr-defined]
        one = _time(lambda: pool.apply(total, (arr, 0)))
        hundred = _time(lambda: pool.starmap(total, [(arr, i) for i in range(100)]))
        stats = pool._engine.cluster.stats  # type: ignore[attr-defined]
        put = stats["bytes_put"] - before["bytes_put"]
        row(
            f"{kind}: 64 MiB array x 100 tasks: bytes put in the store",
            f"{put / 2**20:.0f} MiB in {stats['puts'] - before['puts']} put(s)",
        )
        row(
            f"{kind}: 64 MiB array: 1 task (first: puts it) / 100 tasks (s)",
            f"{one:.2f} / {hundred:.2f}",
        )


def main() -> None:
    import ray
    from distributed import Client

    from polyproc.backends.dask import local_cluster

    cluster = local_cluster(2)
    client = Client(cluster, set_as_default=False)
    for attempt in range(3):  # Ray gives its raylet 30 s; a loaded VM can miss that
        try:
            ray.init(
                num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    rows: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"{name:<58} {value}", flush=True)

    for kind, spec in (("dask", client), ("ray", "ray")):
        _one(kind, spec, client, row)
    client.close()
    cluster.close()
    ray.shutdown()
    print("\n| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
