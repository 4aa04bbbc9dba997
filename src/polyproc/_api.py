"""The stdlib's module-level functions (``multiprocessing.Lock()`` ...) on the default context.

Each is a plain function that asks ``default_context()`` at call time, so
``set_start_method`` takes effect for objects made afterwards and nothing is
bound at import. (The stdlib copies the bound methods of one context object
into its module globals at import time.)
"""

from __future__ import annotations

import os
from typing import Any

from ._context import default_context

__all__ = [
    "Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock",
    "Manager", "Pipe", "Pool", "Queue", "RLock", "RawArray", "RawValue", "Semaphore",
    "SimpleQueue", "Value", "cpu_count", "freeze_support", "set_executable",
    "set_forkserver_preload", "allow_connection_pickling",
]


def Pipe(duplex: bool = True) -> Any:  # noqa: N802 - stdlib names
    """Two connected Connections (see ``polyproc.connection``)."""
    return default_context().Pipe(duplex)


def Lock() -> Any:  # noqa: N802
    """A non-recursive lock shared between processes."""
    return default_context().Lock()


def RLock() -> Any:  # noqa: N802
    """A recursive lock shared between processes."""
    return default_context().RLock()


def Condition(lock: Any = None) -> Any:  # noqa: N802
    """A condition variable shared between processes."""
    return default_context().Condition(lock)


def Semaphore(value: int = 1) -> Any:  # noqa: N802
    """A semaphore shared between processes."""
    return default_context().Semaphore(value)


def BoundedSemaphore(value: int = 1) -> Any:  # noqa: N802
    """A bounded semaphore shared between processes."""
    return default_context().BoundedSemaphore(value)


def Event() -> Any:  # noqa: N802
    """An event shared between processes."""
    return default_context().Event()


def Barrier(parties: int, action: Any = None, timeout: float | None = None) -> Any:  # noqa: N802
    """A barrier shared between processes."""
    return default_context().Barrier(parties, action, timeout)


def Queue(maxsize: int = 0) -> Any:  # noqa: N802
    """A multi-producer, multi-consumer queue between processes."""
    return default_context().Queue(maxsize)


def JoinableQueue(maxsize: int = 0) -> Any:  # noqa: N802
    """A Queue with ``task_done`` and ``join``."""
    return default_context().JoinableQueue(maxsize)


def SimpleQueue() -> Any:  # noqa: N802
    """An unbounded queue with get/put/empty/close."""
    return default_context().SimpleQueue()


def Value(typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:  # noqa: N802
    """A ctypes value in shared memory, optionally behind a lock."""
    return default_context().Value(typecode_or_type, *args, lock=lock)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:  # noqa: N802
    """A ctypes array in shared memory, optionally behind a lock."""
    return default_context().Array(typecode_or_type, size_or_initializer, lock=lock)


def RawValue(typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802
    """A ctypes value in shared memory, no lock."""
    return default_context().RawValue(typecode_or_type, *args)


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
    """A ctypes array in shared memory, no lock."""
    return default_context().RawArray(typecode_or_type, size_or_initializer)


def Pool(  # noqa: N802
    processes: int | None = None,
    initializer: Any = None,
    initargs: tuple[Any, ...] = (),
    maxtasksperchild: int | None = None,
    **options: Any,
) -> Any:
    """A process pool (see ``polyproc.pool.Pool`` for the options polyproc adds)."""
    return default_context().Pool(processes, initializer, initargs, maxtasksperchild, **options)


def Manager() -> Any:  # noqa: N802
    """A started SyncManager (see ``polyproc.managers``)."""
    return default_context().Manager()


def cpu_count() -> int:
    """The number of CPUs (``NotImplementedError`` if unknown, as in the stdlib)."""
    n = os.cpu_count()
    if n is None:
        raise NotImplementedError("cannot determine number of cpus")
    return n


def freeze_support() -> None:
    """Nothing to do: polyproc never re-runs a frozen executable as a child."""


def set_executable(executable: str) -> None:
    """Accepted for compatibility; spawn always uses ``sys.executable``."""


def set_forkserver_preload(module_names: list[str]) -> None:
    """Checked as by the stdlib; the forkserver already imports ``__main__`` (and its imports)."""
    from ._context import set_forkserver_preload

    set_forkserver_preload(module_names)


def allow_connection_pickling() -> None:
    """Nothing to do: Connections always pickle (their fds travel with SCM_RIGHTS)."""
