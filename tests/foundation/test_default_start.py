"""The default start method, "auto" (issue 11): fork's semantics where safe, forkserver's safety.

Each of the issue's seven cases is a test here. Whole programs run as scripts in
their own interpreter, under a hard timeout, so a hang or a process explosion
fails one test and nothing else; their process trees are killed at the end.
"""

from __future__ import annotations

import logging
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
PY313 = Path("/root/.pyenv/versions/3.13.0/bin/python")


def _env(method: str | None) -> dict[str, str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [SRC, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        ),
    )
    env.pop("POLYPROC_START_METHOD", None)
    if method is not None:
        env["POLYPROC_START_METHOD"] = method
    return env


def _kill_tree(proc: psutil.Process) -> None:
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(family, timeout=5)


def run_script(
    tmp_path: Path,
    source: str,
    method: str | None = None,
    *,
    timeout: float = 60,
    python: str = sys.executable,
    args: tuple[str, ...] = (),
) -> tuple[int, str, str, int]:
    """Run ``source`` as a script; (returncode, stdout, stderr, most processes seen at once)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        popen = subprocess.Popen(
            [python, *args, str(script)],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            env=_env(method),
            cwd=tmp_path,
        )
    ps = psutil.Process(popen.pid)
    most = 1
    deadline = time.monotonic() + timeout
    try:
        while popen.poll() is None:
            try:
                most = max(most, 1 + len(ps.children(recursive=True)))
            except psutil.Error:
                pass
            if time.monotonic() > deadline or most > 40:
                break
            try:
                popen.wait(0.02)  # sampling the process count while it runs
            except subprocess.TimeoutExpired:
                pass
    finally:
        _kill_tree(ps)
        popen.wait()
    if time.monotonic() > deadline:
        pytest.fail(f"the script did not finish within {timeout} s: {err.read_text()[-2000:]}")
    return popen.returncode, out.read_text(), err.read_text(), most


GUARDLESS = """
    import polyproc as mp
    def f(x): return x * 2
    with mp.Pool(2) as p: print(p.map(f, range(4)))
"""


# -- 1. a main module without a guard ----------------------------------------------------------
@pytest.mark.timeout(90)
def test_guardless_script_runs_under_the_default(tmp_path: Path) -> None:
    rc, out, err, most = run_script(tmp_path, GUARDLESS)
    assert rc == 0, err
    assert out.strip() == "[0, 2, 4, 6]"
    assert most <= 5, most  # the script, a template, two workers


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_guardless_script_is_refused_under_spawn_and_forkserver(
    tmp_path: Path, method: str
) -> None:
    rc, out, err, most = run_script(tmp_path, GUARDLESS, method)
    assert rc != 0
    assert "[0, 2, 4, 6]" not in out
    assert "bootstrapping phase" in err and "if __name__ == '__main__':" in err, err
    assert most <= 8, most  # never an explosion
    # One error, in the parent, where the program can catch it: the RuntimeError itself
    # (not a BrokenProcessPool around it), and no child printing it again.
    printed = sum(
        1
        for line in err.splitlines()
        if line.strip().startswith("An attempt has been made to start a new process")
    )
    assert printed == 1, err
    assert "RuntimeError: " in err and "BrokenProcessPool" not in err, err
    assert "could not be prepared" not in err, err


GUARDLESS_CAUGHT = """
    import polyproc as mp
    def f(x): return x * 2
    try:
        with mp.Pool(2) as p:
            p.map(f, range(4))
    except RuntimeError as exc:
        if __name__ != "__main__":
            raise  # a child importing us: let the refusal stand
        assert type(exc) is RuntimeError, type(exc)
        assert "bootstrapping phase" in str(exc)
        print("caught", __name__)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_guardless_refusal_is_one_catchable_runtime_error(tmp_path: Path, method: str) -> None:
    """The parent catches it as a plain RuntimeError; the refusing children stay quiet."""
    rc, out, err, most = run_script(tmp_path, GUARDLESS_CAUGHT, method)
    assert rc == 0, err
    # The parent catches it; the refusing children (re-raising it) say nothing.
    assert out.splitlines() == ["caught __main__"], (out, err)
    assert "bootstrapping" not in err, err
    assert most <= 8, most


