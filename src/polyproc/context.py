"""``multiprocessing.context``: the Context, the stdlib's factory object, and the Process classes.

``Context`` is ``Settings`` (a start method and a serializer, ``polyproc._context``)
plus the factories users know from ``multiprocessing.get_context()``:
``ctx.Process``, ``ctx.Pool(...)``, ``ctx.Lock()``, ``ctx.Queue()`` ... Each binds the
object it makes to this context's settings. The factories live here, in the public
layer, because they name every layer below: the settings object at the bottom
imports nothing it makes, so the import graph has no circle.

Each factory has the implementation's real signature and return type (``help``,
IDEs and mypy see them); its body imports the implementation module on first call,
so ``import polyproc`` (on the path of every spawned child) does not load the pool,
the manager or ctypes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _context
from ._context import Settings
from ._process import AutoProcess as AutoProcess  # pickled by reference as polyproc.context
from ._process import BaseProcess as BaseProcess
from ._process import ForkProcess as ForkProcess
from ._process import ForkServerProcess as ForkServerProcess
from ._process import ParentProcess, process_class
from ._process import Process as Process
from ._process import SpawnProcess as SpawnProcess
from ._process import active_children as _active_children
from ._process import current_process as _current_process
from ._process import get_logger as _get_logger
from ._process import log_to_stderr as _log_to_stderr
from ._process import parent_process as _parent_process
from .errors import AuthenticationError as AuthenticationError
from .errors import BufferTooShort as BufferTooShort
from .errors import ProcessError as ProcessError
from .errors import TimeoutError as TimeoutError  # noqa: A004

if TYPE_CHECKING:
    import logging
    import ssl
    from typing import TypeAlias

    from ._connection import Connection
    from ._listener import Listener
    from ._manager.sync import SyncManager
    from ._pool.pool import Pool
    from ._queues import JoinableQueue, Queue, SimpleQueue
    from ._sync import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

    #: What a Condition or a shared ctypes object may be locked with (as typeshed says).
    _LockLike: TypeAlias = Lock | RLock

__all__ = [
    "AuthenticationError",
    "BaseContext",
    "BufferTooShort",
    "Context",
    "ForkProcess",
    "ForkServerProcess",
    "Process",
    "ProcessError",
    "SpawnProcess",
    "TimeoutError",
    "ForkContext",
    "SpawnContext",
    "ForkServerContext",
    "default_context",
    "get_context",
]


class Context(Settings):
    """How child processes are made and how objects reach them, and the objects made so.

    A frozen value: ``Context("spawn") == get_context("spawn")``; using it changes
    no global state (cpython #109263).
    """

    __slots__ = ()

    # -- the stdlib context API ------------------------------------------------
    def get_start_method(self, allow_none: bool = False) -> str:
        """This context's start method (never None: a Context always has one)."""
        return self.start_method

    def get_context(self, method: str | None = None) -> Context:
        """This context (``method`` None), else the Context for ``method`` (stdlib parity)."""
        if method is None:
            return self
        return get_context(method)

    def get_all_start_methods(self) -> list[str]:
        """The start methods available here, the default first."""
        return _context.get_all_start_methods()

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Refused, as by the stdlib: a Context *is* a start method (use ``polyproc.set_start_method``)."""
        raise ValueError("cannot set start method of concrete context")

    def set_forkserver_preload(self, module_names: list[str]) -> None:
        """Modules for the forkserver to import (checked, as by the stdlib; see ``polyproc``)."""
        _context.set_forkserver_preload(module_names)

    def cpu_count(self) -> int:
        """The number of CPUs in the system (``os.cpu_count()``, at least 1)."""
        return os.cpu_count() or 1

    @property
    def Process(self) -> type[Process]:  # noqa: N802 - stdlib name
        """The Process class for this start method: ``ctx.Process(target=..., args=...)``.

        A module-level class (so it pickles); a non-default serializer gets a subclass.
        """
        return process_class(self)

    # -- factories ---------------------------------------------------------------
    def Pipe(self, duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802
        """A pair of Connections: a socketpair when ``duplex``, else (reader, writer) on a pipe.

        The pipe itself is context-free; the context only decides how children are started.
        """
        from ._connection import Pipe

        return Pipe(duplex)

    def Lock(self) -> Lock:  # noqa: N802
        """A process-shared non-recursive Lock, bound to this context."""
        from ._sync import Lock

        return Lock(ctx=self)

    def RLock(self) -> RLock:  # noqa: N802
        """A process-shared recursive lock, bound to this context."""
        from ._sync import RLock

        return RLock(ctx=self)

    def Condition(self, lock: _LockLike | None = None) -> Condition:  # noqa: N802
        """A process-shared Condition over ``lock`` (None: a new RLock), bound to this context."""
        from ._sync import Condition

        return Condition(lock, ctx=self)

    def Semaphore(self, value: int = 1) -> Semaphore:  # noqa: N802
        """A process-shared Semaphore starting at ``value``, bound to this context."""
        from ._sync import Semaphore

        return Semaphore(value, ctx=self)

    def BoundedSemaphore(self, value: int = 1) -> BoundedSemaphore:  # noqa: N802
        """A Semaphore that refuses to be released above ``value``, bound to this context."""
        from ._sync import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self)

    def Event(self) -> Event:  # noqa: N802
        """A process-shared Event, bound to this context."""
        from ._sync import Event

        return Event(ctx=self)

    def Barrier(
        self,
        parties: int,
        action: Callable[[], object] | None = None,  # noqa: N802
        timeout: float | None = None,
    ) -> Barrier:
        """A Barrier for ``parties`` processes; ``action`` runs in the last to arrive.

        The Barrier is bound to this context.
        """
        from ._sync import Barrier

        return Barrier(parties, action, timeout, ctx=self)

    def Queue(self, maxsize: int = 0) -> Queue:  # noqa: N802
        """A process-shared FIFO Queue (``maxsize`` 0: unbounded), bound to this context.

        Items are pickled with this context's serializer.
        """
        from ._queues import Queue

        return Queue(maxsize, ctx=self)

    def JoinableQueue(self, maxsize: int = 0) -> JoinableQueue:  # noqa: N802
        """A Queue with ``task_done()``/``join()``, bound to this context."""
        from ._queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self)

    def SimpleQueue(self) -> SimpleQueue:  # noqa: N802
        """An unbounded SimpleQueue (put/get/empty/close), bound to this context."""
        from ._queues import SimpleQueue

        return SimpleQueue(ctx=self)

    def Value(
        self,
        typecode_or_type: str | type[Any],
        *args: Any,  # noqa: N802
        lock: bool | _LockLike = True,
    ) -> Any:
        """A ctypes value in shared memory behind a lock (``lock=False``: raw).

        A new lock is bound to this context.
        """
        from ._shm.sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self)

    def Array(
        self,
        typecode_or_type: str | type[Any],  # noqa: N802
        size_or_initializer: int | Iterable[Any],
        *,
        lock: bool | _LockLike = True,
    ) -> Any:
        """A ctypes array in shared memory behind a lock (``lock=False``: raw).

        A new lock is bound to this context.
        """
        from ._shm.sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self)

    def RawValue(self, typecode_or_type: str | type[Any], *args: Any) -> Any:  # noqa: N802
        """A ctypes value in shared memory with no lock (the same in every context)."""
        from ._shm.sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(
        self,
        typecode_or_type: str | type[Any],  # noqa: N802
        size_or_initializer: int | Iterable[Any],
    ) -> Any:
        """A ctypes array in shared memory with no lock (the same in every context)."""
        from ._shm.sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Pool(  # noqa: N802
        self,
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
    ) -> Pool:
        """A process Pool whose workers are started with this context's method.

        The keyword-only options are polyproc's extras: ``max_memory_per_child``
        (bytes: a worker above it is replaced after its task), and defaults for every
        task's ``timeout`` (seconds: the late task's worker is killed and replaced),
        ``retries`` (re-runs of a task whose worker died) and ``progress`` (a tqdm bar:
        True or a dict of tqdm options); ``window`` and ``target_batch_s`` tune
        adaptive batching; ``backend`` runs the workers on a Dask or Ray cluster
        (docs/scale-out.md; see ``polyproc.pool.Pool``).
        """
        from ._pool.pool import Pool

        return Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            self,
            max_memory_per_child=max_memory_per_child,
            timeout=timeout,
            retries=retries,
            progress=progress,
            window=window,
            target_batch_s=target_batch_s,
            backend=backend,
        )

    def Manager(self) -> SyncManager:  # noqa: N802
        """A started SyncManager whose server process uses this context's start method."""
        from ._manager.sync import SyncManager

        m = SyncManager(ctx=self)
        m.start()
        return m

    def Listener(
        self,
        address: Any = None,
        family: str | None = None,  # noqa: N802
        backlog: int = 1,
        authkey: bytes | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = 30.0,
    ) -> Listener:
        """A ``connection.Listener`` (the same in every context)."""
        from ._listener import Listener

        return Listener(
            address,
            family,
            backlog,
            authkey,
            ssl_context=ssl_context,
            handshake_timeout=handshake_timeout,
        )

    def Client(
        self,
        address: Any,
        family: str | None = None,  # noqa: N802
        authkey: bytes | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = 30.0,
    ) -> Connection:
        """A ``connection.Client`` connection (the same in every context)."""
        from ._listener import Client

        return Client(
            address,
            family,
            authkey,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            handshake_timeout=handshake_timeout,
        )

    def current_process(self) -> BaseProcess:
        """The Process object of the calling process (the same in every context)."""
        return _current_process()

    def parent_process(self) -> ParentProcess | None:
        """The parent as a ParentProcess in a child; None in the main process."""
        return _parent_process()

    def active_children(self) -> list[BaseProcess]:
        """The live children of this process, reaping those that have ended."""
        return _active_children()

    def freeze_support(self) -> None:
        """Nothing to do: polyproc never runs frozen executables as children."""

    def log_to_stderr(self, level: int | None = None) -> logging.Logger:
        """Send the ``polyproc`` logger to stderr (at ``level`` if given); returns it."""
        return _log_to_stderr(level)

    def get_logger(self) -> logging.Logger:
        """The ``polyproc`` logger (the stdlib's is named ``multiprocessing``)."""
        return _get_logger()


#: The stdlib's name for the class of its context objects.
BaseContext = Context


class ForkContext(Context):
    """The ``fork`` Context (the stdlib's class name)."""

    __slots__ = ()


class SpawnContext(Context):
    """The ``spawn`` Context (the stdlib's class name)."""

    __slots__ = ()


class ForkServerContext(Context):
    """The ``forkserver`` Context (the stdlib's class name)."""

    __slots__ = ()


_CONTEXT_CLASSES: dict[str, type[Context]] = {
    "fork": ForkContext,
    "spawn": SpawnContext,
    "forkserver": ForkServerContext,
}


@functools.cache
def _public(settings: Settings) -> Context:
    cls = _CONTEXT_CLASSES.get(settings.start_method, Context)
    return cls(settings.start_method, settings.serializer)


def get_context(method: str | None = None) -> Context:
    """A Context for ``method`` (the default start method when None). Changes no global state.

    One value per method: ``get_context("spawn") is get_context("spawn")``.
    """
    return _public(_context.get_context(method))


def default_context() -> Context:
    """The Context for the current default start method (what ``polyproc.Process`` uses)."""
    return _public(_context.default_context())
