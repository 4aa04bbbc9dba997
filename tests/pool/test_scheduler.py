"""The scheduler alone: fake events in, actions checked. No processes, no threads, no I/O."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyproc._pool.messages import TaskError
from polyproc._pool.scheduler import (
    POOL_TRANSITIONS,
    WORKER_TRANSITIONS,
    Broken,
    Deliver,
    DeliverSingles,
    Done,
    FnInfo,
    Job,
    Kill,
    Mode,
    PoolState,
    Scheduler,
    Send,
    Spawn,
    Stop,
    WorkerState,
)
from polyproc.errors import BrokenProcessPool, PoolClosedError, TimeoutError, WorkerLostError

_fids = itertools.count(1)


def fn(name: str = "f", est: float | None = None) -> FnInfo:
    info = FnInfo(next(_fids), None, name, b"")
    info.est = est
    return info


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A scheduler plus bookkeeping of what it asked for; workers answer on demand."""

    def __init__(self, processes: int = 2, **kw: Any) -> None:
        self.clock = Clock()
        self.s = Scheduler(processes, clock=self.clock, **kw)
        self.out: dict[int, list[Any]] = {}  # id(job) -> values by index
        self.done: set[int] = set()
        self.sent: list[Send] = []
        self.spawned: list[int] = []
        self.stopped: list[int] = []
        self.killed: list[int] = []
        self.broken: list[BaseException] = []
        self.drain()

    def drain(self) -> None:
        acts, self.s.actions = self.s.actions, []
        for a in acts:
            if isinstance(a, Send):
                self.sent.append(a)
            elif isinstance(a, Spawn):
                self.spawned.append(a.wid)
            elif isinstance(a, Stop):
                self.stopped.append(a.wid)
            elif isinstance(a, Kill):
                self.killed.append(a.wid)
            elif isinstance(a, Broken):
                self.broken.append(a.error)
            elif isinstance(a, Deliver):
                vals = self.out.setdefault(id(a.job), {})  # type: ignore[arg-type]
                for i, v in enumerate(a.values):
                    assert a.start + i not in vals, "delivered twice"
                    vals[a.start + i] = v
            elif isinstance(a, DeliverSingles):
                for j, v in zip(a.jobs, a.values, strict=True):
                    vals = self.out.setdefault(id(j), {})  # type: ignore[arg-type]
                    assert 0 not in vals, "delivered twice"
                    vals[0] = v
                    self.done.add(id(j))
            elif isinstance(a, Done):
                assert id(a.job) not in self.done, "done twice"
                self.done.add(id(a.job))

    def ready_all(self) -> None:
        for wid in list(self.s.workers):
            self.s.worker_ready(wid)
        self.drain()

    def take_sends(self) -> list[Send]:
        sent, self.sent = self.sent, []
        return sent

    def answer(
        self, send: Send, fn_: Any = lambda x: x * 2, busy: float = 0.001, rss: int | None = None
    ) -> None:
        vals = [fn_(a) for a in send.batch.args]
        self.s.batch_done(send.wid, send.batch.bid, vals, busy, rss)
        self.drain()

    def run_all(self, limit: int = 10_000, **kw: Any) -> None:
        """Answer every send, oldest first per worker, until nothing is in flight."""
        for _ in range(limit):
            sends = self.take_sends()
            if not sends:
                return
            for snd in sends:
                self.answer(snd, **kw)
        raise AssertionError("did not settle")

    def values(self, job: Job) -> list[Any]:
        vals = self.out.get(id(job), {})
        return [vals[i] for i in sorted(vals)]


def map_job(f: FnInfo, items: Any, **kw: Any) -> Job:
    it = iter(items)
    return Job(f, Mode.ONE, None, it=it, **kw)


def single(f: FnInfo, arg: Any, **kw: Any) -> Job:
    return Job(f, Mode.ONE, None, arg=arg, blob=arg, **kw)


# -- tables ----------------------------------------------------------------------------
def test_transition_tables_are_complete() -> None:
    assert set(WORKER_TRANSITIONS) == set(WorkerState)
    assert set(POOL_TRANSITIONS) == set(PoolState)
    assert WORKER_TRANSITIONS[WorkerState.DEAD] == frozenset()
    assert POOL_TRANSITIONS[PoolState.TERMINATE] == frozenset()


