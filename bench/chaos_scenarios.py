"""The scenario side of the chaos suite: each case runs here, in a fresh interpreter.

``python bench/chaos_scenarios.py CASE_JSON`` runs one case (``bench/chaos.py``
plans them and judges what they print), prints ``CHAOS_STAGE <name>`` markers for
the driver to act on (kill -9 us, Ctrl+C us) and one ``CHAOS_RESULT <json>`` line.
Functions the pools run are module-level here, so spawned workers (which import
this file as ``__mp_main__``) find them by name.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

SIZES = {"small": 0, "1KiB": 1 << 10, "1MiB": 1 << 20, "4MiB": 4 << 20}
TAG_ENV = "POLYPROC_CHAOS_TAG"
RESULT = "CHAOS_RESULT "
STAGE = "CHAOS_STAGE "
PROGRESS = "CHAOS_PROGRESS"  # a killer case took one more result (the watchdog's heartbeat)
SEGMENT = "CHAOS_SEGMENT "  # a named /dev/shm segment the case made: gone once it ends
_INFRA = ("polyproc-fsrv", "polyproc-spare")  # shared template and spare interpreters
_SHM_PREFIXES = ("psm_", "polyproc", "pp_")


def analyse(
    outcomes: dict[int, str],
    log: str,
    tasks: int,
    blamed: dict[int, int] | None = None,
    lost: list[int] | None = None,
    early: list[int] | None = None,
) -> dict[str, int]:
    """Per-task figures from the outcomes the parent saw and the execution log.

    The log has ``s TASK PID`` (a run starts), ``d TASK PID`` (its work is done) and
    ``k PID`` (the killer is about to SIGKILL that worker). A task whose work was done
    counts as *committed* once its worker goes on to start another task: the pool's
    journal writes each result before the next task starts (a big one is sent first),
    so only the task a worker was on when it died may run again. A second run of a
    committed task is *duplicated*; a second run after a kill that found the task
    still the worker's last one is *retried* (its result died with the worker).

    ``blamed`` maps a failed task to the pid its ``WorkerLostError`` names. A failed
    task with no start line is the allowed failure (*early*: counted failed) only if
    that worker was killed between tasks: its last line before ``k PID``, or its last
    line of all (``k`` is written just before the signal, which may land after the
    task on hand wrote ``d``), is a ``d`` (it had finished its last task, so the one it
    was handed next was the running one, killed before its first line). Otherwise it
    is *lost*: the pool failed a task that never began, or blamed the wrong one. Lost
    tasks are appended to ``lost``, early ones to ``early``.
    """
    blamed = blamed or {}
    last_line: dict[int, str] = {}  # worker pid -> "s" or "d", its latest line
    killed_between: set[int] = set()  # workers killed after a "d", before the next "s"
    killed: set[int] = set()  # workers with a "k" line
    starts: Counter[int] = Counter()
    dones: Counter[int] = Counter()
    committed: set[int] = set()
    last: dict[int, int] = {}  # worker pid -> the task it last finished, not yet committed
    duplicated: set[int] = set()
    for line in log.splitlines():
        f = line.split()
        if len(f) < 2 or not all(x.isdigit() for x in f[1:]):
            continue
        if f[0] == "k":
            killed.add(int(f[1]))
            last.pop(int(f[1]), None)  # its last task may be re-run: not committed
            if last_line.get(int(f[1])) == "d":
                killed_between.add(int(f[1]))
            continue
        task = int(f[1])
        pid = int(f[2]) if len(f) > 2 else -1
        last_line[pid] = f[0]
        if f[0] == "s":
            if task in committed:
                duplicated.add(task)
            starts[task] += 1
            done = last.pop(pid, None)
            if done is not None:
                committed.add(done)
        elif f[0] == "d":
            dones[task] += 1
            if pid == -1:  # a log without pids: every finished run counts as committed
                committed.add(task)
            else:
                last[pid] = task
    killed_between |= {pid for pid in killed if last_line.get(pid) == "d"}
    counts = {
        "tasks": tasks,
        "once": 0,
        "lost": 0,
        "duplicated": 0,
        "failed": 0,
        "retried": 0,
        "wrong": 0,
        "early": 0,
    }
    for i in range(tasks):
        out = outcomes.get(i)
        if i in duplicated:
            counts["duplicated"] += 1
        elif starts[i] >= 2:
            counts["retried"] += 1
        if out == "ok":
            counts["once"] += starts[i] == 1
        elif out == "failed" and starts[i] >= 1:
            counts["failed"] += 1
        elif out == "failed" and blamed.get(i, -1) in killed_between:
            killed_between.discard(blamed[i])  # one kill excuses one task
            counts["failed"] += 1  # killed after the call began, before its first line
            counts["early"] += 1
            if early is not None:
                early.append(i)
        elif out == "wrong":
            counts["wrong"] += 1
        else:  # no outcome, an error that is not "its worker died", or failed unstarted
            counts["lost"] += 1
            if lost is not None:
                lost.append(i)
    return counts


def stage(name: str) -> None:
    print(STAGE + name, flush=True)


def child_main(case: dict[str, Any]) -> int:
    """Run one case here; print its result line. The driver judges it."""
    import polyproc

    polyproc.set_start_method(case["method"], force=True)
    random.seed(case["seed"])
    runner = {
        "killer": child_killer,
        "parent-kill": child_parent_kill,
        "sigint": child_sigint,
        "soak": child_soak,
        "leaks": child_leaks,
        "hostile": child_hostile,
    }
    result = runner[case["scenario"]](case)
    print(RESULT + json.dumps(result), flush=True)
    return 0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


_LOG_FD: dict[str, int] = {}


def chaos_task(arg: tuple[int, int, str]) -> tuple[int, bytes | int]:
    """One task: log the start, work ~1 ms, log the end, return a result of the case's size."""
    i, size, path = arg
    fd = _LOG_FD.get(path)
    if fd is None:
        fd = _LOG_FD[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"s %d %d\n" % (i, os.getpid()))
    time.sleep(0.001)  # stands for work, so the killer finds tasks in flight
    payload: bytes | int = b"\x01" * size if size else i
    os.write(fd, b"d %d %d\n" % (i, os.getpid()))
    return i, payload


