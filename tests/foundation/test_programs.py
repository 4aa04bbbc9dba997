"""Whole programs, run in a fresh interpreter under each start method (issue #2, items 3-6).

* at interpreter exit daemonic children are terminated and the others joined;
* children (and their children) die when the parent is killed with SIGKILL;
* ``%(processName)s`` names the process in children's log records, module-level
  ``logging.basicConfig`` reaches children, and ``if __name__ == '__main__':``
  keeps the main block out of spawn and forkserver children;
* lambdas, closures and classes defined in ``__main__`` travel, whether the
  program is a script, a ``-m`` module, a ``-c`` command or piped on stdin.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from . import _programs

pytestmark = pytest.mark.timeout(60)


# -- interpreter exit -----------------------------------------------------------------------------

EXIT_PROGRAM = """
import os, signal, sys, time
import polyproc

def daemon_child(conn):
    def on_term(signum, frame):
        print("daemon got SIGTERM", flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    conn.send("daemon ready")
    time.sleep(60)  # would outlive the parent by far if nobody stopped it

def worker(conn):
    conn.send("worker ready")
    conn.recv()
    time.sleep(0.3)  # work that outlasts the parent's main block: it must be waited for
    print("worker finished", flush=True)

if __name__ == "__main__":
    a, b = polyproc.Pipe()
    d = polyproc.Process(target=daemon_child, args=(b,), daemon=True)
    d.start()
    print(a.recv(), flush=True)
    c, e = polyproc.Pipe()
    p = polyproc.Process(target=worker, args=(e,))
    p.start()
    print(c.recv(), flush=True)
    c.send("go")
    print("main done", d.pid, p.pid, flush=True)
"""


def test_exit_terminates_daemons_and_joins_the_others(start_method: str, tmp_path: Path) -> None:
    out = _programs.run(EXIT_PROGRAM, start_method, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["daemon ready", "worker ready", lines[2]]
    assert lines[2].startswith("main done")
    # The daemon was terminated (SIGTERM, which it reports), not killed with the parent;
    # the worker was joined: it finished after the main block had.
    assert sorted(lines[3:]) == ["daemon got SIGTERM", "worker finished"]
    _, _, daemon_pid, worker_pid = lines[2].split()
    for pid in (int(daemon_pid), int(worker_pid)):
        assert not _alive(pid)


# -- children die with their parent ---------------------------------------------------------------

KILLED_PARENT_PROGRAM = """
import os, sys, time
import polyproc

def sleeper():
    time.sleep(120)

def middle(conn):
    g = polyproc.Process(target=sleeper)
    g.start()
    conn.send(g.pid)
    time.sleep(120)

if __name__ == "__main__":
    a, b = polyproc.Pipe()
    p = polyproc.Process(target=middle, args=(b,))
    p.start()
    q = polyproc.Process(target=sleeper, daemon=True)
    q.start()
    print(p.pid, a.recv(), q.pid, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_children_and_grandchildren_die_when_the_parent_is_sigkilled(
    start_method: str, tmp_path: Path
) -> None:
    parent = _programs.popen(KILLED_PARENT_PROGRAM, start_method, tmp_path)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, parent.stderr.read() if parent.stderr else ""
        pids = [int(x) for x in line.split()]
        everyone = {p.pid for p in psutil.Process(parent.pid).children(recursive=True)}
        assert set(pids) <= everyone  # child, grandchild, daemon child (+ forkserver, spare)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        if parent.stdout:
            parent.stdout.close()
        if parent.stderr:
            parent.stderr.close()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(pid) for pid in everyone):
        time.sleep(0.05)  # polling an external fact with a deadline, not synchronising
    survivors = [pid for pid in everyone if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"outlived a SIGKILLed parent: {survivors}"


# -- logging, __main__ as __mp_main__ --------------------------------------------------------------

LOGGING_PROGRAM = """
import logging
import os
import sys
import polyproc

logging.basicConfig(level=logging.DEBUG, format="%(processName)s|%(message)s")

def worker(n):
    logging.debug("worker %d in %s", n, worker.__module__)

if __name__ == "__main__":
    print("main block ran", flush=True)
    logging.debug("parent")
    ps = [polyproc.Process(target=worker, args=(1,)),
          polyproc.Process(target=worker, args=(2,), name="renamed worker2")]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    print("exitcodes", [p.exitcode for p in ps], flush=True)
    logging.debug("parent again")
"""


@pytest.mark.parametrize("mode", ["script", "module"])
def test_logging_process_name_and_main_guard(start_method: str, tmp_path: Path, mode: str) -> None:
    out = _programs.run(LOGGING_PROGRAM, start_method, tmp_path, mode=mode)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["main block ran", "exitcodes [0, 0]"]  # the guard held
    main_module = "__main__" if start_method == "fork" else "__mp_main__"
    records = out.stderr.splitlines()
    assert records[0] == "MainProcess|parent"
    assert records[-1] == "MainProcess|parent again"
    # basicConfig ran in the child (by inheritance under fork, on import of __mp_main__ else)
    assert sorted(records[1:-1]) == sorted(
        [
            f"Process-1|worker 1 in {main_module}",
            f"renamed worker2|worker 2 in {main_module}",
        ]
    )


# -- code defined in __main__ travels ---------------------------------------------------------------

MAIN_CODE_PROGRAM = """
import polyproc

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x * self.x + self.y * self.y

def make_adder(k):
    def add(x):
        return x + k
    return add

square = lambda x: x * x

def apply(f, x, conn):
    conn.send(f(x))

if __name__ == "__main__":
    calls = [(square, 7), (make_adder(10), 5), (lambda x: -x, 3), (Point.norm2, Point(3, 4))]
    for f, x in calls:
        r, w = polyproc.Pipe(duplex=False)
        p = polyproc.Process(target=apply, args=(f, x, w))
        p.start()
        w.close()
        print(r.recv())
        p.join()
    r, w = polyproc.Pipe(duplex=False)
    p = polyproc.Process(target=lambda conn: conn.send(type(Point(0, 0)).__name__), args=(w,))
    p.start()
    w.close()
    print(r.recv())
    p.join()
    print("done", p.exitcode)
"""


@pytest.mark.parametrize("mode", ["script", "command", "stdin"])
def test_lambdas_closures_and_classes_from_main_travel(
    start_method: str, tmp_path: Path, mode: str
) -> None:
    out = _programs.run(MAIN_CODE_PROGRAM, start_method, tmp_path, mode=mode)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["49", "15", "-3", "25", "Point", "done 0"]
    assert out.stderr == ""