def test_illegal_moves_raise() -> None:
    h = Harness(1)
    with pytest.raises(RuntimeError):
        h.s.batch_done(1, 99, [], 0.0)  # nothing in flight: IndexError turns up as a bug
    slot = h.s.workers[1]
    with pytest.raises(RuntimeError, match="illegal"):
        h.s._move(slot, WorkerState.RETIRING)


def test_spawns_processes_at_start_and_sends_work_while_they_start() -> None:
    """A starting worker's first batch waits in its channel, as the stdlib's workers find
    their first tasks in the queue: no round through the engine after READY."""
    h = Harness(3)
    assert h.spawned == [1, 2, 3]
    h.s.add_job(single(fn(), 1))
    h.drain()
    assert [s.wid for s in h.sent] == [1]


def test_a_ready_worker_is_preferred_to_a_starting_one() -> None:
    h = Harness(3)
    h.s.worker_ready(2)
    h.drain()
    h.s.add_job(single(fn(), 1))
    h.drain()
    assert [s.wid for s in h.sent] == [2]


@pytest.mark.parametrize("kw", [{"timeout": 1.0}, {}])
def test_timed_work_and_maxtasks_wait_for_ready(kw: dict[str, Any]) -> None:
    """A timed task's clock must not run while its worker boots; under maxtasksperchild
    a worker retires from READY."""
    h = Harness(2, **({} if kw else {"maxtasksperchild": 2}))
    h.s.add_job(single(fn(), 1, **kw))
    h.drain()
    assert h.sent == []
    h.s.worker_ready(2)
    h.drain()
    assert [s.wid for s in h.sent] == [2]


def test_workers_that_boot_an_interpreter_get_work_only_once_ready() -> None:
    """Under spawn the first worker up takes its sibling's work too (it was sent to the
    slower boot and waited for it): no work before READY unless the engine says workers
    start quickly (``early_start``, set from its workers' ``quick_start``)."""
    h = Harness(2)
    h.s.early_start = False
    h.s.add_job(single(fn(), 1))
    h.s.add_job(single(fn(), 2))
    h.drain()
    assert h.sent == []
    h.s.worker_ready(2)
    h.drain()
    assert h.sent and {s.wid for s in h.sent} == {2}


def test_work_sent_to_a_worker_that_died_starting_runs_elsewhere_once() -> None:
    """It never said READY (said before it reads any task): nothing it held ran, so its
    window is requeued, not lost, and no WorkerLostError is seen."""
    h = Harness(2)
    h.s.add_job(single(fn(), 1))
    h.s.add_job(single(fn(), 2))
    h.drain()
    sends = h.take_sends()
    assert sorted(s.wid for s in sends) == [1, 2]
    dead = sends[0].wid
    h.s.worker_exited(dead, -9)
    h.drain()
    assert h.spawned[-1] == 3  # replaced
    h.ready_all()
    again = h.take_sends()
    assert [s.batch.args for s in again] == [sends[0].batch.args]
    h.answer(again[0])
    h.answer(sends[1])
    assert all(not isinstance(v, TaskError) for vals in h.out.values() for v in vals.values())
    assert len(h.done) == 2


# -- singles ---------------------------------------------------------------------------
def test_single_jobs_go_to_idle_workers_least_recently_used_first() -> None:
    h = Harness(5)
    h.ready_all()
    f = fn()
    a = single(f, 1)
    h.s.add_job(a)
    h.drain()
    (s1,) = h.take_sends()
    h.answer(s1)
    b, c = single(f, 2), single(f, 3)
    h.s.add_job(b)
    h.s.add_job(c)
    h.drain()
    sends = h.take_sends()
    # The tutorial's order: apply on worker 1, then the two apply_async on 2 and 3.
    assert s1.wid == 1 and [s.wid for s in sends] == [2, 3]
    for s in sends:
        h.answer(s)
    assert h.values(b) == [4] and h.values(c) == [6]
    assert h.s.idle()


def test_one_worker_runs_both_one_after_another() -> None:
    h = Harness(1)
    h.ready_all()
    f = fn()
    a, b = single(f, 1), single(f, 2)
    h.s.add_job(a)
    h.s.add_job(b)
    h.drain()
    sends = h.take_sends()
    assert len(sends) == 1 and len(sends[0].batch) == 1  # unmeasured: one at a time
    h.answer(sends[0], busy=5.0)
    (s2,) = h.take_sends()
    assert s2.wid == 1
    h.answer(s2, busy=5.0)
    assert h.values(a) == [2] and h.values(b) == [4]