def _workers(path: str) -> list[int]:
    """Our live pool workers that have started a task (their pid is in the log).

    Only those: a worker still booting (a spawned one takes ~100 ms) is not where
    work is lost, and a pool rightly gives up on workers that die while starting.
    """
    import psutil

    with open(path, "rb") as fh:
        working = {int(f[2]) for f in (ln.split() for ln in fh) if len(f) == 3 and f[0] == b"s"}
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid in working and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


def _note_kill(path: str, pid: int) -> None:
    """``k PID`` in the log, before the kill: what the worker finished last may re-run."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"k %d\n" % pid)
    finally:
        os.close(fd)


def _killer(stop: threading.Event, kills: list[int], path: str) -> None:
    while not stop.wait(random.uniform(0.025, 0.075)):  # ~every 50 ms
        victims = _workers(path)
        if victims:
            victim = random.choice(victims)
            _note_kill(path, victim)
            try:
                os.kill(victim, signal.SIGKILL)
                kills[0] += 1
            except ProcessLookupError:
                pass


def _warm(polyproc: Any) -> None:
    """Start what persists for the process's life (forkserver, spares) before counting fds."""
    with polyproc.Pool(2) as pool:
        pool.map(abs, range(4))
    gc.collect()


def child_killer(case: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    import polyproc
    from polyproc.errors import WorkerLostError
    from polyproc.futures import ProcessPoolExecutor

    _warm(polyproc)
    before = fd_count()
    n, size = case["tasks"], SIZES[case["size"]]
    fd, path = tempfile.mkstemp(prefix="chaos-", suffix=".log")
    os.close(fd)
    args = [(i, size, path) for i in range(n)]
    outcomes: dict[int, str] = {}
    blamed: dict[int, int] = {}  # failed task -> the pid its WorkerLostError names
    errors: dict[int, str] = {}
    problems: list[str] = []
    stop, kills = threading.Event(), [0]

    def failed(i: int, exc: BaseException) -> None:
        print(PROGRESS, flush=True)
        outcomes[i] = "failed"
        errors[i] = str(exc)
        m = re.search(r"\(pid (\d+)\)", str(exc))
        if m:
            blamed[i] = int(m.group(1))

    def judge(i: int, value: Any) -> None:
        print(PROGRESS, flush=True)
        j, payload = value
        good = j == i and (payload == i if not size else len(payload) == size)
        outcomes[i] = "ok" if good else "wrong"

    killer = threading.Thread(target=_killer, args=(stop, kills, path), daemon=True)
    try:
        if case["api"] == "pool":
            with polyproc.Pool(2, retries=case["retries"]) as pool:
                killer.start()
                it = pool.imap(chaos_task, args)
                for i in range(n):
                    try:
                        judge(i, next(it))
                    except WorkerLostError as exc:
                        failed(i, exc)
                    except StopIteration:
                        problems.append(f"imap ended after {i} of {n} results")
                        break
                    except Exception as exc:  # noqa: BLE001 - the pool broke: report it
                        problems.append(f"task {i}: {type(exc).__name__}: {exc}"[:200])
                        break
                stop.set()
        else:
            with ProcessPoolExecutor(2, retries=case["retries"]) as ex:
                killer.start()
                futures = [ex.submit(chaos_task, a) for a in args]
                for i, f in enumerate(futures):
                    try:
                        judge(i, f.result())
                    except WorkerLostError as exc:
                        failed(i, exc)
                    except Exception as exc:  # noqa: BLE001
                        if len(problems) < 1:
                            problems.append(f"task {i}: {type(exc).__name__}: {exc}"[:200])
                stop.set()
    finally:
        stop.set()
        if killer.is_alive():
            killer.join(10)
    with open(path) as fh:
        log = fh.read()
    os.unlink(path)
    lost: list[int] = []
    early: list[int] = []
    figures = analyse(outcomes, log, n, blamed, lost, early)
    gc.collect()
    after = fd_count()
    extra = f"kills {kills[0]}"
    if figures["early"]:
        extra += f", {figures['early']} failed before their first line"
    if figures["lost"]:
        # What the log says of each lost task, for whoever reads the figures.
        extra += "; lost: " + " | ".join(_story(i, outcomes, blamed, log) for i in lost[:3])
    notes = [
        _story(i, outcomes, blamed, log) + f" ({errors.get(i, '')[:160]})" for i in lost + early
    ]
    return {
        **figures,
        "fds": after - before,
        "problems": problems,
        "extra": extra,
        "notes": notes[:20],
    }


def _story(i: int, outcomes: dict[int, str], blamed: dict[int, int], log: str) -> str:
    pid = blamed.get(i)
    lines = log.splitlines()
    mine = [ln for ln in lines if ln.split()[1:2] == [str(i)]]
    if pid is not None:
        # The blamed worker's last three lines and its kill.
        tail = [ln for ln in lines if ln.split()[-1:] == [str(pid)]][-4:]
        mine += [f"pid {pid}: " + ", ".join(tail)]
    return f"task {i} {outcomes.get(i)}: " + "; ".join(mine)


def _sleepy(x: float) -> float:
    time.sleep(x)  # stands for work the parent is killed in the middle of
    return x


def _sleeper() -> None:
    time.sleep(60)


def child_parent_kill(case: dict[str, Any]) -> dict[str, Any]:
    import polyproc
    from polyproc.futures import ProcessPoolExecutor

    point = case["point"]
    if point in ("pool-idle", "mid-map", "closing"):
        pool = polyproc.Pool(2)
        pool.map(abs, range(4))
        if point == "pool-idle":
            stage(point)
        elif point == "mid-map":
            it = pool.imap(_sleepy, [0.01] + [0.5] * 20)
            next(it)
            stage(point)
            list(it)
        else:
            pool.map_async(_sleepy, [0.5] * 20)
            pool.close()
            stage(point)
            pool.join()
    elif point == "executor":
        with ProcessPoolExecutor(2) as ex:
            futures = [ex.submit(_sleepy, 0.5) for _ in range(20)]
            stage(point)
            for f in futures:
                f.result()
    elif point == "process":
        procs = [polyproc.Process(target=_sleeper) for _ in range(3)]
        for p in procs:
            p.start()
        stage(point)
        for p in procs:
            p.join()
    elif point == "shared-memory":
        from polyproc.shared_memory import SharedMemory

        shm = SharedMemory(create=True, size=1 << 20)  # named: /dev/shm, until unlinked
        shm.buf[:3] = b"abc"
        print(SEGMENT + shm.name, flush=True)
        with polyproc.Pool(2) as pool:
            it = pool.imap(_sleepy, [0.01] + [0.5] * 20)
            next(it)
            stage(point)  # killed here: the segment's tracker must unlink it
            list(it)
    elif point == "manager":
        m = polyproc.Manager()
        d = m.dict()
        d["x"] = 1
        stage(point)
        while True:
            d["x"] += 1
    time.sleep(60)  # never reached in a passing run: the driver kills us at the stage
    return {"problems": ["the driver did not kill the parent"]}


def child_sigint(case: dict[str, Any]) -> dict[str, Any]:
    import polyproc
    from polyproc.futures import ProcessPoolExecutor

    if case["api"] == "pool":
        with polyproc.Pool(2) as pool:
            it = pool.imap(_sleepy, [0.01] + [0.3] * 100)
            next(it)
            stage("running")
            list(it)
    else:
        with ProcessPoolExecutor(2) as ex:
            first = ex.submit(_sleepy, 0.01)
            rest = [ex.submit(_sleepy, 0.3) for _ in range(100)]
            first.result()
            stage("running")
            for f in rest:
                f.result()
    return {"problems": ["no KeyboardInterrupt reached the pool's user"]}


def _square(x: int) -> int:
    return x * x


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: Items imap may pull ahead of a consumer: the scheduler's credit, 2 x workers x window x
#: batch (batches of tiny tasks reach ~8,000 items), is ~50,000 for two workers.
AHEAD_LIMIT = 100_000


def child_soak(case: dict[str, Any]) -> dict[str, Any]:
    import polyproc

    n = case["items"]
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield i

    problems: list[str] = []
    with polyproc.Pool(2) as pool:
        pool.map(abs, range(4))
        base = peak = _rss()
        ahead = 0
        t0 = time.monotonic()
        for got, value in enumerate(pool.imap(_square, numbers())):
            if value != got * got:
                problems.append(f"item {got}: {value}")
                break
            if got % 1000 == 0:
                ahead = max(ahead, pulled - got)
                peak = max(peak, _rss())
                if got % 100_000 == 1000:
                    # The slow consumer: a pause long enough for an unbounded producer to
                    # run ~50,000 items ahead (the pool does ~100k items/s here).
                    time.sleep(0.5)
                    ahead = max(ahead, pulled - got)
        seconds = time.monotonic() - t0
    growth = (peak - base) / 2**20
    if growth > 64:
        problems.append(f"RSS grew {growth:.0f} MiB")
    if ahead > AHEAD_LIMIT:
        problems.append(f"{ahead} items pulled ahead of the consumer (limit {AHEAD_LIMIT})")
    return {
        "problems": problems,
        "extra": f"rss +{growth:.1f} MiB, ahead <= {ahead}, {n / seconds / 1e3:.0f}k items/s",
    }


def _counts() -> dict[str, int]:
    import psutil

    me = psutil.Process()
    kids = me.children(recursive=True)
    zombies = sum(1 for p in kids if _status(p) == psutil.STATUS_ZOMBIE)
    alive = sum(
        1 for p in kids if _status(p) not in (psutil.STATUS_ZOMBIE, None) and _name(p) not in _INFRA
    )
    try:
        shm = sum(1 for e in os.listdir("/dev/shm") if e.startswith(_SHM_PREFIXES))
    except OSError:
        shm = 0
    return {
        "fds": fd_count(),
        "threads": threading.active_count(),
        "zombies": zombies,
        "children": alive,
        "shm": shm,
    }


def _status(p: Any) -> str | None:
    try:
        return str(p.status())
    except Exception:  # noqa: BLE001 - gone
        return None


def _name(p: Any) -> str:
    try:
        return str(p.name())
    except Exception:  # noqa: BLE001
        return ""


def _workload(polyproc: Any, quick: bool) -> None:
    from polyproc.futures import ProcessPoolExecutor
    from polyproc.shared_memory import SharedMemory

    with polyproc.Pool(2) as pool:
        pool.map(_square, range(100))
    pool = polyproc.Pool(2)
    pool.map(_square, range(10))
    pool.close()
    pool.join()
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_square, range(50)))
    for _ in range(2 if quick else 5):  # started, joined, dropped without close()
        p = polyproc.Process(target=_square, args=(1,))
        p.start()
        p.join()
    m = polyproc.Manager()
    d = m.dict()
    d["k"] = [1, 2]
    del d
    m.shutdown()
    shm = SharedMemory(create=True, size=1 << 20)
    shm.buf[:3] = b"abc"
    shm.close()
    shm.unlink()
    v = polyproc.Value("i", 1)
    a = polyproc.Array("d", 100)
    q = polyproc.Queue()
    q.put(v.value + len(a))
    q.get(timeout=10)
    q.close()
    q.join_thread()
    del v, a, q
    gc.collect()


