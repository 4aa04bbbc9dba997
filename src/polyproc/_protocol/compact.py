"""The manager's compact frame: sans-IO, bytes in and ``(op, body)`` frames out.

A frame is ``length:u32 op:u8`` (little endian) followed by ``length`` bytes of
body. Bodies of CALL/RESULT/... are pickle-5 streams of small tuples; AUTH
bodies are ``auth`` frames (never unpickled)::

    client thread                               server (loop thread, or a connection's worker)
    -------------                               --------------------------------------------
    [DECREF (ids)]  CALL (id, method, args, kw) --> decode -> objects[id].method(...)
                    <-- RESULT value | ERROR exc | PROXY (id, exposed) | FAULT text

Why not ``framing``'s 16-byte frame: a manager call is latency bound (two frames
per round trip); a 5-byte header parsed with one ``unpack_from`` and a whole frame
read with one ``recv`` keep the per-call cost at a few microseconds. The one
invariant that matters for safety is the same: ``length`` and ``op`` are checked
against the reader's ``max_size`` *before* any body byte is buffered, so a peer
that has not authenticated can make us hold at most ``auth.MAX_AUTH_FRAME`` bytes.

``FrameDecoder`` is the parsing (for the gate's non-blocking handshakes, the
serving loop, and property tests); ``_manager.wire.FrameSocket`` is the blocking
reader the clients use, on the same ``HEADER`` and ``check``.
"""

from __future__ import annotations

import enum
import struct

from ..errors import ProtocolError

__all__ = ["Op", "OPS", "HEADER", "MAX_FRAME", "FrameDecoder", "check", "encode"]

HEADER = struct.Struct("<IB")
_HDR = HEADER.size
#: The largest frame an authenticated peer may send (u32 is the hard limit).
MAX_FRAME = (1 << 32) - 1

_NO_LIMIT = 1 << 62  # feed_frames(): no cap on how many frames one read returns


class Op(enum.IntEnum):
    """Every message kind on a manager connection (requests, then replies)."""

    AUTH = 1  #: a handshake frame (``_protocol.auth``): bytes, never unpickled
    CALL = 2  #: (ident, method, args, kwargs) -> RESULT/ERROR/PROXY/FAULT
    CALL_INCREF = 3  #: CALL that first takes a reference (a proxy's first call in this process)
    CREATE = 4  #: (typeid, args, kwargs) -> PROXY
    DECREF = 5  #: (ident, ...) -> no reply; batched in front of the next request
    PING = 6  #: () -> RESULT None; ``connect()`` uses it
    SHUTDOWN = 7  #: () -> RESULT None, then the server stops
    STATS = 8  #: () -> RESULT {"objects": n, "connections": n, "rejected": n}
    CALL_ASYNC = 9  #: CALL whose result nobody waits for (list.append, d[k] = v): no reply
    #: A plain client's first frame, ignored by a plain server. A TLS server takes it for a
    #: bad TLS record and hangs up at once, so a client that forgot ``ssl_context`` learns
    #: it now, not when the server's handshake deadline passes (both would wait to be spoken to).
    HELLO = 10
    RESULT = 16  #: the value
    ERROR = 17  #: an exception raised by the method: re-raised as is
    PROXY = 18  #: (ident, typeid, exposed): the result lives on the server
    FAULT = 19  #: the server could not do what was asked: RemoteError(text)
    ASYNC_ERROR = 20  #: an earlier CALL_ASYNC failed (text); sent before the next reply


#: Every op as a plain int: ``op in OPS`` is the cheap test a hot loop makes before ``check``.
OPS = frozenset(int(o) for o in Op)


def check(length: int, op: int, max_size: int) -> None:
    """``ProtocolError`` for an unknown op or a length over ``max_size`` (before any body)."""
    if op not in OPS:
        raise ProtocolError(f"garbage on a manager connection: unknown op {op}")
    if length > max_size:
        raise ProtocolError(f"bad message length: {length} bytes exceeds the limit of {max_size}")


class FrameDecoder:
    """Sans-IO: ``feed(bytes)`` then ``next_frame()``/``frames()``. Validates each header first."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes; parse after each feed (parsing validates, so the buffer stays bounded)."""
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> tuple[int, bytes] | None:
        got = self.frames(limit=1)
        return got[0] if got else None

    def frames(self, limit: int = 1 << 30) -> list[tuple[int, bytes]]:
        """Every whole frame buffered (up to ``limit``), oldest first.

        Parses by offset and compacts once: a read holding a thousand small
        frames costs one memmove, not a thousand.
        """
        buf = self._buf
        out, pos = self._scan(buf, limit)
        if pos:
            del buf[:pos]
        if len(out) < limit:
            self._check_partial(buf, 0)
        return out

    def feed_frames(self, data: memoryview) -> list[tuple[int, bytes]]:
        """``feed(data)`` then ``frames()``, copying each body once when nothing was buffered."""
        if self._buf:
            self._buf += data
            return self.frames()
        out, pos = self._scan(data, _NO_LIMIT)  # bodies copied straight out of ``data``
        if pos < len(data):
            self._buf += data[pos:]
            self._check_partial(data, pos)
        return out

    def _scan(
        self, data: bytearray | memoryview, limit: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """The whole frames at the start of ``data`` (at most ``limit``) and where they end."""
        out: list[tuple[int, bytes]] = []
        pos, end, max_size, unpack = 0, len(data), self.max_size, HEADER.unpack_from
        while end - pos >= _HDR and len(out) < limit:
            length, op = unpack(data, pos)
            if op not in OPS or length > max_size:  # ``check`` inlined: once per frame
                check(length, op, max_size)
            stop = pos + _HDR + length
            if stop > end:
                break
            out.append((op, bytes(data[pos + _HDR : stop])))
            pos = stop
        return out, pos

    def _check_partial(self, data: bytearray | memoryview, pos: int) -> None:
        """An incomplete frame at ``pos``: check its header now, before its body is buffered."""
        if len(data) - pos >= _HDR:
            length, op = HEADER.unpack_from(data, pos)
            check(length, op, self.max_size)

    def leftover(self) -> bytes:
        """Bytes after the last whole frame (a pipelined first request)."""
        return bytes(self._buf)


def encode(op: int, body: bytes) -> bytes:
    """One whole frame."""
    return HEADER.pack(len(body), op) + body