def test_many_tiny_singles_are_batched_once_measured() -> None:
    h = Harness(2)
    h.ready_all()
    f = fn(est=1e-6)
    jobs = [single(f, i) for i in range(5000)]
    h.s.add_jobs(jobs)
    h.drain()
    sends = h.take_sends()
    assert max(len(s.batch) for s in sends) > 100
    for s in sends:
        h.answer(s, busy=len(s.batch) * 1e-6)
    h.run_all(busy=1e-4)
    assert all(h.values(j) == [2 * i] for i, j in enumerate(jobs))
    assert h.s.idle()


def test_cancelled_single_is_dropped_before_sending() -> None:
    h = Harness(1)
    h.ready_all()
    f = fn()
    a = single(f, 1, claim=lambda jobs: [])
    h.s.add_job(a)
    h.drain()
    assert h.sent == [] and h.s.idle()


# -- maps ------------------------------------------------------------------------------
@pytest.mark.parametrize("ordered", [True, False])
def test_map_delivers_everything_once(ordered: bool) -> None:
    h = Harness(3)
    h.ready_all()
    job = map_job(fn(), range(1000), ordered=ordered)
    h.s.add_job(job)
    h.drain()
    h.run_all(busy=0.0001)
    assert h.values(job) == [2 * i for i in range(1000)]
    assert id(job) in h.done and h.s.idle()


def test_ordered_results_wait_in_reorder_buffer() -> None:
    h = Harness(2)
    h.ready_all()
    job = map_job(fn(), range(2), ordered=True)
    h.s.add_job(job)
    h.drain()
    s0, s1 = h.take_sends()
    h.answer(s1)
    assert h.values(job) == []  # index 1 waits for index 0
    h.answer(s0)
    assert h.values(job) == [0, 2]


def test_explicit_chunksize_is_honoured() -> None:
    h = Harness(2)
    h.ready_all()
    job = map_job(fn(est=0.01), range(100), chunksize=7)
    h.s.add_job(job)
    h.drain()
    sizes = []
    for _ in range(100):
        sends = h.take_sends()
        if not sends:
            break
        for s in sends:
            sizes.append(len(s.batch))
            h.answer(s)
    assert sizes == [7] * 14 + [2]


def test_tiny_tasks_travel_several_whole_chunks_to_a_frame() -> None:
    h = Harness(2)
    h.ready_all()
    job = map_job(fn(est=1e-6), range(10_000), chunksize=7)
    h.s.add_job(job)
    h.drain()
    sizes = []
    for _ in range(1000):
        sends = h.take_sends()
        if not sends:
            break
        for s in sends:
            sizes.append(len(s.batch))
            h.answer(s)
    assert sum(sizes) == 10_000
    assert all(n % 7 == 0 for n in sizes[:-1]) and max(sizes) > 7


def test_adaptive_batch_size_grows_for_tiny_tasks_and_stays_one_for_slow() -> None:
    h = Harness(2)
    h.ready_all()
    tiny = map_job(fn(), range(100_000))
    h.s.add_job(tiny)
    h.drain()
    sizes = []
    for _ in range(50):
        for s in h.take_sends():
            sizes.append(len(s.batch))
            h.answer(s, busy=len(s.batch) * 1e-6)
    assert sizes[0] == 1 and max(sizes) >= 1000
    h2 = Harness(2)
    h2.ready_all()
    slow = map_job(fn(), range(20))
    h2.s.add_job(slow)
    h2.drain()
    for _ in range(30):
        for s in h2.take_sends():
            assert len(s.batch) == 1
            h2.answer(s, busy=0.5)


def test_lazy_input_pulls_only_what_fills_windows() -> None:
    pulled = 0

    def gen() -> Any:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    h = Harness(4)
    h.ready_all()
    job = map_job(fn(), gen(), ordered=True, credit=True)
    h.s.add_job(job)
    h.drain()
    assert pulled <= 4 * h.s.window


