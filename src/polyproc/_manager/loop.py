"""The serving loop: one selector thread runs every quick call; blocking ones go to a worker.

::

    authenticated streams ──► loop thread (epoll)
                                read what is there -> frames, per connection, in order
                                phase 1: every CALL_ASYNC / DECREF of every ready connection
                                phase 2: the other frames, in order
                                  quick (list, dict, Namespace, Value, Array, create ...)
                                      -> run here, reply queued on the connection
                                  may block (Queue.get, Lock.acquire, user classes, Pool)
                                      -> the connection's own worker thread; the
                                         connection is *busy* (read, not run) until
                                         the worker has sent its reply
                                write replies (an Outbox each; EPOLLOUT if they do not fit)

Why one loop thread: the manager's calls are tiny, and with a thread per
connection most of their cost was waking threads and passing the GIL between
them. One loop drains every ready connection per wake-up, so work arrives in
batches.

Why phase 1 first (causality with fire-and-forget calls): a client sends
``CALL_ASYNC`` for ``lst.append(x)`` and returns at once. If it then tells another
process (through any channel) and that process reads the list, the append must
be visible. It is: the append's bytes were in our socket buffer before the
reader's request was even sent, so the same wake-up that sees the request also
sees them, and phase 1 runs them before phase 2 answers anyone.

Why it busy-polls a little before sleeping: see ``wire.SERVER_SPIN`` and
``wire.Spin`` (adaptive, and never while another thread of the server has work,
since the spinning thread holds the GIL that thread needs).

Why a worker per connection (not a pool): ``RLock`` and ``Condition`` must be
released by the thread that acquired them, exactly as with the stdlib's thread
per connection.
"""

from __future__ import annotations

import queue
import select
import threading
from collections import deque
from collections.abc import Callable, Sized
from typing import Any

from .._protocol.compact import MAX_FRAME, FrameDecoder, Op
from .._transport import Outbox, Stream, Wake, want_errors
from .._transport.spin import wait_spinning
from .wire import SERVER_SPIN, Spin

__all__ = ["ServeLoop", "Conn", "Deferred"]

_READS_PER_WAKE = 8
_CHUNK = 1 << 16
_NO_REPLY_OPS = frozenset({int(Op.CALL_ASYNC), int(Op.DECREF)})
_SHUTDOWN = int(Op.SHUTDOWN)
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_EPOLLOUT = select.EPOLLOUT


class Conn:
    """One authenticated connection as the loop sees it."""

    __slots__ = (
        "stream",
        "decoder",
        "frames",
        "out",
        "busy",
        "worker",
        "tls",
        "closed",
        "lock",
        "want_write",
        "read_into",
        "queue",
        "send",
    )

    def __init__(self, stream: Stream, leftover: bytes) -> None:
        self.stream = stream  # a SocketStream (or a memory one in tests): non-blocking
        self.decoder = FrameDecoder(MAX_FRAME)
        self.decoder.feed(leftover)
        self.frames: deque[tuple[int, bytes]] = deque()
        self.out = Outbox(stream)
        self.busy = False
        self.worker: _Worker | None = None
        self.tls = stream.tls
        self.closed = False
        self.lock = threading.Lock()  # guards ``out`` between the loop and the worker
        self.want_write = False  # registered for EVENT_WRITE (changed only when it must)
        # A socket's own recv_into where it has one (see SocketStream.plain_read_into):
        # this loop ends the connection on any OSError and on 0 alike.
        plain = getattr(stream, "plain_read_into", None)
        self.read_into: Callable[[memoryview], int] = (
            plain() if plain is not None else stream.read_into
        )
        #: ``out``'s queue itself: its truth needs no frame (``Outbox.__bool__`` is one)
        self.queue = self.out.out
        #: a plain socket's own ``send`` (SocketStream.plain_send), else None: replies
        #: then go through ``out``
        send = getattr(stream, "plain_send", None)
        self.send: Callable[[bytes], int] | None = send() if send is not None else None


class Deferred:
    """What a handler returns for a request that may block: the connection's worker runs it."""

    __slots__ = ("op", "request")

    def __init__(self, op: int, request: Any) -> None:
        self.op = op
        self.request = request


Runner = Callable[[int, Any], "bytes | None"]
Handler = Callable[[int, bytes], "bytes | Deferred | None"]


