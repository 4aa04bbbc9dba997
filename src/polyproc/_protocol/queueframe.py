"""A Queue item's frame in its pipe: sans-IO, bytes in and lengths out.

::

    +-------------+----------+------+
    | body length | nbuffers | nfds |   16 bytes, little endian: u64, u32, u32
    +-------------+----------+------+
    | buffer lengths: nbuffers x u64 (bit 63: the bytes are in the next memfd)
    | body | inline buffers ...

Why not ``framing``'s header: a Queue's pipe is shared by many writers and readers
under two locks, and its fds cross on a side socket after the frame
(``_queues``), so it needs no magic or kind; a plain item is one ``pack`` and one
write. The reader trusts the frame (only processes holding the queue can write).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["HEAD", "LENGTH", "plain", "head", "decode_length"]

HEAD = struct.Struct("<QII")  # body length, number of buffers, number of fds (``HEAD.unpack``)
LENGTH = struct.Struct("<Q")
_SHARED_BIT = 1 << 63  # a buffer length with this bit: its bytes are in the next memfd


def plain(body: bytes) -> bytes:
    """The whole frame of an item with no buffers and no fds."""
    return HEAD.pack(len(body), 0, 0) + body


def head(body_length: int, buffers: Sequence[tuple[int, bool]], nfds: int) -> bytes:
    """Header and length table: ``buffers`` is ``(nbytes, shared)`` per out-of-band buffer."""
    return HEAD.pack(body_length, len(buffers), nfds) + b"".join(
        LENGTH.pack(n | _SHARED_BIT if shared else n) for n, shared in buffers
    )


def decode_length(data: bytes) -> tuple[int, bool]:
    """``(nbytes, shared)`` of one buffer from its 8-byte length."""
    (n,) = LENGTH.unpack(data)
    return n & ~_SHARED_BIT, bool(n & _SHARED_BIT)
