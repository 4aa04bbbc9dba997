"""Tour sections from the tutorial: Process, Pool, sharing, Pipe, Value/Array.

Each ``demo_*`` runs in the tour's process and starts children; the helpers they
target are module-level functions so spawn and forkserver children can import
them by name. Children log through ``tour_logger()`` ("<processName>: message"),
set up when this module is imported, in the parent and in every child alike.
Sleeps are the tutorial's 5 s cut to a fraction of a second: they stand for work,
they never synchronise anything.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import polyproc as mp

from . import tour_logger

log = tour_logger()


# -- process ---------------------------------------------------------------------------------


def worker1(i: int) -> None:
    log.info("start")
    log.info(i)
    log.info("end")


def worker2(i: int) -> None:
    log.info("start")
    log.info(i)
    log.info("end")


def demo_process() -> None:
    t1 = mp.Process(target=worker1, args=(3,))
    t2 = mp.Process(name="renamed worker2", target=worker2, args=(3,))
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    log.info(f"{t1.name} exited with {t1.exitcode}, {t2.name} with {t2.exitcode}")


# -- pool ------------------------------------------------------------------------------------


def slow_double(i: int) -> int:
    log.info(f"start {i}")
    time.sleep(0.2)  # stands for 0.2 s of work
    log.info(f"end {i}")
    return i * 2


def demo_pool() -> None:
    with mp.Pool(2) as p:
        r1 = p.apply_async(slow_double, (100,))
        r2 = p.apply_async(slow_double, (100,))
        log.info("executed")  # before the results: apply_async did not wait
        log.info(r1.get())
        log.info(r2.get())

        late = p.apply_async(slow_double, (1,))
        try:
            late.get(timeout=0.05)
        except mp.TimeoutError:
            log.info("get(timeout=0.05) raised TimeoutError; the task itself goes on")
        log.info(late.get())

        log.info(p.apply(slow_double, (200,)))  # apply blocks until the result is back
        log.info("executed apply")

        log.info(p.map(slow_double, [100, 200]))  # map blocks too: [200, 400]
        result = p.map_async(slow_double, [100, 200])
        log.info("map_async returned at once")
        log.info(result.get())

        for value in p.imap(slow_double, [1, 2, 3]):  # in order, as they come
            log.info(f"imap yielded {value}")


# -- sharing ---------------------------------------------------------------------------------


def add_one(d: dict[str, int], lock: Any) -> None:
    with lock:
        d["x"] = d["x"] + 1
        log.info(d)


def demo_sharing() -> None:
    d = {"x": 0}
    lock = threading.Lock()
    threads = [threading.Thread(target=add_one, args=(d, lock)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.info(f"threads: {d}")  # {'x': 2}: one dict, seen by both threads

    d = {"x": 0}
    plock = mp.Lock()
    procs = [mp.Process(target=add_one, args=(d, plock)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    log.info(f"processes: {d}")  # {'x': 0}: each child changed its own copy


# -- pipe ------------------------------------------------------------------------------------


def send_test(conn: Any) -> None:
    conn.send(["test"])
    conn.close()


def demo_pipe() -> None:
    parent_conn, child_conn = mp.Pipe()
    p = mp.Process(target=send_test, args=(parent_conn,))
    p.start()
    log.info(child_conn.recv())  # ['test']
    p.join()
    parent_conn.close()
    child_conn.close()


# -- value / array ---------------------------------------------------------------------------


def bump_and_double(num: Any, arr: Any) -> None:
    with num.get_lock():  # += is a read and a write: the lock makes it one step
        num.value += 1.0
    with arr.get_lock():
        for i in range(len(arr)):
            arr[i] *= 2


def demo_value_array() -> None:
    num = mp.Value("f", 0.0)
    arr = mp.Array("i", [1, 2, 3, 4, 5])
    p1 = mp.Process(target=bump_and_double, args=(num, arr))
    p2 = mp.Process(target=bump_and_double, args=(num, arr))
    p1.start()
    p2.start()
    p1.join()
    p2.join()
    log.info(num.value)  # 2.0
    log.info(arr[:])  # [4, 8, 12, 16, 20]
