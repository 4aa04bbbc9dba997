"""``multiprocessing.heap``, for drop-in imports: ``BufferWrapper``, a picklable shared buffer.

Libraries (and CPython's own tests) use ``BufferWrapper(size).create_memoryview()``
for a few bytes of memory that every process sees. Here it is one block of
polyproc's memfd heap (``_shm.heap``): inherited across ``fork``, passed by fd
(SCM_RIGHTS) when pickled into a child, a Pipe or a Queue, and never named in
/dev/shm, so it cannot leak. The stdlib's ``Heap``/``Arena`` allocator classes
are private there and are not reproduced.
"""

from __future__ import annotations

from typing import Any

from ._shm.heap import Block, allocate

__all__ = ["BufferWrapper"]


class BufferWrapper:
    """``size`` bytes of zero-filled shared memory."""

    __slots__ = ("_block", "_size")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size {size} out of range")
        self._size = size
        self._block = allocate(size)

    def create_memoryview(self) -> memoryview:
        """A view of exactly ``size`` bytes of the shared block."""
        return self._block.view()[: self._size]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._block, self._size))


def _rebuild(block: Block, size: int) -> BufferWrapper:
    wrapper = BufferWrapper.__new__(BufferWrapper)
    wrapper._block = block
    wrapper._size = size
    return wrapper
