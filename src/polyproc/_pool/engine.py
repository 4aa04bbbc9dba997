"""The engine: one thread per pool that runs the scheduler and carries out its actions.

::

    user threads                       engine thread                          workers
    ────────────                       ─────────────                          ───────
    Pool / Executor faces              selector loop (_loop) over:
      submit(job) / consumed /           ├─ the wake pipe (written only while
      cancel / close / terminate         │  the engine sleeps)
        ──► inbox (deque) ──────────►    ├─ Tag.CHANNEL: a worker's channel ◄──  RESULTS / READY
      (or, engine asleep and a worker    │    readable, or writable again
       idle: send_direct, fastpath.py)   ├─ Tag.SENTINEL: a worker's death  ◄──  exit
                                         └─ the clock: task deadlines, RSS samples
                                         ▼
                                       Scheduler (pure) ──► actions ──► act(): a ``match``
                                         Send, Spawn, Stop, Kill ──► WorkerSet (workers.py,
                                                                     processes.py, a backend's)
                                         Deliver, DeliverSingles, Done ──► Future / result sinks
                                         Broken ──► every later call fails

The engine holds the loop, the inbox and the small API the faces use (``submit``,
``consumed``, ``cancel``, ``cancel_unstarted``, ``check_open``, ``statistics``,
``close``, ``terminate``, ``join``). What a worker is (a local process, a thread, a
slot on a cluster) is the worker set's business (``workers.WorkerSet``); the
shortcuts a caller's thread may take while the engine sleeps are ``fastpath.py``'s,
and who may run the scheduler when is written once, in ``fastpath.Flags``.
"""

from __future__ import annotations

import atexit
import os
import selectors
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import errors
from .._launch.child import BOOTSTRAP_ERROR, is_refusal
from .._launch.template import parkable
from .._transport.wake import Wake
from ..errors import PoolClosedError
from . import fastpath
from .channel import Tag
from .fastpath import Flags, disarm, send_direct
from .messages import TaskError
from .processes import WORKER_PREFIX, ProcessWorkers
from .scheduler import (
    Broken,
    Deliver,
    DeliverSingles,
    Done,
    Job,
    Kill,
    PoolState,
    Scheduler,
    Send,
    Spawn,
    Stop,
)
from .stats import PoolStatistics, WorkerStatistics
from .tasks import recycle
from .workers import ThreadWorkers, WorkerSet

__all__ = ["Engine", "WORKER_PREFIX"]

_RSS_EVERY = 0.2  # seconds between RSS samples of busy workers (peak RSS on death)
_ONLY_JOBS = {Job}  # what an inbox of nothing but submits holds, by type


