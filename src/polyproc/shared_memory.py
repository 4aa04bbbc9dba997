"""``multiprocessing.shared_memory``: named segments and ShareableList (re-exports only)."""

from __future__ import annotations

from ._shm.shared_memory import ShareableList as ShareableList
from ._shm.shared_memory import SharedMemory as SharedMemory

__all__ = ["SharedMemory", "ShareableList"]
