"""POSIX semaphores (``sem_t``, pshared) in shared memory: ``SemLock``, in C or over ctypes.

The one place that talks to libc for synchronisation. Every primitive in
``_sync`` is a few ``sem_t`` plus a few integers in a heap block
(``_shm.heap``), driven through ``SemLock``, the base class of every lock::

    SemLock = polyproc._csem.SemLock    the C extension (built by setup.py when a
              │                         compiler is there): ~10x faster, since
              │ ImportError, or         `with lock:` is one C call each way
              │ POLYPROC_NO_CEXT=1
              └► PySemLock              the same type over ctypes (this module)

    ._attach(sem_addr, owner_addr, maxvalue)    owner_addr: RLock's two shared words
    .acquire(block=True, timeout=None) .release() .__enter__ .__exit__ .get_value()

Both are tested against each other (tests/shared/test_semcore.py). ``init`` and
``value`` are the plain libc calls, used by both.

Ctrl+C: a blocking wait in the main thread sleeps in slices of ``_SLICE``
seconds (``sem_clockwait`` on CLOCK_MONOTONIC, so wall-clock jumps do not matter);
between slices, and after an EINTR, the interpreter runs pending signal
handlers, so ``KeyboardInterrupt`` arrives within a slice. Other threads cannot
receive KeyboardInterrupt and sleep in one piece. The GIL is released only
around those sleeps, never for the uncontended ``sem_trywait``/``sem_post``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from typing import TYPE_CHECKING, Any

__all__ = ["SEM_SIZE", "SemLock", "PySemLock", "HAVE_CEXT", "locked_attr", "init", "value"]

#: sizeof(sem_t) on 64-bit Linux.
SEM_SIZE = 32
_SLICE = 0.1
_CLOCK_MONOTONIC = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_sem_init = _libc.sem_init
_sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
_sem_trywait = _libc.sem_trywait
_sem_trywait.argtypes = [ctypes.c_void_p]
_sem_post = _libc.sem_post
_sem_post.argtypes = [ctypes.c_void_p]
_sem_getvalue = _libc.sem_getvalue
_sem_getvalue.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
_sem_wait = _libc.sem_wait
_sem_wait.argtypes = [ctypes.c_void_p]
_HAS_CLOCKWAIT = hasattr(_libc, "sem_clockwait")  # glibc >= 2.30
if _HAS_CLOCKWAIT:
    _sem_clockwait = _libc.sem_clockwait
    _sem_clockwait.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Timespec)]
else:  # pragma: no cover - old glibc: CLOCK_REALTIME deadlines
    _sem_timedwait = _libc.sem_timedwait
    _sem_timedwait.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Timespec)]

SEM_VALUE_MAX = 2**31 - 1


def init(addr: int, value: int) -> None:
    """Initialise a process-shared semaphore at ``addr`` with ``value``."""
    if not 0 <= value <= SEM_VALUE_MAX:
        raise ValueError(f"semaphore initial value must be in [0, {SEM_VALUE_MAX}], not {value}")
    if _sem_init(addr, 1, value) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def value(addr: int) -> int:
    out = ctypes.c_int()
    _sem_getvalue(addr, ctypes.byref(out))
    return max(out.value, 0)


def _check_layout() -> bool:
    """Is the count the low 32 bits of the first word, as in glibc's 64-bit ``new_sem``?

    Then a primitive reads its value with a plain ctypes field load instead of a
    ``sem_getvalue`` call (which needs an out-parameter): ~10x cheaper, and it is
    on the hot path of ``Lock.release``. Checked once here, on a real semaphore.
    """
    buf = (ctypes.c_uint32 * 8)()
    for v in (0, 5, 77777):
        init(ctypes.addressof(buf), v)
        if buf[0] != v or value(ctypes.addressof(buf)) != v:
            return False
    return True


#: True where ``value`` may be read straight from the sem_t's first 32 bits.
DIRECT_VALUE = _check_layout()


def _wait_until(addr: int, deadline: float) -> int:
    """One ``sem_clockwait`` up to ``deadline`` (monotonic); 0 or an errno."""
    ts = _Timespec()
    if _HAS_CLOCKWAIT:
        ts.tv_sec = int(deadline)
        ts.tv_nsec = int((deadline - int(deadline)) * 1e9)
        r = _sem_clockwait(addr, _CLOCK_MONOTONIC, ctypes.byref(ts))
    else:  # pragma: no cover
        wall = time.time() + (deadline - time.monotonic())
        ts.tv_sec = int(wall)
        ts.tv_nsec = int((wall - int(wall)) * 1e9)
        r = _sem_timedwait(addr, ctypes.byref(ts))
    return 0 if r == 0 else ctypes.get_errno()


def _wait(addr: int, block: bool, timeout: float | None) -> bool:
    """The slow path of ``PySemLock.acquire``: sleep until taken or ``timeout`` passes."""
    if not block:
        return bool(_sem_trywait(addr) == 0)
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    sliced = threading.current_thread() is threading.main_thread()
    while True:
        if deadline is None and not sliced:
            err = 0 if _sem_wait(addr) == 0 else ctypes.get_errno()
        else:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return bool(_sem_trywait(addr) == 0)
            until = now + _SLICE if sliced else float("inf")
            if deadline is not None:
                until = min(until, deadline)
            err = _wait_until(addr, until)
        if err == 0:
            return True
        if err not in (errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN):
            raise OSError(err, os.strerror(err))
        # Back in the interpreter: a pending KeyboardInterrupt is raised here.


_get_tid = threading.get_native_id
#: Stands for "no semaphore yet": ctypes refuses it (ArgumentError) instead of
#: passing NULL to libc, should a SemLock be used before ``_attach``.
_UNATTACHED: Any = object()


class PySemLock:
    """``polyproc._csem.SemLock`` written over ctypes: the fallback, with the same behaviour.

    ``owner`` (RLock only) is two int64 words in shared memory: the holder's
    native thread id (``gettid``, unique machine-wide) and the recursion depth.
    Its attributes start with ``_sem_`` so that subclasses' own cannot collide.
    """

    _sem_addr: Any = _UNATTACHED
    _sem_owner: Any = None
    _sem_max = -1
    _sem_count: Any = None  # the count as a c_uint32, where DIRECT_VALUE says it may be read so

    def _attach(self, sem_addr: int, owner_addr: int, maxvalue: int, /) -> None:
        if not sem_addr:
            raise ValueError("sem_addr must not be 0")
        self._sem_addr = sem_addr
        self._sem_owner = (ctypes.c_int64 * 2).from_address(owner_addr) if owner_addr else None
        self._sem_max = max(maxvalue, -1)
        self._sem_count = ctypes.c_uint32.from_address(sem_addr) if DIRECT_VALUE else None

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the semaphore (a recursive lock: once more if this thread owns it)."""
        owner = self._sem_owner
        if owner is None:
            return _sem_trywait(self._sem_addr) == 0 or _wait(self._sem_addr, block, timeout)
        me = _get_tid()
        if owner[0] == me:
            owner[1] += 1
            return True
        if _sem_trywait(self._sem_addr) != 0 and not _wait(self._sem_addr, block, timeout):
            return False
        owner[0] = me
        owner[1] = 1
        return True

    def __enter__(self) -> bool:
        if self._sem_owner is None and _sem_trywait(self._sem_addr) == 0:
            return True
        return self.acquire()

    def release(self) -> None:
        """Give it back; ValueError past ``maxvalue``, AssertionError for another's RLock."""
        owner = self._sem_owner
        if owner is not None:
            if owner[0] != _get_tid():
                raise AssertionError("attempt to release recursive lock not owned by thread")
            if owner[1] > 1:
                owner[1] -= 1
                return
            owner[1] = 0
            owner[0] = 0
        elif self._sem_max >= 0:
            count = self._sem_count  # a plain load where DIRECT_VALUE allows: on Lock's hot path
            if (count.value if count is not None else value(self._sem_addr)) >= self._sem_max:
                raise ValueError("semaphore or lock released too many times")
        if _sem_post(self._sem_addr) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def __exit__(self, *exc: object) -> None:
        self.release()

    def get_value(self) -> int:
        """The semaphore's current count."""
        count = self._sem_count
        return int(count.value) if count is not None else value(self._sem_addr)


