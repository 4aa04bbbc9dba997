"""Parking polyproc's own threads, so that a fork from this process is safe.

*Parked* means: a polyproc thread that registered the one lock it holds whenever
it runs Python code (the pool engine holds its lock except while in ``select``;
the launcher thread holds its lock while it launches). Holding all those locks,
we know each such thread is blocked in ``select``/``get`` or on that lock, holding
nothing a child could inherit locked. Any other thread (a user's, a ThreadPool
worker, a queue feeder) makes fork unsafe. ``template.py`` (the ``auto`` start
method) decides with ``parked()`` whether to fork here or use the forkserver.

Imports nothing else of polyproc: the launchers, the launcher thread and log
forwarding all use it.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

__all__ = ["parkable", "parked", "fork_is_safe"]

_PARK_TIMEOUT = 1.0  # seconds to wait for one of our threads to park; else: not safe


class _Parking:
    """polyproc's own threads that can be parked: thread -> the lock it runs under."""

    def __init__(self) -> None:
        self.locks: weakref.WeakKeyDictionary[threading.Thread, threading.Lock] = (
            weakref.WeakKeyDictionary()
        )


_PARKING = _Parking()


def parkable(thread: threading.Thread, lock: threading.Lock) -> None:
    """Declare that ``thread`` runs Python code only while holding ``lock``.

    Then ``parked()`` may fork while ``thread`` is alive: holding ``lock``, it knows
    the thread is blocked where it holds nothing.
    """
    _PARKING.locks[thread] = lock


def _os_thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        return threading.active_count()


def _only_known_threads(known: int) -> bool:
    """True if the kernel sees no thread beyond the ``known`` ones ``threading`` lists.

    A thread that ``join()`` has just seen end may still be leaving the kernel for a
    few microseconds: wait up to 20 ms for it. One that stays is a C library's (a BLAS
    pool, a driver): not ours to park, so forking is not safe.
    """
    import time

    deadline = time.monotonic() + 0.02
    while True:
        n = _os_thread_count()
        if n <= known:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)  # polling the kernel's thread list, not synchronising ours


@contextmanager
def parked() -> Iterator[bool]:
    """Yield True, with polyproc's threads parked, if forking this process is safe now.

    Safe: we are the main thread, and every other thread is one of ours that has
    parked. A thread the ``threading`` module does not know of (a C extension's)
    counts as unsafe. While True is yielded, Python's "fork with threads"
    DeprecationWarning is silenced: it is about threads like ours in exactly the
    state we checked they are not in.
    """
    me = threading.current_thread()
    if me is not threading.main_thread():
        yield False
        return
    others = [t for t in threading.enumerate() if t is not me and t.is_alive()]
    if not others:
        yield _only_known_threads(1)
        return
    locks = []
    for t in others:
        lock = _PARKING.locks.get(t)
        if lock is None:
            yield False
            return
        locks.append(lock)
    with ExitStack() as stack:
        for lock in locks:
            if not lock.acquire(timeout=_PARK_TIMEOUT):
                yield False
                return
            stack.callback(lock.release)
        alive = [t for t in threading.enumerate() if t is not me]
        if any(t not in _PARKING.locks for t in alive) or not _only_known_threads(len(alive) + 1):
            yield False  # a thread started while we parked the others
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
            yield True


def fork_is_safe() -> bool:
    """Whether ``parked()`` would allow a fork now (for callers that must choose ahead)."""
    with parked() as safe:
        return safe
