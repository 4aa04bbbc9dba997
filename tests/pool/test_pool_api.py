"""The multiprocessing.pool API, per start method, plus the tutorial's Pool programs."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import poolhelpers as h
import pytest

import polyproc
from polyproc.errors import PoolClosedError, TimeoutError
from polyproc.pool import ApplyResult, AsyncResult, MapResult, Pool, ThreadPool

pytestmark = pytest.mark.timeout(60)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_apply_map_starmap_imap(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        assert pool.apply(h.add, (1, 2)) == 3
        assert pool.apply(h.add, (), {"a": 1, "b": 5}) == 6
        assert pool.map(h.double, range(10)) == [x * 2 for x in range(10)]
        assert pool.map(h.double, (x for x in range(7))) == [x * 2 for x in range(7)]
        assert pool.map(h.double, []) == []
        assert pool.starmap(h.add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(h.double, range(50))) == [x * 2 for x in range(50)]
        assert sorted(pool.imap_unordered(h.double, range(50))) == [x * 2 for x in range(50)]
        assert pool.starmap_async(h.add, [(1, 1)]).get(10) == [2]
        assert list(pool.imap(h.double, [])) == []
        assert pool.map(lambda x: x - 1, [1, 2]) == [0, 1]  # lambdas travel by value


def test_async_results_and_callbacks(ctx: Any) -> None:
    got: list[Any] = []
    errs: list[BaseException] = []
    with Pool(2, context=ctx) as pool:
        r = pool.apply_async(h.inc, (1,), callback=got.append)
        assert isinstance(r, AsyncResult) and isinstance(r, ApplyResult)
        assert r.get(timeout=10) == 2
        r.wait()
        assert r.ready() and r.successful()
        m = pool.map_async(h.inc, [1, 2], callback=got.append)
        assert isinstance(m, MapResult)
        assert m.get(10) == [2, 3]
        e = pool.apply_async(h.raise_value_error, (1,), error_callback=errs.append)
        e.wait(10)
        assert e.ready() and not e.successful()
        with pytest.raises(ValueError):
            e.get()
        slow = pool.apply_async(h.nap, (5,))
        with pytest.raises(ValueError):
            slow.successful()
        with pytest.raises(TimeoutError):
            slow.get(timeout=0.05)
        with pytest.raises(polyproc.TimeoutError):  # the multiprocessing name works too
            slow.get(timeout=0.01)
    # the callbacks ran (in the engine thread) before the results became ready
    assert got == [2, [2, 3]] and isinstance(errs[0], ValueError)


def test_close_join_terminate_and_closed_errors(ctx: Any) -> None:
    pool = Pool(2, context=ctx)
    r = pool.map_async(h.nap, [0.05, 0.05, 0.05])
    with pytest.raises(ValueError):
        pool.join()  # still running
    pool.close()
    with pytest.raises(PoolClosedError):
        pool.apply_async(h.inc, (1,))
    with pytest.raises(ValueError):
        pool.map(h.inc, [1])  # PoolClosedError is a ValueError, as in the stdlib
    pool.join()
    assert r.get(0) == [0.05] * 3
    pool2 = Pool(2, context=ctx)
    slow = pool2.apply_async(h.nap, (30,))
    t0 = time.monotonic()
    pool2.terminate()
    pool2.join()
    assert time.monotonic() - t0 < 5
    with pytest.raises(PoolClosedError):
        slow.get(timeout=1)


def test_worker_names_and_initializer(ctx: Any) -> None:
    prefix = {
        "fork": "ForkPoolWorker",
        "spawn": "SpawnPoolWorker",
        "forkserver": "ForkServerPoolWorker",
    }[ctx.start_method]
    with Pool(2, h.set_state, ("ready",), context=ctx) as pool:
        assert pool.apply(h.get_state) == "ready"
        names = [w["name"] for w in pool.statistics()["workers"]]
        assert names and all(n.startswith(prefix + "-") for n in names), names


def test_maxtasksperchild_recycles_workers(ctx: Any) -> None:
    with Pool(1, maxtasksperchild=2, context=ctx) as pool:
        pids = [pool.apply(h.pid_of) for _ in range(6)]
        assert len(set(pids)) == 3
        assert pool.map(h.inc, range(10), chunksize=3) == list(range(1, 11))
        assert pool.statistics()["workers_recycled"] >= 3


def test_max_memory_per_child_recycles_a_fat_worker(ctx: Any) -> None:
    # +40 MiB a task: past 150 MiB of growth (4 tasks) the worker is replaced. A fork
    # child's RSS can also fall, as it frees what it inherited (its parent's garbage,
    # collected there): that hides some growth, so ten tasks, not six.
    with Pool(1, context=ctx, max_memory_per_child=150 * 2**20) as pool:
        pids = [pool.apply(h.rss_hog, (i,)) for i in range(10)]
        assert 2 <= len(set(pids)) <= 5, pids


def test_explicit_chunksize_is_honoured_and_auto_batches_grow(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        pool.map(h.inc, range(100), chunksize=7)
        sizes = pool._engine.sched.stats.copy()
        assert sizes["done"] >= 100
        sched = pool._engine.sched
        sent: list[int] = []
        orig = pool._engine.workers.send

        def spy(a: Any) -> None:
            sent.append(len(a.batch))
            orig(a)

        pool._engine.workers.send = spy  # type: ignore[method-assign]
        pool.map(h.nap, [0.001] * 21, chunksize=7)  # slow enough: one chunk per batch
        assert set(sent) == {7}
        sent.clear()
        pool.map(h.inc, range(7000), chunksize=7)  # tiny: whole chunks, several a frame
        assert all(n % 7 == 0 for n in sent) and max(sent) > 7
        sent.clear()
        assert pool.map(h.inc, range(200_000)) == list(range(1, 200_001))
        assert max(sent) >= 100 and len(sent) < 20_000, (max(sent), len(sent))
        assert sched.stats["failed"] == 0


def test_lazy_imap_pulls_only_a_window_before_the_first_result(ctx: Any) -> None:
    pulled = 0

    def gen() -> Any:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    with Pool(2, context=ctx) as pool:
        # Slow tasks: only what fills the workers' windows is pulled before a result.
        it = pool.imap(h.slow_square, gen())
        assert next(it) == 0
        assert pulled <= 8, pulled
        del it
        pulled = 0
        # Tiny tasks: batches grow, but the lead over the consumer stays bounded by the
        # job's credit (a few batches per worker), never the whole input.
        it = pool.imap(h.inc, gen())
        assert next(it) == 1
        job = it.job
        assert job is not None
        sched = pool._engine.sched
        limit = 2 * sched.processes * sched.window * sched.max_batch + sched.max_batch
        ahead = []
        for i in range(1, 3000):
            assert next(it) == i + 1
            ahead.append(pulled - (i + 1))
        assert max(ahead) <= limit and limit < 100_000, (max(ahead), limit)
        del it


@pytest.mark.timeout(120)
def test_a_million_item_stream_with_a_slow_consumer_keeps_memory_flat() -> None:
    pulled = 0

    def gen() -> Any:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield i

    ctx = polyproc.get_context("fork")
    with Pool(2, context=ctx) as pool:
        worst = 0
        for n, _v in enumerate(pool.imap_unordered(h.inc, gen()), 1):
            if n % 1000 == 0:
                worst = max(worst, pulled - n)
        assert n == 1_000_000
        assert worst <= 100_000, worst


def test_progress_bar_advances(ctx: Any) -> None:
    out = io.StringIO()
    with Pool(2, context=ctx) as pool:
        assert pool.map(h.inc, range(20), progress={"file": out, "mininterval": 0}) == list(
            range(1, 21)
        )
        assert "20/20" in out.getvalue()
        out2 = io.StringIO()
        assert list(pool.imap(h.inc, range(5), progress={"file": out2, "mininterval": 0}))
        assert "5/5" in out2.getvalue()
        out3 = io.StringIO()
        assert pool.starmap(h.add, [(1, 2)] * 4, progress={"file": out3, "mininterval": 0})
        assert "4/4" in out3.getvalue()


_BAR_THEN_POOL = """
import io, threading
import polyproc

