"""Anonymous shared memory: memfd arenas carved into blocks for locks, Values and Arrays.

Everything anonymous that polyproc shares lives in a ``memfd`` (``os.memfd_create``):
it has no name in /dev/shm, so nothing can be left behind; the kernel frees it
when the last fd and the last mapping are gone, SIGKILL included.

::

    creator                                   another process
    ───────                                   ───────────────
    Heap.allocate(n) ─► Block(arena, off, n)
      arena = memfd + mmap (MAP_SHARED)
    fork: the mapping is inherited ─────────► same memory, same addresses
    pickle (spawn/forkserver/Pipe/Queue):
      Block.__reduce__ ─ fd_handle(memfd) ──► SCM_RIGHTS ─► _rebuild_block(fd, off, n)
                                                 Arena mapped once per (dev, inode),
                                                 cached weakly; spare fds closed

Small blocks (under ``_BIG``) share 1 MiB arenas (one fd for thousands of locks);
big ones get an arena of their own, freed with the object that uses it.

A freed small block is reused only when it cannot be in use elsewhere: it was
never pickled and no ``fork`` happened since it was made (a forked child may
still be using it). A forked child starts with a fresh heap, so parent and
child never carve the same arena.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .._serialize import fd_handle

__all__ = ["Arena", "Block", "allocate", "PAGE"]

PAGE = mmap.PAGESIZE
_ARENA_SIZE = 1 << 20
#: Blocks at least this big get an arena (a memfd) of their own.
_BIG = 1 << 18
_ALIGN = 64  # a cache line: two locks never share one (no false sharing)


def _round(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Arena:
    """One memfd and its mapping. Closes the fd when garbage collected."""

    __slots__ = ("fd", "size", "mm", "key", "__weakref__")

    def __init__(self, size: int, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("polyproc", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                os.close(fd)
                raise MemoryError(f"cannot allocate {size} bytes of shared memory: {exc}") from exc
        self.fd = fd
        self.size = size
        try:
            self.mm = mmap.mmap(fd, size) if size else mmap.mmap(-1, 1)
        except OSError as exc:
            os.close(fd)
            self.fd = -1
            raise MemoryError(f"cannot map {size} bytes of shared memory: {exc}") from exc
        st = os.fstat(fd)
        self.key = (st.st_dev, st.st_ino)

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # ``_close`` is bound now: an arena collected at interpreter shutdown may find the
        # module's ``os`` already set to None ("Exception ignored in Arena.__del__").
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                _close(fd)
            except OSError:
                pass


class Block:
    """``size`` bytes at ``offset`` in an arena; pickles as the arena's fd plus the offset."""

    __slots__ = ("arena", "offset", "size", "shared", "generation", "__weakref__")

    def __init__(self, arena: Arena, offset: int, size: int, generation: int) -> None:
        self.arena = arena
        self.offset = offset
        self.size = size
        self.shared = False
        self.generation = generation

    def view(self) -> memoryview:
        return memoryview(self.arena.mm)[self.offset : self.offset + self.size]

    def address(self) -> int:
        """The block's address in this process (valid while the arena lives)."""
        import ctypes

        return ctypes.addressof(ctypes.c_char.from_buffer(self.arena.mm, self.offset))

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.shared:  # another process may use it from now on: never reuse it
            self.shared = True
            with _heap.lock:
                _heap.pickled.add((self.arena.key, self.offset))
        return (_rebuild_block, (fd_handle(self.arena.fd), self.arena.size, self.offset, self.size))

    def __repr__(self) -> str:
        return f"<Block {self.size} bytes at {self.offset} of memfd {self.arena.fd}>"


class _Heap:
    """This process's allocator state (the one mutable holder of this module)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.generation = 0  # bumped at every fork: blocks older than that may be in use
        self.arena: Arena | None = None
        self.top = 0
        self.free: dict[int, list[tuple[Arena, int]]] = {}
        self.pickled: set[tuple[tuple[int, int], int]] = set()
        self.mapped: weakref.WeakValueDictionary[tuple[int, int], Arena] = (
            weakref.WeakValueDictionary()
        )

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.arena, self.top, self.free, self.pickled = None, 0, {}, set()

    def before_fork(self) -> None:
        self.generation += 1


_heap = _Heap()
os.register_at_fork(before=_heap.before_fork, after_in_child=_heap.after_fork_in_child)


def allocate(size: int) -> Block:
    """A zero-filled shared block of at least ``size`` bytes (64-byte aligned)."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    size = max(_round(size, _ALIGN), _ALIGN)
    h = _heap
    if size >= _BIG:
        arena = Arena(_round(size, PAGE))
        return Block(arena, 0, size, h.generation)
    with h.lock:
        slots = h.free.get(size)
        if slots:
            arena, offset = slots.pop()
            block = Block(arena, offset, size, h.generation)
            block.view()[:] = bytes(size)
        else:
            if h.arena is None or h.top + size > h.arena.size:
                h.arena, h.top = Arena(_ARENA_SIZE), 0
                h.mapped[h.arena.key] = h.arena
            block = Block(h.arena, h.top, size, h.generation)
            h.top += size
    weakref.finalize(block, _release, h, block.arena, block.offset, size, block.generation)
    return block


def _release(h: _Heap, arena: Arena, offset: int, size: int, generation: int) -> None:
    """Return a small block to the free list, if nobody else can be using it."""
    with h.lock:
        if (arena.key, offset) in h.pickled:
            h.pickled.discard((arena.key, offset))  # another process may hold it: leak it
            return
        if os.getpid() != h.pid or generation != h.generation:
            return  # made before a fork: a child may still use it
        h.free.setdefault(size, []).append((arena, offset))


def _rebuild_block(fd: int, arena_size: int, offset: int, size: int) -> Block:
    """Receiving side: map the arena once (cached by inode), close spare fds."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    h = _heap
    with h.lock:
        arena = h.mapped.get(key)
        if arena is None:
            arena = Arena(arena_size, fd)
            h.mapped[key] = arena
            fd = -1
    if fd >= 0:
        os.close(fd)
    block = Block(arena, offset, size, h.generation)
    block.shared = True
    return block
