"""The scheduler after a death, given what the worker's commit journal recovered (no processes).

``Recovered(bid, values)``: the head batch's first ``len(values)`` tasks finished (delivered,
never sent again), the next was running (lost, or retried), the rest are requeued; ``values``
None: the head never started (requeued whole; cut into singles if it keeps killing workers).
"""

from __future__ import annotations

from typing import Any

from test_scheduler import Harness, fn, map_job, single

from polyproc._pool.messages import TaskError
from polyproc._pool.scheduler import Recovered
from polyproc.errors import WorkerLostError


def _one_batch(n: int = 10, **kw: Any) -> tuple[Harness, Any, Any]:
    h = Harness(1)
    h.ready_all()
    job = map_job(fn(), range(n), chunksize=n, **kw)
    h.s.add_job(job)
    h.drain()
    (s,) = h.take_sends()
    return h, job, s


def _restart(h: Harness) -> None:
    h.drain()
    for wid in list(h.s.workers):
        h.s.worker_ready(wid)
    h.drain()


def _sent_args(h: Harness) -> list[Any]:
    return [a for snd in h.sent for a in snd.batch.args]


def test_finished_tasks_are_delivered_and_never_sent_again() -> None:
    h, job, s = _one_batch()
    done = [f"r{i}" for i in range(4)]  # what the journal held, not what a re-run would give
    h.s.worker_exited(s.wid, -9, recovered=Recovered(s.batch.bid, done))
    _restart(h)
    assert _sent_args(h) == list(range(5, 10))  # only the ones that never started
    h.run_all()
    vals = h.values(job)
    assert vals[:4] == done
    assert isinstance(vals[4], TaskError)
    err = vals[4].exception()
    assert isinstance(err, WorkerLostError) and err.index == 4
    assert vals[5:] == [2 * i for i in range(5, 10)]
    assert id(job) in h.done
    assert h.s.stats["lost"] == 1 and h.s.stats["done"] >= 9


def test_a_batch_that_finished_whole_loses_nothing() -> None:
    h, job, s = _one_batch(5)
    h.s.worker_exited(s.wid, -9, recovered=Recovered(s.batch.bid, [7, 8, 9, 10, 11]))
    _restart(h)
    assert h.sent == []
    assert h.values(job) == [7, 8, 9, 10, 11]
    assert h.s.stats["lost"] == 0


def test_the_running_task_is_retried_when_allowed() -> None:
    h, job, s = _one_batch(6, retries=1)
    h.s.worker_exited(s.wid, -9, recovered=Recovered(s.batch.bid, ["a", "b"]))
    _restart(h)
    ran: list[int] = []
    h.run_all(fn_=lambda x: ran.append(x) or x * 2)
    assert sorted(ran) == [2, 3, 4, 5]  # the running one again, and the rest: once each
    assert h.values(job) == ["a", "b", 4, 6, 8, 10]
    assert h.s.stats["retried"] == 1


def test_a_batch_that_never_started_is_requeued_whole_then_cut_then_blamed() -> None:
    h, job, s = _one_batch(3)
    h.s.worker_exited(s.wid, -9, recovered=Recovered(s.batch.bid, None))
    _restart(h)
    (again,) = h.take_sends()
    assert again.batch.args == [0, 1, 2]  # nothing ran: all of it, nothing lost
    h.s.worker_exited(again.wid, -9, recovered=Recovered(again.batch.bid, None))
    _restart(h)
    first = h.take_sends()
    assert [snd.batch.args for snd in first] == [[0]]  # now one at a time
    h.s.worker_exited(first[0].wid, -9, recovered=Recovered(first[0].batch.bid, None))
    _restart(h)
    h.run_all()
    vals = h.values(job)
    assert isinstance(vals[0], TaskError) and isinstance(vals[0].exception(), WorkerLostError)
    assert vals[1:] == [2, 4]


def test_the_rest_of_the_window_runs_first_and_once() -> None:
    h = Harness(1, window=3)
    h.ready_all()
    f = fn(est=1e-6)
    jobs = [single(f, i) for i in range(6)]
    h.s.add_jobs(jobs)
    h.drain()
    sends = h.take_sends()
    head = sends[0]
    h.s.worker_exited(head.wid, -9, recovered=Recovered(head.batch.bid, [100]))
    _restart(h)
    h.run_all()
    got = [h.values(j)[0] for j in jobs]
    assert got[0] == 100
    rest = got[1:]
    lost = [v for v in rest if isinstance(v, TaskError)]
    assert len(lost) == (1 if len(head.batch) > 1 else 0)


def test_a_worker_killed_between_tasks_requeues_the_next_one_unharmed() -> None:
    """``started`` False: tasks 0-3 finished, task 4 was never called (the worker died after
    committing 3): 0-3 are delivered, 4 onwards run again, nothing is lost or retried."""
    h, job, s = _one_batch(10)
    h.s.worker_exited(s.wid, -9, recovered=Recovered(s.batch.bid, [0, 2, 4, 6], started=False))
    _restart(h)
    assert _sent_args(h) == list(range(4, 10))
    h.run_all()
    assert h.values(job) == [x * 2 for x in range(10)]
    assert h.s.stats["lost"] == 0 and h.s.stats["retried"] == 0


def test_a_batch_whose_worker_died_waiting_for_it_is_never_blamed() -> None:
    """``loading`` False (the worker was waiting, or had loaded the batch and not called its
    first task): no strike, however often it happens, up to the patience; a death while
    loading it is a strike (the guard against an argument that kills its worker)."""
    h, job, snd = _one_batch(3)
    for _ in range(5):
        h.s.worker_exited(snd.wid, -9, recovered=Recovered(snd.batch.bid, None, loading=False))
        _restart(h)
        (snd,) = h.take_sends()
    again = snd
    assert again.batch.args == [0, 1, 2] and again.batch.unstarted == 0  # whole, no strike
    h.s.worker_exited(again.wid, -9, recovered=Recovered(again.batch.bid, [], started=False))
    _restart(h)
    h.run_all()
    assert h.values(job) == [0, 2, 4]
    assert h.s.stats["lost"] == 0


def test_a_batch_whose_worker_keeps_dying_waiting_is_blamed_after_the_patience() -> None:
    """A worker that dies on its own whatever it is given (a thread its initializer started)
    must not requeue one batch forever: past the patience, the deaths count as strikes."""
    h, job, snd = _one_batch(1)
    for _ in range(20):
        h.s.worker_exited(snd.wid, -9, recovered=Recovered(snd.batch.bid, None, loading=False))
        _restart(h)
        sends = h.take_sends()
        if not sends:
            break
        (snd,) = sends
    vals = h.values(job)
    assert isinstance(vals[0], TaskError) and isinstance(vals[0].exception(), WorkerLostError)
