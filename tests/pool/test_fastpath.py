"""The caller-side round trip (``_pool/fastpath.py``): a caller that sends its own task and
reads its own answer keeps every guarantee of the engine's path."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import poolhelpers as h
import pytest

from polyproc.errors import WorkerLostError
from polyproc.pool import Pool

pytestmark = pytest.mark.timeout(60)


def _until_direct(pool: Any) -> None:
    """Wait (bounded) until the engine sleeps with an idle worker: the next call sends itself."""
    flags = pool._engine.flags
    deadline = time.monotonic() + 10
    while not (flags.asleep and flags.direct) and time.monotonic() < deadline:
        time.sleep(0.001)  # polling the engine's state, not ordering anything
    assert flags.asleep and flags.direct


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_apply_arms_its_channel_before_the_task_goes_out(ctx: Any) -> None:
    """A direct send keeps the channel out of the engine's selector (armed for its
    future) while the task is written: a quick answer cannot wake the engine first."""
    from polyproc._pool.channel import ARMED

    with Pool(2, context=ctx) as pool:
        engine = pool._engine
        workers = engine.workers
        seen: list[int] = []
        send = workers.send

        def spy(a: Any) -> None:
            if threading.current_thread() is threading.main_thread():
                seen.append(workers.handles[a.wid].led)
            send(a)

        workers.send = spy  # type: ignore[method-assign]
        assert pool.apply(h.inc, (0,)) == 1
        for i in range(20):
            _until_direct(pool)
            assert pool.apply(h.inc, (i,)) == i + 1
        assert seen and all(led == ARMED for led in seen), seen
        assert engine.flags.armed is None and engine.flags.led is None
        assert all(not x.led for x in workers.handles.values())


def test_an_armed_channel_nobody_reads_goes_back_to_the_engine(ctx: Any) -> None:
    """A caller interrupted between its send and its wait (Ctrl+C) leaves the channel armed:
    the next call, or the engine's next pass, gives it back, and the answer is delivered."""
    from polyproc._pool.fastpath import PoolFuture

    with Pool(1, context=ctx) as pool:
        engine = pool._engine
        assert pool.apply(h.inc, (0,)) == 1
        _until_direct(pool)
        fut = PoolFuture(engine)
        job = pool._sub.single(h.inc, (41,), {}, fut, timeout=None, retries=0)
        engine.submit(job)  # armed for it (a direct send), and then nobody waits
        assert engine.flags.armed is not None
        assert pool.apply_async(h.inc, (1,)).get(timeout=10) == 2
        assert fut.result(10) == 42
        assert engine.flags.armed is None
        assert pool.apply(h.inc, (2,)) == 3


