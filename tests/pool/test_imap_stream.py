"""``imap``/``Executor.map`` results walked in C (issue #14): an ``itertools.chain`` fed a
delivered list at a time (``_pool/stream.py``). What must not change with it: failures at
their position, iteration after a failure or a timeout, several consumer threads, the
consumer's credit reports (now a few per credit, not one per 64 results)."""

from __future__ import annotations

import sys
import threading
from typing import Any

import poolhelpers as h
import pytest

import polyproc
from polyproc._pool.messages import TaskError
from polyproc._pool.results import MapResult
from polyproc._pool.scheduler import Deliver
from polyproc.errors import TimeoutError
from polyproc.futures import ProcessPoolExecutor
from polyproc.pool import IMapIterator, IMapUnorderedIterator, Pool, RemoteTraceback

pytestmark = pytest.mark.timeout(60)


def _fork() -> Any:
    return polyproc.get_context("fork")


def _count_posts(pool: Any) -> list[int]:
    """Wrap the engine's ``consumed`` (what an iterator made now posts): how many posts."""
    engine = pool._engine
    posts = [0]
    consumed = engine.consumed

    def counting(job: Any, n: int) -> None:
        posts[0] += 1
        consumed(job, n)

    engine.consumed = counting
    return posts


def test_a_fast_consumer_reports_a_few_times_per_credit_not_per_item() -> None:
    with Pool(2, context=_fork()) as pool:
        pool.map(h.inc, range(10))  # measured: batches are big from the start
        posts = _count_posts(pool)
        n = 300_000
        assert list(pool.imap(h.inc, range(n))) == list(range(1, n + 1))
        # One post per 64 results was 4,688 here (and per item while stalled: ~2x the
        # whole imap's CPU). Now: per piece while stalled, else per quarter of the credit.
        assert posts[0] < n // 1000, posts[0]


