"""A bad environment gets a clear message, not a traceback (issue 13, item 8).

A missing optional package is simulated in a fresh interpreter: a
``sitecustomize`` on its PYTHONPATH sets ``sys.modules[name] = None``, which makes
``import name`` raise ``ModuleNotFoundError`` as if it were not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _without(tmp_path: Path, *modules: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "src")]))
    env.pop("POLYPROC_BENCH_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "polyproc.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )


@pytest.mark.timeout(120)
def test_bench_skips_numpy_cases_with_a_note_when_numpy_is_missing(tmp_path: Path) -> None:
    out = _without(
        tmp_path,
        "numpy",
        args=[
            "bench",
            "--quick",
            "--filter",
            "64 MiB array argument",
            "--repeat",
            "1",
            "--bench-dir",
            str(ROOT / "bench"),
        ],
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ModuleNotFoundError" not in out.stdout + out.stderr
    assert "skipped, numpy is not installed" in out.stdout
    assert "skipped (an optional package is missing)" in out.stdout


FAKE = """
from polyproc._bench import Case

def needs_numpy():
    import numpy
    return 1.0

def needs_our_missing_module():
    import polyproc._no_such_module
    return 1.0

CASES = [Case("numpy", "x", {"polyproc": needs_numpy, "stdlib": needs_numpy}, repeat=1),
         Case("ours", "x", {"polyproc": needs_our_missing_module,
                            "stdlib": needs_our_missing_module}, repeat=1)]
"""


@pytest.mark.timeout(60)
def test_a_missing_polyproc_module_is_still_an_error(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench_fake.py").write_text(FAKE)
    out = _without(tmp_path, "numpy", args=["bench", "--bench-dir", str(bench)])
    assert out.returncode == 1, out.stdout + out.stderr
    assert "numpy: skipped, numpy is not installed" in out.stdout
    assert "No module named 'polyproc._no_such_module'" in out.stdout


@pytest.mark.timeout(30)
def test_bench_plot_without_matplotlib_fails_before_running_anything(tmp_path: Path) -> None:
    out = _without(
        tmp_path,
        "matplotlib",
        args=[
            "bench",
            "--quick",
            "--plot",
            str(tmp_path / "x.png"),
            "--bench-dir",
            str(ROOT / "bench"),
        ],
    )
    assert out.returncode == 2
    assert "--plot needs matplotlib" in out.stderr
    assert "running" not in out.stdout  # not one case was run first