# -- 2. worker logging -----------------------------------------------------------------------
LOGGING = """
    import logging, sys
    import polyproc as mp

    def work(x):
        logging.getLogger("app").info("working on %s", x)
        return x

    def child():
        logging.warning("warning from %s", mp.current_process().name)

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, format="%(processName)s: %(message)s")
        if sys.argv[1:] == ["stderr"]:
            mp.log_to_stderr(logging.INFO)
        with mp.Pool(2) as p:
            print(p.map(work, range(4)))
        q = mp.Process(target=child, name="the-child")
        q.start()
        q.join()
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_worker_logging_reaches_the_parents_handlers(tmp_path: Path, method: str | None) -> None:
    rc, out, err, _ = run_script(tmp_path, LOGGING, method)
    assert rc == 0, err
    prefix = {
        None: "ForkPoolWorker-",
        "spawn": "SpawnPoolWorker-",
        "forkserver": "ForkServerPoolWorker-",
    }[method]
    lines = err.splitlines()
    for x in range(4):
        mine = [ln for ln in lines if ln.endswith(f": working on {x}")]
        assert len(mine) == 1, err  # formatted once: no duplicates
        assert mine[0].startswith(prefix), err
    assert lines.count("the-child: warning from the-child") == 1, err


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_log_to_stderr_shows_child_events(tmp_path: Path, method: str | None) -> None:
    (tmp_path / "x").mkdir()
    rc, out, err, _ = run_script(
        tmp_path / "x", LOGGING.replace('sys.argv[1:] == ["stderr"]', "True"), method
    )
    assert rc == 0, err
    lines = err.splitlines()
    assert lines.count("[INFO/the-child] child process calling self.run()") == 1, err
    assert lines.count("[INFO/the-child] process exiting with exitcode 0") == 1, err
    assert "the-child: child process calling self.run()" not in lines, err  # not twice


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_any_parent_handler_gets_child_records(method: str) -> None:
    """Beyond the stdlib: a handler object of the parent's sees a spawn child's record."""
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("polyproc.tests.forwarded")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        p = polyproc.get_context(method).Process(
            target=_targets.log_info, args=("polyproc.tests.forwarded", "hello %s", 7)
        )
        p.start()
        p.join(10)
        assert p.exitcode == 0
    finally:
        logger.removeHandler(handler)
    mine = [r for r in seen if r.getMessage() == "hello 7"]
    assert len(mine) == 1
    assert mine[0].processName == p.name


# -- 3. fast: the import path ----------------------------------------------------------------
def _newly_imported(heavy: tuple[str, ...], statement: str) -> str:
    """Which of ``heavy`` a fresh interpreter imports running ``statement``, less what it
    had loaded before (a site hook may import inspect: 3.13 here; pathlib: this VM)."""
    code = (
        f"import sys; heavy = {heavy!r}; before = {{m for m in heavy if m in sys.modules}}; "
        f"{statement}; print(sorted(m for m in heavy if m in sys.modules and m not in before))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(None),
        timeout=20,
        check=True,
    ).stdout.strip()


@pytest.mark.timeout(30)
def test_import_polyproc_is_light() -> None:
    heavy = ("dataclasses", "inspect", "concurrent.futures", "ctypes", "logging", "asyncio")
    assert _newly_imported(heavy, "import polyproc") == "[]"


@pytest.mark.timeout(30)
def test_a_spawned_childs_boot_module_is_light() -> None:
    """Every spawned child and fork server imports ``polyproc._launch.spawn`` as it boots:
    pathlib, traceback and queue (~11 ms of a clean interpreter) are not on that path."""
    statement = "import polyproc._launch.spawn, polyproc._launch.thread"
    assert _newly_imported(("pathlib", "traceback", "queue"), statement) == "[]"


POOL_PATH = """
    import os, sys
    import polyproc as mp

    HEAVY = ("dataclasses", "inspect", "cloudpickle")
    try:
        from polyproc._csem import prctl  # spares every child ctypes (optional: a compiler)
        HEAVY += ("ctypes",)
    except ImportError:
        pass

    # Until a task fails: concurrent.futures (and logging with it), traceback, the
    # cluster backends (issue 11: 3-4 ms of a short script the stdlib does not pay).
    UNTIL_FAILURE = ("logging", "concurrent.futures", "traceback", "polyproc.backends")

    def loaded(_):
        return sorted(m for m in HEAVY if m in sys.modules)

    def loaded_until_failure(_):
        return sorted(m for m in HEAVY + UNTIL_FAILURE if m in sys.modules)

    if __name__ == "__main__":
        early = set(loaded_until_failure(0))
        before = set(loaded(0))
        with mp.Pool(1) as p:
            first = p.apply(loaded_until_failure, (0,))
            ok = sorted(set(loaded_until_failure(0)) - early)
            first = sorted(set(first) - early)
            try:
                p.apply(os._exit, (3,))  # a crash: the replacement comes from the template
            except mp.WorkerLostError:
                pass
            replacement = p.apply(loaded, (0,))
        print(ok, first, sorted(set(loaded(0)) - before), sorted(set(replacement) - before))
