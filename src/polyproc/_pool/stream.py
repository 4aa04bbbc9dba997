"""What an ``imap`` consumer holds: an ``itertools.chain`` the engine feeds, list by list.

The engine thread delivers each batch's results as one list (``_Stream._deliver``);
the consumer's ``IMapIterator`` is a ``chain`` over them, so ``for``/``list()``/
``next()`` take each result in C. Python runs only between pieces (``_Feed``)::

    engine thread ── _deliver(start, values, clean) ──► _Stream.chunks (deque of lists)
                  ── _done() ───────────────────────►   finished
    consumer ── chain.__next__ (C) ── the piece's list_iterator ──► a result
                     │ piece walked
                     └─► _Feed.__next__ ── next piece (a slice of a list: credit/4 at most)
                                        ├─ _Raise: a failed task, raised at its position
                                        ├─ a waiter: blocks until a list or the end comes
                                        └─ consumed(n) ──► engine (credit returns)

Every wait and every raise happens inside the chain's active iterator, never in its
source: a chain whose source raised is over for good, and iteration must go on after a
failed task, a ``next(timeout)`` that timed out or a Ctrl+C.

One exception: a task that raised ``StopIteration``. The stdlib's ``next`` raises it, so
a ``for`` loop ends there, and a later ``next`` goes on with the results after it. A
chain can only say "stop" by ending for good, so the feed ends it and moves the
iterator to a subclass (``_Resumed``) whose Python ``__next__`` walks a fresh chain over
the same feed: from then on every result costs a Python call, and only then. Issue #14 (docs/pool.md):
a per-item Python ``next`` had cost more than all of ``Pool.map``'s caller CPU.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from operator import length_hint
from typing import Any, TypeVar

from ..errors import TimeoutError
from .messages import TaskError
from .tasks import Job

T = TypeVar("T")

__all__ = ["IMapIterator", "IMapUnorderedIterator", "MapIterator"]


class _Stream:
    """Where the engine puts an iterator's results, a delivered list at a time. The job
    holds this, not the iterator, so a consumer that drops its iterator lets it be
    collected (and the job cancelled)."""

    __slots__ = ("cond", "chunks", "finished", "progress")

    def __init__(self, progress: Any) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.chunks: deque[tuple[list[Any], bool]] = deque()
        self.finished = False
        self.progress = progress

    def _deliver(self, start: int, values: list[Any], clean: bool = False) -> None:
        with self.cond:
            # The list itself (the engine never touches it again), and whether it is
            # known to hold no failure (``Deliver.clean``: then the feed does not look).
            self.chunks.append((values, clean))
            self.cond.notify()
        if self.progress is not None:
            self.progress.update(len(values))

    def _done(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()
        if self.progress is not None:
            self.progress.close()


class _Feed:
    """The source an ``IMapIterator`` (an ``itertools.chain``) walks: what it hands out
    next. Called only between pieces, so its Python runs once per piece, not per item.

    Each call returns one of: a piece of the delivered results (an iterator the chain
    walks in C); a raiser for a failed task at its position (``_Raise``); or, when nothing
    is buffered, a waiter (``_Wait``) that blocks until a result or the
    end comes and then reports itself exhausted, so the chain calls here again. Waits and
    raises happen inside the chain's *active* iterator, never here: an exception from a
    chain's source would end the chain for good, and iteration must go on after a failed
    task, a ``next(timeout)`` that timed out or a Ctrl+C.

    Consumption is counted here: the chain asks for a piece only once the one before is
    walked, so everything handed out before this call has been taken.
    """

    __slots__ = (
        "sink",
        "job",
        "post",
        "cancel",
        "deadline",
        "timeout",
        "ends",
        "stop",
        "handed",
        "reported",
        "rest",
        "at",
        "bad",
        "cur",
        "lock",
        "owner",
        "halt",
        "inner",
    )

    def __init__(self) -> None:
        self.sink = _Stream(None)
        self.job: Job | None = None
        self.post: Callable[[Job, int], None] | None = None
        self.cancel: Callable[[Job], None] | None = None
        self.deadline: float | None = None  # Executor.map: one deadline for the iteration
        self.timeout: float | None = None  # next(timeout) under way
        self.ends = False  # Executor.map: a raised exception ends the iteration
        self.stop = False  # ended early (``ends``, a task's StopIteration): no more
        self.handed = 0  # results handed out (a raiser counts as one)
        self.reported = 0  # ... and told to the engine
        self.rest: list[Any] | None = None  # the delivered list being handed out
        self.at = 0  # ... from this index
        self.bad = False  # ... holds a TaskError
        self.cur: Iterator[Any] = iter(())  # the piece last handed out
        self.lock = threading.Lock()
        # A task's StopIteration (``_Raise``): the iterator (``owner``, weakly: it owns
        # us) becomes a ``_Resumed``, its chain is ended once (``halt``), and ``inner`` is
        # the chain its ``__next__`` walks from then on.
        self.owner: weakref.ref[Any] | None = None
        self.halt = False
        self.inner: itertools.chain[Any] | None = None

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> Iterator[Any]:
        with self.lock:  # two threads walking one iterator: both get the same piece
            cur = self.cur
            if length_hint(cur):
                return cur  # not walked yet (another thread's chain call cleared it)
            self.cur = cur = self._next()
            return cur

    def _next(self) -> Iterator[Any]:
        if self.stop:
            self._end()
            raise StopIteration
        if self.halt:
            self.halt = False  # a task's StopIteration: end this chain, not the results
            raise StopIteration
        rest = self.rest
        if rest is None:
            chunks = self.sink.chunks
            if not chunks:
                if self.sink.finished and not chunks:
                    raise StopIteration
                return _Wait(self)
            rest, clean = chunks.popleft()
            self.rest, self.at = rest, 0
            self.bad = not clean and TaskError in map(type, rest)
        job = self.job
        taken = self.handed  # the chain walked every piece before asking for this one
        if job is not None and self.post is not None and taken != self.reported:
            # While the engine holds input back for credit, at every piece; else every
            # quarter of the credit (one post per item had cost ~2x a whole imap, #14).
            if job.stalled or taken - self.reported >= job.limit >> 2:
                self.reported = taken
                self.post(job, taken)
        at, n = self.at, len(rest)
        # Pieces of at most a quarter of the credit: a slow consumer still reports its
        # progress (and so returns credit) a few times per credit's worth of results.
        end = n if job is None else min(n, at + max(1, job.limit >> 2))
        if self.bad:
            for i in range(at, end):
                if type(rest[i]) is TaskError:
                    if i == at:
                        self._advance(at + 1, n)
                        self.handed += 1
                        return _Raise(self, rest[i])
                    end = i
                    break
        self._advance(end, n)
        self.handed += end - at
        return iter(rest if at == 0 and end == n else rest[at:end])

    def _advance(self, at: int, n: int) -> None:
        if at >= n:
            self.rest = None
        else:
            self.at = at

    def wait(self) -> bool:
        """The waiter's call: block until a result or the end is there; True (its sentinel)."""
        if self.stop:
            return True
        sink = self.sink
        try:
            with sink.cond:
                if not sink.chunks and not sink.finished:
                    timeout = self.timeout
                    if self.deadline is not None:
                        left = self.deadline - time.monotonic()
                        timeout = left if timeout is None else min(timeout, left)
                    job = self.job
                    if job is not None and self.post is not None and self.handed != self.reported:
                        # Never wait on results the engine holds back for credit.
                        self.reported = self.handed
                        self.post(job, self.handed)
                    if not sink.cond.wait_for(
                        lambda: sink.chunks or sink.finished,
                        None if timeout is None else max(0.0, timeout),
                    ):
                        raise TimeoutError(f"no result within {timeout} s")
        except BaseException:
            if self.ends:
                self.stop = True  # Executor.map: as its generator, finished once it raised
            raise
        return True

    def _end(self) -> None:
        """Ended before the results did: pull no more input for it."""
        job, cancel = self.job, self.cancel
        if job is not None and cancel is not None and not self.sink.finished:
            cancel(job)


