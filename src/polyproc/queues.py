"""``multiprocessing.queues``: Queue, JoinableQueue, SimpleQueue (re-exports only)."""

from __future__ import annotations

from ._queues import JoinableQueue as JoinableQueue
from ._queues import Queue as Queue
from ._queues import SimpleQueue as SimpleQueue

__all__ = ["Queue", "JoinableQueue", "SimpleQueue"]
