"""One worker as the engine sees it, and the non-blocking write half of its channel.

::

    engine ── queue(msg) ──► Outbox (_transport): parts and fds ── flush() ──► socket
                              (pickled once: header + body + out-of-band buffers)
                 full ──► register EVENT_WRITE; the engine calls flush() when writable

Writes go through an ``Outbox`` on a dup of the channel's socket, so the engine
never blocks on a worker (and never deadlocks with one writing a large result);
reads stay with the ``Connection`` (blocking, frame by frame). Frames are the
foundation's (``_protocol.framing``), so the worker reads them with
``Connection.recv``. fds (SCM_RIGHTS) ride on the first byte of their frame.
This module makes frames; it never touches the socket itself.
"""

from __future__ import annotations

import _socket
import enum
import os
import pickle
import select
import selectors
from typing import Any

from .._protocol.framing import HEADER, MAGIC, Kind, encode_header
from .._serialize import fd_handle
from .._shm import bulk
from .._transport import Outbox, Stream, UnixStream
from .worker import ThreadWorker

__all__ = ["Handle", "Tag", "packed", "pickle_buffer", "close_unused", "ARMED", "LEADING"]

_COALESCE = 1 << 14  # smaller bodies are joined to their header: one syscall part
_HEAD = HEADER.pack
ARMED, LEADING = 1, 2  # ``Handle.led``: a caller, not the engine, reads the channel
_PICKLE = int(Kind.PICKLE)


class Tag(enum.IntEnum):
    """What a key in the engine's selector watches: ``(Tag, Handle)`` is its data."""

    CHANNEL = 0  # a worker's channel: readable (results), writable (a send that did not fit)
    SENTINEL = 1  # a worker's process sentinel: it died
    TEMPLATE = 2  # a pool template's boot socket: the spare a standby waits for (standby.py)


