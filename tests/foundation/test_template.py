"""A pool's template (``_launch/template.py``): parked until first asked, gone with its pool.

The template is a copy of the caller forked at pool creation, which forks the pool's
first workers at once and its replacement workers later. It is forked parked in C
(``_csem.fork_template``): no Python runs in it, and it costs no CPU, until the pool's
first request. These tests look at it from outside (psutil), as a user's ``ps`` would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import polyproc

from . import _targets

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _parked_in_c() -> None:
    from polyproc._launch import template

    if template._fork_template is None:
        pytest.skip("no C extension here: the template is an ordinary fork (tested below)")


def _template_pid(pool: object) -> int:
    template = pool._engine.workers.template  # type: ignore[attr-defined]
    if template is None:
        pytest.skip("another thread runs in this test process: no template")
    return int(template._handle.pid)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False  # not reaped: the pool should have waited for it
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling the OS for an exit we do not own
    return True


@pytest.mark.timeout(60)
def test_a_template_runs_no_python_until_first_asked() -> None:
    """Parked, it has not even named itself (``set_comm`` is its first Python) nor
    listened (its server's socket); after the first replacement it has done both."""

    def listening(pid: int) -> bool:
        return any(c.laddr for c in psutil.Process(pid).net_connections(kind="unix"))

    _parked_in_c()
    with polyproc.get_context("auto").Pool(1) as p:
        pid = _template_pid(p)
        assert p.apply(_targets.square, (4,)) == 16
        proc = psutil.Process(pid)
        assert proc.name() != "polyproc-tmpl"
        assert not listening(pid)
        assert proc.cpu_times().user + proc.cpu_times().system < 0.05
        with pytest.raises(polyproc.WorkerLostError):
            p.apply(os._exit, (3,))
        assert p.apply(_targets.square, (5,)) == 25  # from the template, now awake
        assert proc.name() == "polyproc-tmpl"
        assert listening(pid)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["auto", "fork"])
def test_a_parked_template_forks_the_first_workers_without_waking(method: str) -> None:
    """The template forks every first worker of the pool in C as it is forked (the
    caller forks once, whatever the pool's size), and stays parked: still unnamed, it
    ran no Python. Each worker has its own channel and none of another's."""
    _parked_in_c()
    with polyproc.get_context(method).Pool(3) as p:
        tpid = _template_pid(p)
        pids = set(p.map(_targets.getpid_of, range(12), chunksize=1))
        template = psutil.Process(tpid)
        by_template = {c.pid for c in template.children()}
        by_caller = {c.pid for c in psutil.Process().children()}
        assert len(pids) == 3, pids
        assert pids <= by_template and not pids & by_caller, (pids, by_template, by_caller)
        assert template.name() != "polyproc-tmpl"
        # The parent's ends of the channels: each worker holds none but maybe its own.
        ends = {
            os.readlink(f"/proc/self/fd/{h.conn.fileno()}")
            for h in p._engine.workers.handles.values()  # type: ignore[attr-defined]
        }
        for pid in pids:
            held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert len(held & ends) <= 1, (pid, held & ends)


@pytest.mark.timeout(60)
def test_a_parked_template_ends_with_its_pool_even_if_another_holds_its_socket() -> None:
    """A template forked later (another pool's) holds a copy of the first one's socket
    until it wakes: the first pool's close must not wait on that (it kills a template it
    never woke, which has run nothing)."""
    first = polyproc.get_context("auto").Pool(1)
    try:
        pid1 = _template_pid(first)
        with polyproc.get_context("auto").Pool(1) as second:
            pid2 = _template_pid(second)
            t0 = time.monotonic()
            first.close()
            first.join()
            assert time.monotonic() - t0 < 3.0
            assert _gone(pid1), "the first pool's template outlived it"
            assert psutil.pid_exists(pid2)
            assert second.apply(_targets.square, (3,)) == 9
        assert _gone(pid2)
    finally:
        first.terminate()
        first.join()


