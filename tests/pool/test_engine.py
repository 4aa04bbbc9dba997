"""Engine robustness: outside kills, abandoned iterators, callbacks that raise, engine bugs."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import threading
import time
from typing import Any

import poolhelpers as h
import pytest

from polyproc.errors import BrokenProcessPool
from polyproc.pool import Pool

pytestmark = pytest.mark.timeout(60)


def test_idle_worker_killed_from_outside_is_replaced(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        pid = pool.apply(h.pid_of)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool.statistics()["workers_started"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.statistics()["workers_started"] == 3
        assert pool.map(h.inc, range(10)) == list(range(1, 11))


def test_abandoned_imap_over_an_endless_generator_lets_the_pool_close(ctx: Any) -> None:
    pool = Pool(2, context=ctx)
    it = pool.imap(h.inc, itertools.count())
    assert [next(it) for _ in range(100)] == list(range(1, 101))
    del it
    gc.collect()
    pool.close()
    pool.join()  # would wait forever if the endless job were still running


def test_a_callback_that_raises_does_not_stop_the_engine(ctx: Any, capsys: Any) -> None:
    def bad(_: Any) -> None:
        raise RuntimeError("callback bug")

    with Pool(1, context=ctx) as pool:
        r = pool.apply_async(h.inc, (1,), callback=bad)
        r.wait(10)
        assert pool.apply(h.inc, (2,)) == 3
    del capsys


def test_an_engine_bug_fails_everything_instead_of_hanging() -> None:
    import polyproc

    pool = Pool(1, context=polyproc.get_context("fork"))
    try:
        sched = pool._engine.sched

        def boom(*a: Any, **k: Any) -> None:
            raise AssertionError("scheduler bug")

        sched.batch_done = boom  # type: ignore[method-assign]
        r = pool.apply_async(h.inc, (1,))
        with pytest.raises(BrokenProcessPool, match="engine failed"):
            r.get(timeout=10)
        with pytest.raises(BrokenProcessPool):
            pool.apply_async(h.inc, (1,))
    finally:
        pool.terminate()


def test_a_dropped_pool_takes_its_workers_with_it(ctx: Any) -> None:
    pool = Pool(2, context=ctx)
    assert pool.apply(h.inc, (1,)) == 2
    engine = pool._engine
    del pool
    gc.collect()
    assert engine.join(10)


def test_many_threads_submitting_at_once(ctx: Any) -> None:
    out: list[list[int]] = []
    with Pool(2, context=ctx) as pool:

        def user(k: int) -> None:
            results = [pool.apply_async(h.add, (i, k)) for i in range(200)]
            out.append([r.get(10) for r in results])

        threads = [threading.Thread(target=user, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(o[0] for o in out) == [0, 1, 2, 3] and all(len(o) == 200 for o in out)


def test_only_forked_workers_start_quickly() -> None:
    """The scheduler sends work to a starting worker only where workers are forks
    (``Scheduler.early_start``): a spawned interpreter's boot would hold its work."""
    import polyproc

    for method, quick in (("fork", True), ("spawn", False)):
        with polyproc.get_context(method).Pool(1) as pool:
            assert pool._engine.sched.early_start is quick, method
