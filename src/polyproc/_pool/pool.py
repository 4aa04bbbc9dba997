"""``Pool`` and ``ThreadPool``: the ``multiprocessing.pool`` API as a face over one ``Engine``.

::

    Pool.apply_async / map_async / imap ... ──► Submitter builds a Job ──► Engine.submit
                                                                          (engine thread:
    ApplyResult / MapResult / IMapIterator ◄── Future / _deliver / _done ◄─ scheduler actions)

Everything the stdlib Pool takes works the same; keyword-only extras are polyproc's:
``timeout=`` (per task: the late task's worker is killed and replaced),
``retries=`` (re-run a task whose worker died), ``progress=`` (tqdm bar: ``True``
or a dict of tqdm options), and on the constructor ``max_memory_per_child=``
(bytes) plus defaults for those three, and ``backend=`` (run the same calls on a Dask
or Ray cluster: ``polyproc.backends``, docs/scale-out.md). ``chunksize=None`` (the default everywhere,
``imap`` included) means adaptive batching; an explicit chunksize is honoured.
As in the stdlib, ``with Pool() as p:`` terminates the pool on exit. Workers start
in the engine thread, so the constructor never waits for them; if the first ones
cannot even be started (an initializer or initargs that do not pickle under spawn,
a failing fork) the pool breaks at once, kills the ones that did start, and every
call raises ``BrokenProcessPool`` whose ``__cause__`` chain holds the start error
(the stdlib raises that error from the constructor).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, Self, TypeVar

from ..errors import PoolClosedError
from .choice import make_engine
from .engine import Engine
from .fastpath import PoolFuture
from .results import (
    ApplyResult,
    AsyncResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    Submitter,
    make_progress,
)
from .stats import PoolStatistics
from .tasks import POOL_FACE_TRANSITIONS, Job, PoolState

T = TypeVar("T")
S = TypeVar("S")

__all__ = [
    "Pool",
    "ThreadPool",
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "IMapUnorderedIterator",
    "PoolState",
    "POOL_FACE_TRANSITIONS",
    "RUN",
    "CLOSE",
    "TERMINATE",
]


RUN = PoolState.RUN
CLOSE = PoolState.CLOSE
TERMINATE = PoolState.TERMINATE


class Pool:
    """A pool of worker processes (``multiprocessing.Pool``) that never hangs on a dead worker."""

    __module__ = "polyproc.pool"  # its public home: repr, pickle

    _threads = False

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        max_memory_per_child: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        progress: Any = None,
        window: int = 3,
        target_batch_s: float | None = None,
        backend: Any = None,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if context is None and not self._threads:
            from .._context import default_context

            context = default_context()
        elif context is not None:
            from .._context import as_settings

            context = as_settings(context)
        self._timeout = timeout
        self._retries = retries
        self._progress = progress
        self._state = PoolState.RUN
        # ``backend=`` (or use_backend / POLYPROC_BACKEND): a cluster engine instead.
        self._engine: Engine = make_engine(
            backend,
            processes,
            ctx=context,
            threads=self._threads,
            initializer=initializer,
            initargs=tuple(initargs),
            maxtasksperchild=maxtasksperchild,
            max_memory_per_child=max_memory_per_child,
            window=window,
            target_batch_s=target_batch_s,
        )
        self._processes = self._engine.processes
        self._sub = Submitter(self._engine)
        # A pool dropped without close/terminate must not leave workers behind.
        self._finalizer = weakref.finalize(self, self._engine.terminate)

    # -- state -------------------------------------------------------------------------
    def _move(self, new: PoolState) -> None:
        if new is self._state:
            return
        if new not in POOL_FACE_TRANSITIONS[self._state]:
            raise ValueError(f"pool cannot go from {self._state.name} to {new.name}")
        self._state = new

    def _check_running(self) -> None:
        if self._state is not PoolState.RUN:
            raise PoolClosedError("Pool not running")
        if self._engine.broken is not None:  # inline, not check_open(): one call fewer per task
            raise self._engine.closed_error()

    def __repr__(self) -> str:
        # getattr: a pool whose __init__ failed early is still repr'd (by its ResourceWarning)
        size = getattr(self, "_processes", None)
        state = getattr(self, "_state", None)
        return f"<{type(self).__name__} state={getattr(state, 'name', state)} pool_size={size}>"

    def __del__(self, _warn: Any = warnings.warn, _run: PoolState = PoolState.RUN) -> None:
        # As the stdlib: a pool dropped while running is a leak in the program (the
        # finalizer still kills its workers).
        if getattr(self, "_state", None) is _run:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    @property
    def _pool(self) -> list[Any]:
        """The live workers' ``Process`` (or ``Thread``) objects: the stdlib's attribute."""
        self._engine.started.wait()  # the first workers' start() calls are done
        return self._engine.workers.live()

    def _repopulate_pool(self) -> None:
        """The stdlib's private refill, which some programs (and CPython's tests) call after
        workers exit: the engine replaces a worker as soon as it ends (a crash,
        ``maxtasksperchild``), so there is nothing left to refill."""

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # -- single tasks --------------------------------------------------------------------
    def apply(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> T:
        """Run ``func(*args, **kwds)`` in a worker and wait for its result."""
        # ``apply_async(...).get()`` without the ApplyResult.
        fut, job = self._single(func, args, kwds, timeout, retries)
        self._engine.submit(job)
        return fut.result()  # type: ignore[no-any-return]

    def _single(
        self,
        func: Callable[..., Any],
        args: Iterable[Any],
        kwds: Mapping[str, Any] | None,
        timeout: float | None,
        retries: int | None,
    ) -> tuple[PoolFuture, Job]:
        """``apply``'s and ``apply_async``'s one-task job and the future it answers."""
        self._check_running()
        fut = PoolFuture(self._engine)
        job = self._sub.single(
            func,
            tuple(args),
            dict(kwds or {}),
            fut,
            timeout=self._timeout if timeout is None else timeout,
            retries=self._retries if retries is None else retries,
        )
        return fut, job

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> ApplyResult[T]:
        """Start ``func(*args, **kwds)``; the result's ``get()`` waits for it."""
        fut, job = self._single(func, args, kwds, timeout, retries)
        result = ApplyResult(fut, callback, error_callback)
        self._engine.submit(job)
        return result

    # -- maps ----------------------------------------------------------------------------
    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        star: bool,
        chunksize: int | None,
        callback: Any,
        error_callback: Any,
        timeout: float | None,
        retries: int | None,
        progress: Any,
    ) -> MapResult[Any]:
        self._check_running()
        total = len(iterable) if isinstance(iterable, Sized) else None
        bar = make_progress(
            self._progress if progress is None else progress,
            total,
            getattr(func, "__name__", "map"),
        )
        result: MapResult[Any] = MapResult(callback, error_callback, bar)
        job = self._sub.many(
            func,
            iterable,
            result,
            star=star,
            ordered=False,
            credit=False,
            chunksize=chunksize,
            timeout=self._timeout if timeout is None else timeout,
            retries=self._retries if retries is None else retries,
        )
        self._engine.submit(job)
        return result

    def map(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> list[T]:
        """``list(map(func, iterable))`` in the workers, in order."""
        out: list[T] = self._map_async(
            func, iterable, False, chunksize, None, None, timeout, retries, progress
        ).get()
        return out

    def map_async(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> MapResult[T]:
        """Start ``map``; the result's ``get()`` is the whole list, or the first error."""
        return self._map_async(
            func, iterable, False, chunksize, callback, error_callback, timeout, retries, progress
        )

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> list[T]:
        """Like ``map`` but each item is unpacked: ``func(*item)``."""
        out: list[T] = self._map_async(
            func, iterable, True, chunksize, None, None, timeout, retries, progress
        ).get()
        return out

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> MapResult[T]:
        """Start ``starmap``; the result's ``get()`` is the whole list, or the first error."""
        return self._map_async(
            func, iterable, True, chunksize, callback, error_callback, timeout, retries, progress
        )

    def _imap(
        self,
        cls: type[IMapIterator[Any]],
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        retries: int | None,
        progress: Any,
        star: bool = False,
        deadline: float | None = None,
    ) -> IMapIterator[Any]:
        self._check_running()
        total = len(iterable) if isinstance(iterable, Sized) else None
        bar = make_progress(
            self._progress if progress is None else progress,
            total,
            getattr(func, "__name__", "imap"),
        )
        engine = self._engine
        it = cls(engine.consumed, bar, deadline, engine.cancel)
        job = self._sub.many(
            func,
            iterable,
            it.sink,
            star=star,
            ordered=cls is IMapIterator,
            credit=True,
            chunksize=chunksize,
            timeout=self._timeout if timeout is None else timeout,
            retries=self._retries if retries is None else retries,
        )
        it.job = job
        engine.submit(job)
        return it

    def imap(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> IMapIterator[T]:
        """Results in order, lazily: input is pulled only as workers free up."""
        return self._imap(IMapIterator, func, iterable, chunksize, timeout, retries, progress)

    def imap_unordered(
        self,
        func: Callable[[S], T],
        iterable: Iterable[S],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        progress: Any = None,
    ) -> IMapIterator[T]:
        """Results as they complete, lazily."""
        return self._imap(
            IMapUnorderedIterator, func, iterable, chunksize, timeout, retries, progress
        )

    # -- life cycle ----------------------------------------------------------------------
    def close(self) -> None:
        """No more work; workers exit once what was submitted is done."""
        if self._state is PoolState.RUN:
            self._move(PoolState.CLOSE)
            self._engine.close()

    def terminate(self) -> None:
        """Kill the workers now; outstanding work fails."""
        self._move(PoolState.TERMINATE)
        self._engine.terminate()
        self._engine.join()

    def join(self) -> None:
        """Wait for the workers to exit (after ``close`` or ``terminate``)."""
        if self._state is PoolState.RUN:
            raise ValueError("Pool is still running")
        self._engine.join()

    def __enter__(self) -> Self:
        # Only a closed pool refuses, as the stdlib's: one already broken (its first
        # workers, forked at creation, failed their initializer before we got here)
        # says so at the first submit, inside the block.
        if self._state is not PoolState.RUN:
            raise PoolClosedError("Pool not running")
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def statistics(self) -> PoolStatistics:
        """Tasks done/failed/lost/timed out/retried, and per worker: tasks, busy time, RSS.

        A frozen ``PoolStatistics`` (``stats.timed_out``; ``stats["timed_out"]`` too)."""
        return self._engine.statistics(self._state)


class ThreadPool(Pool):
    """The same API and engine, with threads for workers (nothing is pickled).

    A timed-out task cannot be killed in a thread: it fails with ``TimeoutError`` and
    its thread is abandoned (replaced; its late result is dropped).
    """

    __module__ = "polyproc.pool"  # its public home: repr, pickle

    _threads = True

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        **options: Any,
    ) -> None:
        options.pop("context", None)
        super().__init__(processes, initializer, initargs, **options)
