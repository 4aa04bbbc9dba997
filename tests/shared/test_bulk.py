"""Big buffers through pooled memfds (``_shm/bulk.py``): the receiver keeps its mapping.

A receiver maps each pooled slot of its peer once and leases it per transfer (issue #14:
mapping 512 MiB per transfer cost as much as the copy). These tests pin what makes that
safe: the sender may refill a slot only after the last view of the previous transfer is
gone, a reused slot shows the new data, one-off memfds are not kept, retired slots are
let go, and a lease outlives the cache entry it came from.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from polyproc._shm import bulk

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _clean_pool() -> Iterator[None]:
    bulk.trim()
    yield
    gc.collect()
    bulk.trim()


def _send(data: bytes) -> tuple[memoryview, int, bool]:
    """export + import_buffer in one process: what the receiving side of a frame gets."""
    fd, close = bulk.export(memoryview(data))
    view = bulk.import_buffer(os.dup(fd), len(data))
    if close:
        os.close(fd)
    return view, fd, close


def _slot(fd: int) -> Any:
    return next(s for s in bulk._pool.slots if s.fd == fd)


def test_a_pooled_slot_is_mapped_once_and_leased_per_transfer() -> None:
    view, fd, close = _send(b"a" * (2 * MIB))
    assert not close and bytes(view[:3]) == b"aaa"
    assert len(bulk._received.maps) == 1
    ((mapping, _),) = bulk._received.maps.values()
    assert _slot(fd).busy()  # the receiver still holds the data
    del view
    gc.collect()
    assert not _slot(fd).busy()  # the last view went: the slot may be refilled
    view2, fd2, _ = _send(b"b" * (2 * MIB))
    assert fd2 == fd  # the same warm slot
    assert bytes(view2[:3]) == b"bbb" and bytes(view2[-1:]) == b"b"
    assert [m for m, _ in bulk._received.maps.values()] == [mapping]  # the same mapping


def test_a_slot_still_viewed_is_not_refilled() -> None:
    view, fd, _ = _send(b"a" * (2 * MIB))
    view2, fd2, _ = _send(b"b" * (2 * MIB))
    assert fd2 != fd  # the first slot is busy while its view lives
    assert bytes(view[:1]) == b"a" and bytes(view2[:1]) == b"b"


def test_a_view_rebuilds_a_writable_numpy_array() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(MIB // 4, dtype=np.float64)  # 2 MiB
    fd, _ = bulk.export(memoryview(a).cast("B"))
    view = bulk.import_buffer(os.dup(fd), a.nbytes)
    b = np.frombuffer(view, dtype=np.float64)
    assert (a == b).all()
    b[0] = -1.0  # pickle protocol 5 hands the array a writable buffer
    del view
    gc.collect()
    assert _slot(fd).busy()  # the array alone keeps the lease
    del b
    gc.collect()
    assert not _slot(fd).busy()


def test_a_one_off_memfd_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "_POOL_SLOTS", 0)  # the pool is full: unpooled memfds
    view, _, close = _send(b"c" * (2 * MIB))
    assert close
    assert bytes(view[:2]) == b"cc"
    assert not bulk._received.maps


def test_a_retired_slot_is_let_go_at_the_next_transfer() -> None:
    view, fd, _ = _send(b"a" * (2 * MIB))
    del view
    gc.collect()
    keys = list(bulk._received.maps)
    with bulk._pool.lock:  # the sender retires the slot (what trim() and idling do)
        slot = _slot(fd)
        bulk._pool.slots.remove(slot)
    slot.close()
    view2, _, _ = _send(b"b" * (3 * MIB))
    assert keys[0] not in bulk._received.maps
    assert bytes(view2[:1]) == b"b"


def test_a_lease_outlives_its_cache_entry() -> None:
    view, _, _ = _send(b"z" * (2 * MIB))
    bulk.trim()  # drops the receiver's mappings and the sender's free slots
    gc.collect()
    assert not bulk._received.maps
    assert bytes(view[-4:]) == b"zzzz"  # still mapped: the lease holds its mapping


def _sum_arrays(conn: Any, n: int) -> None:
    for _ in range(n):
        a = conn.recv()
        conn.send(float(a.sum()))
        del a
    conn.close()


def test_arrays_reusing_one_slot_arrive_intact_in_a_child() -> None:
    """Each send reuses the warm slot once the child dropped the previous array."""
    np = pytest.importorskip("numpy")
    import polyproc

    parent, child = polyproc.Pipe()
    p = polyproc.get_context("fork").Process(target=_sum_arrays, args=(child, 5))
    p.start()
    child.close()
    try:
        for k in range(5):
            a = np.full(MIB // 4, float(k))  # 2 MiB
            parent.send(a)
            assert parent.poll(30)
            assert parent.recv() == float(k) * a.size
    finally:
        p.join(30)
        parent.close()
    assert p.exitcode == 0


def _big(i: int) -> Any:
    import numpy as np

    return np.full(MIB, i, dtype=np.uint8)  # 1 MiB: a pooled slot (export), not the socket


def test_a_closed_pool_leaves_no_fd_of_its_big_results(start_method: str) -> None:
    """The receiver's kept mappings of its workers' slots end with the pool (each mmap
    holds an fd): a program that makes and closes pools must not gather fds."""
    pytest.importorskip("numpy")
    from polyproc import get_context

    def memfds() -> list[str]:
        gc.collect()
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # the listing's own fd, gone
            if target.startswith("/memfd:"):
                found.append(target)
        return found

    ctx = get_context(start_method)
    before = memfds()
    for _ in range(3):
        with ctx.Pool(2) as pool:
            assert [int(a[0]) for a in pool.map(_big, range(8), chunksize=1)] == list(range(8))
    assert memfds() == before


def test_forget_retires_only_its_owners_busy_slots() -> None:
    """``forget(owner)``: the slots that receiver died holding, and no other."""
    fd_held, _ = bulk.export(memoryview(b"a" * (2 * MIB)), owner=7)
    fd_other, _ = bulk.export(memoryview(b"b" * (2 * MIB)), owner=8)
    fd_free, _ = bulk.export(memoryview(b"c" * (3 * MIB)), owner=7)
    os.pwrite(fd_free, b"\0", 0)  # its receiver let go of this one before it died
    peek = os.dup(fd_held)
    bulk.forget(7)
    fds = [s.fd for s in bulk._pool.slots]
    assert fd_held not in fds and fd_other in fds and fd_free in fds
    assert os.pread(peek, 2, 0) == b"\1\1"  # still busy, and marked retired for its mappers
    os.close(peek)
    bulk.forget(8)
    assert not any(s.busy() for s in bulk._pool.slots)


def _hold(data: Any) -> None:
    """Hold a big argument until the pool's terminate kills this worker."""
    threading.Event().wait(60)


