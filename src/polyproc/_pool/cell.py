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
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Cell"]

_UNSET: Any = object()


class Cell:
    """Set once (a value or an error), read by any thread; thread-safe."""

    __slots__ = ("_cond", "_value", "_error", "_callbacks", "__weakref__")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None

    # -- the writer (the engine) -------------------------------------------------------
    def set_result(self, value: Any) -> None:
        self._set(value, None)

    def set_exception(self, error: BaseException | None) -> None:
        self._set(None, error)

    def set_running_or_notify_cancel(self) -> bool:
        return True  # never cancelled: the task may run

    def _set(self, value: Any, error: BaseException | None) -> None:
        with self._cond:
            if self.done():
                return  # the first outcome stands (a retried task reported twice)
            self._error = error
            self._value = value
            callbacks, self._callbacks = self._callbacks, None
            self._cond.notify_all()
        for fn in callbacks or ():
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
        if not self.done():
            with self._cond:
                if not self._cond.wait_for(self.done, timeout):
                    raise builtins.TimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        with self._cond:
            if not self.done():
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
