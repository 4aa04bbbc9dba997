"""``ProcessPoolExecutor``: the ``concurrent.futures`` API as a face over the same ``Engine``.

::

    submit(fn, /, *args, **kwargs) ──► Job(claim=Future.set_running_or_notify_cancel)
                                        ──► Engine ──► Future.set_result / set_exception
    map(fn, *iterables) ──► an ordered, credit-bounded job (lazy input) ──► generator

Results are plain ``concurrent.futures.Future`` objects, so the stdlib's
``as_completed``/``wait`` and asyncio's ``run_in_executor`` work. Unlike the
stdlib, a dead worker fails only its own task (``WorkerLostError``, a
``BrokenProcessPool``) and the executor stays usable; it breaks for good only if
the initializer raises. ``map(timeout=)`` keeps the stdlib meaning (a deadline for
the whole iteration); ``task_timeout=`` on the constructor or on ``map`` is the
per-task limit that kills a late task's worker.
``backend=`` runs it on a Dask or Ray cluster (``polyproc.backends``).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from ..errors import BrokenProcessPool
from .engine import Engine
from .lead import PoolFuture
from .results import IMapIterator, Submitter, make_progress
from .scheduler import Job

__all__ = ["ProcessPoolExecutor"]

P = ParamSpec("P")
T = TypeVar("T")


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
        if max_tasks_per_child is not None and (
                not isinstance(max_tasks_per_child, int) or max_tasks_per_child <= 0):
            raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context is None:
            from .._context import default_context

            mp_context = default_context()
        self._task_timeout = task_timeout
        self._retries = retries
        self._progress = progress
        self._shutdown = False
        # ``backend=`` (or use_backend / POLYPROC_BACKEND): a cluster engine instead.
        from ..backends import make_engine

        self._engine: Engine = make_engine(
            backend, max_workers, ctx=mp_context, threads=False, initializer=initializer,
            initargs=tuple(initargs), maxtasksperchild=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child)
        self._max_workers = self._engine.sched.processes
        self._sub = Submitter(self._engine)
        self._finalizer = weakref.finalize(self, self._engine.terminate)

    def _check(self) -> None:
        if self._engine.broken is not None:
            raise BrokenProcessPool(
                "A child process terminated abruptly, the process pool is not usable anymore"
                f": {self._engine.broken}")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; a Future for its result."""
        self._check()
        fut = PoolFuture()
        fut._engine = self._engine
        job = self._sub.single(fn, args, kwargs, fut, timeout=self._task_timeout,
                               retries=self._retries, claim=True)
        self._engine.add_job(job)
        return fut

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, task_timeout: float | None = None,
            progress: Any = None) -> Iterator[T]:
        """Lazy, ordered ``map``; ``timeout`` bounds the whole iteration, as in the stdlib."""
        self._check()
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        total = None
        if all(hasattr(i, "__len__") for i in iterables):
            total = min((len(i) for i in iterables), default=0)  # type: ignore[arg-type]
        bar = make_progress(self._progress if progress is None else progress, total,
                            getattr(fn, "__name__", "map"))
        engine = self._engine
        sched = engine.sched
        it: IMapIterator[Any] = IMapIterator(
            lambda job, n: engine.post(_star, (sched.consumed, job, n)), bar, deadline)
        job = self._sub.many(fn, _Zipped(iterables, total), it.sink, star=True, ordered=True,
                             credit=True, chunksize=chunksize,
                             timeout=self._task_timeout if task_timeout is None else task_timeout,
                             retries=self._retries)
        it.job = job
        engine.add_job(job)
        return _results(it, engine, job)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; ``cancel_futures`` cancels what has not started; ``wait`` joins."""
        self._shutdown = True
        engine = self._engine
        if cancel_futures:
            engine.post(_cancel_pending, engine)
        engine.close()
        if wait:
            engine.join()

    def statistics(self) -> dict[str, Any]:
        """Tasks done/failed/lost/timed out/retried, and per worker: tasks, busy time, RSS."""
        sched = self._engine.sched
        stats: dict[str, Any] = dict(sched.stats)
        stats["workers"] = [
            {"id": s.wid, "state": s.state.value, "tasks": s.done, "busy_s": s.busy,
             "rss": s.rss, "peak_rss": s.peak_rss, "exitcode": s.exitcode}
            for s in list(sched.workers.values()) + list(sched.finished_workers)]
        return stats


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


def _results(it: IMapIterator[Any], engine: Engine, job: Job) -> Iterator[Any]:
    try:
        yield from it
    finally:
        if not it.sink.finished:
            engine.post(_star, (engine.sched.cancel, job))


def _star(call: tuple[Any, ...]) -> None:
    call[0](*call[1:])


def _cancel_pending(engine: Engine) -> None:
    """Engine thread: cancel every submitted future that has not been sent to a worker."""
    for job in list(engine.sched.queue):
        if job.single and job.claim is not None:
            job.sink.cancel()
