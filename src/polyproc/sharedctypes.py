"""``multiprocessing.sharedctypes``: ctypes objects in shared memory (re-exports only)."""

from __future__ import annotations

from ._shm.sharedctypes import Array as Array
from ._shm.sharedctypes import RawArray as RawArray
from ._shm.sharedctypes import RawValue as RawValue
from ._shm.sharedctypes import Synchronized as Synchronized
from ._shm.sharedctypes import SynchronizedArray as SynchronizedArray
from ._shm.sharedctypes import SynchronizedBase as SynchronizedBase
from ._shm.sharedctypes import SynchronizedString as SynchronizedString
from ._shm.sharedctypes import Value as Value
from ._shm.sharedctypes import copy as copy
from ._shm.sharedctypes import synchronized as synchronized
from ._shm.sharedctypes import typecode_to_type as typecode_to_type

__all__ = [
    "RawValue",
    "RawArray",
    "Value",
    "Array",
    "copy",
    "synchronized",
    "Synchronized",
    "SynchronizedArray",
    "SynchronizedBase",
    "SynchronizedString",
    "typecode_to_type",
]
