"""The chaos suite: polyproc under a worker killer, parent kills, Ctrl+C, a soak and hostile bytes.

::

    python bench/chaos.py [--quick] [--scenario NAME ...] [--start-method M ...] [--list]
    polyproc chaos ...                                     (the same, found from a checkout)

    driver (this process)                        scenario child (a fresh interpreter)
    ─────────────────────                        ────────────────────────────────────
    for each start method, each case:
      spawn `chaos_scenarios.py CASE` ──────────►  runs the case, prints stage markers
        (own session, env tag, watchdog)          and one CHAOS_RESULT json line
      [parent-kill: SIGKILL it at a marker]
      [sigint: SIGINT its process group]
      watchdog expired? kill the group: a hang
      every process still carrying the tag
      after a grace period: a survivor (orphan)
      ─► one line of figures per case; exit 1 if any case failed

Counting executions: each task appends ``s <id>`` when it starts and ``d <id>``
when its work is done to one O_APPEND file (a single ``write`` each, so lines from
concurrent workers never interleave). A task is *exactly once* when it started
once and its result arrived; *duplicated* when it finished its work more than once
(a completed task was run again); *retried* when an interrupted run was re-run;
*failed* when it raised ``WorkerLostError`` (its worker died while it held it);
*lost* when it has no outcome at all, failed without ever starting, or the pool
broke under it. Failed is allowed (that is what the killer does); lost,
duplicated, hangs, survivors and leaked fds are failures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos_scenarios import PROGRESS, RESULT, SEGMENT, SIZES, STAGE, TAG_ENV, _status

SCENARIOS = ("killer", "parent-kill", "sigint", "soak", "leaks", "hostile")
START_METHODS = ("auto", "fork", "spawn", "forkserver")  # auto: the default
KILL_POINTS = ("pool-idle", "mid-map", "executor", "process", "manager", "shared-memory", "closing")


# -- the plan ---------------------------------------------------------------------------------


def plan(quick: bool, scenarios: Sequence[str]) -> list[dict[str, Any]]:
    """The cases of the chosen scenarios; ``quick`` is a few seconds per start method."""
    cases: list[dict[str, Any]] = []
    for name in scenarios:
        if name == "killer":
            if quick:  # each API once, the size that tears frames, retries once
                cases += [
                    {"scenario": name, "api": "pool", "size": "small", "retries": 0, "tasks": 300},
                    {"scenario": name, "api": "pool", "size": "1MiB", "retries": 0, "tasks": 30},
                    {
                        "scenario": name,
                        "api": "executor",
                        "size": "1MiB",
                        "retries": 3,
                        "tasks": 30,
                    },
                ]
                continue
            for api in ("pool", "executor"):
                for size in SIZES:
                    for retries in (0, 3):
                        n = {"small": 400, "1KiB": 400, "1MiB": 150, "4MiB": 60}[size]
                        cases.append(
                            {
                                "scenario": name,
                                "api": api,
                                "size": size,
                                "retries": retries,
                                "tasks": n,
                            }
                        )
        elif name == "parent-kill":
            for point in ("mid-map", "manager", "shared-memory") if quick else KILL_POINTS:
                cases.append({"scenario": name, "point": point})
        elif name == "sigint":
            for api in ("pool",) if quick else ("pool", "executor"):
                cases.append({"scenario": name, "api": api})
        elif name == "soak":
            cases.append({"scenario": name, "items": 100_000 if quick else 1_000_000})
        elif name == "leaks":
            cases.append({"scenario": name, "rounds": 1 if quick else 3, "quick": quick})
        elif name == "hostile":
            cases.append({"scenario": name, "connections": 40 if quick else 300})
        else:
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    return cases


def label(case: dict[str, Any]) -> str:
    s = case["scenario"]
    if s == "killer":
        return f"killer {case['api']} {case['size']} retries={case['retries']}"
    if s == "parent-kill":
        return f"parent-kill {case['point']}"
    if s == "sigint":
        return f"sigint {case['api']}"
    if s == "soak":
        return f"soak imap {case['items']:,} items"
    if s == "leaks":
        return f"leaks x{case['rounds']}"
    return f"hostile {case['connections']} connections"


#: Seconds any case may take in all, progress or not.
CAP = 600.0


def watchdog(case: dict[str, Any], quick: bool) -> float:
    """Seconds a case may go without progress (a killer case: without a result; any
    other: in all) before it counts as a hang."""
    if case["scenario"] == "soak":
        return 60.0 if quick else 300.0
    if case["scenario"] == "killer":
        return 60.0 if quick else 120.0
    if case["scenario"] == "leaks":  # a round under spawn takes ~12 s on a busy 2-core box
        return 30.0 + 25.0 * (case["rounds"] + 1)
    return 40.0


# -- what one case found ----------------------------------------------------------------------


@dataclass
class Row:
    """One line of figures: one case under one start method."""

    method: str
    case: str
    tasks: int = 0
    once: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    retried: int = 0
    hangs: int = 0
    survivors: int = 0
    fds: int = 0
    seconds: float = 0.0
    extra: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the log says of odd tasks (JSON only)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAIL: " + "; ".join(self.problems)
        counts = (
            f"tasks {self.tasks:5d} once {self.once:5d} lost {self.lost:3d} "
            f"dup {self.duplicated:3d} failed {self.failed:3d} retried {self.retried:3d}"
            if self.tasks
            else " " * 69
        )
        return (
            f"{self.method:<10} {self.case:<32} {counts} hangs {self.hangs} "
            f"survivors {self.survivors} fds {self.fds:+d} {self.seconds:5.1f}s  "
            f"{self.extra + '  ' if self.extra else ''}{verdict}"
        )


# -- the driver -------------------------------------------------------------------------------


def _tagged(tag: str) -> list[Any]:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(TAG_ENV) == tag:
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def _survivors(tag: str, grace: float) -> int:
    """Processes of a finished case still alive after ``grace`` seconds: killed, counted."""
    import psutil

    deadline = time.monotonic() + grace
    while True:
        alive = [p for p in _tagged(tag) if _status(p) not in (psutil.STATUS_ZOMBIE, None)]
        if not alive or time.monotonic() >= deadline:
            break
        psutil.wait_procs(alive, timeout=0.1)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(alive)


def run_case(method: str, case: dict[str, Any], quick: bool, seed: int) -> Row:
    """Run one case in a fresh interpreter under a watchdog; judge what it reports."""
    row = Row(method, label(case))
    tag = uuid.uuid4().hex
    src = str(Path(__import__("polyproc").__file__).resolve().parents[1])
    env = dict(
        os.environ,
        **{
            TAG_ENV: tag,
            "PYTHONPATH": os.pathsep.join(
                [src, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            ),
        },
    )
    env.pop("POLYPROC_START_METHOD", None)
    spec = json.dumps({**case, "method": method, "seed": seed})
    limit = watchdog(case, quick)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "chaos_scenarios.py"), spec],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    out_lines: list[str] = []
    err_box: list[str] = []
    drain = threading.Thread(target=lambda: err_box.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    # A hang is no progress within ``limit``: a killer case reports each result it takes
    # (``progress``), so a slow run on a loaded machine (spawn workers booting while the
    # killer fires every 50 ms) is told from a stuck one; ``CAP`` bounds any case.
    timers = [threading.Timer(limit, _hang, (proc, row)), threading.Timer(CAP, _hang, (proc, row))]
    for t in timers:
        t.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS):
                timers[0].cancel()
                timers[0] = threading.Timer(limit, _hang, (proc, row))
                timers[0].start()
                continue
            out_lines.append(line)
            if line.startswith(STAGE):
                _on_stage(case, line[len(STAGE) :].strip(), proc)
        proc.wait()
    finally:
        for t in timers:
            t.cancel()
    if "_sigint_at" in case:
        row.extra = f"exited {time.monotonic() - case.pop('_sigint_at'):.1f} s after Ctrl+C"
    drain.join(10)
    row.seconds = time.monotonic() - t0
    row.survivors = _survivors(tag, 5.0)
    segments = [ln[len(SEGMENT) :].strip() for ln in out_lines if ln.startswith(SEGMENT)]
    left = _segments_left(segments, 5.0)
    if left:
        row.problems.append(f"{len(left)} /dev/shm segments left: {', '.join(left)}")
    stderr = "".join(err_box)
    result = next(
        (json.loads(ln[len(RESULT) :]) for ln in reversed(out_lines) if ln.startswith(RESULT)), None
    )
    _judge(row, case, proc.returncode, result, stderr)
    return row


def _segments_left(names: list[str], grace: float) -> list[str]:
    """Named segments the case made that still exist ``grace`` seconds after it ended
    (after a kill -9, their tracker unlinks them when it sees its owner's pipe close)."""
    deadline = time.monotonic() + grace
    while True:
        left = [n for n in names if os.path.exists(f"/dev/shm/{n.lstrip('/')}")]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)  # polling for another process's unlink