class Handle:
    """One worker as the engine sees it: its process (or thread) and its channel."""

    __slots__ = (
        "wid",
        "proc",
        "conn",
        "_sock",
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
        "busy",
        "journal",
        "partial",
        "partial_bid",
        "_poll",
        "_lead_fd",
        "lead_poll",
    )

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.proc: Any = None
        self.conn: Any = None  # Connection: engine reads here
        self._sock: _socket.socket | None = None  # a dup of it: non-blocking writes (``out``)
        # The fd the selector watches: the dup's, never the Connection's. A Connection
        # closes itself on a torn frame; had its fd been the registered one, the epoll
        # entry would outlive it (the dup keeps the socket open) and the fd number,
        # reused by the next worker's pipe, would already be taken in the selector.
        self.fd = -1
        self.out: Outbox | None = None  # writes to ``sock``, while it is set
        self.fids: set[int] = set()  # functions this worker has cached
        self.name = f"worker {wid}"
        self.pid: int | None = None
        self.peak: int | None = None
        self.writing = False
        self.thread: ThreadWorker | None = None
        # Who reads the channel: the engine (0), or a caller (``fastpath.lead``) that sent
        # its task directly, ARMED (the engine's selector no longer watches it) until that
        # caller claims it, LEADING while it waits on it and reads it.
        self.led = 0
        self.watched = 0  # the events the engine's selector has for the channel
        # Whether an answer may come: the worker is starting (READY) or has batches in
        # flight. An idle worker sends nothing (its death is its sentinel's business), so
        # its channel is not watched: a caller that sends it one task and reads the answer
        # itself (``fastpath.lead``) then costs the selector nothing (no epoll_ctl).
        self.busy = True
        self._poll: Any = None
        # A leading caller's own dup of the channel and a poll on it (``lead_poller``):
        # made at the first lead, kept until the channel closes, so a lead costs no
        # dup, no close and no new poll object.
        self._lead_fd = -1
        self.lead_poll: Any = None  # the bound ``poll`` of that poll object
        self.journal: Any = None  # the worker's commit journal (``journal.JournalReader``)
        self.partial: list[Any] = []  # results of the head batch that came in PARTIAL messages
        self.partial_bid = 0

    @property
    def sock(self) -> _socket.socket | None:
        """The engine's dup of the channel's socket; setting it makes the writer, None drops it."""
        return self._sock

    @sock.setter
    def sock(self, sock: _socket.socket | None) -> None:
        self._sock = sock
        if sock is None:
            if self.out is not None:
                self.out.drop()
            self.out = None
        else:
            self.attach(UnixStream.over(sock))

    def attach(self, stream: Stream) -> None:
        """Write through ``stream`` from now on (the socket's dup; a memory stream in tests)."""
        self.out = Outbox(stream)

    def readable(self) -> bool:
        """Bytes (or end-of-file) waiting on the channel right now? One ``poll``, no wait."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
        return bool(self._poll.poll(0))

    def lead_poller(self) -> Any:
        """``poll(ms)`` on a dup of the channel that only a leading caller uses (``lead``).

        A dup of its own: the engine may close the channel while the caller waits in
        ``poll`` (the worker died), and a closed fd's number may be reused at once. The
        dup is closed by ``close_lead``, by whoever is last: the engine when nobody
        leads, else the leader when it gives the channel back.
        """
        poll = self.lead_poll
        if poll is None:
            self._lead_fd = os.dup(self.fd)
            p = select.poll()
            p.register(self._lead_fd, select.POLLIN)
            poll = self.lead_poll = p.poll
        return poll

    def close_lead(self) -> None:
        """Close the leader's dup (``lead_poller``); idempotent."""
        fd, self._lead_fd, self.lead_poll = self._lead_fd, -1, None
        if fd >= 0:
            os.close(fd)

    def watch(self, sel: selectors.BaseSelector) -> None:
        """Bring the selector's registration of the channel in line with our state."""
        want = (selectors.EVENT_READ if self.busy and not self.led else 0) | (
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
        out = self.out
        if out is None:
            return 0
        p = serializer.dumps(msg, what="task arguments")
        if any(b.nbytes >= bulk.THRESHOLD for b in p.buffers):
            # Big arguments cross as memfds the worker maps (one memcpy, as Connection.send),
            # tagged with this Handle: a worker that dies holding one cannot free it, so
            # closing the channel retires it (``drop_output``).
            parts, fds, to_close = bulk.encode_frame(
                p.body, p.buffers, p.fds, encode_header, Kind.PICKLE, id(self)
            )
            out.push(parts[0], fds, to_close)
            for part in parts[1:]:
                view = memoryview(part)
                out.push(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
        else:
            head = encode_header(
                Kind.PICKLE, len(p.body), [b.nbytes for b in p.buffers], nfds=len(p.fds)
            )
            if len(p.body) < _COALESCE:
                out.push(head + p.body, p.fds)
            else:
                out.push(head, p.fds)
                out.push(p.body)
            for b in p.buffers:
                out.push(b.cast("B") if b.format != "B" or b.ndim != 1 else b)
        if not self.writing:
            self.flush(sel)
        return int(p.nbytes)

    def queue_plain(self, body: bytes, sel: selectors.BaseSelector) -> int:
        """Queue a message already pickled (small, no buffers, no fds) and write it now."""
        out = self.out
        if out is None:
            return 0
        frame = _HEAD(MAGIC, _PICKLE, 0, 0, len(body)) + body
        if self.writing:
            out.push(frame)  # behind what waits for writability: the engine flushes it
            return len(body)
        try:
            # Nothing queued (not writing): straight to the socket, in one call.
            wants = out.write(frame)
        except OSError:
            wants = False  # the worker is gone (the queue is dropped); its sentinel tells the rest
        if wants:
            self.writing = True
            self.watch(sel)
        return len(body)

    def drop_output(self) -> None:
        """Forget what was queued for a worker that is gone (closing memfds it held), and
        retire the pooled memfds it was sent and can no longer free (``bulk.forget``).

        ``id(self)`` is the slots' owner tag: this Handle is alive until here, and a
        slot tagged by an earlier Handle with the same id was either retired then or
        was free, and a free slot is re-tagged by the ``export`` that takes it."""
        if self.out is not None:
            self.out.drop()
        bulk.forget(id(self))

    def flush(self, sel: selectors.BaseSelector) -> None:
        """Write what fits; watch for writability while something is left."""
        out = self.out
        if out is None:
            return
        try:
            wants = out.flush()
        except OSError:
            wants = False  # the worker is gone (the queue is dropped); its sentinel tells the rest
        if wants != self.writing:
            self.writing = wants
            self.watch(sel)


def close_unused(ours: Any, theirs: Any, jfd: int | None) -> None:
    """A new worker's channel ends and journal fd, when no worker came to use them (its
    start failed, or a standby worker was never promoted)."""
    ours.close()
    theirs.close()
    if jfd is not None:
        os.close(jfd)


def pickle_buffer(view: memoryview) -> Any:
    """A buffer that pickles out of band (protocol 5) when nested in a message."""
    return pickle.PickleBuffer(view)


def packed(blob: Any) -> Any:
    """A single task's pre-pickled payload, ready to nest in a TASKS message."""
    if type(blob) is bytes:
        return blob
    body, buffers, fds = blob
    return (body, [pickle_buffer(b) for b in buffers], [fd_handle(f) for f in fds])
