"""An in-memory transport: two connected streams in one process, for tests.

``memory_pair()`` gives two ``MemoryStream`` ends with the interface of the real
streams (``read_into``, ``read_some``, ``write_all``, ``write_some``, ``take_fds``,
``close``, ``fd`` ...), so the layers above (a ``Connection``, an ``Outbox``, the
manager's serving loop) run over it unchanged, with no process and no socket::

    end A ──write──► [bytes, fds] ──read──► end B      (and the same the other way)
                      eventfd: readable while bytes wait or the writer has closed

* ``fd`` is an eventfd, readable exactly while there is something to read (or the
  peer closed): it can sit in ``select``/``epoll`` beside real sockets.
* ``capacity`` bounds what one direction holds, so a test can fill it and watch
  ``write_some`` return 0 and an ``Outbox`` ask for writability.
* fds sent are duplicated, as SCM_RIGHTS would: the receiver owns what it takes.
* A write to an end whose reader closed raises ``BrokenResourceError``; a read
  after the writer closed (and the bytes ran out) returns 0 (end of stream).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..errors import BrokenResourceError, ClosedResourceError
from .fds import close_fds
from .stream import Stream

__all__ = ["MemoryStream", "memory_pair"]


class _Direction:
    """Bytes (and fds) on their way from one end to the other."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray()
        self.fds: deque[int] = deque()
        self.capacity = capacity
        self.writer_closed = False
        self.reader_closed = False
        self.cond = threading.Condition(threading.Lock())
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def signal(self) -> None:
        if self.efd >= 0:  # -1 once its reader closed
            os.eventfd_write(self.efd, 1)

    def unsignal(self) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass


class MemoryStream(Stream):
    """One end of ``memory_pair()``: reads ``inbound``, writes ``outbound``."""

    supports_fds = True

    def __init__(self, inbound: _Direction, outbound: _Direction) -> None:
        super().__init__(inbound.efd)
        self._in, self._out = inbound, outbound
        self._blocking = True

    def setblocking(self, flag: bool) -> None:
        """Non-blocking: reads raise ``BlockingIOError`` instead of waiting (as a socket's)."""
        self._blocking = flag

    # -- reading ------------------------------------------------------------------
    def read_into(self, view: memoryview, flags: int = 0) -> int:
        d = self._in
        with d.cond:
            while not d.buf and not d.writer_closed:
                if self.fd < 0:
                    raise ClosedResourceError(errno.EBADF, "stream is closed")
                if not self._blocking:
                    raise BlockingIOError(errno.EAGAIN, "nothing to read")
                d.cond.wait()
            n = min(len(view), len(d.buf))
            view[:n] = d.buf[:n]
            del d.buf[:n]
            if not d.buf and not d.writer_closed:
                d.unsignal()
            d.cond.notify_all()  # room for a writer waiting on capacity
            return n

    def read_some(self, n: int) -> bytes:
        view = memoryview(bytearray(n))
        got = self.read_into(view)
        return bytes(view[:got])

    def take_fds(self, count: int) -> list[int]:
        d = self._in
        with d.cond:
            if count > len(d.fds):
                raise BrokenResourceError(errno.EPROTO, "frame promised fds that did not arrive")
            return [d.fds.popleft() for _ in range(count)]

    # -- writing ------------------------------------------------------------------
    def _put(self, parts: Sequence[Any], fds: Sequence[int], wait: bool) -> int:
        d = self._out
        data = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
        with d.cond:
            written = 0
            while True:
                if d.reader_closed:
                    raise BrokenResourceError(errno.EPIPE, "peer went away: the reader closed")
                room = d.capacity - len(d.buf)
                take = min(room, len(data) - written)
                if take > 0 or not data:
                    if fds:
                        d.fds.extend(os.dup(fd) for fd in fds)
                        fds = ()
                    d.buf += data[written : written + take]
                    written += take
                    d.signal()
                    d.cond.notify_all()
                if written == len(data) or not wait:
                    return written
                d.cond.wait()

    def write_some(self, parts: list[Any], fds: Sequence[int] = ()) -> int:
        return self._put(parts, fds, False)

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], fds: Sequence[int] = ()
    ) -> None:
        self._put(parts, fds, True)

    def write_one(self, data: bytes) -> None:
        self._put([data], (), True)

    def write_pair(self, head: bytes, body: Any) -> None:
        self._put([head, body], (), True)

    # -- ending -------------------------------------------------------------------
    def close(self) -> None:
        if self.fd < 0:
            return
        self.fd = -1
        d = self._in
        with d.cond:
            d.reader_closed = True
            close_fds(list(d.fds))
            d.fds.clear()
            d.cond.notify_all()
            os.close(d.efd)
            d.efd = -1
        out = self._out
        with out.cond:
            out.writer_closed = True
            out.signal()  # the peer's reader wakes to see the end
            out.cond.notify_all()

    def detach(self) -> int:
        raise ClosedResourceError(errno.EBADF, "an in-memory stream has no fd to detach")


def memory_pair(capacity: int = 1 << 20) -> tuple[MemoryStream, MemoryStream]:
    """Two connected in-process streams; each direction holds at most ``capacity`` bytes."""
    a_to_b, b_to_a = _Direction(capacity), _Direction(capacity)
    return MemoryStream(b_to_a, a_to_b), MemoryStream(a_to_b, b_to_a)
