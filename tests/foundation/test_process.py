"""Process, the stdlib API, under each start method (issue #2, item 3, and item 9's first half).

Every test that starts a child takes the ``ctx`` fixture, so it runs once per
start method. Children block on a Pipe until the test lets them go; nothing
here sleeps to synchronise.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import polyproc
from polyproc._connection import wait
from polyproc.errors import SerializationError

from . import _targets

pytestmark = pytest.mark.timeout(30)


def _children() -> set[int]:
    """Our live descendants, leaving out the shared forkserver and an idle spare interpreter."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if (
                p.name() not in ("polyproc-fsrv", "polyproc-spare")
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def _started(ctx: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    p = ctx.Process(target=target, args=args, **kwargs)
    p.start()
    return p


# -- target, args, kwargs, run --------------------------------------------------------------


def test_target_args_and_kwargs(ctx: Any) -> None:
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=_targets.call_with, args=(w, 1, "two"), kwargs={"three": [3]})
    p.start()
    w.close()
    assert r.recv() == ((1, "two"), {"three": [3]})
    p.join()
    assert p.exitcode == 0


def test_subclass_overriding_run(start_method: str) -> None:
    r, w = polyproc.Pipe(duplex=False)
    p = _targets.GREETERS[start_method](w, "world")
    assert p.name.startswith(type(p).__name__ + "-")  # the stdlib names subclasses after the class
    p.start()
    w.close()
    assert r.recv() == f"hello world from {p.name}"
    p.join()
    assert p.exitcode == 0


def test_lambda_and_closure_targets(ctx: Any) -> None:
    secret = "captured"
    r, w = polyproc.Pipe(duplex=False)

    def closure(conn: Any) -> None:
        conn.send(secret)

    for target, expected in ((lambda conn: conn.send(6 * 7), 42), (closure, "captured")):
        p = _started(ctx, target, w)
        assert r.recv() == expected
        p.join()
        assert p.exitcode == 0


def test_group_must_be_none(ctx: Any) -> None:
    with pytest.raises(ValueError):
        ctx.Process(group=object(), target=_targets.noop)


# -- life cycle --------------------------------------------------------------------------------


def test_life_cycle(ctx: Any) -> None:
    a, b = polyproc.Pipe()
    p = ctx.Process(target=_targets.signal_ready_then_wait, args=(b,))
    assert not p.is_alive() and p.exitcode is None and p.pid is None and p.ident is None
    assert "initial" in repr(p)
    with pytest.raises(ValueError):
        p.sentinel  # noqa: B018 - not started: no sentinel yet
    with pytest.raises(AssertionError):
        p.join()  # the stdlib's message: "can only join a started process"
    p.start()
    assert a.recv() == "ready"
    assert p.is_alive() and p.exitcode is None
    assert isinstance(p.pid, int) and p.pid == p.ident and p.pid > 0
    assert "started" in repr(p)
    assert p in polyproc.active_children()
    with pytest.raises(AssertionError):
        p.start()  # a process starts once
    a.send("go")
    p.join()
    assert not p.is_alive() and p.exitcode == 0
    assert "stopped" in repr(p)
    assert p not in polyproc.active_children()
    p.join()  # joining twice is fine
    a.close()
    b.close()


def test_join_timeout_returns_while_child_runs(ctx: Any) -> None:
    a, b = polyproc.Pipe()
    p = _started(ctx, _targets.signal_ready_then_wait, b)
    assert a.recv() == "ready"
    t0 = time.monotonic()
    p.join(timeout=0.2)
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed < 3.0
    assert p.is_alive() and p.exitcode is None
    p.join(0)  # a zero timeout polls
    assert p.is_alive()
    a.send("go")
    p.join(timeout=10)
    assert p.exitcode == 0


def test_sentinel_becomes_ready_at_exit(ctx: Any) -> None:
    a, b = polyproc.Pipe()
    p = _started(ctx, _targets.signal_ready_then_wait, b)
    assert a.recv() == "ready"
    assert isinstance(p.sentinel, int)
    assert wait([p.sentinel], timeout=0.05) == []
    a.send("go")
    assert wait([p.sentinel], timeout=10) == [p.sentinel]
    p.join()
    assert p.exitcode == 0


