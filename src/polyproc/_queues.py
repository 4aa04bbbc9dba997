"""Queue, JoinableQueue, SimpleQueue: a pipe of frames, semaphores in shared memory.

::

    producers (any process)                               consumers (any process)
    ───────────────────────                               ───────────────────────
    put(obj): slots.acquire (maxsize)
      pickle → frame ┬─ writer lock free, pipe has room:
                     │    write now (non-blocking), fds on the side socket,
                     │    items += 1                     get(): items.acquire(timeout)
                     └─ else: append to this process's   reader lock: read one frame
                          backlog; a feeder thread         (+ its fds), release lock
                          writes it later (in order)     slots += 1; unpickle

* ``items`` counts frames that are completely in the pipe, so a consumer that took
  one never blocks reading; ``qsize()`` is exact for what is in the pipe (the
  stdlib's counts a feeder's backlog too; ours is empty unless the pipe filled).
* Most ``put`` calls write straight into the pipe from the caller's thread: no
  feeder-thread hop, which is where the stdlib spends most of its time. The
  feeder exists only for a full pipe (so ``put`` on an unbounded queue never
  blocks) or a contended writer lock.
* Objects that own an fd (a lock, a Connection, a shared array) and big buffers
  (``_shm.bulk``: memfds) pass by SCM_RIGHTS on a side socketpair, written right
  after their frame under the writer lock, so the reader pairs them by order.
* Exit: buffered items are flushed before the process exits (``join_thread``
  semantics) unless ``cancel_join_thread()`` was called. In the main process an
  ``atexit`` hook does it; in a polyproc child the lead's exit path must call
  ``flush_all()`` (see the report / docs/shared-state.md).
"""

from __future__ import annotations

import _socket
import atexit
import collections
import errno
import os
import pickle
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from ._protocol import queueframe
from ._serialize import DEFAULT_SERIALIZER, Serializer, fd_handle
from ._shm import bulk
from ._sync import Condition, Lock, Semaphore
from ._transport import (
    big_pipe,
    read_exact_fd,
    readable,
    socketpair,
    wrap_fd,
    write_all_fd,
    write_some_fd,
)
from ._transport.fds import close_fds, recv_fds, send_fds

__all__ = ["Queue", "JoinableQueue", "SimpleQueue", "flush_all"]

_PLAIN = frozenset({int, float, str, bool, type(None), complex})
_dumps = pickle.dumps
_loads = pickle.loads
_HEAD_UNPACK = queueframe.HEAD.unpack
_plain_frame = queueframe.plain
_HEAD_SIZE = queueframe.HEAD.size


