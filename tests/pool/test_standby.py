"""A pool's standby worker (``_pool/standby.py``): the next replacement, started ahead.

Once a pool's template has served a replacement, the pool starts a standby on the
template's spare while idle; the next replacement is that process, with no fork and no
boot. These tests look at which process answers, and at what a standby must never do:
run the initializer before it is needed, outlive its pool, be used dead, or be made by
a pool that never replaced a worker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import poolhelpers as h
import psutil
import pytest

import polyproc
from polyproc._launch.template import Template
from polyproc._pool import standby as standby_mod

pytestmark = pytest.mark.timeout(60)


def _pool(processes: int = 1, **kw: Any) -> Any:
    pool = polyproc.get_context("auto").Pool(processes, **kw)
    if pool._engine.workers.template is None:
        pool.terminate()
        import threading

        names = ", ".join(t.name for t in threading.enumerate())
        pytest.skip(f"another thread runs in this test process ({names}): no template")
    return pool


def _crash(pool: Any) -> None:
    with pytest.raises(polyproc.WorkerLostError):
        pool.apply(os._exit, (3,))


def _standby_pid(pool: Any) -> int:
    return int(h.standby_of(pool)[0].pid)


def _gone(pid: int) -> bool:
    try:
        psutil.Process(pid).wait(10)
    except psutil.NoSuchProcess:
        pass
    return not psutil.pid_exists(pid)


def test_the_next_replacement_is_the_standby() -> None:
    with _pool() as p:
        _crash(p)  # the first replacement: asked of the template
        assert p.apply(h.inc, (1,)) == 2
        standby = _standby_pid(p)
        assert standby not in [w.pid for w in p._pool]  # not one of the pool's workers
        assert standby not in [c.pid for c in polyproc.active_children()]
        stats = p.statistics()
        assert stats.workers_started == 2  # nor counted as started
        assert [w.state for w in stats.workers if w.state != "dead"] == ["ready"]
        _crash(p)
        assert p.apply(h.pid_of) == standby
        assert [w.pid for w in p._pool] == [standby]
        assert standby in [c.pid for c in polyproc.active_children()]
        assert _standby_pid(p) != standby  # and the next one is made


def test_recycled_workers_are_replaced_by_standbys() -> None:
    with _pool(maxtasksperchild=1) as p:
        p.apply(h.pid_of)  # its worker retires: the template forks the successor
        p.apply(h.pid_of)
        for _ in range(3):
            standby = _standby_pid(p)
            p.apply(h.pid_of)  # on a worker that retires as it is sent this task
            assert p.apply(h.pid_of) == standby


def test_a_standby_runs_the_initializer_only_once_it_is_needed(tmp_path: Path) -> None:
    log = tmp_path / "init"
    with _pool(initializer=h.append_pid, initargs=(str(log),)) as p:
        first = p.apply(h.pid_of)
        _crash(p)
        second = p.apply(h.pid_of)
        standby = _standby_pid(p)
        assert p.apply(h.pid_of) == second  # answered, idle: the standby waits, untouched
        assert log.read_text().split() == [str(first), str(second)]
        _crash(p)
        assert p.apply(h.pid_of) == standby
        assert log.read_text().split() == [str(first), str(second), str(standby)]


def test_a_dead_standby_is_not_used() -> None:
    """One killed while it waited is found dead when needed: dropped (reaped by the
    template), and that replacement starts as any would."""
    with _pool() as p:
        _crash(p)
        p.apply(h.inc, (1,))
        standby = _standby_pid(p)
        os.kill(standby, 9)
        assert _gone(standby)
        _crash(p)
        worker = p.apply(h.pid_of)
        assert worker != standby
        assert p.apply(h.inc, (2,)) == 3
        assert p._engine.workers.standby.ready is None or _standby_pid(p) != standby


@pytest.mark.parametrize("end", ["terminate", "close"])
def test_a_standby_ends_with_its_pool(end: str) -> None:
    p = _pool()
    try:
        _crash(p)
        p.apply(h.inc, (1,))
        standby = _standby_pid(p)
    finally:
        getattr(p, end)()
        p.join()
    assert _gone(standby)
    assert p._engine.workers.standby.ready is None


def test_a_pool_that_never_replaced_a_worker_makes_no_standby() -> None:
    """Its template stays parked (never woken: no spare, no standby)."""
    with _pool(2) as p:
        for i in range(20):
            assert p.apply(h.inc, (i,)) == i + 1
        assert p.map(h.inc, range(10)) == list(range(1, 11))
        assert p._engine.workers.standby.ready is None
        assert not p._engine.workers.template._woken


def test_no_spare_three_times_and_the_pool_stops_trying(monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby is started only on a spare the template announced, never by asking it;
    after three that could not be made, replacements go on as before, with no more tries."""
    calls: list[Any] = []

    def no_spare(self: Template, spec: Any) -> None:
        calls.append(spec)

    monkeypatch.setattr(Template, "start_on_spare", no_spare)
    with _pool() as p:
        pids = set()
        for i in range(6):
            _crash(p)
            pids.add(p.apply(h.pid_of))
            assert p.apply(h.inc, (i,)) == i + 1
            tries = min(i + 1, standby_mod.MAX_FAILURES)
            deadline = time.monotonic() + 10
            while len(calls) < tries:  # polling: the engine tries once it is idle
                assert time.monotonic() < deadline, (i, calls)
                time.sleep(0.01)
        assert len(pids) == 6
        assert len(calls) == standby_mod.MAX_FAILURES
        assert p._engine.workers.standby.ready is None


def test_a_standby_waits_in_the_selector_for_the_spare_the_template_owes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the pool is idle before the template has announced its next spare (it is still
    forking it: a busy machine), the engine watches the template's boot socket and starts
    the standby once the spare comes, rather than waiting in its thread or giving up."""
    from polyproc._launch.spares import Spares

    real = Spares.collect
    hidden: list[int] = []
    watched: list[int] = []

    def late(self: Spares, boot: Any, timeout: float | None) -> None:
        if not hidden and timeout == 0:  # the first look: as if nothing had come yet
            hidden.append(1)
            return
        real(self, boot, timeout)

    monkeypatch.setattr(Spares, "collect", late)
    with _pool() as p:
        on_template = p._engine.workers.on_template

        def spy() -> None:
            watched.append(1)
            on_template()

        p._engine.workers.on_template = spy
        _crash(p)
        p.apply(h.inc, (1,))
        standby = _standby_pid(p)
        assert hidden and watched, (hidden, watched)
        assert p._engine.workers.standby.failures == 0
        _crash(p)
        assert p.apply(h.pid_of) == standby
