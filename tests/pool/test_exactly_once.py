"""Exactly once: under a random worker killer, no finished task runs again and none is lost.

Each task appends its index to a file opened ``O_APPEND`` (one ``write``: never torn, never
interleaved), so the file counts executions. A killer thread SIGKILLs a random worker every
hundred results during a map of a few thousand short tasks. Afterwards:

* every task has an outcome: its value, or ``WorkerLostError`` (it was running at a kill);
* a task with a value ran exactly once (``retries=0``), or at most once per kill it was
  running at, plus one (``retries=``);
* a lost task ran at most once (zero if the kill came before it wrote);
* runs beyond the first, over all tasks, are at most the number of kills.

Without the commit journal, a batch in flight at a kill was re-run whole: tens of tasks ran
twice in such a run.

A failure (or a wait that timed out) reports what the run did (``_diagnosed``): each kill
(after which result, which pid, when), each task that ran twice or was lost (how often, in
which pids, its outcome), and the pids that ran tasks but were never killed.
"""

from __future__ import annotations

import collections
import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import enginehelpers as eh
import psutil
import pytest

from polyproc import futures
from polyproc._pool.engine import WORKER_PREFIX
from polyproc.errors import WorkerLostError
from polyproc.pool import Pool


class Killer:
    """SIGKILLs a random worker of this test's pool each ``every`` results the consumer takes.

    Paced by progress, not by the clock: on a loaded machine a spawn worker may take seconds
    to start, and a clock-paced killer would then kill every worker before it did anything.
    """

    def __init__(self, start_method: str, every: int = 97, seed: int = 1) -> None:
        self.comm = WORKER_PREFIX[start_method][:15]  # the kernel's name: 15 chars
        self.every = every
        self.rng = random.Random(seed)
        self.kills = 0
        self.seen = 0
        self.t0 = time.monotonic()
        #: (results taken, pid killed, seconds since start, workers alive then) per kill
        self.log: list[tuple[int, int, float, list[int]]] = []

    def took_one(self) -> None:
        self.seen += 1
        if self.seen % self.every:
            return
        try:
            workers = [
                p
                for p in psutil.Process().children(recursive=True)
                if p.name().startswith(self.comm)
            ]
        except psutil.Error:
            return
        if workers:
            victim = self.rng.choice(workers)
            try:
                victim.kill()  # psutil checks the pid was not reused
                self.kills += 1
            except psutil.Error:
                return
            alive = sorted(p.pid for p in workers)
            self.log.append((self.seen, victim.pid, time.monotonic() - self.t0, alive))