class _Backlog:
    """This process's buffered frames for one queue, and the feeder thread that writes them."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.frames: collections.deque[tuple[bytes, list[int], list[int], bool]] = (
            collections.deque()
        )
        self.thread: threading.Thread | None = None
        self.busy = False
        self.cancelled = False


class _Live:
    """Queues with a backlog in this process (the module's one holder): flushed at exit.
    ``forks`` counts the forks that made this process (``after_in_child``): a queue
    compares it with the count it saw, to give a forked child its own backlog, rather
    than ``os.getpid()``, a system call (~180 ns on this VM, 7 % of a small ``put``)."""

    def __init__(self) -> None:
        self.queues: weakref.WeakSet[Queue] = weakref.WeakSet()
        self.forks = 0

    def forked(self) -> None:
        self.forks += 1


_live = _Live()
os.register_at_fork(after_in_child=_live.forked)


def flush_all() -> None:
    """Write out every queue's backlog in this process (exit hook; idempotent)."""
    for q in list(_live.queues):
        if not q._backlog.cancelled:
            q.join_thread()


atexit.register(flush_all)


class Queue:
    """``multiprocessing.Queue``: FIFO between processes; ``queue.Empty``/``queue.Full``."""

    __module__ = "polyproc.queues"  # its public home: repr, pickle

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        if maxsize < 0:
            maxsize = 0
        r, w = big_pipe(os.O_CLOEXEC)
        os.set_blocking(w, False)
        side_w, side_r = socketpair()
        state = (
            maxsize,
            r,
            w,
            side_r.detach(),
            side_w.detach(),
            Semaphore(0),
            Semaphore(maxsize) if maxsize else None,
            Lock(),
            Lock(),
        )
        self._setup(state, ctx)

    def _setup(self, state: tuple[Any, ...], ctx: Any) -> None:
        (
            self._maxsize,
            self._r,
            self._w,
            self._side_r,
            self._side_w,
            self._items,
            self._slots,
            self._wlock,
            self._rlock,
        ) = state
        self._ser: Serializer = getattr(ctx, "serializer", None) or DEFAULT_SERIALIZER
        self._plain_loads = type(self._ser) is Serializer  # its loads of no fds: pickle's
        self._ctx = ctx
        self._closed = False
        self._backlog = _Backlog()
        self._forks = _live.forks
        self._side_rs = wrap_fd(os.dup(self._side_r))
        self._side_ws = wrap_fd(os.dup(self._side_w))
        # The two socket objects own their (dup'ed) fds: they are closed through the
        # objects, never by number, or their own close at GC would close whatever fd
        # has reused that number by then (a spare interpreter's socket, say).
        self._finalizer = weakref.finalize(
            self, _close_fds, self._all_fds()[:4], (self._side_rs, self._side_ws)
        )
        self._reader, self._writer = _End(self._finalizer, self._r), _End(self._finalizer, self._w)

    def _all_fds(self) -> list[int]:
        return [
            self._r,
            self._w,
            self._side_r,
            self._side_w,
            self._side_rs.fileno(),
            self._side_ws.fileno(),
        ]

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_queue,
            (
                type(self),
                self._maxsize,
                fd_handle(self._r),
                fd_handle(self._w),
                fd_handle(self._side_r),
                fd_handle(self._side_w),
                self._items,
                self._slots,
                self._wlock,
                self._rlock,
                self._extra_state(),
            ),
        )

    def _extra_state(self) -> Any:
        return None

    def _set_extra_state(self, extra: Any) -> None:
        pass

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    # -- producing ----------------------------------------------------------------
    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Enqueue ``obj``; ``queue.Full`` if bounded and no slot frees in time.

        The item is pickled here, in the caller, so an unpicklable item fails at once
        (the stdlib fails later, in its feeder thread).
        """
        if self._closed:
            self._check_open()
        if self._slots is not None and not self._slots.acquire(block, timeout):
            raise queue.Full
        self._send(*self._encode(obj))

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False)

    def _encode(self, obj: Any) -> tuple[bytes, list[int], list[int]]:
        if type(obj) in _PLAIN:  # cannot hold buffers or fds: skip the serializer's checks
            body = _dumps(obj, 5)
            return _plain_frame(body), [], []
        p = self._ser.dumps(obj, what="queue item")
        if not p.buffers and not p.fds:
            return _plain_frame(p.body), [], []
        fds = list(p.fds)
        close: list[int] = []
        lengths: list[tuple[int, bool]] = []
        inline: list[memoryview] = []
        for b in p.buffers:
            if b.nbytes >= bulk.THRESHOLD:
                fd, owned = bulk.export(b)
                fds.append(fd)
                if owned:
                    close.append(fd)
                lengths.append((b.nbytes, True))
            else:
                lengths.append((b.nbytes, False))
                inline.append(b)
        data = b"".join([queueframe.head(len(p.body), lengths, len(fds)), p.body, *inline])
        return data, fds, close

    def _send(self, data: bytes, fds: list[int], close: list[int]) -> None:
        bl = self._backlog
        if self._forks != _live.forks:  # inherited by fork: a fresh backlog for this process
            self._forks, self._backlog = _live.forks, _Backlog()
            bl = self._backlog
        if not bl.frames and not bl.busy and self._wlock.acquire(False):
            try:
                n = write_some_fd(self._w, data)
            except BaseException:
                self._wlock.release()
                raise
            if n == len(data):
                try:
                    if fds:
                        _send_fds(self._side_ws, fds)
                finally:
                    self._wlock.release()
                    for fd in close:
                        os.close(fd)
                self._items.release()
                return
            if n == 0:
                self._wlock.release()
                self._enqueue(data, fds, close, False)
            else:  # a partial frame: the feeder finishes it, still holding the writer lock
                self._enqueue(data[n:], fds, close, True)
            return
        self._enqueue(data, fds, close, False)

    def _enqueue(self, data: bytes, fds: list[int], close: list[int], locked: bool) -> None:
        bl = self._backlog
        with bl.cond:
            if locked:
                bl.frames.appendleft((data, fds, close, True))
            else:
                bl.frames.append((data, fds, close, False))
            if bl.thread is None:
                bl.thread = threading.Thread(
                    target=self._feed, name="polyproc-queue-feeder", daemon=True
                )
                bl.thread.start()
                _live.queues.add(self)
            bl.cond.notify()

    def _feed(self) -> None:
        bl = self._backlog
        while True:
            with bl.cond:
                while not bl.frames:
                    if self._closed:
                        bl.thread = None
                        bl.cond.notify_all()
                        return
                    bl.cond.wait()
                data, fds, close, locked = bl.frames.popleft()
                bl.busy = True
            try:
                if not locked:
                    self._wlock.acquire()
                try:
                    write_all_fd(self._w, data)
                    if fds:
                        _send_fds(self._side_ws, fds)
                finally:
                    self._wlock.release()
                    for fd in close:
                        os.close(fd)
                self._items.release()
            except OSError:
                pass  # every reader is gone: the item cannot be delivered
            finally:
                with bl.cond:
                    bl.busy = False
                    bl.cond.notify_all()

    # -- consuming ----------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Dequeue the oldest item; ``queue.Empty`` if none comes in time."""
        if self._closed:
            self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._items.acquire(block, timeout):
            raise queue.Empty
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        # The frame is ours; the reader lock only keeps two readers' bytes apart.
        if not self._rlock.acquire(True, left):
            self._items.release()
            raise queue.Empty
        # A plain item (most are) in two reads and no list: the general reader's calls,
        # comprehension and lists cost ~0.9 us of a ~2.6 us get (issue 14's Queue case).
        buffers: Sequence[Any] = ()
        fds: Sequence[int] = ()
        try:
            body_len, nbuf, nfds = _HEAD_UNPACK(read_exact_fd(self._r, _HEAD_SIZE))
            if nbuf or nfds:
                body, buffers, fds = self._read_rest(body_len, nbuf, nfds)
            else:
                body = read_exact_fd(self._r, body_len)
        finally:
            self._rlock.release()
        if self._slots is not None:
            self._slots.release()
        if fds or not self._plain_loads:
            return self._ser.loads(body, buffers, fds)
        return _loads(body, buffers=buffers)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(False)

    def _read_rest(self, body_len: int, nbuf: int, nfds: int) -> tuple[bytes, list[Any], list[int]]:
        """The rest of a frame with out-of-band buffers or fds, its header read."""
        lengths = [queueframe.decode_length(read_exact_fd(self._r, 8)) for _ in range(nbuf)]
        body = read_exact_fd(self._r, body_len)
        buffers: list[Any] = []
        shared: list[tuple[int, int]] = []
        for i, (n, in_memfd) in enumerate(lengths):
            if in_memfd:
                buffers.append(None)
                shared.append((i, n))
            else:
                buffers.append(bytearray(read_exact_fd(self._r, n)))
        fds = _recv_fds(self._side_rs, nfds) if nfds else []
        if shared:
            extra = fds[len(fds) - len(shared) :]
            fds = fds[: len(fds) - len(shared)]
            for (i, n), fd in zip(shared, extra, strict=False):
                buffers[i] = bulk.import_buffer(fd, n)
        return body, buffers, fds

    # -- state ----------------------------------------------------------------------
    def qsize(self) -> int:
        """Items in the pipe and not yet taken (a shared count; backlogged puts join it later)."""
        return int(self._items.get_value())

    def empty(self) -> bool:
        """Whether ``qsize()`` is 0 (a snapshot: another process may change it)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether a bounded queue has no free slot (always False when unbounded)."""
        return self._slots is not None and self._slots.get_value() == 0

    def close(self) -> None:
        """No more puts from this process; the feeder finishes the backlog, then stops."""
        self._closed = True
        bl = self._backlog
        with bl.cond:
            bl.cond.notify_all()
            if bl.thread is None:
                self._finalizer()

    def join_thread(self) -> None:
        """Wait until this process's backlog is in the pipe (only after ``close`` in the stdlib)."""
        bl = self._backlog
        with bl.cond:
            while bl.frames or bl.busy:
                bl.cond.wait(0.1)

    def cancel_join_thread(self) -> None:
        """At exit, do not wait for the backlog: unwritten items are dropped."""
        self._backlog.cancelled = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} maxsize={self._maxsize} qsize={self.qsize()}>"


