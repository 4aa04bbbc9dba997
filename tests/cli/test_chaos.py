"""The chaos suite's own tool: planning, counting, judging, and one real scenario end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import chaos  # noqa: E402 - bench/ is not a package
from chaos_scenarios import analyse  # noqa: E402


def _run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_analyse_counts_each_kind_of_outcome() -> None:
    log = "\n".join(
        [
            "s 0 11",
            "d 0",  # once
            "s 1 11",
            "d 1",
            "s 1 12",
            "d 1",  # a completed task run again: duplicated
            "s 2 11",
            "s 2 12",
            "d 2",  # interrupted, then retried: fine
            "s 3 11",  # its worker died while it ran: failed
            # 4 never started but failed: lost (it should have been re-queued)
            "s 5 12",
            "d 5",  # no outcome at all: lost
        ]
    )
    outcomes = {0: "ok", 1: "ok", 2: "ok", 3: "failed", 4: "failed"}
    f = analyse(outcomes, log, 6)
    assert f == {
        "tasks": 6,
        "once": 1,
        "duplicated": 1,
        "retried": 1,
        "failed": 1,
        "lost": 2,
        "wrong": 0,
        "early": 0,
    }


def test_a_task_failed_before_its_first_line_counts_only_if_its_worker_died_between_tasks() -> None:
    # Worker 11 finished task 0 and was killed before task 1 wrote its start line: the pool
    # had called task 1 (the journal's STARTED word), so failing it is the allowed failure.
    # Worker 12 was killed in the middle of task 2, yet task 3 is blamed on it: lost.
    # Worker 13 is blamed for task 4 but was never killed: lost.
    log = "\n".join(
        ["s 0 11", "d 0 11", "k 11", "s 2 12", "k 12", "s 5 13", "d 5 13", "s 6 13", "d 6 13"]
    )
    outcomes = {0: "ok", 1: "failed", 2: "failed", 3: "failed", 4: "failed", 5: "ok", 6: "ok"}
    lost: list[int] = []
    f = analyse(outcomes, log, 7, {1: 11, 2: 12, 3: 12, 4: 13}, lost)
    assert (f["failed"], f["early"], f["lost"], f["once"]) == (2, 1, 2, 3)
    assert lost == [3, 4]
    # One kill excuses one task: a second unlogged failure on worker 11 is lost.
    f = analyse({**outcomes, 3: "failed"}, log, 7, {1: 11, 2: 12, 3: 11, 4: 11})
    assert (f["early"], f["lost"]) == (1, 2)


def test_analyse_tells_a_rerun_after_a_kill_from_a_duplicate() -> None:
    # Task 0 finished on 11, which was killed before starting anything else: its result
    # may have died in flight, so a second run is a retry. Task 1 finished on 12, which
    # then started task 2: task 1 was committed, and running it again is a duplicate.
    log = "\n".join(
        [
            "s 0 11",
            "d 0 11",
            "k 11",
            "s 0 13",
            "d 0 13",
            "s 1 12",
            "d 1 12",
            "s 2 12",
            "d 2 12",
            "s 1 13",
            "d 1 13",
        ]
    )
    f = analyse({0: "ok", 1: "ok", 2: "ok"}, log, 3)
    assert (f["retried"], f["duplicated"], f["once"]) == (1, 1, 1)


def test_judge_fails_a_row_for_lost_duplicated_hangs_survivors_and_fds() -> None:
    case = {"scenario": "killer", "api": "pool", "size": "small", "retries": 0, "tasks": 3}
    row = chaos.Row("fork", chaos.label(case), survivors=1)
    result = {
        "tasks": 3,
        "once": 1,
        "lost": 1,
        "duplicated": 1,
        "failed": 0,
        "retried": 0,
        "fds": 2,
        "problems": [],
    }
    chaos._judge(row, case, 0, result, "")
    assert not row.ok
    text = row.line()
    for part in ("1 lost", "1 duplicated", "2 fds leaked", "1 processes outlived it", "FAIL"):
        assert part in text
    good = chaos.Row("fork", "x")
    chaos._judge(good, {"scenario": "hostile"}, 0, {"problems": []}, "")
    assert good.ok and good.line().endswith("ok")


def test_scenario_and_start_method_selection() -> None:
    out = _run("--list", "--quick", "--scenario", "killer,soak", "--start-method", "fork")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(ln.startswith("fork ") for ln in lines)
    assert {ln.split()[1] for ln in lines} == {"killer", "soak"}
    both = _run(
        "--list",
        "--quick",
        "--scenario",
        "leaks",
        "--start-method",
        "spawn",
        "--start-method",
        "forkserver",
    )
    assert [ln.split()[0] for ln in both.stdout.splitlines()] == ["spawn", "forkserver"]
    full = chaos.plan(False, ["killer"])
    assert {(c["api"], c["size"], c["retries"]) for c in full} == {
        (api, size, r) for api in ("pool", "executor") for size in chaos.SIZES for r in (0, 3)
    }


@pytest.mark.parametrize("bad", [["--scenario", "nope"], ["--start-method", "thread"]])
def test_an_unknown_name_is_a_usage_error(bad: list[str]) -> None:
    out = _run("--list", *bad)
    assert out.returncode == 2
    assert "unknown" in out.stderr and "choose from" in out.stderr


@pytest.mark.timeout(120)
def test_one_tiny_scenario_runs_end_to_end(tmp_path: Path) -> None:
    report = tmp_path / "rows.json"
    out = _run(
        "--quick",
        "--scenario",
        "hostile,parent-kill",
        "--start-method",
        "fork",
        "--json",
        str(report),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("fork ")]
    assert len(rows) == 4 and all(ln.endswith("ok") for ln in rows), out.stdout
    assert "survivors 0" in rows[1]  # the parent was killed -9; nothing it started lived on
    assert "4 of 4 cases passed" in out.stdout
    assert report.read_text().count('"ok": true') == 4


def test_polyproc_chaos_runs_the_checkouts_suite(capsys: pytest.CaptureFixture[str]) -> None:
    from polyproc.cli import main

    assert (
        main(["chaos", "--list", "--quick", "--scenario", "sigint", "--start-method", "fork"]) == 0
    )
    assert capsys.readouterr().out.split() == ["fork", "sigint", "pool"]


def test_survivors_are_found_by_their_tag_and_killed() -> None:
    tag = "test-" + os.urandom(6).hex()
    env = dict(os.environ, **{chaos.TAG_ENV: tag})
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert chaos._survivors(tag, 0.2) == 1
        assert orphan.wait(10) == -9  # the suite killed it
        assert chaos._survivors(tag, 0.2) == 0
    finally:
        orphan.kill()
        orphan.wait()


def test_a_segment_left_after_a_case_is_a_failure() -> None:
    """A case names its named segments (``CHAOS_SEGMENT``); one still in /dev/shm after
    the grace (its owner was killed -9 and nothing unlinked it) fails the row."""
    name = "psm_chaos_" + os.urandom(6).hex()
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        assert chaos._segments_left([name, "/" + name], 0.1) == [name, "/" + name]
    finally:
        os.unlink(f"/dev/shm/{name}")
    assert chaos._segments_left([name], 0.1) == []


def test_a_kill_that_lands_after_the_task_on_hand_finished_counts_as_between_tasks() -> None:
    # ``k`` is written just before the signal: worker 14 finished task 0 after it (the
    # signal landed late), so it died between tasks, and task 1, failed without a start
    # line, was the one it had been handed: allowed. Worker 12 was killed mid-task 2 (its
    # last line is a start): task 3 blamed on it is lost, as before.
    log = "\n".join(["s 0 14", "k 14", "d 0 14", "s 2 12", "k 12"])
    outcomes = {0: "ok", 1: "failed", 2: "failed", 3: "failed"}
    lost: list[int] = []
    f = analyse(outcomes, log, 4, {1: 14, 2: 12, 3: 12}, lost)
    assert (f["failed"], f["early"], f["lost"]) == (2, 1, 1)
    assert lost == [3]
