"""polyproc: Python's multiprocessing, rebuilt — a drop-in that cannot hang.

``import polyproc as multiprocessing`` and programs behave as documented, with
more: a pool that survives dead workers, per-task timeouts, lazy ``imap``,
progress bars, zero-copy NumPy, fast managers. See README.md and docs/.

This module is the whole public surface: explicit re-exports and a literal
``__all__``; the work happens in private modules (docs/architecture.md).
Heavy faces (the executor, shared arrays) load on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._api import Array as Array
from ._api import Barrier as Barrier
from ._api import BoundedSemaphore as BoundedSemaphore
from ._api import Condition as Condition
from ._api import Event as Event
from ._api import JoinableQueue as JoinableQueue
from ._api import Lock as Lock
from ._api import Manager as Manager
from ._api import Pipe as Pipe
from ._api import Pool as Pool
from ._api import Queue as Queue
from ._api import RawArray as RawArray
from ._api import RawValue as RawValue
from ._api import RLock as RLock
from ._api import Semaphore as Semaphore
from ._api import SimpleQueue as SimpleQueue
from ._api import Value as Value
from ._api import allow_connection_pickling as allow_connection_pickling
from ._api import cpu_count as cpu_count
from ._api import freeze_support as freeze_support
from ._api import set_executable as set_executable
from ._api import set_forkserver_preload as set_forkserver_preload
from ._context import get_all_start_methods as get_all_start_methods
from ._context import get_start_method as get_start_method
from ._context import set_start_method as set_start_method
from ._process import Process as Process
from ._process import active_children as active_children
from ._process import current_process as current_process
from ._process import get_logger as get_logger
from ._process import log_to_stderr as log_to_stderr
from ._process import parent_process as parent_process
from .context import Context as Context
from .context import get_context as get_context
from .errors import AuthenticationError as AuthenticationError
from .errors import BufferTooShort as BufferTooShort
from .errors import PolyprocError as PolyprocError
from .errors import ProcessError as ProcessError
from .errors import TimeoutError as TimeoutError  # noqa: A004 - the stdlib name, also the builtin

if TYPE_CHECKING:
    from ._shm.ndarray import shared_array as shared_array
    from .backends import use_backend as use_backend
    from .errors import BrokenProcessPool as BrokenProcessPool
    from .errors import WorkerLostError as WorkerLostError
    from .futures import ProcessPoolExecutor as ProcessPoolExecutor

__version__ = "0.1.0"

__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BrokenProcessPool",
    "BufferTooShort",
    "Condition",
    "Context",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "PolyprocError",
    "Process",
    "ProcessError",
    "ProcessPoolExecutor",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "WorkerLostError",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "shared_array",
    "use_backend",
]

_LAZY = {  # each of these imports concurrent.futures (and logging): ~8 ms
    "BrokenProcessPool": ("polyproc.errors", "BrokenProcessPool"),
    "WorkerLostError": ("polyproc.errors", "WorkerLostError"),
    "ProcessPoolExecutor": ("polyproc.futures", "ProcessPoolExecutor"),
    "shared_array": ("polyproc._shm.ndarray", "shared_array"),
    "reducer": ("polyproc.reduction", "_module"),  # the stdlib's multiprocessing.reducer
    "use_backend": ("polyproc.backends", "use_backend"),
}


def __getattr__(name: str) -> Any:
    """Load the executor, shared arrays and pool errors on first use: ``import polyproc``
    stays light."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'polyproc' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
