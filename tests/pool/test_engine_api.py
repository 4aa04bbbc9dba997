"""The engine's seams: the faces' API, one statistics type, one PoolState, the worker-set plug."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import poolhelpers as h
import pytest

import polyproc
from polyproc import pool as public_pool
from polyproc._pool import pool as pool_face
from polyproc._pool import tasks
from polyproc._pool.engine import Engine
from polyproc._pool.stats import PoolStatistics, WorkerStatistics
from polyproc._pool.workers import BatchItem, ThreadWorkers
from polyproc.futures import ProcessPoolExecutor
from polyproc.pool import Pool, ThreadPool

pytestmark = pytest.mark.timeout(60)


def test_one_pool_state_enum_for_faces_and_scheduler() -> None:
    assert pool_face.PoolState is tasks.PoolState
    assert public_pool.RUN is tasks.PoolState.RUN
    assert public_pool.RUN == "RUN" and public_pool.CLOSE == "CLOSE"
    assert public_pool.TERMINATE == "TERMINATE"
    # The face never breaks; the scheduler may.
    assert set(tasks.POOL_FACE_TRANSITIONS) < set(tasks.POOL_TRANSITIONS)


def test_pool_and_executor_share_one_frozen_statistics_type() -> None:
    with Pool(2, context=polyproc.get_context("fork")) as pool:
        assert pool.map(h.inc, range(10)) == list(range(1, 11))
        stats = pool.statistics()
    with ProcessPoolExecutor(2, mp_context=polyproc.get_context("fork")) as ex:
        assert ex.submit(h.inc, 1).result(timeout=30) == 2
        xstats = ex.statistics()
    for s in (stats, xstats):
        assert type(s) is PoolStatistics
        assert s.done >= 1 and s["done"] == s.done and s.processes == 2
        assert s.workers and all(type(w) is WorkerStatistics for w in s.workers)
        assert s.workers[0]["name"] == s.workers[0].name
        with pytest.raises(AttributeError):
            s.done = 0
        with pytest.raises(KeyError):
            s["nope"]
    assert stats.done == 10 and stats.state == "RUN"
    assert xstats.state == "RUN" and "timed_out" in xstats


def test_statistics_name_a_worker_that_ended_as_it_was_named() -> None:
    """Its process is gone, and its name with it: the pool keeps the one it had, with its pid
    (what the OOM killer's log and ``ps`` spoke of), not ``worker N``."""
    with Pool(1, context=polyproc.get_context("fork")) as pool:
        pid = pool.apply(h.pid_of)
        name = pool._pool[0].name
        with pytest.raises(polyproc.WorkerLostError):
            pool.apply(os._exit, (3,))
        dead = [w for w in pool.statistics().workers if w.state == "dead"]
        assert [(w.name, w.exitcode) for w in dead] == [(f"{name} (pid {pid})", 3)]


def test_thread_pool_statistics_name_its_threads() -> None:
    with ThreadPool(2) as pool:
        assert pool.map(h.inc, range(4)) == [1, 2, 3, 4]
        names = {w.name for w in pool.statistics().workers}
        assert all(n.startswith("ThreadPoolWorker-") for n in names), names
        assert len(pool._pool) == 2


class _CountingSlot:
    """A ``Slot`` that is neither a thread worker nor a process: runs batches in a thread."""

    def __init__(self, wid: int, post: Callable[..., None], seen: list[int]) -> None:
        self.name = f"counting slot {wid}"
        self.abandoned = False
        self._wid = wid
        self._post = post
        self._seen = seen
        self._items: list[BatchItem | None] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: BatchItem | None, /) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def _run(self) -> None:
        from polyproc._pool.messages import READY, RESULTS, STOP, TaskError
        from polyproc._pool.worker import run_batch

        self._post(READY, self._wid, 0)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items), timeout=30)
                if not self._items:
                    return
                item = self._items.pop(0)
            if item is None or self.abandoned:
                self._post(STOP, self._wid)
                return
            bid, fn, mode, args = item
            self._seen.append(len(args))
            values = run_batch(fn, mode, args, TaskError.local)
            self._post(RESULTS, self._wid, bid, 0.0, None, values)


class _CountingWorkers(ThreadWorkers):
    def __init__(self, engine: Engine, seen: list[int]) -> None:
        super().__init__(engine, prefix="counting")
        self.seen = seen

    def make_slot(self, wid: int) -> Any:
        return _CountingSlot(wid, self.post_message, self.seen)


def test_a_worker_set_plugs_in_behind_the_engine() -> None:
    """What a cluster backend does: the same scheduler, workers of its own kind."""
    seen: list[int] = []
    engine = Engine(
        2, ctx=None, threads=True, workers=lambda e: _CountingWorkers(e, seen), window=1
    )
    try:
        from concurrent.futures import Future

        from polyproc._pool.results import Submitter

        sub = Submitter(engine)
        futs: list[Future[Any]] = []
        for i in range(20):
            fut: Future[Any] = Future()
            engine.submit(sub.single(h.inc, (i,), {}, fut, timeout=None, retries=0))
            futs.append(fut)
        assert [f.result(timeout=30) for f in futs] == list(range(1, 21))
        assert sum(seen) == 20
        stats = engine.statistics()
        assert {w.name for w in stats.workers} <= {"counting slot 1", "counting slot 2"}
        engine.check_open()  # open: no error
    finally:
        engine.close()
        assert engine.join(30)
    with pytest.raises(polyproc.errors.PoolClosedError):
        engine.check_open()


def test_drain_inbox_keeps_order_and_hands_a_burst_over_at_once() -> None:
    """A burst of submits reaches the scheduler in one ``add_jobs``; a posted call amid
    jobs runs between the jobs before and after it; one that raises leaves the rest queued."""
    from collections import deque
    from types import SimpleNamespace

    calls: list[Any] = []
    sched = SimpleNamespace(add_jobs=lambda jobs: calls.append(list(jobs)))
    info = tasks.FnInfo(1, None, "f", b"")
    jobs = [tasks.Job.task(info, tasks.Mode.STAR, None, b"", None, None, 0, None) for _ in range(5)]
    fake: Any = SimpleNamespace(inbox=deque(jobs[:3]), sched=sched)
    Engine.drain_inbox(fake)
    assert calls == [jobs[:3]] and not fake.inbox
    calls.clear()

    def boom() -> None:
        raise RuntimeError("posted")

    fake.inbox.extend([jobs[0], jobs[1], (calls.append, ("post",)), jobs[2], (boom, ()), jobs[3]])
    with pytest.raises(RuntimeError, match="posted"):
        Engine.drain_inbox(fake)
    assert calls == [jobs[:2], "post", [jobs[2]]]
    assert list(fake.inbox) == [jobs[3]]  # still there: the engine's end fails it
