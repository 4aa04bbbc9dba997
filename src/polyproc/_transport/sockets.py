"""Making sockets and pipes: blocking modes, listening, connecting, TLS probes.

Every socket and pipe polyproc makes comes from here, so the choices that are easy
to get wrong are made once: the blocking mode (whatever
``socket.setdefaulttimeout()`` says), ``SO_REUSEADDR`` on a TCP listener,
``TCP_NODELAY`` on every TCP connection (requests are small and latency bound),
a Unix connect that waits for room in a full backlog, and the buffer sizes of a
``Pipe()``. The Listener (``_listener``) and the manager (``_manager``) share
``listen_socket`` and ``connect_socket``.

A pool's, a Pipe's and a Queue's sockets are ``_socket.socket`` objects (``socketpair``,
``wrap_fd``), the C type under ``socket.socket``: everything polyproc calls on them is
there, and the ``socket`` module (~2 ms to import, its enum conversions) is never on a
pool's or a short script's path (issue 11). Listeners and connections made for a user
(``new_socket``, ``connect_socket``) are ``socket.socket``, imported when first made.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import struct
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

__all__ = [
    "new_socket",
    "socketpair",
    "wrap_fd",
    "tune",
    "listen_socket",
    "connect_socket",
    "accept",
    "family_of",
    "want_errors",
    "is_tls",
    "tls_pending",
    "buffered_socketpair",
    "big_pipe",
]

# -- sockets that ignore socket.setdefaulttimeout() ------------------------------------------------
# A program that calls ``socket.setdefaulttimeout(0.1)`` (HTTP clients do) gives every
# socket made afterwards a timeout, and with it O_NONBLOCK on the fd: polyproc's own
# pipes and connections would then time out or fail with EAGAIN. Every socket polyproc
# makes goes through one of these, which set the blocking mode explicitly.


def new_socket(family: int = _socket.AF_UNIX, kind: int = _socket.SOCK_STREAM) -> socket.socket:
    """A new blocking socket, whatever ``socket.getdefaulttimeout()`` says."""
    import socket

    sock = socket.socket(family, kind)
    sock.settimeout(None)
    return sock


def socketpair() -> tuple[_socket.socket, _socket.socket]:
    """``socket.socketpair(AF_UNIX, SOCK_STREAM)``, both ends blocking (C sockets: see above)."""
    a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    a.settimeout(None)
    b.settimeout(None)
    return a, b


def wrap_fd(fd: int) -> _socket.socket:
    """A socket object for an existing socket fd, leaving the fd's blocking mode as it was."""
    was_blocking = os.get_blocking(fd)
    sock = _socket.socket(fileno=fd)
    if was_blocking:
        sock.settimeout(None)
    else:
        sock.setblocking(False)
    return sock


#: SO_SNDBUF asked for on a duplex Pipe's sockets (the kernel caps it at wmem_max).
_SOCK_BUF = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def buffered_socketpair() -> tuple[_socket.socket, _socket.socket]:
    """A blocking socketpair with 1 MiB send buffers: fewer sleeps and wake-ups per MiB streamed."""
    a, b = socketpair()
    for end in (a, b):
        try:
            end.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, _SOCK_BUF)
        except OSError:
            pass
    return a, b


def big_pipe(flags: int = 0) -> tuple[int, int]:
    """``os.pipe2(flags | O_CLOEXEC)`` with a 1 MiB buffer where the kernel allows (big writes
    run ~2x faster). Close-on-exec always, as ``os.pipe()``: an inheritable end would reach
    every spawned child, and a reader would never see EOF while one of them lives."""
    r, w = os.pipe2(flags | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    return r, w


# -- listening and connecting ----------------------------------------------------------------------
def family_of(address: Any) -> socket.AddressFamily:
    """AF_UNIX for a path (or abstract name), AF_INET/AF_INET6 for a ``(host, port)`` pair."""
    import socket

    if isinstance(address, str):
        return socket.AF_UNIX
    if isinstance(address, tuple) and len(address) == 2:
        return socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
    raise ValueError(f"not an address: {address!r} (a path string or a (host, port) pair)")


def tune(sock: _socket.socket) -> None:
    """TCP_NODELAY on a TCP socket: requests are tiny and latency bound, never let Nagle hold one."""
    if sock.family in (_socket.AF_INET, _socket.AF_INET6):
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)


def listen_socket(family: int, address: Any, backlog: int) -> socket.socket:
    """A blocking socket of ``family`` bound to ``address`` and listening (closed on failure)."""
    sock = new_socket(family)
    try:
        if family != _socket.AF_UNIX:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def accept(listener: socket.socket) -> tuple[socket.socket, Any]:
    """The next connection on ``listener``, tuned; a listener that is non-blocking raises
    ``BlockingIOError`` when none waits. The new socket is blocking (not the default timeout's)."""
    sock, addr = listener.accept()
    sock.settimeout(None)
    tune(sock)
    return sock, addr


_TIMEVAL = struct.Struct("@ll")


def connect_socket(address: Any, timeout: float | None, family: int | None = None) -> socket.socket:
    """A connected, tuned socket with ``timeout`` set; ``OSError`` (refused, not found) as is."""
    import socket

    if family is None:
        family = family_of(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            _connect_unix(sock, address, timeout)
        else:
            sock.settimeout(timeout)
            sock.connect(address)
        sock.settimeout(timeout)
        tune(sock)
    except OSError:
        sock.close()
        raise
    return sock


def _connect_unix(sock: _socket.socket, address: Any, timeout: float | None) -> None:
    """Connect in blocking mode, waiting at most ``timeout`` for room in a full backlog.

    With a Python timeout set, the socket is non-blocking underneath, and a
    Unix-socket connect to a server whose backlog is full fails at once with
    EAGAIN (``BlockingIOError``) instead of waiting (a TCP connect would wait).
    A blocking connect waits in the kernel, woken the moment the server accepts;
    ``SO_SNDTIMEO`` is the kernel's deadline for that wait (EAGAIN once it passes).
    """
    sock.setblocking(True)
    if timeout is not None:
        whole, frac = divmod(max(timeout, 0.0), 1.0)
        usec = int(frac * 1e6) or (0 if whole else 1)  # (0, 0) would mean "wait forever"
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _TIMEVAL.pack(int(whole), usec))
    try:
        sock.connect(address)
    except BlockingIOError as exc:
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"the server at {address!r} did not accept a "
            f"connection within {timeout} s (its backlog stayed full)",
        ) from exc
    finally:
        if timeout is not None:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _TIMEVAL.pack(0, 0))


# -- TLS, without importing ssl (8 ms) unless the user did -----------------------------------------
def want_errors() -> tuple[type[BaseException], ...]:
    """What a non-blocking socket raises for "try again": EAGAIN, and TLS's wants."""
    # getattr: another thread may be importing ssl right now (a partly initialised module);
    # a TLS socket cannot exist before its classes do.
    ssl = sys.modules.get("ssl")
    wants = (getattr(ssl, "SSLWantReadError", None), getattr(ssl, "SSLWantWriteError", None))
    return (BlockingIOError, InterruptedError, *(w for w in wants if w is not None))


def is_tls(sock: object) -> bool:
    """Whether ``sock`` is an ``ssl.SSLSocket`` (without importing ssl to ask)."""
    tls = getattr(sys.modules.get("ssl"), "SSLSocket", None)
    return tls is not None and isinstance(sock, tls)


def tls_pending(sock: Any) -> bool:
    """Decrypted bytes waiting inside a TLS socket (the fd will not say so)."""
    return is_tls(sock) and bool(sock.pending())
