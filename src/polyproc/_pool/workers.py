"""A pool's workers as the engine sees them: one small interface, three kinds of worker.

::

    Engine (engine thread) ── Spawn/Send/Stop/Kill actions ──► WorkerSet
                                                                 ├─ ProcessWorkers (processes.py):
                                                                 │    a local process per worker, a
                                                                 │    channel and a sentinel in the
                                                                 │    engine's selector
                                                                 ├─ ThreadWorkers (here): a thread per
                                                                 │    worker (``ThreadPool``)
                                                                 └─ ClusterWorkers (backends/_engine.py):
                                                                      a slot on another engine (Dask, Ray)
    Scheduler ◄── worker_ready / batch_done / worker_exited ─────┘ (always in the engine thread)

A worker set starts, feeds, stops and kills workers by the scheduler's worker id
(``wid``) and reports back to the scheduler what happened to them. Everything it
does runs under the engine lock (``fastpath.Flags``): in the engine thread, or in a
caller's thread that holds the lock while the engine sleeps. Workers that are not
processes (a thread, a cluster slot) are ``Slot`` objects: they take batches
through ``put`` from any thread and post their answers back with ``post_message``,
which goes through the engine's inbox, so the scheduler still has one writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .channel import Handle
from .messages import INIT_FAILED, READY, RESULTS, STOP
from .tasks import Send
from .worker import ThreadWorker

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["WorkerSet", "ThreadWorkers", "Slot", "BatchItem"]

#: What a slot's ``put`` takes: (batch id, function, mode, arguments), or None to stop.
BatchItem = tuple[int, Callable[..., Any], int, list[Any]]


class Slot(Protocol):
    """A worker that is not a local process: a thread (``ThreadWorker``) or a cluster slot.

    ``put(item)`` is called from the engine's side (any thread holding the engine
    lock); the slot answers through the ``post`` it was made with:
    ``post(kind, wid, *payload)`` with the channel's message kinds (``messages``).
    """

    name: str
    abandoned: bool  # set by the engine: drop whatever the slot still reports

    def start(self) -> None: ...

    def put(self, item: BatchItem | None, /) -> None: ...


class WorkerSet:
    """The engine's workers (see the module docstring). Subclasses fill in the verbs."""

    #: The engine samples RSS of busy workers (peak RSS on death) only where it means something.
    samples_rss = False
    #: A caller may read its own answer from a worker's channel (``fastpath.lead``).
    leads = False
    #: Its workers start in a millisecond or two, alike (forked): the scheduler may send
    #: them work before they are READY (``Scheduler.early_start``).
    quick_start = False
    #: The engine starts the first workers in the caller's thread, before its own exists.
    first_in_caller = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sched = engine.sched
        # Channels by wid, for sets whose workers have one (local processes); a caller
        # may read one of them while the engine sleeps (``fastpath.lead``).
        self.handles: dict[int, Handle] = {}

    def first_started(self) -> None:
        """The first workers were started in the caller's thread (``first_in_caller``)."""

    # -- the verbs the engine's actions call ------------------------------------------
    def spawn(self, wid: int) -> None:
        """Start worker ``wid``; a start that fails is reported as its death."""
        raise NotImplementedError

    def send(self, a: Send) -> None:
        """Hand ``a.batch`` to worker ``a.wid`` without blocking."""
        raise NotImplementedError

    def stop(self, wid: int) -> None:
        """Ask worker ``wid`` to exit once its window is done."""
        raise NotImplementedError

    def kill(self, wid: int) -> None:
        """End worker ``wid`` now (a late task, terminate); its death is reported."""
        raise NotImplementedError

    def close_all(self) -> None:
        """The engine is ending: every worker goes, nothing is reported any more."""
        raise NotImplementedError

    def release(self) -> None:
        """After the engine has ended (and failed what was left): free what the set holds."""

    # -- events the engine's selector delivers (sets that register fds there) ----------
    def on_readable(self, h: Handle, look: bool = True) -> None:
        raise NotImplementedError(f"{type(self).__name__} registers no channel")

    def on_death(self, h: Handle) -> None:
        raise NotImplementedError(f"{type(self).__name__} registers no sentinel")

    def on_template(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} registers no template")

    def sample_rss(self) -> None:
        """Note the RSS of busy workers (only where ``samples_rss``)."""

    # -- what faces read ---------------------------------------------------------------
    def name_of(self, wid: int) -> str:
        return f"worker {wid}"

    def live(self) -> list[Any]:
        """The live workers' ``Process`` or ``Thread`` objects (``Pool._pool``)."""
        return []

    def processes(self) -> dict[int, Any]:
        """``{pid: Process}`` of the live local processes (``ProcessPoolExecutor._processes``)."""
        return {}

    def __len__(self) -> int:
        raise NotImplementedError


