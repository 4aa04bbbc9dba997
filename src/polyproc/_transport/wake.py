"""A wake-up pipe: how another thread interrupts a selector loop's sleep.

The pool engine, the manager's serving loop and its gate each sleep in ``select``/
``epoll`` on their sockets plus ``Wake.fileno()``; ``set()`` (any thread) makes that
fd readable, ``drain()`` (the loop, once woken) empties it. Both ends are
non-blocking: a full pipe already means "wake up", so ``set`` never blocks, and a
``set`` after ``close`` is ignored (the loop is gone).
"""

from __future__ import annotations

import os

__all__ = ["Wake"]


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
