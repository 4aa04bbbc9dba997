"""Fire-and-forget calls keep causality; blocking calls do not stall the loop; nested calls."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import polyproc
from polyproc._protocol.compact import Op, encode
from polyproc.managers import BaseManager, DictProxy, SyncManager

from . import _targets


@pytest.fixture(scope="module")
def m() -> Iterator[SyncManager]:
    with polyproc.Manager() as manager:
        yield manager


def test_fire_and_forget_appends_are_visible_after_any_signal(ctx: Any) -> None:
    with ctx.Manager() as manager:
        for round_ in range(5):
            lst = manager.list()
            r, w = ctx.Pipe()
            p = ctx.Process(target=_targets.append_then_signal, args=(lst, 500, w))
            p.start()
            assert r.poll(30) and r.recv() == "done"
            # Another process, another connection: it must already see every append.
            assert len(lst) == 500, f"round {round_}"
            p.join(30)


def test_async_set_then_get_in_one_thread(m: Any) -> None:
    d = m.dict()
    for i in range(200):
        d["k"] = i
        assert d["k"] == i
    n = m.Namespace()
    n.x = 1
    assert n.x == 1
    v = m.Value("d", 0.5)
    v.value = 2.5
    assert v.value == 2.5


def test_unhashable_key_fails_at_once(m: Any) -> None:
    d = m.dict()
    with pytest.raises(TypeError, match="unhashable"):
        d[[1]] = 2


def test_async_failure_is_reported_on_the_next_call() -> None:
    class PickyManager(BaseManager):
        pass

    PickyManager.register("Picky", _targets.Picky, DictProxy)
    with PickyManager() as pm:
        d = pm.Picky()
        d["a"] = "bad"  # fire-and-forget: returns at once
        with pytest.warns(RuntimeWarning, match="picky says no"):
            assert len(d) == 0


def test_a_blocked_call_does_not_stall_other_clients(m: Any) -> None:
    q = m.Queue()
    lst = m.list()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    t.start()  # its connection's worker now blocks in Queue.get
    for i in range(50):
        lst.append(i)
    assert len(lst) == 50
    q.put("wake")
    t.join(30)
    assert got == ["wake"]


def test_rlock_and_condition_keep_their_owner_thread(m: Any) -> None:
    rl = m.RLock()
    rl.acquire()
    rl.acquire()
    rl.release()
    rl.release()
    cond = m.Condition(m.Lock())  # a Condition over a managed lock: nested, server-local calls
    with cond:
        cond.notify()


def test_nested_proxies_compared_on_the_server_do_not_deadlock(m: Any) -> None:
    outer = m.list([m.list([2]), m.list([1])])
    with pytest.raises(TypeError):
        outer.sort()  # proxies do not order; the point is that it returns
    assert str(outer[1]) == "[1]"


def _proc_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1]
    raise LookupError(name)  # pragma: no cover


@pytest.mark.timeout(60)
def test_a_client_sleeps_once_per_call_even_when_the_server_reads_late() -> None:
    """The manager's server reads a request while its client already sleeps for the reply.

    On a Unix stream socket, that read announces "writable" to the client's socket, and a
    thread blocked in ``recv`` is woken by it (its wait does not filter events): it woke,
    found nothing and slept again, on every call, at a measured 10 % of the server's CPU
    for the wake-up alone. The client waits in ``poll`` for "readable" instead.
    """
    import select

    from polyproc._transport import socketpair

    ctx = polyproc.get_context("fork")
    ours, theirs = socketpair()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_targets.request_and_count_sleeps, args=(theirs, w))
    p.start()
    try:
        assert select.select([ours], [], [], 30)[0], "no request came"
        assert p.pid is not None
        deadline = time.monotonic() + 30
        while _proc_field(p.pid, "State") != "S":  # the client now waits for its reply
            assert time.monotonic() < deadline, "the client never went to sleep"
            time.sleep(0.001)  # polling a deadline, not synchronising
        switches = _proc_field(p.pid, "voluntary_ctxt_switches")
        assert ours.recv(4096)  # the server reads the request ...
        # ... and would have woken a client blocked in recv: give such a wake-up time to
        # show (it is what this test looks for), then answer.
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            if _proc_field(p.pid, "voluntary_ctxt_switches") != switches:
                break
            time.sleep(0.005)  # watching for an event that must not come, for 0.3 s
        ours.sendall(encode(Op.RESULT, pickle.dumps(None)))
        assert r.poll(30)
        assert r.recv() == 1  # asleep once: from the request to its reply
    finally:
        p.join(30)
        ours.close()
        theirs.close()


def test_only_a_unix_socket_needs_to_wait_in_poll() -> None:
    """TCP does not wake a blocked reader when the peer reads: its reads stay plain ``recv``
    (and a manager client's reads and writes are the socket's own, with no wrapper)."""
    import socket

    from polyproc._transport import SocketStream, socketpair

    a, b = socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    tcp = socket.create_connection(listener.getsockname())
    try:
        assert callable(SocketStream(a).readable_waiter())
        assert SocketStream(tcp).readable_waiter() is None
        # ... and a plain socket's reads and writes are its own calls, no frame of ours
        read, write = SocketStream(a).plain_calls()
        assert (read, write) == (a.recv, a.sendall)
        assert SocketStream(a).plain_read_into() == a.recv_into  # the serving loop's reads
        write(b"x")
        assert b.recv(1) == b"x"
    finally:
        for s in (a, b, listener, tcp):
            s.close()


def _serve_here_in_a_thread(control: Any = None) -> tuple[Any, threading.Thread]:
    from polyproc._manager.server import Server
    from polyproc._manager.wire import default_address

    srv = Server(SyncManager._registry, default_address(), b"serve-here-key")
    srv.start(loop_thread=False)
    t = threading.Thread(target=srv.serve_here, args=(control,), daemon=True)
    t.start()
    return srv, t


@pytest.mark.timeout(60)
def test_serve_here_serves_on_the_calling_thread_until_a_shutdown() -> None:
    """The manager process serves on its main thread (no loop thread to start before it is
    ready): a SHUTDOWN ends that loop, after its reply."""
    from polyproc._manager import client
    from polyproc._manager.wire import dumps

    srv, t = _serve_here_in_a_thread()
    try:
        ch = client.Channel(srv.address, b"serve-here-key", None)
        ch.fs.send(Op.PING, dumps(()))
        assert ch.fs.recv()[0] == Op.RESULT
        assert not srv._loop._thread.is_alive()  # served by ``t``, not a thread of its own
        ch.fs.send(Op.SHUTDOWN, dumps(()))
        assert ch.fs.recv()[0] == Op.RESULT  # the reply comes before the loop ends
        t.join(30)
        assert not t.is_alive() and srv.stop_event.is_set()
        ch.close()
    finally:
        srv.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["byte", "eof"])
def test_serve_here_stops_on_a_byte_or_eof_from_the_owner(how: str) -> None:
    from polyproc._transport import socketpair

    ours, theirs = socketpair()
    srv, t = _serve_here_in_a_thread(theirs)
    try:
        if how == "byte":
            ours.sendall(b"stop")
        else:
            ours.close()
        t.join(30)
        assert not t.is_alive() and srv.stop_event.is_set()
    finally:
        srv.stop()
        ours.close()
        theirs.close()
