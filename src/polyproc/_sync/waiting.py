"""Condition, Event and Barrier across processes, built on the semaphores of ``locks``.

Condition (the classic semaphore construction, since a ``sem_t`` cannot "wait
and release a mutex" atomically)::

    waiter                                  notifier (holds the lock)
    ──────                                  ────────
    sleeping += 1                           absorb: for each woken left by a
    release the lock (all recursion)          timed-out waiter, sleeping -= 1
    wait_sem.acquire(timeout) ◄──────────── for up to n sleepers: sleeping -= 1,
    woken += 1  ──────────────────────────►   wait_sem += 1
    re-acquire the lock (same depth)        wait until each one said woken;
                                            drain stray wait_sem posts (a waiter
                                            that timed out at the same moment)

Event: a Condition over a Lock plus a flag semaphore (value 1: set).
Barrier: ``threading.Barrier``'s state machine (filling, draining, resetting,
broken) with its two words in shared memory, guarded by a Condition; the
action runs in the last process to arrive; ``BrokenBarrierError`` is polyproc's
(a subclass of ``threading.BrokenBarrierError``).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._shm.heap import Block, allocate
from ..errors import BrokenBarrierError
from .locks import Lock, RLock, Semaphore, SemBase

__all__ = ["Condition", "Event", "Barrier"]

T = TypeVar("T")


class Condition:
    """``multiprocessing.Condition``: wait/notify across processes."""

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    def __init__(self, lock: Any = None, *, ctx: Any = None) -> None:
        self._lock: SemBase = lock if lock is not None else RLock(ctx=ctx)
        self._sleeping_count = Semaphore(0)
        self._woken_count = Semaphore(0)
        self._wait_semaphore = Semaphore(0)
        self._bind()

    def _bind(self) -> None:
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_condition,
            (self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore),
        )

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __repr__(self) -> str:
        return f"<Condition({self._lock!r}, sleepers={self._sleeping_count.get_value()})>"

    def _check_owned(self, what: str) -> None:
        if not self._lock._is_mine():
            raise AssertionError(f"must acquire() condition before using {what}()")

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, sleep until notified or ``timeout``, re-acquire.

        Returns False on timeout. The lock must be held (at any recursion depth).
        """
        self._check_owned("wait")
        self._sleeping_count.release()
        depth = self._lock._release_all()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            self._lock._acquire_restore(depth)

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters in any process; returns once they have woken."""
        self._check_owned("notify")
        # Waiters that timed out since the last notify left a "woken" each while
        # still counted as sleeping: pair them off first.
        while self._woken_count.acquire(False):
            self._sleeping_count.acquire(False)
        sent = 0
        while sent < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            sent += 1
        if sent:
            for _ in range(sent):
                self._woken_count.acquire()
            while self._wait_semaphore.acquire(False):  # a post nobody took (a waiter timed out)
                pass

    def notify_all(self) -> None:
        """Wake every waiter."""
        self.notify(2**31 - 1)

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true or ``timeout`` passes; return its last value."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result


def _rebuild_condition(
    lock: SemBase, sleeping: Semaphore, woken: Semaphore, wait_sem: Semaphore
) -> Condition:
    c = Condition.__new__(Condition)
    c._lock, c._sleeping_count, c._woken_count, c._wait_semaphore = lock, sleeping, woken, wait_sem
    c._bind()
    return c


class Event:
    """``multiprocessing.Event``."""

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    def __init__(self, *, ctx: Any = None) -> None:
        self._cond = Condition(Lock(ctx=ctx))
        self._flag = Semaphore(0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_event, (self._cond, self._flag))

    def is_set(self) -> bool:
        """Whether the flag is set (read without taking the lock)."""
        return self._flag.get_value() > 0

    def set(self) -> None:
        """Set the flag and wake every waiter in every process."""
        with self._cond:
            self._flag.acquire(False)
            self._flag.release()
            self._cond.notify_all()

    def clear(self) -> None:
        """Reset the flag; later ``wait`` calls block again."""
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` passes; return the flag."""
        if self._flag.get_value():
            return True
        with self._cond:
            if self._flag.get_value():
                return True
            self._cond.wait_for(self.is_set, timeout)
            return self.is_set()

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