class Engine:
    """Runs one pool: its scheduler, its workers (a ``WorkerSet``) and the thread that drives both.

    ``workers`` makes the worker set (given the engine); by default local processes,
    or threads when ``threads``. A cluster backend passes its own
    (``backends/_engine.py``).
    """

    def __init__(
        self,
        processes: int | None,
        *,
        ctx: Any,
        threads: bool = False,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        max_memory_per_child: int | None = None,
        window: int = 3,
        target_batch_s: float | None = None,
        workers: Callable[[Engine], WorkerSet] | None = None,
    ) -> None:
        # None: one worker per CPU; a batch worth 4 ms of work (batching.py).
        processes = processes if processes is not None else (os.cpu_count() or 1)
        target_batch_s = 0.004 if target_batch_s is None else target_batch_s
        self.ctx = ctx
        self.threads = threads
        self.serializer = ctx.serializer if ctx is not None else None
        self.broken: BaseException | None = None
        # Set once the first workers' ``start()`` calls are done; ``start_error`` is the
        # first exception one raised (it broke the pool: the cause of every later error).
        self.started = threading.Event()
        self.start_error: BaseException | None = None
        self.finished = threading.Event()
        self.ended = False  # set just before ``finished``: read per submit (no Python call)
        self.inbox: deque[Any] = deque()  # a Job, or (fn, args) to call
        self.flags = Flags()
        self._waker = Wake()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self._waker.fileno(), selectors.EVENT_READ, None)
        self._next_rss = 0.0
        #: Work for the next time the engine is idle with the pool open (nothing queued
        #: or in flight), set by its workers: a standby worker's start (standby.py).
        self.idle_work: Callable[[], None] | None = None
        self.sched = Scheduler(
            processes,
            maxtasksperchild=maxtasksperchild,
            max_memory_per_child=max_memory_per_child,
            window=window,
            target_batch_s=target_batch_s,
        )
        self.processes = processes
        if workers is not None:
            self.workers = workers(self)
        elif threads:
            self.workers = ThreadWorkers(self, initializer=initializer, initargs=tuple(initargs))
        else:
            self.workers = ProcessWorkers(
                self, ctx=ctx, initializer=initializer, initargs=tuple(initargs)
            )
        self.sched.early_start = self.workers.quick_start
        ref = weakref.ref(self)
        self._atexit = lambda: _terminate_ref(ref)
        self._atexit_registered = False
        self.thread = threading.Thread(target=self._main, name="polyproc-pool-engine", daemon=True)
        parkable(self.thread, self.flags.lock)  # it runs Python code only holding the lock
        if self.workers.first_in_caller:
            # The first workers: forked here, from the caller, before our thread exists
            # (the first by the pool's template as it is forked: _launch/template.py).
            self.act()
            self.workers.first_started()
        self.thread.start()  # last: the thread reads everything above

    # -- the API the faces use (any thread) ------------------------------------------
    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the engine thread soon. Safe from any thread."""
        self.inbox.append((fn, args))
        if self.flags.asleep:
            self.wake()

    def submit(self, job: Job) -> None:
        """Hand a job to the scheduler; its results reach ``job.sink``."""
        if self.ended:
            raise self.closed_error()
        self.inbox.append(job)  # a bare Job: one tuple fewer per submit
        if self.ended:
            self._fail_leftovers()  # it ended between our check and our append
            return
        flags = self.flags
        if not flags.asleep:
            return  # the engine is awake and will see it
        if flags.direct and flags.lock.acquire(False):
            # The engine sleeps and a worker is idle: send from this thread, saving the
            # thread hop to the engine and back (a quarter of a round trip).
            try:
                if flags.asleep and flags.direct:
                    send_direct(self, job)
                    return
            except Exception as exc:  # noqa: BLE001 - an engine bug, met in this thread
                self.fail_from_caller(exc)
                return
            finally:
                flags.lock.release()
        self.wake()

    def consumed(self, job: Job, count: int) -> None:
        """The consumer of an ordered job has taken ``count`` results (credit returns)."""
        self.post(self.sched.consumed, job, count)

    def cancel(self, job: Job) -> None:
        """The caller lost interest in ``job``: pull no more of its input."""
        self.post(self.sched.cancel, job)

    def cancel_unstarted(self) -> None:
        """Cancel the submitted futures no worker will start now (executor ``cancel_futures``)."""
        self.post(self.sched.cancel_unstarted)

    def check_open(self) -> None:
        """Raise what a new job would fail with, if the engine takes no more work."""
        if self.broken is not None or self.finished.is_set():
            raise self.closed_error()

    def closed_error(self) -> BaseException:
        if is_refusal(self.broken):  # a main module with no guard: the program's error
            return RuntimeError(BOOTSTRAP_ERROR)
        if self.broken is not None:
            err = errors.BrokenProcessPool(str(self.broken))
            err.__cause__ = self.broken  # and through it, why it broke
            return err
        return PoolClosedError("Pool not running")

    def statistics(self, state: PoolState | None = None) -> PoolStatistics:
        """A snapshot of the counters; ``state`` is the face's, else the scheduler's."""
        sched = self.sched
        name_of = self.workers.name_of
        stats = dict(sched.stats)
        workers = tuple(
            WorkerStatistics(
                id=s.wid,
                name=s.name or name_of(s.wid),
                state=s.state.value,
                tasks=s.done,
                busy_s=s.busy,
                rss=s.rss,
                peak_rss=s.peak_rss,
                exitcode=s.exitcode,
            )
            for s in list(sched.workers.values()) + list(sched.finished_workers)
        )
        return PoolStatistics(
            **stats,
            workers=workers,
            processes=self.processes,
            state=(state or sched.state).name,
        )

    def close(self) -> None:
        self.post(self.sched.close)

    def terminate(self, error: BaseException | None = None) -> None:
        err = error or PoolClosedError("the pool was terminated")
        self.post(self.sched.terminate, err)

    def join(self, timeout: float | None = None) -> bool:
        # Event.wait is interruptible by Ctrl+C; join the thread only once it is done.
        if not self.finished.wait(timeout):
            return False
        self.thread.join()
        return True

    def wake(self) -> None:
        flags = self.flags
        if flags.asleep:
            flags.asleep = False
            self._waker.set()  # full: it wakes anyway; closed: the engine is gone

    def hook_exit(self) -> None:
        """After the first worker has started: stop the pool at interpreter exit.

        Registered then, so it runs before polyproc's own exit hook (atexit is LIFO):
        the pool stops its workers itself, rather than seeing them killed and starting
        replacements during shutdown.
        """
        if not self._atexit_registered:
            self._atexit_registered = True
            atexit.register(self._atexit)

    # -- the loop (engine thread, holding the lock but while it waits) ------------------
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a bug here must not hang users
            self._crash(exc)
        finally:
            self.started.set()
            self._shutdown()

    def _loop(self) -> None:
        sched = self.sched
        inbox = self.inbox
        select = self.sel.select
        flags = self.flags
        lock = flags.lock
        leads = self.workers.leads  # its callers may arm channels (fastpath.Leading)
        lock.acquire()
        try:
            if sched.actions:
                self.act()  # the first workers' starts
            self.started.set()
            while True:
                if inbox:
                    self.drain_inbox()
                if sched.actions:
                    self.act()
                if sched.finished() and not inbox:
                    flags.direct = False
                    return
                if self.idle_work is not None and sched.state is PoolState.RUN and sched.idle():
                    work, self.idle_work = self.idle_work, None
                    work()
                    continue  # a caller may have posted meanwhile
                timeout = self._timeout()
                flags.direct = sched.has_idle_worker()
                if flags.direct and leads and (timeout is None or timeout > fastpath.ARM_GRACE):
                    # A caller may arm a channel and never read it (fastpath.Leading):
                    # wake within the grace, whatever happens, and give it back.
                    timeout = fastpath.ARM_GRACE
                flags.asleep = True
                if inbox:
                    flags.asleep = False
                    continue
                lock.release()
                try:
                    events = select(timeout)
                finally:
                    lock.acquire()
                flags.asleep = False
                flags.direct = False
                if flags.armed is not None:
                    disarm(self)  # awake first: we read that channel (fastpath.py)
                self._on_events(events)
                if sched.deadlines:
                    sched.tick(time.monotonic())
        finally:
            lock.release()

    def _on_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        workers = self.workers
        live = self.sel.get_map()
        for key, mask in events:
            if len(events) > 1 and live.get(key.fd) is not key:
                # Unregistered by an earlier event of this batch: a worker whose sentinel
                # and channel fire together (its template died: both at once) is gone.
                continue
            match key.data:
                case None:
                    self._waker.drain()
                case (Tag.CHANNEL, h):
                    if mask & selectors.EVENT_READ and not h.led:
                        workers.on_readable(h)
                    if mask & selectors.EVENT_WRITE:
                        h.flush(self.sel)
                case (Tag.SENTINEL, h):
                    workers.on_death(h)
                case (Tag.TEMPLATE, _):
                    workers.on_template()

    def _timeout(self) -> float | None:
        now = time.monotonic()
        t: float | None = None
        deadline = self.sched.next_deadline()
        if deadline is not None:
            t = max(0.0, deadline - now)
        if self.workers.samples_rss and any(s.window for s in self.sched.workers.values()):
            if now >= self._next_rss:
                self.workers.sample_rss()
                self._next_rss = now + _RSS_EVERY
            t = _RSS_EVERY if t is None else min(t, _RSS_EVERY)
        return t

    def drain_inbox(self) -> None:
        """Hand queued jobs to the scheduler and run posted calls, in order (lock held)."""
        inbox = self.inbox
        take = inbox.popleft  # only this thread (or a caller holding the lock) takes
        sched = self.sched
        while inbox:
            items = [take() for _ in range(len(inbox))]
            if set(map(type, items)) == _ONLY_JOBS:  # a burst of submits: one call for all
                sched.add_jobs(items)
                continue
            inbox.extendleft(reversed(items))  # back in front, in order: one by one below
            break
        jobs: list[Job] = []
        while inbox:
            item = take()
            if type(item) is Job:
                jobs.append(item)
                continue
            fn, args = item
            if jobs:
                sched.add_jobs(jobs)
                jobs = []
            fn(*args)
        if jobs:
            sched.add_jobs(jobs)

    def act(self, caller: bool = False) -> None:
        """Carry out the scheduler's actions (lock held); a caller leaves starts to the engine."""
        sched = self.sched
        workers = self.workers
        flags = self.flags
        later: list[Spawn] = []
        while sched.actions:
            acts, sched.actions = sched.actions, []
            for a in acts:
                match a:
                    case DeliverSingles():
                        _resolve_all(a.jobs, a.values)
                        led = flags.led
                        if led is not None and led.done():
                            flags.led = None  # answered: do not keep it (and its result) alive
                            if flags.armed is not None:
                                disarm(self)
                    case Send():
                        flags.last_send = a
                        workers.send(a)
                    case Deliver():
                        if a.job.single:
                            _resolve(a.job.sink, a.values[0])
                        else:
                            _guard(a.job.sink._deliver, a.start, a.values, a.clean)
                    case Done():
                        if not a.job.single:
                            _guard(a.job.sink._done)
                    case Spawn():
                        if caller:
                            later.append(a)
                        else:
                            workers.spawn(a.wid)
                    case Stop():
                        workers.stop(a.wid)
                    case Kill():
                        workers.kill(a.wid)
                    case Broken():
                        self.broken = a.error
        if later:
            sched.actions.extend(later)
        if not caller:
            flags.last_send = None  # only a caller's direct send reads it

    # -- the end -------------------------------------------------------------------------
    def fail_from_caller(self, exc: BaseException) -> None:
        """An engine bug met in a caller's thread running the engine's column (a direct
        send, a lead; lock held): fail everything as the engine thread would, then have
        that thread end the same way (not the bug raised from ``get()`` instead)."""
        self._crash(exc)
        self.post(_reraise, exc)

    def _crash(self, exc: BaseException) -> None:
        self.flags.direct = False
        err = errors.BrokenProcessPool(f"the pool's engine failed: {exc!r}")
        err.__cause__ = exc
        self.broken = err
        try:
            self.sched.actions.clear()
            self.sched._fail_everything(err)
            for a in self.sched.actions:
                if isinstance(a, Deliver):
                    if a.job.single:
                        _resolve(a.job.sink, a.values[0])
                    else:
                        _guard(a.job.sink._deliver, a.start, a.values)
                elif isinstance(a, Done) and not a.job.single:
                    _guard(a.job.sink._done)
        except BaseException:  # noqa: BLE001
            pass

    def _shutdown(self) -> None:
        with self.flags.lock:  # a leading caller may be reading a channel
            self.workers.close_all()
            self.sel.close()
        self.ended = True
        self.finished.set()
        # Late posts from user threads find the pipe closed (set() ignores it).
        self._waker.close()
        atexit.unregister(self._atexit)
        self._fail_leftovers()
        self.workers.release()

    def _fail_leftovers(self) -> None:
        """Jobs that reached the inbox as the engine ended: fail them, never leave them."""
        err = self.closed_error()
        while True:
            try:
                item = self.inbox.popleft()
            except IndexError:
                return
            if type(item) is Job:
                if item.single:
                    _resolve(item.sink, TaskError.local(err))
                else:
                    _guard(item.sink._deliver, 0, [TaskError.local(err)])
                    _guard(item.sink._done)


