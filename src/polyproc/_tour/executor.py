"""Tour section: ProcessPoolExecutor, the concurrent.futures face of polyproc's pool engine.

Helpers are module-level so every start method's workers can import them by name.
"""

from __future__ import annotations

import concurrent.futures
import time

from . import tour_logger

log = tour_logger()


# -- executor --------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.05 * x)  # stands for work that takes longer for bigger x
    return x * x


def demo_executor() -> None:
    from polyproc.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(pow, 2, 10)
        log.info(f"submit(pow, 2, 10).result() = {fut.result()}")
        log.info(f"a concurrent.futures.Future: {isinstance(fut, concurrent.futures.Future)}")
        log.info(f"map: {list(ex.map(square, range(8)))}")
        futures = [ex.submit(slow_square, n) for n in (3, 1, 2)]
        log.info(f"as_completed: {[f.result() for f in as_completed(futures)]}")  # fastest first
