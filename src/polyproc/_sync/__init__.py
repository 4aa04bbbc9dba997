"""Process-shared synchronisation built on POSIX semaphores in shared memory.

``locks``: Lock, RLock, Semaphore, BoundedSemaphore (one ``sem_t`` each).
``waiting``: Condition, Event, Barrier (built from those).
``_sem``: SemLock, the base of every lock: the C extension ``polyproc._csem``, or ctypes.
"""

from __future__ import annotations

from .locks import BoundedSemaphore, Lock, RLock, Semaphore
from .waiting import Barrier, Condition, Event

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier"]
