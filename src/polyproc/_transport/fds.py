"""File descriptors across a Unix socket (SCM_RIGHTS): the one place they are sent and received.

Every fd polyproc passes goes through ``send_fds``/``rights_of``/``recv_fds``: a
Connection's pickled lock or segment (``stream.UnixStream``), a pool task's memfd
(``outbox.Outbox``), a Queue item's fds (its side socket), and
``reduction.sendfds``/``recvfds``. The kernel takes at most ``MAX_FDS`` per message.
"""

from __future__ import annotations

import _socket
import array
import errno
import os
from collections.abc import Sequence
from typing import Any

from ..errors import BrokenResourceError

__all__ = ["MAX_FDS", "ANC_SPACE", "rights", "rights_of", "send_fds", "recv_fds", "close_fds"]

#: SCM_MAX_FD in the kernel: the most fds one sendmsg may carry.
MAX_FDS = 253
_INT = array.array("i").itemsize
#: Ancillary space for the most fds one message can carry.
ANC_SPACE = _socket.CMSG_SPACE(MAX_FDS * _INT)


def rights(fds: Sequence[int]) -> list[tuple[int, int, Any]]:
    """The ancillary data that carries ``fds`` (``BrokenResourceError`` past ``MAX_FDS``)."""
    if len(fds) > MAX_FDS:
        raise BrokenResourceError(errno.EINVAL, f"cannot pass more than {MAX_FDS} fds at once")
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))]


def rights_of(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds in ancillary data ``recvmsg`` returned (now ours to close)."""
    out: list[int] = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % _INT)])
            out.extend(fds)
    return out


def send_fds(sock: _socket.socket, data: Any, fds: Sequence[int], flags: int = 0) -> int:
    """Send ``data`` (at least one byte) with ``fds`` riding on its first byte; bytes sent."""
    return sock.sendmsg([data], rights(fds) if fds else [], flags)


def recv_fds(sock: _socket.socket, nbytes: int, maxfds: int = MAX_FDS) -> tuple[bytes, list[int]]:
    """Up to ``nbytes`` and the fds that came with them (b"" and [] at end of stream)."""
    data, anc, _flags, _addr = sock.recvmsg(nbytes, _socket.CMSG_SPACE(maxfds * _INT))
    return data, rights_of(anc)


def close_fds(fds: Sequence[int]) -> None:
    """Close each of ``fds``, ignoring those already gone (cleanup after a failure)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
