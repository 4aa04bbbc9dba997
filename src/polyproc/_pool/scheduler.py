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

The methods live in three modules along the scheduler's seams: this one (events,
state machines, sending and completing), ``batching.py`` (batch sizes, credit,
pulling input) and ``recovery.py`` (a dead worker's window, a late task). The
class binds the other two's functions as its methods: one object, one set of
invariants, no extra call per task.

Worker and pool life cycles are transition tables (``WORKER_TRANSITIONS``,
``POOL_TRANSITIONS``); a move not in the table is a bug and raises.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .. import errors
from .._launch.child import BOOTSTRAP_ERROR, is_refusal
from . import batching, recovery
from .batching import CREDIT_BYTES as _CREDIT_BYTES
from .batching import approx_bytes as _approx_bytes
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
    "_CREDIT_BYTES",
    "_approx_bytes",
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
        # The tail split below never goes under this much work per batch: a cluster
        # backend sets it (a cluster task costs milliseconds; backends/_engine.py).
        self.min_batch_s = 0.0
        # A starting worker may be sent work before READY (``_pick_worker``) only where
        # workers start in a millisecond or two, alike (fork): the engine says (its
        # workers' ``quick_start``). A booting interpreter (spawn) may take tens of ms
        # more than its sibling, and work pushed to it would wait for it.
        self.early_start = True
        self._clock = clock or _monotonic
        self.state = PoolState.RUN
        self.actions: list[Action] = []
        self.workers: dict[int, WorkerSlot] = {}
        self.queue: deque[Job] = deque()
        self.requeued: deque[Batch] = deque()
        self.jobs: dict[int, Job] = {}  # open jobs by id(job): what terminate must fail
        self._wids = itertools.count(1)
        self._bids = itertools.count(1)
        self._uses = itertools.count(1)
        self.deadlines: list[tuple[float, int, int]] = []  # (deadline, bid, wid)
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

    def has_idle_worker(self) -> bool:
        """A worker that is ready with nothing in flight: a caller may send to it directly."""
        for slot in self.workers.values():
            if slot.state is WorkerState.READY and not slot.window and not slot.exclusive:
                return True
        return False

    def finished(self) -> bool:
        """The engine may exit: closed or terminated, and every worker is dead."""
        return self.state is not PoolState.RUN and not self.workers

    def next_deadline(self) -> float | None:
        while self.deadlines:
            deadline, bid, wid = self.deadlines[0]
            slot = self.workers.get(wid)
            if slot and slot.window and slot.window[0].bid == bid and slot.timed_out is None:
                return deadline
            heapq.heappop(self.deadlines)
        return None

    # -- events: from user threads (through the engine) --------------------------------
    def add_job(self, job: Job) -> None:
        self.add_jobs([job])

    def add_jobs(self, jobs: Sequence[Job]) -> None:
        """New work, in order. Filling waits until all are queued, so they can share batches."""
        if self.state is PoolState.RUN:
            # A burst of submits arrives thousands at a time: both loops run in C.
            self.jobs.update(zip(map(id, jobs), jobs, strict=True))
            self.queue.extend(jobs)
        else:
            for job in jobs:
                self._fail_job(job, self._closed_error())
        self._fill()

    def consumed(self, job: Job, count: int) -> None:
        """The consumer of an ordered job has taken ``count`` results in all."""
        if count > job.consumed:
            batching.pace(job, count, time.monotonic())
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
        if self.state is PoolState.RUN:
            self._set_state(PoolState.CLOSE)
        self._fill()

    def terminate(self, error: BaseException) -> None:
        """Kill every worker; every outstanding job fails with ``error``."""
        if self.state is PoolState.TERMINATE:
            return
        self._set_state(PoolState.TERMINATE)
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
        broken = errors.BrokenProcessPool(
            f"the pool's initializer raised {error!r}; no task can run"
        )
        broken.__cause__ = error
        self._break(broken)

    def batch_done(
        self,
        wid: int,
        bid: int,
        values: list[Any],
        busy: float,
        rss: int | None = None,
        clean: bool = False,
    ) -> None:
        """A worker's results for the head of its window. ``clean``: the values are known to
        hold no failure (an all-int or all-marshal message), so they are not scanned."""
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
        failed = 0 if clean else list(map(type, values)).count(TaskError)  # in C
        self.stats["done"] += n - failed
        self.stats["failed"] += failed
        self._complete(batch, values, not failed)
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

    def tick(self, now: float) -> None:
        """The clock moved: kill workers whose timed task is late."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, bid, wid = heapq.heappop(self.deadlines)
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

    def cancel_unstarted(self) -> None:
        """Cancel the submitted futures that have not started (``shutdown(cancel_futures=True)``).

        As the stdlib's executor, which hands a call to each free worker at once (marking
        it running, workers not even up yet included): the work a free or starting worker
        would take now is left to run; everything behind it is cancelled.
        """
        free = sum(
            1
            for s in self.workers.values()
            if s.state in (WorkerState.STARTING, WorkerState.READY)
            and not s.window
            and not s.exclusive
        )
        for job in list(self.queue):
            if job.single and job.claim is not None and not job.sink.done():
                if free > 0:
                    free -= 1
                    continue
                job.sink.cancel()

    # -- what a worker's death or a late task does (recovery.py) -------------------------
    worker_exited = recovery.worker_exited
    _timed_out = recovery.timed_out
    _deliver_one = recovery.deliver_one
    _unstarted = recovery.unstarted
    _died_between_tasks = recovery.died_between_tasks
    _account = recovery.account
    _lost_batch = recovery.lost_batch

    # -- internals: workers ------------------------------------------------------------
    def _spawn(self) -> None:
        wid = next(self._wids)
        self.workers[wid] = WorkerSlot(wid)
        self.stats["workers_started"] += 1
        self.actions.append(Spawn(wid))

    def _top_up(self) -> None:
        if self.state is PoolState.RUN or (self.state is PoolState.CLOSE and not self.idle()):
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
        if self.state in (PoolState.BROKEN, PoolState.TERMINATE):
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
        if self.state is PoolState.BROKEN and is_refusal(self.broken_error):
            return RuntimeError(BOOTSTRAP_ERROR)  # the program's own error, not the pool's
        if self.state is PoolState.BROKEN:
            err = errors.BrokenProcessPool(f"the pool is broken: {self.broken_error}")
            err.__cause__ = self.broken_error  # why: the initializer's error, a failed start
            return err
        from ..errors import PoolClosedError

        return PoolClosedError("Pool not running")

    # -- internals: filling windows (sizes, credit, input: batching.py) -----------------
    _credit_limit = batching.credit_limit
    _batch_size = batching.batch_size
    _depth = batching.depth
    _batch_size_for = batching.batch_size_for
    _peek = batching.peek
    _timed = staticmethod(batching.timed)
    _next_batch = batching.next_batch
    _singles_batch = batching.singles_batch
    _pull = batching.pull
    add_single = batching.add_single

    def _pick_worker(self, exclusive: bool, depth: int, recent: bool = False) -> WorkerSlot | None:
        """The worker with the least in flight (then the least recently used, or with
        ``recent`` the most recently used), a ready one before a starting one.

        ``recent`` is the round trip's choice (``add_single``): the worker that answered
        last is still polling for its next task (``worker.WORKER_SPIN``) and has the
        function and its data in cache; the least recently used one sleeps, and a loop of
        ``apply`` calls would alternate between workers, each woken in turn while the
        other spins for nothing (2 workers, same session: 50.7 -> 45.6 us an ``apply``
        without spinning, and spinning cost 20 us more than it saved without this).

        A starting worker takes work too, as the stdlib's workers find their first tasks
        already in the queue: its first batch waits in its channel and runs as soon as it
        has said READY, without a round through the engine between (one wake-up of the
        engine and of the worker less at a pool's start: ~1 ms of a 10 ms ``Pool(2)`` plus
        first map on 2 CPUs). Never a timed batch (its clock would run while the worker
        boots), nor under ``maxtasksperchild`` (a worker retires from READY), nor where
        workers boot an interpreter (``early_start``: the first one up would otherwise
        not take its sibling's work: measured, spawn's first map waited for the slower
        of two boots, 84 -> 125 ms), and if it dies before READY, nothing it held ran
        (``worker_exited``).
        """
        best: WorkerSlot | None = None
        best_key = (0, 0, 0)
        early = self.early_start and not exclusive and self.maxtasks is None
        for slot in self.workers.values():
            state = slot.state
            if slot.exclusive or not (
                state is WorkerState.READY or (early and state is WorkerState.STARTING)
            ):
                continue
            n = len(slot.window)
            if n >= depth or (exclusive and n):
                continue
            if self.maxtasks is not None and slot.assigned >= self.maxtasks:
                continue
            key = (state is WorkerState.STARTING, n, -slot.last_used if recent else slot.last_used)
            if best is None or key < best_key:
                best, best_key = slot, key
        return best

    def _fill(self) -> None:
        """Send work to every worker with room in its window, idle ones first (least recently used)."""
        if self.state not in (PoolState.RUN, PoolState.CLOSE):
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
        if self.state is PoolState.CLOSE and self.idle():
            for slot in list(self.workers.values()):
                if slot.state in (WorkerState.READY, WorkerState.RETIRING, WorkerState.STARTING):
                    self._stop(slot)

    def _send(self, slot: WorkerSlot, batch: Batch) -> Send:
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
            heapq.heappush(self.deadlines, (batch.deadline, batch.bid, slot.wid))
        send = Send(slot.wid, batch)
        self.actions.append(send)
        if self.maxtasks is not None and slot.assigned >= self.maxtasks:
            self._retire(slot)
        return send

    # -- internals: completing work ----------------------------------------------------
    def _complete(self, batch: Batch, values: list[Any], clean: bool = False) -> None:
        owners = batch.owners
        if owners is not None:
            # Those still open (a cancelled or already finished one is not delivered again);
            # usually all, and the lists go as they are.
            keep = [not job.cancelled and not job.finished for job in owners]
            jobs = list(owners) if all(keep) else list(itertools.compress(owners, keep))
            open_jobs = self.jobs
            for job in jobs:
                job.delivered = 1
                job.finished = True
                del open_jobs[id(job)]
            if jobs:
                # A list of its own: the engine may recycle these jobs once delivered, and
                # counts the references to each (``tasks.recycle``).
                vals = (
                    values if len(jobs) == len(values) else list(itertools.compress(values, keep))
                )
                self.actions.append(DeliverSingles(jobs, vals))
            return
        assert batch.job is not None
        self._complete_run(batch.job, batch.start, values, clean)

    def _complete_run(self, job: Job, start: int, values: list[Any], clean: bool = False) -> None:
        """Results of a run of ``job`` from ``start``: delivered, in input order if ordered.
        ``clean``: they hold no TaskError (``Deliver.clean``)."""
        if job.cancelled or job.finished:
            return
        if job.single:
            job.delivered = 1
            self.actions.append(Deliver(job, 0, values))
        elif not job.ordered:
            job.delivered += len(values)
            self.actions.append(Deliver(job, start, values, clean))
        elif start != job.delivered:
            job.reorder[start] = (values, clean)
            return
        else:
            job.delivered += len(values)
            self.actions.append(Deliver(job, start, values, clean))
            while job.delivered in job.reorder:
                nxt, ok = job.reorder.pop(job.delivered)
                self.actions.append(Deliver(job, job.delivered, nxt, ok))
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


def _monotonic() -> float:
    import time

    return time.monotonic()
