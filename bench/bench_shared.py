"""Shared state benchmarks: big arrays through a Pool, Queue throughput, locked Value, Lock.

Each function runs one workload in the current (fresh) interpreter and returns
its figure; the stdlib is imported lazily inside the stdlib functions. Helpers
used by children are module-level, so spawned children import this module by name.
"""

from __future__ import annotations

import time
from typing import Any

from polyproc._bench import Case

MiB = 1 << 20


# -- helpers run in children ------------------------------------------------------
def _touch(a: Any) -> int:
    return int(a[::4096].size)


def _first(a: Any) -> float:
    """What a task reads of a shared array: one element (the transfer is what is measured)."""
    return float(a.flat[0])


def _attach_first(name: str, n: int) -> float:
    """The stdlib's idiom for a shared array: attach a SharedMemory by name, wrap, read."""
    from multiprocessing import shared_memory

    import numpy as np

    shm = shared_memory.SharedMemory(name=name)
    try:
        a = np.ndarray((n,), dtype=np.float64, buffer=shm.buf)
        v = float(a[0])
        del a
        return v
    finally:
        shm.close()


def _make(nbytes: int) -> Any:
    import numpy as np

    return np.ones(nbytes // 8)


def _produce(q: Any, n: int) -> None:
    for i in range(n):
        q.put(i)
    q.put(None)


def _increment(v: Any, n: int) -> None:
    for _ in range(n):
        with v.get_lock():
            v.value += 1


# -- workloads ------------------------------------------------------------------
def _array_rate(mp: Any, nbytes: int, as_result: bool, rounds: int = 3) -> float:
    import numpy as np

    with mp.get_context("fork").Pool(1) as pool:
        pool.apply(_touch, (np.ones(8),))  # warm the worker
        best = 0.0
        arr = np.ones(nbytes // 8)
        for _ in range(rounds):
            t = time.perf_counter()
            if as_result:
                out = pool.apply(_make, (nbytes,))
                assert out.nbytes == nbytes
                del out
            else:
                pool.apply(_touch, (arr,))
            best = max(best, nbytes / (time.perf_counter() - t) / 1e9)
    return best


def _shared_call_us(mp: Any, nbytes: int, n: int = 200) -> float:
    """us per ``apply(_first, (a,))`` with ``a`` a ``shared_array`` of ``nbytes``: what
    passing it costs, which must not grow with its size (issue #14: O(1))."""
    with mp.get_context("fork").Pool(1) as pool:
        a = mp.shared_array(max(1, nbytes // 8), "float64", fill=1.0)
        for _ in range(20):
            pool.apply(_first, (a,))
        t = time.perf_counter()
        for _ in range(n):
            pool.apply(_first, (a,))
        return (time.perf_counter() - t) / n * 1e6


def _stdlib_shared_call_us(nbytes: int, n: int = 200) -> float:
    """The stdlib's nearest call: a SharedMemory block passed by name, attached per task."""
    import multiprocessing
    from multiprocessing import shared_memory

    import numpy as np

    shm = shared_memory.SharedMemory(create=True, size=nbytes)
    try:
        np.ndarray((nbytes // 8,), dtype=np.float64, buffer=shm.buf)[:] = 1.0
        with multiprocessing.get_context("fork").Pool(1) as pool:
            args = (shm.name, nbytes // 8)
            for _ in range(20):
                pool.apply(_attach_first, args)
            t = time.perf_counter()
            for _ in range(n):
                pool.apply(_attach_first, args)
            return (time.perf_counter() - t) / n * 1e6
    finally:
        shm.close()
        shm.unlink()


def _queue_rate(mp: Any, n: int = 200_000) -> float:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_produce, args=(q, n))
    p.start()
    assert q.get() == 0
    t = time.perf_counter()
    while q.get() is not None:
        pass
    dt = time.perf_counter() - t
    p.join()
    return (n - 1) / dt


def _value_rate(mp: Any, n: int = 100_000) -> float:
    ctx = mp.get_context("fork")
    v = ctx.Value("i", 0)
    ps = [ctx.Process(target=_increment, args=(v, n)) for _ in range(2)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t
    assert v.value == 2 * n, v.value
    return 2 * n / dt


def _lock_rate(mp: Any, n: int = 1_000_000) -> float:
    lock = mp.get_context("fork").Lock()
    acquire, release = lock.acquire, lock.release
    t = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return n / (time.perf_counter() - t)


def _pp() -> Any:
    import polyproc

    return polyproc


def _std() -> Any:
    import multiprocessing

    return multiprocessing


def arg64_polyproc() -> float:
    return _array_rate(_pp(), 64 * MiB, False)


def arg64_stdlib() -> float:
    return _array_rate(_std(), 64 * MiB, False)


def res64_polyproc() -> float:
    return _array_rate(_pp(), 64 * MiB, True)


def res64_stdlib() -> float:
    return _array_rate(_std(), 64 * MiB, True)


def arg512_polyproc() -> float:
    return _array_rate(_pp(), 512 * MiB, False, 2)


def arg512_stdlib() -> float:
    return _array_rate(_std(), 512 * MiB, False, 2)


def res512_polyproc() -> float:
    return _array_rate(_pp(), 512 * MiB, True, 2)


def res512_stdlib() -> float:
    return _array_rate(_std(), 512 * MiB, True, 2)


def shared512_polyproc() -> float:
    return _shared_call_us(_pp(), 512 * MiB)


def shared512_stdlib() -> float:
    return _stdlib_shared_call_us(512 * MiB)


def shared8_polyproc() -> float:
    return _shared_call_us(_pp(), 8)


def queue_polyproc() -> float:
    return _queue_rate(_pp())


def queue_stdlib() -> float:
    return _queue_rate(_std())


def value_polyproc() -> float:
    return _value_rate(_pp())


def value_stdlib() -> float:
    return _value_rate(_std())


def lock_polyproc() -> float:
    return _lock_rate(_pp())


def lock_stdlib() -> float:
    return _lock_rate(_std())


CASES: list[Case] = [
    Case(
        "pool: 64 MiB array argument",
        "GB/s",
        {"polyproc": arg64_polyproc, "stdlib": arg64_stdlib},
        target=10.0,
        quick=True,
        repeat=3,
    ),
    Case(
        "pool: 64 MiB array result",
        "GB/s",
        {"polyproc": res64_polyproc, "stdlib": res64_stdlib},
        target=10.0,
        quick=True,
        repeat=3,
    ),
    Case(
        "pool: 512 MiB array argument",
        "GB/s",
        {"polyproc": arg512_polyproc, "stdlib": arg512_stdlib},
        target=10.0,
        repeat=3,
    ),
    Case(
        "pool: 512 MiB array result",
        "GB/s",
        {"polyproc": res512_polyproc, "stdlib": res512_stdlib},
        target=10.0,
        repeat=3,
    ),
    Case(
        "pool: 512 MiB shared_array argument vs an 8 B one",
        "us",
        {"polyproc": shared512_polyproc, "floor": shared8_polyproc, "stdlib": shared512_stdlib},
        baseline="floor",
        higher_is_better=False,
        target=1 / 1.5,
        quick=True,
        repeat=3,
        note="us per apply(f, (a,)) reading one element; floor: the same call with an 8 B "
        "shared_array; stdlib: a SharedMemory passed by name and attached per task; "
        "issue #14: O(1), i.e. <= 1.5x the 8 B call",
    ),
    Case(
        "Queue 1 producer -> 1 consumer, small items",
        "items/s",
        {"polyproc": queue_polyproc, "stdlib": queue_stdlib},
        target=2.0,
        quick=True,
    ),
    Case(
        "Value += 1 under its lock, 2 processes",
        "increments/s",
        {"polyproc": value_polyproc, "stdlib": value_stdlib},
        target=1.0,
        quick=True,
    ),
    Case(
        "uncontended Lock acquire+release",
        "pairs/s",
        {"polyproc": lock_polyproc, "stdlib": lock_stdlib},
        target=1.0,
        quick=True,
        note="C extension polyproc._csem; the ctypes fallback is ~10x slower (docs/shared-state.md)",
    ),
]
