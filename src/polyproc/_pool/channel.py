"""One worker as the engine sees it, and the non-blocking write half of its channel.

::

    engine ── queue(msg) ──► out: deque of (memoryview, fds) ── flush() ──► socket
                              (pickled once: header + body + out-of-band buffers)
                 EAGAIN ──► register EVENT_WRITE; the engine calls flush() when writable

Writes use ``sendmsg(..., MSG_DONTWAIT)`` on a dup of the channel's socket, so the
engine never blocks on a worker (and never deadlocks with one writing a large
result); reads stay with the ``Connection`` (blocking, frame by frame). Frames are
the foundation's (``_protocol.framing``), so the worker reads them with
``Connection.recv``. fds (SCM_RIGHTS) ride on the first byte of their frame.
"""

from __future__ import annotations

import array
import enum
import os
import pickle
import select
import selectors
import socket
from collections import deque
from typing import Any

from .._protocol.framing import Kind, encode_header
from .._serialize import fd_handle
from .._shm import bulk
from .worker import ThreadWorker

__all__ = ["Handle", "Tag", "packed", "pickle_buffer"]

_IOV_MAX = 1024
_COALESCE = 1 << 14  # smaller bodies are joined to their header: one syscall part


class Tag(enum.IntEnum):
    """What a key in the engine's selector watches: ``(Tag, Handle)`` is its data."""

    CHANNEL = 0  # a worker's channel: readable (results), writable (a send that did not fit)
    SENTINEL = 1  # a worker's process sentinel: it died


class Handle:
    """One worker as the engine sees it: its process (or thread) and its channel."""

    __slots__ = (
        "wid",
        "proc",
        "conn",
        "sock",
        "fd",
        "out",
        "fids",
        "name",
        "pid",
        "peak",
        "writing",
        "thread",
        "led",
        "watched",
        "journal",
        "partial",
        "partial_bid",
        "_poll",
    )

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.proc: Any = None
        self.conn: Any = None  # Connection: engine reads here
        self.sock: socket.socket | None = None  # a dup of it: non-blocking writes
        # The fd the selector watches: the dup's, never the Connection's. A Connection
        # closes itself on a torn frame; had its fd been the registered one, the epoll
        # entry would outlive it (the dup keeps the socket open) and the fd number,
        # reused by the next worker's pipe, would already be taken in the selector.
        self.fd = -1
        self.out: deque[tuple[memoryview, list[int], list[int]]] = deque()  # view, fds, close
        self.fids: set[int] = set()  # functions this worker has cached
        self.name = f"worker {wid}"
        self.pid: int | None = None
        self.peak: int | None = None
        self.writing = False
        self.thread: ThreadWorker | None = None
        self.led = False  # a waiting caller reads this channel (``lead``), not the engine
        self.watched = 0  # the events the engine's selector has for the channel
        self._poll: Any = None
        self.journal: Any = None  # the worker's commit journal (``journal.JournalReader``)
        self.partial: list[Any] = []  # results of the head batch that came in PARTIAL messages
        self.partial_bid = 0

    def readable(self) -> bool:
        """Bytes (or end-of-file) waiting on the channel right now? One ``poll``, no wait."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
        return bool(self._poll.poll(0))

    def watch(self, sel: selectors.BaseSelector) -> None:
        """Bring the selector's registration of the channel in line with our state."""
        want = (0 if self.led else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if self.writing else 0
        )
        if want == self.watched:
            return
        fd = self.fd
        if fd < 0:
            return
        if not want:
            sel.unregister(fd)
        elif self.watched:
            sel.modify(fd, want, (Tag.CHANNEL, self))
        else:
            sel.register(fd, want, (Tag.CHANNEL, self))
        self.watched = want

    def queue(self, msg: tuple[Any, ...], serializer: Any, sel: selectors.BaseSelector) -> int:
        """Queue one message for a worker and write what fits now; its size in bytes."""
        if self.sock is None:
            return 0
        p = serializer.dumps(msg, what="task arguments")
        if any(b.nbytes >= bulk.THRESHOLD for b in p.buffers):
            # Big arguments cross as memfds the worker maps (one memcpy, as Connection.send).
            parts, fds, to_close = bulk.encode_frame(
                p.body, p.buffers, p.fds, encode_header, Kind.PICKLE
            )
            self.out.append((memoryview(parts[0]), fds, to_close))
            for part in parts[1:]:
                view = memoryview(part)
                self.out.append((view.cast("B") if view.format != "B" else view, [], []))
        else:
            head = encode_header(
                Kind.PICKLE, len(p.body), [b.nbytes for b in p.buffers], nfds=len(p.fds)
            )
            if len(p.body) < _COALESCE:
                self.out.append((memoryview(head + p.body), list(p.fds), []))
            else:
                self.out.append((memoryview(head), list(p.fds), []))
                self.out.append((memoryview(p.body), [], []))
            for b in p.buffers:
                self.out.append((b.cast("B") if b.format != "B" else b, [], []))
        if not self.writing:
            self.flush(sel)
        return int(p.nbytes)

    def queue_plain(self, body: bytes, sel: selectors.BaseSelector) -> int:
        """Queue a message already pickled (small, no buffers, no fds) and write it now."""
        if self.sock is None:
            return 0
        self.out.append((memoryview(encode_header(Kind.PICKLE, len(body)) + body), [], []))
        if not self.writing:
            self.flush(sel)
        return len(body)

    def drop_output(self) -> None:
        """Forget what was queued for a worker that is gone (closing memfds it held)."""
        for _, _, to_close in self.out:
            _close_all(to_close)
        self.out.clear()

    def flush(self, sel: selectors.BaseSelector) -> None:
        sock, out = self.sock, self.out
        if sock is None:
            return
        try:
            while out:
                view, fds, to_close = out[0]
                if fds:
                    n = sock.sendmsg(
                        [view[:1]],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _intarray(fds))],
                        socket.MSG_DONTWAIT,
                    )
                    _close_all(to_close)  # the kernel holds its own references now
                    out[0] = (view[n:], [], [])
                    if not out[0][0].nbytes:
                        out.popleft()
                    continue
                parts = [view]
                for i in range(1, min(len(out), _IOV_MAX)):
                    if out[i][1]:
                        break  # fds ride on the first byte of their own sendmsg
                    parts.append(out[i][0])
                n = sock.sendmsg(parts, [], socket.MSG_DONTWAIT)
                while n and out:
                    v = out[0][0]
                    if n >= v.nbytes:
                        n -= v.nbytes
                        out.popleft()
                    else:
                        out[0] = (v[n:], [], [])
                        n = 0
        except BlockingIOError:
            if not self.writing:
                self.writing = True
                self.watch(sel)
            return
        except OSError:
            for _, _, to_close in out:
                _close_all(to_close)
            out.clear()  # the worker is gone; its sentinel tells the rest
        if self.writing:
            self.writing = False
            self.watch(sel)


def pickle_buffer(view: memoryview) -> Any:
    """A buffer that pickles out of band (protocol 5) when nested in a message."""
    return pickle.PickleBuffer(view)


def packed(blob: Any) -> Any:
    """A single task's pre-pickled payload, ready to nest in a TASKS message."""
    if type(blob) is bytes:
        return blob
    body, buffers, fds = blob
    return (body, [pickle_buffer(b) for b in buffers], [fd_handle(f) for f in fds])


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _intarray(fds: list[int]) -> Any:
    return array.array("i", fds)
