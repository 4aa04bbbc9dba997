"""A waiting caller reads its own answer: two wake-ups per round trip instead of three.

::

    caller: submit ──(engine asleep, a worker idle)── sends the batch itself ──► worker
            result()                                                             │
              └─ lead(): under the engine lock, take the worker's channel out    │
                 of the engine's selector (``Handle.led``), then poll a dup of   │
                 it, lock released ◄──────────────────────── RESULTS ───────────┘
                 └─ under the lock: read, run the scheduler, set the Future (no
                    waiter to wake: the waiter is us); give the channel back

Without this, the result wakes the engine thread, which sets the Future, which
wakes the caller: three wake-ups of ~20-30 us each on a small VM, plus the
engine's loop. Leading is only tried for the Future the caller's own thread sent
directly (``Engine._led``), only while the engine sleeps, and only one caller at
a time; anything else (a busy engine, another thread's Future, asyncio) waits on
the Future as usual. While a caller leads, the engine ignores that channel's
readable events (it never reads it, so the caller's read never blocks) but keeps
watching the worker's sentinel: a death shuts the channel for reading, the
caller's poll wakes at end-of-file, finds the channel closed and falls back to
the Future, which the engine has failed. Every read happens under the engine
lock, so the scheduler still has one writer at a time.
"""

from __future__ import annotations

import os
import select
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["PoolFuture", "lead"]

_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR


class PoolFuture(Future):  # type: ignore[type-arg]
    """A ``concurrent.futures.Future`` whose ``result()`` may read its own answer."""

    _engine: Engine | None = None

    def result(self, timeout: float | None = None) -> Any:
        engine = self._engine
        if engine is not None and engine._led is self:
            timeout = lead(engine, self, timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        engine = self._engine
        if engine is not None and engine._led is self:
            timeout = lead(engine, self, timeout)
        return super().exception(timeout)


def lead(engine: Engine, fut: Future[Any], timeout: float | None) -> float | None:
    """Wait for ``fut`` by reading its worker's channel in this thread, if we may.

    Returns what is left of ``timeout`` for the ordinary wait that follows (which
    returns at once when ``fut`` is done).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    lock = engine._lock
    if not lock.acquire(False):
        return timeout
    try:
        if engine._led is not fut or not engine._asleep or fut.done():
            return timeout
        engine._led = None
        h = engine.handles.get(engine._led_wid)
        if h is None or h.led or h.conn is None or h.conn.closed:
            return timeout
        h.led = True
        try:
            h.watch(engine.sel)  # the engine no longer reads it
            fd = os.dup(h.conn.fileno())
        except BaseException:
            h.led = False
            h.watch(engine.sel)
            raise
    finally:
        lock.release()
    try:
        poller = select.poll()
        poller.register(fd, _POLLIN)
        while not fut.done():
            if deadline is None:
                ms = -1
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ms = max(1, int(left * 1000 + 0.999))
            if not poller.poll(ms):
                continue
            with lock:
                if h.conn is None or h.conn.closed or not h.led:
                    break  # the worker died: the engine has dealt with it
                engine._read_led(h)
    finally:
        os.close(fd)
        with lock:
            h.led = False
            if h.conn is not None and not h.conn.closed:
                h.watch(engine.sel)  # level-triggered: unread bytes wake the engine
    return None if deadline is None else max(0.0, deadline - time.monotonic())
