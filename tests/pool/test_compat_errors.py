"""``except concurrent.futures.process.BrokenProcessPool`` catches polyproc's pool errors (issue 12),
and polyproc never loads the stdlib's multiprocessing engine to make that so.

Each case runs in a fresh interpreter: which modules are loaded, and in which order,
is the whole point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)
SRC = str(Path(__file__).resolve().parents[2] / "src")
HERE = str(Path(__file__).resolve().parent)


def _run(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, HERE]))
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=50
    )


_STDLIB_FIRST = """
import sys
from concurrent.futures.process import BrokenProcessPool   # imported before polyproc
import polyproc
from polyproc.futures import ProcessPoolExecutor
import poolhelpers as h

if __name__ == "__main__":
    ctx = polyproc.get_context(sys.argv[1])
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        try:
            ex.submit(h.die_on, 3).result(timeout=20)   # its worker is SIGKILLed
        except BrokenProcessPool as exc:
            print("lost:", type(exc).__name__)
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=h.bad_initializer) as ex:
        try:
            ex.submit(h.inc, 1).result(timeout=20)
        except BrokenProcessPool as exc:
            print("broken:", type(exc).__name__)
"""

_STDLIB_LATER = """
import sys
import polyproc
from polyproc.futures import ProcessPoolExecutor
import poolhelpers as h

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=polyproc.get_context(sys.argv[1])) as ex:
        fut = ex.submit(h.die_on, 3)
        fut.exception(timeout=20)            # the error exists before the import below
        assert "concurrent.futures.process" not in sys.modules
        import concurrent.futures.process
        BrokenProcessPool = concurrent.futures.process.BrokenProcessPool
        try:
            fut.result()
        except BrokenProcessPool as exc:
            print("lost:", type(exc).__name__)
"""


@pytest.mark.parametrize("program", [_STDLIB_FIRST, _STDLIB_LATER], ids=["first", "later"])
def test_stdlib_broken_process_pool_catches_ours(
    tmp_path: Path, start_method: str, program: str
) -> None:
    proc = _run(tmp_path, program, start_method)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert "lost: WorkerLostError" in lines, proc.stdout + proc.stderr
    if program is _STDLIB_FIRST:
        assert "broken: BrokenProcessPool" in lines, proc.stdout + proc.stderr


_NO_STDLIB_ENGINE = """
import sys
import polyproc
import polyproc.pool
import polyproc.futures
from polyproc.errors import BrokenProcessPool, WorkerLostError
import poolhelpers as h

def loaded(_=None):
    return sorted(m for m in sys.modules if m == "multiprocessing"
                  or m.startswith("multiprocessing.") or m == "concurrent.futures.process")

if __name__ == "__main__":
    ctx = polyproc.get_context(sys.argv[1])
    with polyproc.pool.Pool(2, context=ctx) as pool:
        assert pool.map(h.inc, range(10)) == list(range(1, 11))
        in_worker = pool.apply(loaded)
        try:
            pool.apply(h.die_on, (3,))
        except BrokenProcessPool:
            pass
    with polyproc.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(h.inc, range(5))) == [1, 2, 3, 4, 5]
        assert isinstance(ex.submit(h.die_on, 3).exception(timeout=20), WorkerLostError)
    print("parent:", loaded())
    print("worker:", in_worker)
"""


def test_running_pools_loads_no_stdlib_multiprocessing(tmp_path: Path, start_method: str) -> None:
    proc = _run(tmp_path, _NO_STDLIB_ENGINE, start_method)
    assert proc.returncode == 0, proc.stderr
    assert "parent: []" in proc.stdout and "worker: []" in proc.stdout, proc.stdout + proc.stderr