class _Wait:
    """The chain's active iterator while nothing is buffered: its ``next`` blocks until a
    result or the end comes, then says it is exhausted, so the chain asks the feed again.

    A Python class, not ``iter(feed.wait, True)``: threads sharing one iterator can be
    in it at once (the wait releases the GIL), and while one is, another's chain may drop
    the chain's reference to it. A C callable-iterator was then freed under the waiting
    thread, which compared its result with a freed sentinel and returned ``True`` as a
    result (``test_threads_sharing_one_iterator_get_every_result_once``); a Python
    ``__next__``'s frame holds its ``self``.
    """

    __slots__ = ("feed",)

    def __init__(self, feed: _Feed) -> None:
        self.feed = feed

    def __iter__(self) -> _Wait:
        return self

    def __length_hint__(self) -> int:
        return 0

    def __next__(self) -> Any:
        self.feed.wait()
        raise StopIteration


class _Raise:
    """A failed task's exception at its position: raised by the first ``next``, then
    exhausted (the chain goes on to the next piece)."""

    __slots__ = ("feed", "error")

    def __init__(self, feed: _Feed, error: TaskError) -> None:
        self.feed = feed
        self.error: TaskError | None = error

    def __iter__(self) -> _Raise:
        return self

    def __length_hint__(self) -> int:
        return 0 if self.error is None else 1

    def __next__(self) -> Any:
        error, self.error = self.error, None
        if error is None:
            raise StopIteration
        exc = error.exception()
        feed = self.feed
        if isinstance(exc, StopIteration):
            if feed.ends:
                # Executor.map's generator turns it into a RuntimeError (PEP 479), and ends.
                feed.stop = True
                raise RuntimeError("generator raised StopIteration") from exc
            # The stdlib's imap raises it from ``next``: a ``for`` loop ends there, and a
            # later ``next`` goes on after it. Raised here it would only end this piece.
            if feed.inner is not None:
                raise _TaskStop(exc)  # ``_Resumed.__next__`` raises the task's own
            # The C chain: ending it is its only way to say stop (a bare StopIteration,
            # not the task's). The iterator goes on through ``_Resumed`` from now on.
            owner = feed.owner() if feed.owner is not None else None
            if owner is not None:
                owner.__class__ = _RESUMED.get(type(owner), type(owner))
                feed.inner = itertools.chain.from_iterable(feed)
            feed.halt = True
            raise StopIteration
        if feed.ends:
            feed.stop = True
        raise exc