def test_credit_bounds_a_slow_consumer() -> None:
    h = Harness(2)
    h.ready_all()
    job = map_job(fn(), itertools.count(), ordered=True, credit=True)
    h.s.add_job(job)
    h.drain()
    for _ in range(200):
        for s in h.take_sends():
            h.answer(s, busy=len(s.batch) * 1e-6)
    limit = h.s._credit_limit(job)
    assert job.pulled - job.consumed <= limit
    assert job.stalled and not h.sent
    h.s.consumed(job, job.delivered)
    h.drain()
    assert h.sent  # the consumer caught up: work goes out again


def test_the_lead_grows_only_while_the_consumer_keeps_up() -> None:
    """Slow start (issue 14, imap RSS): a consumer that takes everything delivered and
    waits doubles the lead each time; one that never catches up keeps the small first
    lead (for tiny tasks the full pipeline is ~50k items, and their results, in the
    parent's memory)."""

    def run(keeps_up: bool) -> int:
        h = Harness(2)
        h.ready_all()
        job = map_job(fn(), itertools.count(), ordered=True, credit=True)
        h.s.add_job(job)
        h.drain()
        most = 0
        for _ in range(40):
            for s in h.take_sends():
                h.answer(s, busy=len(s.batch) * 1e-7)
            most = max(most, job.pulled - job.consumed)
            taken = job.delivered if keeps_up else job.consumed + 8
            h.s.consumed(job, min(taken, job.delivered))
            h.drain()
        return most

    slow, fast = run(False), run(True)
    assert slow <= 1024, slow
    assert fast >= 8 * slow, (fast, slow)


def test_input_iterator_raising_becomes_the_last_result() -> None:
    def gen() -> Any:
        yield 1
        yield 2
        raise ValueError("bad input")

    h = Harness(1)
    h.ready_all()
    job = map_job(fn(est=1e-6), gen(), ordered=True)
    h.s.add_job(job)
    h.drain()
    h.run_all()
    vals = h.values(job)
    assert vals[:2] == [2, 4] and isinstance(vals[2], TaskError)
    assert isinstance(vals[2].exception(), ValueError)
    assert id(job) in h.done


def test_empty_input_finishes_at_once() -> None:
    h = Harness(1)
    h.ready_all()
    job = map_job(fn(), [])
    h.s.add_job(job)
    h.drain()
    assert id(job) in h.done and h.values(job) == []


def test_cancelled_map_stops_pulling_and_delivering() -> None:
    h = Harness(1)
    h.ready_all()
    job = map_job(fn(), itertools.count(), ordered=True, credit=True)
    h.s.add_job(job)
    h.drain()
    (s,) = h.take_sends()
    h.s.cancel(job)
    h.answer(s)
    assert h.values(job) == [] and h.sent == [] and h.s.idle()


# -- deaths ----------------------------------------------------------------------------
def test_worker_death_fails_only_its_task_and_replaces_it() -> None:
    h = Harness(2)
    h.ready_all()
    f = fn()
    a, b = single(f, "a"), single(f, "b")
    h.s.add_job(a)
    h.s.add_job(b)
    h.drain()
    sa, sb = h.take_sends()
    h.s.worker_exited(sa.wid, -9, peak_rss=50 * 2**20, name="SpawnPoolWorker-1")
    h.drain()
    (err,) = h.values(a)
    exc = err.exception()
    assert isinstance(exc, WorkerLostError)
    assert exc.function == "f" and exc.index == 0 and exc.argument == "'a'"
    assert exc.exitcode == -9 and exc.peak_rss == 50 * 2**20
    assert "SIGKILL" in str(exc) and "SpawnPoolWorker-1" in str(exc)
    assert h.spawned[-1] == 3
    h.answer(sb)
    assert h.values(b) == ["bb"]
    assert h.s.stats["lost"] == 1


def test_death_with_progress_blames_exactly_one_task_of_a_batch() -> None:
    h = Harness(1)
    h.ready_all()
    job = map_job(fn(), range(10), chunksize=10)
    h.s.add_job(job)
    h.drain()
    (s,) = h.take_sends()
    h.s.worker_exited(s.wid, -11, progress=(s.batch.bid, 4))
    h.drain()
    h.s.worker_ready(2)
    h.drain()
    h.run_all()
    vals = h.values(job)
    assert [v for i, v in enumerate(vals) if i != 4] == [2 * i for i in range(10) if i != 4]
    assert isinstance(vals[4], TaskError) and vals[4].exception().index == 4