@pytest.mark.timeout(60)
def test_a_woken_template_closes_the_first_workers_channels() -> None:
    """Forked after the first workers, the template closes its copies of their channels
    when woken, so the workers it forks never hold another worker's channel."""
    with polyproc.get_context("auto").Pool(2) as p:
        pool_fds = set()
        for h in p._engine.workers.handles.values():
            pool_fds |= {h.fd, h.conn.fileno(), h.proc.sentinel}
        tpid = _template_pid(p)
        with pytest.raises(polyproc.WorkerLostError):
            p.apply(os._exit, (3,))
        assert p.apply(_targets.square, (2,)) == 4  # the template is awake now
        deadline = time.monotonic() + 5
        while True:  # polling its fd table: it closes them as it wakes
            left = {int(fd) for fd in os.listdir(f"/proc/{tpid}/fd")} & pool_fds
            held = {
                fd
                for fd in left
                if os.readlink(f"/proc/{tpid}/fd/{fd}") == os.readlink(f"/proc/self/fd/{fd}")
            }
            if not held:
                break
            assert time.monotonic() < deadline, f"the template kept {held}"
            time.sleep(0.01)


@pytest.mark.timeout(60)
def test_a_forked_child_does_not_keep_a_pools_template_alive() -> None:
    ctx = polyproc.get_context("fork")
    r, w = polyproc.Pipe(duplex=False)
    with ctx.Pool(1) as pool:
        tpid = _template_pid(pool)
        assert pool.apply(_targets.square, (3,)) == 9
        child = ctx.Process(target=_targets.wait_for_eof, args=(r,))
        child.start()  # forked while the pool (and its template) live
        t0 = time.monotonic()
    # the template ends at once (not after the pool's 5 s grace and a SIGKILL)
    assert time.monotonic() - t0 < 3.0
    assert _gone(tpid), "the template outlived its pool"
    w.send("go")  # not close: the fork child holds a copy of this end
    child.join(10)
    w.close()
    r.close()
    assert child.exitcode == 0


NO_C = """
    import os, sys
    sys.modules["polyproc._csem"] = None  # as on a system where the C part did not build
    import polyproc as mp

    def square(x):
        return x * x

    if __name__ == "__main__":
        with mp.Pool(1) as p:
            t = p._engine.workers.template
            assert t is not None and not t.pending
            assert p.apply(square, (3,)) == 9
            try:
                p.apply(os._exit, (3,))
            except mp.WorkerLostError:
                pass
            assert p.apply(square, (4,)) == 16
            print("ok", t.usable())
"""


@pytest.mark.timeout(60)
def test_without_the_c_extension_the_template_is_an_ordinary_fork(tmp_path: Path) -> None:
    script = tmp_path / "no_c.py"
    script.write_text(textwrap.dedent(NO_C))
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("POLYPROC_START_METHOD", None)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "True"]


@pytest.mark.timeout(60)
def test_a_template_that_cannot_be_forked_breaks_the_pool_with_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first workers are forked by the template: if it cannot be forked (EAGAIN,
    ENOMEM), none of them is, and the pool breaks at once with that cause (as a first
    worker's failed start does), leaving no child and no fd behind."""
    import errno

    from polyproc._launch import template
    from polyproc.errors import BrokenProcessPool

    _parked_in_c()
    if not template.fork_is_safe():
        pytest.skip("another thread runs in this test process: no template")

    def refuse(*_args: object) -> tuple[int, object]:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(template, "_fork_template", refuse)
    before = set(os.listdir("/proc/self/fd"))
    had = {c.pid for c in psutil.Process().children(recursive=True)}
    p = polyproc.get_context("auto").Pool(2)
    try:
        with pytest.raises(BrokenProcessPool, match="could not be started") as info:
            p.map(abs, [-1, -2])
        cause = info.value.__cause__
        assert isinstance(cause, BrokenProcessPool) and isinstance(cause.__cause__, OSError)
    finally:
        p.terminate()
        p.join()
    # (The process-wide forkserver and spawn spare, which earlier tests may have started,
    # outlive pools by design.)
    left_children = [
        c
        for c in psutil.Process().children(recursive=True)
        if c.pid not in had and c.name() not in ("polyproc-fsrv", "polyproc-spare")
    ]
    assert not left_children
    deadline = time.monotonic() + 5
    while (left := set(os.listdir("/proc/self/fd")) - before) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the fd table: the engine closes them as it ends
    assert not {fd for fd in left if os.path.exists(f"/proc/self/fd/{fd}")}, left