def _locked_property(name: str) -> property:
    def get(self: Any) -> Any:
        with self._lock:
            return getattr(self._obj, name)

    def set_(self: Any, v: Any) -> None:
        with self._lock:
            setattr(self._obj, name, v)

    return property(get, set_, doc=f"``{name}`` of the wrapped object, under the lock.")


def _load() -> Any:
    """The ``_csem`` module if it is built, agrees on ``sem_t``'s size, and is not turned off."""
    if os.environ.get("POLYPROC_NO_CEXT", "") not in ("", "0"):
        return None
    try:
        from .. import _csem
    except ImportError:
        return None
    if _csem.SEM_SIZE != SEM_SIZE:  # pragma: no cover - another libc: the layout would differ
        return None
    return _csem


_csem: Any = _load()
#: Whether the C extension drives the locks.
HAVE_CEXT = _csem is not None
if TYPE_CHECKING:
    SemLock = PySemLock  # the two have one interface (see _csem.pyi)
else:
    SemLock = _csem.SemLock if HAVE_CEXT else PySemLock


def locked_attr(name: str) -> Any:
    """A descriptor for Synchronized wrappers: ``inst.<attr>`` is ``inst._obj.<name>``,
    read and written with ``inst._lock`` held (one C call with the extension)."""
    return _csem.LockedAttr(name) if HAVE_CEXT else _locked_property(name)
