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


def _until_direct(pool: Pool) -> None:
    """Wait (bounded) until the engine sleeps with an idle worker: the next call sends itself."""
    flags = pool._engine.flags
    deadline = time.monotonic() + 10
    while not (flags.asleep and flags.direct) and time.monotonic() < deadline:
        time.sleep(0.001)  # polling the engine's state, not ordering anything
    assert flags.asleep and flags.direct


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_apply_arms_its_channel_before_the_task_goes_out(ctx: Any) -> None:
    """``apply`` waits at once, so a direct send takes the channel from the engine's
    selector before the task is written: a quick answer cannot wake the engine first."""
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
        job = pool._sub.single(h.inc, (41,), {}, fut, timeout=None, retries=0, claim=False)
        engine.submit(job, True)  # as ``apply`` does, and then nobody waits
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
        assert pool.apply(h.inc, (1,)) == 2
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
