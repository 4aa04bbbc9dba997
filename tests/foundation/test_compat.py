"""Drop-in behaviour measured by CPython's own suite (issue 12): each difference found there.

Every test that starts a child takes ``ctx`` (or ``start_method``), so it runs
under fork, spawn and forkserver.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

import polyproc
import polyproc.connection
import polyproc.heap
import polyproc.managers
import polyproc.reduction
import polyproc.shared_memory
import polyproc.sharedctypes
import polyproc.util
from polyproc import _context

from . import _compat_targets as targets

pytestmark = pytest.mark.timeout(60)
SRC = Path(polyproc.__file__).resolve().parent.parent


# -- the child's life -------------------------------------------------------------------------------


def test_child_joins_its_non_daemon_threads_before_exiting(ctx: Any) -> None:
    release, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=targets.start_worker_thread, args=(release, done))
    p.start()
    release.set()
    p.join(30)
    assert p.exitcode == 0
    assert done.is_set()  # the thread ran to its end: the child waited for it


def test_child_default_start_method_is_its_own(ctx: Any) -> None:
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.report_start_method, args=(w,))
    p.start()
    w.close()
    assert r.recv() == ctx.get_start_method()
    p.join(30)


def test_main_thread_native_id_is_the_childs(ctx: Any) -> None:
    q = ctx.Queue()
    p = ctx.Process(target=_native_id, args=(q,))
    p.start()
    child_id = q.get(timeout=30)
    p.join(30)
    assert child_id != threading.main_thread().native_id


def _native_id(q: Any) -> None:
    q.put(threading.main_thread().native_id)


def test_interpreter_flags_reach_children(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "flags.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(SRC)!r})
        sys.path.insert(0, {str(SRC.parent)!r})
        import polyproc
        from tests.foundation import _compat_targets as t
        if __name__ == "__main__":
            ctx = polyproc.get_context({start_method!r})
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=t.report_flags, args=(w,))
            p.start()
            got = r.recv()
            p.join()
            print(json.dumps([tuple(sys.flags), got]))
    """)
    )
    out = subprocess.run(
        [sys.executable, "-E", "-S", "-O", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    mine, childs = json.loads(out.stdout)
    assert mine == childs


# -- socket.setdefaulttimeout() -----------------------------------------------------------------------


def test_default_socket_timeout_does_not_reach_polyproc(ctx: Any) -> None:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.1)
    try:
        parent, child = ctx.Pipe(duplex=True)
        listener = polyproc.connection.Listener(family="AF_INET")
        q = ctx.Queue()
        gate = ctx.Event()
        p = ctx.Process(target=targets.send_after, args=(gate, child, listener.address, q))
        p.start()
        child.close()
        # Everything below waits longer than the default timeout: the delay under test.
        threading.Timer(0.5, gate.set).start()
        assert parent.recv() == 123
        conn = listener.accept()
        assert conn.recv() == 456
        assert q.get(timeout=30) == "queued"
        conn.close()
        listener.close()
        parent.close()
        p.join(30)
        assert p.exitcode == 0
    finally:
        socket.setdefaulttimeout(old)


# -- managers -----------------------------------------------------------------------------------------


def test_proxy_inside_a_managed_object_lives_as_long_as_it_is_held(ctx: Any) -> None:
    with ctx.Manager() as m:
        pets = m.dict(ferrets=2, hamsters=4)
        supplies = m.dict(water=10)
        d = m.dict(pets=pets, supplies=supplies)
        del pets, supplies
        gc.collect()
        assert d["pets"]["ferrets"] == 2
        pets, supplies = d["pets"], d["supplies"]
        d.clear()  # the server's copies go: ours must keep the objects alive
        assert pets["hamsters"] == 4
        assert supplies["water"] == 10
        holder = m.list([pets, supplies])
        holder[0]["marmots"] = 1
        del pets, supplies
        gc.collect()
        assert holder[0]["marmots"] == 1


def test_list_and_dict_proxy_iteration_is_the_stdlibs(ctx: Any) -> None:
    with ctx.Manager() as m:
        a = m.list(range(10))
        it = iter(a)
        assert list(it) == list(range(10))
        assert list(it) == []
        it = iter(a)
        a[0] = 100
        assert next(it) == 100  # sees a change made while iterating
        d = m.dict()
        for i in range(65, 70):
            d[i] = chr(i)
        assert list(d) == list(range(65, 70))
        it = iter(d)
        d.clear()
        with pytest.raises(RuntimeError):
            next(it)


@pytest.mark.parametrize("start_method", ["fork"], indirect=True)
def test_xmlrpclib_manager_limits_values_to_xmlrpc(ctx: Any) -> None:
    with polyproc.managers.SyncManager(serializer="xmlrpclib", ctx=ctx) as m:
        q = m.Queue()
        q.put(("hello", None, True, 2.25, b"bytes"))
        assert q.get() == ["hello", None, True, 2.25, b"bytes"]  # a tuple arrives as a list
        with pytest.raises(TypeError):
            q.put(os.getpid)
    with pytest.raises(ValueError):
        polyproc.managers.SyncManager(serializer="json")


def test_shared_memory_manager_unlinks_what_it_made(ctx: Any) -> None:
    smm = polyproc.managers.SharedMemoryManager(ctx=ctx)
    with pytest.raises(ValueError):
        smm.SharedMemory(size=9)
    smm.start()
    sl = smm.ShareableList(range(5))
    shm = smm.SharedMemory(size=64)
    assert len(polyproc.shared_memory.ShareableList(name=sl.shm.name)) == 5
    names = [sl.shm.name, shm.name]
    sl.shm.close()
    shm.close()
    smm.shutdown()
    for name in names:
        with pytest.raises(FileNotFoundError):
            polyproc.shared_memory.SharedMemory(name=name)


# -- small names and shapes ---------------------------------------------------------------------------


def test_listener_refuses_a_windows_pipe_address(ctx: Any) -> None:
    with pytest.raises(ValueError):
        polyproc.connection.Listener(r"\\.\pipe\x")
    assert polyproc.connection.families == ["AF_INET", "AF_UNIX"]
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.report_windows_pipe_listener, args=(w,))
    p.start()
    w.close()
    assert r.poll(30)
    assert r.recv() == "ValueError"  # the same in a child of every start method
    p.join(30)


