"""The Pool and Executor calls on a cluster, each on Dask and on Ray (``backend`` fixture)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import threading
import time
from typing import Any

import pytest

import polyproc
from polyproc.futures import ProcessPoolExecutor
from polyproc.pool import Pool

pytestmark = pytest.mark.timeout(180)  # the first test waits for its cluster to start


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


def total(arr: Any, i: int) -> float:
    return float(arr.sum()) + i


def test_map_starmap_apply(backend: Any) -> None:
    with Pool(2, backend=backend) as p:
        assert p.map(square, range(50)) == [x * x for x in range(50)]
        assert p.starmap(add, [(i, i) for i in range(20)]) == [2 * i for i in range(20)]
        assert p.apply(add, (2, 3)) == 5
        assert p.apply(add, (), {"a": 1, "b": 2}) == 3
        got: list[Any] = []
        r = p.map_async(square, range(10), callback=got.append)
        assert r.get(timeout=30) == [x * x for x in range(10)]
        r.wait(5)
        assert got == [[x * x for x in range(10)]]


def test_imap_ordered_and_unordered(backend: Any) -> None:
    with Pool(2, backend=backend) as p:
        assert list(p.imap(square, range(300))) == [x * x for x in range(300)]
        assert sorted(p.imap_unordered(square, range(300))) == [x * x for x in range(300)]
        assert list(p.imap(square, range(40), chunksize=7)) == [x * x for x in range(40)]


def test_apply_async_callbacks(backend: Any) -> None:
    done = threading.Event()
    seen: list[Any] = []

    def cb(v: Any) -> None:
        seen.append(("ok", v))

    def ecb(e: BaseException) -> None:
        seen.append(("err", type(e).__name__))
        done.set()

    with Pool(2, backend=backend) as p:
        p.apply_async(square, (9,), callback=cb).get(timeout=30)
        p.apply_async(fail, (1,), error_callback=ecb)
        assert done.wait(30)
    assert seen == [("ok", 81), ("err", "ValueError")]


def test_executor_submit_as_completed_wait_asyncio(backend: Any) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        futs = [ex.submit(square, i) for i in range(10)]
        assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == [
            i * i for i in range(10)
        ]
        done, not_done = cf.wait([ex.submit(add, 1, b=2)], timeout=30)
        assert not not_done and done.pop().result() == 3
        assert list(ex.map(add, range(5), range(5))) == [0, 2, 4, 6, 8]

        async def main() -> list[int]:
            return list(
                await asyncio.gather(*(asyncio.wrap_future(ex.submit(square, i)) for i in range(4)))
            )

        assert asyncio.run(main()) == [0, 1, 4, 9]


def test_lambdas_and_closures(backend: Any) -> None:
    k = 7
    with Pool(2, backend=backend) as p:
        assert p.map(lambda x: x + k, range(5)) == [7, 8, 9, 10, 11]

        def scale(x: int) -> int:
            return x * k

        assert p.apply(scale, (3,)) == 21


def test_remote_traceback(backend: Any) -> None:
    with Pool(2, backend=backend) as p:
        with pytest.raises(ValueError, match="bad input 4") as info:
            p.map(fail, [4])
    cause = info.value.__cause__
    assert isinstance(cause, polyproc.errors.RemoteTraceback)
    assert "in fail" in str(cause) and "raise ValueError" in str(cause)


def test_progress_bar(backend: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with Pool(2, backend=backend) as p:
        assert p.map(square, range(30), progress=True) == [x * x for x in range(30)]
    assert "30/30" in capsys.readouterr().err


def slow_square(x: int) -> int:
    time.sleep(0.002)
    return x * x


def test_endless_generator_pulls_a_window(backend: Any) -> None:
    pulled = itertools.count()

    def endless() -> Any:
        for i in itertools.count():
            next(pulled)
            yield i

    with Pool(2, backend=backend) as p:
        it = p.imap(slow_square, endless())
        got = [next(it) for _ in range(200)]
        assert got == [x * x for x in range(200)]
        # Bounded by the scheduler's credit (a few batches per slot ahead of the
        # consumer), not by the input: an unbounded pull would never come back.
        lead = next(pulled) - 200
        assert lead <= 400, lead


def test_tiny_tasks_travel_many_per_cluster_task(backend: Any) -> None:
    with Pool(2, backend=backend) as p:
        n = 20000
        assert sum(p.imap(square, range(n))) == sum(x * x for x in range(n))
        sent = p._engine.cluster.stats["tasks"]  # type: ignore[attr-defined]
    assert sent < n / 50, f"{sent} cluster tasks for {n} tiny tasks"


def test_big_argument_sent_once(backend: Any) -> None:
    np = pytest.importorskip("numpy")
    arr = np.ones(1 << 20)  # 8 MiB
    with Pool(2, backend=backend) as p:
        got = p.starmap(total, [(arr, i) for i in range(40)])
        got += [p.apply(total, (arr, i)) for i in range(5)]  # one cluster task each
        stats = p._engine.cluster.stats  # type: ignore[attr-defined]
    assert got == [float(1 << 20) + i for i in range(40)] + [float(1 << 20) + i for i in range(5)]
    assert stats["puts"] == 1 and stats["bytes_put"] == arr.nbytes
    assert stats["tasks"] >= 6  # many cluster tasks, one copy of the array
