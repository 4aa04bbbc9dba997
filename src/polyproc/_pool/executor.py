"""``ProcessPoolExecutor``: the ``concurrent.futures`` API as a face over the same ``Engine``.

::

    submit(fn, /, *args, **kwargs) ──► Job(claim=_claim: the futures of a batch started at once)
                                        ──► Engine ──► ExecutorFuture.settle_all / set_exception
    map(fn, *iterables) ──► an ordered, credit-bounded job (lazy input) ──► generator

Results are real ``concurrent.futures.Future`` objects (``ExecutorFuture``, which makes
its Condition only when a thread waits: ``future.py``), so the stdlib's
``as_completed``/``wait`` and asyncio's ``run_in_executor`` work. Unlike the
stdlib, a dead worker fails only its own task (``WorkerLostError``, a
``BrokenProcessPool``) and the executor stays usable; it breaks for good only if
the initializer raises. ``map(timeout=)`` keeps the stdlib meaning (a deadline for
the whole iteration); ``task_timeout=`` on the constructor or on ``map`` is the
per-task limit that kills a late task's worker.

As in the stdlib, work submitted is never dropped by the executor going away:

* an argument or function that does not pickle fails *its future* (the pickler's
  own error), never ``submit()`` itself;
* an executor that is garbage-collected without ``shutdown()`` finishes what it
  was given (its engine is closed, not terminated), and at interpreter exit a
  ``threading`` exit hook (the one the stdlib's executors use: it runs before
  ``atexit`` hooks, while every thread is alive) closes each executor's engine
  and waits for it, so tasks submitted and never awaited still run. After that
  point ``submit()`` raises ``RuntimeError``.

``backend=`` runs it on a Dask or Ray cluster (``polyproc.backends``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Executor, Future
from typing import Any, Literal, ParamSpec, TypeVar

from ..errors import BrokenProcessPool, MaybeEncodingError
from .choice import make_engine
from .engine import Engine
from .fastpath import LeadingFuture
from .future import FINISHED, LightFuture
from .results import MapIterator, Submitter, make_progress
from .stats import PoolStatistics
from .tasks import Job

__all__ = ["ProcessPoolExecutor"]

P = ParamSpec("P")
T = TypeVar("T")


class _ExitState:
    """Process-wide: the engines of live executors, and whether the interpreter is exiting."""

    def __init__(self) -> None:
        self.engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self.exiting = False
        self.hooked = False
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def after_fork_in_child(self) -> None:
        # A forked child (a Process, a pool worker) inherits the parent's executors as
        # objects with no engine thread: at its exit it must not wait for their work.
        self.engines = weakref.WeakSet()
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def track(self, engine: Engine) -> None:
        with self.lock:
            if not self.hooked:
                # Private but stable: concurrent.futures.process and thread use it too.
                register: Callable[[Callable[[], None]], None] = vars(threading)["_register_atexit"]
                register(self.finish)
                self.hooked = True
            self.engines.add(engine)

    def finish(self) -> None:
        """At interpreter exit: every executor finishes the work it was given.

        Unless the program is ending on Ctrl+C (an uncaught ``KeyboardInterrupt``, or
        one that lands while we wait here): then the work is stopped, as polyproc's
        pools do on Ctrl+C, rather than holding the exit until it is done.
        """
        self.exiting = True
        engines = list(self.engines) if self.pid == os.getpid() else []
        interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
        try:
            for engine in engines:
                if interrupted:
                    engine.terminate()
                else:
                    engine.close()
            for engine in engines:
                engine.join()
        except KeyboardInterrupt:
            for engine in engines:
                engine.terminate()


_exit = _ExitState()
os.register_at_fork(after_in_child=_exit.after_fork_in_child)


class ExecutorFuture(LeadingFuture, LightFuture):  # type: ignore[override]
    """The executor's Future: a ``concurrent.futures.Future`` with no Condition until a
    thread waits (``future.py``), whose ``result()`` may read its own answer
    (``fastpath.LeadingFuture``).

    A result that would not pickle fails with the pickler's error: the worker reports
    it as ``MaybeEncodingError`` (what ``Pool`` raises); the stdlib's executor raises
    the pickling error itself, so that is what goes here.
    """

    _engine: Engine | None = None

    def result(self, timeout: float | None = None) -> Any:
        # Finished (most futures of a burst are, by the time they are read): nothing to
        # lead, no lock, one frame. Anything else takes Leading's path.
        if self._state == FINISHED and self._exception is None:
            return self._result
        return super().result(timeout)

    def set_exception(self, exception: BaseException | None) -> None:
        if isinstance(exception, MaybeEncodingError) and exception.error is not None:
            inner = exception.error
            inner.__cause__ = exception.__cause__  # the worker's traceback
            exception = inner
        super().set_exception(exception)


_new_future = object.__new__


def _claim(jobs: list[Job]) -> list[Job]:
    """The scheduler's hook when it sends a batch of submits: start every future at once
    (``LightFuture.start_all``: one lock for the batch); a cancelled one is dropped."""
    ok = ExecutorFuture.start_all([job.sink for job in jobs])
    if all(ok):
        return jobs
    return [job for job, run in zip(jobs, ok, strict=True) if run]


class ProcessPoolExecutor(Executor):
    """A process pool executor whose futures survive dead workers."""

    __module__ = "polyproc.futures"  # its public home: repr, pickle

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        progress: Any = None,
        backend: Any = None,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context is None:
            from .._context import default_context

            mp_context = default_context()
        else:
            from .._context import as_settings

            mp_context = as_settings(mp_context)
        if max_tasks_per_child is not None and getattr(mp_context, "start_method", None) == "fork":
            # As the stdlib (cpython #90622): a replacement forked from a process with threads.
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                "start method; supply a different mp_context."
            )
        self._task_timeout = task_timeout
        self._retries = retries
        self._progress = progress
        self._shutdown = False
        # ``backend=`` (or use_backend / POLYPROC_BACKEND): a cluster engine instead.
        self._engine: Engine = make_engine(
            backend,
            max_workers,
            ctx=mp_context,
            threads=False,
            initializer=initializer,
            initargs=tuple(initargs),
            maxtasksperchild=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
        )
        self._max_workers = self._engine.processes
        self._sub = Submitter(self._engine)
        # Dropped without shutdown(): finish what was submitted, as the stdlib does.
        self._finalizer = weakref.finalize(self, self._engine.close)
        _exit.track(self._engine)

    # -- the stdlib executor's private attributes that programs read --------------------
    @property
    def _processes(self) -> dict[int, Any]:
        """``{pid: Process}`` of the live workers (code reads it to find or kill them)."""
        self._engine.started.wait()  # the first workers' start() calls are done
        return self._engine.workers.processes()

    @property
    def _mp_context(self) -> Any:
        return self._engine.ctx

    @property
    def _broken(self) -> str | bool:
        """As the stdlib: False, or why the executor is broken."""
        broken = self._engine.broken
        return False if broken is None else str(broken)

    def _check(self) -> None:
        broken = self._engine.broken
        if broken is not None:
            raise BrokenProcessPool(
                "A child process terminated abruptly, the process pool is not usable anymore"
                f": {broken}"
            ) from broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exit.exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; a Future for its result."""
        engine = self._engine
        if engine.broken is not None or self._shutdown or _exit.exiting:
            self._check()  # raises
        fut = _new_future(ExecutorFuture)  # no __init__ frame: once per submit
        fut._engine = engine
        try:
            job = self._sub.single(fn, args, kwargs, fut, self._task_timeout, self._retries, _claim)
        except Exception as exc:  # noqa: BLE001 - it does not pickle: the future's error
            if fut.set_running_or_notify_cancel():
                fut.set_exception(exc)
            return fut
        engine.submit(job)
        return fut

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        task_timeout: float | None = None,
        progress: Any = None,
    ) -> Iterator[T]:
        """Lazy, ordered ``map``; ``timeout`` bounds the whole iteration, as in the stdlib."""
        self._check()
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        total = None
        sized = [i for i in iterables if isinstance(i, Sized)]
        if len(sized) == len(iterables):
            total = min((len(i) for i in sized), default=0)
        bar = make_progress(
            self._progress if progress is None else progress, total, getattr(fn, "__name__", "map")
        )
        engine = self._engine
        it: MapIterator[Any] = MapIterator(engine.consumed, bar, deadline, engine.cancel)
        # One iterable: ``fn(x)``, as ``Pool.imap`` (no 1-tuple to build and pickle per
        # item: ~80 ns of the engine thread's time each for tiny tasks, issue #14).
        one = len(iterables) == 1
        job = self._sub.many(
            fn,
            iterables[0] if one else _Zipped(iterables, total),
            it.sink,
            star=not one,
            ordered=True,
            credit=True,
            chunksize=chunksize,
            timeout=self._task_timeout if task_timeout is None else task_timeout,
            retries=self._retries,
        )
        it.job = job
        engine.submit(job)
        return it

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        """As the stdlib's (``shutdown(wait=True)``), except after Ctrl+C: what has not
        started is cancelled, so the program ends once the running tasks do, not after
        every pending one (a ``KeyboardInterrupt`` means the user asked to stop)."""
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=interrupted)
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; ``cancel_futures`` cancels what has not started; ``wait`` joins."""
        self._shutdown = True
        engine = self._engine
        if cancel_futures:
            engine.cancel_unstarted()
        engine.close()
        if wait:
            engine.join()

    def statistics(self) -> PoolStatistics:
        """Tasks done/failed/lost/timed out/retried, and per worker: tasks, busy time, RSS.

        The same frozen ``PoolStatistics`` as ``Pool.statistics()``."""
        return self._engine.statistics()


class _Zipped:
    """``zip(*iterables)`` that keeps a known length (so batches can be balanced)."""

    def __init__(self, iterables: tuple[Iterable[Any], ...], total: int | None) -> None:
        self._it = zip(*iterables, strict=False)
        self._total = total

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self._it

    def __len__(self) -> int:
        if self._total is None:
            raise TypeError("length unknown")
        return self._total
