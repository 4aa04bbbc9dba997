"""``ProcessPoolExecutor`` behaves as CPython 3.13's own concurrent.futures tests expect (issue 12).

Per start method: pickling errors land on the future, work submitted is never
dropped (not by the executor going away, not by the interpreter exiting),
``shutdown(cancel_futures=True)`` spares what has started, and results that fail to
pickle or unpickle fail only their own task, with the error that happened.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import compathelpers as c
import poolhelpers as h
import pytest

from polyproc.errors import BrokenProcessPool, SerializationError, WorkerLostError
from polyproc.futures import ProcessPoolExecutor

pytestmark = pytest.mark.timeout(60)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_an_argument_that_does_not_pickle_fails_its_future_not_submit(ctx: Any) -> None:
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        fut = ex.submit(c.identity, threading.Lock())  # no exception here
        assert isinstance(fut.exception(timeout=10), TypeError)
        fut = ex.submit(c.identity, c.ErrorAtPickle())
        with pytest.raises(pickle.PicklingError, match="Error in pickle"):
            fut.result(timeout=10)
        fut = ex.submit(c.identity, c.ReduceRaises())
        assert type(fut.exception(timeout=10)) is ZeroDivisionError
        assert ex.submit(h.inc, 1).result(timeout=10) == 2


def test_the_private_attributes_programs_read(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert len(ex._processes) == 2 and all(p.pid == pid for pid, p in ex._processes.items())
        assert ex._mp_context is ctx and ex._broken is False
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=h.bad_initializer) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(h.inc, 1).result(timeout=20)
        assert isinstance(ex._broken, str) and "initializer" in ex._broken


def test_submit_after_shutdown_raises_runtime_error(ctx: Any) -> None:
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    assert ex.submit(h.inc, 1).result(timeout=10) == 2
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(h.inc, 1)


def test_cancel_futures_cancels_only_what_has_not_started(ctx: Any, tmp_path: Path) -> None:
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    try:
        first = ex.submit(c.touch_then_wait, started, release)
        assert c.wait_for_path(started)  # it runs in the worker now
        rest = [ex.submit(h.inc, i) for i in range(20)]
        ex.shutdown(wait=False, cancel_futures=True)
        Path(release).touch()
    finally:
        ex.shutdown(wait=True)
    assert not first.cancelled() and first.result(timeout=10) == started
    cancelled = [f for f in rest if f.cancelled()]
    assert len(cancelled) >= 15, len(cancelled)
    for i, f in enumerate(rest):
        if not f.cancelled():
            assert f.result(timeout=10) == i + 1  # started ones ran to the end


def test_cancel_futures_at_once_spares_what_free_workers_take(ctx: Any) -> None:
    # CPython's test_cancel_futures: the stdlib hands each free worker a call at once.
    # Calls that take a while, as there (time.sleep(.1)): the workers are ready at once
    # (forked at creation), and instant calls could all finish before the shutdown.
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    futures = [ex.submit(h.nap, 0.1) for _ in range(30)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20 and others
    for f in others:
        assert f.done() and f.exception() is None


def test_system_exit_while_pickling_a_result_reaches_the_future(ctx: Any) -> None:
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        with pytest.raises(SystemExit):
            ex.submit(c.return_instance, c.ExitAtPickle).result(timeout=10)
        with pytest.raises(pickle.PicklingError):
            ex.submit(c.return_instance, c.ErrorAtPickle).result(timeout=10)
        # A result pickle refuses: the pickler's own error, as the stdlib's executor.
        assert isinstance(ex.submit(c.return_lock).exception(timeout=10), TypeError)
        assert ex.submit(h.inc, 1).result(timeout=10) == 2


def test_a_result_that_fails_to_unpickle_fails_that_task_with_the_unpickling_error(
    ctx: Any,
) -> None:
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        err = ex.submit(c.return_instance, c.ErrorAtUnpickle).exception(timeout=10)
        assert isinstance(err, pickle.UnpicklingError) and "error at unpickle" in str(err)
        assert not isinstance(err, WorkerLostError) and "died" not in str(err)
        assert any("return_instance" in n for n in getattr(err, "__notes__", []))
        err = ex.submit(c.return_instance, c.ExitAtUnpickle).exception(timeout=10)
        assert isinstance(err, SerializationError) and isinstance(err.__cause__, SystemExit)
        assert ex.submit(h.inc, 1).result(timeout=10) == 2  # same worker, same executor


def test_max_tasks_per_child_with_fork_is_a_value_error(ctx: Any) -> None:
    if ctx.start_method == "fork":
        with pytest.raises(ValueError, match="fork"):
            ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=3)
        return
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=3) as ex:
        pids = [ex.submit(os.getpid).result(timeout=10) for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1.5)  # type: ignore[arg-type]


# -- at interpreter exit ------------------------------------------------------------------
_EXIT_PROGRAM = """
import os, sys, time
import polyproc
from polyproc.futures import ProcessPoolExecutor

def write(path):
    time.sleep(0.2)   # still running when the main thread is long gone
    with open(path, "w") as f:
        f.write("done")

if __name__ == "__main__":
    out, method, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    ex = ProcessPoolExecutor(2, mp_context=polyproc.get_context(method))
    for i in range(6):
        ex.submit(write, os.path.join(out, f"f{i}"))
    if mode == "drop":
        del ex          # garbage-collected without shutdown()
    # and exit without waiting for anything
"""


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_tasks_never_awaited_still_run_at_interpreter_exit(
    start_method: str, tmp_path: Path, mode: str
) -> None:
    script = tmp_path / "prog.py"
    script.write_text(_EXIT_PROGRAM)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, str(script), str(out), start_method, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == [f"f{i}" for i in range(6)], proc.stderr
    assert proc.stderr == "", proc.stderr


_SUBMIT_AT_EXIT = """
import atexit, sys
import polyproc
from polyproc.futures import ProcessPoolExecutor

@atexit.register
def run_last():
    try:
        t.submit(id, None)
    except RuntimeError:
        print("runtime-error")
        raise

if __name__ == "__main__":
    t = ProcessPoolExecutor(2, mp_context=polyproc.get_context(sys.argv[1]))
    t.submit(id, 42).result()
"""


def test_submit_after_interpreter_shutdown_raises_runtime_error(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(_SUBMIT_AT_EXIT))
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, str(script), start_method],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert "RuntimeError: cannot schedule new futures" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "runtime-error"