def test_a_leading_caller_whose_worker_dies_gets_worker_lost_and_leaks_no_fd(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        assert pool.apply(h.inc, (0,)) == 1
        with pytest.raises(WorkerLostError):
            pool.apply(h.die_on, (3,))
        # Counted once the replacement's channel has its leader's dup (made at its first
        # lead, kept while it lives), as each one below: a leak is an fd per death.
        _until_direct(pool)
        assert pool.apply(h.inc, (1,)) == 2
        if pool._engine.workers.template is not None:  # spawn, forkserver: no standby
            h.standby_of(pool)  # its channel, journal and sentinel: counted before, not after
        before = _open_fds()
        for _ in range(4):
            _until_direct(pool)
            with pytest.raises(WorkerLostError):
                pool.apply(h.die_on, (3,))
            assert pool.apply(h.inc, (1,)) == 2  # the replacement leads as well
        assert _open_fds() <= before
        assert pool.statistics()["lost"] == 5


def test_a_late_task_times_out_while_its_caller_leads(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        assert pool.apply(h.inc, (0,)) == 1
        _until_direct(pool)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            pool.apply(h.sleep_then, (1, 30), timeout=0.3)
        assert time.monotonic() - t0 < 5
        assert pool.apply(h.inc, (1,)) == 2
        assert pool.statistics()["timed_out"] == 1


def test_an_argument_that_does_not_unpickle_in_the_worker_fails_that_call_only(ctx: Any) -> None:
    from polyproc.errors import SerializationError

    with Pool(1, context=ctx) as pool:
        assert pool.apply(h.inc, (0,)) == 1
        with pytest.raises(SerializationError, match="could not be unpickled in the worker"):
            pool.apply(h.inc, (h.LoadsBadly(),))
        assert pool.apply(h.inc, (1,)) == 2


def test_an_idle_worker_s_channel_is_left_out_of_the_selector(ctx: Any) -> None:
    """Nothing comes from an idle worker but its death (the sentinel's business): its
    channel is watched only while an answer may come, so a round trip it serves for a
    leading caller costs the engine's selector nothing."""
    with Pool(1, context=ctx) as pool:
        engine = pool._engine
        assert pool.apply(h.inc, (0,)) == 1
        _until_direct(pool)
        (w,) = engine.workers.handles.values()
        assert not w.busy and w.watched == 0
        assert w.fd not in engine.sel.get_map()
        for i in range(20):
            assert pool.apply(h.inc, (i,)) == i + 1
        # The engine's own sends watch it again while they are in flight.
        assert pool.map(h.inc, range(2000)) == list(range(1, 2001))
        done = threading.Event()
        got: list[int] = []
        threading.Thread(target=lambda: (got.append(pool.apply(h.inc, (5,))), done.set())).start()
        assert done.wait(10) and got == [6]
        _until_direct(pool)
        assert not w.busy and w.watched == 0


def _sleep_long_between_passes(engine: Any, monkeypatch: Any, grace: float) -> None:
    """Set the engine's grace for unread armed channels, and let it sleep with it."""
    from polyproc._pool import fastpath

    monkeypatch.setattr(fastpath, "ARM_GRACE", grace)
    with engine.flags.lock:
        engine.wake()  # its next sleep uses the new grace


def _observe(how: str, fut: Any) -> None:
    import concurrent.futures as cf

    if how == "done":
        deadline = time.monotonic() + 10
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.005)  # a user's polling loop: the subject of this test
    elif how == "running":
        deadline = time.monotonic() + 10
        while fut.running() and time.monotonic() < deadline:
            time.sleep(0.005)
    elif how == "callback":
        called = threading.Event()
        fut.add_done_callback(lambda f: called.set())
        assert called.wait(10)
    elif how == "wait":
        done, _ = cf.wait([fut], timeout=10)
        assert fut in done
    elif how == "as_completed":
        assert list(cf.as_completed([fut], timeout=10)) == [fut]


@pytest.mark.parametrize("how", ["done", "running", "callback", "wait", "as_completed"])
def test_a_future_looked_at_but_not_waited_on_gives_its_channel_back(
    how: str, monkeypatch: Any
) -> None:
    """A direct send arms the channel for its future; anything but ``result()`` or
    ``exception()`` that looks at the future has the engine read the answer at once
    (the grace is set far past the test's timeouts: only the hook can deliver it)."""
    import polyproc
    from polyproc.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=polyproc.get_context("fork")) as ex:
        engine = ex._engine
        assert ex.submit(h.inc, 0).result(10) == 1
        _sleep_long_between_passes(engine, monkeypatch, 60.0)
        _until_direct(ex)
        fut = ex.submit(h.inc, 41)
        assert engine.flags.armed is not None
        _observe(how, fut)
        assert fut._state == "FINISHED" and fut.result(0) == 42


def test_an_armed_channel_no_one_reads_or_looks_at_is_read_within_the_grace(
    monkeypatch: Any,
) -> None:
    import polyproc
    from polyproc.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=polyproc.get_context("fork")) as ex:
        engine = ex._engine
        assert ex.submit(h.inc, 0).result(10) == 1
        _sleep_long_between_passes(engine, monkeypatch, 0.05)
        _until_direct(ex)
        fut = ex.submit(h.inc, 1)
        assert engine.flags.armed is not None
        deadline = time.monotonic() + 10
        while fut._state != "FINISHED" and time.monotonic() < deadline:
            time.sleep(0.01)  # reads the state without any hook: only the grace helps
        assert fut._state == "FINISHED"


def test_apply_async_with_a_callback_is_not_armed_and_ready_reads_it(
    ctx: Any, monkeypatch: Any
) -> None:
    with Pool(1, context=ctx) as pool:
        engine = pool._engine
        assert pool.apply(h.inc, (0,)) == 1
        _sleep_long_between_passes(engine, monkeypatch, 60.0)
        _until_direct(pool)
        called = threading.Event()
        r = pool.apply_async(h.inc, (1,), callback=lambda v: called.set())
        assert engine.flags.armed is None  # the callback needs the engine to read it
        assert called.wait(10) and r.get(0) == 2
        _until_direct(pool)
        r = pool.apply_async(h.inc, (2,))
        assert engine.flags.armed is not None
        deadline = time.monotonic() + 10
        while not r.ready() and time.monotonic() < deadline:
            time.sleep(0.005)  # a user's polling loop: the subject of this test
        assert r.ready() and r.get(0) == 3


def test_ready_says_true_once_the_answer_is_in_the_armed_channel(
    ctx: Any, monkeypatch: Any
) -> None:
    """As the stdlib's ``ready()`` is True once its result thread has the result, ours is
    True at its first call once the answer sits in the armed channel: the call reads it
    (not only wakes the engine, which would leave this first answer False)."""
    import select

    with Pool(1, context=ctx) as pool:
        engine = pool._engine
        assert pool.apply(h.inc, (0,)) == 1
        _sleep_long_between_passes(engine, monkeypatch, 60.0)
        for i in range(5):
            _until_direct(pool)
            r = pool.apply_async(h.inc, (i,))
            armed = engine.flags.armed
            assert armed is not None
            p = select.poll()
            p.register(armed.fd, select.POLLIN)
            assert p.poll(10_000), "no answer"
            assert r.ready() and r.get(0) == i + 1