def test_death_without_progress_isolates_to_find_the_culprit() -> None:
    h = Harness(1)
    h.ready_all()
    job = map_job(fn(), range(6), chunksize=6)
    h.s.add_job(job)
    h.drain()
    (s,) = h.take_sends()
    h.s.worker_exited(s.wid, 1)
    h.drain()
    wid = 2
    while True:
        h.s.worker_ready(wid)
        h.drain()
        sends = h.take_sends()
        if not sends:
            break
        for snd in sends:
            assert len(snd.batch) == 1
            if snd.batch.args == [3]:  # the culprit dies again, alone
                h.s.worker_exited(wid, 1)
                h.drain()
                # its window is requeued: drop its stale sends (its successor's stand)
                h.sent = [x for x in h.sent if x.wid != wid]
                wid += 1
                break
            h.answer(snd)
    vals = h.values(job)
    assert vals[:3] == [0, 2, 4] and vals[4:] == [8, 10]
    assert isinstance(vals[3].exception(), WorkerLostError)


def test_retries_rerun_a_lost_task() -> None:
    h = Harness(1)
    h.ready_all()
    a = single(fn(), 5, retries=2)
    h.s.add_job(a)
    h.drain()
    for wid in (1, 2):
        (s,) = h.take_sends()
        h.s.worker_exited(wid, -9)
        h.s.worker_ready(wid + 1)
        h.drain()
    (s,) = h.take_sends()
    h.answer(s)
    assert h.values(a) == [10] and h.s.stats["retried"] == 2


def test_unsent_batches_in_a_dead_window_are_rerun() -> None:
    h = Harness(1)
    h.ready_all()
    job = map_job(fn(est=0.001), range(30), chunksize=5)
    h.s.add_job(job)
    h.drain()
    sends = h.take_sends()
    assert len(sends) == h.s.window
    h.s.worker_exited(1, -9, progress=(sends[0].batch.bid, 0))
    h.s.worker_ready(2)
    h.drain()
    h.run_all()
    vals = h.values(job)
    assert isinstance(vals[0], TaskError)
    assert vals[1:] == [2 * i for i in range(1, 30)]


def test_initializer_failure_breaks_the_pool_instead_of_respawning() -> None:
    h = Harness(2)
    a = single(fn(), 1)
    h.s.add_job(a)
    h.drain()
    h.s.worker_failed_init(1, ValueError("init"))
    h.drain()
    assert h.broken and isinstance(h.values(a)[0].exception(), BrokenProcessPool)
    assert sorted(h.killed) == [1, 2]
    h.s.worker_exited(1, 1)
    h.s.worker_exited(2, 1)
    h.drain()
    assert h.spawned == [1, 2]
    b = single(fn(), 2)
    h.s.add_job(b)
    h.drain()
    assert isinstance(h.values(b)[0].exception(), BrokenProcessPool)


def test_workers_dying_at_start_repeatedly_break_the_pool() -> None:
    h = Harness(1)
    for wid in (1, 2, 3):
        h.s.worker_exited(wid, 1)
        h.drain()
    assert h.broken and h.s.state is PoolState.BROKEN


# -- timeouts --------------------------------------------------------------------------
def test_timed_task_runs_alone_and_is_killed_when_late() -> None:
    h = Harness(1)
    h.ready_all()
    f = fn(est=1e-6)
    slow = single(f, 1, timeout=2.0)
    other = single(f, 2)
    h.s.add_job(slow)
    h.s.add_job(other)
    h.drain()
    (s,) = h.take_sends()
    assert len(s.batch) == 1
    assert h.s.next_deadline() == 102.0
    h.s.tick(101.0)
    h.drain()
    assert h.killed == []
    h.s.tick(102.5)
    h.drain()
    assert h.killed == [1]
    h.s.worker_exited(1, -9)
    h.s.worker_ready(2)
    h.drain()
    err = h.values(slow)[0].exception()
    assert isinstance(err, TimeoutError) and "timeout" in str(err)
    (s2,) = h.take_sends()
    h.answer(s2)
    assert h.values(other) == [4] and h.s.stats["timed_out"] == 1


