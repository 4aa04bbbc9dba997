"""``polyproc tour``: every section runs and exits 0, under every start method.

Each section runs in its own interpreter (``python -m polyproc tour SECTION``)
with a timeout, so one broken or hanging section fails its own test and nothing
else; the output is checked for what the tutorial says it prints.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyproc._tour import SECTIONS, tour_main

SRC = Path(__file__).resolve().parents[2] / "src"

#: What each section must print (the tutorial's output where it has one).
EXPECTED: dict[str, tuple[str, ...]] = {
    "process": (
        "Process-1: start",
        "Process-1: 3",
        "renamed worker2: start",
        "renamed worker2: end",
        "with 0",
    ),
    "pool": (
        "MainProcess: executed",
        "raised TimeoutError",
        "MainProcess: executed apply",
        "MainProcess: [200, 400]",
        "map_async returned at once",
        "imap yielded 6",
    ),
    "sharing": ("MainProcess: threads: {'x': 2}", "MainProcess: processes: {'x': 0}"),
    "pipe": ("MainProcess: ['test']",),
    "value-array": ("MainProcess: 2.0", "MainProcess: [4, 8, 12, 16, 20]"),
    "manager": ("MainProcess: [1, 2, 3]", "MainProcess: {'x': 2}", "MainProcess: Namespace(y=2)"),
    "basemanager": (
        "2 x 50 increments: 100",
        "got 'job 0 from producer'",
        "wrong authkey was refused",
    ),
    "executor": ("= 1024", "Future: True", "map: [0, 1, 4, 9, 16, 25, 36, 49]"),
    "worker-lost": ("3 -> WorkerLostError", "5 -> 25", "the pool still works: [0, 1, 4, 9, 16]"),
    "timeout": (
        "raised TimeoutError",
        "its neighbour finished: 0.1",
        "and the pool goes on: [0, 1, 4, 9, 16]",
    ),
    "lazy-imap": ("first ten squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",),
    "shared-array": ("row sums: [0.0, 1000000.0, 2000000.0, 3000000.0]",),
    "progress": ("sum of 50 squares: 40425",),
    "scale-out": ("dask: [0, 1, 4, 9, 16, 25, 36, 49]",),
}


def run_tour(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        ),
    )
    return subprocess.run(
        [sys.executable, "-m", "polyproc", "tour", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_every_section_has_expectations() -> None:
    assert set(EXPECTED) == {s.name for s in SECTIONS}


def test_list_names_every_section() -> None:
    out = io.StringIO()
    assert tour_main(list_only=True, out=out) == 0
    for s in SECTIONS:
        assert s.name in out.getvalue()


def test_unknown_section_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert tour_main(["no-such-section"], out=io.StringIO()) == 2
    assert "choose from" in capsys.readouterr().err


#: Sections that fail today because of a known bug elsewhere, with the reason. Remove an
#: entry when its bug is fixed (strict=False: the test then simply passes).
KNOWN_BROKEN: dict[str, str] = {}  # section name -> reason, while a section is known broken


def _sections() -> list[object]:
    return [
        pytest.param(s.name, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[s.name], strict=False))
        if s.name in KNOWN_BROKEN
        else s.name
        for s in SECTIONS
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("section", _sections())
def test_section_runs(section: str, start_method: str) -> None:
    proc = run_tour(section, "--start-method", start_method)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.split("  running ...\n", 1)[1]  # what ran, not the code listing
    if "skipped: " in out:  # only for a missing optional dependency (NumPy, Dask)
        assert section in ("shared-array", "scale-out"), out
        return
    assert f"✓ {section} ran" in out, out + proc.stderr
    for text in EXPECTED[section]:
        assert text in out, f"{text!r} missing from:\n{out}"


@pytest.mark.timeout(120)
@pytest.mark.xfail(
    bool(KNOWN_BROKEN), reason=f"known broken sections: {sorted(KNOWN_BROKEN)}", strict=False
)
def test_whole_tour_exits_zero_in_seconds() -> None:
    proc = run_tour(timeout=100)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("tour done in ") and "FAILED" not in last, last
    seconds = float(last.split()[3])
    assert seconds < 30, last
    for s in SECTIONS:
        assert f"[polyproc tour {s.name}]" in proc.stdout


@pytest.mark.timeout(60)
def test_shared_array_skips_without_numpy(tmp_path: Path) -> None:
    # A fresh install has no NumPy: shadow it with a package whose import fails.
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no NumPy in this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(SRC)]))
    proc = subprocess.run(
        [sys.executable, "-m", "polyproc", "tour", "shared-array"],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped: NumPy is not installed" in proc.stdout
    assert "1 skipped (shared-array)" in proc.stdout


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    from polyproc.cli import main

    assert main([]) == 2
    out = capsys.readouterr().out
    assert "tour" in out and "bench" in out


@pytest.mark.timeout(60)
def test_a_hanging_section_is_stopped_by_the_watchdog() -> None:
    code = (
        "import sys, time, types\n"
        "from polyproc._tour import Section, run_section\n"
        "m = types.ModuleType('polyproc._tour.hang')\n"
        "def demo():\n"
        "    time.sleep(50)  # stands for a section that hangs\n"
        "m.demo = demo\n"
        "sys.modules['polyproc._tour.hang'] = m\n"
        "run_section(Section('hang', 'Hang', 'never ends', 'hang', 'demo'), timeout=1)\n"
        "print('not reached')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "Timeout" in proc.stderr and "not reached" not in proc.stdout
