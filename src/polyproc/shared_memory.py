"""``multiprocessing.shared_memory``: named segments and ShareableList (re-exports only).

``_make_filename``, ``_SHM_NAME_PREFIX`` and ``_USE_POSIX`` are the stdlib's private
names, kept because tests written for the stdlib patch them (a patched
``_make_filename`` here is what new segments are named by).
"""

from __future__ import annotations

from ._shm.shareable_list import ShareableList as ShareableList
from ._shm.shared_memory import _PREFIX
from ._shm.shared_memory import SharedMemory as SharedMemory
from ._shm.shared_memory import _make_filename as _make_filename

_SHM_NAME_PREFIX = "/" + _PREFIX
_USE_POSIX = True

__all__ = ["SharedMemory", "ShareableList"]
