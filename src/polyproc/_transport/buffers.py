"""Fresh ``bytes`` objects a read fills in place (no staging buffer, no second copy).

``recv_bytes`` must return ``bytes`` (immutable) yet should not read into a
bytearray and copy it again: ``fresh_bytes`` makes the object unfilled, as
``os.read`` does inside CPython, and hands out a writable view of its memory.

It needs ctypes (2-7 ms to import on a process's first use), so ``Stream.read_bytes``
uses it only where a plain read cannot make the object itself: from ``HUGE`` up (huge
pages), a big rest after bytes already read, a TCP or TLS socket.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["fresh_bytes", "HUGE"]


@functools.cache
def _bytes_maker() -> tuple[Any, Any, int, Any]:
    import ctypes

    new = ctypes.pythonapi.PyBytes_FromStringAndSize
    new.restype = ctypes.py_object
    new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    view = ctypes.pythonapi.PyMemoryView_FromMemory
    view.restype = ctypes.py_object
    view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
    try:
        madvise = ctypes.CDLL(None).madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        madvise = None
    return new, view, bytes.__basicsize__ - 1, madvise  # offset of ob_sval in a PyBytesObject


#: Past this size a fresh ``bytes`` asks for transparent huge pages: a 64 MiB receive is
#: otherwise bound by faulting in 16,384 fresh 4 KiB pages (2-2.5x slower, measured).
#: 32 MiB is glibc's largest mmap threshold: anything bigger is its own mapping, gone at
#: free, so the advice never outlives the object (smaller ones reuse warm heap memory).
HUGE = (32 << 20) + 1
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def fresh_bytes(n: int) -> tuple[bytes, memoryview]:
    """A new, not yet filled ``bytes`` of ``n`` and a writable view of its memory.

    ``recv_bytes`` must return ``bytes`` (immutable) yet should not read into a
    bytearray and copy it again: this is what ``os.read`` does inside CPython, the
    object is filled before anyone else sees it (size > 1: never shared or cached).
    """
    new, view, offset, madvise = _bytes_maker()
    out = new(None, n)
    addr = id(out) + offset
    if n >= HUGE and madvise is not None:
        # Only whole, aligned 2 MiB blocks inside the allocation; an error changes nothing.
        start = (addr + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (addr + n) & ~(_HUGE_PAGE - 1)
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)
    return out, view(addr, n, 0x200)  # PyBUF_WRITE
