"""The fork start method: the child is a copy of the parent and calls the inherited entry.

Fast (about a millisecond) and needs no pickling, but forking a process that
has threads can deadlock the child on a lock some other thread held: the
default (``auto``, template.py) forks only where no other thread can hold one.
A pool's first workers are forked here, at its creation; its replacements come from
its template when one could be made (template.py).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from .child import die_with_parent
from .handle import PidfdHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import LaunchSpec
    from .handle import ChildHandle

__all__ = ["start"]


def start(spec: LaunchSpec) -> ChildHandle:
    from ..errors import ProcessError
    from .thread import on_launcher_thread

    template = spec.template
    main = threading.current_thread() is threading.main_thread()
    # A pool worker: its first workers are written down from the main thread at pool
    # creation and forked by the template as it is forked, as under ``auto``
    # (template.start says why); later ones, asked for from the engine's thread, are
    # forked by the pool's template too.
    if template is not None and main:
        handle = template.start_first(spec)  # None if not safe: the launcher's fork
        if handle is not None:
            return handle
    if template is not None and not main and template.usable():
        try:
            return template.start(spec)
        except (OSError, ProcessError):  # it cannot be pickled, or the template is gone
            pass
    return on_launcher_thread(lambda: _fork(spec.entry))


def prepare_to_fork() -> None:
    """Load, once, what every fork child would otherwise load for itself: the prctl
    helper; and, once this process holds manager proxies, the handshake (``auth``,
    ~0.7-1 ms), which each child would otherwise import on its first proxy call (the
    stdlib's children inherit hmac: the stdlib's owner shakes hands).

    Not ``logging``: a child that logs imports it (or has it, if we had); a short
    script that never logs must not pay 2-3 ms for it (issue 11).
    """
    from .child import _prctl

    _prctl()
    if "polyproc._manager.client" in sys.modules:
        from .._protocol import auth  # noqa: F401


def _fork(entry: Callable[[], int]) -> PidfdHandle:
    from .parking import parked

    prepare_to_fork()
    with parked():  # our own threads parked (and no warning for them) where that is possible
        return fork_child(entry)


def fork_child(entry: Callable[[], int]) -> PidfdHandle:
    """``os.fork()``; the child calls ``entry`` and exits. Call ``prepare_to_fork`` first."""
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