"""


@pytest.mark.timeout(60)
def test_pool_path_stays_light(tmp_path: Path) -> None:
    """A pool's creation, and its workers (first and replacement), import no dataclasses,
    no inspect, no cloudpickle for a plain function, and (with the C extension) no ctypes;
    until a task fails, neither logging, concurrent.futures, traceback nor the backends:
    each is milliseconds of a short script (a worker pickled with cloudpickle would import
    it before it could start; PDEATHSIG through ctypes cost every child ~2 ms)."""
    rc, out, err, _ = run_script(tmp_path, POOL_PATH)
    assert rc == 0, err
    assert out.strip() == "[] [] [] []", (out, err)


@pytest.mark.timeout(60)
def test_a_main_that_cannot_be_imported_pays_cloudpickle_only_for_its_own_code() -> None:
    """Under ``python -c`` (a REPL, a notebook) a child cannot import ``__main__``: what
    names it (a function defined there) goes by value, through cloudpickle, but a worker's
    READY, a builtin's task and its result name nothing of it and stay plain pickle
    (cloudpickle's import is ~26 ms, in every worker's first message)."""
    program = (
        "import sys, polyproc\n"
        "with polyproc.Pool(2) as p:\n"
        "    here = p.apply(eval, (\"'cloudpickle' in __import__('sys').modules\",))\n"
        "    print(p.map(abs, [-1, -2]), here, 'cloudpickle' in sys.modules)\n"
        "    print(p.apply(lambda: 7), 'cloudpickle' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "POLYPROC_START_METHOD"}
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=50, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[1, 2] False False", "7 True"], out


# -- 4. fds another thread opens do not leak into workers --------------------------------------
SUBPROCESS_LOOP = """
    import subprocess, sys
    import polyproc as mp
    from polyproc.futures import ProcessPoolExecutor

    def square(x):
        return x * x

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1] if len(sys.argv) > 1 else None)
        for _ in range(50):
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                subprocess.run(["echo", "x"], capture_output=True, timeout=5)
                assert ex.submit(square, 3).result(timeout=30) == 9
        print("ok")