def _terminate_ref(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None and not engine.finished.is_set():
        engine.terminate()
        engine.join(5.0)


def _resolve(fut: Any, value: Any) -> None:
    """Give a task's outcome to its future: a ``Cell`` (Pool) or an executor's Future."""
    try:
        if type(value) is TaskError:
            fut.set_exception(value.exception())
        else:
            fut.set_result(value)
    except Exception as exc:  # noqa: BLE001 - narrowed below
        # An executor's future cancelled meanwhile. concurrent.futures is imported
        # wherever such a future exists (a Cell never raises here).
        cf = sys.modules.get("concurrent.futures")
        if cf is None or not isinstance(exc, cf.InvalidStateError):
            raise


def _resolve_all(jobs: list[Job], values: list[Any]) -> None:
    """Give a batch of single tasks their outcomes: at once where the sinks' class offers it
    (``LightFuture.settle_all``: one lock for the batch), else one by one."""
    settle = getattr(jobs[0].sink, "settle_all", None)
    if settle is None:
        for i, v in enumerate(values):
            _resolve(jobs[i].sink, v)
    else:
        for i in settle([job.sink for job in jobs], values, TaskError):
            _resolve(jobs[i].sink, values[i])
    recycle(jobs)  # done with them: the next submits reuse those no one else holds


def _reraise(exc: BaseException) -> None:
    """Posted by ``fail_from_caller``: the engine thread meets the bug too, and ends."""
    raise exc


def _guard(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a user callback must not stop the engine
        import traceback

        traceback.print_exc()