def test_terminate_gives_minus_sigterm(ctx: Any) -> None:
    a, b = polyproc.Pipe()
    p = _started(ctx, _targets.signal_ready_then_wait, b)
    assert a.recv() == "ready"
    p.terminate()
    p.join(10)
    assert p.exitcode == -signal.SIGTERM
    assert "SIGTERM" in repr(p)


def test_kill_gives_minus_sigkill_even_if_sigterm_is_ignored(ctx: Any) -> None:
    a, b = polyproc.Pipe()
    p = _started(ctx, _targets.ignore_sigterm_then_wait, b)
    assert a.recv() == "ready"
    p.terminate()
    p.join(0.2)
    assert p.is_alive()  # it ignores SIGTERM
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def test_signal_after_exit_is_harmless(ctx: Any) -> None:
    p = _started(ctx, _targets.noop)
    p.join()
    p.terminate()
    p.kill()
    assert p.exitcode == 0


@pytest.mark.parametrize(("code", "expected"), [(3, 3), (None, 0), (0, 0), ("bye", 1)])
def test_sys_exit(ctx: Any, code: Any, expected: int, capfd: pytest.CaptureFixture[str]) -> None:
    p = _started(ctx, _targets.exit_with, code)
    p.join()
    assert p.exitcode == expected
    if isinstance(code, str):  # like the interpreter: the message goes to stderr
        assert code in capfd.readouterr().err


def test_exception_in_target_prints_traceback_and_exits_1(
    ctx: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    p = _started(ctx, _targets.raise_error, "boom-7f3a")
    p.join()
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert f"Process {p.name}:" in err
    assert "Traceback (most recent call last):" in err
    assert "ValueError: boom-7f3a" in err
    assert err.index(f"Process {p.name}:") < err.index("ValueError: boom-7f3a")


def test_process_started_from_a_thread_outlives_the_thread(ctx: Any) -> None:
    """PDEATHSIG follows the creating *thread*; a finished thread must not take the child along."""
    a, b = polyproc.Pipe()
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(_started(ctx, _targets.echo, b)))
    t.start()
    t.join()
    (p,) = box
    a.send("still there?")
    assert a.poll(10)
    assert a.recv() == "still there?"
    a.send(None)
    p.join(10)
    assert p.exitcode == 0


# -- close ----------------------------------------------------------------------------------


def test_close(ctx: Any) -> None:
    a, b = polyproc.Pipe()
    p = _started(ctx, _targets.signal_ready_then_wait, b)
    assert a.recv() == "ready"
    with pytest.raises(ValueError, match="still running"):
        p.close()
    assert p.is_alive()  # a refused close changes nothing
    a.send("go")
    p.join()
    p.close()
    p.close()  # idempotent
    for use in (
        lambda: p.pid,
        lambda: p.exitcode,
        lambda: p.is_alive(),
        lambda: p.join(),
        lambda: p.start(),
        lambda: p.sentinel,
        lambda: p.terminate(),
        lambda: p.kill(),
    ):
        with pytest.raises(ValueError):
            use()
    assert "closed" in repr(p)


def test_close_before_start(ctx: Any) -> None:
    p = ctx.Process(target=_targets.noop)
    p.close()
    with pytest.raises(ValueError):
        p.start()


# -- names, identity, parent, children -----------------------------------------------------------


def _number(name: str) -> int:
    prefix, _, n = name.rpartition("-")
    assert prefix == "Process"
    return int(n)


def test_default_names_count_up(ctx: Any) -> None:
    p1 = ctx.Process(target=_targets.noop)
    p2 = ctx.Process(target=_targets.noop)
    assert _number(p2.name) == _number(p1.name) + 1
    named = ctx.Process(target=_targets.noop, name="renamed worker2")
    assert named.name == "renamed worker2"
    named.name = "again"
    assert named.name == "again"
    with pytest.raises(TypeError):
        named.name = 3  # type: ignore[assignment]
    for p in (p1, p2, named):
        p.close()


