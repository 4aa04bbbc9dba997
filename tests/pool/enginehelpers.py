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
    """``record`` (with this worker's pid on the line, for a failure's report), then a short
    pause (the subject: a task that takes time), returning a value shaped by ``x`` so the
    journal sees ints, floats, strings and tuples."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d %d\n" % (x, os.getpid()))
    finally:
        os.close(fd)
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


class _StartedTrap:
    """The journal's header, with a SIGKILL armed on one store of its STARTED word.

    STARTED := k is stored just before task k is called and just after task k-1 was
    committed, so killing the worker *instead of* that store is a kill between the two
    tasks, at an exact point (no timer, no race).
    """

    def __init__(self, head: Any, slot: int, nth: int, marker: str) -> None:
        self.head = head
        self.slot = slot
        self.nth = nth
        self.marker = marker

    def __getitem__(self, i: int) -> Any:
        return self.head[i]

    def __setitem__(self, i: int, value: int) -> None:
        from polyproc._pool import journal

        if i == journal._H_STARTED and value == self.slot:
            self.nth -= 1
            if self.nth == 0 and _first_time(self.marker):
                os.kill(os.getpid(), signal.SIGKILL)
        self.head[i] = value

    def release(self) -> None:
        self.head.release()


def _first_time(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def kill_between_tasks(slot: int, nth: int, marker: str) -> None:
    """Pool initializer: the first worker to reach the ``nth`` call of a task in journal
    slot ``slot`` is SIGKILLed just before it (once per ``marker``: replacements run on)."""
    from polyproc._pool import journal, worker

    class Trapped(journal.Journal):
        def __init__(self, fd: int) -> None:
            super().__init__(fd)
            # (setattr: the header is a memoryview to the type checker, a trap here)
            setattr(self, "_head", _StartedTrap(self._head, slot, nth, marker))  # noqa: B010

    setattr(worker, "Journal", Trapped)  # noqa: B010
    # The trap sees Python's stores of STARTED; the C commit loop stores the same word
    # from C (test_journal.py checks that loop's STARTED on its own), so use Python's here.
    setattr(journal, "_run_scalars", None)  # noqa: B010


def fault_committing(args: tuple[int, str, str]) -> Any:
    """A task whose result is ``x`` as ``kind`` ("float", "text"); the first to run with
    ``x == 3`` (once per ``marker``) makes the page of its journal's tags read-only, so
    the worker dies (SIGSEGV) at its commit's first store to that page: after the store of
    its value's word, before its tag, where that order was the journal's."""
    x, kind, marker = args
    if x == 3 and _first_time(marker):
        _tags_read_only()
    return float(x) if kind == "float" else str(x)


def _tags_read_only() -> None:
    import ctypes
    import faulthandler
    import gc
    import mmap

    from polyproc._pool.journal import Journal

    faulthandler.disable()  # (the test run's handler, inherited by a forked worker: quiet)
    (j,) = [o for o in gc.get_objects() if isinstance(o, Journal) and not o.mm.closed]
    addr = ctypes.addressof(ctypes.c_char.from_buffer(j.mm))  # the header and tags' page
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(mmap.PAGESIZE), mmap.PROT_READ):
        raise OSError(ctypes.get_errno(), "mprotect")