def test_challenge_helpers_raise_authentication_error() -> None:
    class Bogus:
        def recv_bytes(self, size: int) -> bytes:
            return b"something bogus"

        def send_bytes(self, data: bytes) -> None:
            pass

    with pytest.raises(polyproc.AuthenticationError):
        polyproc.connection.deliver_challenge(Bogus(), b"abc")
    with pytest.raises(polyproc.AuthenticationError):
        polyproc.connection.answer_challenge(Bogus(), b"abc")
    a, b = polyproc.Pipe()
    t = threading.Thread(target=polyproc.connection.answer_challenge, args=(b, b"key"))
    t.start()
    polyproc.connection.deliver_challenge(a, b"key")  # the right key passes
    t.join(30)


def test_event_repr_has_the_stdlib_shape(ctx: Any) -> None:
    e = ctx.Event()
    assert repr(e).startswith("<Event at 0x") and repr(e).endswith(" unset>")
    p = ctx.Process(target=targets.set_event, args=(e,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert repr(e).startswith("<Event at 0x") and repr(e).endswith(" set>")  # set by the child


def test_sharedctypes_copy_of_a_plain_struct(ctx: Any) -> None:
    Foo = targets.Pair
    foo = Foo(2, 5.0)
    bar = polyproc.sharedctypes.copy(foo)
    foo.x = 0
    assert (bar.x, bar.y) == (2, 5.0)
    assert copy.copy(ctx.RawValue("i", 7)).value == 7
    shared = ctx.RawValue(Foo, 3, 1.5)
    for dup in (copy.copy(shared), copy.deepcopy(shared)):
        dup.x = 9  # a distinct object with the same contents, not an alias
        assert (shared.x, dup.x, dup.y) == (3, 9, 1.5)
    dup = copy.copy(shared)
    p = ctx.Process(target=targets.bump_pair, args=(shared,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert (shared.x, dup.x) == (103, 3)  # the child wrote the shared one; the copy is private


def test_start_method_api_is_the_stdlibs() -> None:
    # The stdlib's list (3.11's test_get_all accepts only fork/spawn first, forkserver last),
    # the platform default first as 3.14 lists it: "auto" reports as "fork" and is not listed.
    assert polyproc.get_all_start_methods() == ["fork", "spawn", "forkserver"]
    saved = _context._defaults._method
    try:
        for method in ("spawn", "forkserver", "auto"):
            polyproc.set_start_method(method, force=True)  # setting one does not reorder it
            assert polyproc.get_all_start_methods() == ["fork", "spawn", "forkserver"]
            assert polyproc.get_start_method() in polyproc.get_all_start_methods()
    finally:
        _context._defaults._method = saved
    for method, name in [
        ("fork", "ForkContext"),
        ("spawn", "SpawnContext"),
        ("forkserver", "ForkServerContext"),
    ]:
        ctx = polyproc.get_context(method)
        assert type(ctx).__name__ == name
        assert ctx.get_context() is ctx
        with pytest.raises(ValueError):
            ctx.set_start_method("spawn")
        assert ctx.Process.__name__.lower().startswith(method)
    with pytest.raises(TypeError, match="module_names must be a list of strings"):
        polyproc.get_context("forkserver").set_forkserver_preload([1, 2])  # type: ignore[list-item]


def test_forkserver_preload_imports_the_modules_in_the_server() -> None:
    """As the stdlib's: the forkserver imports them once; its children find them loaded."""
    name = "tests.foundation._preload_target"
    ctx = polyproc.get_context("forkserver")
    saved = list(_context._defaults.preload)
    try:
        ctx.set_forkserver_preload(["__main__", name])
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=targets.report_preloaded, args=(w, name))
        p.start()
        w.close()
        assert r.poll(30)
        imported_in, server = r.recv()
        p.join(30)
    finally:
        _context._defaults.preload = saved
    assert imported_in == server  # imported by the forkserver, before it forked the child
    assert name not in sys.modules  # and not by asking for it here


def test_buffer_wrapper_is_shared_with_children(ctx: Any) -> None:
    buf = polyproc.heap.BufferWrapper(4)
    view = buf.create_memoryview().cast("i")
    view[0] = 41
    p = ctx.Process(target=targets.bump, args=(buf,))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and view[0] == 42


def test_reducer_alias() -> None:
    assert polyproc.reducer is polyproc.reduction


# -- util ---------------------------------------------------------------------------------------------


def test_util_logger_is_the_stdlibs() -> None:
    logger = polyproc.util.get_logger()
    assert logger.name == "multiprocessing" and logger.propagate is False
    assert polyproc.get_logger() is logger
    assert (polyproc.util.SUBDEBUG, polyproc.util.SUBWARNING) == (5, 25)


def test_finalize_runs_once_on_collection_or_call() -> None:
    calls: list[str] = []

    class Obj:
        pass

    o = Obj()
    polyproc.util.Finalize(o, calls.append, args=("gc",))
    del o
    gc.collect()
    f = polyproc.util.Finalize(None, calls.append, args=("call",), exitpriority=1)
    assert f.still_active()
    f()
    f()
    assert calls == ["gc", "call"] and not f.still_active()


def test_finalize_exit_priority_order_at_exit() -> None:
    program = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(SRC)!r})
        from polyproc import util
        for p in (1, 10, 5):
            util.Finalize(None, print, args=(p,), exitpriority=p)
        util.Finalize(None, print, args=("never",))  if False else None
    """)
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.split() == ["10", "5", "1"], out.stderr


def test_register_after_fork_runs_in_children(ctx: Any) -> None:
    targets.HOLDER.seen.clear()
    polyproc.util.register_after_fork(targets.HOLDER, targets.after_fork_hook)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.report_after_fork, args=(w,))
    p.start()
    seen = r.recv()
    p.join(30)
    # fork: the child has the parent's registry; spawn/forkserver children start empty.
    assert seen == (["child"] if ctx.get_start_method() == "fork" else [])
    assert targets.HOLDER.seen == []


def test_the_multiprocessing_logger_level_reaches_children(
    start_method: str, tmp_path: Path
) -> None:
    """As the stdlib's: the child's get_logger() has the effective level of the parent's,
    in a program that configured no logging handler (pytest's own would be copied anyway)."""
    script = tmp_path / "levels.py"
    script.write_text(
        textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(SRC)!r})
        sys.path.insert(0, {str(SRC.parent)!r})
        import polyproc, polyproc.util
        from tests.foundation import _compat_targets as t

        def child_level(ctx):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=t.report_logger_level, args=(w,))
            p.start()
            w.close()
            level = r.recv() if r.poll(30) else None
            p.join(30)
            return level

        if __name__ == "__main__":
            ctx = polyproc.get_context({start_method!r})
            polyproc.util.get_logger().setLevel(32)
            first = child_level(ctx)
            polyproc.util.get_logger().setLevel(logging.NOTSET)
            logging.getLogger().setLevel(37)  # inherited from the root logger
            print(first, child_level(ctx))
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["32", "37"], out.stderr


