"""The scheduler's vocabulary: jobs, batches, workers' slots, and the actions it emits.

Plain data with no behaviour beyond small helpers, split from ``scheduler`` so the
policy reads on its own. Life cycles are transition tables (``WORKER_TRANSITIONS``,
``POOL_TRANSITIONS``): a move not in the table is a bug and raises.

::

    Job (one user call) ──pulled in──► Batch (tasks of one function, one frame)
                                         │ sent to
                                         ▼
                                       WorkerSlot (its in-flight window of Batches)
"""

from __future__ import annotations

import enum
import pickle
import reprlib
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "WorkerState",
    "PoolState",
    "WORKER_TRANSITIONS",
    "POOL_TRANSITIONS",
    "POOL_FACE_TRANSITIONS",
    "Mode",
    "FnInfo",
    "Job",
    "Batch",
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
    "WorkerSlot",
    "short_repr",
    "describe_exit",
]


class WorkerState(enum.Enum):
    STARTING = "starting"  # process started, initializer not yet done
    READY = "ready"  # takes work
    RETIRING = "retiring"  # recycled (tasks or memory): finishes its window, takes no more
    STOPPING = "stopping"  # told to exit
    DEAD = "dead"


WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.READY: frozenset({WorkerState.RETIRING, WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.RETIRING: frozenset({WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.STOPPING: frozenset({WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}


class PoolState(enum.StrEnum):
    """A pool's life cycle: one enum for the scheduler and the faces.

    Its values are the stdlib's strings (``polyproc.pool.RUN == "RUN"``). The faces
    (``pool.py``) move through RUN, CLOSE and TERMINATE as the user calls them
    (``POOL_FACE_TRANSITIONS``); the scheduler follows a step behind, in the engine
    thread, and may also break (``POOL_TRANSITIONS``).
    """

    RUN = "RUN"  # takes jobs
    CLOSE = "CLOSE"  # no new jobs; finishes what it has, then stops its workers
    BROKEN = "BROKEN"  # cannot run work (initializer failed); everything fails fast
    TERMINATE = "TERMINATE"  # workers killed, outstanding work failed


#: The scheduler's moves.
POOL_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.RUN: frozenset({PoolState.CLOSE, PoolState.BROKEN, PoolState.TERMINATE}),
    PoolState.CLOSE: frozenset({PoolState.BROKEN, PoolState.TERMINATE}),
    PoolState.BROKEN: frozenset({PoolState.TERMINATE}),
    PoolState.TERMINATE: frozenset(),
}

#: What a user may do to a pool face in each state (a face is never BROKEN: it learns
#: of a broken engine when it next submits).
POOL_FACE_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.RUN: frozenset({PoolState.CLOSE, PoolState.TERMINATE}),
    PoolState.CLOSE: frozenset({PoolState.TERMINATE}),
    PoolState.TERMINATE: frozenset(),
}


class Mode(enum.IntEnum):
    """How a worker calls the function with one task's argument."""

    ONE = 0  # fn(x)
    STAR = 1  # fn(*x)
    KW = 2  # fn(*x[0], **x[1])


class FnInfo:
    """One distinct task function: its wire id, its pickled bytes, and its measured speed.

    Made by the face in a user thread (which pickles the function once, so an
    unpicklable one fails at submit); ``est`` is written only by the engine thread.
    """

    __slots__ = ("fid", "fn", "name", "blob", "est", "nbytes", "by_ref", "__weakref__")

    def __init__(self, fid: int, fn: Any, name: str, blob: Any) -> None:
        self.fid = fid
        self.fn = fn  # kept (while a job holds this) so id(fn) cannot be reused
        self.name = name
        self.blob = blob  # the serializer's Payload (or the function itself for threads)
        self.est: float | None = None  # seconds per task, moving average
        self.nbytes: float | None = None  # pickled bytes per task (the engine measures)
        self.by_ref: bool | None = None  # may workers cache it? (the engine decides once)


_NO_REORDER: dict[int, tuple[list[Any], bool]] = {}  # shared by unordered jobs; never written
_NO_FN = FnInfo(0, None, "<recycled job>", b"")  # a kept job holds no user function


class Job:
    """One call from a user: ``apply``/``submit`` (a single task) or a map (an input iterator).

    ``sink`` is whatever the face wants back in actions (a Future, a MapResult ...).
    ``claim``, if set, is called with a list of jobs that share it when they are taken
    for sending (one call per batch); it returns those that may run, in order, and the
    others are dropped (cancelled ``concurrent.futures.Future`` objects).
    """

    __slots__ = (
        "fn",
        "mode",
        "sink",
        "claim",
        "single",
        "arg",
        "blob",
        "it",
        "length",
        "ordered",
        "credit",
        "chunksize",
        "timeout",
        "retries",
        "pulled",
        "delivered",
        "consumed",
        "exhausted",
        "cancelled",
        "finished",
        "reorder",
        "lost",
        "stalled",
        "item_bytes",
        "paced",
        "cap",
        "rate",
        "seen",
        "seen_n",
        "limit",
    )

    def __init__(
        self,
        fn: FnInfo,
        mode: Mode,
        sink: Any,
        *,
        arg: Any = None,
        blob: Any = None,
        it: Iterator[Any] | None = None,
        length: int | None = None,
        ordered: bool = False,
        credit: bool = False,
        chunksize: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        claim: Callable[[list[Job]], list[Job]] | None = None,
    ) -> None:
        self.fn = fn
        self.mode = mode
        self.sink = sink
        self.claim = claim
        self.single = it is None  # one task: ``arg`` (its pickled form in ``blob``)
        self.arg = arg
        self.blob = blob
        self.it = it
        self.length = length  # len(input) when known: caps batch sizes for balance
        self.ordered = ordered  # deliver in input order (reorder buffer)
        self.credit = credit  # a consumer takes results one by one: bound the lead
        self.chunksize = chunksize
        self.timeout = timeout
        self.retries = retries
        self.pulled = 1 if self.single else 0  # tasks taken from the input so far
        self.delivered = 0
        self.consumed = 0  # credit jobs: results the consumer has taken
        self.exhausted = self.single
        self.cancelled = False
        self.finished = False
        # Made only when needed: a submit() makes one Job, and every object it allocates
        # is garbage-collector work when 200k of them are in flight.
        self.reorder: dict[int, tuple[list[Any], bool]] = {} if ordered else _NO_REORDER
        self.lost: dict[int, int] | None = None  # index -> times its worker died under it
        self.stalled = False  # waiting for consumer credit
        self.item_bytes = 0  # credit jobs: largest input item seen (estimate), 0 = none yet
        # Credit jobs whose consumer is slower than the workers: its pace (batching.pace).
        self.paced = False
        self.cap = 512  # credit jobs: most items ahead of the consumer for now (slow start)
        self.rate = 0.0  # items/s the consumer takes, while paced (0: not known yet)
        self.seen = 0.0  # monotonic time of the last consumption report
        self.seen_n = 0  # ... and its count
        # Credit jobs: the credit last computed (batching.credit_limit). The consumer's
        # thread reads it to size the pieces it walks and how often it reports.
        self.limit = 256

    @classmethod
    def task(
        cls,
        fn: FnInfo,
        mode: Mode,
        sink: Any,
        blob: Any,
        arg: Any,
        timeout: float | None,
        retries: int,
        claim: Callable[[list[Job]], list[Job]] | None,
    ) -> Job:
        """``Job(fn, mode, sink, arg=arg, blob=blob, timeout=, retries=, claim=)``: the same
        fields, without parsing keywords (0.64 -> 0.30 us; it runs once per ``submit``).
        ``arg`` may be None when ``blob`` holds it (``Batch.arg_of`` reads it back)."""
        if _free:
            try:
                self = _free.pop()  # a finished one nobody references (``recycle``)
            except IndexError:  # another thread took the last one
                self = _new(cls)
        else:
            self = _new(cls)
        self.fn = fn
        self.mode = mode
        self.sink = sink
        self.claim = claim
        self.single = True
        self.arg = arg
        self.blob = blob
        self.it = None
        self.length = None
        self.ordered = False
        self.credit = False
        self.chunksize = None
        self.timeout = timeout
        self.retries = retries
        self.pulled = 1
        self.delivered = 0
        self.consumed = 0
        self.exhausted = True
        self.cancelled = False
        self.finished = False
        self.reorder = _NO_REORDER
        self.lost = None
        self.stalled = False
        self.item_bytes = 0
        self.paced = False
        self.cap = 512
        self.rate = 0.0
        self.seen = 0.0
        self.seen_n = 0
        self.limit = 256
        return self

    def call_arg(self) -> Any:
        """A single task's argument, for messages: kept, or read back from its pickle."""
        if self.arg is not None or type(self.blob) is not bytes:
            return self.arg
        try:
            return pickle.loads(self.blob)
        except Exception:  # noqa: BLE001 - only a message needs it
            return _Unreadable()

    def __repr__(self) -> str:
        return f"<Job {self.fn.name} pulled={self.pulled} delivered={self.delivered}>"


_new = object.__new__
_free: list[Job] = []  # finished single-task jobs to reuse (``recycle``), newest last
_FREE_MAX = 4096
_REFS_IN_RECYCLE = 3  # recycle's caller's list, its loop variable, getrefcount's argument
# Only where the count above was checked (3.11-3.13; 3.14 may borrow the loop's reference)
# and tells who holds an object (not a free-threaded build).
_RECYCLES = sys.version_info < (3, 14) and getattr(sys, "_is_gil_enabled", lambda: True)()


def recycle(jobs: list[Job]) -> None:
    """Keep the finished single-task jobs of a delivered batch for ``Job.task`` to reuse:
    a burst of submits then allocates one object per task (its future), so the garbage
    collector runs half as often (each full pass walks every live future). Only a job
    no one else references is kept (a batch still alive, a recovery record: it dies)."""
    if not _RECYCLES:
        return
    refs = sys.getrefcount
    for job in jobs:
        if refs(job) == _REFS_IN_RECYCLE and job.single and job.finished:
            if len(_free) >= _FREE_MAX:
                return
            job.sink = job.arg = job.blob = job.claim = job.lost = None  # keep nothing alive
            job.fn = _NO_FN
            _free.append(job)


class _Unreadable:  # an argument that pickled here but does not unpickle here: its stand-in
    def __repr__(self) -> str:
        return "<argument not readable here>"


class Batch:
    """Tasks of one function sent to one worker in one frame.

    Either a run of one map job (``job``, indexes ``start .. start+len(args)-1``) or
    single-task jobs (``owners``, each index 0, their args pre-pickled in ``args``).
    """

    __slots__ = (
        "bid",
        "fn",
        "mode",
        "job",
        "start",
        "args",
        "owners",
        "worker",
        "deadline",
        "isolated",
        "unstarted",
        "waits",
    )

    def __init__(
        self,
        fn: FnInfo,
        mode: Mode,
        args: list[Any],
        *,
        job: Job | None = None,
        start: int = 0,
        owners: list[Job] | None = None,
        isolated: bool = False,
    ) -> None:
        self.bid = 0
        self.fn = fn
        self.mode = mode
        self.job = job
        self.start = start
        self.args = args
        self.owners = owners
        self.worker = 0
        self.deadline: float | None = None
        self.isolated = isolated  # re-run alone to find which task killed a worker
        self.unstarted = 0  # deaths of its worker before any task of it began
        self.waits = 0  # deaths of its worker that were no fault of it (journal.py, STATE)

    def __len__(self) -> int:
        return len(self.args)

    def job_of(self, i: int) -> tuple[Job, int]:
        if self.owners is not None:
            return self.owners[i], 0
        assert self.job is not None
        return self.job, self.start + i

    def arg_of(self, i: int) -> Any:
        if self.owners is not None:
            return self.owners[i].call_arg()
        return self.args[i]

    def __repr__(self) -> str:
        return f"<Batch {self.bid} {self.fn.name} x{len(self.args)} on {self.worker}>"


# -- actions ---------------------------------------------------------------------------
class _Record:
    """Plain data compared and shown by its fields (``__slots__``), as ``@dataclass`` would.

    Not a dataclass: ``dataclasses`` brings ``inspect`` and ``ast``, milliseconds on
    the import path of every pool's creation (issue 11: a short script's cost).
    Defining ``__eq__`` leaves the records unhashable, as ``@dataclass`` does.
    """

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__qualname__}({fields})"


class Spawn(_Record):
    __slots__ = ("wid",)

    def __init__(self, wid: int) -> None:
        self.wid = wid


class Send(_Record):
    __slots__ = ("wid", "batch")

    def __init__(self, wid: int, batch: Batch) -> None:
        self.wid = wid
        self.batch = batch


class Deliver(_Record):
    __slots__ = ("job", "start", "values", "clean")

    def __init__(self, job: Job, start: int, values: list[Any], clean: bool = False) -> None:
        self.job = job
        self.start = start
        self.values = values  # a TaskError in place of a value that failed
        # Known to hold no TaskError (counted in ``batch_done``): a sink need not look.
        self.clean = clean


class DeliverSingles(_Record):
    __slots__ = ("jobs", "values")

    def __init__(self, jobs: list[Job], values: list[Any]) -> None:
        self.jobs = jobs
        self.values = values


class Done(_Record):
    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


class Stop(_Record):
    __slots__ = ("wid",)

    def __init__(self, wid: int) -> None:
        self.wid = wid


class Kill(_Record):
    __slots__ = ("wid",)

    def __init__(self, wid: int) -> None:
        self.wid = wid


class Broken(_Record):
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


Action = Spawn | Send | Deliver | DeliverSingles | Done | Stop | Kill | Broken


class Recovered(_Record):
    """What a dead worker's commit journal says about the head batch of its window.

    ``values`` None: the journal speaks for an older batch, so the head never started.
    Otherwise the results of its first ``len(values)`` tasks; the next one was running if
    ``started`` (it had been called), else it never began (the worker died between tasks).
    ``loading``: the worker died while reading or unpickling the batch (only then may the
    death be the batch's fault: it gets a strike, ``recovery._unstarted``).
    """

    __slots__ = ("bid", "values", "started", "loading")

    def __init__(
        self, bid: int, values: list[Any] | None, started: bool = True, loading: bool = True
    ) -> None:
        self.bid = bid
        self.values = values
        self.started = started
        self.loading = loading


class WorkerSlot(_Record):
    __slots__ = (
        "wid",
        "state",
        "window",
        "assigned",
        "done",
        "busy",
        "rss",
        "peak_rss",
        "baseline",
        "last_used",
        "exclusive",
        "timed_out",
        "exitcode",
        "name",
    )

    def __init__(self, wid: int, state: WorkerState = WorkerState.STARTING) -> None:
        self.wid = wid
        self.state = state
        self.window: deque[Batch] = deque()
        self.assigned = 0  # tasks sent over its life (maxtasksperchild)
        self.done = 0
        self.busy = 0.0
        self.rss: int | None = None
        self.peak_rss: int | None = None
        self.baseline = 0  # RSS it inherited at start (fork): not its own for the limit
        self.last_used = 0
        self.exclusive = False  # running a timed task: nothing else goes there
        self.timed_out: Batch | None = None
        self.exitcode: int | None = None
        self.name = ""  # once it has ended, its name then (its process is gone)


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 4
_short.maxtuple = 4
_short.maxdict = 4


def short_repr(obj: Any) -> str:
    try:
        return _short.repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object>"


def call_repr(name: str, mode: Mode, arg: Any) -> str:
    """``f(1, k=2)``: one task's call as the user wrote it, whatever ``mode`` packed."""
    try:
        if mode is Mode.STAR:
            parts = [short_repr(a) for a in arg]
        elif mode is Mode.KW:
            args, kwargs = arg
            parts = [short_repr(a) for a in args] + [
                f"{k}={short_repr(v)}" for k, v in kwargs.items()
            ]
        else:
            parts = [short_repr(arg)]
    except (TypeError, ValueError):
        parts = [short_repr(arg)]
    if len(parts) > 6:
        parts = [*parts[:6], "..."]
    return f"{name}({', '.join(parts)})"


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown status"
    if exitcode < 0:
        import signal

        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _slice(batch: Batch, lo: int, hi: int) -> Batch:
    owners = None if batch.owners is None else batch.owners[lo:hi]
    return Batch(
        batch.fn,
        batch.mode,
        batch.args[lo:hi],
        job=batch.job,
        start=batch.start + lo,
        owners=owners,
        isolated=batch.isolated,
    )


def _single(batch: Batch, i: int) -> Batch:
    return _slice(batch, i, i + 1)


def _split(batch: Batch, n: int) -> Batch:
    """Cut ``batch`` to its first ``n`` tasks (in place); return the rest as a new batch."""
    rest = _slice(batch, n, len(batch))
    batch.args = batch.args[:n]
    if batch.owners is not None:
        batch.owners = batch.owners[:n]
    return rest
