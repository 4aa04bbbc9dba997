"""``polyproc.dummy``: the multiprocessing API on threads (``multiprocessing.dummy`` parity).

``Process`` is a thread with the Process API, ``Pool`` is our ``ThreadPool`` (the
same engine as the process pool, with thread workers), queues and locks are the
``queue``/``threading`` ones, ``Manager()`` returns this module (shared objects
are plain objects when everything is one process).
"""

from __future__ import annotations

import array
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from queue import Queue as Queue
from threading import Barrier as Barrier
from threading import BoundedSemaphore as BoundedSemaphore
from threading import Condition as Condition
from threading import Event as Event
from threading import Lock as Lock
from threading import RLock as RLock
from threading import Semaphore as Semaphore
from typing import Any

from .._manager.proxytypes import Namespace as Namespace
from .._manager.proxytypes import Value as Value
from .._manager.proxytypes import make_array
from .._pool.pool import ThreadPool
from .connection import Pipe as Pipe

__all__ = [
    "Process",
    "DummyProcess",
    "current_process",
    "active_children",
    "freeze_support",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "Queue",
    "JoinableQueue",
    "Manager",
    "Pipe",
    "Pool",
    "Value",
    "Array",
    "Namespace",
    "dict",
    "list",
]

JoinableQueue = Queue
dict = dict  # noqa: A001 - the stdlib's dummy exports the builtins as "managed" types
list = list  # noqa: A001


class _Children:
    """The one holder of this module's state: the running dummy processes."""

    def __init__(self) -> None:
        self.live: weakref.WeakKeyDictionary[DummyProcess, None] = weakref.WeakKeyDictionary()


_children = _Children()


class DummyProcess(threading.Thread):
    """A thread with the Process API (``exitcode``, ``is_alive``, ``join``...)."""

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        threading.Thread.__init__(self, group, target, name, tuple(args), kwargs or {})
        self._pid = None
        self._start_called = False

    @property
    def exitcode(self) -> int | None:
        """None before ``start`` and while running, then 0 (a thread has no status)."""
        if self._start_called and not self.is_alive():
            return 0
        return None

    def start(self) -> None:
        """Start the thread and count it among ``active_children()``."""
        self._start_called = True
        _children.live[self] = None
        threading.Thread.start(self)


Process = DummyProcess


def current_process() -> threading.Thread:
    """The calling thread (it stands for the process here)."""
    return threading.current_thread()


def active_children() -> list[DummyProcess]:
    """The DummyProcess threads started here that are still running."""
    kids = [p for p in _children.live if p.is_alive()]
    for p in [p for p in _children.live if not p.is_alive()]:
        _children.live.pop(p, None)
    return kids


def freeze_support() -> None:
    """Nothing to do."""


def Array(typecode: str, sequence: Any, lock: bool = True) -> array.array[Any]:  # noqa: N802
    """An ``array.array`` (threads share memory: nothing to manage)."""
    return make_array(typecode, sequence, lock)


def Manager() -> Any:  # noqa: N802
    """This module itself: with one process, shared objects are plain objects."""
    return sys.modules[__name__]


def shutdown() -> None:
    """Nothing to do (``Manager().shutdown()`` parity)."""


def Pool(
    processes: int | None = None,
    initializer: Callable[..., Any] | None = None,  # noqa: N802
    initargs: Iterable[Any] = (),
) -> ThreadPool:
    """A ThreadPool: the process Pool's engine with threads as workers."""
    return ThreadPool(processes, initializer, initargs)
