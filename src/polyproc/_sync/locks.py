"""Lock, RLock, Semaphore, BoundedSemaphore: a ``sem_t`` (plus an owner word) in shared memory.

Layout of each primitive's heap block (``_shm.heap``; 64 bytes, one cache line)::

    offset 0   sem_t   (32 bytes, pshared)   the semaphore itself
    offset 32  int64   owner                 RLock: native thread id of the holder, 0 if free
    offset 40  int64   count                 RLock: recursion depth

Native thread ids (``gettid``) are unique across the whole machine, so one word
names the owning thread of any process.

Sharing: under fork the block is inherited; anywhere else (spawn, forkserver,
a Pipe, a Queue, Pool initializer arguments) the object pickles as its block,
i.e. the memfd travels by SCM_RIGHTS and the receiver maps the same bytes.

A process killed while holding a Lock or RLock does not release it: the
semaphore stays taken (``acquire(timeout=...)`` returns False, a blocking
``acquire()`` waits, interruptibly). For an RLock, ``owner_alive()`` tells
whether the holder still exists, so a program can detect the situation.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from .._shm.heap import Block, allocate
from . import _sem

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "SemBase"]

_get_tid = threading.get_native_id
_try = _sem.try_acquire
_post = _sem.release
_DIRECT = _sem.DIRECT_VALUE


class _Words(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint32), ("sem_rest", ctypes.c_char * (_sem.SEM_SIZE - 4)),
                ("owner", ctypes.c_int64),
                ("count", ctypes.c_int64), ("extra", ctypes.c_int64 * 2)]


class SemBase:
    """A ``sem_t`` in a shared block. Subclasses say how acquire/release behave."""

    _kind = "Semaphore"

    def __init__(self, value: int = 1, *, ctx: Any = None, maxvalue: int | None = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._setup(allocate(ctypes.sizeof(_Words)), maxvalue, ctx)
        _sem.init(self._addr, value)

    def _setup(self, block: Block, maxvalue: int | None, ctx: Any) -> None:
        self._block = block
        self._words = _Words.from_buffer(block.arena.mm, block.offset)
        self._addr = ctypes.addressof(self._words)
        self._maxvalue = maxvalue
        self._ctx = ctx

    # -- sharing ----------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._block, self._maxvalue))

    def __getstate__(self) -> None:  # pragma: no cover - __reduce__ wins
        return None

    # -- the stdlib API ---------------------------------------------------------
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if _try(self._addr) == 0:
            return True
        return _sem.acquire(self._addr, block, timeout)

    def release(self) -> None:
        _post(self._addr)

    def __enter__(self) -> bool:
        if _try(self._addr) == 0:
            return True
        return _sem.acquire(self._addr, True, None)

    def __exit__(self, *exc: object) -> None:
        self.release()

    if _sem.DIRECT_VALUE:
        def get_value(self) -> int:
            return int(self._words.value)
    else:  # pragma: no cover - another libc layout
        def get_value(self) -> int:
            return _sem.value(self._addr)

    def _is_mine(self) -> bool:
        """Condition's "is the lock held by me" check; a plain semaphore can only say "held"."""
        return self.get_value() == 0

    def _release_all(self) -> int:
        self.release()
        return 1

    def _acquire_restore(self, count: int) -> None:
        self.acquire()

    def __repr__(self) -> str:
        return f"<{self._kind}(value={self.get_value()})>"


def _rebuild(cls: type[SemBase], block: Block, maxvalue: int | None) -> SemBase:
    obj = cls.__new__(cls)
    obj._setup(block, maxvalue, None)
    return obj


class Semaphore(SemBase):
    """``multiprocessing.Semaphore``: a counter shared by processes."""

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        super().__init__(value, ctx=ctx)


class BoundedSemaphore(Semaphore):
    """A Semaphore whose ``release`` refuses to go above its initial value."""

    _kind = "BoundedSemaphore"

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        SemBase.__init__(self, value, ctx=ctx, maxvalue=value)

    def release(self) -> None:
        assert self._maxvalue is not None
        if self.get_value() >= self._maxvalue:
            raise ValueError("semaphore or lock released too many times")
        _post(self._addr)

    def __repr__(self) -> str:
        return f"<BoundedSemaphore(value={self.get_value()}, maxvalue={self._maxvalue})>"


class Lock(SemBase):
    """``multiprocessing.Lock``: a binary semaphore; any process may release it, as in the stdlib."""

    _kind = "Lock"

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(1, ctx=ctx, maxvalue=1)

    def release(self) -> None:
        # A plain load of the count (see _sem.DIRECT_VALUE): the check is nearly free.
        if self._words.value if _DIRECT else _sem.value(self._addr):
            raise ValueError("semaphore or lock released too many times")
        _post(self._addr)

    def __repr__(self) -> str:
        return f"<Lock({'locked' if self.get_value() == 0 else 'unlocked'})>"


class RLock(SemBase):
    """``multiprocessing.RLock``: re-entrant; only the owning thread (of any process) releases."""

    _kind = "RLock"

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(1, ctx=ctx, maxvalue=1)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        w = self._words
        me = _get_tid()
        if w.owner == me:
            w.count += 1
            return True
        if _try(self._addr) != 0 and not _sem.acquire(self._addr, block, timeout):
            return False
        w.owner = me
        w.count = 1
        return True

    def __enter__(self) -> bool:
        return self.acquire()

    def release(self) -> None:
        w = self._words
        if w.owner != _get_tid():
            raise AssertionError("attempt to release recursive lock not owned by thread")
        if w.count > 1:
            w.count -= 1
            return
        w.count = 0
        w.owner = 0
        _post(self._addr)

    def _is_mine(self) -> bool:
        return bool(self._words.owner == _get_tid())

    def _release_all(self) -> int:
        w = self._words
        count = int(w.count)
        w.count = 0
        w.owner = 0
        _post(self._addr)
        return count

    def _acquire_restore(self, count: int) -> None:
        if _try(self._addr) != 0:
            _sem.acquire(self._addr, True, None)
        self._words.owner = _get_tid()
        self._words.count = count

    def owner_alive(self) -> bool | None:
        """None if free; else whether the holding thread's process still exists."""
        tid = int(self._words.owner)
        if not tid:
            return None
        return os.path.exists(f"/proc/{tid}")

    def __repr__(self) -> str:
        w = self._words
        owner = "None" if not w.owner else str(w.owner)
        return f"<RLock(owner={owner}, count={w.count})>"