def test_get_temp_dir_is_private_and_stable() -> None:
    d = polyproc.util.get_temp_dir()
    assert os.path.isdir(d) and polyproc.util.get_temp_dir() == d


# -- reduction ----------------------------------------------------------------------------------------


def test_registered_reducer_is_used_by_every_transport(ctx: Any) -> None:
    from polyproc._serialize import reducers

    saved = dict(reducers.table)
    polyproc.reduction.ForkingPickler.register(targets.Point, targets.reduce_point)
    try:
        a, b = ctx.Pipe()
        a.send(targets.Point(1))
        assert b.recv().x == 1001
        q = ctx.Queue()
        q.put(targets.Point(2))
        assert q.get(timeout=30).x == 1002
        with ctx.Pool(1) as pool:
            assert pool.apply(targets.point_x, (targets.Point(3),)) == 1003
        buf = polyproc.reduction.ForkingPickler.dumps(targets.Point(4))
        assert polyproc.reduction.ForkingPickler.loads(buf).x == 1004
    finally:
        reducers.table.clear()
        for k, v in saved.items():
            reducers.register(k, v)


def test_a_socket_travels_as_a_process_argument_and_through_a_pipe(ctx: Any) -> None:
    """As with the stdlib (its reduction registers socket.socket): the receiver gets its fd."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    r, w = ctx.Pipe()
    with a, b, c, d:
        p = ctx.Process(target=targets.answer_on_socket, args=(w, b))
        p.start()
        r.send(d)
        a.settimeout(30)
        c.settimeout(30)
        assert a.recv(100) == b"argument"
        assert c.recv(100) == b"message"
        p.join(30)
        assert p.exitcode == 0
        d.sendall(b"ours still works")  # the sender keeps its own socket
        assert c.recv(100) == b"ours still works"


def test_send_handle_and_dupfd_pass_file_descriptors() -> None:
    a, b = polyproc.Pipe()
    r, w = os.pipe()
    try:
        polyproc.reduction.send_handle(a, w, os.getpid())
        got = polyproc.reduction.recv_handle(b)
        os.write(got, b"x")
        os.close(got)
        a.send(polyproc.reduction.DupFd(w))
        dup = b.recv().detach()
        os.write(dup, b"y")
        os.close(dup)
        assert os.read(r, 2) == b"xy"
    finally:
        os.close(r)
        os.close(w)
        a.close()
        b.close()


# -- fds and bootstrapping ----------------------------------------------------------------------------


def test_closed_queue_never_closes_a_reused_fd_number() -> None:
    q = polyproc.Queue()
    q.put(1)
    assert q.get(timeout=30) == 1
    numbers = {q._side_rs.fileno(), q._side_ws.fileno()}  # type: ignore[attr-defined]
    q.close()
    q.join_thread()
    reused = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
    try:
        assert numbers & set(reused)  # the kernel hands the freed numbers out again
        del q
        gc.collect()
        for fd in reused:
            os.fstat(fd)  # still open: the queue's sockets did not close them by number
    finally:
        for fd in reused:
            os.close(fd)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"], indirect=True)
def test_unguarded_main_module_raises_instead_of_fork_bombing(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "bomb.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import polyproc
        def foo():
            print("123")
        polyproc.set_start_method({start_method!r}, force=True)
        p = polyproc.Process(target=foo)
        p.start()
        p.join()
        sys.exit(p.exitcode)
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode != 0
    assert out.stdout == ""
    assert "RuntimeError" in out.stderr and "bootstrapping phase" in out.stderr


# -- shared memory ------------------------------------------------------------------------------------


def test_shareable_list_behaves_and_pickles_as_the_stdlibs() -> None:
    import pickle

    sl = polyproc.shared_memory.ShareableList(["howdy", b"HoWdY", -273.154, 100, None, True, 42])
    try:
        assert sl.format == "8s8sdqxxxxxx?xxxxxxxx?q"
        sl[4] = "some"  # a slot may change type
        assert sl.format == "8s8sdq8sxxxxxxx?q" and sl[4] == "some"
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[4] = "far too many"
        sl[0] = "encodés"  # exactly 8 bytes of UTF-8
        assert (sl[0], sl[1]) == ("encodés", b"HoWdY")
        with pytest.raises(IndexError):
            sl[7]
        other = pickle.loads(pickle.dumps(sl))
        other[3] = "changed"
        assert sl[3] == "changed"
        other.shm.close()
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_is_interoperable_with_the_stdlibs() -> None:
    ours = polyproc.shared_memory.ShareableList([1, "two", None, 4.5, b"five"])
    program = textwrap.dedent(f"""
        from multiprocessing import resource_tracker, shared_memory
        theirs = shared_memory.ShareableList(name={ours.shm.name!r})
        resource_tracker.unregister(theirs.shm._name, "shared_memory")  # not theirs to unlink
        print(list(theirs))
        theirs[1] = "deux"
        theirs.shm.close()
    """)
    try:
        out = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == "[1, 'two', None, 4.5, b'five']", out.stderr
        assert ours[1] == "deux"
    finally:
        ours.shm.close()
        ours.shm.unlink()


def test_patched_make_filename_names_new_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"/psm_polyproc_test_{os.getpid()}"
    monkeypatch.setattr(polyproc.shared_memory, "_make_filename", lambda: name)
    shm = polyproc.shared_memory.SharedMemory(create=True, size=8)
    try:
        assert shm._name == name and shm.name == name[1:]
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_a_dead_forkserver_is_started_again(signum: int) -> None:
    import polyproc.forkserver

    ctx = polyproc.get_context("forkserver")
    polyproc.forkserver.ensure_running()
    pid = polyproc.forkserver._forkserver._forkserver_pid
    assert pid is not None
    os.kill(pid, signum)
    if signum == signal.SIGKILL:
        psutil.Process(pid).wait(30)  # gone (SIGINT is ignored: the server lives on)
    done = ctx.Event()
    p = ctx.Process(target=targets.set_event, args=(done,))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and done.is_set()


def test_a_method_not_exposed_is_a_remote_error_and_an_exposed_underscore_works() -> None:
    from polyproc.managers import BaseManager, RemoteError

    class MyManager(BaseManager):
        pass

    MyManager.register("Foo", callable=targets.FooBar)
    MyManager.register("Bar", callable=targets.FooBar, exposed=("f", "_h"))
    with MyManager(ctx=polyproc.get_context("fork")) as m:
        foo, bar = m.Foo(), m.Bar()  # type: ignore[attr-defined]
        assert foo.f() == "f()" and not hasattr(foo, "_h")
        with pytest.raises(RemoteError):
            foo._callmethod("_h")
        with pytest.raises(AttributeError):  # what it means, too
            foo._callmethod("_h")
        assert bar._h() == "_h()" and bar._callmethod("_h") == "_h()"