def _rebuild_event(cond: Condition, flag: Semaphore) -> Event:
    e = Event.__new__(Event)
    e._cond, e._flag = cond, flag
    return e


_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2


class _BarrierWords(ctypes.Structure):
    _fields_ = [("state", ctypes.c_int64), ("count", ctypes.c_int64)]


class Barrier:
    """``multiprocessing.Barrier``: ``parties`` processes meet; ``action`` runs in the last one."""

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    def __init__(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        ctx: Any = None,
    ) -> None:
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self._setup(
            parties,
            action,
            timeout,
            Condition(Lock(ctx=ctx)),
            allocate(ctypes.sizeof(_BarrierWords)),
        )

    def _setup(
        self,
        parties: int,
        action: Callable[[], object] | None,
        timeout: float | None,
        cond: Condition,
        block: Block,
    ) -> None:
        self._parties, self._action, self._timeout = parties, action, timeout
        self._cond, self._block = cond, block
        self._w = _BarrierWords.from_buffer(block.arena.mm, block.offset)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_barrier,
            (self._parties, self._action, self._timeout, self._cond, self._block),
        )

    def wait(self, timeout: float | None = None) -> int:
        """Wait for all ``parties``; return this caller's arrival index (0..parties-1).

        ``BrokenBarrierError`` if the barrier breaks, is reset, or ``timeout`` passes.
        """
        if timeout is None:
            timeout = self._timeout
        w = self._w
        with self._cond:
            self._enter()
            index = int(w.count)
            w.count += 1
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    self._wait(timeout)
                return index
            finally:
                w.count -= 1
                self._exit()

    def _enter(self) -> None:
        w = self._w
        while w.state in (_DRAINING, _RESETTING):
            self._cond.wait()
        if w.state < 0:
            raise BrokenBarrierError
        assert w.state == _FILLING

    def _release(self) -> None:
        try:
            if self._action is not None:
                self._action()
            self._w.state = _DRAINING
            self._cond.notify_all()
        except BaseException:
            self._break()
            raise

    def _wait(self, timeout: float | None) -> None:
        w = self._w
        if not self._cond.wait_for(lambda: w.state != _FILLING, timeout):
            self._break()
            raise BrokenBarrierError
        if w.state < 0:
            raise BrokenBarrierError
        assert w.state == _DRAINING

    def _exit(self) -> None:
        w = self._w
        if w.count == 0 and w.state in (_RESETTING, _DRAINING):
            w.state = _FILLING
            self._cond.notify_all()

    def _break(self) -> None:
        self._w.state = _BROKEN
        self._cond.notify_all()

    def reset(self) -> None:
        """Return to the empty state; current waiters get ``BrokenBarrierError``."""
        w = self._w
        with self._cond:
            if w.count > 0:
                if w.state in (_FILLING, _BROKEN):
                    w.state = _RESETTING
            else:
                w.state = _FILLING
            self._cond.notify_all()

    def abort(self) -> None:
        """Break the barrier: current and future ``wait`` calls raise ``BrokenBarrierError``."""
        with self._cond:
            self._break()

    @property
    def parties(self) -> int:
        """How many processes must call ``wait`` for the barrier to open."""
        return self._parties

    @property
    def n_waiting(self) -> int:
        """How many are waiting now (0 while the barrier drains or is broken)."""
        return int(self._w.count) if self._w.state == _FILLING else 0

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken (``abort``, a timeout or a failed action)."""
        return bool(self._w.state == _BROKEN)

    def __repr__(self) -> str:
        return f"<Barrier(parties={self._parties}, waiting={self.n_waiting}, broken={self.broken})>"


def _rebuild_barrier(
    parties: int,
    action: Callable[[], object] | None,
    timeout: float | None,
    cond: Condition,
    block: Block,
) -> Barrier:
    b = Barrier.__new__(Barrier)
    b._setup(parties, action, timeout, cond, block)
    return b
