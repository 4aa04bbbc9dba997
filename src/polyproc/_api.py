"""The stdlib's module-level functions (``multiprocessing.Lock()`` ...) on the default context.

Each is a plain function with the real signature and return type that asks
``default_context()`` at call time, so ``set_start_method`` takes effect for
objects made afterwards and nothing is bound at import. (The stdlib copies the
bound methods of one context object into its module globals at import time.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .context import default_context

if TYPE_CHECKING:
    # Annotations name the public homes (``polyproc.synchronize.Lock``), which is what
    # ``help(polyproc.Lock)`` then shows; the factories' own names hide the bare ones.
    from typing import TypeAlias

    import polyproc.connection
    import polyproc.managers
    import polyproc.pool
    import polyproc.queues
    import polyproc.synchronize

    _LockLike: TypeAlias = polyproc.synchronize.Lock | polyproc.synchronize.RLock

__all__ = [
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "Value",
    "cpu_count",
    "freeze_support",
    "set_executable",
    "set_forkserver_preload",
    "allow_connection_pickling",
]


def Pipe(
    duplex: bool = True,  # noqa: N802 - stdlib names
) -> tuple[polyproc.connection.Connection, polyproc.connection.Connection]:
    """Two connected Connections (see ``polyproc.connection``)."""
    return default_context().Pipe(duplex)


def Lock() -> polyproc.synchronize.Lock:  # noqa: N802
    """A non-recursive lock shared between processes."""
    return default_context().Lock()


def RLock() -> polyproc.synchronize.RLock:  # noqa: N802
    """A recursive lock shared between processes."""
    return default_context().RLock()


def Condition(lock: _LockLike | None = None) -> polyproc.synchronize.Condition:  # noqa: N802
    """A condition variable shared between processes (over a new RLock when ``lock`` is None)."""
    return default_context().Condition(lock)


def Semaphore(value: int = 1) -> polyproc.synchronize.Semaphore:  # noqa: N802
    """A semaphore shared between processes."""
    return default_context().Semaphore(value)


def BoundedSemaphore(value: int = 1) -> polyproc.synchronize.BoundedSemaphore:  # noqa: N802
    """A bounded semaphore shared between processes."""
    return default_context().BoundedSemaphore(value)


def Event() -> polyproc.synchronize.Event:  # noqa: N802
    """An event shared between processes."""
    return default_context().Event()


def Barrier(
    parties: int,
    action: Callable[[], object] | None = None,  # noqa: N802
    timeout: float | None = None,
) -> polyproc.synchronize.Barrier:
    """A barrier shared between processes; ``action`` runs in the last to arrive."""
    return default_context().Barrier(parties, action, timeout)


def Queue(maxsize: int = 0) -> polyproc.queues.Queue:  # noqa: N802
    """A multi-producer, multi-consumer queue between processes (``maxsize`` 0: unbounded)."""
    return default_context().Queue(maxsize)


def JoinableQueue(maxsize: int = 0) -> polyproc.queues.JoinableQueue:  # noqa: N802
    """A Queue with ``task_done`` and ``join``."""
    return default_context().JoinableQueue(maxsize)


def SimpleQueue() -> polyproc.queues.SimpleQueue:  # noqa: N802
    """An unbounded queue with get/put/empty/close."""
    return default_context().SimpleQueue()


def Value(
    typecode_or_type: str | type[Any],
    *args: Any,  # noqa: N802
    lock: bool | _LockLike = True,
) -> Any:
    """A ctypes value in shared memory, behind a lock unless ``lock=False``."""
    return default_context().Value(typecode_or_type, *args, lock=lock)


def Array(
    typecode_or_type: str | type[Any],
    size_or_initializer: int | Iterable[Any],  # noqa: N802
    *,
    lock: bool | _LockLike = True,
) -> Any:
    """A ctypes array in shared memory, behind a lock unless ``lock=False``."""
    return default_context().Array(typecode_or_type, size_or_initializer, lock=lock)


def RawValue(typecode_or_type: str | type[Any], *args: Any) -> Any:  # noqa: N802
    """A ctypes value in shared memory, no lock."""
    return default_context().RawValue(typecode_or_type, *args)


def RawArray(
    typecode_or_type: str | type[Any],  # noqa: N802
    size_or_initializer: int | Iterable[Any],
) -> Any:
    """A ctypes array in shared memory, no lock."""
    return default_context().RawArray(typecode_or_type, size_or_initializer)


def Pool(  # noqa: N802
    processes: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    maxtasksperchild: int | None = None,
    *,
    max_memory_per_child: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    progress: Any = None,
    window: int = 3,
    target_batch_s: float | None = None,
    backend: Any = None,
) -> polyproc.pool.Pool:
    """A process pool that never hangs on a dead worker (``multiprocessing.Pool``).

    ``processes`` workers (default: the CPU count), each running ``initializer(*initargs)``
    first and replaced after ``maxtasksperchild`` tasks. polyproc's keyword-only extras:
    ``max_memory_per_child`` (bytes), and defaults for each task's ``timeout`` (seconds;
    the late task's worker is killed and replaced), ``retries`` (re-runs of a task whose
    worker died) and ``progress`` (a tqdm bar); ``window``/``target_batch_s`` tune
    adaptive batching; ``backend`` runs the workers on a Dask or Ray cluster
    (docs/scale-out.md). See ``polyproc.pool.Pool`` and docs/pool.md.
    """
    return default_context().Pool(
        processes,
        initializer,
        initargs,
        maxtasksperchild,
        max_memory_per_child=max_memory_per_child,
        timeout=timeout,
        retries=retries,
        progress=progress,
        window=window,
        target_batch_s=target_batch_s,
        backend=backend,
    )


def Manager() -> polyproc.managers.SyncManager:  # noqa: N802
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
    """Modules the forkserver imports once, before forking (checked as by the stdlib)."""
    from ._context import set_forkserver_preload

    set_forkserver_preload(module_names)


def allow_connection_pickling() -> None:
    """Nothing to do: Connections always pickle (their fds travel with SCM_RIGHTS)."""
