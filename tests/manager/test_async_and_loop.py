"""Fire-and-forget calls keep causality; blocking calls do not stall the loop; nested calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import polyproc
from polyproc.managers import BaseManager, DictProxy, SyncManager

from . import _targets


@pytest.fixture(scope="module")
def m() -> Iterator[SyncManager]:
    with polyproc.Manager() as manager:
        yield manager


def test_fire_and_forget_appends_are_visible_after_any_signal(ctx: Any) -> None:
    with ctx.Manager() as manager:
        for round_ in range(5):
            lst = manager.list()
            r, w = ctx.Pipe()
            p = ctx.Process(target=_targets.append_then_signal, args=(lst, 500, w))
            p.start()
            assert r.poll(30) and r.recv() == "done"
            # Another process, another connection: it must already see every append.
            assert len(lst) == 500, f"round {round_}"
            p.join(30)


def test_async_set_then_get_in_one_thread(m: Any) -> None:
    d = m.dict()
    for i in range(200):
        d["k"] = i
        assert d["k"] == i
    n = m.Namespace()
    n.x = 1
    assert n.x == 1
    v = m.Value("d", 0.5)
    v.value = 2.5
    assert v.value == 2.5


def test_unhashable_key_fails_at_once(m: Any) -> None:
    d = m.dict()
    with pytest.raises(TypeError, match="unhashable"):
        d[[1]] = 2


def test_async_failure_is_reported_on_the_next_call() -> None:
    class PickyManager(BaseManager):
        pass

    PickyManager.register("Picky", _targets.Picky, DictProxy)
    with PickyManager() as pm:
        d = pm.Picky()
        d["a"] = "bad"  # fire-and-forget: returns at once
        with pytest.warns(RuntimeWarning, match="picky says no"):
            assert len(d) == 0


def test_a_blocked_call_does_not_stall_other_clients(m: Any) -> None:
    q = m.Queue()
    lst = m.list()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    t.start()  # its connection's worker now blocks in Queue.get
    for i in range(50):
        lst.append(i)
    assert len(lst) == 50
    q.put("wake")
    t.join(30)
    assert got == ["wake"]


def test_rlock_and_condition_keep_their_owner_thread(m: Any) -> None:
    rl = m.RLock()
    rl.acquire()
    rl.acquire()
    rl.release()
    rl.release()
    cond = m.Condition(m.Lock())  # a Condition over a managed lock: nested, server-local calls
    with cond:
        cond.notify()


def test_nested_proxies_compared_on_the_server_do_not_deadlock(m: Any) -> None:
    outer = m.list([m.list([2]), m.list([1])])
    with pytest.raises(TypeError):
        outer.sort()  # proxies do not order; the point is that it returns
    assert str(outer[1]) == "[1]"
