"""Byte streams over file descriptors and sockets: the raw I/O under Connection and Listener.

Not yet the only module that does raw I/O: the pool (``_pool/channel.py``,
``worker.py``, ``engine.py``), the manager (``_manager/wire.py``, ``loop.py``,
``gate.py``, ``client.py``, ``server.py``), ``_queues.py`` and ``_shm/bulk.py``
still read, write or pass fds themselves (issue 10: one wire stack).

Three streams share one small interface (``read_into``, ``write_all``,
``take_fds``, ``close``) so the layers above never care what is underneath:

* ``FdStream``: a pipe (or any fd): ``os.readv``/``os.writev``, the fastest path.
* ``UnixStream``: an AF_UNIX socket; can carry fds (SCM_RIGHTS) beside the bytes.
* ``SocketStream``: TCP or TLS (``ssl.SSLSocket``); no fds.

``OSError`` from the kernel becomes ``BrokenResourceError`` here (the peer went
away), for every stream above.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..errors import BrokenResourceError, ClosedResourceError

__all__ = [
    "Stream",
    "FdStream",
    "UnixStream",
    "SocketStream",
    "stream_for_socket",
    "new_socket",
    "socketpair",
    "wrap_fd",
]

_BROKEN = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED, errno.ESHUTDOWN}
#: SCM_MAX_FD in the kernel: the most fds one sendmsg may carry.
MAX_FDS = 253
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_WRITEV_MAX = 1024  # IOV_MAX


def _broken(exc: OSError) -> BrokenResourceError:
    return BrokenResourceError(exc.errno or errno.EPIPE, f"peer went away: {exc.strerror or exc}")


class Stream:
    """A bidirectional (or one-way) byte stream over one fd."""

    supports_fds = False

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read_into(self, view: memoryview) -> int:
        """Read at least one byte into ``view``; 0 means end of stream."""
        try:
            return os.readv(self.fd, [view])
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            return self.read_into(view)
        except OSError as exc:
            if exc.errno in _BROKEN:
                return 0
            if exc.errno == errno.EBADF:
                raise ClosedResourceError(errno.EBADF, "stream is closed") from exc
            raise

    def read_exact_into(self, view: memoryview) -> int:
        """Fill ``view`` completely unless the stream ends first; the bytes read.

        For a large frame body: the reader hands its final object's memory here, so
        the kernel copies straight into it (no staging buffer, no join).
        """
        done, n = 0, view.nbytes
        while done < n:
            got = self.read_into(view[done:])
            if got == 0:
                break
            done += got
        return done

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], fds: Sequence[int] = ()
    ) -> None:
        """Write every byte of ``parts`` (zero-copy: ``writev`` from their own memory)."""
        if fds:
            raise BrokenResourceError(errno.EINVAL, "this stream cannot carry file descriptors")
        self._writev(list(parts))

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
            if exc.errno in _BROKEN:
                raise _broken(exc) from exc
            if exc.errno == errno.EBADF:
                raise ClosedResourceError(errno.EBADF, "stream is closed") from exc
            raise

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


class UnixStream(Stream):
    """An AF_UNIX stream socket: bytes plus fds passed with SCM_RIGHTS."""

    supports_fds = True

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._sock = wrap_fd(fd)
        self._fds: deque[int] = deque()

    def read_into(self, view: memoryview, flags: int = 0) -> int:
        try:
            n, anc, _flags, _addr = self._sock.recvmsg_into([view], _ANC_SPACE, flags)
        except OSError as exc:
            if exc.errno in _BROKEN:
                return 0
            if exc.errno == errno.EBADF:
                raise ClosedResourceError(errno.EBADF, "stream is closed") from exc
            raise
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                self._fds.extend(fds)
        return n

    def read_exact_into(self, view: memoryview) -> int:
        # MSG_WAITALL: one recvmsg fills the whole view however many socket buffers it
        # takes (the kernel sleeps and copies on); a signal or EOF ends it short, so loop.
        done, n = 0, view.nbytes
        while done < n:
            got = self.read_into(view[done:], socket.MSG_WAITALL)
            if got == 0:
                break
            done += got
        return done

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], fds: Sequence[int] = ()
    ) -> None:
        if not fds:
            self._writev(list(parts))
            return
        if len(fds) > MAX_FDS:
            raise BrokenResourceError(errno.EINVAL, f"cannot pass more than {MAX_FDS} fds at once")
        first = memoryview(parts[0]).cast("B")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
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
    """A TCP or TLS socket: everything goes through the socket object (TLS must)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.fileno())
        self._sock = sock

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
        except OSError as exc:
            raise _broken(exc) from exc

    def write_pair(self, head: bytes, body: Any) -> None:
        self.write_all([head, body])  # TLS: through the socket object, never the raw fd

    def write_one(self, data: bytes) -> None:
        self.write_all([data])

    def close(self) -> None:
        self.fd = -1
        self._sock.close()

    def detach(self) -> int:
        self.fd = -1
        return self._sock.detach()


def stream_for_socket(sock: socket.socket) -> Stream:
    """Pick the stream for a connected socket: AF_UNIX (fds), else plain/TLS socket."""
    # Without ssl imported no TLS socket can exist: never import it (4 ms) just to check.
    # getattr: another thread may be importing ssl right now (no SSLSocket class yet).
    tls = getattr(sys.modules.get("ssl"), "SSLSocket", None)
    if sock.family == socket.AF_UNIX and (tls is None or not isinstance(sock, tls)):
        return UnixStream(sock.detach())
    return SocketStream(sock)


# -- sockets that ignore socket.setdefaulttimeout() ------------------------------------------------
# A program that calls ``socket.setdefaulttimeout(0.1)`` (HTTP clients do) gives every
# socket made afterwards a timeout, and with it O_NONBLOCK on the fd: polyproc's own
# pipes and connections would then time out or fail with EAGAIN. Every socket polyproc
# makes goes through one of these, which set the blocking mode explicitly.


def new_socket(family: int = socket.AF_UNIX, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new blocking socket, whatever ``socket.getdefaulttimeout()`` says."""
    sock = socket.socket(family, kind)
    sock.settimeout(None)
    return sock


def socketpair() -> tuple[socket.socket, socket.socket]:
    """``socket.socketpair(AF_UNIX, SOCK_STREAM)``, both ends blocking."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(None)
    b.settimeout(None)
    return a, b


def wrap_fd(fd: int) -> socket.socket:
    """A socket object for an existing socket fd, leaving the fd's blocking mode as it was."""
    was_blocking = os.get_blocking(fd)
    sock = socket.socket(fileno=fd)
    if was_blocking:
        sock.settimeout(None)
    else:
        sock.setblocking(False)
    return sock