def _hang(proc: subprocess.Popen[str], row: Row) -> None:
    row.hangs = 1
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def _on_stage(case: dict[str, Any], stage: str, proc: subprocess.Popen[str]) -> None:
    if case["scenario"] == "parent-kill" and stage == case["point"]:
        proc.kill()  # kill -9 the parent: everything it started must die with it
    elif case["scenario"] == "sigint" and stage == "running":
        case["_sigint_at"] = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl+C does


def _judge(
    row: Row, case: dict[str, Any], code: int | None, result: dict[str, Any] | None, stderr: str
) -> None:
    s = case["scenario"]
    if row.hangs:
        row.problems.append("hang (watchdog fired)")
    if row.survivors:
        row.problems.append(f"{row.survivors} processes outlived it")
    if s == "parent-kill":
        if not row.hangs and code != -signal.SIGKILL:
            row.problems.append(f"the parent was never killed (exit {code}): {_tail(stderr)}")
        return
    if s == "sigint":
        if not row.hangs and (code == 0 or "KeyboardInterrupt" not in stderr):
            row.problems.append(f"no KeyboardInterrupt exit (exit {code}): {_tail(stderr)}")
        return
    if result is None:
        if not row.hangs:
            row.problems.append(f"no result (exit {code}): {_tail(stderr)}")
        return
    row.fds = int(result.get("fds", 0))
    row.extra = str(result.get("extra", ""))
    row.notes = [str(n) for n in result.get("notes", [])]
    row.problems += list(result.get("problems", []))
    if s == "killer":
        for k in ("tasks", "once", "lost", "duplicated", "failed", "retried"):
            setattr(row, k, int(result[k]))
        if row.lost:
            row.problems.append(f"{row.lost} lost")
        if row.duplicated:
            row.problems.append(f"{row.duplicated} duplicated")
        if result.get("wrong"):
            row.problems.append(f"{result['wrong']} wrong results")
    if row.fds > 0:
        row.problems.append(f"{row.fds} fds leaked")


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def main(argv: Sequence[str] | None = None) -> int:
    """The driver: 0 when every case passed, 1 when any failed, 2 on bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if isinstance(args, int):
        return args
    cases = plan(args.quick, args.scenarios)
    if args.list:
        for method in args.methods:
            for case in cases:
                print(f"{method:<10} {label(case)}")
        return 0
    rows: list[Row] = []
    print(
        f"chaos: {len(cases)} cases x {len(args.methods)} start methods"
        f"{' (quick)' if args.quick else ''}, seed {args.seed}",
        flush=True,
    )
    for method in args.methods:
        for case in cases:
            row = run_case(method, case, args.quick, args.seed)
            rows.append(row)
            print(row.line(), flush=True)
    bad = [r for r in rows if not r.ok]
    print(f"chaos: {len(rows) - len(bad)} of {len(rows)} cases passed", flush=True)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "ok": r.ok} for r in rows], indent=1))
    return 1 if bad else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace | int:
    """The options, with scenario and start-method lists checked; an int is an exit status."""
    p = argparse.ArgumentParser(prog="chaos", description="polyproc under hostile conditions")
    p.add_argument("--quick", action="store_true", help="a few seconds per start method")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=f"repeatable or comma-separated: {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--start-method",
        action="append",
        default=[],
        metavar="M",
        help="repeatable or comma-separated (default: auto, fork, spawn, forkserver)",
    )
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    p.add_argument("--seed", type=int, default=None, help="for the killer's choices")
    p.add_argument("--json", type=Path, metavar="PATH", help="write every row here")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.scenarios = _split(args.scenario) or list(SCENARIOS)
    args.methods = _split(args.start_method) or list(START_METHODS)
    for name, allowed, what in (
        (args.scenarios, SCENARIOS, "scenario"),
        (args.methods, START_METHODS, "start method"),
    ):
        unknown = [n for n in name if n not in allowed]
        if unknown:
            print(
                f"chaos: unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}",
                file=sys.stderr,
            )
            return 2
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


if __name__ == "__main__":
    sys.exit(main())