def test_child_sees_itself_and_its_parent(ctx: Any, start_method: str) -> None:
    me = polyproc.current_process()
    assert me.name == "MainProcess"
    assert polyproc.parent_process() is None
    r, w = polyproc.Pipe(duplex=False)
    p = _started(ctx, _targets.report_identity, w)
    w.close()
    info = r.recv()
    p.join()
    assert info["name"] == p.name
    assert info["pid"] == info["ident"] == info["os_pid"] == p.pid
    assert info["is_alive"] is True
    assert info["daemon"] is False
    assert info["authkey"] == me.authkey == p.authkey  # inherited
    assert info["parent_name"] == "MainProcess"
    assert info["parent_pid"] == os.getpid()
    assert info["parent_alive"] is True
    assert info["active_children"] == []
    if start_method != "fork":  # a fork child has whatever this test process imported
        assert info["mp_imported"] is False  # polyproc never imports the stdlib's multiprocessing


def test_daemon_flag(ctx: Any) -> None:
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=_targets.report_identity, args=(w,), daemon=True)
    assert p.daemon
    p.daemon = False
    p.daemon = True
    p.start()
    w.close()
    assert r.recv()["daemon"] is True
    with pytest.raises(AssertionError):
        p.daemon = False  # not once started
    p.join()


def test_grandchild_is_named_n_colon_m(ctx: Any, start_method: str) -> None:
    r, w = polyproc.Pipe(duplex=False)
    p = _started(ctx, _targets.start_grandchild, w, start_method)
    w.close()
    info = r.recv()
    p.join()
    assert p.exitcode == 0
    assert info["child"] == p.name
    grandchild = info["grandchild"]
    assert grandchild["name"] == f"{p.name}:1"
    assert grandchild["parent_name"] == p.name
    assert grandchild["parent_pid"] == p.pid
    assert info["seen_alive"] in ([], [grandchild["name"]])  # it may already have finished
    assert info["exitcode"] == 0


def test_authkey(ctx: Any) -> None:
    p = ctx.Process(target=_targets.noop)
    assert p.authkey == polyproc.current_process().authkey
    assert len(p.authkey) >= 16
    p.authkey = b"other"
    assert p.authkey == b"other"
    p.close()


def test_start_method_of_the_child(ctx: Any, start_method: str) -> None:
    """Fork copies the parent (a changed module global shows); spawn and forkserver do not."""
    r, w = polyproc.Pipe(duplex=False)
    _targets.MARKER[0] = "changed"
    try:
        p = _started(ctx, _targets.report_identity, w)
    finally:
        _targets.MARKER[0] = "pristine"
    w.close()
    info = r.recv()
    p.join()
    assert info["marker"] == ("changed" if start_method == "fork" else "pristine")
    # A forkserver child is the forkserver's: its OS parent is not us.
    assert (info["ppid"] == os.getpid()) == (start_method != "forkserver")


def test_cpu_count_and_freeze_support() -> None:
    assert polyproc.cpu_count() == os.cpu_count()
    assert polyproc.freeze_support() is None


# -- bad input: an unpicklable argument ------------------------------------------------------------


def test_unpicklable_argument_fails_at_start_with_nothing_started(
    ctx: Any, start_method: str
) -> None:
    r, w = polyproc.Pipe(duplex=False)
    lock = threading.Lock()
    p = ctx.Process(target=_targets.type_name, args=(w, lock))
    if start_method == "fork":  # the child inherits the object: nothing to pickle
        p.start()
        w.close()
        assert r.recv() == "lock"
        p.join()
        assert p.exitcode == 0
        return
    before = _children()
    with pytest.raises(SerializationError) as info:
        p.start()
    message = str(info.value)
    assert "args[1]" in message and "lock" in message  # names the object that failed
    assert isinstance(info.value, pickle.PicklingError)
    assert isinstance(info.value, polyproc.ProcessError)
    assert _children() == before  # nothing half-started
    assert not p.is_alive() and p.exitcode is None and p.pid is None
    assert p not in polyproc.active_children()
    p.close()


