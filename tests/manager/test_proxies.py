"""SyncManager proxies: every type, its methods, repr/str, and proxies passed to children."""

from __future__ import annotations

import copy
import pickle
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import polyproc
from polyproc.errors import ClosedResourceError, ManagerUnavailableError, ProcessError
from polyproc.managers import DictProxy, ListProxy, SyncManager

from . import _targets


@pytest.fixture(scope="module")
def m() -> Iterator[SyncManager]:
    """One manager for the process-free tests of this module (default start method)."""
    with polyproc.Manager() as manager:
        yield manager


def test_list_methods(m: Any) -> None:
    l = m.list([3, 1, 2])  # noqa: E741
    assert isinstance(l, ListProxy)
    l.append(4)
    l.extend([5])
    l.insert(0, 0)
    assert l.pop() == 5
    l.remove(0)
    l.sort()
    assert l[:] == [1, 2, 3, 4] and l[-1] == 4 and len(l) == 4
    l.reverse()
    assert l.index(4) == 0 and l.count(2) == 1
    l[0] = 9
    del l[1]
    assert l.copy() == [9, 2, 1]
    l += [7]  # noqa: E741
    l *= 2  # noqa: E741
    assert str(l) == "[9, 2, 1, 7, 9, 2, 1, 7]"
    assert 7 in l and 8 not in l
    assert list(l) == [9, 2, 1, 7, 9, 2, 1, 7]
    assert list(reversed(l))[0] == 7
    assert l + [0] == [9, 2, 1, 7, 9, 2, 1, 7, 0]
    assert l == [9, 2, 1, 7, 9, 2, 1, 7] and l != [] and l > [1] and l >= [9] and l < [10]
    l.clear()
    assert len(l) == 0 and str(l) == "[]"
    assert repr(l).startswith("<ListProxy object, typeid 'list' at 0x")


def test_dict_methods(m: Any) -> None:
    d = m.dict(a=1)
    assert isinstance(d, DictProxy)
    d["x"] = 2
    d.update({"y": 3}, z=4)
    assert d["x"] == 2 and d.get("nope", 5) == 5 and len(d) == 4
    assert sorted(d.keys()) == ["a", "x", "y", "z"]
    assert sorted(d.values()) == [1, 2, 3, 4]
    assert sorted(d.items())[0] == ("a", 1)
    assert sorted(d) == ["a", "x", "y", "z"] and "x" in d and "q" not in d
    assert d.setdefault("w", 0) == 0 and d.pop("w") == 0
    del d["a"]
    with pytest.raises(KeyError):
        d["missing"]
    assert d.copy() == {"x": 2, "y": 3, "z": 4} == d
    assert d.popitem() == ("z", 4)
    d |= {"k": 1}
    assert str(d) == "{'x': 2, 'y': 3, 'k': 1}"
    d.clear()
    assert str(d) == "{}"


def test_namespace_value_array(m: Any) -> None:
    n = m.Namespace(a=1)
    n.y = 2
    assert n.a == 1 and n.y == 2
    del n.a
    assert str(n) == "Namespace(y=2)"
    with pytest.raises(AttributeError):
        _ = n.a
    v = m.Value("i", 5)
    v.value += 1
    assert v.get() == 6 and v.value == 6
    v.set(7)
    assert str(v) == "Value('i', 7)"
    arr = m.Array("i", [1, 2, 3])
    arr[0] = 10
    assert len(arr) == 3 and arr[0] == 10 and arr[:].tolist() == [10, 2, 3]


def test_queue_types(m: Any) -> None:
    q = m.Queue()
    q.put(1)
    q.put_nowait(2)
    assert q.qsize() == 2 and not q.empty()
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    jq = m.JoinableQueue(maxsize=1)
    jq.put("a")
    assert jq.full()
    jq.get()
    jq.task_done()
    jq.join()


def test_lock_types(m: Any) -> None:
    for lock in (m.Lock(), m.RLock(), m.Semaphore(), m.BoundedSemaphore()):
        assert lock.acquire()
        lock.release()
        with lock:
            pass
    lock = m.Lock()
    lock.acquire()
    assert lock.acquire(True, 0.01) is False
    lock.release()
    bs = m.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        bs.release()


def test_event_condition_barrier_from_threads(m: Any) -> None:
    ev = m.Event()
    assert not ev.is_set() and ev.wait(0.01) is False
    cond = m.Condition()
    barrier = m.Barrier(2, timeout=20)
    assert barrier.parties == 2 and barrier.n_waiting == 0 and not barrier.broken
    box: list[Any] = []

    def other() -> None:
        box.append(barrier.wait())
        with cond:
            cond.notify_all()
        ev.set()

    t = threading.Thread(target=other)
    with cond:
        t.start()
        box.append(barrier.wait())
        assert cond.wait(20)
    assert ev.wait(20)
    t.join()
    assert sorted(box) == [0, 1]
    with cond:
        assert cond.wait_for(lambda: True, timeout=0.01)
    ev.clear()
    assert not ev.is_set()


def test_errors_come_back_as_themselves(m: Any) -> None:
    l = m.list()  # noqa: E741
    with pytest.raises(IndexError):
        l.pop()
    with pytest.raises(AttributeError, match="not in the list of allowed"):
        l._callmethod("__class__")
    assert l._getvalue() == [] and copy.deepcopy(l) == []


