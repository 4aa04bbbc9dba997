"""Crash isolation and "no hang, ever": every way a task or worker can fail, per start method."""

from __future__ import annotations

import os
import time
from typing import Any

import poolhelpers as h
import pytest

from polyproc.errors import (
    BrokenProcessPool,
    RemoteTraceback,
    SerializationError,
    TimeoutError,
    WorkerLostError,
)
from polyproc.pool import Pool

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("how,code", [("kill", -9), ("exit", 7), ("segv", -11)])
def test_dead_worker_fails_only_its_task(ctx: Any, how: str, code: int) -> None:
    with Pool(2, context=ctx) as pool:
        results = [pool.apply_async(h.die_on, (i,), {"how": how}) for i in range(6)]
        t0 = time.monotonic()
        with pytest.raises(WorkerLostError) as info:
            results[3].get(timeout=10)
        assert time.monotonic() - t0 < 5
        err = info.value
        assert isinstance(err, BrokenProcessPool)
        assert err.function == "die_on" and err.index == 0 and err.exitcode == code
        assert "3" in (err.argument or "") and "die_on" in str(err)
        assert [r.get(timeout=10) for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50]
        assert pool.apply(h.inc, (1,)) == 2  # still usable
        stats = pool.statistics()
        assert stats["lost"] == 1


def test_dead_worker_in_map_names_the_index_and_the_rest_completes(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        it = pool.imap(h.die_on, range(8), chunksize=3)
        got: list[Any] = []
        for _ in range(8):
            try:
                got.append(next(it))
            except WorkerLostError as exc:
                got.append(exc)
        lost = [g for g in got if isinstance(g, WorkerLostError)]
        assert len(lost) == 1 and lost[0].index == 3 and lost[0].exitcode == -9
        assert [g for g in got if not isinstance(g, WorkerLostError)] == [0, 10, 20, 40, 50, 60, 70]
        with pytest.raises(WorkerLostError):
            pool.map(h.die_on, range(5))
        assert pool.map(h.inc, range(3)) == [1, 2, 3]


def test_worker_lost_error_reports_peak_rss(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        pool.apply(h.grab_memory, (1,))
        r = pool.apply_async(h.rss_hog, (0,))
        r.get(timeout=10)
        with pytest.raises(WorkerLostError) as info:
            pool.apply(h.die_on, (3,))
        assert info.value.peak_rss is not None and info.value.peak_rss > 40 * 2**20
        assert "MiB" in str(info.value)


def test_retries_rerun_a_lost_task(ctx: Any, tmp_path: Any) -> None:
    marker = str(tmp_path / "died")
    with Pool(2, context=ctx, retries=1) as pool:
        assert pool.apply(h.die_first_time, (1, marker)) == 101
        assert pool.statistics()["retried"] == 1
    os.unlink(marker)
    with Pool(2, context=ctx) as pool:
        with pytest.raises(WorkerLostError):
            pool.apply(h.die_first_time, (1, marker))
        assert pool.apply(h.die_first_time, (1, marker), retries=0) == 101


def test_memory_limit_blowup_is_a_clear_error_and_the_pool_goes_on(ctx: Any) -> None:
    with Pool(1, context=ctx, initializer=h.limit_memory, initargs=(1024 * 2**20,)) as pool:
        with pytest.raises(MemoryError):
            pool.apply(h.grab_memory, (2048,))
        assert pool.apply(h.inc, (1,)) == 2


def test_initializer_that_raises_breaks_the_pool_instead_of_hanging(ctx: Any) -> None:
    with Pool(2, context=ctx, initializer=h.bad_initializer) as pool:
        # At submit if the pool already knows, else at get(): never a hang.
        with pytest.raises(BrokenProcessPool) as info:
            pool.apply_async(h.inc, (1,)).get(timeout=10)
        assert "initializer failed" in str(info.value) or "initializer" in str(info.value.__cause__)
        with pytest.raises(BrokenProcessPool):
            pool.apply_async(h.inc, (1,))


@pytest.mark.parametrize("fn", [h.raise_system_exit, h.raise_keyboard_interrupt])
def test_base_exception_in_a_task_is_that_task_s_error(ctx: Any, fn: Any) -> None:
    with Pool(1, context=ctx) as pool:
        with pytest.raises((SystemExit, KeyboardInterrupt)):
            pool.apply(fn, (1,))
        assert pool.apply(h.inc, (1,)) == 2


def test_remote_traceback_is_the_cause(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        with pytest.raises(ValueError, match="bad 5") as info:
            pool.apply(h.raise_value_error, (5,))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "raise_value_error" in str(cause)
        res = pool.map_async(h.raise_value_error, [1, 2])
        with pytest.raises(ValueError):
            res.get(timeout=10)
        assert not res.successful()


def test_unpicklable_result_is_a_clear_error(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        with pytest.raises(SerializationError, match="result"):
            pool.apply(h.return_lock, (1,))
        out = pool.map_async(h.return_lock, [1, 2])
        with pytest.raises(SerializationError):
            out.get(timeout=10)
        assert pool.apply(h.inc, (1,)) == 2


def test_unpicklable_argument_fails_at_submit(ctx: Any) -> None:
    import threading

    with Pool(1, context=ctx) as pool:
        # The pickler's own error, as the stdlib raises it (a TypeError for a lock).
        with pytest.raises(TypeError, match="lock"):
            pool.apply_async(h.inc, (threading.Lock(),))
        # In a map the bad item fails alone (its input is pulled lazily).
        it = pool.imap(h.get_state, [1, threading.Lock(), 3], chunksize=3)
        assert next(it) is None
        with pytest.raises(TypeError):
            next(it)
        assert next(it) is None


@pytest.mark.parametrize(
    "fn,match",
    [
        (h.raise_unpicklable_exception, "could not be unpickled"),
        (h.raise_unsendable_exception, "could not be pickled"),
    ],
)
def test_exceptions_that_do_not_travel_are_clear_errors(ctx: Any, fn: Any, match: str) -> None:
    with Pool(1, context=ctx) as pool:
        with pytest.raises(SerializationError, match=match) as info:
            pool.apply(fn, (1,))
        assert "Unpicklable" in str(info.value) or "Unsendable" in str(info.value)


def test_per_task_timeout_kills_only_the_late_task_s_worker(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        pids = {pool.apply(h.pid_of) for _ in range(4)}
        late = pool.apply_async(h.sleep_then, (1, 30), timeout=0.3)
        ok = [pool.apply_async(h.sleep_then, (i, 0.01)) for i in range(5)]
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout"):
            late.get(timeout=10)
        assert time.monotonic() - t0 < 3
        assert [r.get(timeout=10) for r in ok] == list(range(5))
        assert pool.statistics()["timed_out"] == 1
        assert pool.map(h.inc, [1, 2], timeout=5) == [2, 3]
        assert len(pids) >= 1


def test_map_timeout_fails_the_late_item_only(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        it = pool.imap(h.nap, [0, 0, 30, 0], timeout=0.5)
        assert next(it) == 0 and next(it) == 0
        with pytest.raises(TimeoutError):
            next(it)
        assert next(it) == 0
