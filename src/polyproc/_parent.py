"""The parent process as its child sees it (``multiprocessing.parent_process()``).

Apart from ``_process.py`` so that module keeps to one job, a ``Process`` and its life;
a child builds one of these for its parent at start (``_process._State.become_child``).
"""

from __future__ import annotations

import os

__all__ = ["ParentProcess"]


class ParentProcess:
    """The parent as its child sees it: name, pid, and whether it still lives."""

    __module__ = "polyproc.process"  # its public home: repr, pickle

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = self.ident = pid
        self.daemon = False
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    @property
    def sentinel(self) -> int:
        """A pidfd that becomes readable when the parent exits (for ``wait``)."""
        if self._pidfd is None:
            raise ValueError("parent is gone")
        return self._pidfd

    def is_alive(self) -> bool:
        """Whether the parent still runs (polled through its pidfd, no signals)."""
        from ._launch.handle import wait_fd

        return self._pidfd is not None and not wait_fd(self._pidfd, 0)

    def join(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for the parent to exit."""
        from ._launch.handle import wait_fd

        if self._pidfd is not None:
            wait_fd(self._pidfd, timeout)

    @property
    def exitcode(self) -> int | None:
        """Always None: a child cannot learn its parent's exit status."""
        return None

    def __repr__(self) -> str:
        return f"<ParentProcess name={self.name!r} pid={self.pid}>"
