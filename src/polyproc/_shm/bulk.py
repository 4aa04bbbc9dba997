"""Large buffers through shared memory: what Connection and Queue do with big out-of-band buffers.

A pickled message's out-of-band buffers (NumPy arrays, bytes, memoryviews) at
or above ``THRESHOLD`` do not go through the socket. The sender copies each
into a memfd (one memcpy) and passes the fd (SCM_RIGHTS); the receiver maps it
and hands pickle a writable view of the mapping, so the rebuilt array *is* the
mapping: no copy on the receiving side, no pickle through a pipe.

::

    sender                                        receiver
    ──────                                        ────────
    export(view) ─► slot (memfd, mapped, warm)
       busy byte := 1                             import_buffer(fd, n)
       memcpy view → slot[PAGE:PAGE+n]              mmap(fd, MAP_POPULATE) ─► memoryview
    fd ─── SCM_RIGHTS ──────────────────────────►  (the ndarray is backed by it)
                                                  lease collected: busy byte := 0
    next export: a slot whose busy byte is 0 is reused (its pages are already
    faulted in, so the copy runs at memcpy speed instead of first-touch speed),
    and the receiver finds its mapping of that slot again by the memfd's inode
    (``_Received``): no mmap, no page-table fill, no munmap per transfer

Layout of a memfd: one page whose first byte is the busy flag, then the data.
Only the sender sets the flag (while it is 0) and only the receiver clears it,
so no atomic operation is needed. The flag is ``_POOLED`` for a pooled slot and
``_ONE_OFF`` for an unpooled memfd: the receiver keeps a mapping of the first
kind for the next transfer (at most ``_RECV_MAPS``, dropped once the sender
retires the slot, after ``_IDLE`` seconds unused, or at ``trim()``), and maps
the second kind once, for this transfer only.

Why a receiver keeps mappings (issue #14, 512 MiB arrays): mapping a 512 MiB
memfd costs as much as copying it (~160 ms here, one page-table entry per page,
and the munmap again), so a fresh mapping per transfer halved the bandwidth.
Each transfer hands out a *lease*, a ctypes array over the cached mapping: the
view pickle rebuilds the array from keeps it alive, and its finalizer clears
the busy byte when the last view goes, exactly as collecting the mapping did.
A receiver that dies before it lets go (killed mid-task, or before it read the
frame) cannot clear the busy byte, and nobody else would: ``export`` tags a slot
with its receiver (``owner``) and ``forget(owner)``, called by whoever knows that
receiver is gone for good (the pool engine, for a dead worker's channel), retires
its slots still busy. Retiring is always safe, even if the guess were wrong: the
sender never writes the memfd again, and a mapping a live receiver holds stays
valid. Without an owner (``Queue``, ``Connection.send`` to a peer that died) a
busy slot stays until the process ends: the pool is bounded (``_POOL_BYTES``,
``_POOL_SLOTS``) and past the bound a fresh, unpooled memfd is used. Free slots idle for
``_IDLE`` seconds are dropped at the next export, so a process that once sent a
big array does not keep its memory for ever; ``trim()`` drops them at once.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

from .._transport import write_all_fd

__all__ = [
    "THRESHOLD",
    "BYTES_THRESHOLD",
    "MARKER_SIZE",
    "export",
    "lend",
    "PeerMaps",
    "import_buffer",
    "size_marker",
    "read_size_marker",
    "trim",
    "forget",
    "encode_frame",
]

#: Out-of-band buffers at least this big travel through shared memory.
THRESHOLD = 1 << 20
PAGE = mmap.PAGESIZE
_POOL_BYTES = 2 << 30
_POOL_SLOTS = 8
_IDLE = 20.0
#: ``send_bytes`` of at least this many bytes goes through a pooled memfd when the
#: stream can pass fds. Off (``sys.maxsize``) by default: measured side by side on
#: this machine, once ``recv_bytes`` reads straight into its result the socket
#: carries 1, 4 and 64 MiB messages as fast as lending does in both directions, and
#: lending keeps up to ``_LEND_SLOTS`` slots of each size alive (docs/connection.md).
#: Lower it (at least ``Connection``'s 1 MiB floor) where a measurement says otherwise.
BYTES_THRESHOLD = sys.maxsize
#: Slots of one size that ``lend`` may keep in flight before falling back to the socket.
_LEND_SLOTS = 3
#: Mappings of the peer's slots one receiving Connection keeps.
_PEER_MAPS = 4
#: Mappings of peers' ``export`` slots one receiving process keeps for the next transfer.
_RECV_MAPS = 4
#: Byte 0 of a memfd while its data is in flight: a pooled slot (the receiver may keep its
#: mapping for the next transfer) or a one-off memfd (mapped for this transfer only).
_POOLED = 1
_ONE_OFF = 2


_MARKER = struct.Struct("<Q")
#: After a frame's inline buffers, one marker per shared buffer: its length.
MARKER_SIZE = _MARKER.size


def size_marker(view: memoryview) -> bytes:
    return _MARKER.pack(view.nbytes)


def read_size_marker(data: bytes) -> int:
    return int(_MARKER.unpack(data)[0])


class _Slot:
    """One pooled memfd of the sender: its fd, capacity, (lazily) a warm mapping, and who
    received it last (``owner``: a token ``forget`` is called with; 0 for nobody known)."""

    __slots__ = ("fd", "capacity", "mm", "last_used", "owner")

    def __init__(self, fd: int, capacity: int, owner: int = 0) -> None:
        self.fd = fd
        self.capacity = capacity
        self.mm: mmap.mmap | None = None
        self.last_used = time.monotonic()
        self.owner = owner

    def busy(self) -> bool:
        return os.pread(self.fd, 1, 0) != b"\0" if self.mm is None else self.mm[0] != 0

    def close(self, retire: bool = True) -> None:
        # Byte 1 := retired, so a receiver that keeps this memfd mapped (``PeerMaps``)
        # lets go of it at its next look instead of pinning its memory. A fork child
        # dropping its inherited copy must not retire the parent's live slot.
        try:
            if not retire:
                pass
            elif self.mm is not None:
                self.mm[1] = 1
            else:
                os.pwrite(self.fd, b"\1", 1)
        except (OSError, ValueError):
            pass
        if self.mm is not None:
            self.mm.close()
        os.close(self.fd)


class _Pool:
    """This process's warm memfds (the one mutable holder of this module)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: list[_Slot] = []

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        slots, self.slots = self.slots, []
        for s in slots:
            try:
                s.close(retire=False)
            except (OSError, BufferError):
                pass


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.after_fork_in_child)