_chain_next = itertools.chain.__next__
_ListIterator: type[Iterator[Any]] = type(iter([]))


class IMapIterator(itertools.chain[T]):
    """``imap``: results in input order as they come (the scheduler reorders). Lazy input.

    A task that failed raises at its position; iteration can go on after it, as in
    the stdlib. ``next(timeout)`` raises ``TimeoutError`` when nothing came in time.
    Dropping the iterator cancels the job: no more input is pulled for it.

    An ``itertools.chain`` over the results, delivered list by delivered list
    (``_Feed``): a ``for`` loop, ``list()`` or ``next()`` takes each result in C (the
    chain's ``__next__`` is not overridden), and Python runs only between pieces. A
    per-item Python ``next`` had cost ~0.15 us per result, more than the whole of
    ``Pool.map``'s caller for tiny tasks (issue #14).
    """

    __module__ = "polyproc.pool"  # its public home: repr, pickle
    __slots__ = ("_feed", "__weakref__")
    _feed: _Feed
    _ends = False

    def __new__(cls, *args: Any, **kwargs: Any) -> IMapIterator[T]:
        feed = _Feed()
        self: IMapIterator[T] = super().from_iterable(feed)  # type: ignore[assignment]
        self._feed = feed  # (``from_iterable`` makes a ``cls``: it is a chain subclass)
        if not cls._ends:
            feed.owner = weakref.ref(self)  # a task's StopIteration moves it to _Resumed
        return self

    def __init__(
        self,
        post_consumed: Callable[[Job, int], None] | None = None,
        progress: Any = None,
        deadline: float | None = None,
        cancel: Callable[[Job], None] | None = None,
    ) -> None:
        feed = self._feed
        feed.sink.progress = progress
        feed.post = post_consumed
        feed.cancel = cancel
        feed.deadline = deadline
        feed.ends = self._ends

    @property
    def sink(self) -> _Stream:
        """What the engine delivers to (the job's sink)."""
        return self._feed.sink

    @property
    def job(self) -> Job | None:
        """The scheduler's job (set once it is made): what consumption is reported for."""
        return self._feed.job

    @job.setter
    def job(self, job: Job) -> None:
        self._feed.job = job

    def next(self, timeout: float | None = None) -> T:
        """The next result (a failed task raises here); TimeoutError if none comes in time."""
        if timeout is None:
            return _chain_next(self)
        feed = self._feed
        feed.timeout = timeout
        try:
            return _chain_next(self)
        finally:
            feed.timeout = None

    def __del__(self) -> None:
        # A consumer that walks away: stop pulling the input for it.
        try:
            self._feed._end()
        except Exception:  # noqa: BLE001
            pass


