"""``max_memory_per_child`` counts what a worker added, not the pages it shares with its parent.

A fork child's RSS starts at its parent's (copy-on-write pages are mapped, and counted, in
both), so a parent holding 300 MiB with a 200 MiB limit used to recycle its worker after
every task. The worker now reports the RSS it started with; the limit applies to the growth
since (under spawn a worker shares nothing, and its whole RSS counts).
"""

from __future__ import annotations

from typing import Any

import enginehelpers as eh
import poolhelpers as h
import pytest

from polyproc.pool import Pool

MiB = 2**20


@pytest.fixture
def fat_parent() -> Any:
    block = bytearray(300 * MiB)
    block[::4096] = b"\x01" * len(block[::4096])  # resident, not just reserved
    yield block
    del block


@pytest.mark.timeout(120)
def test_a_fat_parent_does_not_make_every_worker_fat(ctx: Any, fat_parent: Any) -> None:
    with Pool(1, context=ctx, max_memory_per_child=200 * MiB) as pool:
        pids = [pool.apply(eh.pid_of) for _ in range(6)]
        assert len(set(pids)) == 1, pids
        assert pool.statistics()["workers_recycled"] == 0


@pytest.mark.timeout(120)
def test_a_worker_that_grows_is_still_recycled_under_a_fat_parent(
    ctx: Any, fat_parent: Any
) -> None:
    # Each task keeps 40 MiB more: past 150 MiB of its own, the worker is replaced. Its RSS
    # can also fall as it frees what it inherited (the test process's garbage, collected
    # there), which hides some growth: ten tasks, not six.
    with Pool(1, context=ctx, max_memory_per_child=150 * MiB) as pool:
        pids = [pool.apply(h.rss_hog, (i,)) for i in range(10)]
        assert 2 <= len(set(pids)) <= 5, pids
