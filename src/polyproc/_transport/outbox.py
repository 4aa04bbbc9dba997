"""The one non-blocking writer: queue parts (and fds), flush what fits, say when it wants more.

::

    owner ── push(data, fds, close) ──► out: deque of (part, fds, close-after-send)
                                        flush(): one gathered write per run of parts
                                                 (fds: their part's first byte, alone)
                                          ├─ all written  ─► False
                                          ├─ kernel full  ─► True: wait for EVENT_WRITE, flush again
                                          └─ peer gone    ─► queue dropped (memfds closed),
                                                             BrokenResourceError

Used by the pool's channels (``_pool/channel.py``: one per worker, flushed by the
engine), the manager's serving loop (``_manager/loop.py``: replies) and its gate
(``_manager/gate.py``: handshake frames). Each owner decides what "wants write" means
for its selector; the Outbox only writes, so it works on any ``Stream`` (a Unix,
TCP or TLS socket, a non-blocking pipe, or ``memory.MemoryStream`` in tests).

Not thread-safe: the owner serialises ``push`` and ``flush`` (the manager loop holds a
per-connection lock between its thread and a connection's worker).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from .fds import close_fds
from .stream import Stream

__all__ = ["Outbox"]

_IOV_MAX = 1024
_NONE: tuple[int, ...] = ()


class Outbox:
    """A queue of byte parts for one stream, written without ever blocking.

    A part is ``bytes``, ``bytearray`` or a byte-format (``"B"``) memoryview: its
    ``len`` is its size. ``close`` fds are closed once the part that carries them
    is in the kernel (which then holds its own references), or when the queue is
    dropped.
    """

    __slots__ = ("out", "_write")

    def __init__(self, stream: Stream) -> None:
        self.out: deque[tuple[Any, Sequence[int], Sequence[int]]] = deque()
        self._write = stream.write_some

    def __bool__(self) -> bool:
        return bool(self.out)

    def push(self, data: Any, fds: Sequence[int] = _NONE, close: Sequence[int] = _NONE) -> None:
        """Queue one part (``fds`` ride on its first byte); nothing is written yet."""
        self.out.append((data, fds, close))

    def write(self, data: Any) -> bool:
        """``push(data)`` then ``flush()``, in one call when nothing is queued (the common
        case of a server's one reply per request): the part goes straight to the kernel.

        True while something is left (wait for writability); errors as ``flush``.
        """
        if self.out:
            self.out.append((data, _NONE, _NONE))
            return self.flush()
        try:
            n = self._write([data])
        except OSError:
            self.drop()
            raise
        if n == len(data):
            return False
        self.out.append((memoryview(data)[n:] if n else data, _NONE, _NONE))
        return True

    def flush(self) -> bool:
        """Write what fits now; True while something is left (wait for writability).

        ``BrokenResourceError`` (or another ``OSError``) when the peer is gone: the
        queue is dropped first, so nothing is retried and no fd leaks.
        """
        out, write = self.out, self._write
        try:
            while out:
                data, fds, close = out[0]
                if fds:
                    n = write([data], fds)
                    if not n:
                        return True
                    close_fds(close)  # the kernel holds its own references now
                    out[0] = (memoryview(data)[n:], _NONE, _NONE)
                    if n == len(data):
                        out.popleft()
                    continue
                parts = [data]
                if len(out) > 1:
                    for i in range(1, min(len(out), _IOV_MAX)):
                        entry = out[i]
                        if entry[1]:
                            break  # fds ride on the first byte of their own write
                        parts.append(entry[0])
                n = write(parts)
                if not n and len(data):
                    return True  # the kernel's buffer is full
                while out:
                    head = out[0][0]
                    size = len(head)
                    if n < size:
                        if n:
                            out[0] = (memoryview(head)[n:], _NONE, out[0][2])
                        break
                    n -= size
                    done = out.popleft()[2]
                    if done:
                        close_fds(done)  # a part's own fds to close once it is sent
        except OSError:
            self.drop()
            raise
        return False

    def drop(self) -> None:
        """Forget everything queued (the peer is gone), closing the fds parts were to carry."""
        for _, _, close in self.out:
            close_fds(close)
        self.out.clear()
