"""LightFuture: a ``concurrent.futures.Future`` whose Condition is made on first wait.

A stdlib ``Future()`` allocates a ``Condition`` (a Python object with an ``RLock``
and a deque of waiters), a list of waiters and a list of callbacks: four or five
objects the garbage collector tracks, and 6-8 us per future once 200k of them are
alive (every older collection walks them all). Setting one takes the Condition twice
in Python (``set_running_or_notify_cancel``, ``set_result``) and ``notify_all`` walks
its (empty) waiter deque. Most of the executor's futures are set before anyone waits
on them (``[ex.submit(f, x) for x in xs]``), so none of that is needed until a thread
actually waits.

The rule that keeps it correct::

    while ``_cond`` is None: every change of ``_state`` (and of the callbacks) is made
                             holding the process-wide ``_guard``, which re-checks ``_cond``;
    ``_condition`` (the stdlib's name):  makes ``_cond`` under ``_guard``, once;
    from then on:            every change is made holding ``_cond``, as the stdlib does.

So a waiter that makes the Condition and then looks at ``_state`` under it either
sees the outcome (set before, under ``_guard``) or is woken by ``notify_all`` (the
setter saw ``_cond`` and took the stdlib's path). ``wait`` and ``as_completed`` take
``f._condition`` and append to ``f._waiters``: both are properties that make the
Condition, so they work unchanged (checked on CPython 3.11-3.13, whose
``concurrent/futures/_base.py`` is the same). Reading ``_state`` alone (``done()``,
``cancelled()``, ``result()`` of a finished future) takes no lock: one attribute read.
``_guard`` is never held while taking a Condition or calling user code, and is made
anew in a forked child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures._base import (  # the stdlib's own state names: wait() reads them
    _STATE_TO_DESCRIPTION_MAP,
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    LOGGER,
    PENDING,
    RUNNING,
)
from typing import Any

__all__ = ["LightFuture", "FINISHED"]

_guard = threading.Lock()
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


class LightFuture(Future[Any]):
    """A ``concurrent.futures.Future`` with the stdlib's semantics and no Condition until
    a thread waits (see the module docstring). ``Future.__init__`` is not called: the
    state lives in class defaults until it changes."""

    # Class defaults: a new future writes nothing.
    _state: str = PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _cond: threading.Condition | None = None
    _waiter_list: list[Any] | None = None
    _callbacks: list[Callable[[Future[Any]], object]] | None = None

    def __init__(self) -> None:  # not Future.__init__: no Condition, no lists
        pass

    # -- what the stdlib's wait()/as_completed() touch ---------------------------------
    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _guard:
                cond = self._cond
                if cond is None:
                    self._waiter_list = []
                    cond = self._cond = threading.Condition()
        return cond

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        self._condition  # noqa: B018 - made with the Condition
        assert self._waiter_list is not None
        return self._waiter_list

    @property
    def _done_callbacks(self) -> list[Callable[[Future[Any]], object]]:
        cond = self._hold()
        try:
            if self._callbacks is None:
                self._callbacks = []
            return self._callbacks
        finally:
            _release(cond)

    def _invoke_callbacks(self) -> None:
        for callback in self._callbacks or ():
            try:
                callback(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)

    # -- readers -----------------------------------------------------------------------
    def __repr__(self) -> str:
        state = self._state
        head = f"<{type(self).__name__} at {id(self):#x} state={_STATE_TO_DESCRIPTION_MAP[state]}"
        if state == FINISHED:
            if self._exception:
                return f"{head} raised {type(self._exception).__name__}>"
            return f"{head} returned {type(self._result).__name__}>"
        return f"{head}>"

    def cancelled(self) -> bool:
        return self._state in _CANCELLED

    def running(self) -> bool:
        return self._state == RUNNING

    def done(self) -> bool:
        return self._state in _DONE

    def result(self, timeout: float | None = None) -> Any:
        state = self._state
        if state != FINISHED:
            self._wait(timeout)
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                del exc, self  # no cycle through the traceback
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            self._wait(timeout)
        return self._exception

    def _wait(self, timeout: float | None) -> None:
        """Until finished; CancelledError / TimeoutError as the stdlib raises them."""
        if self._state in _CANCELLED:
            raise CancelledError()
        cond = self._condition
        with cond:
            if self._state not in _DONE:
                cond.wait(timeout)
            state = self._state
        if state in _CANCELLED:
            raise CancelledError()
        if state != FINISHED:
            raise FuturesTimeoutError()

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        cond = self._hold()
        try:
            if self._state not in _DONE:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        finally:
            _release(cond)
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    # -- writers (the executor) --------------------------------------------------------
    def _hold(self) -> threading.Condition | None:
        """Take the lock that guards a change now: the Condition if one was made (returned),
        else ``_guard`` (None returned). Release with ``_release``."""
        cond = self._cond
        if cond is None:
            _guard.acquire()
            cond = self._cond
            if cond is None:
                return None
            _guard.release()  # made meanwhile: from now on the Condition guards
        cond.acquire()
        return cond

    def cancel(self) -> bool:
        cond = self._hold()
        try:
            state = self._state
            if state in (RUNNING, FINISHED):
                return False
            if state in _CANCELLED:
                return True
            self._state = CANCELLED
            if cond is not None:
                cond.notify_all()
        finally:
            _release(cond)
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        cond = self._hold()
        try:
            state = self._state
            if state == PENDING:
                self._state = RUNNING
                return True
            if state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiter_list or ():
                    waiter.add_cancelled(self)
                return False  # cancel() notified already
        finally:
            _release(cond)
        LOGGER.critical("Future %s in unexpected state: %s", id(self), state)
        raise RuntimeError("Future in unexpected state")

    def set_result(self, result: Any) -> None:
        self._finish(result, None, False)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(None, exception, True)

    def _finish(self, result: Any, exception: BaseException | None, failed: bool) -> None:
        """``set_result`` / ``set_exception``: the outcome under the guarding lock, then
        the waiters (only if a thread made the Condition) and the callbacks."""
        cond = self._hold()
        try:
            state = self._state
            if state not in _DONE:
                self._result = result
                self._exception = exception
                self._state = FINISHED
                if cond is not None:
                    for waiter in self._waiter_list or ():
                        if failed:
                            waiter.add_exception(self)
                        else:
                            waiter.add_result(self)
                    cond.notify_all()
        finally:
            _release(cond)
        if state in _DONE:
            raise InvalidStateError(f"{state}: {self!r}")
        if self._callbacks is not None:
            self._invoke_callbacks()

    # -- many at once (the engine thread: a batch of tasks sent, a batch of results) ---
    @classmethod
    def start_all(cls, futures: list[Any]) -> list[bool]:
        """``set_running_or_notify_cancel`` of each, taking ``_guard`` once for all those
        with no Condition: whether each may run (False: cancelled, now notified)."""
        ok = [True] * len(futures)
        slow: list[int] = []
        with _guard:
            for i, f in enumerate(futures):
                if f.__class__ is cls and f._cond is None:
                    state = f._state
                    if state == PENDING:
                        f._state = RUNNING
                        continue
                    if state == CANCELLED:
                        f._state = CANCELLED_AND_NOTIFIED  # no Condition: no waiter
                        ok[i] = False
                        continue
                slow.append(i)  # waited on, another class, or a wrong state (raises below)
        for i in slow:
            ok[i] = futures[i].set_running_or_notify_cancel()
        return ok

    @classmethod
    def settle_all(cls, futures: list[Any], values: list[Any], failed: type) -> list[int]:
        """``set_result`` of each, taking ``_guard`` once for all those with no Condition and
        no callbacks. Returns the indexes it left to the caller: a value of type ``failed``
        (an error to convert), another class, a waiter or callbacks to serve, a done one."""
        left: list[int] = []
        with _guard:
            for i, f in enumerate(futures):
                v = values[i]
                if (
                    f.__class__ is cls
                    and f._cond is None
                    and f._callbacks is None
                    and f._state not in _DONE
                    and type(v) is not failed
                ):
                    f._result = v
                    f._state = FINISHED
                else:
                    left.append(i)
        return left


def _release(cond: threading.Condition | None) -> None:
    if cond is None:
        _guard.release()
    else:
        cond.release()
