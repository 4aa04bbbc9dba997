"""Cell: the future behind ``Pool``'s results, without importing ``concurrent.futures``.

``concurrent.futures`` imports ``logging`` (with ``string`` and friends): about 3 ms,
a third of what a short ``Pool(2).map`` script spends beyond the stdlib's (issue 11).
``Pool``'s results never hand their future out, so they use this one: the subset of
``concurrent.futures.Future`` the engine and ``ApplyResult`` call (set/get a value or
an error, wait with a timeout, done-callbacks), with the same semantics, and no
cancellation (a ``Pool`` task cannot be cancelled). The executor's futures stay real
``concurrent.futures.Future`` objects (``executor.py``): users pass those to
``wait``/``as_completed``.
"""

from __future__ import annotations

import builtins
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable
from typing import Any

__all__ = ["Cell"]

_UNSET: Any = object()


class Cell:
    """Set once (a value or an error), read by any thread; thread-safe.

    No ``threading.Condition``: its Python-level enter, exit and notify are a fifth of a
    round trip's Python calls. ``_lock`` guards the outcome, the callbacks and the
    waiters; a waiter blocks on a lock of its own, which ``_set`` releases (what
    ``Condition.wait`` does inside, without the Python around it). A caller that reads
    its own answer (``fastpath.lead``) finds the Cell done and never makes a waiter.
    """

    __slots__ = ("_lock", "_value", "_error", "_callbacks", "_waiters", "__weakref__")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None
        self._waiters: list[Any] | None = None

    # -- the writer (the engine) -------------------------------------------------------
    def set_result(self, value: Any) -> None:
        self._set(value, None)

    def set_exception(self, error: BaseException | None) -> None:
        self._set(None, error)

    def set_running_or_notify_cancel(self) -> bool:
        return True  # never cancelled: the task may run

    def _set(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._value is not _UNSET or self._error is not None:
                return  # the first outcome stands (a retried task reported twice)
            self._error = error
            self._value = value
            callbacks, self._callbacks = self._callbacks, None
            waiters, self._waiters = self._waiters, None
        if waiters:
            for w in waiters:
                w.release()
        if callbacks:
            for fn in callbacks:
                _run_callback(fn, self)

    # -- readers -------------------------------------------------------------------------
    def done(self) -> bool:
        return self._value is not _UNSET or self._error is not None

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def running(self) -> bool:
        return not self.done()

    def _wait(self, timeout: float | None) -> None:
        if self._value is not _UNSET or self._error is not None:
            return
        waiter = _allocate_lock()
        waiter.acquire()
        with self._lock:
            if self._value is not _UNSET or self._error is not None:
                return
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
        got = False
        try:
            # Interruptible (Ctrl+C) as Condition.wait is: a lock's acquire is.
            if timeout is None:
                got = waiter.acquire()
            elif timeout > 0:
                got = waiter.acquire(True, timeout)
        finally:
            if not got:
                with self._lock:
                    if self._waiters is not None and waiter in self._waiters:
                        self._waiters.remove(waiter)
        if not got and not self.done():
            raise builtins.TimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        if self._value is _UNSET and self._error is None:
            self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._value is _UNSET and self._error is None:
            self._wait(timeout)
        return self._error

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        with self._lock:
            if self._value is _UNSET and self._error is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)


def _run_callback(fn: Callable[[Any], object], cell: Cell) -> None:
    try:
        fn(cell)
    except Exception:  # noqa: BLE001 - as concurrent.futures: logged, the others still run
        import logging

        logging.getLogger("concurrent.futures").exception("exception calling callback for %r", cell)