def _lines(path: Any) -> list[list[int]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [[int(w) for w in line.split()] for line in text.splitlines() if line]


def _executions(path: Any) -> collections.Counter[int]:
    """How many times each task ran (the first number of each line the tasks wrote)."""
    return collections.Counter(words[0] for words in _lines(path))


def _report(outcomes: list[Any], path: Any, killer: Killer, n: int) -> str:
    """What a failed run did: enough to tell a task run twice from a test that raced."""
    lines = _lines(path)
    pids: dict[int, list[int]] = collections.defaultdict(list)
    order: dict[int, list[int]] = collections.defaultdict(list)  # positions in the file
    for k, (x, *pid) in enumerate(lines):
        pids[x].extend(pid)
        order[x].append(k)
    runs = collections.Counter(words[0] for words in lines)
    out = [
        f"{len(outcomes)} of {n} outcomes taken, {len(lines)} executions recorded, "
        f"{killer.kills} kills after {time.monotonic() - killer.t0:.1f} s",
        "kills (after result #, pid, at s, workers alive then):",
    ]
    out += [f"  #{seen} pid {pid} at {t:.2f}s alive {alive}" for seen, pid, t, alive in killer.log]
    killed = {pid for _, pid, _, _ in killer.log}
    twice = sorted(x for x, c in runs.items() if c > 1)
    lost = [i for i, v in enumerate(outcomes) if isinstance(v, BaseException)]
    for label, tasks in (("ran more than once", twice), ("lost", lost)):
        out.append(f"{label}: {len(tasks)}")
        for x in tasks[:40]:
            got = repr(outcomes[x])[:160] if x < len(outcomes) else "(no outcome taken)"
            out.append(
                f"  task {x}: {runs[x]} runs in pids {pids[x]} at file lines {order[x]}; {got}"
            )
    wrong = [
        (i, v)
        for i, v in enumerate(outcomes)
        if not isinstance(v, BaseException) and v != _expected(i)
    ]
    out.append(f"wrong values: {wrong[:20]}")
    never = sorted({p for ps in pids.values() for p in ps} - killed)
    out.append(f"pids that ran tasks and were not killed by the test: {never}")
    return "\n".join(out)


@contextlib.contextmanager
def _diagnosed(outcomes: list[Any], path: Any, killer: Killer, n: int) -> Iterator[None]:
    """Re-raise a failed check or a timed-out wait with ``_report`` in its message."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc!r}\n{_report(outcomes, path, killer, n)}") from exc


def _expected(x: int) -> Any:
    return {0: x, 1: float(x), 2: str(x), 3: (x, "t")}[x % 4]


def _check(outcomes: list[Any], runs: collections.Counter[int], kills: int, retries: int) -> None:
    n = len(outcomes)
    assert set(runs) <= set(range(n))
    lost = [i for i, v in enumerate(outcomes) if isinstance(v, BaseException)]
    for i in lost:
        assert isinstance(outcomes[i], WorkerLostError), repr(outcomes[i])
        assert runs[i] <= retries + 1, (i, runs[i])
    for i, v in enumerate(outcomes):
        if i not in lost:
            assert v == _expected(i), (i, v)
            assert 1 <= runs[i] <= retries + 1, (i, runs[i])
    extra = sum(max(0, c - 1) for c in runs.values())
    assert extra <= kills, (extra, kills)
    if retries == 0:
        assert extra == 0, [i for i, c in runs.items() if c > 1]
    assert len(lost) <= kills


N = 2000


@pytest.mark.timeout(180)
@pytest.mark.parametrize("retries", [0, 2])
def test_pool_imap_under_a_killer_runs_each_task_once(
    start_method: str, ctx: Any, tmp_path: Any, retries: int
) -> None:
    path = tmp_path / "runs"
    outcomes: list[Any] = []
    killer = Killer(start_method)
    with _diagnosed(outcomes, path, killer, N):
        with Pool(2, context=ctx, retries=retries) as pool:
            it = pool.imap(eh.record_slowly_star, [(i, str(path), 0.0005) for i in range(N)])
            while True:
                try:
                    outcomes.append(next(it))
                except StopIteration:
                    break
                except WorkerLostError as exc:
                    outcomes.append(exc)
                killer.took_one()
            kills = killer.kills
        assert len(outcomes) == N
        assert kills >= 3, kills  # the killer did its job
        _check(outcomes, _executions(path), kills, retries)


@pytest.mark.timeout(180)
def test_executor_submit_under_a_killer_runs_each_task_once(
    start_method: str, ctx: Any, tmp_path: Any
) -> None:
    path = tmp_path / "runs"
    outcomes: list[Any] = []
    killer = Killer(start_method)
    with _diagnosed(outcomes, path, killer, N):
        with futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            futs = [ex.submit(eh.record_slowly, i, str(path), 0.0005) for i in range(N)]
            for f in futs:
                exc = f.exception(timeout=120)
                outcomes.append(exc if exc is not None else f.result())
                killer.took_one()
            kills = killer.kills
        assert kills >= 3, kills
        _check(outcomes, _executions(path), kills, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "slot, nth, chunksize",
    [(5, 1, 10), (0, 2, 5)],
    ids=["after-task-4-before-task-5", "between-batches"],
)
def test_a_worker_killed_between_tasks_loses_nothing(
    ctx: Any, tmp_path: Any, slot: int, nth: int, chunksize: int
) -> None:
    """SIGKILL after a task committed and before the next was called (an exact point: the
    store of the journal's STARTED word, trapped by the initializer). The next task never
    began, so it is re-queued, not failed, even with ``retries=0``; none runs twice.
    (Without STARTED the parent took task 5 for the running one: WorkerLostError.)"""
    path, marker = tmp_path / "runs", tmp_path / "killed"
    with Pool(
        1, context=ctx, initializer=eh.kill_between_tasks, initargs=(slot, nth, str(marker))
    ) as pool:
        out = pool.starmap(eh.record, [(i, str(path)) for i in range(10)], chunksize=chunksize)
        pids = set(pool.map(eh.pid_of, range(2)))
    assert marker.exists()  # the trap fired: a worker died between two tasks
    assert out == list(range(10))
    assert _executions(path) == collections.Counter(range(10))  # each exactly once
    assert len(pids) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["float", "text"])
def test_a_worker_killed_between_a_results_word_and_its_tag_delivers_no_wrong_value(
    ctx: Any, tmp_path: Any, kind: str
) -> None:
    """A float result (committed in C) or a text one (a marshal blob, committed in Python)
    stores a word in its journal slot, the float's bits or the blob's end offset, and a tag.
    The worker dies between the two (the task made the tags' page read-only: the tag's
    store faults). Tag 0 and a word read as a committed int, and that word was delivered
    as the task's result (an imap under a killer yielded 40, an offset, for task 111);
    now the slot is tagged PENDING first: the task was running, and runs again."""
    marker = tmp_path / "faulted"
    with Pool(1, context=ctx, retries=1) as pool:
        args = [(i, kind, str(marker)) for i in range(6)]
        out = pool.map(eh.fault_committing, args, chunksize=6)
        stats = pool.statistics()
    assert marker.exists()  # the trap fired: a worker died committing task 3
    assert out == [float(i) if kind == "float" else str(i) for i in range(6)]
    assert stats.retried == 1