"""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("method", ["auto", "fork"])
def test_subprocess_right_after_an_executor_never_hangs(tmp_path: Path, method: str) -> None:
    rc, out, err, _ = run_script(
        tmp_path,
        SUBPROCESS_LOOP.replace("sys.argv[1] if len(sys.argv) > 1 else None", repr(method)),
        timeout=140,
    )
    assert rc == 0, err
    assert out.strip() == "ok"


# -- 5. a Manager made after the executor ------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["auto", "fork"])
def test_manager_proxy_argument_after_the_executor(method: str) -> None:
    ctx = polyproc.get_context(method)
    from polyproc.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        with ctx.Manager() as m:
            d = m.dict(a=41)
            assert ex.submit(_targets.get_item, d, "a").result(timeout=30) == 41


# -- 6. no fork-with-threads warning because of our threads (3.12+) ---------------------------
WARNINGS = """
    import polyproc as mp
    from polyproc.futures import ProcessPoolExecutor

    def square(x):
        return x * x

    def nothing():
        pass

    if __name__ == "__main__":
        for method in ("fork", "auto"):
            ctx = mp.get_context(method)
            with ctx.Pool(2, maxtasksperchild=1) as p:   # replacements, forked later
                assert p.map(square, range(6)) == [x * x for x in range(6)]
                q = ctx.Process(target=nothing)          # while the pool's threads live
                q.start()
                q.join()
                assert q.exitcode == 0
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                assert ex.submit(square, 4).result() == 16
            with ctx.Manager() as m:
                assert m.list([1])[0] == 1
        print("ok")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "python",
    [
        sys.executable,
        pytest.param(str(PY313), marks=pytest.mark.skipif(not PY313.exists(), reason="no 3.13")),
    ],
)
def test_no_fork_with_threads_warning_from_our_threads(tmp_path: Path, python: str) -> None:
    if python != sys.executable:
        probe = subprocess.run([python, "-c", "import cloudpickle"], capture_output=True)
        if probe.returncode:
            pytest.skip("3.13 lacks cloudpickle")
    rc, out, err, _ = run_script(
        tmp_path,
        WARNINGS,
        None,
        timeout=110,
        python=python,
        args=("-W", "error::DeprecationWarning"),
    )
    assert rc == 0, err
    assert "DeprecationWarning" not in err, err
    assert out.strip() == "ok"


# -- 7. forkserver children see the client's current environment -----------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["forkserver", "auto", "spawn"])
def test_children_see_the_current_environment(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = polyproc.get_context(method)
    warm = ctx.Process(target=_targets.noop)  # the server exists before the change
    warm.start()
    warm.join(10)
    monkeypatch.setenv("POLYPROC_TEST_ENV", f"now-{method}")
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=_targets.send_env, args=(w, "POLYPROC_TEST_ENV"))
    p.start()
    w.close()
    assert r.recv() == f"now-{method}"
    p.join(10)
    r.close()


# -- the default's choice ----------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_auto_sees_state_set_after_import(tmp_path: Path) -> None:
    """Fork semantics: globals set in the main guard reach the workers (not the forkserver)."""
    rc, out, err, _ = run_script(
        tmp_path,
        """
        import polyproc as mp
        SETTING = "import time"

        def read(_):
            return SETTING, mp.current_process().name.split("-")[0]

        if __name__ == "__main__":
            SETTING = "set in main"
            with mp.Pool(2) as p:
                print(p.map(read, range(2)))
    """,
    )
    assert rc == 0, err
    assert out.strip() == "[('set in main', 'ForkPoolWorker'), ('set in main', 'ForkPoolWorker')]"


@pytest.mark.timeout(30)
def test_auto_uses_the_forkserver_when_a_user_thread_runs() -> None:
    import threading

    from polyproc._launch.template import parked

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with parked() as safe:
            assert not safe
        r, w = polyproc.Pipe(duplex=False)
        p = polyproc.get_context("auto").Process(target=_targets.send_value, args=(w, "hi"))
        p.start()
        w.close()
        assert r.recv() == "hi"
        p.join(10)
        assert type(p._handle).__name__ == "StatusPipeHandle"  # a forkserver child
        r.close()
    finally:
        stop.set()
        t.join()


