"""Connecting under pressure (issue 13, items 4, 5 and 7).

A manager whose backlog is full must make a new client wait, not fail with
``BlockingIOError``; a client that forgot ``ssl_context`` must be told at once.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import polyproc
from polyproc._manager import client
from polyproc._manager.wire import connect_socket, default_address, listen_socket
from polyproc.errors import AuthenticationError

from . import _targets
from ._tls import make_cert

pytestmark = pytest.mark.timeout(60)


def _fill_backlog(address: str) -> list[socket.socket]:
    """Connect without blocking until the listener's backlog refuses more (EAGAIN)."""
    flood: list[socket.socket] = []
    while len(flood) < 4096:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(address)
        except BlockingIOError:
            s.close()
            return flood
        flood.append(s)
    raise AssertionError("the backlog never filled")


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_connect_socket_waits_for_room_in_a_full_backlog() -> None:
    listener, address = listen_socket(default_address(), backlog=128)
    flood = _fill_backlog(str(address))
    try:
        assert len(flood) >= 128
        t, box = _in_thread(lambda: connect_socket(address, 20.0))
        t.join(0.3)
        assert t.is_alive(), f"connect did not wait: {box}"  # blocked on the full backlog
        accepted = [listener.accept()[0] for _ in range(len(flood) + 1)]
        t.join(20)
        assert not t.is_alive()
        assert isinstance(box[0], socket.socket), box
        box[0].close()
        for s in accepted:
            s.close()
    finally:
        for s in flood:
            s.close()
        listener.close()


def test_connect_socket_times_out_with_a_timeout_error() -> None:
    listener, address = listen_socket(default_address(), backlog=1)
    flood = _fill_backlog(str(address))
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            connect_socket(address, 0.2)
        assert time.monotonic() - start < 5
    finally:
        for s in flood:
            s.close()
        listener.close()


@pytest.fixture
def manager() -> Iterator[Any]:
    m = polyproc.Manager()
    try:
        yield m
    finally:
        m.shutdown()


def test_a_proxy_from_a_new_thread_waits_out_a_busy_server(manager: Any) -> None:
    d = manager.dict()
    d["k"] = 1
    pid = manager._process.pid
    os.kill(pid, signal.SIGSTOP)  # the server is busy: nobody accepts
    flood: list[socket.socket] = []
    try:
        flood = _fill_backlog(manager.address)
        assert len(flood) >= 128
        t, box = _in_thread(lambda: d["k"])  # a new thread: a new connection
        t.join(0.3)
        assert t.is_alive(), f"the call did not wait: {box}"
    finally:
        os.kill(pid, signal.SIGCONT)
    t.join(30)
    for s in flood:
        s.close()
    assert not t.is_alive()
    assert box == [1]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    got = make_cert(tmp_path)
    if got is None:
        pytest.skip("neither cryptography nor openssl to make a test certificate")
    return got


@pytest.mark.timeout(8)  # the server's handshake deadline is 10 s: we must not wait for it
def test_a_plain_client_of_a_tls_manager_fails_at_once(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    m = _targets.CounterManager(address=("127.0.0.1", 0), authkey=b"k", ssl_context=server_ctx)
    server = m.get_server()
    server.start()
    try:
        plain = _targets.CounterManager(address=server.address, authkey=b"k")
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="TLS expected"):
            plain.connect()
        assert time.monotonic() - start < 3
        good = _targets.CounterManager(
            address=server.address,
            authkey=b"k",
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        good.connect()
        assert good.Counter(1).increment() == 2
    finally:
        server.stop()
        client.forget(server.address)


def test_client_waits_for_a_listener_with_a_full_backlog_despite_a_default_timeout() -> None:
    from polyproc.connection import Client, Listener

    with Listener(family="AF_UNIX", backlog=1, authkey=b"k") as listener:
        flood = _fill_backlog(listener.address)
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(5.0)  # a user's setting: it must not make our connect fail
        try:
            t, box = _in_thread(lambda: Client(listener.address, authkey=b"k"))
            t.join(0.3)
            assert t.is_alive(), f"Client did not wait: {box}"
        finally:
            socket.setdefaulttimeout(old)
        for s in flood:
            s.close()
        raw = [listener._sock.accept()[0] for _ in flood]  # type: ignore[union-attr]
        conn = listener.accept()
        t.join(20)
        assert not t.is_alive()
        box[0].send("hi")
        assert conn.recv() == "hi"
        box[0].close()
        conn.close()
        for s in raw:
            s.close()
