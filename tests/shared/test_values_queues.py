"""Value/Array, queues, named shared memory and zero-copy arrays across processes."""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = """
import logging
import polyproc as multiprocessing
import time

logging.basicConfig(level=logging.DEBUG, format='%(processName)s: %(message)s')


def f(num, arr):
    logging.debug(num)
    num.value += 1.0
    logging.debug(arr)
    for i in range(len(arr)):
        arr[i] *= 2


if __name__ == '__main__':
    num = multiprocessing.Value('f', 0.0)
    arr = multiprocessing.Array('i', [1, 2, 3, 4, 5])

    p1 = multiprocessing.Process(target=f, args=(num, arr))
    p2 = multiprocessing.Process(target=f, args=(num, arr))
    p1.start()
    p2.start()
    p1.join()
    p2.join()
    logging.debug(num.value)
    logging.debug(arr[:])
"""


def _env(method: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), POLYPROC_START_METHOD=method)


def test_tutorial_value_array(tmp_path, start_method) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "tutorial_value_array.py"
    script.write_text(TUTORIAL)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=_env(start_method),
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert "MainProcess: 2.0" in lines
    assert "MainProcess: [4, 8, 12, 16, 20]" in lines


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def _mutate(v, a, s, p):  # type: ignore[no-untyped-def]
    with v.get_lock():
        v.value += 1
    a[1:3] = [20, 30]
    s.value = b"child"
    p.x, p.y = 7, 1.5


def test_value_array_string_struct_in_child(ctx) -> None:  # type: ignore[no-untyped-def]
    v, a = ctx.Value("d", 1.0), ctx.Array("q", 4)
    s, p = ctx.Array("c", 10), ctx.Value(Point, 1, 2.0)
    proc = ctx.Process(target=_mutate, args=(v, a, s, p))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert v.value == 2.0 and a[:] == [0, 20, 30, 0] and s.value == b"child"
    assert s.raw == b"child\0\0\0\0\0" and (p.x, p.y) == (7, 1.5)
    assert repr(v).startswith("<Synchronized wrapper for c_double(")


def test_raw_value_through_pipe(ctx) -> None:  # type: ignore[no-untyped-def]
    a, b = ctx.Pipe()
    raw = ctx.RawArray("i", [1, 2, 3])
    a.send(raw)
    other = b.recv()
    other[0] = 42
    assert raw[0] == 42
    a.close(), b.close()


def test_bad_input() -> None:
    import polyproc

    with pytest.raises(TypeError, match="bad typecode"):
        polyproc.Value("z", 1)
    arr = polyproc.Array("i", 3)
    with pytest.raises(IndexError):
        arr[3]
    with pytest.raises(ValueError, match="larger than this machine's memory"):
        polyproc.RawArray("d", 10**15)
    with pytest.raises(ValueError):
        polyproc.RawArray("d", -1)
    with pytest.raises(AttributeError):
        polyproc.Value("i", 0, lock=object())
    with pytest.raises(FileNotFoundError, match="no shared memory segment"):
        from polyproc.shared_memory import SharedMemory

        SharedMemory("polyproc_missing_segment")


# -- queues --------------------------------------------------------------------
def _produce(q, n):  # type: ignore[no-untyped-def]
    for i in range(n):
        q.put(i)
    q.put(None)


def _consume_join(q):  # type: ignore[no-untyped-def]
    while True:
        item = q.get()
        q.task_done()
        if item is None:
            break


def test_queue_across_processes(ctx) -> None:  # type: ignore[no-untyped-def]
    q = ctx.Queue()
    n = 20000  # more than fits in the pipe: the child's feeder must flush at its exit
    p = ctx.Process(target=_produce, args=(q, n))
    p.start()
    got = []
    while (item := q.get(timeout=30)) is not None:
        got.append(item)
    p.join(30)
    assert got == list(range(n))
    assert q.empty() and q.qsize() == 0


def test_queue_maxsize_timeouts() -> None:
    import polyproc

    q = polyproc.Queue(2)
    q.put(1), q.put_nowait(2)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()
    with pytest.raises(ValueError):
        q.put(1)


def test_joinable_queue(ctx) -> None:  # type: ignore[no-untyped-def]
    q = ctx.JoinableQueue()
    for i in range(10):
        q.put(i)
    q.put(None)
    p = ctx.Process(target=_consume_join, args=(q,))
    p.start()
    q.join()
    p.join(30)
    with pytest.raises(ValueError):
        q.task_done()


def test_simple_queue_and_objects_with_fds(ctx) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    q = ctx.SimpleQueue()
    lock = ctx.Lock()
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: travels as a memfd
    q.put((lock, big, "x" * 100_000))
    lock2, big2, s = q.get()
    assert s == "x" * 100_000 and np.array_equal(big, big2) and big2.flags.writeable
    lock.acquire()
    assert not lock2.acquire(timeout=0.05)
    lock.release()
    assert q.empty()


def test_queue_put_get_same_process_beyond_pipe_capacity() -> None:
    import polyproc

    q = polyproc.Queue()
    for i in range(100_000):  # far beyond the pipe: put must not block
        q.put(i)
    assert sum(q.get() for _ in range(100_000)) == sum(range(100_000))


