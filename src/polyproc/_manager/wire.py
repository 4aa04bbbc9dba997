"""The manager's wire: an op enum, 5-byte frame headers, bounded reads, addresses.

A frame is ``length:u32 op:u8`` (little endian) followed by ``length`` bytes of
body. Bodies of CALL/RESULT/... are pickle-5 streams of small tuples; AUTH
bodies are ``_protocol.auth`` frames (never unpickled)::

    client thread                               server thread (one per connection)
    -------------                               ----------------------------------
    [DECREF (ids)]  CALL (id, method, args, kw) --> recv -> objects[id].method(...)
                    <-- RESULT value | ERROR exc | PROXY (id, exposed) | FAULT text

Why not ``_protocol.framing`` and ``Connection``: a manager call is latency
bound (two frames per round trip); a 5-byte header parsed with one
``unpack_from`` and a whole frame read with one ``recv`` keep the per-call cost
at a few microseconds. The one invariant that matters for safety is the same:
``length`` is checked against the reader's ``max_size`` *before* any body byte
is buffered, so a peer that has not authenticated can make us hold at most
``MAX_AUTH_FRAME`` bytes.

``FrameDecoder`` is the same parsing, sans-IO (bytes in, frames out), for the
gate's non-blocking handshakes and for property tests; ``FrameSocket`` is the
blocking fast path the serving threads and clients use.
"""

from __future__ import annotations

import enum
import errno
import os
import pickle
import socket
import struct
import sys
from typing import Any

from .._serialize import DEFAULT_SERIALIZER, _plain_dumps
from .._transport import new_socket, wrap_fd
from ..errors import BrokenResourceError, ManagerUnavailableError, ProtocolError

__all__ = [
    "Op",
    "HEADER",
    "MAX_FRAME",
    "SERVER_SPIN",
    "Spin",
    "Address",
    "FrameDecoder",
    "FrameSocket",
    "SocketCarrier",
    "dumps",
    "loads",
    "family_of",
    "connect_socket",
    "listen_socket",
    "default_address",
    "want_errors",
    "is_tls",
    "tls_pending",
]

HEADER = struct.Struct("<IB")
_HDR = HEADER.size
#: The largest frame an authenticated peer may send (u32 is the hard limit).
MAX_FRAME = (1 << 32) - 1
_CHUNK = 1 << 16
_COALESCE = 1 << 14


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: Seconds the server busy-polls for the next request before sleeping. A sleep
#: and its wake-up cost ~20 us each way (more on a VM), several times a manager
#: call, and a client's next request usually comes within microseconds of its
#: reply; on a busy machine spinning only burns CPU the clients need: see ``Spin``.
#: 0 with one CPU, where a spinning process only delays the one it waits for.
#: (Clients do not spin: measured, it made concurrent clients' calls interleave
#: in lockstep, and a spinning thread holds the GIL its process's others need.)
SERVER_SPIN = 50e-6 if _cpus() > 1 else 0.0
#: A sleep shorter than this would have been saved by spinning: spin again.
REARM = 100e-6
_MIN_SPIN = 5e-6


class Spin:
    """An adaptive busy-poll budget: full after a poll that found something (or a short
    sleep), halved after each poll that found nothing, off below 5 us.

    Polls fail in a row when the peer cannot run (other processes hold the CPUs);
    then we stop spinning, until a sleep turns out short again.
    """

    __slots__ = ("budget", "full")

    def __init__(self, full: float) -> None:
        self.budget = self.full = full

    def miss(self) -> None:
        half = self.budget / 2
        self.budget = half if half >= _MIN_SPIN else 0.0

    def slept(self, seconds: float) -> None:
        if seconds < REARM:
            self.budget = self.full


Address = str | tuple[str, int]


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


_OPS = frozenset(int(o) for o in Op)


def dumps(obj: Any) -> bytes:
    """Pickle 5 for a small message; cloudpickle when plain pickle cannot (lambdas)."""
    try:
        return _plain_dumps(obj, 5, None)
    except Exception:
        return DEFAULT_SERIALIZER.dumps_bytes(obj, what="manager message")


