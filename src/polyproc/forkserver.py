"""``multiprocessing.forkserver``, for drop-in imports: the forkserver of this process.

The stdlib's module is mostly private; what programs and CPython's tests use is
``ensure_running()`` and ``_forkserver._forkserver_pid``. Both are here, over
polyproc's own forkserver (``_launch.forkserver``), which, like the stdlib's, is
started again by the next start when it has died.
"""

from __future__ import annotations

from ._launch.forkserver import _CLIENT

__all__ = ["ensure_running"]


def ensure_running() -> None:
    """Start this process's forkserver now if it is not running (it starts on first use)."""
    with _CLIENT.lock:
        _CLIENT.connection()


class _ForkServer:
    """The stdlib's ``forkserver._forkserver`` object: ``ensure_running``, ``_forkserver_pid``."""

    ensure_running = staticmethod(ensure_running)

    @property
    def _forkserver_pid(self) -> int | None:
        return _CLIENT.server_pid


_forkserver = _ForkServer()
