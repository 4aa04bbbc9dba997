"""Task functions for the engine's reliability tests (torn frames, exactly once, memory)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any


def die_while_sending(x: int, bad: int, size: int, marker: str = "") -> Any:
    """Task ``bad`` arms a SIGKILL 2 ms out, then returns ``size`` bytes: the kill lands while
    the result is being pickled or written, so the frame on the wire is torn (or, for a small
    result, in whatever the worker does next). With ``marker``, only the first run kills."""
    if x == bad:
        if not marker or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            threading.Timer(0.002, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return b"\x01" * size
    return x


def record(x: int, path: str) -> int:
    """Append this task's id to ``path`` (O_APPEND: one write, never interleaved), return it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % x)
    finally:
        os.close(fd)
    return x


def record_and_die(x: int, path: str, bad: int) -> int:
    record(x, path)
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def record_slowly(x: int, path: str, seconds: float) -> Any:
    """``record``, then a short pause (the subject: a task that takes time), returning a value
    shaped by ``x`` so the journal sees ints, floats, strings and tuples."""
    record(x, path)
    if seconds:
        time.sleep(seconds)
    kind = x % 4
    if kind == 0:
        return x
    if kind == 1:
        return float(x)
    if kind == 2:
        return str(x)
    return (x, "t")


def grow(x: int, mib: int) -> int:
    """Keep ``mib`` MiB alive in this worker (a leak the pool must notice)."""
    hold = globals().setdefault("_held", [])
    hold.append(bytearray(mib * 2**20))
    for block in hold:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    return x


def pid_of(_: Any = None) -> int:
    return os.getpid()


def die_while_sending_star(args: tuple[Any, ...]) -> Any:
    return die_while_sending(*args)


def record_slowly_star(args: tuple[Any, ...]) -> Any:
    return record_slowly(*args)


class Tracked:
    """Says, through a FIFO, when a copy of it dies in a pool worker (its ``__del__``)."""

    def __init__(self, fifo: str, label: str, parent: int) -> None:
        self.fifo = fifo
        self.label = label
        self.parent = parent

    def __del__(self) -> None:
        if os.getpid() == self.parent:
            return  # the parent's own copies are not the subject
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.write(fd, f"{self.label} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    def method(self, x: Any) -> int:
        return os.getpid()


def touch_and_return(arg: Tracked, result_label: str) -> Any:
    """Takes a tracked argument, returns a tracked result (a new object made here)."""
    return (os.getpid(), Tracked(arg.fifo, result_label, arg.parent))
