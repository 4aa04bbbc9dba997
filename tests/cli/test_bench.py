"""The ``polyproc bench`` harness, on a tiny fake bench directory.

The fake impls return fixed figures (or the pid of the interpreter that ran
them, to prove each run is a fresh process), so ratios, verdicts, errors,
skipped impls and the report formats are checked exactly and in seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyproc import _bench
from polyproc._bench import Case, CaseResult, Discovered
from polyproc.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"

FAKE = """
import os, time
from polyproc._bench import Case

def ten(): return 10.0
def five(): return 5.0
def boom(): raise RuntimeError("nope")
def pid(): return float(os.getpid())
def forever(): time.sleep(60); return 1.0   # stands for a workload that hangs

CASES = [
    Case("rate", "ops/s", {"polyproc": ten, "stdlib": five}, target=1.5, quick=True, repeat=2),
    Case("duration", "ms", {"polyproc": five, "stdlib": ten}, higher_is_better=False,
         target=3.0, repeat=2),
    Case("broken", "x", {"polyproc": boom, "stdlib": ten}, repeat=2),
    Case("optional", "x", {"polyproc": ten, "stdlib": five, "surely_not_a_package_xyz": ten},
         repeat=1),
    Case("fresh", "pid", {"polyproc": pid, "stdlib": pid}, repeat=3),
    Case("hangs", "x", {"polyproc": forever, "stdlib": ten}, repeat=1),
]
"""


@pytest.fixture
def bench_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "proj" / "bench"
    d.mkdir(parents=True)
    (d / "bench_fake.py").write_text(FAKE)
    (d / "bench_bad.py").write_text("raise ImportError('bad module')\n")
    (d / "helper.py").write_text("X = 1\n")  # not bench_*: never imported
    monkeypatch.delenv("POLYPROC_BENCH_DIR", raising=False)
    yield d
    for name in ("bench_fake", "bench_bad"):
        sys.modules.pop(name, None)
    while str(d) in sys.path:
        sys.path.remove(str(d))


def _case(found: list[Discovered], name: str) -> Discovered:
    return next(d for d in found if d.case.name == name)


# -- no processes ---------------------------------------------------------------------------


def test_find_bench_dir_walks_up(bench_dir: Path) -> None:
    nested = bench_dir.parent / "a" / "b"
    nested.mkdir(parents=True)
    assert _bench.find_bench_dir(nested) == bench_dir.resolve()
    assert _bench.find_bench_dir(bench_dir.parent.parent / "elsewhere") is None


def test_find_bench_dir_env_wins(
    bench_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYPROC_BENCH_DIR", str(bench_dir))
    assert _bench.find_bench_dir(tmp_path) == bench_dir.resolve()
    monkeypatch.setenv("POLYPROC_BENCH_DIR", str(tmp_path / "missing"))
    assert _bench.find_bench_dir(tmp_path) is None


def test_discover_and_select(bench_dir: Path) -> None:
    found, broken = _bench.discover(bench_dir)
    assert [d.case.name for d in found] == [
        "rate",
        "duration",
        "broken",
        "optional",
        "fresh",
        "hangs",
    ]
    assert set(broken) == {"bench_bad"} and "bad module" in broken["bench_bad"]
    assert [d.case.name for d in _bench.select(found, quick=True)] == ["rate"]
    assert [d.case.name for d in _bench.select(found, filters=["DUR", "fake:fresh"])] == [
        "duration",
        "fresh",
    ]


def test_verdicts_ratios_and_absolute_targets() -> None:
    def rate() -> float:
        return 1.0

    up = Case(
        "up", "ops/s", {"polyproc": rate, "stdlib": rate}, target=2.0, extra={"absolute": "100"}
    )
    r = CaseResult("bench_x", up, samples={"polyproc": [150.0, 300.0, 200.0], "stdlib": [90.0]})
    assert r.median("polyproc") == 200.0 and r.ratio == pytest.approx(200 / 90)
    assert r.met is True
    r.samples["stdlib"] = [120.0]
    assert r.met is False  # ratio 1.67 < 2
    down = Case(
        "down",
        "us",
        {"polyproc": rate, "stdlib": rate},
        higher_is_better=False,
        extra={"absolute": "25"},
    )
    assert CaseResult("m", down, samples={"polyproc": [20.0], "stdlib": [60.0]}).met is True
    assert CaseResult("m", down, samples={"polyproc": [30.0], "stdlib": [90.0]}).met is False
    info = Case("info", "x", {"polyproc": rate, "stdlib": rate})
    assert CaseResult("m", info, samples={"polyproc": [1.0], "stdlib": [2.0]}).met is None
    assert CaseResult("m", up, samples={"polyproc": [1.0]}).met is None  # no baseline figure
    assert math.isnan(up.ratio(0.0, 1.0))


def test_table_and_json_shapes() -> None:
    def f() -> float:
        return 1.0

    c = Case("rate", "ops/s", {"polyproc": f, "stdlib": f, "loky": f}, target=1.5)
    r = CaseResult(
        "bench_fake", c, samples={"polyproc": [10.0], "stdlib": [5.0]}, errors={}, skipped=["loky"]
    )
    table = _bench.format_table([r])
    assert "fake: rate" in table and "2.00x" in table and ">=1.5x" in table
    assert "n/a" in table and "yes" in table
    md = _bench.format_markdown([r])
    assert "| fake: rate | ops/s | 10.00 | 5.00 | 2.00x | ≥ 1.5x | yes |" in md
    data = json.loads(json.dumps(_bench.results_json([r])))
    assert data["cases"][0]["medians"] == {"polyproc": 10.0, "stdlib": 5.0}
    assert data["cases"][0]["met"] is True and data["machine"]["cpus"] == os.cpu_count()


# -- fresh interpreters ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_run_case_medians_ratio_and_errors(bench_dir: Path) -> None:
    found, _ = _bench.discover(bench_dir)
    rate = _bench.run_case(bench_dir, _case(found, "rate"))
    assert rate.samples == {"polyproc": [10.0, 10.0], "stdlib": [5.0, 5.0]}
    assert rate.ratio == 2.0 and rate.met is True
    dur = _bench.run_case(bench_dir, _case(found, "duration"), repeat=1)
    assert dur.ratio == 2.0 and dur.met is False  # 2x, target 3x
    broken = _bench.run_case(bench_dir, _case(found, "broken"))
    assert broken.errors == {"polyproc": "RuntimeError: nope"}
    assert broken.samples == {"stdlib": [10.0, 10.0]} and broken.ratio is None
    opt = _bench.run_case(bench_dir, _case(found, "optional"))
    assert opt.skipped == ["surely_not_a_package_xyz"]
    assert set(opt.samples) == {"polyproc", "stdlib"}


@pytest.mark.timeout(60)
def test_each_run_is_a_fresh_interpreter(bench_dir: Path) -> None:
    found, _ = _bench.discover(bench_dir)
    fresh = _bench.run_case(bench_dir, _case(found, "fresh"))
    pids = fresh.samples["polyproc"] + fresh.samples["stdlib"]
    assert len(pids) == 6 and len(set(pids)) == 6 and float(os.getpid()) not in pids


@pytest.mark.timeout(60)
def test_a_hanging_run_times_out(bench_dir: Path) -> None:
    value, error = _bench.run_one(bench_dir, "bench_fake", "hangs", "polyproc", timeout=1.0)
    assert value is None and error is not None and "timed out" in error


@pytest.mark.timeout(60)
def test_cli_bench_quick_json_and_plot(
    bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "r.json"
    rc = main(
        [
            "bench",
            "--bench-dir",
            str(bench_dir),
            "--quick",
            "--json",
            str(out_json),
            "--repeat",
            "1",
        ]
    )
    text = capsys.readouterr()
    assert rc == 1, text  # bench_bad does not import: reported, and the status says so
    assert "cannot import bench_bad" in text.err
    assert "fake: rate" in text.out and "2.00x" in text.out
    data = json.loads(out_json.read_text())
    assert [c["name"] for c in data["cases"]] == ["rate"]
    (bench_dir / "bench_bad.py").unlink()
    png = tmp_path / "r.png"
    rc = main(
        [
            "bench",
            "--bench-dir",
            str(bench_dir),
            "--filter",
            "rate",
            "--repeat",
            "1",
            "--plot",
            str(png),
        ]
    )
    text = capsys.readouterr()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert rc == 2 and "pip install 'polyproc[plot]'" in text.err
    else:
        assert rc == 0 and png.stat().st_size > 0


def test_cli_bench_list_and_no_match(bench_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--bench-dir", str(bench_dir), "--list"]) == 0
    assert "bench_fake:rate [polyproc, stdlib] (quick)" in capsys.readouterr().out
    assert main(["bench", "--bench-dir", str(bench_dir), "--filter", "zzz"]) == 2
    assert main(["bench", "--bench-dir", str(bench_dir.parent)]) == 2  # no bench_*.py there


def test_one_mode_usage_error() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-m", "polyproc._bench", "--one", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "usage" in proc.stderr
