"""Byte streams over file descriptors and sockets: the raw I/O under every wire.

Three streams share one small interface (``read_into``, ``write_all``,
``write_some``, ``take_fds``, ``close``) so the layers above never care what is
underneath (``memory.MemoryStream`` is a fourth, in-process, for tests):

* ``FdStream``: a pipe (or any fd): ``os.readv``/``os.writev``, the fastest path.
* ``UnixStream``: an AF_UNIX socket; can carry fds (SCM_RIGHTS, ``fds``) beside the bytes.
* ``SocketStream``: TCP or TLS (``ssl.SSLSocket``), or any socket read through its
  object (the manager's); no fds.

``write_all`` blocks until every byte is written; ``write_some`` never blocks (it
writes what fits, for ``outbox.Outbox``). ``OSError`` from the kernel becomes
``BrokenResourceError`` here (the peer went away) and ``ClosedResourceError`` (we
closed it); a read from a peer that went away is end of stream (0 bytes), as a pipe's.

Below the streams, ``read_exact_fd``/``write_all_fd``/``write_some_fd`` are the
plain-fd reads and writes of a Queue's pipe and of a memfd being filled.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import BrokenResourceError, ClosedResourceError
from .buffers import HUGE, fresh_bytes
from .fds import ANC_SPACE, MAX_FDS, rights, rights_of
from .sockets import is_tls, want_errors, wrap_fd

__all__ = [
    "Stream",
    "FdStream",
    "UnixStream",
    "SocketStream",
    "stream_for_socket",
    "read_exact_fd",
    "write_all_fd",
    "write_some_fd",
    "MAX_FDS",
]

_BROKEN = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED, errno.ESHUTDOWN}
_WRITEV_MAX = 1024  # IOV_MAX


def _broken(exc: OSError) -> BrokenResourceError:
    return BrokenResourceError(exc.errno or errno.EPIPE, f"peer went away: {exc.strerror or exc}")


def _raise_mapped(exc: OSError) -> NoReturn:
    """Raise the error tree's name for a write's ``OSError`` (the peer went away, or we
    closed it), chained to it; any other ``OSError`` as it is (never as its own cause)."""
    if exc.errno in _BROKEN:
        raise _broken(exc) from exc
    if exc.errno == errno.EBADF:
        raise ClosedResourceError(errno.EBADF, "stream is closed") from exc
    raise exc


def _end_of_stream(exc: OSError) -> None:
    """For a read's ``OSError``: return if it means end of stream (the peer went away),
    raise ``ClosedResourceError`` if we closed it, else re-raise it as it is."""
    if exc.errno in _BROKEN:
        return
    if exc.errno == errno.EBADF:
        raise ClosedResourceError(errno.EBADF, "stream is closed") from exc
    raise exc


#: Up to this, a body read after bytes already buffered is read on its own and joined to
#: them (one more copy of at most this much) rather than into a ``fresh_bytes`` (whose
#: first use imports ctypes: 2-7 ms, a tenth of a 64 MiB stream of 64 KiB messages).
_JOIN_MAX = 1 << 20


class Stream:
    """A bidirectional (or one-way) byte stream over one fd."""

    supports_fds = False
    tls = False

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def setblocking(self, flag: bool) -> None:
        """Whether reads wait (``BlockingIOError`` when nothing is there, if not)."""
        os.set_blocking(self.fd, flag)

    def pending(self) -> bool:
        """Bytes read from the fd but not yet returned (TLS keeps some): False but for TLS."""
        return False

    def read_into(self, view: memoryview) -> int:
        """Read at least one byte into ``view``; 0 means end of stream."""
        try:
            return os.readv(self.fd, [view])
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            return self.read_into(view)
        except OSError as exc:
            _end_of_stream(exc)
            return 0

    def read_exact_into(self, view: memoryview) -> int:
        """Fill ``view`` completely unless the stream ends first; the bytes read.

        For a large frame body: the reader hands its final object's memory here, so
        the kernel copies straight into it (no staging buffer, no join).
        """
        done, n = 0, view.nbytes
        while done < n:
            got = self._read_more(view[done:])
            if got == 0:
                break
            done += got
        return done

    def _read_more(self, view: memoryview) -> int:
        """One read toward ``read_exact_into``'s goal (a socket may ask for all of it)."""
        return self.read_into(view)

    #: The biggest ``read_bytes`` without bytes already read that ``_read_new`` serves
    #: (below 0: never; every read then goes into a ``fresh_bytes``).
    _new_max = -1

    def read_bytes(self, n: int, head: bytes | bytearray = b"") -> bytes:
        """A new ``bytes`` of ``n``: ``head`` (bytes the caller already read), then the
        rest from the stream. Shorter only if the stream ended first. For a frame's
        body: fds must have come with its header (``read_into``).

        For a large frame body that ``recv_bytes`` returns, read with one kernel copy
        into its own memory. Where the stream can (``_read_new``: a pipe, a Unix
        socket) the read itself makes the object, as ``os.read`` does, and a rare
        short read (a pipe's writer is behind, a signal) is joined to what came.
        Otherwise (more than ``_JOIN_MAX`` after ``head``, a TCP or TLS socket, from
        HUGE up where huge pages are asked for) it goes into a ``fresh_bytes``, whose
        first use imports ctypes: 2-7 ms, a tenth of a 64 KiB stream (docs/connection.md).
        """
        have = len(head)
        if self._new_max < 0 or n - have > (_JOIN_MAX if have else self._new_max):
            out, view = fresh_bytes(n)
            with view:
                view[:have] = head
                got = have + self.read_exact_into(view[have:])
            return out if got == n else out[:got]
        parts = [head] if have else []
        want = n - have
        while want:
            data = self._read_new(want)
            if not data:
                break
            if not have and len(data) == n:
                return data
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    def _read_new(self, n: int) -> bytes:
        """One read of at most ``n`` into a new ``bytes``; b"" at end of stream."""
        raise NotImplementedError  # pragma: no cover - only where _new_max says so

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], fds: Sequence[int] = ()
    ) -> None:
        """Write every byte of ``parts`` (zero-copy: ``writev`` from their own memory)."""
        if fds:
            raise BrokenResourceError(errno.EINVAL, "this stream cannot carry file descriptors")
        self._writev(list(parts))

    def write_some(self, parts: list[Any], fds: Sequence[int] = ()) -> int:
        """Write what fits now (a non-blocking fd): the bytes written, 0 when it is full."""
        if fds:
            raise BrokenResourceError(errno.EINVAL, "this stream cannot carry file descriptors")
        try:
            return os.writev(self.fd, parts)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            _raise_mapped(exc)

    def write_one(self, data: bytes) -> None:
        """``write_all([data])`` for one small bytes: a single ``write``, no list, no views."""
        try:
            n = os.write(self.fd, data)
        except OSError:
            n = 0  # the general path raises the right error
        if n != len(data):
            self._writev([memoryview(data)[n:]])

    def write_pair(self, head: bytes, body: Any) -> None:
        """``write_all([head, body])`` for a byte-format body, in one ``writev`` when it fits.

        The common big-message write, kept to one call: a few microseconds of Python
        per message decide whether a stream keeps the receiver busy or makes it sleep
        and wake for every message (docs/connection.md).
        """
        try:
            n = os.writev(self.fd, (head, body))
        except OSError:
            n = 0  # let the general path raise the right error (or retry EINTR/EAGAIN)
        if n != len(head) + len(body):
            self._writev(
                [memoryview(head)[n:], memoryview(body)[max(0, n - len(head)) :]]
                if n < len(head)
                else [memoryview(body)[n - len(head) :]]
            )

    def _writev(self, parts: list[Any]) -> None:
        fd = self.fd
        try:
            if len(parts) == 1:
                data = parts[0]
                n = os.write(fd, data)
                if n == len(data):
                    return
                parts = [memoryview(data)[n:]]
            views = deque(memoryview(p).cast("B") for p in parts)
            while views:
                batch = [views[i] for i in range(min(len(views), _WRITEV_MAX))]
                n = os.writev(fd, batch)
                while n and views:
                    head = views[0]
                    if n >= head.nbytes:
                        n -= head.nbytes
                        views.popleft()
                    else:
                        views[0] = head[n:]
                        n = 0
                while views and views[0].nbytes == 0:
                    views.popleft()
        except OSError as exc:
            _raise_mapped(exc)

    def take_fds(self, count: int) -> list[int]:
        if count:
            raise BrokenResourceError(errno.EPROTO, "frame promised fds this stream cannot carry")
        return []

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def detach(self) -> int:
        fd, self.fd = self.fd, -1
        return fd


