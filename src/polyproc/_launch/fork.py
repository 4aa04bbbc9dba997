"""The fork start method: the child is a copy of the parent and calls the inherited entry.

Fast (about a millisecond) and needs no pickling, but forking a process that
has threads can deadlock the child on a lock some other thread held; that is
why forkserver is the default.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .child import die_with_parent
from .handle import PidfdHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import LaunchSpec

__all__ = ["start"]


def start(spec: LaunchSpec) -> PidfdHandle:
    from . import on_launcher_thread

    return on_launcher_thread(lambda: _fork(spec.entry))


def _fork(entry: Callable[[], int]) -> PidfdHandle:
    import logging  # noqa: F401 - imported once here, not in every child

    from .child import _libc

    _libc()
    parent_pid = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # or the child prints the parent's buffer again
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            die_with_parent(parent_pid)
            code = entry()
        finally:
            os._exit(code)
    return PidfdHandle(pid, os.pidfd_open(pid))
