"""``Cell``, the future behind ``Pool``'s results: waiters, timeouts, callbacks, set once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from polyproc._pool.cell import Cell

pytestmark = pytest.mark.timeout(30)


def test_every_waiting_thread_wakes_with_the_outcome() -> None:
    cell = Cell()
    got: list[Any] = []
    ready = threading.Barrier(9)

    def wait() -> None:
        ready.wait()
        got.append(cell.result(20))

    threads = [threading.Thread(target=wait) for _ in range(8)]
    for t in threads:
        t.start()
    ready.wait()
    cell.set_result(42)
    for t in threads:
        t.join(20)
    assert got == [42] * 8
    assert cell._waiters is None  # nothing kept once set


def test_a_wait_that_times_out_raises_and_leaves_no_waiter_behind() -> None:
    cell = Cell()
    for timeout in (0.05, 0, -1):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            cell.result(timeout)
        assert time.monotonic() - t0 < 5
        assert not cell._waiters
    with pytest.raises(TimeoutError):
        cell.exception(0.01)
    cell.set_exception(ValueError("late"))
    with pytest.raises(ValueError, match="late"):
        cell.result(0)
    assert isinstance(cell.exception(0), ValueError)


def test_the_first_outcome_stands_and_callbacks_run_once_either_side_of_it() -> None:
    cell = Cell()
    seen: list[Any] = []
    cell.add_done_callback(lambda c: seen.append(("before", c.result())))
    cell.set_result(1)
    cell.set_result(2)
    cell.set_exception(RuntimeError("ignored"))
    cell.add_done_callback(lambda c: seen.append(("after", c.result())))
    assert cell.result() == 1 and cell.exception() is None
    assert seen == [("before", 1), ("after", 1)]
    assert cell.done() and not cell.running() and not cell.cancelled() and not cell.cancel()