class _End:
    """``q._reader`` / ``q._writer`` (the stdlib's are Connections), for what programs do
    with them: ``connection.wait([q._reader, ...])`` (readable once an item is in the
    pipe), ``poll``, and ``closed`` once the queue's fds are. It holds the queue's
    finalizer, not the queue: no cycle keeps a dropped queue's fds open."""

    __slots__ = ("_finalizer", "_fd")

    def __init__(self, finalizer: weakref.finalize[Any, Any], fd: int) -> None:
        self._finalizer, self._fd = finalizer, fd

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def fileno(self) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "the queue is closed")
        return self._fd

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether the pipe has bytes to read (an item, or the start of one) within ``timeout``."""
        return bool(readable((self.fileno(),), timeout))


def _rebuild_queue(
    cls: type[Queue],
    maxsize: int,
    r: int,
    w: int,
    side_r: int,
    side_w: int,
    items: Semaphore,
    slots: Semaphore | None,
    wlock: Lock,
    rlock: Lock,
    extra: Any,
) -> Queue:
    q = cls.__new__(cls)
    q._setup((maxsize, r, w, side_r, side_w, items, slots, wlock, rlock), None)
    q._set_extra_state(extra)
    return q


def _close_fds(fds: list[int], socks: tuple[_socket.socket, ...] = ()) -> None:
    close_fds(fds)
    for sock in socks:
        sock.close()


def _send_fds(sock: _socket.socket, fds: list[int]) -> None:
    for i in range(0, len(fds), 200):
        chunk = fds[i : i + 200]
        send_fds(sock, bytes([len(chunk)]), chunk)


def _recv_fds(sock: _socket.socket, count: int) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        msg, fds = recv_fds(sock, 1, 200)
        if not msg:
            raise EOFError("queue side channel closed")
        out.extend(fds)
    if len(out) != count:
        raise OSError(errno.EPROTO, "queue side channel out of step")
    return out


class JoinableQueue(Queue):
    """A Queue with ``task_done()`` and ``join()``."""

    __module__ = "polyproc.queues"  # its public home: repr, pickle

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        super().__init__(maxsize, ctx=ctx)
        self._unfinished = Semaphore(0)
        self._cond = Condition(Lock())

    def _extra_state(self) -> Any:
        return (self._unfinished, self._cond)

    def _set_extra_state(self, extra: Any) -> None:
        self._unfinished, self._cond = extra

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Enqueue ``obj`` and count it as an unfinished task (see ``task_done``)."""
        self._check_open()
        if self._slots is not None and not self._slots.acquire(block, timeout):
            raise queue.Full
        frame = self._encode(obj)
        with self._cond:
            self._unfinished.release()
        self._send(*frame)

    def task_done(self) -> None:
        """Mark one item taken with ``get`` as processed; ``ValueError`` if too many."""
        with self._cond:
            if not self._unfinished.acquire(False):
                raise ValueError("task_done() called too many times")
            if self._unfinished.get_value() == 0:
                self._cond.notify_all()

    def join(self) -> None:
        """Block until every item put has been marked ``task_done``."""
        with self._cond:
            if self._unfinished.get_value():
                self._cond.wait_for(lambda: self._unfinished.get_value() == 0)


class SimpleQueue(Queue):
    """``multiprocessing.SimpleQueue``: ``put``, ``get``, ``empty``, ``close``."""

    __module__ = "polyproc.queues"  # its public home: repr, pickle

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(0, ctx=ctx)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Dequeue the oldest item, blocking (``block``/``timeout`` are our extras)."""
        return super().get(block, timeout)
