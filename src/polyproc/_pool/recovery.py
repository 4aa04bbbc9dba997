"""What a worker's death, or a late task, does to the work it held. Part of ``Scheduler``.

``Scheduler`` binds these as its methods (``worker_exited`` is one of its events);
they are kept apart from filling windows (``batching.py``) because they answer a
different question: given a dead worker's window and what its commit journal says
(``Recovered``), which tasks are delivered, which one failed (or runs again under
``retries=``) and which go back in line::

    worker_exited(wid, exitcode, recovered)
      window = [head, b2, b3]   b2, b3 never started ──► requeued, first in line
      head + journal:  every task finished ──► delivered (_account, _complete)
                       none started ──► _unstarted: run again; twice ──► one task at a time
                       (died waiting or before its first call: requeued, no strike)
                       died between tasks k-1 and k ──► 0..k-1 delivered, k.. requeued
                       task k running ──► _lost_batch: 0..k-1 delivered (journal) or
                                          requeued; k lost (WorkerLostError) or
                                          retried; k+1.. requeued
      timed-out head ──► _timed_out: TimeoutError for its one task
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors
from .._launch.child import BOOTSTRAP_ERROR, REFUSED_EXIT
from ..errors import TimeoutError
from .messages import TaskError
from .tasks import (
    Batch,
    DeliverSingles,
    PoolState,
    Recovered,
    WorkerState,
    _single,
    _slice,
    call_repr,
    describe_exit,
    short_repr,
)

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = [
    "worker_exited",
    "timed_out",
    "deliver_one",
    "unstarted",
    "died_between_tasks",
    "account",
    "lost_batch",
]

#: Deaths of a worker a batch may wait out before it starts (its worker waiting for it, or
#: between loading it and its first call) without a strike against it: a guard for a worker
#: that dies on its own whatever it is given (a thread its initializer started, say).
_PATIENCE = 8


def worker_exited(
    s: Scheduler,
    wid: int,
    exitcode: int | None,
    *,
    progress: tuple[int, int] | None = None,
    peak_rss: int | None = None,
    name: str = "",
    recovered: Recovered | None = None,
) -> None:
    """A worker's process ended (its sentinel fired, its channel drained).

    ``recovered`` (from the worker's commit journal) says how far the head batch got:
    its finished tasks are delivered, never run again; the one that was running is
    lost (or retried); the rest are requeued. Without it (``progress`` alone, or
    nothing) the finished ones cannot be told apart and are run again.
    """
    slot = s.workers.pop(wid)
    was = slot.state
    if was is not WorkerState.DEAD:
        s._move(slot, WorkerState.DEAD)
    slot.exitcode = exitcode
    slot.name = name
    if peak_rss is not None:
        slot.peak_rss = max(slot.peak_rss or 0, peak_rss)
    s.finished_workers.append(slot)
    del s.finished_workers[:-64]
    if s.state is PoolState.TERMINATE:
        return
    if was is WorkerState.STARTING:
        s._start_failures += 1
        if exitcode == REFUSED_EXIT:
            # A spawned worker would not import our main module: it has no main
            # guard. No other worker would do better: the program must change.
            s._break(RuntimeError(BOOTSTRAP_ERROR))
            return
    window = list(slot.window)
    slot.window.clear()
    who = name or f"worker {wid}"
    head = window.pop(0) if window else None
    for batch in reversed(window):  # never started: run again, first in line
        s.requeued.appendleft(batch)
    done: list[Any] | None = None
    if head is not None and was is WorkerState.STARTING and head.waits < _PATIENCE:
        # It never said READY, which a worker says before it reads its first batch: it was
        # sent work while it started (``Scheduler._pick_worker``), and none of it ran.
        head.waits += 1
        s.requeued.appendleft(head)
        head = None
    if head is not None and recovered is not None and recovered.bid == head.bid:
        done = recovered.values
        if done is not None and len(done) >= len(head):
            # Every task of it finished; only its results' trip was cut short.
            s._account(head, done[: len(head)])
            s._complete(head, done[: len(head)])
            head = None
        elif head.waits < _PATIENCE and (
            (done is None and not recovered.loading) or (done == [] and not recovered.started)
        ):
            # It died waiting for the batch, or after loading it and before calling its
            # first task: nothing of the batch ran or killed it (journal.py, STATE).
            head.waits += 1
            s.requeued.appendleft(head)
            head = None
        elif done is None or (done == [] and not recovered.started):
            head = s._unstarted(head, exitcode, slot.peak_rss, who)
        elif not recovered.started:
            s._died_between_tasks(head, done)
            head = None
    if head is not None and head is slot.timed_out:
        s._timed_out(head, who)
    elif head is not None:
        pos: int | None = None
        if done is not None:
            pos = len(done)
        elif progress is not None and progress[0] == head.bid:
            pos = progress[1]
        elif len(head) == 1:
            pos = 0
        s._lost_batch(head, pos, exitcode, slot.peak_rss, who, done)
    if s._start_failures >= 3 and s.state is not PoolState.BROKEN:
        from ..errors import StartError

        err = StartError(
            f"{s._start_failures} workers in a row died while starting "
            f"({who}: {describe_exit(exitcode)})"
        )
        s._break(errors.BrokenProcessPool(str(err)))
        return
    s._top_up()
    s._fill()


def timed_out(s: Scheduler, batch: Batch, who: str) -> None:
    s.stats["timed_out"] += 1
    job, index = batch.job_of(0)
    err = TimeoutError(
        f"task {call_repr(job.fn.name, job.mode, batch.arg_of(0))} (index {index}) ran past its "
        f"timeout of {job.timeout} s; {who} was killed and replaced"
    )
    s._deliver_one(batch, 0, TaskError.local(err))


def deliver_one(s: Scheduler, batch: Batch, i: int, value: Any) -> None:
    job, index = batch.job_of(i)
    if batch.owners is not None:
        if not job.finished and not job.cancelled:
            job.finished = True
            job.delivered = 1
            del s.jobs[id(job)]
            s.actions.append(DeliverSingles([job], [value]))
    else:
        s._complete_run(job, index, [value])


def unstarted(
    s: Scheduler, batch: Batch, exitcode: int | None, peak_rss: int | None, who: str
) -> Batch | None:
    """Its worker died before any task of ``batch`` began (receiving it, say): run it
    again. A batch that keeps killing workers before it starts is cut into single
    tasks, and a single task that does it twice is the culprit (the lost path)."""
    batch.unstarted += 1
    if batch.unstarted < 2:
        s.requeued.appendleft(batch)
        return None
    if len(batch) > 1:
        for i in reversed(range(len(batch))):
            one = _single(batch, i)
            one.isolated = True
            one.unstarted = 1
            s.requeued.appendleft(one)
        return None
    return batch  # lost (or retried) like a task that was running


def died_between_tasks(s: Scheduler, batch: Batch, done: list[Any]) -> None:
    """Its worker died after finishing ``done`` and before calling the next task: those
    are delivered, the rest (the next one included: it never began) run again."""
    pos = len(done)
    before = _slice(batch, 0, pos)
    s._account(before, done)
    s._complete(before, done)
    s.requeued.appendleft(_slice(batch, pos, len(batch)))


def account(s: Scheduler, batch: Batch, values: list[Any]) -> None:
    failed = sum(1 for v in values if type(v) is TaskError)
    s.stats["done"] += len(values) - failed
    s.stats["failed"] += failed


def lost_batch(
    s: Scheduler,
    batch: Batch,
    pos: int | None,
    exitcode: int | None,
    peak_rss: int | None,
    who: str,
    done: list[Any] | None = None,
) -> None:
    if pos is None or pos >= len(batch):
        # We cannot tell which task killed it: run each alone to find out.
        for i in reversed(range(len(batch))):
            one = _single(batch, i)
            one.isolated = True
            s.requeued.appendleft(one)
        return
    after = _slice(batch, pos + 1, len(batch))
    if len(after):
        s.requeued.appendleft(after)
    job, index = batch.job_of(pos)
    if job.lost is None:
        job.lost = {}
    times = job.lost.get(index, 0) + 1
    job.lost[index] = times
    if times <= job.retries:
        s.stats["retried"] += 1
        s.requeued.appendleft(_single(batch, pos))
    else:
        s.stats["lost"] += 1
        rss = f"{peak_rss / 2**20:.1f} MiB" if peak_rss else "unknown"
        err = errors.WorkerLostError(
            f"{who} died ({describe_exit(exitcode)}) while running "
            f"{call_repr(job.fn.name, job.mode, batch.arg_of(pos))} (task index {index}); "
            f"peak RSS {rss}" + (f"; tried {times} times" if times > 1 else ""),
            function=job.fn.name,
            index=index,
            argument=short_repr(batch.arg_of(pos)),
            exitcode=exitcode,
            peak_rss=peak_rss,
        )
        s._deliver_one(batch, pos, TaskError.local(err))
    before = _slice(batch, 0, pos)
    if len(before) and done is not None:
        # They finished and the journal kept their results: delivered, never run again.
        s._account(before, done[:pos])
        s._complete(before, done[:pos])
    elif len(before):
        # They finished, but without a journal their results died with the worker.
        s.requeued.appendleft(before)
