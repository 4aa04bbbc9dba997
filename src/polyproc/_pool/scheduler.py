"""The pool's scheduler: pure policy and state. Events in, actions out; no processes, no I/O.

The engine thread owns one ``Scheduler``. It turns what it sees (a job from a user
thread, a result frame, a worker's death, the clock) into calls here, and carries
out the actions this returns::

    events (methods)                         Scheduler state                 actions (self.actions)
    ──────────────────                       ───────────────                 ──────────────────────
    add_job(job)          ──►  queue: jobs with input left (FIFO)      ──►  Spawn(wid)
    consumed(job, n)            requeued: batches to run again               Send(wid, batch)
    worker_ready(wid)           workers: slot per worker, each with          Deliver(job, start, values)
    worker_failed_init(wid)       its in-flight window (FIFO of batches)     DeliverSingles(jobs, values)
    batch_done(wid, id, ...)    per job: reorder buffer (ordered jobs)       Done(job)
    worker_exited(wid, ...)     deadlines (timed tasks)                      Stop(wid)  Kill(wid)
    tick(now) close() terminate(err)                                         Broken(error)

Invariants (tests/pool/test_scheduler.py checks each):

* Every task is in exactly one place: not yet pulled, in ``requeued``, in one
  worker's window, in a job's reorder buffer, or delivered. So a worker's death
  fails or re-runs exactly the tasks in its window, and nothing waits forever.
* Results of one worker come back in the order its batches were sent (one FIFO
  channel), so ``batch_done`` always completes the head of that worker's window.
* Input is pulled only to fill a batch that is sent at once; an ordered job with a
  consumer never has more than ``_credit_limit`` tasks pulled but not consumed.
* A task with a timeout runs alone on its worker (nothing queued behind it), so
  its deadline is counted from when it starts and killing the worker harms no one.
* A batch holds tasks of one function; its size is ``target_batch_s`` divided by the
  function's measured time per task (1 until measured), so tiny tasks travel
  thousands to a frame and slow ones one at a time. An explicit ``chunksize`` is the
  unit: a batch is then a whole number of chunks (one chunk for slow tasks).

Worker and pool life cycles are transition tables (``WORKER_TRANSITIONS``,
``POOL_TRANSITIONS``); a move not in the table is a bug and raises.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import BrokenProcessPool, TimeoutError, WorkerLostError
from .messages import TaskError
from .tasks import (
    POOL_TRANSITIONS,
    WORKER_TRANSITIONS,
    Action,
    Batch,
    Broken,
    Deliver,
    DeliverSingles,
    Done,
    FnInfo,
    Job,
    Kill,
    Mode,
    PoolState,
    Recovered,
    Send,
    Spawn,
    Stop,
    WorkerSlot,
    WorkerState,
    _single,
    _slice,
    _split,
    call_repr,
    describe_exit,
    short_repr,
)

__all__ = [
    "WorkerState",
    "PoolState",
    "WORKER_TRANSITIONS",
    "POOL_TRANSITIONS",
    "FnInfo",
    "Job",
    "Batch",
    "Scheduler",
    "Mode",
    "Spawn",
    "Send",
    "Deliver",
    "DeliverSingles",
    "Done",
    "Stop",
    "Kill",
    "Broken",
    "Action",
    "Recovered",
]


class Scheduler:
    """Which task runs where, and what happens next. See the module docstring."""

    def __init__(
        self,
        processes: int,
        *,
        maxtasksperchild: int | None = None,
        max_memory_per_child: int | None = None,
        window: int = 3,
        target_batch_s: float = 0.004,
        max_batch: int = 4096,
        max_batch_bytes: int = 4 << 20,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self.processes = processes
        self.maxtasks = maxtasksperchild
        self.max_memory = max_memory_per_child
        self.window = window
        self.target_batch_s = target_batch_s
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._clock = clock or _monotonic
        self.state = PoolState.RUNNING
        self.actions: list[Action] = []
        self.workers: dict[int, WorkerSlot] = {}
        self.queue: deque[Job] = deque()
        self.requeued: deque[Batch] = deque()
        self.jobs: dict[int, Job] = {}  # open jobs by id(job): what terminate must fail
        self._wids = itertools.count(1)
        self._bids = itertools.count(1)
        self._uses = itertools.count(1)
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, bid, wid)
        self._start_failures = 0
        self.broken_error: BaseException | None = None
        self.stats = {
            "done": 0,
            "failed": 0,
            "lost": 0,
            "timed_out": 0,
            "retried": 0,
            "workers_started": 0,
            "workers_recycled": 0,
        }
        self.finished_workers: list[WorkerSlot] = []
        for _ in range(processes):
            self._spawn()

    # -- state machines ----------------------------------------------------------------
    def _move(self, slot: WorkerSlot, new: WorkerState) -> None:
        if new not in WORKER_TRANSITIONS[slot.state]:
            raise RuntimeError(f"worker {slot.wid}: illegal move {slot.state.name} -> {new.name}")
        slot.state = new

    def _set_state(self, new: PoolState) -> None:
        if new not in POOL_TRANSITIONS[self.state]:
            raise RuntimeError(f"pool: illegal move {self.state.name} -> {new.name}")
        self.state = new

    # -- queries -----------------------------------------------------------------------
    def live_workers(self) -> int:
        """Workers that count towards ``processes``: a retiring one is replaced at once,
        so its successor starts while it finishes its window."""
        return sum(
            1 for s in self.workers.values() if s.state in (WorkerState.STARTING, WorkerState.READY)
        )

    def idle(self) -> bool:
        """No work anywhere: nothing queued, requeued, in flight or undelivered."""
        return (
            not self.jobs and not self.requeued and not any(s.window for s in self.workers.values())
        )

    def finished(self) -> bool:
        """The engine may exit: closed or terminated, and every worker is dead."""
        return self.state is not PoolState.RUNNING and not self.workers

    def next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, bid, wid = self._deadlines[0]
            slot = self.workers.get(wid)
            if slot and slot.window and slot.window[0].bid == bid and slot.timed_out is None:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    # -- events: from user threads (through the engine) --------------------------------
    def add_job(self, job: Job) -> None:
        self.add_jobs((job,))

    def add_jobs(self, jobs: Iterable[Job]) -> None:
        """New work, in order. Filling waits until all are queued, so they can share batches."""
        for job in jobs:
            if self.state is not PoolState.RUNNING:
                self._fail_job(job, self._closed_error())
                continue
            self.jobs[id(job)] = job
            self.queue.append(job)
        self._fill()

    def consumed(self, job: Job, count: int) -> None:
        """The consumer of an ordered job has taken ``count`` results in all."""
        job.consumed = max(job.consumed, count)
        if (
            job.stalled
            and not job.cancelled
            and job.pulled - job.consumed < self._credit_limit(job)
        ):
            job.stalled = False
            self.queue.appendleft(job)
            self._fill()

    def cancel(self, job: Job) -> None:
        """The caller lost interest: pull no more input, deliver nothing more."""
        if job.finished or job.cancelled:
            return
        job.cancelled = True
        job.exhausted = True
        self._maybe_finish(job, force=True)

    def close(self) -> None:
        if self.state is PoolState.RUNNING:
            self._set_state(PoolState.CLOSED)
        self._fill()

    def terminate(self, error: BaseException) -> None:
        """Kill every worker; every outstanding job fails with ``error``."""
        if self.state is PoolState.TERMINATED:
            return
        self._set_state(PoolState.TERMINATED)
        self._fail_everything(error)
        for slot in self.workers.values():
            if slot.state is not WorkerState.DEAD:
                self.actions.append(Kill(slot.wid))

    # -- events: from workers ----------------------------------------------------------
    def worker_ready(self, wid: int, baseline: int | None = None) -> None:
        """The worker can take work. ``baseline``: the RSS it had when it started (a fork
        child's pages shared with its parent), which ``max_memory_per_child`` does not count."""
        slot = self.workers[wid]
        if baseline:
            slot.baseline = baseline
        if slot.state is WorkerState.STARTING:
            self._move(slot, WorkerState.READY)
            self._start_failures = 0
            self._fill()

    def worker_failed_init(self, wid: int, error: BaseException) -> None:
        """The initializer raised: it would raise in every worker, so the pool is broken.

        (The stdlib respawns forever here and every ``get()`` hangs.)
        """
        broken = BrokenProcessPool(f"the pool's initializer raised {error!r}; no task can run")
        broken.__cause__ = error
        self._break(broken)

    def batch_done(
        self, wid: int, bid: int, values: list[Any], busy: float, rss: int | None = None
    ) -> None:
        slot = self.workers[wid]
        if not slot.window:
            raise RuntimeError(f"worker {wid}: result for batch {bid} with nothing in flight")
        batch = slot.window.popleft()
        if batch.bid != bid or len(values) != len(batch.args):
            raise RuntimeError(f"worker {wid}: result for batch {bid} out of order ({batch!r})")
        slot.exclusive = False
        n = len(values)
        slot.done += n
        slot.busy += busy
        if rss is not None:
            slot.rss = rss
            slot.peak_rss = max(slot.peak_rss or 0, rss)
        fn = batch.fn
        per_task = busy / n if n else 0.0
        fn.est = per_task if fn.est is None else 0.6 * fn.est + 0.4 * per_task
        failed = sum(1 for v in values if type(v) is TaskError)
        self.stats["done"] += n - failed
        self.stats["failed"] += failed
        self._complete(batch, values)
        if (
            slot.state is WorkerState.READY
            and self.max_memory is not None
            and rss is not None
            and rss - slot.baseline > self.max_memory
        ):
            self._retire(slot)
        if slot.state is WorkerState.RETIRING and not slot.window:
            self._stop(slot)
        self._fill()

    def worker_exited(
        self,
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
        slot = self.workers.pop(wid)
        was = slot.state
        if was is not WorkerState.DEAD:
            self._move(slot, WorkerState.DEAD)
        slot.exitcode = exitcode
        if peak_rss is not None:
            slot.peak_rss = max(slot.peak_rss or 0, peak_rss)
        self.finished_workers.append(slot)
        del self.finished_workers[:-64]
        if self.state is PoolState.TERMINATED:
            return
        if was is WorkerState.STARTING:
            self._start_failures += 1
        window = list(slot.window)
        slot.window.clear()
        who = name or f"worker {wid}"
        head = window.pop(0) if window else None
        for batch in reversed(window):  # never started: run again, first in line
            self.requeued.appendleft(batch)
        done: list[Any] | None = None
        if head is not None and recovered is not None and recovered.bid == head.bid:
            done = recovered.values
            if done is not None and len(done) >= len(head):
                # Every task of it finished; only its results' trip was cut short.
                self._account(head, done[: len(head)])
                self._complete(head, done[: len(head)])
                head = None
            elif head.waits < _PATIENCE and (
                (done is None and not recovered.loading) or (done == [] and not recovered.started)
            ):
                # It died waiting for the batch, or after loading it and before calling its
                # first task: nothing of the batch ran or killed it (journal.py, STATE).
                head.waits += 1
                self.requeued.appendleft(head)
                head = None
            elif done is None or (done == [] and not recovered.started):
                head = self._unstarted(head, exitcode, slot.peak_rss, who)
            elif not recovered.started:
                self._died_between_tasks(head, done)
                head = None
        if head is not None and head is slot.timed_out:
            self._timed_out(head, who)
        elif head is not None:
            pos: int | None = None
            if done is not None:
                pos = len(done)
            elif progress is not None and progress[0] == head.bid:
                pos = progress[1]
            elif len(head) == 1:
                pos = 0
            self._lost_batch(head, pos, exitcode, slot.peak_rss, who, done)
        if self._start_failures >= 3 and self.state is not PoolState.BROKEN:
            from ..errors import StartError

            err = StartError(
                f"{self._start_failures} workers in a row died while starting "
                f"({who}: {describe_exit(exitcode)})"
            )
            self._break(BrokenProcessPool(str(err)))
            return
        self._top_up()
        self._fill()

    def tick(self, now: float) -> None:
        """The clock moved: kill workers whose timed task is late."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, bid, wid = heapq.heappop(self._deadlines)
            slot = self.workers.get(wid)
            if (
                slot is None
                or not slot.window
                or slot.window[0].bid != bid
                or slot.timed_out is not None
            ):
                continue
            slot.timed_out = slot.window[0]
            self.actions.append(Kill(wid))

    # -- internals: workers ------------------------------------------------------------
    def _spawn(self) -> None:
        wid = next(self._wids)
        self.workers[wid] = WorkerSlot(wid)
        self.stats["workers_started"] += 1
        self.actions.append(Spawn(wid))

    def _top_up(self) -> None:
        if self.state is PoolState.RUNNING or (self.state is PoolState.CLOSED and not self.idle()):
            while self.live_workers() < self.processes:
                self._spawn()

    def _retire(self, slot: WorkerSlot) -> None:
        self._move(slot, WorkerState.RETIRING)
        self.stats["workers_recycled"] += 1
        self._top_up()

    def _stop(self, slot: WorkerSlot) -> None:
        self._move(slot, WorkerState.STOPPING)
        self.actions.append(Stop(slot.wid))

    def _break(self, error: BaseException) -> None:
        if self.state in (PoolState.BROKEN, PoolState.TERMINATED):
            return
        self._set_state(PoolState.BROKEN)
        self.broken_error = error
        self.actions.append(Broken(error))
        self._fail_everything(error)
        for slot in self.workers.values():
            if slot.state is not WorkerState.STOPPING:
                self._move(slot, WorkerState.STOPPING)
                self.actions.append(Kill(slot.wid))

    def _closed_error(self) -> BaseException:
        if self.state is PoolState.BROKEN:
            err = BrokenProcessPool(f"the pool is broken: {self.broken_error}")
            err.__cause__ = self.broken_error  # why: the initializer's error, a failed start
            return err
        from ..errors import PoolClosedError

        return PoolClosedError("Pool not running")

    # -- internals: filling windows ----------------------------------------------------
    def _credit_limit(self, job: Job) -> int:
        size = self._batch_size(job, None)
        items = max(64, 2 * self.processes * self.window * size)
        if job.item_bytes:
            # Bounded in bytes too (issue #14): big items (1 MiB arrays) ahead of a slow
            # consumer would hold the parent's memory: ``_CREDIT_BYTES`` per worker.
            items = min(
                items, max(self.processes, self.processes * _CREDIT_BYTES // job.item_bytes)
            )
        return items

    def _batch_size(self, job: Job, waiting: int | None) -> int:
        if job.chunksize:
            # The chunk is the unit: a batch is whole chunks. Slow tasks go one chunk at a
            # time (the balance the caller asked for); tiny ones several chunks to a frame,
            # so ``chunksize=1`` does not mean one round trip per task.
            chunk = job.chunksize
            k = 1 if job.fn.est is None else max(1, self._batch_size_for(job.fn) // chunk)
            if waiting is not None:
                k = min(k, max(1, math.ceil(waiting / (2 * self.processes * chunk))))
            return k * chunk
        size = self._batch_size_for(job.fn) if job.fn.est is not None else 1
        if waiting is not None:
            # Share what is known to be left among the workers, so the tail is balanced.
            size = min(size, max(1, math.ceil(waiting / (2 * self.processes))))
        return size

    def _depth(self, fn: FnInfo) -> int:
        """Batches in flight per worker: pipelining hides the round trip for short tasks only."""
        if fn.est is None:
            return 1
        return self.window if fn.est * self._batch_size_for(fn) < 0.05 else 1

    def _batch_size_for(self, fn: FnInfo) -> int:
        est = fn.est or 1e-7
        size = min(self.max_batch, int(self.target_batch_s / max(est, 1e-7)))
        if fn.nbytes:
            # Big arguments: a few MiB per batch, so the lead over a slow consumer stays
            # small in bytes too, not only in tasks.
            size = min(size, int(self.max_batch_bytes / fn.nbytes))
        return max(1, size)

    def _pick_worker(self, exclusive: bool, depth: int) -> WorkerSlot | None:
        best: WorkerSlot | None = None
        for slot in self.workers.values():
            if slot.state is not WorkerState.READY or slot.exclusive:
                continue
            n = len(slot.window)
            if n >= depth or (exclusive and n):
                continue
            if self.maxtasks is not None and slot.assigned >= self.maxtasks:
                continue
            if best is None or (n, slot.last_used) < (len(best.window), best.last_used):
                best = slot
        return best

    def _fill(self) -> None:
        """Send work to every worker with room in its window, idle ones first (least recently used)."""
        if self.state not in (PoolState.RUNNING, PoolState.CLOSED):
            return
        while True:
            fn, exclusive = self._peek()
            if fn is None:
                break
            slot = self._pick_worker(exclusive, self._depth(fn))
            if slot is None:
                break
            quota = None if self.maxtasks is None else self.maxtasks - slot.assigned
            batch = self._next_batch(quota)
            if batch is None:
                continue
            self._send(slot, batch)
        if self.state is PoolState.CLOSED and self.idle():
            for slot in list(self.workers.values()):
                if slot.state in (WorkerState.READY, WorkerState.RETIRING, WorkerState.STARTING):
                    self._stop(slot)

    def _peek(self) -> tuple[FnInfo | None, bool]:
        """The function (and whether it is timed) of the next work, dropping dead jobs."""
        while self.requeued:
            batch = self.requeued[0]
            if batch.owners is not None and any(j.cancelled for j in batch.owners):
                keep = [i for i, j in enumerate(batch.owners) if not j.cancelled]
                batch.owners = [batch.owners[i] for i in keep]
                batch.args = [batch.args[i] for i in keep]
            if len(batch) and not batch.job_of(0)[0].cancelled:
                return batch.fn, self._timed(batch)
            self.requeued.popleft()
        while self.queue:
            job = self.queue[0]
            if job.cancelled or job.exhausted and not job.single:
                self.queue.popleft()
                continue
            return job.fn, job.timeout is not None
        return None, False

    @staticmethod
    def _timed(batch: Batch) -> bool:
        return batch.job_of(0)[0].timeout is not None

    def _next_batch(self, quota: int | None) -> Batch | None:
        if self.requeued:
            batch = self.requeued.popleft()
            if quota is not None and len(batch) > quota:
                rest = _split(batch, quota)
                self.requeued.appendleft(rest)
            return batch
        job = self.queue[0]
        if job.single:
            return self._singles_batch(quota)
        return self._pull(job, quota)

    def _singles_batch(self, quota: int | None) -> Batch | None:
        first = self.queue[0]
        size = 1 if first.timeout is not None else self._batch_size(first, len(self.queue))
        if quota is not None:
            size = min(size, quota)
        owners: list[Job] = []
        while self.queue and len(owners) < size:
            job = self.queue[0]
            if (
                not job.single
                or job.fn is not first.fn
                or job.mode != first.mode
                or (owners and job.timeout is not None)
            ):
                break
            self.queue.popleft()
            if job.cancelled or (job.claim is not None and not job.claim(job)):
                self._drop(job)
                continue
            owners.append(job)
        if not owners:
            return None
        return Batch(first.fn, first.mode, [j.blob for j in owners], owners=owners)

    def _pull(self, job: Job, quota: int | None) -> Batch | None:
        waiting = None if job.length is None else job.length - job.pulled
        size = 1 if job.timeout is not None else self._batch_size(job, waiting)
        if quota is not None:
            size = min(size, quota)
        if job.credit:
            room = self._credit_limit(job) - (job.pulled - job.consumed)
            if room <= 0:
                self.queue.popleft()
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
                job.item_bytes = max(job.item_bytes, _approx_bytes(args[-1]), 1)
        except Exception as exc:
            # The input iterator raised: that becomes the result at its position, and the end.
            job.exhausted = True
            self.queue.popleft()
            if job.chunksize:
                # As the stdlib with an explicit chunksize: the chunk being built when the
                # input failed is not run, and the error stands at that chunk's first index.
                keep = (start + len(args)) // job.chunksize * job.chunksize - start
                del args[max(0, keep) :]
            job.pulled += len(args) + 1
            self._complete_run(job, start + len(args), [TaskError.local(exc)])
            if not args:
                return None
            return Batch(job.fn, job.mode, args, job=job, start=start)
        job.pulled += len(args)
        if len(args) < size:
            job.exhausted = True
            self.queue.popleft()
            if not args:
                self._maybe_finish(job)
                return None
        return Batch(job.fn, job.mode, args, job=job, start=start)

    def _send(self, slot: WorkerSlot, batch: Batch) -> None:
        batch.bid = next(self._bids)
        batch.worker = slot.wid
        slot.window.append(batch)
        slot.assigned += len(batch)
        slot.last_used = next(self._uses)
        if self._timed(batch):
            timeout = batch.job_of(0)[0].timeout
            assert timeout is not None
            batch.deadline = self._clock() + timeout
            slot.exclusive = True
            heapq.heappush(self._deadlines, (batch.deadline, batch.bid, slot.wid))
        self.actions.append(Send(slot.wid, batch))
        if self.maxtasks is not None and slot.assigned >= self.maxtasks:
            self._retire(slot)

    # -- internals: completing work ----------------------------------------------------
    def _complete(self, batch: Batch, values: list[Any]) -> None:
        if batch.owners is not None:
            jobs, vals = [], []
            for job, v in zip(batch.owners, values, strict=True):
                if not job.cancelled and not job.finished:
                    job.delivered = 1
                    job.finished = True
                    del self.jobs[id(job)]
                    jobs.append(job)
                    vals.append(v)
            if jobs:
                self.actions.append(DeliverSingles(jobs, vals))
            return
        assert batch.job is not None
        self._complete_run(batch.job, batch.start, values)

    def _complete_run(self, job: Job, start: int, values: list[Any]) -> None:
        if job.cancelled or job.finished:
            return
        if job.single:
            job.delivered = 1
            self.actions.append(Deliver(job, 0, values))
        elif not job.ordered:
            job.delivered += len(values)
            self.actions.append(Deliver(job, start, values))
        elif start != job.delivered:
            job.reorder[start] = values
            return
        else:
            job.delivered += len(values)
            self.actions.append(Deliver(job, start, values))
            while job.delivered in job.reorder:
                nxt = job.reorder.pop(job.delivered)
                self.actions.append(Deliver(job, job.delivered, nxt))
                job.delivered += len(nxt)
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job, force: bool = False) -> None:
        if job.finished:
            return
        if force or (job.exhausted and job.delivered >= job.pulled):
            job.finished = True
            if job.reorder:
                job.reorder.clear()
            self.jobs.pop(id(job), None)
            if not job.cancelled:
                self.actions.append(Done(job))

    def _drop(self, job: Job) -> None:
        job.cancelled = True
        self._maybe_finish(job, force=True)

    def _fail_job(self, job: Job, error: BaseException) -> None:
        self.actions.append(Deliver(job, job.delivered, [TaskError.local(error)]))
        self.actions.append(Done(job))

    def _fail_everything(self, error: BaseException) -> None:
        for slot in self.workers.values():
            slot.window.clear()
        self.queue.clear()
        self.requeued.clear()
        jobs, self.jobs = list(self.jobs.values()), {}
        for job in jobs:
            if not job.finished and not job.cancelled:
                job.finished = True
                self._fail_job(job, error)

    def _timed_out(self, batch: Batch, who: str) -> None:
        self.stats["timed_out"] += 1
        job, index = batch.job_of(0)
        err = TimeoutError(
            f"task {call_repr(job.fn.name, job.mode, batch.arg_of(0))} (index {index}) ran past its "
            f"timeout of {job.timeout} s; {who} was killed and replaced"
        )
        self._deliver_one(batch, 0, TaskError.local(err))

    def _deliver_one(self, batch: Batch, i: int, value: Any) -> None:
        job, index = batch.job_of(i)
        if batch.owners is not None:
            if not job.finished and not job.cancelled:
                job.finished = True
                job.delivered = 1
                del self.jobs[id(job)]
                self.actions.append(DeliverSingles([job], [value]))
        else:
            self._complete_run(job, index, [value])

    def _unstarted(
        self, batch: Batch, exitcode: int | None, peak_rss: int | None, who: str
    ) -> Batch | None:
        """Its worker died before any task of ``batch`` began (receiving it, say): run it
        again. A batch that keeps killing workers before it starts is cut into single
        tasks, and a single task that does it twice is the culprit (the lost path)."""
        batch.unstarted += 1
        if batch.unstarted < 2:
            self.requeued.appendleft(batch)
            return None
        if len(batch) > 1:
            for i in reversed(range(len(batch))):
                one = _single(batch, i)
                one.isolated = True
                one.unstarted = 1
                self.requeued.appendleft(one)
            return None
        return batch  # lost (or retried) like a task that was running

    def _died_between_tasks(self, batch: Batch, done: list[Any]) -> None:
        """Its worker died after finishing ``done`` and before calling the next task: those
        are delivered, the rest (the next one included: it never began) run again."""
        pos = len(done)
        before = _slice(batch, 0, pos)
        self._account(before, done)
        self._complete(before, done)
        self.requeued.appendleft(_slice(batch, pos, len(batch)))

    def _account(self, batch: Batch, values: list[Any]) -> None:
        failed = sum(1 for v in values if type(v) is TaskError)
        self.stats["done"] += len(values) - failed
        self.stats["failed"] += failed

    def _lost_batch(
        self,
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
                self.requeued.appendleft(one)
            return
        after = _slice(batch, pos + 1, len(batch))
        if len(after):
            self.requeued.appendleft(after)
        job, index = batch.job_of(pos)
        if job.lost is None:
            job.lost = {}
        times = job.lost.get(index, 0) + 1
        job.lost[index] = times
        if times <= job.retries:
            self.stats["retried"] += 1
            self.requeued.appendleft(_single(batch, pos))
        else:
            self.stats["lost"] += 1
            rss = f"{peak_rss / 2**20:.1f} MiB" if peak_rss else "unknown"
            err = WorkerLostError(
                f"{who} died ({describe_exit(exitcode)}) while running "
                f"{call_repr(job.fn.name, job.mode, batch.arg_of(pos))} (task index {index}); "
                f"peak RSS {rss}" + (f"; tried {times} times" if times > 1 else ""),
                function=job.fn.name,
                index=index,
                argument=short_repr(batch.arg_of(pos)),
                exitcode=exitcode,
                peak_rss=peak_rss,
            )
            self._deliver_one(batch, pos, TaskError.local(err))
        before = _slice(batch, 0, pos)
        if len(before) and done is not None:
            # They finished and the journal kept their results: delivered, never run again.
            self._account(before, done[:pos])
            self._complete(before, done[:pos])
        elif len(before):
            # They finished, but without a journal their results died with the worker.
            self.requeued.appendleft(before)


#: Deaths of a worker a batch may wait out before it starts (its worker waiting for it, or
#: between loading it and its first call) without a strike against it: a guard for a worker
#: that dies on its own whatever it is given (a thread its initializer started, say).
_PATIENCE = 8

#: Input bytes a credit job may have pulled ahead of its consumer, per worker: 1 MiB
#: items stop at 2 per worker (issue #14 asks for at most 4), enough to keep each busy.
_CREDIT_BYTES = 2 << 20


def _approx_bytes(x: Any, depth: int = 2) -> int:
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
        return sys.getsizeof(x) + sum(_approx_bytes(e, depth - 1) for e in x[:8])
    if depth and t is dict:
        return sys.getsizeof(x) + sum(_approx_bytes(v, depth - 1) for v in list(x.values())[:8])
    return sys.getsizeof(x)


def _monotonic() -> float:
    import time

    return time.monotonic()