class FdStream(Stream):
    """A pipe end or any plain fd."""

    # A pipe holds at most ~1 MiB (``big_pipe``): a bigger read is always short.
    _new_max = _JOIN_MAX

    def _read_new(self, n: int) -> bytes:
        try:
            return os.read(self.fd, n)
        except OSError as exc:
            _end_of_stream(exc)
            return b""


class UnixStream(Stream):
    """An AF_UNIX stream socket: bytes plus fds passed with SCM_RIGHTS."""

    supports_fds = True

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._sock = wrap_fd(fd)
        self._fds: deque[int] = deque()

    @classmethod
    def over(cls, sock: _socket.socket) -> UnixStream:
        """A stream on a socket object the caller keeps owning (and closes itself)."""
        stream = cls.__new__(cls)
        stream.fd, stream._sock, stream._fds = sock.fileno(), sock, deque()
        return stream

    def write_some(self, parts: list[Any], fds: Sequence[int] = ()) -> int:
        """Write what fits now (``MSG_DONTWAIT``); ``fds`` ride on the first byte of ``parts``."""
        try:
            if fds:
                return self._sock.sendmsg(parts[:1], rights(fds), _socket.MSG_DONTWAIT)
            return self._sock.sendmsg(parts, (), _socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            _raise_mapped(exc)

    def read_into(self, view: memoryview, flags: int = 0) -> int:
        try:
            n, anc, _flags, _addr = self._sock.recvmsg_into([view], ANC_SPACE, flags)
        except OSError as exc:
            _end_of_stream(exc)
            return 0
        if anc:
            self._fds.extend(rights_of(anc))
        return n

    # MSG_WAITALL fills a read however many socket buffers it takes: up to HUGE, from
    # which ``fresh_bytes`` asks for huge pages (2x faster to fault in, measured).
    _new_max = HUGE - 1

    def _read_new(self, n: int) -> bytes:
        # A plain recv, no room for fds (0.4 us less than recvmsg per call): this reads
        # frame bodies, and a frame's fds ride on its header's first byte, which
        # ``read_into`` has taken before. Fds a peer put on body bytes are closed by
        # the kernel (MSG_CTRUNC), never leaked.
        try:
            return self._sock.recv(n, _socket.MSG_WAITALL)
        except OSError as exc:
            _end_of_stream(exc)
            return b""

    def _read_more(self, view: memoryview) -> int:
        # MSG_WAITALL: one recvmsg fills the whole view however many socket buffers it
        # takes (the kernel sleeps and copies on); a signal or EOF ends it short, so the
        # caller (``read_exact_into``) loops.
        return self.read_into(view, _socket.MSG_WAITALL)

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], fds: Sequence[int] = ()
    ) -> None:
        if not fds:
            self._writev(list(parts))
            return
        first = memoryview(parts[0]).cast("B")
        anc = rights(fds)
        try:
            n = self._sock.sendmsg([first[:1]], anc)  # fds ride on the first byte
        except OSError as exc:
            if exc.errno in _BROKEN:
                raise _broken(exc) from exc
            raise
        assert n == 1
        self._writev([first[1:], *parts[1:]])

    def take_fds(self, count: int) -> list[int]:
        if count > len(self._fds):
            raise BrokenResourceError(errno.EPROTO, "frame promised fds that did not arrive")
        return [self._fds.popleft() for _ in range(count)]

    def close(self) -> None:
        self.fd = -1
        while self._fds:
            try:
                os.close(self._fds.popleft())
            except OSError:
                pass
        self._sock.close()

    def detach(self) -> int:
        self.fd = -1
        return self._sock.detach()


