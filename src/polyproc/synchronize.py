"""``multiprocessing.synchronize``: process-shared locks and friends (re-exports only)."""

from __future__ import annotations

from ._sync import Barrier as Barrier
from ._sync import BoundedSemaphore as BoundedSemaphore
from ._sync import Condition as Condition
from ._sync import Event as Event
from ._sync import Lock as Lock
from ._sync import RLock as RLock
from ._sync import Semaphore as Semaphore
from .errors import BrokenBarrierError as BrokenBarrierError

__all__ = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "BrokenBarrierError",
]
