"""A finished task leaves nothing alive in its worker: not its argument, function or result.

Each object below says through a FIFO when a worker's copy of it dies. The parent waits on
the FIFO (``select`` with a deadline) while the worker sits idle waiting for its next batch;
then checks the same worker is still alive (so the object died because the worker let go,
not because it exited).
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

import enginehelpers as eh
import pytest

from polyproc.pool import Pool


class Deaths:
    """What the FIFO has said so far: label -> pid of the worker whose copy died."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen: dict[str, int] = {}
        self.buf = b""

    def wait_for(self, label: str, seconds: float = 20.0) -> int:
        deadline = time.monotonic() + seconds
        while label not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the worker still holds its copy of the task's {label}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.buf += os.read(self.fd, 4096)
                except BlockingIOError:
                    # Readable for the hang-up of the last writer, and a new writer
                    # opened the FIFO before we read: no data yet, wait again.
                    continue
                *lines, self.buf = self.buf.split(b"\n")
                for line in lines:
                    name, pid = line.decode().split()
                    self.seen[name] = int(pid)
        return self.seen[label]


@pytest.fixture
def fifo(tmp_path: Any) -> Any:
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so writers do not block
    yield path, Deaths(fd)
    os.close(fd)


@pytest.mark.timeout(60)
def test_argument_and_result_die_after_the_task(ctx: Any, fifo: Any) -> None:
    path, fd = fifo
    with Pool(1, context=ctx) as pool:
        arg = eh.Tracked(path, "arg", os.getpid())
        pid, _result = pool.apply(eh.touch_and_return, (arg, "result"))
        assert fd.wait_for("arg") == pid
        assert fd.wait_for("result") == pid
        assert pool.apply(eh.pid_of) == pid  # the same worker: it let go while idle


@pytest.mark.timeout(60)
def test_a_bound_method_and_its_object_die_after_the_task(ctx: Any, fifo: Any) -> None:
    path, fd = fifo
    with Pool(1, context=ctx) as pool:
        obj = eh.Tracked(path, "self", os.getpid())
        pid = pool.apply(obj.method, (1,))
        assert fd.wait_for("self") == pid
        # Still cached where it is safe: a module-level function, by name.
        assert pool.map(eh.pid_of, range(3)) == [pid] * 3
        assert pool.apply(obj.method, (2,)) == pid  # sent again, works again


@pytest.mark.timeout(60)
def test_map_arguments_die_after_their_batch(ctx: Any, fifo: Any) -> None:
    path, fd = fifo
    with Pool(1, context=ctx) as pool:
        args = [eh.Tracked(path, f"arg{i}", os.getpid()) for i in range(3)]
        out = pool.starmap(
            eh.touch_and_return, [(a, f"res{i}") for i, a in enumerate(args)], chunksize=3
        )
        pid = out[0][0]
        for i in range(3):
            assert fd.wait_for(f"arg{i}") == pid
            assert fd.wait_for(f"res{i}") == pid
