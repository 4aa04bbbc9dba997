"""A worker killed while it sends a result (a torn frame) costs that task only, never the pool.

Results from ~1 KB to below the memfd threshold take more than one write, so a SIGKILL mid-send
leaves half a frame on the channel. The engine must drop that channel cleanly (unregister the fd
it registered, whatever state the Connection is in) so the replacement worker's pipe, which gets
the same fd number, can be watched. (Before the fix: ``KeyError: fd already registered`` in the
engine, and ``BrokenProcessPool`` for every task after.)

The kill lands 2 ms after the task returns, so it may hit the task's own send, or the next task
that worker runs, or an idle worker: at most one task is lost (the one running), never the pool.
"""

from __future__ import annotations

import os
from typing import Any

import enginehelpers as eh
import pytest

from polyproc import futures
from polyproc.errors import WorkerLostError
from polyproc.pool import Pool

SIZES = {"small": 8, "1KB": 1024, "900KiB": 900 * 1024, "4MiB": 4 * 2**20}


def _expected(i: int, size: int) -> Any:
    return b"\x01" * size if i == 5 else i


def _check(got: list[Any], size: int) -> None:
    assert len(got) == 20
    lost = [i for i, v in enumerate(got) if isinstance(v, BaseException)]
    assert len(lost) <= 1, got
    for i, v in enumerate(got):
        if i in lost:
            assert isinstance(v, WorkerLostError), repr(v)
        else:
            assert v == _expected(i, size), (i, v if not isinstance(v, bytes) else len(v))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_pool_imap_survives_a_torn_result(ctx: Any, size: int, tmp_path: Any) -> None:
    marker = str(tmp_path / "killed")
    with Pool(2, context=ctx) as pool:
        it = pool.imap(
            eh.die_while_sending_star, [(i, 5, size, marker) for i in range(20)], chunksize=1
        )
        got: list[Any] = []
        while True:
            try:
                got.append(next(it))
            except StopIteration:
                break
            except WorkerLostError as exc:
                got.append(exc)
        _check(got, size)
        assert os.path.exists(marker)
        # The pool still works afterwards (retries: the kill may still be on its way).
        assert pool.map(eh.pid_of, range(4), retries=2) != []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_executor_survives_a_torn_result(ctx: Any, size: int, tmp_path: Any) -> None:
    marker = str(tmp_path / "killed")
    with futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futs = [ex.submit(eh.die_while_sending, i, 5, size, marker) for i in range(20)]
        got: list[Any] = []
        for f in futs:
            exc = f.exception(timeout=30)
            got.append(exc if exc is not None else f.result())
        _check(got, size)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [1024, 900 * 1024], ids=["1KB", "900KiB"])
def test_with_retries_every_item_arrives(ctx: Any, size: int, tmp_path: Any) -> None:
    marker = str(tmp_path / "killed")
    with Pool(2, context=ctx, retries=1) as pool:
        out = pool.starmap(
            eh.die_while_sending, [(i, 5, size, marker) for i in range(20)], chunksize=1
        )
        assert out == [_expected(i, size) for i in range(20)]
