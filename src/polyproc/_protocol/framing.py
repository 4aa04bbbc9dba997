"""Frames on a byte stream: sans-IO, no sockets here, only bytes in and headers out.

A frame is a fixed 16-byte header, then one 8-byte length per out-of-band
buffer, then the body, then the buffers::

    +-------+------+------+----------+-------------+
    | magic | kind | nfds | nbuffers | body length |   16 bytes, little endian
    |  u16  |  u8  |  u8  |   u32    |     u64     |
    +-------+------+------+----------+-------------+
    | buffer lengths: nbuffers x u64               |
    | body                                          |
    | buffer 0 | buffer 1 | ...                     |

Invariants:

* ``magic`` is checked first: anything else is garbage, and the stream is dead
  (no resynchronisation: a stream that lied once cannot be trusted to frame).
* ``kind`` is one of ``Kind``; unknown kinds are garbage too.
* ``nfds`` fds travel with the frame's first byte (SCM_RIGHTS); the reader pairs
  them with the frame by count.
* Lengths are 64-bit, so a message of any size (past 4 GiB) frames; a reader that
  must bound memory (a server before authentication) passes ``max_size``.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from ..errors import ProtocolError

__all__ = ["Kind", "Header", "HEADER", "MAGIC", "encode_header", "decode_header"]

MAGIC = 0x5050  # "PP"
HEADER = struct.Struct("<HBBIQ")
_LEN = struct.Struct("<Q")
#: Buffers per frame; far above any real message, low enough that a hostile
#: header cannot make us allocate a huge length table.
MAX_BUFFERS = 1 << 16


class Kind(enum.IntEnum):
    """What the body of a frame is."""

    BYTES = 1  #: ``send_bytes``: raw bytes
    PICKLE = 2  #: ``send``: a pickle stream, with its buffers and fds
    RAW_BYTES = 3  #: ``send(b"...")``: a top-level bytes object, sent without pickling
    RAW_BYTEARRAY = 4  #: ``send(bytearray(...))``: likewise, rebuilt as a bytearray
    #: ``send_bytes`` of a big buffer: the body is its length (u64); the bytes wait in
    #: a memfd of the sender's pool, passed as the frame's one fd (``_shm.bulk.lend``).
    SHARED_BYTES = 5


class Header(NamedTuple):
    """One decoded frame header (a NamedTuple: no ``dataclasses`` import on the pool path)."""

    kind: Kind
    nfds: int
    nbuffers: int
    body_length: int

    @property
    def table_length(self) -> int:
        """Bytes of buffer-length table that follow the header."""
        return 8 * self.nbuffers


def encode_header(
    kind: Kind, body_length: int, buffer_lengths: list[int] | tuple[int, ...] = (), nfds: int = 0
) -> bytes:
    """Header plus buffer-length table for one frame."""
    head = HEADER.pack(MAGIC, kind, nfds, len(buffer_lengths), body_length)
    if not buffer_lengths:
        return head
    return head + b"".join(_LEN.pack(n) for n in buffer_lengths)


def decode_header(
    data: bytes | bytearray | memoryview, offset: int = 0, max_size: int | None = None
) -> Header:
    """Parse and validate the 16-byte header at ``offset``; ``ProtocolError`` on garbage."""
    magic, kind, nfds, nbuffers, length = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise ProtocolError(f"garbage on the wire: bad frame magic 0x{magic:04x}")
    try:
        k = Kind(kind)
    except ValueError:
        raise ProtocolError(f"garbage on the wire: unknown frame kind {kind}") from None
    if nbuffers > MAX_BUFFERS or (nbuffers and k is not Kind.PICKLE):
        raise ProtocolError(f"garbage on the wire: {nbuffers} buffers in a {k.name} frame")
    if max_size is not None and length > max_size:
        raise ProtocolError(f"bad message length: {length} bytes exceeds the limit of {max_size}")
    return Header(k, nfds, nbuffers, length)


def decode_lengths(
    data: bytes | bytearray | memoryview, offset: int, count: int, max_size: int | None = None
) -> list[int]:
    """The buffer-length table that follows a header."""
    lengths = [_LEN.unpack_from(data, offset + 8 * i)[0] for i in range(count)]
    if max_size is not None and sum(lengths) > max_size:
        raise ProtocolError(f"bad message length: buffers exceed the limit of {max_size}")
    return lengths