def child_leaks(case: dict[str, Any]) -> dict[str, Any]:
    import polyproc

    _workload(polyproc, case["quick"])  # the first round starts what lives as long as we do
    before = _counts()
    for _ in range(case["rounds"]):
        _workload(polyproc, case["quick"])
    deadline = time.monotonic() + 5.0
    while True:  # helper threads and children finish on their own; give them a moment
        after = _counts()
        if all(after[k] <= before[k] for k in before) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    delta = {k: after[k] - before[k] for k in before}
    problems = [f"{k} {v:+d}" for k, v in delta.items() if v > 0]
    return {
        "fds": delta["fds"],
        "problems": problems,
        "extra": " ".join(f"{k} {v:+d}" for k, v in delta.items()),
    }


def child_hostile(case: dict[str, Any]) -> dict[str, Any]:
    import polyproc
    from polyproc.errors import AuthenticationError
    from polyproc.managers import SyncManager

    rng = random.Random(case["seed"])
    m = polyproc.Manager()
    address = m.address
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    problems: list[str] = []
    attacks = 0
    for i in range(case["connections"]):
        s = socket.socket(family)
        try:
            s.connect(address)  # blocking: a full backlog waits for the server to accept
            s.settimeout(5)
            kind = i % 4
            if kind == 0:
                s.sendall(rng.randbytes(rng.randrange(1, 4096)))  # random garbage
            elif kind == 1:
                s.sendall(b"\x10\x00\x00\x00\x01partial")  # a truncated frame, then hang up
            elif kind == 2:
                s.sendall(b"\xff\xff\xff\xff\x01" + b"x" * 64)  # a 4 GiB length prefix
            # kind 3: connect and say nothing
            attacks += 1
        except OSError as exc:
            problems.append(f"attack {i}: {exc}")
            break
        finally:
            s.close()
    try:
        wrong = SyncManager(address=address, authkey=b"not the key")
        wrong.connect()
        problems.append("a client with the wrong authkey was let in")
    except AuthenticationError:
        attacks += 1
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(m.dict(a=1)["a"]), daemon=True)
    t.start()  # a new thread: a new connection, after all of the above
    t.join(20)
    if box != [1]:
        problems.append(f"a real client was not served: {box}")
    if not m._process.is_alive():
        problems.append("the server died")
    m.shutdown()
    return {"problems": problems, "extra": f"{attacks} hostile connections, server survived"}


if __name__ == "__main__":
    sys.exit(child_main(json.loads(sys.argv[1])))
