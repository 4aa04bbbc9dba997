"""POSIX semaphores (``sem_t``, pshared) in shared memory, called through ctypes.

The one place that talks to libc for synchronisation. Every primitive in
``_sync`` is a few ``sem_t`` plus a few integers in a heap block
(``_shm.heap``); this module gives them three calls:

* ``try_acquire(addr)``: ``sem_trywait``, pure user space when uncontended;
* ``acquire(addr, block, timeout)``: the slow path. ctypes releases the GIL, so
  other threads run while we sleep in the kernel (a futex);
* ``release(addr)`` / ``value(addr)``: ``sem_post`` / ``sem_getvalue``.

Ctrl+C: a blocking wait in the main thread sleeps in slices of ``_SLICE``
seconds (``sem_clockwait`` on CLOCK_MONOTONIC, so wall-clock jumps do not matter);
between slices, and after an EINTR, the interpreter runs pending signal
handlers, so ``KeyboardInterrupt`` arrives within a slice. Other threads cannot
receive KeyboardInterrupt and sleep in one piece.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

__all__ = ["SEM_SIZE", "init", "try_acquire", "acquire", "release", "value"]

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

#: ``try_acquire(addr) == 0`` means taken: bound straight to libc, the fast path.
try_acquire = _sem_trywait
#: ``sem_post``; raises nothing (EOVERFLOW past SEM_VALUE_MAX is not reachable here).
release = _sem_post
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


def acquire(addr: int, block: bool = True, timeout: float | None = None) -> bool:
    """Take the semaphore; False if it could not within ``timeout`` (or at once if not ``block``)."""
    if _sem_trywait(addr) == 0:
        return True
    if not block:
        return False
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
