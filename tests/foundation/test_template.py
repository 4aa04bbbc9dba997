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
from typing import Any

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


def _links(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass  # closed meanwhile
    return out


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
        mine = _links(os.getpid())
        while True:  # polling its fd table: it closes them as it wakes
            its = _links(tpid)  # (it is forking its spares meanwhile: its table moves)
            held = {fd for fd in pool_fds if fd in its and its[fd] == mine.get(fd)}
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


def _spares(template: object) -> list[int]:
    """The pids of the spares the pool holds, in the order it uses them, once it holds all
    the template keeps (``Spares.collect`` reads announcements when a start needs one):
    the template is then idle, nothing of it in flight."""
    from polyproc._launch.server import SPARES

    deadline = time.monotonic() + 10
    while True:
        with template._lock:  # type: ignore[attr-defined]
            spares = template._spares  # type: ignore[attr-defined]
            spares.collect(template._boot, 0.05)  # type: ignore[attr-defined]
            if len(spares.held) >= SPARES:
                return [pid for pid, _ in spares.held]
        assert time.monotonic() < deadline, "no spare announced"
        time.sleep(0.01)  # polling: the template announces them after the request's reply


def _settled_links(pid: int) -> dict[int, str]:
    """``_links`` of a process that is done with what it was doing (the template closes its
    copy of a spare's socket just after announcing it): the same twice, 20 ms apart."""
    deadline = time.monotonic() + 5
    links = _links(pid)
    while True:
        time.sleep(0.02)  # polling another process's fd table for a quiet moment
        again = _links(pid)
        if again == links or time.monotonic() > deadline:
            return again
        links = again


def _standby(pool: object) -> tuple[Any, ...]:
    """The pool's standby worker (``_pool/standby.py``), once the engine has made it."""
    deadline = time.monotonic() + 10
    while True:  # polling: the engine makes it the next time it is idle
        ready = pool._engine.workers.standby.ready  # type: ignore[attr-defined]
        if ready is not None:
            return tuple(ready)
        assert time.monotonic() < deadline, "no standby"
        time.sleep(0.01)


@pytest.fixture
def no_standby(monkeypatch: pytest.MonkeyPatch) -> None:
    """No standby workers: the spares beneath them are what is tested."""
    from polyproc._pool import standby

    monkeypatch.setattr(standby, "MAX_FAILURES", 0)


def _pool_fds(pool: object, standby: bool = False) -> int:
    """How many fds this process has, less the sockets of the spares it holds and those of
    its live workers (a new worker's ``Process`` holds a copy of its channel for a while),
    and, with ``standby``, once it is made, those of its standby worker."""
    template = pool._engine.workers.template  # type: ignore[attr-defined]
    spare = _standby(pool) if standby else ()
    with template._lock:
        links = _links(os.getpid())
        for _, sock in template._spares.held:
            links.pop(sock, None)
    workers = set()
    for h in pool._engine.workers.handles.values():  # type: ignore[attr-defined]
        conn = h.conn.fileno() if h.conn is not None else -1
        for fd in (h.fd, conn, h.proc.sentinel, h._lead_fd):  # a caller's lead has a dup
            workers.add(links.get(fd))
    if spare:
        proc, ours, theirs, _ = spare
        for fd in (ours.fileno(), theirs.fileno(), proc.sentinel):
            workers.add(links.get(fd))
    return sum(link not in workers and "polyproc-journal" not in link for link in links.values())


def _crash(pool: object) -> None:
    with pytest.raises(polyproc.WorkerLostError):
        pool.apply(os._exit, (3,))  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_standby")
def test_a_replacement_does_not_wait_for_the_template() -> None:
    """The template hands each spare it forks to the pool (``spares.py``): a replacement
    goes to a spare straight from the pool, so it comes even while the template cannot
    run (stopped here; in real life, busy with the copy-on-write faults of its last fork,
    ~1.2 ms of each replacement when the pool waited for its reply)."""
    import signal

    with polyproc.get_context("auto").Pool(1, maxtasksperchild=2) as p:
        tpid = _template_pid(p)
        template = p._engine.workers.template  # type: ignore[attr-defined]
        for _ in range(2):  # its first worker retires as it is sent its second task: the
            p.apply(_targets.getpid_of, (0,))  # template forks the next one, then a spare
        spare = _spares(template)[0]
        os.kill(tpid, signal.SIGSTOP)
        try:
            for _ in range(2):  # on the template's worker, which retires at the second: its
                p.apply_async(_targets.getpid_of, (0,)).get(10)  # successor starts on the spare
            on_spare = p.apply_async(_targets.getpid_of, (0,)).get(10)
        finally:
            os.kill(tpid, signal.SIGCONT)
        assert on_spare == spare
        assert p.apply(_targets.square, (3,)) == 9  # the template goes on after it


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_standby")
def test_spares_that_died_waiting_are_replaced_by_asking_the_template() -> None:
    """Spares killed while the pool held them: the next replacement finds them dead (a
    send to each fails) and asks the template instead; the template reports each dead
    spare's status at once and keeps no fd of it; its next spares are used again."""
    import signal

    with polyproc.get_context("auto").Pool(1) as p:
        tpid = _template_pid(p)
        template = p._engine.workers.template  # type: ignore[attr-defined]
        _crash(p)  # the first replacement: asked of the template, which forks spares after it
        assert p.apply(_targets.square, (2,)) == 4
        dead = _spares(template)
        mine, its = _pool_fds(p), _settled_links(tpid)
        for pid in dead:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(psutil.pid_exists(pid) for pid in dead):  # polling: the template reaps them
            assert time.monotonic() < deadline, "the template did not reap its spares"
            time.sleep(0.01)
        _crash(p)
        worker = p.apply(_targets.getpid_of, (0,))
        assert worker not in dead and psutil.Process(worker).ppid() == tpid
        fresh = _spares(template)
        assert not set(fresh) & {*dead, worker}, (fresh, dead, worker)
        _crash(p)
        assert p.apply(_targets.getpid_of, (0,)) == fresh[0]  # on the next spare
        assert _pool_fds(p) == mine
        deadline = time.monotonic() + 5
        while len(now := _links(tpid)) != len(its):  # polling: it closes a dead worker's pipe
            assert time.monotonic() < deadline, (  # once reaped
                sorted(set(now.items()) - set(its.items())),
                sorted(set(its.items()) - set(now.items())),
            )
            time.sleep(0.01)


@pytest.mark.timeout(60)
def test_replacements_on_spares_leak_no_fd_and_hold_none_of_the_templates() -> None:
    """Each spare's socket is closed by the pool once the spare has its worker, its
    status pipe's write end once the template has it; a worker that was a spare holds no
    fd of the template's (its sockets, its other workers' status pipes) nor the pool's;
    nor does the standby worker the pool keeps on a spare (``_pool/standby.py``)."""
    with polyproc.get_context("auto").Pool(2) as p:
        tpid = _template_pid(p)
        for _ in range(3):
            _crash(p)
        assert p.apply(_targets.square, (2,)) == 4
        mine = _pool_fds(p, standby=True)
        for _ in range(10):
            _crash(p)
        assert sorted(p.map(_targets.square, range(4), chunksize=1)) == [0, 1, 4, 9]
        assert _pool_fds(p, standby=True) == mine
        sockets = {link for link in _links(tpid).values() if link.startswith("socket:")}
        links = _links(os.getpid())
        handles = list(p._engine.workers.handles.values())  # type: ignore[attr-defined]
        procs = [h.proc for h in handles] + [_standby(p)[0]]
        sentinels = {links[proc.sentinel] for proc in procs}
        for proc in procs:
            held = list(_links(proc.pid).values())
            assert psutil.Process(proc.pid).ppid() == tpid
            assert not set(held) & (sockets | sentinels), set(held) & (sockets | sentinels)
            assert sum(link.startswith("socket:") for link in held) == 1, held  # its channel


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
            pids = set()
            for i in range(4):  # asked of the template, then on the spares it forks after
                try:
                    p.apply(os._exit, (3,))
                except mp.WorkerLostError:
                    pass
                assert p.apply(square, (i,)) == i * i
                pids.add(p.apply(os.getpid))
            print("ok", t.usable(), len(pids))
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
    assert out.stdout.split() == ["ok", "True", "4"]


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


@pytest.mark.timeout(60)
def test_a_terminated_pool_ends_its_parked_template_beside_its_workers() -> None:
    """``terminate()`` sends a parked template ``_END`` as it kills the workers: the
    template kills and reaps its first workers itself, writes each status, and exits 0
    (it was SIGKILLed after they had died, one wait after the other)."""
    _parked_in_c()
    p = polyproc.get_context("auto").Pool(2)
    try:
        assert p.map(_targets.square, [1, 2]) == [1, 4]
        template = p._engine.workers.template  # type: ignore[attr-defined]
        if template is None:
            pytest.skip("another thread runs in this test process: no template")
        handle = template._handle
        pids = [h.proc.pid for h in p._engine.workers.handles.values()]  # type: ignore[attr-defined]
    finally:
        p.terminate()
        p.join()
    assert handle.returncode == 0, handle.returncode  # it ended itself: not killed
    assert all(_gone(pid) for pid in pids), pids  # reaped, not left to init as zombies


@pytest.mark.timeout(60)
def test_a_default_socket_timeout_does_not_reach_the_templates_socket() -> None:
    """``socket.setdefaulttimeout`` makes every new socket non-blocking underneath; the
    pool's connection to its template must stay blocking, or the first request's reply
    is not there yet when read: that connection is dropped and the replacement fails
    (the next one then comes from a spare the template forked meanwhile)."""
    import socket

    _parked_in_c()
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        with polyproc.get_context("auto").Pool(1) as p:
            tpid = _template_pid(p)
            template = p._engine.workers.template  # type: ignore[attr-defined]
            with pytest.raises(polyproc.WorkerLostError):
                p.apply(os._exit, (3,))
            assert p.apply(os.getppid) == tpid
            assert template._conn is not None and not template._conn.closed
    finally:
        socket.setdefaulttimeout(old)