class IMapUnorderedIterator(IMapIterator[T]):
    """``imap_unordered``: results in completion order."""

    __module__ = "polyproc.pool"  # its public home: repr, pickle
    __slots__ = ()


class MapIterator(IMapIterator[T]):
    """``Executor.map``'s iterator: as the stdlib's generator, the first exception it
    raises (a task's, the deadline's) ends it; ``close()``, ``send()`` and ``throw()``
    act as that generator's do. Not a generator itself (``inspect.isgenerator`` is False,
    no ``gi_frame``): a generator's frame resumed per result costs more than the C chain
    it would wrap (docs/migrating.md)."""

    __slots__ = ()
    _ends = True

    def send(self, value: Any, /) -> T:
        """The next result: the stdlib's generator ignores what is sent into it."""
        return _chain_next(self)

    def throw(self, exc: Any, value: Any = None, tb: Any = None, /) -> T:
        """Raise ``exc`` here and end, as the generator does (its ``finally`` cancels the
        rest); the deprecated ``throw(type, value, tb)`` form is taken too."""
        if isinstance(exc, type):
            exc = exc() if value is None else value if isinstance(value, exc) else exc(value)
        self.close()
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise exc

    def close(self) -> None:
        """Stop: no more results, no more input pulled (a generator's ``close``)."""
        feed = self._feed
        with feed.lock:
            feed.stop = True
            feed.rest = None
            cur = feed.cur
            if type(cur) is _ListIterator:
                deque(cur, maxlen=0)  # walked to its end: the chain asks the feed
            elif type(cur) is _Raise:
                cur.error = None
        feed._end()


class _TaskStop(Exception):
    """A task's StopIteration on its way out of ``_Resumed``'s inner chain (a chain would
    take a StopIteration from its active iterator for the end of that piece)."""

    def __init__(self, stop: BaseException) -> None:
        super().__init__()
        self.stop = stop


class _Resumed(IMapIterator[T]):
    """An ``imap`` iterator after a task raised StopIteration: its chain ended there (the
    ``for`` loop with it, as the stdlib's), and ``next`` goes on with the later results
    through a fresh chain over the same feed, raising the next such task's own
    StopIteration (its value, its remote traceback) at its position."""

    __slots__ = ()

    def __next__(self) -> T:
        inner = self._feed.inner
        assert inner is not None
        try:
            return _chain_next(inner)  # type: ignore[no-any-return]
        except _TaskStop as stop:
            exc = stop.stop
        raise exc  # outside the except: no _TaskStop as its context

    def next(self, timeout: float | None = None) -> T:
        """The next result (a failed task raises here); TimeoutError if none comes in time."""
        if timeout is None:
            return self.__next__()
        feed = self._feed
        feed.timeout = timeout
        try:
            return self.__next__()
        finally:
            feed.timeout = None


class _ResumedUnordered(_Resumed[T], IMapUnorderedIterator[T]):
    """``_Resumed`` for ``imap_unordered``: still an ``IMapUnorderedIterator``."""

    __slots__ = ()


# What a program can see of the type (repr, ``type(it).__name__``) stays the stdlib's name.
for _cls, _base in ((_Resumed, IMapIterator), (_ResumedUnordered, IMapUnorderedIterator)):
    _cls.__name__ = _cls.__qualname__ = _base.__name__
    _cls.__module__ = _base.__module__

_RESUMED: dict[type[Any], type[Any]] = {
    IMapIterator: _Resumed,
    IMapUnorderedIterator: _ResumedUnordered,
}
