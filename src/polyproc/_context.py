"""The Context: which start method, which serializer. A frozen value, passed, never global.

The stdlib binds a start method globally the first time anything touches it
(cpython #109263); here ``get_context('spawn')`` returns a value and changes
nothing else. The one piece of process-wide state is the *default* start method,
kept in a single small holder (``_Defaults``) that ``set_start_method`` writes.

A Context is also the factory users know from ``multiprocessing.get_context()``:
``ctx.Process``, ``ctx.Pool(...)``, ``ctx.Lock()``, ``ctx.Queue()`` ... each binds
the object it makes to this context. Factories import their modules lazily, so
``import polyproc`` stays cheap (it is on the critical path of every spawned child).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._serialize import DEFAULT_SERIALIZER, Serializer

if TYPE_CHECKING:
    from ._process import Process

__all__ = [
    "Context",
    "START_METHODS",
    "DEFAULT_START_METHOD",
    "get_context",
    "set_start_method",
    "get_start_method",
    "get_all_start_methods",
    "default_context",
]

#: The start methods, in the order ``get_all_start_methods`` lists them (default first).
START_METHODS: tuple[str, ...] = ("auto", "fork", "spawn", "forkserver")

#: "auto": fork's semantics where fork is safe, the forkserver's safety where it is
#: not. A child is forked from the caller (a pool's workers from a template forked
#: from the caller at pool creation) only while no thread but polyproc's own,
#: parked, is alive; otherwise it comes from the forkserver. Why, and the figures:
#: docs/architecture.md, "The default start method"; the code: _launch/template.py.
DEFAULT_START_METHOD = "auto"


class Context:
    """How child processes are made and how objects reach them.

    A frozen value (hashable, compared by its fields), written by hand rather than as
    a dataclass: ``dataclasses`` would cost every ``import polyproc`` ~9 ms.
    """

    __slots__ = ("start_method", "serializer")
    start_method: str
    serializer: Serializer

    def __init__(self, start_method: str = DEFAULT_START_METHOD,
                 serializer: Serializer = DEFAULT_SERIALIZER) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"cannot find context for {start_method!r}")
        object.__setattr__(self, "start_method", start_method)
        object.__setattr__(self, "serializer", serializer)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Context is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Context is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Context:
            return NotImplemented
        return (self.start_method, self.serializer) == (other.start_method, other.serializer)

    def __hash__(self) -> int:
        return hash((self.start_method, self.serializer))

    def __repr__(self) -> str:
        return f"Context(start_method={self.start_method!r}, serializer={self.serializer!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Context, (self.start_method, self.serializer))

    # -- the stdlib context API ------------------------------------------------
    def get_start_method(self, allow_none: bool = False) -> str:
        """This context's start method (never None: a Context always has one)."""
        return self.start_method

    def get_context(self, method: str | None = None) -> Context:
        """A Context for ``method``; stdlib parity, the same as ``polyproc.get_context``."""
        return get_context(method)

    def get_all_start_methods(self) -> list[str]:
        """The start methods available here, the default first."""
        return get_all_start_methods()

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Set the process-wide *default* start method; this Context is unchanged."""
        set_start_method(method, force)

    def cpu_count(self) -> int:
        """The number of CPUs in the system (``os.cpu_count()``, at least 1)."""
        return os.cpu_count() or 1

    @property
    def Process(self) -> type[Process]:  # noqa: N802 - stdlib name
        """The Process class for this start method: ``ctx.Process(target=..., args=...)``.

        A module-level class (so it pickles); a non-default serializer gets a subclass.
        """
        return _process_class_for(self)

    # -- factories (lazy imports: keep ``import polyproc`` light) --------------
    def Pipe(self, duplex: bool = True) -> Any:  # noqa: N802
        """A pair of Connections: a socketpair when ``duplex``, else (reader, writer) on a pipe.

        The pipe itself is context-free; the context only decides how children are started.
        """
        from ._connection import Pipe

        return Pipe(duplex)

    def Lock(self) -> Any:  # noqa: N802
        """A process-shared non-recursive Lock, bound to this context."""
        from ._sync import Lock

        return Lock(ctx=self)

    def RLock(self) -> Any:  # noqa: N802
        """A process-shared recursive lock, bound to this context."""
        from ._sync import RLock

        return RLock(ctx=self)

    def Condition(self, lock: Any = None) -> Any:  # noqa: N802
        """A process-shared Condition over ``lock`` (None: a new RLock), bound to this context."""
        from ._sync import Condition

        return Condition(lock, ctx=self)

    def Semaphore(self, value: int = 1) -> Any:  # noqa: N802
        """A process-shared Semaphore starting at ``value``, bound to this context."""
        from ._sync import Semaphore

        return Semaphore(value, ctx=self)

    def BoundedSemaphore(self, value: int = 1) -> Any:  # noqa: N802
        """A Semaphore that refuses to be released above ``value``, bound to this context."""
        from ._sync import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self)

    def Event(self) -> Any:  # noqa: N802
        """A process-shared Event, bound to this context."""
        from ._sync import Event

        return Event(ctx=self)

    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None) -> Any:  # noqa: N802
        """A Barrier for ``parties`` processes; ``action`` runs in the last to arrive.

        The Barrier is bound to this context.
        """
        from ._sync import Barrier

        return Barrier(parties, action, timeout, ctx=self)

    def Queue(self, maxsize: int = 0) -> Any:  # noqa: N802
        """A process-shared FIFO Queue (``maxsize`` 0: unbounded), bound to this context.

        Items are pickled with this context's serializer.
        """
        from ._queues import Queue

        return Queue(maxsize, ctx=self)

    def JoinableQueue(self, maxsize: int = 0) -> Any:  # noqa: N802
        """A Queue with ``task_done()``/``join()``, bound to this context."""
        from ._queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self)

    def SimpleQueue(self) -> Any:  # noqa: N802
        """An unbounded SimpleQueue (put/get/empty/close), bound to this context."""
        from ._queues import SimpleQueue

        return SimpleQueue(ctx=self)

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:  # noqa: N802
        """A ctypes value in shared memory behind a lock (``lock=False``: raw).

        A new lock is bound to this context.
        """
        from ._shm.sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self)

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:  # noqa: N802
        """A ctypes array in shared memory behind a lock (``lock=False``: raw).

        A new lock is bound to this context.
        """
        from ._shm.sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self)

    def RawValue(self, typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802
        """A ctypes value in shared memory with no lock (the same in every context)."""
        from ._shm.sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
        """A ctypes array in shared memory with no lock (the same in every context)."""
        from ._shm.sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Pool(  # noqa: N802
        self,
        processes: int | None = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        **options: Any,
    ) -> Any:
        """A process Pool whose workers are started with this context's method.

        ``**options`` are polyproc's extras (see ``polyproc.pool.Pool``).
        """
        from ._pool.pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, context=self, **options)

    def Manager(self) -> Any:  # noqa: N802
        """A started SyncManager whose server process uses this context's start method."""
        from ._manager.sync import SyncManager

        m = SyncManager(ctx=self)
        m.start()
        return m

    def Listener(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        """A ``connection.Listener`` (the arguments are passed through unchanged)."""
        from ._listener import Listener

        return Listener(*args, **kwargs)

    def Client(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        """A ``connection.Client`` connection (the arguments are passed through unchanged)."""
        from ._listener import Client

        return Client(*args, **kwargs)

    def current_process(self) -> Any:
        """The Process object of the calling process (the same in every context)."""
        from ._process import current_process

        return current_process()

    def parent_process(self) -> Any:
        """The parent as a ParentProcess in a child; None in the main process."""
        from ._process import parent_process

        return parent_process()

    def active_children(self) -> Any:
        """The live children of this process, reaping those that have ended."""
        from ._process import active_children

        return active_children()

    def freeze_support(self) -> None:
        """Nothing to do: polyproc never runs frozen executables as children."""

    def log_to_stderr(self, level: int | None = None) -> Any:
        """Send the ``polyproc`` logger to stderr (at ``level`` if given); returns it."""
        from ._process import log_to_stderr

        return log_to_stderr(level)

    def get_logger(self) -> Any:
        """The ``polyproc`` logger (the stdlib's is named ``multiprocessing``)."""
        from ._process import get_logger

        return get_logger()


@functools.cache
def _process_class_for(ctx: Context) -> type[Process]:
    """ForkProcess / SpawnProcess / ForkServerProcess: module-level classes, so they pickle.

    A context with a non-default serializer gets a subclass carrying it.
    """
    from ._process import AutoProcess, ForkProcess, ForkServerProcess, SpawnProcess

    base: type[Process] = {"fork": ForkProcess, "spawn": SpawnProcess,
                           "forkserver": ForkServerProcess,
                           "auto": AutoProcess}[ctx.start_method]
    if ctx.serializer == DEFAULT_SERIALIZER:
        return base
    return type(base.__name__, (base,), {"_ctx": ctx})


class _Defaults:
    """The process-wide default start method: the single mutable setting, in one place."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._method: str | None = None
        self._fixed = False  # becomes True once a child has been started with it

    def get(self) -> str:
        env = os.environ.get("POLYPROC_START_METHOD")
        return self._method or env or DEFAULT_START_METHOD

    def set(self, method: str | None, force: bool) -> None:
        with self._lock:
            if self._method is not None and not force:
                raise RuntimeError("context has already been set")
            if method is not None and method not in START_METHODS:
                raise ValueError(f"cannot find context for {method!r}")
            self._method = method


_defaults = _Defaults()


def default_context() -> Context:
    """The Context for the current default start method (what ``polyproc.Process`` uses)."""
    return get_context(None)


@functools.cache
def _context_for(method: str) -> Context:
    return Context(method)


def get_context(method: str | None = None) -> Context:
    """A Context for ``method`` (the default when None). Changes no global state."""
    return _context_for(method or _defaults.get())


def set_start_method(method: str | None, force: bool = False) -> None:
    """Set the default start method; ``RuntimeError`` if set already, unless ``force``."""
    _defaults.set(method, force)


def get_start_method(allow_none: bool = False) -> str | None:
    """The default start method; None if unset and ``allow_none`` (stdlib parity).

    Unlike the stdlib, asking never fixes the default.
    """
    if allow_none and _defaults._method is None:
        return None
    return _defaults.get()


def get_all_start_methods() -> list[str]:
    """The start methods available on this platform, the current default first."""
    if sys.platform != "linux":  # pragma: no cover - Linux is the supported platform
        return ["spawn"]
    default = _defaults.get()
    return [default] + [m for m in START_METHODS if m != default]