class _Worker:
    """The thread that runs one connection's calls that may block."""

    def __init__(self, loop: ServeLoop, conn: Conn) -> None:
        self.tasks: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self.loop, self.conn = loop, conn
        threading.Thread(target=self._run, name="polyproc-manager-worker", daemon=True).start()

    def _run(self) -> None:
        while True:
            task = self.tasks.get()
            if task is None:
                return
            op, request = task
            reply = self.loop.runner(op, request)
            self.loop.reply_from_worker(self.conn, reply)


class ServeLoop:
    """Runs the loop described in the module docstring, on its own thread.

    ``select.epoll`` directly (not ``selectors``): this loop's own overhead is per
    call, and the selectors layer cost more than the call it served.
    """

    def __init__(
        self,
        decode: Callable[[int, bytes], tuple[bool, Any]],
        runner: Runner,
        handle: Handler | None = None,
    ) -> None:
        # decode(op, body) -> (quick, request); runner(op, request) -> reply frame or None.
        # handle(op, body) -> reply, None or Deferred: both in one call on this thread
        # (the server's, written for speed); by default made of the two.
        self.decode = decode
        self.runner = runner
        self.handle: Handler = handle if handle is not None else self._decode_and_run
        #: the gate's pending handshakes (the server sets it): while any wait, the gate's
        #: thread has work, and we do not spin (see ``_run``)
        self.handshakes: Sized = ()
        #: connections whose worker thread is running a call (the same reason)
        self._working: set[Conn] = set()
        self._ep = select.epoll()
        self._waker = Wake()
        self._ep.register(self._waker.fileno(), select.EPOLLIN)
        self._by_fd: dict[int, Conn] = {}
        self._watched: dict[int, Callable[[], None]] = {}
        self._incoming: deque[Conn] = deque()
        self._resume: deque[Conn] = deque()
        self.conns: set[Conn] = set()
        self._stopping = False
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._thread = threading.Thread(target=self._run, name="polyproc-manager-loop", daemon=True)

    def start(self) -> None:
        """Serve on a thread of our own (returns at once)."""
        self._thread.start()

    def run(self) -> None:
        """Serve on the calling thread until ``stop()`` (the manager process's main thread:
        no thread to start and wait for while the owner waits for us to be ready)."""
        self._run()

    def watch(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable()`` on the loop thread when ``fd`` is readable (or hung up).

        Call before the loop runs. The manager process watches its owner's control
        socket here instead of on a thread of its own.
        """
        self._watched[fd] = on_readable
        self._ep.register(fd, select.EPOLLIN)

    def add(self, stream: Stream, leftover: bytes) -> None:
        """A stream the gate authenticated (called from the gate thread); ``leftover``: bytes
        it read past the handshake (a pipelined first request)."""
        stream.setblocking(False)
        self._incoming.append(Conn(stream, leftover))
        self._wake()

    def stop(self) -> None:
        """Stop serving (from any thread; joins the loop's own thread if it has one)."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def _wake(self) -> None:
        self._waker.set()

    def _decode_and_run(self, op: int, body: bytes) -> bytes | Deferred | None:
        quick, request = self.decode(op, body)
        return self.runner(op, request) if quick else Deferred(op, request)

    # -- the loop ---------------------------------------------------------------
    def _run(self) -> None:
        by_fd, wake_fd = self._by_fd, self._waker.fileno()
        try:
            poll = self._ep.poll
            handshakes = self.handshakes
            spin = Spin(SERVER_SPIN)
            while not self._stopping:
                ready: list[Conn] = []
                # Busy-poll a little before sleeping (see wire.SERVER_SPIN and Spin):
                # the next request usually comes within microseconds of the last reply.
                events = poll(0)
                if not events:
                    # Never spinning while another thread of ours has work: the
                    # spinning thread holds the GIL it would need.
                    idle = not self._working and not handshakes
                    events = wait_spinning(poll, spin, -1, may_spin=idle)
                for fd, mask in events:
                    if fd == wake_fd:
                        self._on_wake(ready)
                        continue
                    conn = by_fd.get(fd)
                    if conn is None:
                        if fd in self._watched:
                            self._watched[fd]()
                        continue
                    if mask & _EPOLLOUT:
                        self._flush(conn)
                    if mask & _READABLE and not conn.closed:
                        self._read(conn)
                        ready.append(conn)
                if len(ready) > 1:  # phase 1: see the module docstring
                    for conn in ready:
                        self._process(conn, True)
                for conn in ready:  # phase 2
                    self._process(conn, False)
                    if conn.queue and not conn.closed:
                        self._flush(conn)
        finally:
            for conn in list(self.conns):
                self._close(conn)
            self._ep.close()
            self._waker.close()

    def _on_wake(self, ready: list[Conn]) -> None:
        self._waker.drain()
        while self._incoming:
            conn = self._incoming.popleft()
            self.conns.add(conn)
            fd = conn.stream.fd
            self._by_fd[fd] = conn
            self._ep.register(fd, select.EPOLLIN)
            try:  # the gate may have read a pipelined first request with the handshake
                conn.frames.extend(conn.decoder.frames())
            except OSError:  # ProtocolError
                self._close(conn)
                continue
            self._read(conn)
            ready.append(conn)
        while self._resume:
            conn = self._resume.popleft()
            if not conn.closed:
                ready.append(conn)

    def _read(self, conn: Conn) -> None:
        view, decoder, frames, stream = self._view, conn.decoder, conn.frames, conn.stream
        read_into = conn.read_into
        try:
            for _ in range(_READS_PER_WAKE):
                n = read_into(view)
                if not n:
                    self._close(conn)
                    return
                frames.extend(decoder.feed_frames(view[:n]))
                if n < _CHUNK and not (conn.tls and stream.pending()):
                    break
        except want_errors():
            pass
        except OSError:  # ProtocolError too: garbage from an authenticated peer ends its connection
            self._close(conn)

    def _process(self, conn: Conn, async_only: bool) -> None:
        frames, handle = conn.frames, self.handle
        while frames and not conn.busy and not conn.closed:
            if async_only and frames[0][0] not in _NO_REPLY_OPS:
                return
            op, body = frames.popleft()
            try:
                reply = handle(op, body)
            except OSError:
                self._close(conn)
                return
            if reply is None:
                if op == _SHUTDOWN:
                    self._flush(conn)
                continue
            if isinstance(reply, Deferred):
                # May block: hand to this connection's worker; the reply goes out from there.
                if conn.queue:
                    self._flush(conn)
                conn.busy = True
                self._working.add(conn)
                if conn.worker is None:
                    conn.worker = _Worker(self, conn)
                conn.worker.tasks.put((reply.op, reply.request))
                continue
            send = conn.send
            if send is not None and not conn.queue:
                # At once, straight to the kernel. No lock: the worker touches ``conn.out``
                # only while the connection is busy, and this loop runs a connection's
                # frames only while it is not.
                try:
                    n = send(reply)
                except BlockingIOError:
                    n = 0
                except OSError:
                    self._close(conn)
                    return
                if n < len(reply):
                    conn.out.push(memoryview(reply)[n:] if n else reply)
                    self._want_write(conn)
            elif conn.tls:
                conn.out.push(reply)  # written after this connection's frames
            else:
                try:  # behind what is queued (or a stream with no plain send)
                    if conn.out.write(reply):
                        self._want_write(conn)
                except OSError:
                    self._close(conn)
                    return
            if op == _SHUTDOWN:
                self._flush(conn)

    def reply_from_worker(self, conn: Conn, reply: bytes | None) -> None:
        """Called on a worker thread: send its reply, then let the loop read that connection again."""
        if reply and not conn.closed:
            with conn.lock:
                conn.out.push(reply)
                if not conn.tls:  # else the loop flushes it (TLS objects are not thread-safe)
                    try:
                        conn.out.flush()  # what does not fit now, the loop writes on resume
                    except OSError:
                        pass  # the client is gone; the loop will see EOF
        conn.busy = False
        self._working.discard(conn)
        self._resume.append(conn)
        self._wake()

    def _want_write(self, conn: Conn) -> None:
        """A reply did not fit: watch for writability (``_flush`` writes the rest)."""
        if not conn.want_write:
            conn.want_write = True
            try:
                self._ep.modify(conn.stream.fd, select.EPOLLIN | select.EPOLLOUT)
            except (ValueError, OSError):
                pass

    def _flush(self, conn: Conn) -> None:
        with conn.lock:
            try:
                want = conn.out.flush()
            except OSError:
                self._close(conn)
                return
        if want != conn.want_write:  # epoll_ctl only when the interest really changes
            conn.want_write = want
            try:
                self._ep.modify(conn.stream.fd, select.EPOLLIN | (select.EPOLLOUT if want else 0))
            except (ValueError, OSError):
                pass

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        self._working.discard(conn)
        try:
            fd = conn.stream.fd
            self._by_fd.pop(fd, None)
            self._ep.unregister(fd)
        except (ValueError, OSError):
            pass
        try:
            conn.stream.close()
        except OSError:
            pass
        if conn.worker is not None:
            conn.worker.tasks.put(None)