def test_a_queue_of_a_context_with_its_own_serializer_loads_with_it() -> None:
    """A plain item is loaded by ``pickle.loads`` directly (the default serializer's own
    ``loads``); a context's serializer of another class keeps its ``loads``."""
    import polyproc
    from polyproc._serialize import Serializer

    class Counting(Serializer):
        loaded = 0

        def loads(self, body, buffers=(), fds=()):  # type: ignore[no-untyped-def]
            Counting.loaded += 1
            return super().loads(body, buffers, fds)

    q = polyproc.Context("fork", Counting()).Queue()
    q.put([1, 2])
    q.put(3)
    assert q.get(timeout=10) == [1, 2] and q.get(timeout=10) == 3
    assert Counting.loaded == 2
    plain = polyproc.Queue()
    plain.put({"a": 1})
    assert plain.get(timeout=10) == {"a": 1}


def test_a_queues_reader_end_works_with_wait_and_reports_closed() -> None:
    """``q._reader`` / ``q._writer`` are the stdlib's private Connections; programs wait on
    ``q._reader`` beside sentinels (``connection.wait``) and CPython's tests read
    ``.closed`` after ``SimpleQueue.close()``."""
    import polyproc
    from polyproc.connection import wait

    q = polyproc.SimpleQueue()
    assert not q._reader.closed and not q._writer.closed
    assert wait([q._reader], timeout=0.05) == [] and not q._reader.poll()
    q.put("x")
    assert wait([q._reader], timeout=10) == [q._reader] and q._reader.poll(10)
    assert q.get() == "x"
    q.close()
    assert q._reader.closed and q._writer.closed
    with pytest.raises(OSError):
        q._reader.fileno()


def _put_child(q):  # type: ignore[no-untyped-def]
    q.put(b"child")


def test_a_forked_child_writes_only_its_own_items_not_the_parents_backlog() -> None:
    """The parent's puts beyond the pipe wait in its backlog for its feeder thread; a
    child forked then puts through a backlog of its own (the parent's frames are not
    its to write, and the parent's feeder is not its thread): each item arrives once."""
    import polyproc

    q = polyproc.Queue()
    block = b"x" * (64 << 10)
    n = 40  # 2.5 MiB: past the pipe, so most wait in the parent's backlog
    for i in range(n):
        q.put((i, block))
    p = polyproc.get_context("fork").Process(target=_put_child, args=(q,))
    p.start()
    got = [q.get(timeout=20) for _ in range(n + 1)]
    p.join(20)
    assert p.exitcode == 0
    assert sorted(g[0] for g in got if type(g) is tuple) == list(range(n))
    assert got.count(b"child") == 1
    assert q.empty()


# -- named shared memory -------------------------------------------------------
def _write_shm(name):  # type: ignore[no-untyped-def]
    from polyproc.shared_memory import SharedMemory

    s = SharedMemory(name)
    s.buf[:5] = b"hello"
    s.close()


def test_shared_memory_across_processes(ctx) -> None:  # type: ignore[no-untyped-def]
    from polyproc.shared_memory import ShareableList, SharedMemory

    shm = SharedMemory(create=True, size=64)
    p = ctx.Process(target=_write_shm, args=(shm.name,))
    p.start()
    p.join(30)
    assert bytes(shm.buf[:5]) == b"hello"
    sl = ShareableList([1, 2.5, "abc", None])
    assert list(ShareableList(name=sl.shm.name)) == [1, 2.5, "abc", None]
    for seg in (shm, sl.shm):
        seg.close()
        seg.unlink()


def test_named_segment_removed_after_owner_sigkill(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent("""
        import os, signal
        from polyproc.shared_memory import SharedMemory
        s = SharedMemory(create=True, size=4096)
        print(s.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env("fork"), timeout=30
    )
    name = out.stdout.strip()
    assert name and out.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while os.path.exists(f"/dev/shm/{name}") and time.monotonic() < deadline:
        time.sleep(0.01)  # polling with a deadline: the tracker unlinks at EOF
    assert not os.path.exists(f"/dev/shm/{name}")


# -- zero copy -----------------------------------------------------------------
def _fill(arr, value):  # type: ignore[no-untyped-def]
    arr[...] = value


def test_shared_array_writes_seen(ctx) -> None:  # type: ignore[no-untyped-def]
    import polyproc

    a = polyproc.shared_array((100, 100), "float32")
    p = ctx.Process(target=_fill, args=(a[10:20], 3.0))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert a[10:20].sum() == 3.0 * 1000 and a.sum() == 3.0 * 1000


def _echo_big(conn):  # type: ignore[no-untyped-def]
    arr = conn.recv()
    arr *= 2  # writable, no copy: backed by the mapping
    conn.send(arr)
    conn.close()


def test_large_array_through_pipe_is_a_mapping(ctx) -> None:  # type: ignore[no-untyped-def]
    import mmap

    import numpy as np

    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo_big, args=(b,))
    p.start()
    x = np.arange(4 << 17, dtype=np.float64)  # 4 MiB
    a.send(x)
    y = a.recv()
    p.join(30)
    assert np.array_equal(y, x * 2) and y.flags.writeable
    base = y
    while base is not None and not isinstance(base, mmap.mmap):
        if isinstance(base, memoryview):
            base = base.obj
        elif isinstance(getattr(base, "_objects", None), dict):  # a lease (ctypes array)
            base = next(iter(base._objects.values()))  # over the receiver's kept mapping
        else:
            base = getattr(base, "base", None)
    assert isinstance(base, mmap.mmap)  # the received array is the shared mapping
    a.close(), b.close()
