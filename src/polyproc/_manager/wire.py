"""The manager's wire: frames over sockets, addresses, and how a server polls.

The frame itself (``length:u32 op:u8`` + body, ``Op``, ``FrameDecoder``) is sans-IO
in ``_protocol.compact``; the bytes move through ``_transport`` (``SocketStream``
here and for the clients, ``Outbox`` in the serving loop and the gate). This module
holds what the manager adds on top:

* ``FrameSocket``: blocking frames for a client (and the owner's status line),
  one ``recv`` per reply in the common case;
* ``dumps``/``loads``: the message bodies (pickle 5, cloudpickle when needed);
* addresses (a fresh abstract name by default), connecting (a refused connect is
  ``ManagerUnavailableError``) and listening;
* ``Spin``: how long the server busy-polls before sleeping.
"""

from __future__ import annotations

import _socket
import errno
import os
import pickle
import socket
from typing import Any

from .._protocol.compact import HEADER, MAX_FRAME, OPS, FrameDecoder, Op, check, encode
from .._serialize import DEFAULT_SERIALIZER, Serializer, _plain_dumps, reducers
from .._transport import SocketStream, family_of, is_tls, tls_pending, want_errors, wrap_fd
from .._transport import connect_socket as _connect
from .._transport import listen_socket as _listen
from .._transport.spin import Spin, spin_budget
from ..errors import BrokenResourceError, ManagerUnavailableError, ProtocolError

__all__ = [
    "Op",
    "HEADER",
    "MAX_FRAME",
    "COALESCE",
    "SERVER_SPIN",
    "Spin",
    "Address",
    "FrameDecoder",
    "FrameSocket",
    "SocketCarrier",
    "dumps",
    "loads",
    "loads_with",
    "encode",
    "family_of",
    "connect_socket",
    "listen_socket",
    "default_address",
    "want_errors",
    "is_tls",
    "tls_pending",
]

_HDR = HEADER.size
_pack, _unpack = HEADER.pack, HEADER.unpack_from
_CHUNK = 1 << 16
#: A body under this many bytes is copied behind its header and written in one
#: syscall; a bigger one goes in two writes (no copy).
COALESCE = 1 << 14


#: Seconds the server busy-polls for the next request before sleeping. A sleep
#: and its wake-up cost ~20 us each way (more on a VM), several times a manager
#: call, and a client's next request usually comes within microseconds of its
#: reply; on a busy machine spinning only burns CPU the clients need: see ``Spin``
#: (``_transport/spin.py``, shared with the pool's workers and callers).
#: 0 with one CPU, where a spinning process only delays the one it waits for.
#: (Clients do not spin: measured, it made concurrent clients' calls interleave
#: in lockstep, and a spinning thread holds the GIL its process's others need.)
SERVER_SPIN = spin_budget(50e-6)


Address = str | tuple[str, int]

_pickle_dumps = pickle.dumps


def dumps(obj: Any, serializer: Serializer | None = None) -> bytes:
    """One message body: the manager's context's ``serializer`` if it has its own, else
    pickle 5 for a small message and cloudpickle when plain pickle cannot (lambdas).

    ``None`` stands for the default serializer, whose fast path is the one below.
    Whatever pickled it, the reader unpickles a body with ``loads``, only from a
    peer that has authenticated (the gate), so the choice changes nothing about
    hostile input.
    """
    if serializer is not None:
        return serializer.dumps_bytes(obj, what="manager message")
    try:
        # ``_plain_dumps`` inlined for its common case (no registered reducer): this
        # runs twice per manager call, once on each side.
        return _pickle_dumps(obj, 5) if not reducers.table else _plain_dumps(obj, 5, None)
    except Exception:
        return DEFAULT_SERIALIZER.dumps_bytes(obj, what="manager message")


loads = pickle.loads


def loads_with(serializer: Serializer | None, body: bytes | memoryview) -> Any:
    """``loads`` through the manager's own serializer, if it has one (the other end of ``dumps``).

    DECREF bodies (lists of ints) and the owner's status line stay plain pickle.
    """
    return pickle.loads(body) if serializer is None else serializer.loads(body)