def test_nested_proxies_write_through(m: Any) -> None:
    d = m.dict()
    d["inner"] = m.list()
    d["inner"].append(1)
    d["inner"].append(2)
    assert str(d["inner"]) == "[1, 2]"
    d["ns"] = m.Namespace()
    d["ns"].z = 3
    assert d["ns"].z == 3


def test_objects_are_released(m: Any) -> None:
    import gc

    before = m._number_of_objects()
    keep = m.list([1])
    for _ in range(20):
        m.list([1])
    gc.collect()
    # The DECREFs were queued (no I/O in finalizers) and went out in front of later requests.
    assert m._number_of_objects() == before + 1
    del keep
    gc.collect()
    assert m._number_of_objects() == before
    assert m.statistics()["connections"] >= 1


def test_proxies_in_child_processes(ctx: Any) -> None:
    with ctx.Manager() as manager:
        l = manager.list()  # noqa: E741
        d = manager.dict()
        n = manager.Namespace()
        l.extend([1, 2, 3])
        d["x"] = 0
        n.y = 0
        # One after the other: ``d['x'] += 1`` from two processes at once is a data race
        # (get, then set) in the stdlib too; this test is about proxies travelling.
        procs = [ctx.Process(target=_targets.tutorial_worker, args=(l, d, n)) for _ in range(2)]
        for p in procs:
            p.start()
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
        assert (str(l), str(d), str(n)) == ("[1, 2, 3]", "{'x': 2}", "Namespace(y=2)")
        d["inner"] = manager.list()
        q = manager.Queue()
        lock, counter = manager.Lock(), manager.Value("i", 0)
        ps = [
            ctx.Process(target=_targets.write_nested, args=(d,)),
            ctx.Process(target=_targets.put_in_queue, args=(q, "hi")),
            ctx.Process(target=_targets.use_lock, args=(lock, counter, 50)),
            ctx.Process(target=_targets.use_lock, args=(lock, counter, 50)),
        ]
        for p in ps:
            p.start()
        assert q.get(timeout=30) == "hi"
        for p in ps:
            p.join(30)
        assert d["inner"][:] == ["from child"] and counter.value == 100


def test_proxy_pickles_with_its_token(m: Any) -> None:
    l = m.list([1])  # noqa: E741
    clone = pickle.loads(pickle.dumps(l))
    clone.append(2)
    assert l[:] == [1, 2] and clone._token == l._token


def test_manager_life_cycle_errors() -> None:
    manager = SyncManager()
    with pytest.raises(ProcessError, match="not been started"):
        manager.list()
    manager.start()
    with pytest.raises(ProcessError, match="already started"):
        manager.start()
    l = manager.list()  # noqa: E741
    manager.shutdown()
    manager.shutdown()  # idempotent
    with pytest.raises(ClosedResourceError, match="shut down"):
        manager.list()
    with pytest.raises(ManagerUnavailableError):
        l.append(1)
    with pytest.raises(ClosedResourceError):
        with manager:
            pass


def test_the_server_process_is_kept_after_shutdown_with_its_exit_code() -> None:
    """As the stdlib's: programs (and CPython's tests) read ``manager._process.exitcode``
    and ``.pid`` after ``shutdown()``; its sentinel fd is released all the same."""
    with polyproc.Manager() as manager:
        pid = manager._process.pid  # type: ignore[attr-defined]
        manager.list([1])
    process = manager._process  # type: ignore[attr-defined]
    assert process.pid == pid
    assert process.exitcode == 0
    assert process._handle.sentinel == -1


def test_a_proxy_whose_server_died_raises_in_a_child(ctx: Any) -> None:
    manager = ctx.Manager()
    l = manager.list()  # noqa: E741
    l.append(0)
    manager._process.kill()
    manager._process.join(10)
    r, w = ctx.Pipe()
    p = ctx.Process(target=_targets.call_after_death, args=(l, w))
    p.start()
    assert r.poll(30)
    assert r.recv() in ("ManagerUnavailableError", "BrokenResourceError")
    p.join(10)
    with pytest.raises((ManagerUnavailableError, OSError)):
        l.append(1)
    manager.shutdown()


@pytest.mark.timeout(60)
def test_managed_pool(m: Any) -> None:
    pool = m.Pool(2)
    assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
    result = pool.apply_async(abs, (-5,))
    assert result.get(30) == 5 and result.ready() and result.successful()
    assert list(pool.imap(abs, [-1, -2])) == [1, 2]
    pool.close()
    pool.join()


def test_a_child_dropping_its_copy_does_not_free_the_parents_object(ctx: Any) -> None:
    with ctx.Manager() as manager:
        precious, other = manager.list([1]), manager.list()
        r, w = ctx.Pipe()
        p = ctx.Process(target=_targets.drop_then_call, args=([precious], other, w))
        p.start()
        assert r.poll(30) and r.recv() == "ok"
        p.join(30)
        precious.append(2)  # would be RemoteError("no object ...") if the child had decref'd it
        assert precious[:] == [1, 2] and other[:] == ["x"]
