"""``polyproc.futures``: mirrors ``concurrent.futures`` with our ``ProcessPoolExecutor``.

Futures, ``wait``, ``as_completed`` and ``ThreadPoolExecutor`` are the stdlib's own
(our executor returns stdlib ``Future`` objects, so they mix freely); the process
executor and its errors are polyproc's. Re-exports only.
"""

from __future__ import annotations

from concurrent.futures import ALL_COMPLETED as ALL_COMPLETED
from concurrent.futures import FIRST_COMPLETED as FIRST_COMPLETED
from concurrent.futures import FIRST_EXCEPTION as FIRST_EXCEPTION
from concurrent.futures import BrokenExecutor as BrokenExecutor
from concurrent.futures import CancelledError as CancelledError
from concurrent.futures import Executor as Executor
from concurrent.futures import Future as Future
from concurrent.futures import InvalidStateError as InvalidStateError
from concurrent.futures import ThreadPoolExecutor as ThreadPoolExecutor
from concurrent.futures import as_completed as as_completed
from concurrent.futures import wait as wait

from ._pool.executor import ProcessPoolExecutor as ProcessPoolExecutor
from .errors import BrokenProcessPool as BrokenProcessPool
from .errors import TimeoutError as TimeoutError
from .errors import WorkerLostError as WorkerLostError

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "BrokenProcessPool",
    "CancelledError",
    "Executor",
    "Future",
    "InvalidStateError",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor",
    "TimeoutError",
    "WorkerLostError",
    "as_completed",
    "wait",
]
