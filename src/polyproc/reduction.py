"""``multiprocessing.reduction``: teach every polyproc transport to pickle a type; pass fds.

Libraries extend multiprocessing here (``torch.multiprocessing`` registers its
tensors' reducers): ``ForkingPickler.register(MyType, reduce_my_type)`` (or
``register``) adds a reducer that polyproc's serializer uses from then on, for
Pipes, Queues, pools, managers and the Process object itself (``_serialize``'s
reducer table; an empty table costs nothing).

``send_handle``/``recv_handle`` pass a file descriptor over a polyproc
Connection (SCM_RIGHTS, through the Connection's own framing). ``DupFd(fd)``
is an fd that travels when pickled into a polyproc transport and is
``detach()``-ed on the other side, as the stdlib's.
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import socket
import sys
from collections.abc import Callable
from typing import Any

from ._serialize import fd_handle, reducers, register_reducer
from ._transport.fds import recv_fds, send_fds

__all__ = [
    "send_handle",
    "recv_handle",
    "ForkingPickler",
    "register",
    "dump",
    "DupFd",
    "sendfds",
    "recvfds",
    "HAVE_SEND_HANDLE",
    "AbstractReducer",
]

HAVE_SEND_HANDLE = True


class ForkingPickler(pickle.Pickler):
    """A pickler with the registered reducers; ``register`` adds one for every transport."""

    def __init__(self, file: Any, protocol: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(file, protocol, *args, **kwargs)
        table: Any = copyreg.dispatch_table
        self.dispatch_table = collections.ChainMap(reducers.table, table)

    @classmethod
    def register(cls, type: type, reduce: Callable[[Any], Any]) -> None:  # noqa: A002 - stdlib
        """Pickle instances of ``type`` with ``reduce`` from now on, in every polyproc transport."""
        register_reducer(type, reduce)

    @classmethod
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:
        buf = io.BytesIO()
        cls(buf, protocol).dump(obj)
        return buf.getbuffer()

    loads = staticmethod(pickle.loads)


register = ForkingPickler.register


def dump(obj: Any, file: Any, protocol: int | None = None) -> None:
    """``ForkingPickler(file, protocol).dump(obj)``."""
    ForkingPickler(file, protocol).dump(obj)


class _Handle:
    """An fd inside a message: the receiver gets its own copy as an int."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_identity, (fd_handle(self.fd),))


def _identity(fd: int) -> int:
    return fd


def send_handle(conn: Any, handle: int, destination_pid: int | None = None) -> None:
    """Send file descriptor ``handle`` over Connection ``conn`` (ours stays open)."""
    conn.send(_Handle(handle))


def recv_handle(conn: Any) -> int:
    """Receive a file descriptor sent with ``send_handle``: a new fd, now ours."""
    fd = conn.recv()
    if not isinstance(fd, int):
        raise RuntimeError(f"expected a file descriptor from send_handle, got {type(fd).__name__}")
    return fd


def sendfds(sock: socket.socket, fds: list[int]) -> None:
    """Send ``fds`` over a connected AF_UNIX socket (SCM_RIGHTS), as the stdlib's helper."""
    send_fds(sock, bytes([len(fds) % 256]), fds)


def recvfds(sock: socket.socket, size: int) -> list[int]:
    """Receive ``size`` fds sent with ``sendfds``."""
    msg, fds = recv_fds(sock, 1, size)
    if not msg and not fds:
        raise EOFError
    if len(fds) != size:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"received {len(fds)} fds, expected {size}")
    return list(fds)


class DupFd:
    """A duplicate of ``fd`` that travels in a polyproc pickle; ``detach()`` takes it."""

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)

    def detach(self) -> int:
        """The fd, now the caller's to close."""
        return self.fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_dupfd, (fd_handle(self.fd),))


def _rebuild_dupfd(fd: int) -> DupFd:
    d = DupFd.__new__(DupFd)
    d.fd = fd
    return d


class AbstractReducer:
    """The stdlib's base for a custom reducer: its names, bound to this module."""

    ForkingPickler = ForkingPickler
    register = staticmethod(register)
    dump = staticmethod(dump)
    send_handle = staticmethod(send_handle)
    recv_handle = staticmethod(recv_handle)
    DupFd = DupFd


#: ``polyproc.reducer`` (the stdlib's ``multiprocessing.reducer``): this module.
_module = sys.modules[__name__]
