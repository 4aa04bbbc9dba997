"""Failures on a cluster, each on Dask and on Ray: timeouts, lost workers, retries,
the initializer, and what a pool leaves behind when it ends."""

from __future__ import annotations

import gc
import itertools
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from polyproc.errors import BrokenProcessPool, TimeoutError, WorkerLostError
from polyproc.futures import ProcessPoolExecutor
from polyproc.pool import Pool

from .conftest import kind

pytestmark = pytest.mark.timeout(180)  # the first test waits for its cluster to start


def square(x: int) -> int:
    return x * x


def nap(s: float) -> float:
    time.sleep(s)
    return s


def die_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(3)
    return x * 10


def die_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return "second try"


_counter = 0


def count_init(tag: str) -> None:
    global _counter
    _counter += 1


def init_count(_: int) -> tuple[int, int]:
    time.sleep(0.01)
    return os.getpid(), _counter


def bad_init() -> None:
    raise RuntimeError("no database")


def test_late_task_raises_timeout_and_the_pool_goes_on(backend: Any) -> None:
    with Pool(2, backend=backend) as p:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout of 0.5 s"):
            p.apply(nap, (3,), timeout=0.5)
        assert time.monotonic() - t0 < 2.9
        assert p.map(square, range(10)) == [x * x for x in range(10)]
        assert p.statistics()["timed_out"] == 1


def test_lost_cluster_worker_fails_only_its_task(backend: Any) -> None:
    with Pool(2, backend=backend) as p:
        out: list[Any] = []
        results = [p.apply_async(die_on, (i, 3)) for i in range(6)]
        for r in results:
            try:
                out.append(r.get(timeout=60))
            except WorkerLostError as exc:
                out.append(exc)
        assert [v for i, v in enumerate(out) if i != 3] == [0, 10, 20, 40, 50]
        err = out[3]
        assert isinstance(err, WorkerLostError)
        assert "die_on(3, 3)" in str(err)
        want = "dask worker tcp://" if kind(backend) == "dask" else "ray worker"
        assert want in str(err), str(err)
        assert p.map(square, range(5)) == [0, 1, 4, 9, 16]  # the pool goes on


def test_retries_rerun_a_task_whose_worker_died(backend: Any, tmp_path: Path) -> None:
    with ProcessPoolExecutor(2, backend=backend, retries=1) as ex:
        assert ex.submit(die_once, str(tmp_path / "m")).result(timeout=60) == "second try"


def test_initializer_runs_once_per_worker_process(backend: Any) -> None:
    with Pool(2, initializer=count_init, initargs=("x",), backend=backend) as p:
        seen = p.map(init_count, range(40))
    counts = {pid: c for pid, c in seen}
    assert counts and set(counts.values()) == {1}


def test_initializer_that_raises_breaks_the_pool(backend: Any) -> None:
    with Pool(2, initializer=bad_init, backend=backend) as p:
        with pytest.raises(BrokenProcessPool, match="no database"):
            p.map(square, range(4))


def _leftover_dask(client: Any) -> list[str]:
    def tasks(dask_scheduler: Any) -> list[str]:
        return [
            f"{k} {ts.state} {len(ts.who_wants or ())}" for k, ts in dask_scheduler.tasks.items()
        ]

    return list(client.run_on_scheduler(tasks))


@pytest.mark.parametrize("end", ["close-join", "terminate", "with"])
def test_pool_end_releases_what_it_started(backend: Any, end: str) -> None:
    np = pytest.importorskip("numpy")
    big = np.zeros(1 << 18)
    p = Pool(2, backend=backend)
    assert p.starmap(lambda a, i: i, [(big, i) for i in range(4)]) == [0, 1, 2, 3]
    busy = p.map_async(nap, [0.2] * 4)
    if end == "close-join":
        p.close()
        p.join()
        assert busy.get(5) == [0.2] * 4
    elif end == "terminate":
        p.terminate()
    else:
        with p:
            pass
    assert p._engine.finished.is_set() and not len(p._engine.workers)
    del p, busy
    gc.collect()
    deadline = time.monotonic() + 20
    if kind(backend) == "dask":
        while _leftover_dask(backend) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _leftover_dask(backend) == []
    else:
        import ray

        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 2


def nap_and_say(path: str, s: float) -> float:
    Path(path).write_text(str(os.getpid()))
    time.sleep(s)
    return s


def test_timeout_on_ray_kills_the_worker_dask_lets_the_call_finish(
    backend: Any, tmp_path: Path
) -> None:
    """Ray: the late task's worker process is cancelled with force (killed). Dask cannot
    interrupt a running task: the worker process lives on and finishes the late call in
    its thread; its result is dropped (docs/scale-out.md)."""
    marker = tmp_path / "pid"
    with Pool(2, backend=backend) as p:
        p.map(square, range(4))  # workers up: the deadline is for the call, not a boot
        late = 3.0 if kind(backend) == "dask" else 60.0
        with pytest.raises(TimeoutError):
            p.apply(nap_and_say, (str(marker), late), timeout=2)
        pid = int(marker.read_text())
        if kind(backend) == "ray":
            deadline = time.monotonic() + 20
            while psutil.pid_exists(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not psutil.pid_exists(pid), "ray.cancel(force=True) left the worker running"
        else:
            assert psutil.pid_exists(pid)  # the Dask worker process is not killed
        assert p.map(square, range(6)) == [x * x for x in range(6)]


def span(s: float) -> tuple[float, float]:
    t0 = time.time()
    time.sleep(s)
    return t0, time.time()


def test_processes_caps_the_parallelism_on_the_cluster(backend: Any) -> None:
    """``processes=1`` on a 2-worker cluster: never two tasks at once."""
    with Pool(1, backend=backend) as p:
        spans = sorted(p.map(span, [0.05] * 6, chunksize=1))
    assert all(a[1] <= b[0] + 0.005 for a, b in itertools.pairwise(spans)), spans