def inc(x):
    return x + 1

if __name__ == "__main__":
    with polyproc.Pool(2) as p:
        assert p.map(inc, range(50), progress={"file": io.StringIO()}) == list(range(1, 51))
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    with polyproc.Pool(2) as p:
        print(others, p._engine.workers.template is not None)
"""


def test_a_progress_bar_leaves_no_thread_that_would_cost_the_next_pool_its_template(
    tmp_path: Path,
) -> None:
    """tqdm's monitor thread, started by a first bar and alive for the program's life, is
    a thread polyproc cannot park: every later pool would start its workers from the
    forkserver. Bars are made without it."""
    from foundation import _programs  # a user program in a fresh interpreter

    proc = _programs.run(_BAR_THEN_POOL, "auto", tmp_path, timeout=50)  # the default method
    assert proc.returncode == 0, proc.stderr
    threads, template = proc.stdout.rsplit("]", 1)
    assert "monitor" not in threads, threads
    assert template.split() == ["True"], proc.stdout


def test_statistics(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        pool.map(h.inc, range(30))
        with pytest.raises(ValueError):
            pool.apply(h.raise_value_error, (1,))
        st = pool.statistics()
        assert st["done"] == 30 and st["failed"] == 1 and st["lost"] == 0
        assert sum(w["tasks"] for w in st["workers"]) == 31
        assert any(w["rss"] for w in st["workers"])
        assert all("busy_s" in w for w in st["workers"])


def test_await_a_pool_result(ctx: Any) -> None:
    async def main(pool: Pool) -> list[Any]:
        a = await pool.apply_async(h.inc, (1,))
        b = await pool.map_async(h.inc, [1, 2])
        return [a, b]

    with Pool(2, context=ctx) as pool:
        assert asyncio.run(main(pool)) == [2, [2, 3]]


def test_processes_none_means_cpu_count_and_bad_arguments(ctx: Any) -> None:
    with Pool(context=ctx) as pool:
        assert pool._processes == (os.cpu_count() or 1)
    with pytest.raises(ValueError):
        Pool(0, context=ctx)
    with pytest.raises(TypeError):
        Pool(1, initializer=3, context=ctx)  # type: ignore[arg-type]


def test_thread_pool_and_dummy() -> None:
    import threading

    from polyproc import dummy
    from polyproc.pool import ThreadPool as TP

    lock = threading.Lock()  # no pickling with threads
    with ThreadPool(3) as pool:
        assert pool.map(lambda x: (x, lock.locked()), [1]) == [(1, False)]
        assert pool.apply(h.add, (1, 2)) == 3
        assert list(pool.imap(h.inc, range(5))) == [1, 2, 3, 4, 5]
        with pytest.raises(TimeoutError):
            pool.apply(h.nap, (5,), timeout=0.1)
        assert pool.apply(h.inc, (1,)) == 2
    assert TP is ThreadPool
    p = dummy.Pool(2)
    assert p.map(h.inc, [1, 2]) == [2, 3]
    p.close()
    p.join()
    q = dummy.Queue()
    t = dummy.Process(target=q.put, args=(5,))
    t.start()
    t.join()
    assert q.get() == 5 and t.exitcode == 0
    a, b = dummy.Pipe()
    a.send("x")
    assert b.recv() == "x"


# -- the tutorial's programs, with the import swapped ------------------------------------
_PROGRAM = """
import logging
import time
import polyproc as multiprocessing