class ThreadWorkers(WorkerSet):
    """Workers that are ``Slot`` objects: threads in this process (``ThreadPool``).

    A timed-out task cannot be killed in a thread: ``kill`` abandons its slot (its late
    results are dropped) and the scheduler starts another. ``ClusterWorkers`` reuses
    all of this with cluster slots in place of threads.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        prefix: str = "ThreadPoolWorker",
    ) -> None:
        super().__init__(engine)
        self.initializer = initializer
        self.initargs = initargs
        self.prefix = prefix
        self.slots: dict[int, Slot] = {}

    def __len__(self) -> int:
        return len(self.slots)

    def make_slot(self, wid: int) -> Slot:
        return ThreadWorker(
            wid, f"{self.prefix}-{wid}", self.post_message, self.initializer, self.initargs
        )

    def spawn(self, wid: int) -> None:
        slot = self.make_slot(wid)
        self.slots[wid] = slot
        slot.start()

    def send(self, a: Send) -> None:
        slot = self.slots.get(a.wid)
        if slot is None:
            return
        batch = a.batch
        direct = batch.args if batch.owners is None else [j.blob for j in batch.owners]
        slot.put((batch.bid, batch.fn.fn, int(batch.mode), direct))

    def stop(self, wid: int) -> None:
        slot = self.slots.get(wid)
        if slot is not None:
            slot.put(None)

    def kill(self, wid: int) -> None:
        slot = self.slots.pop(wid, None)
        if slot is None:
            return
        # A thread cannot be killed: abandon it (its late results are dropped).
        slot.abandoned = True
        slot.put(None)
        self.sched.worker_exited(wid, None, name=slot.name)

    def close_all(self) -> None:
        for slot in self.slots.values():
            slot.abandoned = True
            slot.put(None)
        self.slots.clear()

    def name_of(self, wid: int) -> str:
        slot = self.slots.get(wid)
        return f"worker {wid}" if slot is None else slot.name

    def live(self) -> list[Any]:
        return [s.thread for s in list(self.slots.values()) if isinstance(s, ThreadWorker)]

    # -- answers: any thread posts, the engine thread handles --------------------------
    def post_message(self, kind: int, wid: int, *rest: Any) -> None:
        """A slot's answer, from any thread: into the engine's inbox."""
        self.engine.post(self.message, kind, wid, rest)

    def message(self, kind: int, wid: int, rest: tuple[Any, ...]) -> None:
        """Engine thread: a slot's answer reaches the scheduler."""
        slot = self.slots.get(wid)
        if slot is None or slot.abandoned:
            return
        sched = self.sched
        if kind == RESULTS:
            bid, busy, rss, values = rest
            w = sched.workers.get(wid)
            if w is not None and w.window and w.window[0].bid == bid:
                sched.batch_done(wid, bid, values, busy, rss)
        elif kind == READY:
            sched.worker_ready(wid)
        elif kind == INIT_FAILED:
            sched.worker_failed_init(wid, rest[0].exception())
        elif kind == STOP:
            del self.slots[wid]
            if wid in sched.workers:
                sched.worker_exited(wid, 0, name=slot.name)