class FrameSocket:
    """Blocking frames over a connected socket (plain, AF_UNIX or TLS). One reader, one writer.

    ``sock`` is kept for its timeout (``settimeout``) and ``close``; bytes go through
    the ``SocketStream`` on it (``plain_calls``: on a plain socket, its own ``recv`` and
    ``sendall``, so a broken peer raises the socket's ``OSError``, or ``EOFError`` at
    a clean end).
    """

    __slots__ = ("sock", "_stream", "_read", "write", "_wait", "_pending")

    def __init__(self, sock: _socket.socket, pending: bytes = b"") -> None:
        self.sock = sock
        self._stream = stream = SocketStream(sock)
        # The socket's own recv/sendall (TLS: the mapped ones): every OSError means the
        # peer is gone to each of our callers, and a frame less per call shows.
        # ``write(data)``: whole frames already encoded (``encode``), in one syscall.
        self._read, self.write = stream.plain_calls()
        self._wait: Any = None
        self._pending = bytearray(pending)

    def wait_in_poll(self) -> None:
        """From now on, wait for each reply in ``poll`` before reading it.

        Only for a socket with no timeout (a client's connection after its handshake):
        see ``SocketStream.readable_waiter`` for the wake-up this saves on every call.
        """
        self._wait = self._stream.readable_waiter()

    def send(self, op: int, body: bytes) -> None:
        n = len(body)
        if n < COALESCE:
            self.write(_pack(n, op) + body)
        else:
            self.write(HEADER.pack(n, op))
            self.write(body)

    def exchange(
        self, data: bytes | None, max_size: int = MAX_FRAME
    ) -> tuple[int, bytes | memoryview]:
        """Write ``data`` (whole frames; None: nothing) and read one reply frame.

        A client's round trip in one frame of ours: every proxy call that waits for
        its answer comes here. Errors as ``recv``.
        """
        if data is not None:
            self.write(data)
        if not self._pending:
            if self._wait is not None:
                self._wait()
            data = self._read(_CHUNK)
            if not data:
                raise EOFError
            if len(data) >= _HDR:
                length, op = _unpack(data)
                if length + _HDR == len(data):  # the common case: exactly one whole frame
                    if op not in OPS or length > max_size:
                        check(length, op, max_size)
                    return op, memoryview(data)[_HDR:]
            self._pending += data
        return self._recv_slow(max_size)

    def recv(self, max_size: int = MAX_FRAME) -> tuple[int, bytes | memoryview]:
        """One frame; ``EOFError`` at a clean end, ``ProtocolError`` on garbage or truncation."""
        return self.exchange(None, max_size)

    def _fill(self) -> None:
        data = self._read(_CHUNK)
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
        check(length, op, max_size)
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
            data = self._read(min(length - have, 1 << 20))
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

    def __init__(self, *socks: _socket.socket) -> None:
        self.socks = socks

    def __reduce__(self) -> tuple[Any, ...]:
        from .._serialize import fd_handle

        return (_rebuild_carrier, tuple(fd_handle(s.fileno()) for s in self.socks))


def _rebuild_carrier(*fds: int) -> SocketCarrier:
    return SocketCarrier(*(wrap_fd(fd) for fd in fds))


# -- addresses ---------------------------------------------------------------------
def own_serializer(serializer: Serializer | None) -> Serializer | None:
    """``serializer`` if it differs from the default, else None (``dumps``'s fast path)."""
    return None if serializer is None or serializer == DEFAULT_SERIALIZER else serializer


def default_address() -> str:
    """A fresh Linux abstract AF_UNIX name: nothing on disk to leak if the server is killed."""
    return f"\0polyproc-manager-{os.getpid()}-{os.urandom(8).hex()}"


def connect_socket(address: Address, timeout: float | None) -> socket.socket:
    """A connected socket; ``ManagerUnavailableError`` when nobody listens there."""
    try:
        return _connect(address, timeout)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise ManagerUnavailableError(
            errno.ECONNREFUSED,
            f"no manager server at {address!r} (never started, shut down or dead)",
        ) from exc


def listen_socket(address: Address, backlog: int = 128) -> tuple[socket.socket, Address]:
    """A listening socket bound to ``address``; returns the address actually bound (port 0)."""
    family = family_of(address)
    sock = _listen(family, address, backlog)
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