def _die(data: Any) -> None:
    """Die holding a big argument: a worker killed mid-task."""
    os.kill(os.getpid(), signal.SIGKILL)


def _new_busy(before: list[Any]) -> list[Any]:
    return [s for s in bulk._pool.slots if all(s is not b for b in before) and s.busy()]


def test_a_terminated_pool_gives_back_the_slots_of_its_big_arguments(
    start_method: str,
) -> None:
    """Workers killed holding a big argument (or before reading it) cannot clear its busy
    byte: the pool retires those slots, or each would stay busy, holding its memory and one
    of the process's pooled slots, for as long as this process lives."""
    from polyproc import get_context

    before = list(bulk._pool.slots)
    with get_context(start_method).Pool(2) as pool:
        for i in range(2):
            # A memoryview stays a view of the worker's mapping (bytes would be copied out).
            pool.apply_async(_hold, (memoryview(bytearray([i]) * (2 * MIB)),))
        deadline = time.monotonic() + 30
        while len(_new_busy(before)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # polls a condition: the engine sends them soon
        assert len(_new_busy(before)) == 2
    assert _new_busy(before) == []


def test_a_worker_killed_holding_a_big_argument_gives_its_slot_back(start_method: str) -> None:
    from polyproc import WorkerLostError, get_context

    before = list(bulk._pool.slots)
    with get_context(start_method).Pool(1) as pool:
        with pytest.raises(WorkerLostError):
            pool.apply_async(_die, (memoryview(bytearray(2 * MIB)),)).get(30)
        assert _new_busy(before) == []  # retired before the failure was delivered
        assert pool.apply(len, (b"e" * (2 * MIB),)) == 2 * MIB  # the replacement works