class SocketStream(Stream):
    """A TCP or TLS socket: everything goes through the socket object (TLS must).

    The manager's sockets (Unix too) use this stream: its reads are plain ``recv``
    calls, cheaper than ``recvmsg`` with room for fds it never carries.
    """

    def __init__(self, sock: _socket.socket) -> None:
        super().__init__(sock.fileno())
        self._sock = sock
        self.tls: bool = is_tls(sock)
        self._again = want_errors()

    @property
    def socket(self) -> _socket.socket:
        """The socket object (for its timeout and blocking mode, never for I/O)."""
        return self._sock

    def pending(self) -> bool:
        """Decrypted bytes waiting inside a TLS socket (its fd will not say so)."""
        tls: Any = self._sock  # an ssl.SSLSocket when ``tls``
        return self.tls and bool(tls.pending())

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at end of stream (or when the peer reset it).

        A non-blocking socket raises one of ``want_errors()`` when nothing is there;
        a timeout raises ``TimeoutError``: neither is end of stream.
        """
        try:
            return self._sock.recv(n)
        except OSError as exc:
            if exc.errno in _BROKEN:
                return b""
            raise

    def write_some(self, parts: list[Any], fds: Sequence[int] = ()) -> int:
        """Write what fits now; TLS one part at a time (an SSL socket has no ``sendmsg``)."""
        if fds:
            raise BrokenResourceError(
                errno.EINVAL, "a network socket cannot carry file descriptors"
            )
        try:
            if self.tls:
                return self._sock.send(parts[0])
            return self._sock.sendmsg(parts, (), _socket.MSG_DONTWAIT)
        except self._again:
            return 0
        except OSError as exc:
            _raise_mapped(exc)

    def read_into(self, view: memoryview) -> int:
        try:
            return self._sock.recv_into(view)
        except OSError as exc:
            if exc.errno in _BROKEN or exc.errno is None:
                return 0  # TLS EOF without close_notify, or a reset: the peer is gone
            raise

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], fds: Sequence[int] = ()
    ) -> None:
        if fds:
            raise BrokenResourceError(
                errno.EINVAL, "a network socket cannot carry file descriptors"
            )
        try:
            for p in parts:
                self._sock.sendall(p)
        except TimeoutError:
            raise  # a deadline the caller set, not a broken peer
        except OSError as exc:
            raise _broken(exc) from exc

    def write_pair(self, head: bytes, body: Any) -> None:
        self.write_all([head, body])  # TLS: through the socket object, never the raw fd

    def write_one(self, data: bytes) -> None:
        """``write_all((data,))`` in one frame: a manager client writes once per call."""
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise  # a deadline the caller set, not a broken peer
        except OSError as exc:
            raise _broken(exc) from exc

    def plain_read_into(self) -> Callable[[memoryview], int]:
        """``read_into`` with no frame of ours around a plain socket's ``recv_into``.

        For a loop that ends a connection on any ``OSError`` and on 0 alike (the
        manager's serving loop: one read per wake-up of every connection).
        """
        return self.read_into if self.tls else self._sock.recv_into

    def plain_send(self) -> Callable[[bytes], int] | None:
        """A plain socket's own ``send`` (None for TLS): one reply, no frame of ours.

        For a loop whose socket is non-blocking, that ends the connection on any
        ``OSError`` but ``BlockingIOError`` (the manager's serving loop: a reply per
        request; ``send`` costs ~0.35 us less than ``write_some``'s ``sendmsg`` here).
        """
        return None if self.tls else self._sock.send

    def plain_calls(self) -> tuple[Callable[[int], bytes], Callable[[bytes], None]]:
        """``(read_some, write_one)`` with no frame of ours around the socket's own calls.

        For a blocking request/reply client that treats every ``OSError`` as "the peer
        is gone" (a manager client: one read and one or two writes per call, where each
        Python frame shows). The socket's errors then come as they are: a reset is
        ``ConnectionResetError``, not end of stream. A TLS socket gets the mapped
        methods (its errors need them).
        """
        if self.tls:
            return self.read_some, self.write_one
        return self._sock.recv, self._sock.sendall

    def readable_waiter(self) -> Any:
        """A callable that blocks until a read would not (None where one is not needed).

        For a blocking AF_UNIX socket whose owner sends a request and then waits for the
        reply (a manager client). Why not just a blocking ``recv``: a thread asleep in
        ``recv`` on a Unix stream socket is also woken each time the *peer reads* the
        bytes we sent (the kernel announces "writable" on the same wait queue, and the
        wait inside ``recv`` does not filter events), and a request/reply client is
        asleep exactly when its server reads the request. Each call paid a wake-up for
        nothing: a context switch in the client, and on the reading side the cost of
        waking it (measured: 10 % of the manager server's CPU). ``poll`` for POLLIN
        filters that event out, and the ``recv`` after it does not block.

        TCP does not wake a reader that way, and a TLS socket may hold decrypted bytes
        ``poll`` cannot see: both get None. A socket with a timeout must not use it
        (``poll()`` here waits forever; CPython's own timed ``recv`` polls already).
        """
        if self.tls or self._sock.family != _socket.AF_UNIX:
            return None
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return poller.poll

    def setblocking(self, flag: bool) -> None:
        """Blocking mode of the socket (the manager's loop and gate read without blocking)."""
        self._sock.setblocking(flag)

    def close(self) -> None:
        self.fd = -1
        self._sock.close()

    def detach(self) -> int:
        self.fd = -1
        return self._sock.detach()


def read_exact_fd(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from blocking ``fd``; ``EOFError`` if it ends first."""
    data = os.read(fd, n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError("pipe closed in the middle of a frame")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_some_fd(fd: int, data: Any) -> int:
    """Write what fits now in non-blocking ``fd``: the bytes written (0 when it is full)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def write_all_fd(fd: int, data: Any) -> None:
    """Write all of ``data`` to ``fd``, waiting for room if it is non-blocking.

    In pieces of at most 1 GiB (a single ``write`` moves under 2 GiB on Linux).
    """
    view = memoryview(data).cast("B")
    done, n = 0, view.nbytes
    while done < n:
        try:
            done += os.write(fd, view[done : done + (1 << 30)])
        except BlockingIOError:
            select.select([], [fd], [])


def stream_for_socket(sock: _socket.socket) -> Stream:
    """Pick the stream for a connected socket: AF_UNIX (fds), else plain/TLS socket."""
    # Without ssl imported no TLS socket can exist: never import it (4 ms) just to check.
    # getattr: another thread may be importing ssl right now (no SSLSocket class yet).
    tls = getattr(sys.modules.get("ssl"), "SSLSocket", None)
    if sock.family == _socket.AF_UNIX and (tls is None or not isinstance(sock, tls)):
        return UnixStream(sock.detach())
    return SocketStream(sock)