def _python_calls(walk: Any) -> int:
    """Python function calls made in this thread while ``walk()`` runs."""
    calls = [0]

    def count(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls[0] += 1

    sys.setprofile(count)
    try:
        walk()
    finally:
        sys.setprofile(None)
    return calls[0]


@pytest.mark.parametrize("face", ["imap", "imap_unordered", "executor"])
def test_results_are_walked_in_c_not_one_python_call_each(face: str) -> None:
    n = 100_000
    if face == "executor":
        with ProcessPoolExecutor(2, mp_context=_fork()) as ex:
            assert list(ex.map(h.inc, range(1000))) == list(range(1, 1001))
            it: Any = ex.map(h.inc, range(n))
            out: list[int] = []
            calls = _python_calls(lambda: out.extend(it))
    else:
        with Pool(2, context=_fork()) as pool:
            pool.map(h.inc, range(1000))
            it = getattr(pool, face)(h.inc, range(n))
            out = []
            calls = _python_calls(lambda: out.extend(it))
    assert sorted(out) == list(range(1, n + 1))
    # A Python ``next`` (or a generator's frame) per result was 100,000 calls here.
    assert calls < n // 20, calls


def test_a_batch_known_to_hold_no_failure_is_not_scanned_again() -> None:
    from test_scheduler import Harness, fn, map_job

    hs = Harness(2)
    hs.ready_all()
    for values_of, clean in (
        (lambda n: [1] * n, True),  # an all-int message: marked clean by the worker set
        (lambda n: [TaskError.local(ValueError(1))] * n, False),
    ):
        hs.s.add_job(map_job(fn(est=1e-6), range(8)))
        hs.drain()
        (send,) = hs.take_sends()
        hs.s.batch_done(send.wid, send.batch.bid, values_of(len(send.batch)), 0.001, None, clean)
        delivers = [a for a in hs.s.actions if isinstance(a, Deliver)]
        assert delivers and all(a.clean is clean for a in delivers)
        hs.drain()
    assert hs.s.stats["failed"] == 8  # an unmarked batch is still counted
    # A sink trusts the mark (no per-item scan), and scans what is not marked.
    result: MapResult[Any] = MapResult()
    result._deliver(0, [1, 2], True)
    result._deliver(2, [TaskError.local(ValueError(3))], False)
    result._done()
    with pytest.raises(ValueError):
        result.get(1)


@pytest.mark.parametrize("unordered", [False, True])
def test_failures_raise_at_their_position_and_iteration_goes_on(unordered: bool) -> None:
    n, every = 3000, 97
    with Pool(2, context=_fork()) as pool:
        pool.map(h.inc, range(10))
        call = pool.imap_unordered if unordered else pool.imap
        it = call(h.fail_every, range(n))
        got: list[Any] = []
        while True:
            try:
                got.append(next(it))
            except ValueError as exc:
                got.append(("failed", exc.args[0]))
            except StopIteration:
                break
        expected = [("failed", x) if x % every == every - 1 else x for x in range(n)]
        if unordered:
            assert sorted(got, key=str) == sorted(expected, key=str)
        else:
            assert got == expected


def test_next_timeout_leaves_the_iterator_usable() -> None:
    with Pool(2, context=_fork()) as pool:
        it = pool.imap(h.nap, [0.0, 1.0, 0.0])
        assert it.next(timeout=10) == 0.0
        with pytest.raises(TimeoutError):
            it.next(timeout=0.05)
        assert it.next(timeout=10) == 1.0  # the timed-out wait left the chain working
        assert list(it) == [0.0]


def test_a_break_then_next_resumes_where_the_loop_stopped() -> None:
    with Pool(2, context=_fork()) as pool:
        it = pool.imap(h.inc, range(50_000))
        for v in it:
            if v == 10_000:
                break
        assert next(it) == 10_001  # not lost in a chunk the for loop was walking
        assert list(it) == list(range(10_002, 50_001))


def test_threads_sharing_one_iterator_get_every_result_once() -> None:
    n = 200_000
    with Pool(2, context=_fork()) as pool:
        it = pool.imap(h.inc, range(n))
        seen: list[list[int]] = [[] for _ in range(4)]

        def drain(out: list[int]) -> None:
            for v in it:
                out.append(v)

        threads = [threading.Thread(target=drain, args=(s,)) for s in seen]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
        got = sorted(v for s in seen for v in s)
        assert got == list(range(1, n + 1))


def test_a_task_raising_stopiteration_ends_the_loop_as_in_the_stdlib() -> None:
    with Pool(2, context=_fork()) as pool:
        # The stdlib's IMapIterator.next raises it: a for loop (or list()) stops there,
        # and the next loop goes on with the results after it.
        it = pool.imap(h.stop_on, range(10))
        assert list(it) == [0, 1, 2, 3, 4]
        assert isinstance(it, IMapIterator) and type(it).__name__ == "IMapIterator"
        assert list(it) == [6, 7, 8, 9]
        assert list(it) == []
    with ProcessPoolExecutor(2, mp_context=_fork()) as ex:
        # The stdlib's Executor.map is a generator: PEP 479 makes it a RuntimeError.
        it = ex.map(h.stop_on, range(10))
        with pytest.raises(RuntimeError):
            list(it)
        assert list(it) == []


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_after_a_tasks_stopiteration_next_goes_on_and_raises_the_next_ones_own(
    chunksize: Any,
) -> None:
    """The first is a bare StopIteration (the C chain can only end); later ones are the
    task's own, raised by the Python ``__next__`` the iterator has from then on."""
    with Pool(2, context=_fork()) as pool:
        it = pool.imap(h.stop_twice_fail_once, range(10), chunksize)
        got = h.walk(it, 13)
        assert got == [0, 1, 2, "Stop:None", 4, "ValueError", 6, "Stop:7", 8, 9] + ["Stop:None"] * 3
        it = pool.imap(h.stop_twice_fail_once, range(10), chunksize)
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(StopIteration):
            next(it)
        assert it.next(timeout=30) == 4  # next(timeout) goes on too
        with pytest.raises(ValueError):
            next(it)
        assert next(it) == 6
        with pytest.raises(StopIteration) as stop:
            next(it)
        assert stop.value.value == 7  # the task's own, with the worker's traceback
        assert isinstance(stop.value.__cause__, RemoteTraceback)
        assert list(it) == [8, 9]
        unordered = pool.imap_unordered(h.stop_on, range(10), chunksize)
        first = list(unordered)
        assert isinstance(unordered, IMapUnorderedIterator)
        assert sorted(first + list(unordered)) == [0, 1, 2, 3, 4, 6, 7, 8, 9]


def test_executor_map_of_one_iterable_passes_each_item_whole() -> None:
    with ProcessPoolExecutor(2, mp_context=_fork()) as ex:
        items = [(1, 2), (3,), "ab", None]
        assert list(ex.map(h.ident, items)) == items
        assert list(ex.map(h.add, [1, 2], [10, 20])) == [11, 22]
        assert list(ex.map(h.inc)) == []


def test_executor_map_ends_at_its_deadline_and_on_close() -> None:
    with ProcessPoolExecutor(2, mp_context=_fork()) as ex:
        assert ex.submit(h.inc, 0).result() == 1
        it = ex.map(h.nap, [0, 1.0, 0], timeout=0.3)
        assert next(it) == 0
        with pytest.raises(TimeoutError):
            next(it)
        assert list(it) == []  # as the stdlib's generator: finished once it raised
        it = ex.map(h.inc, range(100_000))
        assert next(it) == 1
        it.close()
        assert list(it) == []  # not even what was already delivered
        assert list(ex.map(h.inc, range(1000))) == list(range(1, 1001))


def test_executor_map_takes_send_and_throw_as_the_stdlibs_generator_does() -> None:
    with ProcessPoolExecutor(2, mp_context=_fork()) as ex:
        it = ex.map(h.inc, range(100_000))
        assert it.send(None) == 1 and next(it) == 2
        assert it.send("ignored") == 3  # the generator ignores what is sent in
        with pytest.raises(KeyError, match="thrown"):
            it.throw(KeyError("thrown"))
        assert list(it) == []  # finished: its finally cancelled the rest
        it = ex.map(h.inc, range(10))
        with pytest.raises(ValueError):
            it.throw(ValueError)
        assert list(it) == []
