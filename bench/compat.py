"""CPython's own multiprocessing test suite against polyproc, per start method: the drop-in score.

Not a unit test (a full run takes minutes per start method) and not a ``bench_*``
case: a CI-able script. It runs the harness ``run_cpython_suite.py`` (CPython
3.11's ``_test_multiprocessing.py`` with ``multiprocessing`` aliased to polyproc,
see its README) once per start method, prints the ``api`` and ``all`` scores
(the share of the tests the stdlib itself passes on this machine that polyproc
passes too), and exits 1 when an ``api`` score is under ``--min``::

    python bench/compat.py                               # fork, spawn, forkserver
    python bench/compat.py --methods fork -k TestQueue   # a subset while iterating
    python bench/compat.py --min 98 --out /tmp/compat    # CI: fail under 98 %, keep the JSON
    python bench/compat.py --summary bench/results/DATE-cpython.json   # scores + what failed

The tests the stdlib passes and polyproc does not are listed per start method: first
those of the ``api`` set (the headline score), then those that read stdlib internals.

The harness is found at ``--harness``, else ``$POLYPROC_COMPAT_HARNESS``, else
``../shared/compat/run_cpython_suite.py`` beside the checkout. This checkout's
``src`` goes first on ``PYTHONPATH``, so the polyproc measured is this one.
Every test that still fails, and why, is listed in docs/migrating.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("fork", "spawn", "forkserver")


def _harness(given: str | None) -> Path:
    for candidate in (
        given,
        os.environ.get("POLYPROC_COMPAT_HARNESS"),
        str(ROOT.parent / "shared" / "compat" / "run_cpython_suite.py"),
        str(ROOT.parent.parent / "shared" / "compat" / "run_cpython_suite.py"),
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit(
        "run_cpython_suite.py not found: pass --harness or set POLYPROC_COMPAT_HARNESS"
    )


def run_one(
    harness: Path, method: str, out: Path, subset: list[str], timeout: float
) -> dict[str, Any]:
    """Run the suite for ``method``; the JSON's ``score`` (and the failing tests' names)."""
    report = out / f"polyproc-{method}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        str(harness),
        "--module",
        "polyproc",
        "--start-method",
        method,
        "--json",
        str(report),
        "--logdir",
        str(out / f"logs-{method}"),
    ]
    for pattern in subset:
        cmd += ["-k", pattern]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and not report.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the harness failed for {method} (exit {proc.returncode})")
    data = json.loads(report.read_text())
    api, outside = _not_passed(data)
    return {"score": data["score"], "api_not_passed": api, "other_not_passed": outside}


def _not_passed(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The tests the stdlib passes here and polyproc does not: (in the ``api`` set, the rest).

    The sets are the harness's own: the baseline's passes minus its excluded classes and
    tests; ``api`` further leaves out the tests that read stdlib internals (``internal_refs``).
    """
    baseline = json.loads(Path(data["meta"]["baseline"]).read_text())
    internal = baseline.get("internal_refs") or data.get("internal_refs") or {}
    excluded_classes = set(data.get("excluded_classes") or ())
    excluded_tests = set(data.get("excluded_tests") or ())
    api: list[str] = []
    outside: list[str] = []
    for cls, c in sorted(data["classes"].items()):
        # "WithProcessesTestQueue" is "_TestQueue" in the exclusion lists
        base = "_" + cls.removeprefix("WithProcesses").removeprefix("WithThreads").removeprefix(
            "WithManager"
        )
        for name, t in sorted(c["tests"].items()):
            tid = f"{cls}.{name}"
            stdlib = baseline["classes"].get(cls, {}).get("tests", {}).get(name, {})
            if t["status"] == "pass" or stdlib.get("status") != "pass":
                continue
            if cls in excluded_classes or base in excluded_classes or tid in excluded_tests:
                continue
            (outside if tid in internal else api).append(f"{tid} ({t['status']})")
    return api, outside


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--harness", help="path to run_cpython_suite.py")
    ap.add_argument("--out", help="directory for the JSON reports and logs (default: a temp dir)")
    ap.add_argument(
        "-k",
        dest="subset",
        action="append",
        default=[],
        help="only tests matching (passed to the harness; repeatable)",
    )
    ap.add_argument(
        "--min", type=float, default=0.0, help="exit 1 if an 'api' score (percent) is below this"
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per start method")
    ap.add_argument(
        "--summary", help="write the scores and the tests not passed, per start method, here (JSON)"
    )
    args = ap.parse_args(argv)
    harness = _harness(args.harness)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="polyproc-compat-"))
    out.mkdir(parents=True, exist_ok=True)
    worst = 100.0
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": sys.version.split()[0],
        "load_average_at_start": os.getloadavg(),
        "subset": args.subset,
        "methods": {},
    }
    print(f"{'start method':<12} {'api':>16} {'all':>16}   reports in {out}")
    for method in args.methods:
        result = run_one(harness, method, out, args.subset, args.timeout)
        api, every = result["score"]["api"], result["score"]["all"]
        worst = min(worst, api["pct"])
        summary["methods"][method] = result
        print(
            f"{method:<12} {api['passed']:>4}/{api['of']:<4} {api['pct']:6.2f}% "
            f"{every['passed']:>4}/{every['of']:<4} {every['pct']:6.2f}%",
            flush=True,
        )
        for name in result["api_not_passed"]:
            print(f"    api, not passed: {name}")
        for name in result["other_not_passed"]:
            print(f"    reads stdlib internals, not passed: {name}")
    summary["load_average_at_end"] = os.getloadavg()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if worst < args.min else 0


if __name__ == "__main__":
    sys.exit(main())