logging.basicConfig(level=logging.DEBUG, format='%(processName)s: %(message)s')

def worker1(i):
    logging.debug('start')
    time.sleep({s})
    logging.debug('end')
    return i{mul}

if __name__ == '__main__':
    with multiprocessing.Pool({n}) as p:
{body}
"""

_BODIES = {
    "apply_async": """
        p1 = p.apply_async(worker1, (100, ))
        p2 = p.apply_async(worker1, (100, ))
        logging.debug('executed')
        logging.debug(p1.get())
        logging.debug(p2.get())""",
    "get_timeout": """
        p1 = p.apply_async(worker1, (100, ))
        p2 = p.apply_async(worker1, (100, ))
        logging.debug('executed')
        logging.debug(p1.get(timeout=0.2))
        logging.debug(p2.get())""",
    "apply": """
        logging.debug(p.apply(worker1, (200, )))
        logging.debug('executed apply')
        p1 = p.apply_async(worker1, (100, ))
        p2 = p.apply_async(worker1, (100, ))
        logging.debug('executed')
        logging.debug(p1.get())
        logging.debug(p2.get())""",
    "map": """
        r = p.map(worker1, [100, 200])
        logging.debug('executed')
        logging.debug(r)""",
    "map_async": """
        r = p.map_async(worker1, [100, 200])
        logging.debug('executed')
        logging.debug(r.get())""",
    "imap": """
        for r in p.imap(worker1, [100, 200, 300]):
            logging.debug(r)""",
}


def _run_tutorial(
    tmp_path: Path, method: str, body: str, n: int = 5, s: float = 0.4, mul: str = ""
) -> tuple[list[str], str, float, int]:
    script = tmp_path / "sample.py"
    script.write_text(
        _PROGRAM.format(
            s=s, n=n, mul=mul, body=textwrap.indent(textwrap.dedent(_BODIES[body]), " " * 8)
        )
    )
    env = dict(os.environ, PYTHONPATH=SRC, POLYPROC_START_METHOD=method)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ": " in ln and "Traceback" not in ln]
    return lines, proc.stderr, elapsed, proc.returncode


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_tutorial_two_tasks_on_two_workers_finish_together(tmp_path: Path, method: str) -> None:
    lines, err, _elapsed, rc = _run_tutorial(tmp_path, method, "apply_async", s=1.0)
    assert rc == 0, err
    # apply_async does not wait: "executed" comes before either task ends. Not necessarily
    # before a worker's "start" (two processes' lines have no order; a worker forked at
    # pool creation may log first, under the stdlib too).
    first_end = min(i for i, ln in enumerate(lines) if ln.endswith(": end"))
    assert lines.index("MainProcess: executed") < first_end, err
    starts = [ln.split(":")[0] for ln in lines if ln.endswith(": start")]
    prefix = {
        "fork": "ForkPoolWorker-",
        "spawn": "SpawnPoolWorker-",
        "forkserver": "ForkServerPoolWorker-",
    }[method]
    assert (
        len(starts) == 2 and len(set(starts)) == 2 and all(s.startswith(prefix) for s in starts)
    ), err
    assert lines.count("MainProcess: 100") == 2
    # Together: both tasks started before either ended (their order in the log, not the
    # wall clock, which a loaded machine stretches).
    events = [ln.split(": ")[1] for ln in lines if ln.endswith((": start", ": end"))]
    assert events[:2] == ["start", "start"], err


def test_tutorial_one_worker_runs_both(tmp_path: Path) -> None:
    lines, err, elapsed, rc = _run_tutorial(tmp_path, "forkserver", "apply_async", n=1, s=0.4)
    assert rc == 0, err
    starts = [ln.split(":")[0] for ln in lines if ln.endswith(": start")]
    assert len(starts) == 2 and len(set(starts)) == 1
    assert elapsed >= 0.8


def test_tutorial_get_timeout_raises_and_exits_promptly(tmp_path: Path) -> None:
    lines, err, elapsed, rc = _run_tutorial(tmp_path, "forkserver", "get_timeout", s=5)
    assert rc == 1 and "TimeoutError" in err, err
    assert err.count("Traceback") == 1
    assert elapsed < 4, elapsed


@pytest.mark.parametrize(
    "body,expect",
    [
        (
            "apply",
            [
                "MainProcess: 200",
                "MainProcess: executed apply",
                "MainProcess: executed",
                "MainProcess: 100",
                "MainProcess: 100",
            ],
        ),
        ("map", ["MainProcess: executed", "MainProcess: [200, 400]"]),
        ("map_async", ["MainProcess: executed", "MainProcess: [200, 400]"]),
        ("imap", ["MainProcess: 200", "MainProcess: 400", "MainProcess: 600"]),
    ],
)
def test_tutorial_blocking_and_async_calls(tmp_path: Path, body: str, expect: list[str]) -> None:
    lines, err, elapsed, rc = _run_tutorial(
        tmp_path, "forkserver", body, s=0.3, mul="" if body == "apply" else " * 2"
    )
    assert rc == 0, err
    main = [ln for ln in lines if ln.startswith("MainProcess")]
    assert main == expect, err
    if body == "map":
        assert lines.index("MainProcess: executed") > max(
            i for i, ln in enumerate(lines) if ln.endswith(": end")
        )
    if body == "map_async":
        assert lines[0] == "MainProcess: executed"
