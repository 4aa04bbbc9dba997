"""How a cluster pool cuts tiny tasks into cluster tasks: the scheduler alone, no cluster.

A cluster task costs milliseconds (a Ray or Dask round trip), so the pool's engine on a
cluster lets a batch grow to ``Cluster.max_batch`` tasks and never splits the tail of a
map into batches of less than ``Cluster.min_batch_s`` of work. Locally (a frame costs
microseconds) the tail is split down to one task per batch, to balance the workers.
"""

from __future__ import annotations

import itertools

from polyproc._pool.scheduler import FnInfo, Job, Mode, Scheduler, Send
from polyproc.backends._engine import Cluster

_fids = itertools.count(1)


def _sizes(sched: Scheduler, n: int, est: float) -> list[int]:
    """Batch sizes of a map of ``n`` tasks of ``est`` seconds each, answered as sent."""
    fn = FnInfo(next(_fids), None, "inc", b"")
    fn.est = est
    job = Job(fn, Mode.ONE, None, it=iter(range(n)), length=n)
    for wid in list(sched.workers):
        sched.worker_ready(wid)
    sched.actions.clear()
    sched.add_job(job)
    sizes: list[int] = []
    for _ in range(10_000):
        sends = [a for a in sched.actions if isinstance(a, Send)]
        sched.actions.clear()
        if not sends:
            break
        for s in sends:
            sizes.append(len(s.batch.args))
            sched.batch_done(s.wid, s.batch.bid, list(s.batch.args), est * len(s.batch.args))
    assert sum(sizes) == n
    return sizes


def _cluster_scheduler() -> Scheduler:
    sched = Scheduler(2, window=Cluster.window, target_batch_s=0.1, max_batch=Cluster.max_batch)
    sched.min_batch_s = Cluster.min_batch_s
    return sched


def test_tiny_tasks_go_in_a_few_big_cluster_tasks() -> None:
    sizes = _sizes(_cluster_scheduler(), 100_000, 1e-7)
    assert len(sizes) <= 5, sizes  # 100,000 x+1: a handful of round trips
    local = _sizes(Scheduler(2, target_batch_s=0.1), 100_000, 1e-7)
    assert len(local) > 20, local  # the local tail split goes down to single tasks


def test_slow_tasks_still_balance_the_tail() -> None:
    # 10 ms tasks: 0.1 s batches, and the tail is still split (0.01 s floor = 1 task).
    sizes = _sizes(_cluster_scheduler(), 200, 0.01)
    assert max(sizes) <= 10 and sizes[-1] == 1, sizes
