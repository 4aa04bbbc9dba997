"""Foundation benchmarks (issue #2): Pipe round trip, messages/s, 1 MiB send_bytes, start+join.

Each impl runs once per fresh interpreter (``polyproc bench`` starts one per run)
and returns one figure. The polyproc and stdlib impls share one workload written
against the common API (``mod.get_context(...).Process``, ``mod.Pipe``), so the
two differ only in the module handed in. Children target module-level helpers
(``_echo``, ``_produce`` ...) so spawned children can import this module by name;
it imports nothing heavy at module level for the same reason.

::

    parent ──send(1)──► child _echo ──send(1)──► parent       round trip, us (lower is better)
    parent ◄──N small objects── child _produce                 messages/s
    parent ◄──M x 1 MiB send_bytes── child _produce_bytes      MB/s
    parent: start()+join() of a no-op child, per start method  ms (lower is better)

The echo/produce children are started with ``fork`` for both libraries: the
figure is the channel, not the start method (start+join is measured separately).
"""

from __future__ import annotations

import statistics
import time
from types import ModuleType
from typing import Any

from polyproc._bench import Case

# -- helpers run in the children -----------------------------------------------------------------

SMALL_OBJECT = (12345, "item", 3.25, None)
MIB = 1 << 20


def _echo(conn: Any) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg)
    conn.close()


def _produce(conn: Any, count: int) -> None:
    conn.recv()  # "go": the parent's clock starts before this
    for _ in range(count):
        conn.send(SMALL_OBJECT)
    conn.send(None)
    conn.recv()  # the parent's ack, so we never close before it has read everything
    conn.close()


def _produce_bytes(conn: Any, count: int, size: int) -> None:
    block = b"x" * size
    conn.recv()
    for _ in range(count):
        conn.send_bytes(block)
    conn.send_bytes(b"")
    conn.recv()
    conn.close()


def _noop() -> None:
    pass


# -- workloads, written once for either module ------------------------------------------------


def _child(mod: ModuleType, target: Any, *args: Any) -> tuple[Any, Any]:
    mine, theirs = mod.Pipe()
    p = mod.get_context("fork").Process(target=target, args=(theirs, *args))
    p.start()
    theirs.close()
    return mine, p


def _pipe_round_trip(mod: ModuleType, n: int = 5000) -> float:
    conn, p = _child(mod, _echo)
    for _ in range(200):  # warm-up: first frames, page faults, caches
        conn.send(1)
        conn.recv()
    t0 = time.perf_counter()
    for _ in range(n):
        conn.send(1)
        conn.recv()
    dt = time.perf_counter() - t0
    conn.send(None)
    p.join()
    conn.close()
    return dt / n * 1e6


def _small_messages(mod: ModuleType, n: int = 50_000) -> float:
    conn, p = _child(mod, _produce, n)
    t0 = time.perf_counter()
    conn.send("go")
    got = 0
    while conn.recv() is not None:
        got += 1
    dt = time.perf_counter() - t0
    conn.send("ack")
    p.join()
    conn.close()
    assert got == n, got
    return n / dt


def _send_bytes_1mib(mod: ModuleType, n: int = 400) -> float:
    conn, p = _child(mod, _produce_bytes, n, MIB)
    t0 = time.perf_counter()
    conn.send("go")
    total = 0
    while True:
        chunk = conn.recv_bytes()
        if not chunk:
            break
        total += len(chunk)
    dt = time.perf_counter() - t0
    conn.send("ack")
    p.join()
    conn.close()
    assert total == n * MIB, total
    return total / dt / 1e6


def _start_join(mod: ModuleType, method: str, n: int, *, warm: bool = True) -> float:
    """Median ms of start()+join() of a no-op child; after one warm-up unless ``warm`` is False.

    Warm is the steady state a program lives in (a forkserver or spawn template is
    up, imports are cached); cold is the first child a fresh program starts.
    """
    ctx = mod.get_context(method)
    if warm:
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
        times.append(time.perf_counter() - t0)
        assert p.exitcode == 0, p.exitcode
    return statistics.median(times) * 1e3


def _polyproc() -> ModuleType:
    import polyproc

    return polyproc


def _stdlib() -> ModuleType:
    import multiprocessing

    return multiprocessing


# -- impls: zero-argument, one figure each --------------------------------------------------------


def pipe_round_trip_polyproc() -> float:
    return _pipe_round_trip(_polyproc())


def pipe_round_trip_stdlib() -> float:
    return _pipe_round_trip(_stdlib())


def small_messages_polyproc() -> float:
    return _small_messages(_polyproc())


def small_messages_stdlib() -> float:
    return _small_messages(_stdlib())


def send_bytes_polyproc() -> float:
    return _send_bytes_1mib(_polyproc())


def send_bytes_stdlib() -> float:
    return _send_bytes_1mib(_stdlib())


_STARTS = {"fork": 40, "spawn": 8, "forkserver": 25}


def _start_cases() -> list[Case]:
    cases = []
    for method, n in _STARTS.items():
        def ours(method: str = method, n: int = n) -> float:
            return _start_join(_polyproc(), method, n)

        def theirs(method: str = method, n: int = n) -> float:
            return _start_join(_stdlib(), method, n)

        cases.append(Case(
            f"process start+join ({method})", "ms", {"polyproc": ours, "stdlib": theirs},
            higher_is_better=False, target=2.0 if method == "spawn" else None,
            quick=method == "spawn", repeat=5 if method != "spawn" else 3,
            note=f"median of {n} after one warm-up start"
                 + ("; issue #2: spawn <= 1/2 of the stdlib's" if method == "spawn" else ""),
        ))
    for method in ("spawn", "forkserver"):
        def cold_ours(method: str = method) -> float:
            return _start_join(_polyproc(), method, 1, warm=False)

        def cold_theirs(method: str = method) -> float:
            return _start_join(_stdlib(), method, 1, warm=False)

        cases.append(Case(
            f"first process start+join ({method}, cold)", "ms",
            {"polyproc": cold_ours, "stdlib": cold_theirs}, higher_is_better=False,
            repeat=5, note="the first child of a fresh program (template/server start included)",
        ))
    return cases


CASES: list[Case] = [
    Case("Pipe round trip", "us", {"polyproc": pipe_round_trip_polyproc,
                                   "stdlib": pipe_round_trip_stdlib},
         higher_is_better=False, quick=True, extra={"absolute": "25"},
         note="send(1)/recv() ping-pong with a child; issue #2: <= 25 us (stdlib 63 us)"),
    Case("small-object messages", "msg/s", {"polyproc": small_messages_polyproc,
                                            "stdlib": small_messages_stdlib},
         target=1.5, quick=True, note="50,000 small tuples child -> parent; issue #2: >= 1.5x"),
    Case("1 MiB send_bytes", "MB/s", {"polyproc": send_bytes_polyproc,
                                      "stdlib": send_bytes_stdlib},
         target=1.0, quick=True, note="400 x 1 MiB send_bytes child -> parent; issue #2: >= 1x"),
    *_start_cases(),
]
