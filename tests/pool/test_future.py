"""LightFuture (``_pool/future.py``): the stdlib Future's semantics, no Condition until a wait.

Every semantic test runs on the stdlib's ``Future`` too: the two must agree. The race
tests set futures from one thread while another waits, installs ``wait``/``as_completed``
waiters, cancels or claims, many times over, so a lost wake-up would hang (the timeout
fails it) and a double outcome would raise.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from polyproc._pool import future as future_mod
from polyproc._pool.future import LightFuture

pytestmark = pytest.mark.timeout(60)

KINDS = [cf.Future, LightFuture]


@pytest.fixture(params=KINDS, ids=["stdlib", "light"])
def make(request: Any) -> Callable[[], cf.Future[Any]]:
    kind = request.param
    return lambda: kind()


def test_is_a_real_future_with_no_condition_until_a_wait() -> None:
    f = LightFuture()
    assert isinstance(f, cf.Future)
    f.set_running_or_notify_cancel()
    f.set_result(3)
    assert f.result() == 3 and f.exception() is None and f.done()
    assert f._cond is None  # set before anyone waited: no Condition was ever made
    g = LightFuture()
    with pytest.raises(cf.TimeoutError):
        g.result(timeout=0.01)
    assert g._cond is not None  # a wait made one


def test_states_and_repr(make: Callable[[], cf.Future[Any]]) -> None:
    f = make()
    assert not f.running() and not f.done() and not f.cancelled()
    assert "state=pending" in repr(f)
    assert f.set_running_or_notify_cancel() is True
    assert f.running() and not f.cancel()
    with pytest.raises(RuntimeError):
        f.set_running_or_notify_cancel()  # twice: the stdlib's error
    f.set_exception(ValueError("x"))
    assert "state=finished raised ValueError" in repr(f)
    with pytest.raises(ValueError):
        f.result()
    assert isinstance(f.exception(), ValueError)
    with pytest.raises(cf.InvalidStateError, match="FINISHED"):
        f.set_result(1)
    with pytest.raises(cf.InvalidStateError):
        f.set_exception(ValueError())
    g = make()
    g.set_result(None)
    assert "returned NoneType" in repr(g)


def test_cancel_then_claim_notifies_waiters(make: Callable[[], cf.Future[Any]]) -> None:
    f = make()
    assert f.cancel() and f.cancel() and f.cancelled() and f.done()
    with pytest.raises(cf.CancelledError):
        f.result()
    with pytest.raises(cf.CancelledError):
        f.exception(timeout=0)
    # wait() sees a cancelled (not yet notified) future as not done until it is claimed
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(cf.wait([f], timeout=30)))
    t.start()
    assert f.set_running_or_notify_cancel() is False  # the executor drops it
    t.join(30)
    assert got and f in got[0].done
    with pytest.raises(cf.InvalidStateError):
        f.set_result(1)


def test_callbacks_order_once_and_errors_logged(
    make: Callable[[], cf.Future[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    f = make()
    f.add_done_callback(lambda fut: seen.append(("a", fut.result())))

    def boom(fut: cf.Future[Any]) -> None:
        raise RuntimeError("callback")

    f.add_done_callback(boom)
    f.add_done_callback(lambda fut: seen.append(("b", fut.result())))
    assert len(f._done_callbacks) == 3 and f._done_callbacks[1] is boom  # the stdlib's list
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f.set_result(7)
    assert seen == [("a", 7), ("b", 7)]
    assert "exception calling callback" in caplog.text
    f.add_done_callback(lambda fut: seen.append(("late", fut.result())))  # done: at once
    assert seen[-1] == ("late", 7)
    c = make()
    c.add_done_callback(lambda fut: seen.append(("cancelled", fut.cancelled())))
    c.cancel()
    assert seen[-1] == ("cancelled", True)


def test_a_waiter_in_another_thread_is_woken(make: Callable[[], cf.Future[Any]]) -> None:
    for call in ("result", "exception"):
        f = make()
        started = threading.Event()
        got: list[Any] = []

        def wait(f: cf.Future[Any], call: str, started: threading.Event, got: list[Any]) -> None:
            started.set()
            got.append(getattr(f, call)(timeout=30))

        t = threading.Thread(target=wait, args=(f, call, started, got))
        t.start()
        started.wait()
        f.set_result(5)
        t.join(30)
        assert got == [5 if call == "result" else None]


def test_wait_and_as_completed_with_futures_set_from_another_thread(
    make: Callable[[], cf.Future[Any]],
) -> None:
    fs = [make() for _ in range(50)]
    for f in fs[:10]:
        f.set_result(-1)  # done before the waiters exist

    def setter() -> None:
        for i, f in enumerate(fs[10:]):
            f.set_running_or_notify_cancel()
            if i % 7 == 0:
                f.set_exception(ValueError(i))
            else:
                f.set_result(i)

    t = threading.Thread(target=setter)
    t.start()
    assert set(cf.as_completed(fs, timeout=30)) == set(fs)
    t.join(30)
    done, not_done = cf.wait(fs, timeout=0)
    assert len(done) == 50 and not not_done
    # FIRST_EXCEPTION over pending ones: returns at the first failure
    gs = [make() for _ in range(3)]
    t = threading.Thread(target=lambda: gs[1].set_exception(KeyError()))
    t.start()
    done, not_done = cf.wait(gs, timeout=30, return_when=cf.FIRST_EXCEPTION)
    t.join(30)
    assert done == {gs[1]} and not_done == {gs[0], gs[2]}


@pytest.mark.parametrize("kind", KINDS, ids=["stdlib", "light"])
def test_races_between_setting_and_waiting(kind: type[cf.Future[Any]]) -> None:
    """One thread sets futures while another waits on each through a different door."""
    n = 3000
    fs = [kind() for _ in range(n)]
    go = threading.Barrier(2)

    def setter() -> None:
        go.wait()
        for i, f in enumerate(fs):
            if f.set_running_or_notify_cancel():
                f.set_result(i)

    t = threading.Thread(target=setter)
    t.start()
    go.wait()
    for i, f in enumerate(fs):
        if i % 3 == 0:
            assert f.result(timeout=30) == i
        elif i % 3 == 1:
            assert f in cf.wait([f], timeout=30).done
        else:
            assert next(cf.as_completed([f], timeout=30)) is f
    t.join(30)


@pytest.mark.parametrize("kind", KINDS, ids=["stdlib", "light"])
def test_cancel_races_claim_exactly_one_wins(kind: type[cf.Future[Any]]) -> None:
    n = 3000
    fs = [kind() for _ in range(n)]
    claimed: list[bool] = []
    go = threading.Barrier(2)

    def claimer() -> None:
        go.wait()
        claimed.extend(f.set_running_or_notify_cancel() for f in fs)

    t = threading.Thread(target=claimer)
    t.start()
    go.wait()
    cancelled = [f.cancel() for f in fs]
    t.join(30)
    for f, c, k in zip(fs, cancelled, claimed, strict=True):
        assert c != k  # cancelled, or claimed to run: never both, never neither
        assert f.cancelled() == c and f.running() == k


def test_callbacks_added_while_another_thread_sets_run_once() -> None:
    n = 3000
    fs = [LightFuture() for _ in range(n)]
    calls = [0] * n
    go = threading.Barrier(2)

    def setter() -> None:
        go.wait()
        for i, f in enumerate(fs):
            f.set_result(i)

    t = threading.Thread(target=setter)
    t.start()
    go.wait()
    for i, f in enumerate(fs):

        def cb(fut: cf.Future[Any], i: int = i) -> None:
            calls[i] += 1

        f.add_done_callback(cb)
    t.join(30)
    assert calls == [1] * n


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_gets_a_fresh_guard() -> None:
    """A fork while another thread held the guard: the child still sets futures."""
    with future_mod._guard:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            f = LightFuture()
            f.set_result(1)
            os._exit(0 if f.result() == 1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_start_all_starts_drops_cancelled_and_serves_waiters() -> None:
    """The scheduler's claim for a batch: one lock for the plain ones, the stdlib's path
    (waiters notified, a wrong state raised) for the rest."""
    plain, cancelled, waited, foreign = LightFuture(), LightFuture(), LightFuture(), cf.Future()
    cancelled.cancel()
    waited.cancel()
    got: list[Any] = []
    waiting = threading.Event()

    def wait_for_it() -> None:
        waiting.set()
        got.append(cf.wait([waited], timeout=30))

    t = threading.Thread(target=wait_for_it)
    t.start()
    waiting.wait()
    while waited._cond is None:  # its waiter is installed once the Condition exists
        threading.Event().wait(0.001)
    ok = LightFuture.start_all([plain, cancelled, waited, foreign])
    t.join(30)
    assert ok == [True, False, False, True]
    assert plain.running() and foreign.running()
    assert cancelled._state == "CANCELLED_AND_NOTIFIED" and cancelled._cond is None
    assert got and waited in got[0].done  # add_cancelled reached the wait() waiter
    with pytest.raises(RuntimeError):
        LightFuture.start_all([plain])  # already running: the stdlib's error


def test_settle_all_sets_plain_ones_and_leaves_the_rest() -> None:
    class Failed:
        pass

    plain = LightFuture()
    plain.set_running_or_notify_cancel()
    waited, called, done, foreign, failing = (LightFuture() for _ in range(5))
    waited._condition  # noqa: B018 - a waiter made its Condition
    seen: list[Any] = []
    called.add_done_callback(seen.append)
    done.set_result(0)
    other = cf.Future()
    left = LightFuture.settle_all(
        [plain, waited, called, done, other, failing], [1, 2, 3, 4, 5, Failed()], Failed
    )
    assert left == [1, 2, 3, 4, 5]
    assert plain.result() == 1 and plain._cond is None
    assert not waited.done() and not called.done() and not other.done() and not failing.done()
    assert done.result() == 0 and seen == []
    del foreign


def test_the_engine_settles_a_batch_and_wakes_its_waiters() -> None:
    """``engine._resolve_all``: plain futures at once, then one by one the future a thread
    waits on, the one with a callback, and a task error (the executor's exception)."""
    from polyproc._pool.engine import _resolve_all
    from polyproc._pool.messages import TaskError
    from polyproc._pool.tasks import _NO_FN, Job, Mode

    futs = [LightFuture() for _ in range(4)]
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(futs[1].result(timeout=30)))
    t.start()
    while futs[1]._cond is None:
        threading.Event().wait(0.001)
    seen: list[Any] = []
    futs[2].add_done_callback(lambda f: seen.append(f.result()))
    values: list[Any] = [10, 11, 12, TaskError.local(KeyError("k"))]
    _resolve_all([Job.task(_NO_FN, Mode.STAR, f, b"", None, None, 0, None) for f in futs], values)
    t.join(30)
    assert got == [11] and seen == [12] and futs[0].result() == 10
    assert isinstance(futs[3].exception(), KeyError)
