"""ProcessPoolExecutor and polyproc.futures: the concurrent.futures API on our engine."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import io
import time
from typing import Any

import poolhelpers as h
import pytest

import polyproc
from polyproc import futures
from polyproc.errors import BrokenProcessPool, TimeoutError, WorkerLostError
from polyproc.futures import ProcessPoolExecutor

pytestmark = pytest.mark.timeout(60)


def test_submit_map_as_completed_wait(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        f = ex.submit(h.add, 1, b=2)
        assert isinstance(f, cf.Future) and f.result(10) == 3
        fs = [ex.submit(h.inc, i) for i in range(20)]
        assert sorted(x.result() for x in futures.as_completed(fs, timeout=10)) == list(
            range(1, 21)
        )
        done, pending = futures.wait(fs, timeout=10, return_when=futures.ALL_COMPLETED)
        assert len(done) == 20 and not pending
        # the stdlib's own helpers accept our futures
        assert len(cf.wait(fs).done) == 20
        assert list(ex.map(h.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
        assert list(ex.map(h.inc, range(1000), chunksize=50)) == list(range(1, 1001))
        assert list(ex.map(h.inc, (i for i in range(100)))) == list(range(1, 101))
        err = ex.submit(h.raise_value_error, 1)
        with pytest.raises(ValueError):
            err.result()
        assert isinstance(err.exception(), ValueError)


def test_map_timeout_is_a_deadline_for_the_iteration(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert ex.submit(h.inc, 0).result() == 1  # workers up: the deadline is for map
        it = ex.map(h.nap, [0, 1.0], timeout=0.3)
        assert next(it) == 0
        with pytest.raises(TimeoutError):
            next(it)
        it.close()


def test_map_raises_at_the_failed_position_after_every_earlier_result(ctx: Any) -> None:
    """Results come a chunk at a time (walked in C): a failure inside a chunk still raises
    exactly at its position, after every earlier result, and ends the map (as the stdlib's)."""
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        got: list[int] = []
        it = ex.map(h.fail_on, range(2000), chunksize=7)
        with pytest.raises(ValueError, match="500"):
            for v in it:
                got.append(v)
        assert got == list(range(500))
        assert list(it) == []  # a generator that raised is finished
        assert list(ex.map(h.inc, range(5000))) == list(range(1, 5001))


def test_task_timeout_and_dead_worker_do_not_break_the_executor(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx, task_timeout=0.3) as ex:
        late = ex.submit(h.nap, 30)
        with pytest.raises(TimeoutError):
            late.result(10)
        dead = ex.submit(h.die_on, 3)
        with pytest.raises(WorkerLostError):
            dead.result(10)
        assert ex.submit(h.inc, 1).result(10) == 2
        assert ex.statistics()["timed_out"] == 1


def test_shutdown_cancel_futures_and_submit_after(ctx: Any) -> None:
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    assert ex.submit(h.inc, 0).result() == 1  # the worker is up
    path_block = ex.submit(h.nap, 0.3)
    while not path_block.running():  # sent to the worker
        time.sleep(0.001)
    queued = [ex.submit(h.double, i) for i in range(5)]  # unmeasured: held back, cancellable
    ex.shutdown(wait=True, cancel_futures=True)
    assert path_block.result() == 0.3
    assert all(f.cancelled() or f.done() for f in queued)
    assert any(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        ex.submit(h.inc, 1)


def test_ctrl_c_in_a_with_block_cancels_what_has_not_started(ctx: Any) -> None:
    """The stdlib's ``__exit__`` waits for every pending future (here 20 x 0.3 s); after
    a KeyboardInterrupt ours cancels those not started and waits only for the running."""
    with pytest.raises(KeyboardInterrupt):
        with ProcessPoolExecutor(1, mp_context=ctx) as ex:
            running = ex.submit(h.nap, 0.3)
            deadline = time.monotonic() + 10
            while not running.running() and time.monotonic() < deadline:  # sent to the worker
                time.sleep(0.001)
            queued = [ex.submit(h.nap, 0.3) for _ in range(20)]
            raise KeyboardInterrupt
    assert running.done() and running.result() == 0.3
    assert all(f.cancelled() for f in queued)


def test_other_exceptions_in_a_with_block_still_wait_for_every_future(ctx: Any) -> None:
    with pytest.raises(ValueError):
        with ProcessPoolExecutor(1, mp_context=ctx) as ex:
            fs = [ex.submit(h.inc, i) for i in range(5)]
            raise ValueError
    assert [f.result(timeout=0) for f in fs] == [1, 2, 3, 4, 5]


def test_cancel_a_pending_future(ctx: Any) -> None:
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        first = ex.submit(h.nap, 0.3)
        second = ex.submit(h.inc, 1)
        assert second.cancel()
        assert first.result() == 0.3
        assert second.cancelled()
        assert ex.submit(h.inc, 2).result() == 3


def test_cancelled_futures_in_a_burst_are_dropped_from_their_batch(ctx: Any) -> None:
    """A batch of submits is started at once when sent (``_claim``): the cancelled ones
    in it never run, the others do, and a waiter on each kind is answered."""
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(h.inc, 0).result() == 1
        block = ex.submit(h.nap, 0.3)
        while not block.running():
            time.sleep(0.001)
        fs = [ex.submit(h.inc, i) for i in range(200)]
        cancelled = {i for i in range(0, 200, 2) if fs[i].cancel()}  # all but those sent
        assert len(cancelled) > 90
        waited = futures.wait(fs, timeout=30)
        assert not waited.not_done
        assert all(fs[i].result() == i + 1 for i in range(200) if i not in cancelled)
        assert all(fs[i].cancelled() for i in cancelled)
        assert ex.statistics()["done"] == 2 + 200 - len(cancelled)  # those never ran


def test_a_burst_mixing_plain_and_out_of_band_arguments(ctx: Any) -> None:
    """Single tasks share batches whatever their arguments pickled to: plain bytes (sent as
    they are) or a body with out-of-band buffers (packed per task), in submit order."""
    big = bytearray(b"x" * (1 << 20))  # pickles with an out-of-band buffer (protocol 5)
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(h.inc, 0).result() == 1
        args: list[Any] = [big if i % 5 == 0 else b"ab" * i for i in range(60)]
        fs = [ex.submit(len, a) for a in args]
        assert [f.result(30) for f in fs] == [len(a) for a in args]


def test_recycled_jobs_keep_nothing_of_their_tasks(ctx: Any) -> None:
    """A burst's finished jobs are kept for reuse (``tasks.recycle``): without their
    future, function or argument, and never one that something still references."""
    import functools
    import gc
    import weakref

    from polyproc._pool import tasks

    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        fn = functools.partial(h.add, b=1)  # not module-level: cached only while in use
        fs = [ex.submit(fn, i) for i in range(3000)]
        assert [f.result(30) for f in fs] == list(range(1, 3001))
        assert tasks._free  # the burst's jobs came back
        dead_fn, dead_fut = weakref.ref(fn), weakref.ref(fs[-1])
        del fn, fs
        gc.collect()
        assert dead_fn() is None and dead_fut() is None
        assert all(j.sink is None and j.blob is None and j.fn is tasks._NO_FN for j in tasks._free)
        assert [ex.submit(h.inc, i).result(30) for i in range(5)] == [1, 2, 3, 4, 5]

    def finished() -> tasks.Job:
        job = tasks.Job.task(tasks._NO_FN, tasks.Mode.STAR, "sink", b"", None, None, 0, None)
        job.finished = True
        return job

    tasks._free.clear()
    held = finished()
    tasks.recycle([held])  # something else (here, a name) still holds it: left alone
    assert held.sink == "sink" and not tasks._free
    tasks.recycle([finished()])  # only the delivered batch's list holds it: kept, emptied
    assert len(tasks._free) == 1 and tasks._free[0].sink is None


def test_initializer_and_max_tasks_per_child(ctx: Any) -> None:
    if ctx.start_method == "fork":
        # As the stdlib (cpython #90622); tests/pool/test_compat_executor.py checks it.
        with pytest.raises(ValueError, match="fork"):
            ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2)
    else:
        with ProcessPoolExecutor(
            1, mp_context=ctx, initializer=h.set_state, initargs=(7,), max_tasks_per_child=2
        ) as ex:
            assert ex.submit(h.get_state).result() == 7
            pids = [ex.submit(h.pid_of).result() for _ in range(5)]
            assert len(set(pids)) >= 2
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=h.bad_initializer) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(h.inc, 1).result(10)
        with pytest.raises(BrokenProcessPool):
            ex.submit(h.inc, 1)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(0, mp_context=ctx)


