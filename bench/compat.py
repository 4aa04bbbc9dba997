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
from pathlib import Path

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


def run_one(harness: Path, method: str, out: Path, subset: list[str], timeout: float) -> dict:
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
    failing = sorted(
        f"{cls}.{name}"
        for cls, c in data["classes"].items()
        for name, t in c["tests"].items()
        if t["status"] not in ("pass", "skip")
    )
    return {"score": data["score"], "failing": failing}


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
    args = ap.parse_args(argv)
    harness = _harness(args.harness)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="polyproc-compat-"))
    out.mkdir(parents=True, exist_ok=True)
    worst = 100.0
    print(f"{'start method':<12} {'api':>16} {'all':>16}   reports in {out}")
    for method in args.methods:
        result = run_one(harness, method, out, args.subset, args.timeout)
        api, every = result["score"]["api"], result["score"]["all"]
        worst = min(worst, api["pct"])
        print(
            f"{method:<12} {api['passed']:>4}/{api['of']:<4} {api['pct']:6.2f}% "
            f"{every['passed']:>4}/{every['of']:<4} {every['pct']:6.2f}%",
            flush=True,
        )
        for name in result["failing"]:
            print(f"    not passed: {name}")
    return 1 if worst < args.min else 0


if __name__ == "__main__":
    sys.exit(main())