def _fresh(view: memoryview, flag: int = _POOLED) -> int:
    """A new memfd holding the header page and ``view``: ``write`` allocates and copies at once.

    ``write`` is the fastest way to fill fresh shmem pages here (512 MiB: 0.82 s, against
    1.2-1.6 s for ftruncate + mmap, populated or not, + memcpy; load average ~10)."""
    fd = os.memfd_create("polyproc-buffer", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, PAGE)
        os.lseek(fd, PAGE, os.SEEK_SET)
        write_all_fd(fd, view)
        os.pwrite(fd, bytes((flag,)), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def export(view: memoryview, owner: int = 0) -> tuple[int, bool]:
    """Put ``view``'s bytes in shared memory; (fd to send, whether to close it after sending).

    ``owner`` names the receiver, so that ``forget(owner)`` can take back a slot it
    died holding; 0 when the sender cannot tell when its receiver is gone."""
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    n = view.nbytes
    p = _pool
    with p.lock:
        now = time.monotonic()
        best: _Slot | None = None
        for s in list(p.slots):
            if s.busy():
                continue
            if now - s.last_used > _IDLE and s.capacity != n:
                p.slots.remove(s)
                s.close()
            elif s.capacity >= n and (best is None or s.capacity < best.capacity):
                best = s
        if best is not None:
            if best.mm is None:
                best.mm = mmap.mmap(
                    best.fd, PAGE + best.capacity, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE
                )
            best.mm[0] = _POOLED
            best.last_used = now
            best.owner = owner
            slot = best
        else:
            total = sum(s.capacity for s in p.slots) + n
            if len(p.slots) < _POOL_SLOTS and total <= _POOL_BYTES:
                fd = _fresh(view)
                p.slots.append(_Slot(fd, n, owner))
                return fd, False
            return _fresh(view, _ONE_OFF), True
    # Copy outside the pool lock; the slot is ours (busy) until the receiver lets go.
    assert slot.mm is not None
    memoryview(slot.mm)[PAGE : PAGE + n] = view
    return slot.fd, False


def lend(view: memoryview) -> int | None:
    """``send_bytes``'s side: copy ``view`` into a free pooled memfd; its fd, or None.

    Unlike ``export`` this never makes an unpooled memfd: when every fitting slot is
    busy (a slow receiver) and no new one may be made, the caller sends through the
    socket instead, which blocks and fails exactly as a socket does. The fd stays the
    pool's: send it, do not close it. The receiver copies the bytes out (``PeerMaps``)
    and clears the busy byte, so a stream of messages cycles through a few warm slots.
    """
    n = view.nbytes
    p = _pool
    with p.lock:
        now = time.monotonic()
        best: _Slot | None = None
        fitting = 0
        for s in list(p.slots):
            if s.capacity >= n:
                fitting += 1
            if s.busy():
                continue
            if s.capacity >= n and (best is None or s.capacity < best.capacity):
                best = s
            elif now - s.last_used > _IDLE:
                p.slots.remove(s)
                s.close()
        if best is None:
            if fitting >= _LEND_SLOTS:
                return None  # enough slots of this size exist; they are all in flight
            total = sum(s.capacity for s in p.slots) + n
            if total > _POOL_BYTES or len(p.slots) >= _POOL_SLOTS:
                # Make room by dropping free slots too small for this size.
                for s in sorted(
                    (s for s in p.slots if s.capacity < n and not s.busy()),
                    key=lambda s: s.capacity,
                ):
                    if total <= _POOL_BYTES and len(p.slots) < _POOL_SLOTS:
                        break
                    p.slots.remove(s)
                    total -= s.capacity
                    s.close()
                if total > _POOL_BYTES or len(p.slots) >= _POOL_SLOTS:
                    return None
            fd = _fresh(view)
            p.slots.append(_Slot(fd, n))
            return fd
        if best.mm is None:
            best.mm = mmap.mmap(
                best.fd, PAGE + best.capacity, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE
            )
        best.mm[0] = 1
        best.last_used = now
        best.owner = 0  # a Connection's peer: nobody tells us when it is gone
    memoryview(best.mm)[PAGE : PAGE + n] = view
    return best.fd


class PeerMaps:
    """The receiving side of ``lend``, one per Connection: the peer's slots, mapped once.

    A slot's memfd arrives with every message (SCM_RIGHTS gives a new fd number each
    time), so the mapping is found again by the memfd's inode, which cannot be reused
    while we hold the mapping. At most ``_PEER_MAPS`` mappings are kept (least recently
    used goes first), and one whose sender retired it (byte 1) is dropped at the next
    look, so a receiver never pins more than a few of its peer's slots.
    """

    def __init__(self) -> None:
        self._maps: OrderedDict[int, mmap.mmap] = OrderedDict()

    def take(self, fd: int, nbytes: int) -> bytes:
        """The ``nbytes`` of the slot behind ``fd`` as bytes (one memcpy); closes ``fd``."""
        try:
            st = os.fstat(fd)
            mm = self._maps.get(st.st_ino)
            if mm is None or len(mm) < PAGE + nbytes:
                if st.st_size < PAGE + nbytes:
                    raise ValueError("shared buffer is shorter than the frame says")
                if mm is not None:
                    mm.close()
                mm = mmap.mmap(fd, st.st_size)
                self._maps[st.st_ino] = mm
                while len(self._maps) > _PEER_MAPS:
                    self._maps.popitem(last=False)[1].close()
            else:
                self._maps.move_to_end(st.st_ino)
        finally:
            os.close(fd)
        with memoryview(mm) as whole:
            out = bytes(whole[PAGE : PAGE + nbytes])
        mm[0] = 0  # the copy is done: the sender may refill this slot
        for key in [k for k, m in self._maps.items() if m[1]]:
            self._maps.pop(key).close()
        return out

    def close(self) -> None:
        maps, self._maps = self._maps, OrderedDict()
        for mm in maps.values():
            mm.close()


class _Mapping(mmap.mmap):
    """The receiver's mapping; when the last view of it goes, the sender may reuse the memfd."""

    def __del__(self) -> None:
        try:
            if not self.closed:
                self[0] = 0
        except (ValueError, IndexError, OSError):
            pass


def _release(mm: mmap.mmap) -> None:
    """A lease's finalizer: the receiver is done with the data, the sender may refill the slot."""
    try:
        if not mm.closed:
            mm[0] = 0
    except (ValueError, IndexError, OSError):
        pass


class _Received:
    """The receiving side of ``export``: this process's mappings of peers' pooled slots.

    Keyed by the memfd's (device, inode), which cannot be reused while the mapping
    holds the memfd. An entry is only dropped from here, never closed: a live lease
    keeps its mapping (and the finalizer that clears the busy byte) until it goes.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.maps: OrderedDict[tuple[int, int], tuple[mmap.mmap, list[float]]] = OrderedDict()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.maps = OrderedDict()

    def mapping(self, fd: int, size: int) -> mmap.mmap:
        """The cached mapping of the slot behind ``fd`` (made on first sight)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        now = time.monotonic()
        with self.lock:
            for k, (m, used) in list(self.maps.items()):
                if k != key and (m[1] or now - used[0] > _IDLE):
                    del self.maps[k]  # retired by its sender, or idle: let it go
            entry = self.maps.get(key)
            if entry is None:
                # No MAP_POPULATE: filling 512 MiB of page-table entries costs as much as
                # the copy did, and a receiver that reads part of the array pays for that part.
                entry = (mmap.mmap(fd, size, flags=mmap.MAP_SHARED), [now])
                self.maps[key] = entry
                while len(self.maps) > _RECV_MAPS:
                    self.maps.popitem(last=False)
            else:
                entry[1][0] = now
                self.maps.move_to_end(key)
            return entry[0]

    def clear(self) -> None:
        with self.lock:
            self.maps.clear()


_received = _Received()
os.register_at_fork(after_in_child=_received.after_fork_in_child)


def import_buffer(fd: int, nbytes: int) -> memoryview:
    """Map a memfd sent by ``export``; takes ownership of ``fd``. A writable view of ``nbytes``.

    A pooled slot is leased from the mapping this process keeps of it (``_Received``);
    a one-off memfd is mapped for this transfer and unmapped with its last view.
    """
    try:
        size = os.fstat(fd).st_size
        if size < PAGE + nbytes:
            raise ValueError("shared buffer is shorter than the frame says")
        if os.pread(fd, 1, 0) != bytes((_POOLED,)) or nbytes == 0:
            mm = _Mapping(fd, PAGE + nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            return memoryview(mm)[PAGE : PAGE + nbytes]
        shared = _received.mapping(fd, size)
    finally:
        os.close(fd)
    import ctypes  # only here: a process that never receives a big buffer never loads it

    lease = (ctypes.c_ubyte * nbytes).from_buffer(shared, PAGE)
    weakref.finalize(lease, _release, shared)
    return memoryview(lease).cast("B")


def trim() -> None:
    """Drop every free pooled memfd now, and the mappings kept of peers' slots (their
    memory goes back to the system once the last view of each is gone)."""
    _received.clear()
    with _pool.lock:
        keep = []
        for s in _pool.slots:
            if s.busy():
                keep.append(s)
            else:
                s.close()
        _pool.slots = keep


def forget(owner: int) -> None:
    """The receiver ``owner`` (as given to ``export``) is gone for good: retire the slots
    it still holds busy, which only it could have freed.

    Called for a pool worker that died (killed mid-task, or by ``terminate``) with
    big arguments in flight: each would otherwise stay busy, holding its memory and
    one of the ``_POOL_SLOTS``, until this process ends. A busy slot's ``owner`` is
    always its latest receiver (``export`` sets it each time), so a slot that went
    on to another receiver is left alone.
    """
    if not owner:
        return
    with _pool.lock:
        gone = [s for s in _pool.slots if s.owner == owner and s.busy()]
        if gone:
            _pool.slots = [s for s in _pool.slots if s not in gone]
    for s in gone:
        s.close()  # marks it retired: a mapping kept of it lets go at its next look


def encode_frame(
    body: bytes,
    buffers: list[memoryview],
    fds: list[int],
    encode_header: Any,
    kind: Any,
    owner: int = 0,
) -> tuple[list[Any], list[int], list[int]]:
    """A PICKLE frame whose big buffers ride in memfds: (parts to write, fds to pass, fds to
    close once written). The wire convention ``Connection.recv`` understands:

    a shared buffer has length 0 in the frame's length table, its memfd follows the
    message's own fds (in buffer order), and its real length is an 8-byte marker
    after the inline buffers. A genuinely empty out-of-band buffer disables it.
    The pool engine can use this for task arguments exactly as ``Connection.send`` does,
    naming the worker as ``owner`` (``export``).
    """
    if all(b.nbytes < THRESHOLD for b in buffers) or any(b.nbytes == 0 for b in buffers):
        head = encode_header(kind, len(body), [b.nbytes for b in buffers], nfds=len(fds))
        return [head, body, *buffers], list(fds), []
    lengths: list[int] = []
    inline: list[memoryview] = []
    markers: list[bytes] = []
    extra: list[int] = []
    to_close: list[int] = []
    try:
        for b in buffers:
            if b.nbytes >= THRESHOLD:
                fd, close = export(b, owner)
                extra.append(fd)
                if close:
                    to_close.append(fd)
                lengths.append(0)
                markers.append(size_marker(b))
            else:
                lengths.append(b.nbytes)
                inline.append(b)
    except BaseException:
        for fd in to_close:
            os.close(fd)
        raise
    head = encode_header(kind, len(body), lengths, nfds=len(fds) + len(extra))
    return [head, body, *inline, *markers], [*fds, *extra], to_close
