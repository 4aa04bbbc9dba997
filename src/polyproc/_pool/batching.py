"""How work is cut into batches: sizes, credit, and pulling input. Part of ``Scheduler``.

These are the scheduler's methods for filling a window (``Scheduler`` binds each
one as a method, so a call costs what it cost inside the class), kept apart from
the events and the completion bookkeeping in ``scheduler.py`` and from what a
worker's death does (``recovery.py``)::

    Scheduler._fill ──► _peek: the next work's function (requeued batches first)
                    ──► _pick_worker (scheduler.py): least loaded, least recently used
                    ──► _next_batch ──► requeued batch (split to a recycling quota)
                                    ├─► _singles_batch: single tasks of one function
                                    └─► _pull: a map's input, up to _batch_size and the
                                        job's credit (_credit_limit: items and bytes)

A batch's size is ``target_batch_s`` over the function's measured time per task
(``_batch_size_for``), capped in tasks and bytes; an ordered job with a consumer
never runs more than ``_credit_limit`` tasks ahead of it.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .messages import TaskError
from .tasks import Batch, FnInfo, Job, PoolState, Send, _split

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = [
    "credit_limit",
    "batch_size",
    "depth",
    "batch_size_for",
    "peek",
    "timed",
    "next_batch",
    "singles_batch",
    "pull",
    "add_single",
    "approx_bytes",
    "CREDIT_BYTES",
    "PACE_S",
    "pace",
]


def credit_limit(s: Scheduler, job: Job) -> int:
    size = s._batch_size(job, None)
    items = max(64, 2 * s.processes * s.window * size)
    if job.item_bytes:
        # Bounded in bytes too (issue #14): big items (1 MiB arrays) ahead of a slow
        # consumer would hold the parent's memory: ``CREDIT_BYTES`` per worker.
        items = min(items, max(s.processes, s.processes * CREDIT_BYTES // job.item_bytes))
    # Slow start: the lead grows (doubling) each time the consumer has taken everything
    # delivered and waits on the workers, so a slow one never has the full pipeline
    # pulled ahead of it at the start.
    items = min(items, max(job.cap, s.processes * 64))
    if job.paced and job.rate:
        # A consumer slower than the workers sets the pace: keep ``PACE_S`` of its
        # consumption ahead, not the workers' full pipeline (which, for tiny tasks, is
        # ~50k items and their results in the parent's memory: issue #14's imap RSS).
        items = min(items, max(64, int(job.rate * PACE_S)))
    job.limit = items
    return items


#: Seconds of a slow consumer's consumption a paced credit job keeps ahead of it.
PACE_S = 0.05
_CAP_MAX = 1 << 24  # the slow start's ceiling: past any pipeline's need


def pace(job: Job, count: int, now: float) -> None:
    """A consumption report (``count`` taken in all): learn whether the consumer is the
    bottleneck, and how fast it takes results.

    A consumer that has taken everything delivered waits on the workers: the lead may
    double (``cap``, the slow start).
    Paced when results wait for it (half the credit delivered and not taken); its rate
    is then measured between reports. Unpaced as soon as it has taken everything
    delivered (it waits on the workers: the full pipeline is what it needs).
    """
    if count >= job.delivered:
        job.paced = False
        job.rate = 0.0
        job.cap = min(job.cap * 2, _CAP_MAX)
    elif job.paced and count > job.seen_n and now > job.seen:
        r = (count - job.seen_n) / (now - job.seen)
        job.rate = r if not job.rate else (job.rate + r) / 2
    elif not job.paced and job.stalled and job.delivered - count >= job.pulled - job.delivered:
        job.paced = True  # more results wait for the consumer than are in the workers
    job.seen, job.seen_n = now, count


def batch_size(s: Scheduler, job: Job, waiting: int | None) -> int:
    if job.chunksize:
        # The chunk is the unit: a batch is whole chunks. Slow tasks go one chunk at a
        # time (the balance the caller asked for); tiny ones several chunks to a frame,
        # so ``chunksize=1`` does not mean one round trip per task.
        chunk = job.chunksize
        k = 1 if job.fn.est is None else max(1, s._batch_size_for(job.fn) // chunk)
        if waiting is not None:
            k = min(k, max(1, math.ceil(waiting / (2 * s.processes * chunk))))
        return k * chunk
    size = s._batch_size_for(job.fn) if job.fn.est is not None else 1
    if waiting is not None:
        # Share what is known to be left among the workers, so the tail is balanced
        # (but not into batches cheaper than a round trip: ``min_batch_s``).
        floor = int(s.min_batch_s / job.fn.est) if job.fn.est else 0
        size = min(size, max(1, floor, math.ceil(waiting / (2 * s.processes))))
    return size


def depth(s: Scheduler, fn: FnInfo) -> int:
    """Batches in flight per worker: pipelining hides the round trip for short tasks only."""
    if fn.est is None:
        return 1
    return s.window if fn.est * s._batch_size_for(fn) < 0.05 else 1


def batch_size_for(s: Scheduler, fn: FnInfo) -> int:
    est = fn.est or 1e-7
    size = min(s.max_batch, int(s.target_batch_s / max(est, 1e-7)))
    if fn.nbytes:
        # Big arguments: a few MiB per batch, so the lead over a slow consumer stays
        # small in bytes too, not only in tasks.
        size = min(size, int(s.max_batch_bytes / fn.nbytes))
    return max(1, size)


def peek(s: Scheduler) -> tuple[FnInfo | None, bool]:
    """The function (and whether it is timed) of the next work, dropping dead jobs."""
    while s.requeued:
        batch = s.requeued[0]
        if batch.owners is not None and any(j.cancelled for j in batch.owners):
            keep = [i for i, j in enumerate(batch.owners) if not j.cancelled]
            batch.owners = [batch.owners[i] for i in keep]
            batch.args = [batch.args[i] for i in keep]
        if len(batch) and not batch.job_of(0)[0].cancelled:
            return batch.fn, s._timed(batch)
        s.requeued.popleft()
    while s.queue:
        job = s.queue[0]
        if job.cancelled or job.exhausted and not job.single:
            s.queue.popleft()
            continue
        return job.fn, job.timeout is not None
    return None, False


def timed(batch: Batch) -> bool:
    return batch.job_of(0)[0].timeout is not None


def next_batch(s: Scheduler, quota: int | None) -> Batch | None:
    if s.requeued:
        batch = s.requeued.popleft()
        if quota is not None and len(batch) > quota:
            rest = _split(batch, quota)
            s.requeued.appendleft(rest)
        return batch
    job = s.queue[0]
    if job.single:
        return s._singles_batch(quota)
    return s._pull(job, quota)


def singles_batch(s: Scheduler, quota: int | None) -> Batch | None:
    first = s.queue[0]
    size = 1 if first.timeout is not None else s._batch_size(first, len(s.queue))
    if quota is not None:
        size = min(size, quota)
    owners: list[Job] = []
    fn, mode, claim = first.fn, first.mode, first.claim
    mixed = False  # jobs with different claim hooks (never for one face's jobs)
    queue = s.queue
    take, keep = queue.popleft, owners.append
    while queue and len(owners) < size:
        job = queue[0]
        if job.fn is not fn or not job.single or job.mode != mode:
            break
        if job.timeout is not None and owners:
            break
        take()
        if job.cancelled:
            s._drop(job)
            continue
        keep(job)
        if job.claim is not claim:
            mixed = True
    if mixed:
        owners = [j for j in owners if j.claim is None or _claimed(s, j.claim, [j])]
    elif claim is not None and owners:
        owners = _claimed(s, claim, owners)  # one call for the whole batch
    if not owners:
        return None
    return Batch(first.fn, first.mode, [j.blob for j in owners], owners=owners)


def _claimed(s: Scheduler, claim: Callable[[list[Job]], list[Job]], jobs: list[Job]) -> list[Job]:
    """The jobs ``claim`` lets run (it gets them about to be sent); the others are dropped."""
    kept = claim(jobs)
    if len(kept) != len(jobs):
        keep = set(map(id, kept))
        for job in jobs:
            if id(job) not in keep:
                s._drop(job)
    return kept


def add_single(s: Scheduler, job: Job) -> Send | None:
    """``add_jobs((job,))`` for the round trip's case, without the generic fill: a
    single task, nothing else waiting, a worker idle. It goes to the idle worker used
    most recently (``_pick_worker``'s ``recent``: the one still polling for work) and
    its ``Send`` is returned; otherwise (or if its claim drops it) it takes the generic path and None
    is returned.
    """
    if s.state is not PoolState.RUN or s.queue or s.requeued or not job.single:
        s.add_jobs((job,))
        return None
    best = s._pick_worker(job.timeout is not None, 1, True)
    if best is None:
        s.add_jobs((job,))
        return None
    s.jobs[id(job)] = job
    if job.cancelled or (job.claim is not None and not job.claim([job])):
        s._drop(job)
        return None
    return s._send(best, Batch(job.fn, job.mode, [job.blob], owners=[job]))


def pull(s: Scheduler, job: Job, quota: int | None) -> Batch | None:
    waiting = None if job.length is None else job.length - job.pulled
    size = 1 if job.timeout is not None else s._batch_size(job, waiting)
    if quota is not None:
        size = min(size, quota)
    if job.credit:
        room = s._credit_limit(job) - (job.pulled - job.consumed)
        if room <= 0:
            s.queue.popleft()
            job.stalled = True
            return None
        # Until an item has been seen its size is unknown: pull one, then weigh it
        # (an explicit chunksize is the unit the caller chose: whole chunks only).
        size = min(size, room) if job.item_bytes or job.chunksize else 1
    assert job.it is not None
    start = job.pulled
    args: list[Any] = []
    try:
        args.extend(itertools.islice(job.it, size))
        if job.credit and args:
            job.item_bytes = max(job.item_bytes, approx_bytes(args[-1]), 1)
    except Exception as exc:
        # The input iterator raised: that becomes the result at its position, and the end.
        job.exhausted = True
        s.queue.popleft()
        if job.chunksize:
            # As the stdlib with an explicit chunksize: the chunk being built when the
            # input failed is not run, and the error stands at that chunk's first index.
            keep = (start + len(args)) // job.chunksize * job.chunksize - start
            del args[max(0, keep) :]
        job.pulled += len(args) + 1
        s._complete_run(job, start + len(args), [TaskError.local(exc)])
        if not args:
            return None
        return Batch(job.fn, job.mode, args, job=job, start=start)
    job.pulled += len(args)
    if len(args) < size:
        job.exhausted = True
        s.queue.popleft()
        if not args:
            s._maybe_finish(job)
            return None
    return Batch(job.fn, job.mode, args, job=job, start=start)


#: Input bytes a credit job may have pulled ahead of its consumer, per worker: 1 MiB
#: items stop at 2 per worker (issue #14 asks for at most 4), enough to keep each busy.
CREDIT_BYTES = 2 << 20


def approx_bytes(x: Any, depth: int = 2) -> int:
    """A cheap estimate of an input item's size: buffers by their length, containers by a
    look at their first few members. Never calls what an object could override with side
    effects (a proxy's ``__getattr__``): ``nbytes`` is read only where the type has it."""
    t = type(x)
    if t is bytes or t is bytearray or t is str:
        return len(x)
    if t is memoryview:
        return int(x.nbytes)
    if getattr(t, "nbytes", None) is not None:  # a NumPy array (a descriptor on its type)
        try:
            return int(x.nbytes)
        except Exception:
            return sys.getsizeof(x)
    if depth and (t is tuple or t is list):
        return sys.getsizeof(x) + sum(approx_bytes(e, depth - 1) for e in x[:8])
    if depth and t is dict:
        return sys.getsizeof(x) + sum(approx_bytes(v, depth - 1) for v in list(x.values())[:8])
    return sys.getsizeof(x)