@pytest.mark.timeout(60)
def test_auto_pool_replaces_a_crashed_worker_from_its_template() -> None:
    with polyproc.get_context("auto").Pool(1) as p:
        with pytest.raises(polyproc.WorkerLostError):
            p.apply(os._exit, (3,))
        assert p.apply(_targets.square, (5,)) == 25


@pytest.mark.timeout(60)
def test_a_pool_outlives_its_template() -> None:
    """If the template dies (OOM killer, kill -9), new workers come another way."""
    import signal

    with polyproc.get_context("auto").Pool(1) as p:
        template = p._engine.workers.template
        if template is None:
            pytest.skip("another thread runs in this test process: no template")
        os.kill(template._handle.pid, signal.SIGKILL)
        template._handle.wait(10)
        assert p.apply(_targets.square, (6,), retries=2) == 36
        with pytest.raises(polyproc.WorkerLostError):
            p.apply(os._exit, (3,))  # its replacement cannot come from the template
        assert p.apply(_targets.square, (7,)) == 49


SPARE = """
    import os, signal, time
    import psutil
    import polyproc as mp
    from polyproc._launch.server import SPARES

    def pid(_):
        return os.getpid()

    def square(x):
        return x * x

    def template():
        deadline = time.monotonic() + 10
        while True:  # polling the OS: a parked template names itself when it wakes
            found = [c for c in psutil.Process().children() if c.name() == "polyproc-tmpl"]
            if found:
                return found[0]
            assert time.monotonic() < deadline, "no template"
            time.sleep(0.01)

    def spares_of(tmpl):
        deadline = time.monotonic() + 10
        while True:  # polling the OS for the spares' birth (the template forks them after a reply)
            found = [c for c in tmpl.children() if c.name() == "polyproc-tspare"]
            if len(found) == SPARES:
                return found
            assert time.monotonic() < deadline, "no spares"
            time.sleep(0.01)

    def standby_of(pool):
        deadline = time.monotonic() + 10
        while True:  # polling: the engine makes it the next time it is idle
            ready = pool._engine.workers.standby.ready
            if ready is not None:
                return ready[0].pid
            assert time.monotonic() < deadline, "no standby"
            time.sleep(0.01)

    if __name__ == "__main__":
        with mp.Pool(1, maxtasksperchild=1) as p:
            p.apply(pid, (0,))  # its worker retires: the template forks a replacement
            standby = standby_of(p)  # then, the pool idle, a standby starts on its spare
            forked_by_template = psutil.Process(standby).ppid() == template().pid
            second = p.apply(pid, (0,))  # on that replacement, which retires: the standby
            third = p.apply(pid, (0,))  # takes over, with no fork (and retires in turn)
            print(second != standby, third == standby and forked_by_template)
        with mp.Pool(1) as p:
            try:
                p.apply(os._exit, (3,))
            except mp.WorkerLostError:
                pass
            tmpl = template()
            doomed = [standby_of(p)] + [spare.pid for spare in spares_of(tmpl)]
            for dead in doomed:
                os.kill(dead, signal.SIGKILL)  # standby and spares dead: the template forks it
            try:
                p.apply(os._exit, (3,))
            except mp.WorkerLostError:
                pass
            print(p.apply(square, (7,)))
            last = [psutil.Process(standby_of(p))] + spares_of(tmpl)
        for child in last:
            child.wait(10)  # they die with their template, at the pool's close
        print("spare gone")
"""


@pytest.mark.timeout(90)
def test_a_template_keeps_a_standby_for_the_next_replacement(tmp_path: Path) -> None:
    """After a pool's first replacement its template forks a spare (``polyproc-tspare``),
    on which the pool starts a standby worker when idle (``_pool/standby.py``): the next
    replacement is that standby, with no fork (issue 11: a replacement in <= 3 ms). With
    the standby and the spares dead the template forks the worker; standby and spares die
    with their template."""
    rc, out, err, _ = run_script(tmp_path, SPARE)
    assert rc == 0, err
    assert out.split() == ["True", "True", "49", "spare", "gone"], (out, err)
