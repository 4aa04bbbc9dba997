"""Waking and waiting: a loop's wake-up pipe, and waiting for fds to become readable.

The pool engine, the manager's serving loop and its gate each sleep in ``select``/
``epoll`` on their sockets plus ``Wake.fileno()``; ``set()`` (any thread) makes that
fd readable, ``drain()`` (the loop, once woken) empties it. Both ends are
non-blocking: a full pipe already means "wake up", so ``set`` never blocks, and a
``set`` after ``close`` is ignored (the loop is gone).

``readable(fds, timeout)`` is the one poll-with-a-deadline loop (``connection.wait``,
a child handle's ``wait``).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterable

__all__ = ["Wake", "readable"]


def readable(fds: Iterable[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` readable (or at end of file, or hung up) within ``timeout``
    seconds (None: however long it takes); [] if none is by then."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
        events = poller.poll(ms)
        if events or ms == 0:
            return [fd for fd, _ in events]
        if deadline is not None and time.monotonic() >= deadline:
            return []


class Wake:
    """One wake-up pipe (non-blocking, close-on-exec)."""

    __slots__ = ("_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The fd to watch for reading."""
        return self._r

    def set(self) -> None:
        """Wake the loop (safe from any thread, at any time)."""
        try:
            os.write(self._w, b"x")
        except OSError:
            pass  # full: it will wake anyway; closed: the loop is gone

    def drain(self) -> None:
        """Consume pending wake-ups (the loop, after its fd was readable).

        One read: a set-then-sleep protocol leaves one byte, and should more than 4096
        be waiting, the fd stays readable and the loop just wakes once more.
        """
        try:
            os.read(self._r, 4096)
        except OSError:
            pass

    def close(self) -> None:
        """Close both ends; idempotent."""
        for fd in (self._r, self._w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = -1
