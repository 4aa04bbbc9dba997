"""Busy-polling before sleeping (``_transport/spin.py``) as the pool uses it: bounded,
adaptive, and never in an idle pool."""

from __future__ import annotations

import time
from typing import Any

import poolhelpers as h
import pytest

from polyproc._pool import worker
from polyproc._transport import spin as spin_mod
from polyproc._transport.spin import REARM, Spin, spin_budget, spin_until, wait_spinning
from polyproc.pool import Pool

pytestmark = pytest.mark.timeout(60)


def test_a_miss_halves_the_budget_until_it_is_off_and_a_short_sleep_rearms_it() -> None:
    s = Spin(40e-6)
    s.miss()
    assert s.budget == 20e-6
    s.miss()
    s.miss()  # 5 us: still on
    assert s.budget == 5e-6
    s.miss()  # below 5 us: off
    assert s.budget == 0.0
    s.slept(2 * REARM)  # a long sleep: spinning would not have caught it
    assert s.budget == 0.0
    s.slept(REARM / 2)
    assert s.budget == 40e-6


def test_spin_until_polls_without_waiting_and_yields_between_polls(monkeypatch: Any) -> None:
    polls: list[int] = []
    yields: list[int] = []
    monkeypatch.setattr(spin_mod, "_yield", lambda: yields.append(1))
    s = Spin(1.0)
    s.budget = 0.5

    def poll(ms: int) -> list[int]:
        polls.append(ms)
        return [1] if len(polls) == 3 else []

    assert spin_until(poll, s)
    assert polls == [0, 0, 0] and len(yields) == 2
    assert s.budget == 1.0  # it found something: full again


def test_spin_until_gives_up_when_the_budget_is_spent() -> None:
    s = Spin(20e-6)
    started = time.perf_counter()
    assert not spin_until(lambda ms: [], s)
    assert time.perf_counter() - started < 1.0  # bounded (20 us; generous for a loaded box)
    assert s.budget == 10e-6


def test_wait_spinning_spins_then_sleeps_and_reports_the_sleep(monkeypatch: Any) -> None:
    """What every spinner (worker, leading caller, manager loop) does: the spin's find
    without sleeping; else one sleep with the caller's timeout, which rearms a budget the
    misses had switched off when it was shorter than ``REARM``; no spin when not allowed."""
    monkeypatch.setattr(spin_mod, "_yield", lambda: None)
    timeouts: list[Any] = []

    def poll(timeout: Any) -> list[int]:
        timeouts.append(timeout)
        return [7] if timeout == 0 else []

    s = Spin(1.0)
    assert wait_spinning(poll, s, 5) == [7] and timeouts == [0]
    timeouts.clear()
    assert wait_spinning(poll, s, 5, may_spin=False) == [] and timeouts == [5]
    s.budget = 0.0  # switched off by misses; the sleep above was short: rearmed below
    timeouts.clear()
    assert wait_spinning(poll, s, 5) == [] and timeouts == [5]
    assert s.budget == 1.0


def test_no_spinning_with_one_cpu(monkeypatch: Any) -> None:
    monkeypatch.setattr(spin_mod.os, "sched_getaffinity", lambda pid: {0})
    assert spin_budget(50e-6) == 0.0
    monkeypatch.setattr(spin_mod.os, "sched_getaffinity", lambda pid: {0, 1})
    assert spin_budget(50e-6) == 50e-6


def test_a_waiting_caller_stops_spinning_for_slow_tasks(ctx: Any) -> None:
    """A caller whose answers take longer than its budget halves it at each wait, down
    to nothing: it then sleeps at once, as it did before spinning existed."""
    with Pool(1, context=ctx) as pool:
        spin = pool._engine.flags.spin
        if not spin.full:
            pytest.skip("one CPU: no spinning")
        for _ in range(5):
            assert pool.apply(h.sleep_then, (1, 0.02)) == 1
        assert spin.budget == 0.0


def _until_all_ready(pool: Any) -> None:
    """Wait (polling the scheduler, 20 s at most) until every worker has said READY: a
    later round of ``apply`` goes to the one that answered last, so another may still be
    booting (spawn, on a loaded machine) while the test measures idle CPU."""
    from polyproc._pool.tasks import WorkerState

    deadline = time.monotonic() + 20
    sched = pool._engine.sched
    while any(s.state is WorkerState.STARTING for s in list(sched.workers.values())):
        assert time.monotonic() < deadline, "workers never became ready"
        time.sleep(0.01)  # polling another thread's state, not synchronising with it


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def test_an_idle_pool_burns_no_cpu_after_a_burst_of_round_trips(ctx: Any) -> None:
    """Workers and the caller spin only right after an answer, and only while answers keep
    coming: once calls stop, the whole pool sleeps (spinning for good would cost ~0.5 s
    of CPU a worker here)."""
    with Pool(2, context=ctx) as pool:
        _until_all_ready(pool)  # a spawned worker still booting would burn CPU below
        for i in range(300):
            assert pool.apply(h.inc, (i,)) == i + 1
        pids = [p.pid for p in pool._pool]
        time.sleep(0.05)  # the last spins end (50 us each)
        before = _cpu(pids)
        time.sleep(0.5)  # the subject: idle time
        assert _cpu(pids) - before < 0.05


def test_rss_is_read_at_most_every_so_often_unless_it_is_exact() -> None:
    rss = worker._Rss(every=10.0)
    assert rss.sample(100.0) is not None  # the first one is read
    assert rss.sample(105.0) is None  # within ``every``: the engine keeps the last
    assert rss.sample(110.5) is not None
    exact = worker._Rss(every=0.0)
    assert exact.sample(1.0) is not None and exact.sample(1.0) is not None


def test_a_pool_with_a_memory_limit_gets_an_rss_with_every_result(ctx: Any) -> None:
    """``max_memory_per_child`` is judged after each batch: its workers read their RSS
    every time (others at most every ``worker.RSS_EVERY``)."""
    with Pool(1, context=ctx, max_memory_per_child=2**40) as pool:
        seen: list[Any] = []
        sched = pool._engine.sched
        done = sched.batch_done

        def spy(wid: int, bid: int, values: Any, busy: float, rss: Any = None, *a: Any) -> None:
            seen.append(rss)
            done(wid, bid, values, busy, rss, *a)

        sched.batch_done = spy  # type: ignore[method-assign]
        for i in range(30):
            assert pool.apply(h.inc, (i,)) == i + 1
        assert len(seen) == 30 and all(r is not None for r in seen), seen
