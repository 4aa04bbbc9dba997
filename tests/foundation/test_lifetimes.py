"""What a dropped Process, Manager or forkserver leaves behind: nothing (issue 13, item 3).

Each test counts ``/proc/self/fd`` in a fresh interpreter, so fds held by the
test process itself (pytest, other tests' forkservers) do not blur the figure.
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


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


_PROCESSES = """
    import gc, os, sys
    import polyproc

    def noop():
        pass

    if __name__ == "__main__":
        ctx = polyproc.get_context(sys.argv[1])
        p = ctx.Process(target=noop); p.start(); p.join(); del p; gc.collect()  # warm up
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            p = ctx.Process(target=noop)
            p.start()
            p.join()
        del p
        gc.collect()
        print(before, len(os.listdir("/proc/self/fd")))
"""


def test_processes_dropped_without_close_free_their_sentinels(start_method: str) -> None:
    before, after = map(int, _run(_PROCESSES, start_method).split())
    assert after == before


_MANAGERS = """
    import gc, os, sys
    import polyproc

    if __name__ == "__main__":
        polyproc.set_start_method(sys.argv[1])
        m = polyproc.Manager(); m.shutdown(); del m; gc.collect()  # warm up
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(4):
            m = polyproc.Manager()
            d = m.dict()
            d["k"] = 1
            del d
            m.shutdown()
        del m
        gc.collect()
        print(before, len(os.listdir("/proc/self/fd")))
"""


def test_manager_start_and_shutdown_leave_no_fd(start_method: str) -> None:
    before, after = map(int, _run(_MANAGERS, start_method).split())
    assert after == before


_KILL_FORKSERVER = """
    import os, signal
    import psutil
    import polyproc
    from polyproc._launch import forkserver

    def noop():
        pass

    if __name__ == "__main__":
        ctx = polyproc.get_context("forkserver")
        p = ctx.Process(target=noop); p.start(); p.join()
        server = forkserver._CLIENT.server
        assert server is not None
        os.kill(server.pid, signal.SIGKILL)  # no wait: the next start must cope at once
        p = ctx.Process(target=noop); p.start(); p.join()
        print(p.exitcode)
        zombies = [c.pid for c in psutil.Process().children(recursive=True)
                   if c.status() == psutil.STATUS_ZOMBIE]
        print(zombies)
"""


def test_a_killed_forkserver_is_reaped_and_replaced() -> None:
    code, zombies = _run(_KILL_FORKSERVER).split("\n")[:2]
    assert code == "0"
    assert zombies == "[]"