def test_timed_task_that_finishes_in_time_clears_its_deadline() -> None:
    h = Harness(1)
    h.ready_all()
    a = single(fn(), 1, timeout=1.0)
    h.s.add_job(a)
    h.drain()
    (s,) = h.take_sends()
    h.answer(s)
    assert h.s.next_deadline() is None
    h.s.tick(1000.0)
    h.drain()
    assert h.killed == []


# -- recycling -------------------------------------------------------------------------
def test_maxtasksperchild_retires_and_replaces() -> None:
    h = Harness(1, maxtasksperchild=3)
    h.ready_all()
    job = map_job(fn(est=1e-6), range(7))
    h.s.add_job(job)
    h.drain()
    wid = 1
    for _ in range(20):
        sends = h.take_sends()
        for s in sends:
            assert len(s.batch) <= 3
            h.answer(s)
        for w in list(h.stopped):
            h.stopped.remove(w)
            h.s.worker_exited(w, 0)
        h.drain()
        for w, slot in list(h.s.workers.items()):
            if slot.state is WorkerState.STARTING:
                h.s.worker_ready(w)
                wid = w
        h.drain()
    assert h.values(job) == [2 * i for i in range(7)]
    assert wid == 3 and h.s.stats["workers_recycled"] >= 2


def test_max_memory_retires_a_fat_worker_between_tasks() -> None:
    h = Harness(1, max_memory_per_child=100)
    h.ready_all()
    a, b = single(fn(), 1), single(fn(), 2)
    h.s.add_job(a)
    h.s.add_job(b)
    h.drain()
    (s,) = h.take_sends()
    h.answer(s, rss=500)
    assert h.stopped == [1] and h.spawned == [1, 2]
    h.s.worker_exited(1, 0)
    h.s.worker_ready(2)
    h.drain()
    (s2,) = h.take_sends()
    assert s2.wid == 2


# -- close / terminate -----------------------------------------------------------------
def test_close_finishes_work_then_stops_workers() -> None:
    h = Harness(2)
    h.ready_all()
    a = single(fn(), 1)
    h.s.add_job(a)
    h.drain()
    h.s.close()
    h.drain()
    assert h.stopped == []
    h.run_all()
    assert sorted(h.stopped) == [1, 2]
    for w in (1, 2):
        h.s.worker_exited(w, 0)
    assert h.s.finished()
    b = single(fn(), 1)
    h.s.add_job(b)
    h.drain()
    assert isinstance(h.values(b)[0].exception(), PoolClosedError)


def test_terminate_fails_outstanding_and_kills() -> None:
    h = Harness(2)
    h.ready_all()
    job = map_job(fn(), itertools.count(), ordered=True, credit=True)
    h.s.add_job(job)
    h.drain()
    h.s.terminate(PoolClosedError("terminated"))
    h.drain()
    assert sorted(h.killed) == [1, 2] and id(job) in h.done
    assert isinstance(h.values(job)[-1].exception(), PoolClosedError)
    for w in (1, 2):
        h.s.worker_exited(w, -9)
    assert h.s.finished() and h.spawned == [1, 2]


# -- property: whatever dies, every task ends exactly once -----------------------------
@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 60),
    workers=st.integers(1, 4),
    chunksize=st.one_of(st.none(), st.integers(1, 9)),
    ordered=st.booleans(),
    script=st.lists(
        st.tuples(st.sampled_from(["answer", "die", "die_at"]), st.integers(0, 8)), max_size=200
    ),
)
def test_every_task_ends_exactly_once(
    n: int, workers: int, chunksize: int | None, ordered: bool, script: list[tuple[str, int]]
) -> None:
    h = Harness(workers)
    h.ready_all()
    job = map_job(fn(est=1e-5), range(n), chunksize=chunksize, ordered=ordered)
    h.s.add_job(job)
    h.drain()
    inflight: list[Send] = []

    def step(kind: str, k: int) -> None:
        inflight.extend(h.take_sends())
        for w, slot in list(h.s.workers.items()):
            if slot.state is WorkerState.STARTING:
                h.s.worker_ready(w)
        h.drain()
        inflight.extend(h.take_sends())
        live = [s for s in inflight if s.wid in h.s.workers]
        inflight[:] = live
        if not live:
            return
        snd = live[k % len(live)]
        slot = h.s.workers[snd.wid]
        head = slot.window[0]
        if kind == "answer":
            mine = next(s for s in live if s.batch is head)
            inflight.remove(mine)
            h.answer(mine)
        else:
            prog = (head.bid, k % (len(head) + 1)) if kind == "die_at" else None
            h.s.worker_exited(snd.wid, -9, progress=prog)
            h.drain()

    for kind, k in script:
        step(kind, k)
    for _ in range(10_000):
        if id(job) in h.done:
            break
        step("answer", 0)
    assert id(job) in h.done
    vals = h.values(job)
    assert len(vals) == n
    for i, v in enumerate(vals):
        assert v == 2 * i or (
            isinstance(v, TaskError) and isinstance(v.exception(), WorkerLostError)
        )
    assert h.s.idle()


