"""Tour sections on what polyproc adds: crash isolation, timeouts, lazy input, zero copy, progress.

Each demo is the situation where the stdlib hangs, swallows memory or copies,
run for real: a worker SIGKILLed mid-map, a task that would run for 10 s, an
endless input generator, a 32 MiB array written by four processes, a bar.
Helpers are module-level so workers of every start method can import them.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import polyproc as mp
from polyproc.errors import WorkerLostError

from . import tour_logger

log = tour_logger()


def square(x: int) -> int:
    return x * x


# -- worker lost -----------------------------------------------------------------------------


def die_on_3(i: int) -> int:
    if i == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return i * i


def demo_worker_lost() -> None:
    with mp.Pool(2) as pool:
        results = pool.imap(die_on_3, range(6))
        for i in range(6):
            try:
                log.info(f"{i} -> {next(results)}")
            except WorkerLostError as exc:
                log.info(f"{i} -> WorkerLostError: {exc}")
                log.info(
                    f"     function={exc.function} index={exc.index} "
                    f"argument={exc.argument} exitcode={exc.exitcode}"
                )
        log.info(f"the pool still works: {pool.map(square, range(5))}")


# -- timeout ---------------------------------------------------------------------------------


def sleepy(seconds: float) -> float:
    time.sleep(seconds)  # stands for a task that got stuck
    return seconds


def demo_timeout() -> None:
    with mp.Pool(2) as pool:
        t0 = time.monotonic()
        late = pool.apply_async(sleepy, (10,), timeout=0.5)
        fine = pool.apply_async(sleepy, (0.1,))
        try:
            late.get()
        except TimeoutError as exc:
            log.info(
                f"the 10 s task raised TimeoutError after {time.monotonic() - t0:.1f} s: {exc}"
            )
        log.info(f"its neighbour finished: {fine.get()}")
        log.info(f"and the pool goes on: {pool.map(square, range(5))}")


# -- lazy imap -------------------------------------------------------------------------------


def demo_lazy_imap() -> None:
    pulled = 0

    def numbers() -> Iterator[int]:  # endless; counts what the pool asked for
        nonlocal pulled
        for n in itertools.count():
            pulled += 1
            yield n

    with mp.Pool(2) as pool:
        first = []
        for value in pool.imap(square, numbers()):
            first.append(value)
            if len(first) == 10:
                break
        log.info(f"first ten squares: {first}")
        log.info(f"the endless generator was asked for {pulled} items: a bounded window, not all")


# -- shared array ----------------------------------------------------------------------------


def fill_row(a: Any, i: int) -> None:
    a[i, :] = i  # writes straight into the shared pages


def demo_shared_array() -> str | None:
    try:
        import numpy  # noqa: F401 - only to know whether it is there
    except ImportError:
        return "NumPy is not installed (pip install 'polyproc[numpy]')"
    a = mp.shared_array((4, 1_000_000), "float64")
    procs = [mp.Process(target=fill_row, args=(a, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    log.info(f"row sums: {a.sum(axis=1).tolist()}")  # [0.0, 1e6, 2e6, 3e6]
    log.info(f"{a.nbytes / 2**20:.0f} MiB written by 4 processes; not one byte copied back")
    return None


# -- progress --------------------------------------------------------------------------------


def slow_square(x: int) -> int:
    time.sleep(0.02)  # stands for work
    return x * x


def demo_progress() -> None:
    with mp.Pool(2) as pool:
        results = pool.map(slow_square, range(50), progress=True)
    log.info(f"sum of 50 squares: {sum(results)}")
