"""Lock, RLock, Semaphore, BoundedSemaphore: a ``sem_t`` (plus an owner word) in shared memory.

Layout of each primitive's heap block (``_shm.heap``; 128 bytes, two cache lines)::

    offset 0   sem_t   (32 bytes, pshared)   the semaphore itself
    offset 64  int64   owner                 RLock: native thread id of the holder, 0 if free
    offset 72  int64   count                 RLock: recursion depth

The owner words sit on their own cache line: the holder updates ``count`` on
every nested acquire (a Value's ``.value`` takes its RLock again inside ``with
v.get_lock():``), and a waiter polling the semaphore from another core must not
pull that line away from it each time.

Native thread ids (``gettid``) are unique across the whole machine, so one word
names the owning thread of any process.

Sharing: under fork the block is inherited; anywhere else (spawn, forkserver,
a Pipe, a Queue, Pool initializer arguments) the object pickles as its block,
i.e. the memfd travels by SCM_RIGHTS and the receiver maps the same bytes.

The behaviour (acquire, release, ``with``) is ``_sem.SemLock``'s, which these
classes subclass: the C extension ``polyproc._csem`` when built, else its ctypes
twin. They only choose its mode (``_attach``: unbounded, bounded by
``maxvalue``, or re-entrant with the owner words) and add sharing and reprs.
No class here overrides acquire/release/__enter__/__exit__, so ``with lock:``
stays one C call each way.

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


class _Words(ctypes.Structure):
    _fields_ = [
        ("value", ctypes.c_uint32),
        ("sem_rest", ctypes.c_char * (_sem.SEM_SIZE - 4)),
        ("pad", ctypes.c_char * (64 - _sem.SEM_SIZE)),
        ("owner", ctypes.c_int64),
        ("count", ctypes.c_int64),
        ("pad2", ctypes.c_char * 48),
    ]


_OWNER = _Words.owner.offset


class SemBase(_sem.SemLock):
    """A ``sem_t`` in a shared block. Subclasses choose the mode (``_recursive``, maxvalue)."""

    _kind = "Semaphore"
    _recursive = False

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
        # RLock: owner words after the sem_t; else release() checks maxvalue (-1: none).
        self._attach(
            self._addr,
            self._addr + _OWNER if self._recursive else 0,
            -1 if maxvalue is None or self._recursive else maxvalue,
        )

    # -- sharing ----------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._block, self._maxvalue))

    def __getstate__(self) -> None:  # pragma: no cover - __reduce__ wins
        return None

    # -- what Condition needs (acquire/release/with are SemLock's) ----------------
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

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        super().__init__(value, ctx=ctx)


class BoundedSemaphore(Semaphore):
    """A Semaphore whose ``release`` refuses to go above its initial value."""

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    _kind = "BoundedSemaphore"

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        SemBase.__init__(self, value, ctx=ctx, maxvalue=value)

    def __repr__(self) -> str:
        return f"<BoundedSemaphore(value={self.get_value()}, maxvalue={self._maxvalue})>"


class Lock(SemBase):
    """``multiprocessing.Lock``: a binary semaphore; any process may release it, as in the stdlib."""

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    _kind = "Lock"

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(1, ctx=ctx, maxvalue=1)

    def __repr__(self) -> str:
        return f"<Lock({'locked' if self.get_value() == 0 else 'unlocked'})>"


class RLock(SemBase):
    """``multiprocessing.RLock``: re-entrant; only the owning thread (of any process) releases."""

    __module__ = "polyproc.synchronize"  # its public home: repr, pickle

    _kind = "RLock"
    _recursive = True

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(1, ctx=ctx, maxvalue=1)

    def _is_mine(self) -> bool:
        return bool(self._words.owner == _get_tid())

    def _release_all(self) -> int:
        count = int(self._words.count)
        self._words.count = 1  # so that release() lets go of it all at once
        self.release()
        return count

    def _acquire_restore(self, count: int) -> None:
        self.acquire()
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