loads = pickle.loads


def _check(length: int, op: int, max_size: int) -> None:
    if op not in _OPS:
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
        buf, pos = self._buf, 0
        out: list[tuple[int, bytes]] = []
        end = len(buf)
        while end - pos >= _HDR and len(out) < limit:
            length, op = HEADER.unpack_from(buf, pos)
            _check(length, op, self.max_size)
            stop = pos + _HDR + length
            if stop > end:
                break
            out.append((op, bytes(buf[pos + _HDR : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        if len(out) < limit and len(buf) >= _HDR:  # an incomplete frame: check its header now
            length, op = HEADER.unpack_from(buf)
            _check(length, op, self.max_size)
        return out

    def feed_frames(self, data: memoryview) -> list[tuple[int, bytes]]:
        """``feed(data)`` then ``frames()``, copying each body once when nothing was buffered."""
        if self._buf:
            self._buf += data
            return self.frames()
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        while end - pos >= _HDR:
            length, op = HEADER.unpack_from(data, pos)
            _check(length, op, self.max_size)
            stop = pos + _HDR + length
            if stop > end:
                break
            out.append((op, bytes(data[pos + _HDR : stop])))
            pos = stop
        if pos < end:
            self._buf += data[pos:]
            if end - pos >= _HDR:  # an incomplete frame: check its header now
                length, op = HEADER.unpack_from(data, pos)
                _check(length, op, self.max_size)
        return out

    def leftover(self) -> bytes:
        """Bytes after the last whole frame (a pipelined first request)."""
        return bytes(self._buf)


def encode(op: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), op) + body


class FrameSocket:
    """Blocking frames over a connected socket (plain, AF_UNIX or TLS). One reader, one writer."""

    __slots__ = ("sock", "_pending")

    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        self.sock = sock
        self._pending = bytearray(pending)

    def send(self, op: int, body: bytes) -> None:
        n = len(body)
        if n < _COALESCE:
            self.sock.sendall(HEADER.pack(n, op) + body)
        else:
            self.sock.sendall(HEADER.pack(n, op))
            self.sock.sendall(body)

    def send_raw(self, data: bytes) -> None:
        """Several frames already encoded (``encode``): one syscall."""
        self.sock.sendall(data)

    def recv(self, max_size: int = MAX_FRAME) -> tuple[int, bytes | memoryview]:
        """One frame; ``EOFError`` at a clean end, ``ProtocolError`` on garbage or truncation."""
        if not self._pending:
            data = self.sock.recv(_CHUNK)
            if not data:
                raise EOFError
            if len(data) >= _HDR:
                length, op = HEADER.unpack_from(data)
                if length + _HDR == len(data):  # the common case: exactly one whole frame
                    _check(length, op, max_size)
                    return op, memoryview(data)[_HDR:]
            self._pending += data
        return self._recv_slow(max_size)

    def _fill(self) -> None:
        data = self.sock.recv(_CHUNK)
        if not data:
            if self._pending:
                raise ProtocolError("truncated frame: the peer closed in the middle of a message")
            raise EOFError
        self._pending += data

    def _recv_slow(self, max_size: int) -> tuple[int, bytes]:
        pending = self._pending
        while len(pending) < _HDR:
            self._fill()
        length, op = HEADER.unpack_from(pending)
        _check(length, op, max_size)
        total = _HDR + length
        if len(pending) >= total:
            body = bytes(pending[_HDR:total])
            del pending[:total]
            return op, body
        # A large body: read it in bounded chunks (memory grows only as bytes arrive).
        parts = [bytes(pending[_HDR:])]
        have = len(parts[0])
        pending.clear()
        while have < length:
            data = self.sock.recv(min(length - have, 1 << 20))
            if not data:
                raise ProtocolError("truncated frame: the peer closed in the middle of a message")
            parts.append(data)
            have += len(data)
        return op, b"".join(parts)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SocketCarrier:
    """Sockets handed to a manager process as it starts.

    Under fork the child simply inherits the object; under spawn and forkserver it
    pickles its fds with ``fd_handle`` (they cross as SCM_RIGHTS) and the child
    rebuilds sockets around its own copies.
    """

    __slots__ = ("socks",)

    def __init__(self, *socks: socket.socket) -> None:
        self.socks = socks

    def __reduce__(self) -> tuple[Any, ...]:
        from .._serialize import fd_handle

        return (_rebuild_carrier, tuple(fd_handle(s.fileno()) for s in self.socks))


def _rebuild_carrier(*fds: int) -> SocketCarrier:
    return SocketCarrier(*(wrap_fd(fd) for fd in fds))


# -- TLS, without importing ssl (8 ms) unless the user did --------------------------
class _NeverRaised(Exception):
    """Stands in for ssl's classes while ssl is not imported: then no TLS socket exists."""


def want_errors() -> tuple[type[BaseException], ...]:
    """What a non-blocking socket raises for "try again": EAGAIN, and TLS's wants."""
    # getattr: another thread may be importing ssl right now (partly initialised); a TLS
    # socket cannot exist before its classes do.
    ssl = sys.modules.get("ssl")
    wants = (getattr(ssl, "SSLWantReadError", None), getattr(ssl, "SSLWantWriteError", None))
    return (BlockingIOError, InterruptedError, *(w for w in wants if w is not None))


def is_tls(sock: object) -> bool:
    tls = getattr(sys.modules.get("ssl"), "SSLSocket", None)
    return tls is not None and isinstance(sock, tls)


def tls_pending(sock: Any) -> bool:
    """Decrypted bytes waiting inside a TLS socket (the fd will not say so)."""
    return is_tls(sock) and bool(sock.pending())


# -- addresses ---------------------------------------------------------------------
def family_of(address: Address) -> socket.AddressFamily:
    if isinstance(address, str):
        return socket.AF_UNIX
    if isinstance(address, tuple) and len(address) == 2:
        return socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
    raise ValueError(f"not a manager address: {address!r} (a path string or a (host, port) pair)")


def default_address() -> str:
    """A fresh Linux abstract AF_UNIX name: nothing on disk to leak if the server is killed."""
    return f"\0polyproc-manager-{os.getpid()}-{os.urandom(8).hex()}"


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Requests are tiny and latency bound: never let Nagle hold one back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_socket(address: Address, timeout: float | None) -> socket.socket:
    """A connected socket; ``ManagerUnavailableError`` when nobody listens there."""
    family = family_of(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            _connect_unix(sock, address, timeout)
        else:
            sock.settimeout(timeout)
            sock.connect(address)
        sock.settimeout(timeout)
        _tune(sock)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        sock.close()
        raise ManagerUnavailableError(
            errno.ECONNREFUSED,
            f"no manager server at {address!r} (never started, shut down or dead)",
        ) from exc
    except OSError:
        sock.close()
        raise
    return sock


_TIMEVAL = struct.Struct("@ll")


def _connect_unix(sock: socket.socket, address: Address, timeout: float | None) -> None:
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
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(int(whole), usec))
    try:
        sock.connect(address)
    except BlockingIOError as exc:
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"the manager at {address!r} did not accept a "
            f"connection within {timeout} s (its backlog stayed full)",
        ) from exc
    finally:
        if timeout is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(0, 0))


def listen_socket(address: Address, backlog: int = 128) -> tuple[socket.socket, Address]:
    """A listening socket bound to ``address``; returns the address actually bound (port 0)."""
    family = family_of(address)
    sock = new_socket(family)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    bound: Address = address
    if family != socket.AF_UNIX:
        host, port = sock.getsockname()[:2]
        bound = (str(address[0]), int(port))
    return sock, bound


def broken(address: Address, exc: BaseException | None = None) -> BrokenResourceError:
    why = f": {exc}" if exc is not None and str(exc) else ""
    return BrokenResourceError(
        errno.EPIPE, f"lost the connection to the manager at {address!r}{why}"
    )
