"""Unlink named segments whose owner died: a tiny tracker process tied to the owner by a pipe.

Named POSIX segments (/dev/shm/NAME) outlive their creator unless someone
unlinks them. The first ``SharedMemory(create=True)`` of a process starts a
tracker: a minimal ``python -c`` process in its own session (so Ctrl+C in the
terminal does not reach it) whose stdin is a pipe from the owner::

    owner ── "+name\\n" (created) / "-name\\n" (unlinked) ──► tracker
    owner exits or is SIGKILLed → the pipe reaches EOF → tracker unlinks what is left, exits

When the owner's set becomes empty it closes the pipe and reaps the tracker,
so no process lingers. A forked child gets a tracker of its own (the inherited
pipe end is closed in the child at fork).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

__all__ = ["register", "unregister"]

_CODE = r"""
import os, sys
names = set()
for line in sys.stdin:
    op, name = line[0], line[1:].rstrip("\n")
    if op == "+":
        names.add(name)
    elif op == "-":
        names.discard(name)
for name in names:
    try:
        os.unlink("/dev/shm/" + name)
    except OSError:
        pass
"""


class _Tracker:
    """This process's tracker (the one mutable holder of this module)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.names: set[str] = set()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        proc, self.proc, self.names = self.proc, None, set()
        if proc is not None and proc.stdin is not None:
            try:
                os.close(proc.stdin.fileno())  # the parent's tracker is the parent's
            except OSError:
                pass


_tracker = _Tracker()
os.register_at_fork(after_in_child=_tracker.after_fork_in_child)


def _send(line: str) -> None:
    proc = _tracker.proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


def register(name: str) -> None:
    t = _tracker
    with t.lock:
        if t.proc is None:
            t.proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _CODE],
                stdin=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        t.names.add(name)
        _send("+" + name)


def unregister(name: str) -> None:
    t = _tracker
    with t.lock:
        if name not in t.names or t.proc is None:
            return
        t.names.discard(name)
        _send("-" + name)
        if not t.names:  # nothing to guard: let the tracker go
            proc, t.proc = t.proc, None
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()