def test_job_task_builds_what_the_keyword_constructor_builds() -> None:
    """``Job.task`` (submit's constructor, no keyword parsing) sets every field as ``Job``."""
    f = fn()
    claim: Any = bool
    made = Job.task(f, Mode.KW, "sink", b"blob", ("a", {}), 1.5, 2, claim)
    ref = Job(f, Mode.KW, "sink", arg=("a", {}), blob=b"blob", timeout=1.5, retries=2, claim=claim)
    for name in Job.__slots__:
        assert getattr(made, name) == getattr(ref, name), name


def test_a_single_task_argument_kept_only_pickled_is_read_back_for_messages() -> None:
    import pickle

    f = fn()
    job = Job.task(f, Mode.STAR, None, pickle.dumps(("a", 1)), None, None, 0, None)
    assert job.call_arg() == ("a", 1)
    job.blob = b"not a pickle"
    assert "not readable" in repr(job.call_arg())
    kept = Job.task(f, Mode.STAR, None, (b"body", [], []), ("x",), None, 0, None)
    assert kept.call_arg() == ("x",)
    h = Harness(1)
    h.ready_all()
    lost = Job.task(f, Mode.STAR, None, pickle.dumps(("q", 7)), None, None, 0, None)
    h.s.add_job(lost)
    h.drain()
    (send,) = h.take_sends()
    h.s.worker_exited(send.wid, -9)
    h.drain()
    exc = h.values(lost)[0].exception()
    assert isinstance(exc, WorkerLostError)
    assert exc.argument == "('q', 7)" and "f('q', 7)" in str(exc)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_batch_of_singles_delivers_only_its_open_jobs(where: str) -> None:
    """``_complete`` hands the batch's own lists on when every job is open; a job closed
    meanwhile (cancelled, or failed by a terminate) is skipped, wherever it stands."""
    h = Harness(1)
    h.ready_all()
    f = fn(est=1e-6)
    jobs = [single(f, i) for i in range(300)]
    h.s.add_jobs(jobs)
    h.drain()
    sends = h.take_sends()
    send = max(sends, key=lambda s: len(s.batch))
    owners = send.batch.owners
    assert owners is not None and len(owners) >= 3
    gone = owners[{"first": 0, "middle": len(owners) // 2, "last": -1}[where]]
    h.s.cancel(gone)
    h.drain()
    for snd in sends:
        h.answer(snd)
    h.run_all()
    for i, job in enumerate(jobs):
        assert h.values(job) == ([] if job is gone else [2 * i])
    assert h.s.idle() and not h.s.jobs


def test_a_lone_single_task_goes_to_the_idle_worker_that_answered_last() -> None:
    """The round trip's short way (``add_single``) picks the most recently used idle
    worker: it is still polling for work (``worker.WORKER_SPIN``). The generic fill keeps
    the least recently used one, spreading a burst."""
    h = Harness(2)
    h.ready_all()
    f = fn()
    jobs = [single(f, i) for i in range(5)]  # kept: the harness files results by id()
    first = h.s.add_single(jobs[0])
    assert first is not None
    h.drain()
    h.answer(h.take_sends()[0])
    for job in jobs[1:4]:
        again = h.s.add_single(job)
        assert again is not None and again.wid == first.wid
        h.drain()
        h.answer(h.take_sends()[0])
    h.s.add_job(jobs[4])  # the engine's path: the other one
    h.drain()
    assert [s.wid for s in h.take_sends()] == [3 - first.wid]