def test_unpicklable_keyword_argument_is_named(ctx: Any, start_method: str) -> None:
    if start_method == "fork":
        pytest.skip("fork inherits the arguments: nothing is pickled")
    p = ctx.Process(target=_targets.noop, kwargs={"data": {"inner": [1, threading.Lock()]}})
    with pytest.raises(SerializationError, match=r"\['inner'\]\[1\]"):
        p.start()
    p.close()


# -- the child's stdio is the parent's at start() ----------------------------------------------------


def test_child_writes_to_the_parents_current_stdout(
    ctx: Any, start_method: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    """A redirect of fd 1 made after an earlier start (which may leave a spare booted) is honoured."""
    _started(ctx, _targets.noop).join()  # boots a spare where there is such a thing
    out = tmp_path / "out.txt"
    saved = os.dup(1)
    try:
        with open(out, "wb") as f:
            os.dup2(f.fileno(), 1)
            p = _started(ctx, _targets.write_fd, 1, "to the redirected stdout\n")
            p.join()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert p.exitcode == 0
    assert out.read_text() == "to the redirected stdout\n"


# -- a killed child takes its own children along ------------------------------------------------------


def test_grandchild_dies_when_its_parent_is_sigkilled(ctx: Any, start_method: str) -> None:
    """Under forkserver the grandchild is the server's child: the server kills it for the dead client."""
    r, w = polyproc.Pipe(duplex=False)
    p = _started(ctx, _targets.start_sleeper_and_report, w, start_method)
    w.close()
    grandchild = psutil.Process(r.recv())
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    try:
        grandchild.wait(5)  # reaped by whoever its parent now is
    except psutil.TimeoutExpired:
        if grandchild.status() != psutil.STATUS_ZOMBIE:
            grandchild.kill()
            pytest.fail("the grandchild outlived its SIGKILLed parent")


_KILLED_RIGHT_AFTER_STARTS = """
import sys, time
import polyproc

def sleeper():
    time.sleep(60)

if __name__ == "__main__":
    polyproc.set_start_method("forkserver", force=True)
    procs = [polyproc.Process(target=sleeper) for _ in range(3)]
    for p in procs:
        p.start()
    print(" ".join(str(p.pid) for p in procs), flush=True)
    for p in procs:
        p.join()
"""


@pytest.mark.timeout(120)
def test_forkserver_children_die_with_a_client_killed_right_after_starting_them(
    tmp_path: Path,
) -> None:
    """kill -9 of the client just after ``start()``: the server dies with it, and a child
    it forked a moment before must not survive under init. (The child once took its
    parent's pid from ``getppid()``, which after the server's death is already 1, so its
    death-with-parent check passed: one run in five left a survivor here.)"""
    import subprocess
    import sys

    script = tmp_path / "client.py"
    script.write_text(_KILLED_RIGHT_AFTER_STARTS)
    env = dict(os.environ, PYTHONPATH=str(Path(polyproc.__file__).parents[1]))
    survivors: list[int] = []
    for _ in range(8):
        client = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert client.stdout is not None
        pids = [int(x) for x in client.stdout.readline().split()]
        client.kill()
        client.wait(10)
        client.stdout.close()
        assert len(pids) == 3
        alive = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
        _, left = psutil.wait_procs(alive, timeout=5)  # reaped by whoever adopted them
        for p in left:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    survivors.append(p.pid)
                    p.kill()
            except psutil.Error:
                pass
    assert not survivors, f"children outlived their killed client: {survivors}"


# -- the context's serializer travels with the Process -------------------------------------------------


def test_a_context_with_its_own_serializer(start_method: str) -> None:
    from polyproc._serialize import Serializer

    ctx = polyproc.Context(start_method, Serializer(oob_threshold=1024))
    assert ctx.Process is not polyproc.get_context(start_method).Process
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=_targets.serializer_threshold, args=(w,))
    p.start()
    w.close()
    assert r.recv() == 1024
    p.join()
    assert p.exitcode == 0