def test_asyncio_run_in_executor(ctx: Any) -> None:
    async def main(ex: ProcessPoolExecutor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(ex, h.inc, i) for i in range(5))))

    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert asyncio.run(main(ex)) == [1, 2, 3, 4, 5]


def test_map_progress_bar() -> None:
    out = io.StringIO()
    with ProcessPoolExecutor(2, mp_context=polyproc.get_context("fork")) as ex:
        assert list(ex.map(h.inc, range(10), progress={"file": out, "mininterval": 0})) == list(
            range(1, 11)
        )
    assert "10/10" in out.getvalue()


def test_many_separate_submits_are_batched_on_the_wire() -> None:
    with ProcessPoolExecutor(2, mp_context=polyproc.get_context("fork")) as ex:
        ex.submit(h.inc, 0).result()
        t0 = time.perf_counter()
        fs = [ex.submit(h.inc, i) for i in range(20_000)]
        assert [f.result() for f in fs] == list(range(1, 20_001))
        assert time.perf_counter() - t0 < 30


def test_futures_module_mirrors_concurrent_futures() -> None:
    for name in (
        "ALL_COMPLETED",
        "FIRST_COMPLETED",
        "FIRST_EXCEPTION",
        "CancelledError",
        "Future",
        "ThreadPoolExecutor",
        "as_completed",
        "wait",
        "BrokenExecutor",
    ):
        assert getattr(futures, name) is getattr(cf, name)
    assert issubclass(futures.BrokenProcessPool, cf.BrokenExecutor)
    assert issubclass(futures.TimeoutError, TimeoutError)
    assert polyproc.ProcessPoolExecutor is ProcessPoolExecutor
