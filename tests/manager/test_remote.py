"""BaseManager: registered user classes, remote servers over TCP (with a key, with TLS),
wrong keys, and a manager that must die with its owner."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from polyproc.errors import AuthenticationError, ManagerUnavailableError
from polyproc.managers import BaseManager

from . import _targets
from ._tls import make_cert


def test_registered_user_class(ctx: Any) -> None:
    with _targets.CounterManager(ctx=ctx) as m:
        auto = m.Counter(5)
        assert auto.increment(2) == 7 and auto.get() == 7
        with pytest.raises(ValueError, match="counter says no"):
            auto.fail()
        typed = m.TypedCounter()
        assert isinstance(typed, _targets.CounterProxy)
        with pytest.raises(AttributeError):
            typed._callmethod("fail")  # not exposed by CounterProxy
        procs = [ctx.Process(target=_targets.bump, args=(typed, 25)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert typed.get() == 50


def test_start_with_initializer_and_connect_from_a_second_manager() -> None:
    with _targets.CounterManager() as m:
        other = _targets.CounterManager(address=m.address, authkey=m._authkey)
        other.connect()
        c = other.Counter(1)
        assert c.increment() == 2
        other.shutdown()  # a connected manager owns no process: nothing stops
        assert m.Counter(3).get() == 3


def test_register_validates_method_to_typeid() -> None:
    class M(BaseManager):
        pass

    with pytest.raises(TypeError):
        M.register("x", list, method_to_typeid={"a": 1})  # type: ignore[dict-item]
    assert "x" not in M._registry and "x" not in BaseManager._registry


def _spawn_server(
    key: str, tls: tuple[Path, Path] | None = None
) -> tuple[subprocess.Popen[str], int]:
    args = [sys.executable, "-c", _targets.QUEUE_SERVER, key]
    if tls is not None:
        args += [str(tls[0]), str(tls[1])]
    proc = subprocess.Popen(args, env=_targets.env_with_src(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _client(
    port: int, key: str, action: str, ca: Path | None = None
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", _targets.QUEUE_CLIENT, str(port), key, action]
    if ca is not None:
        args.append(str(ca))
    return subprocess.run(
        args, env=_targets.env_with_src(), capture_output=True, text=True, timeout=40
    )


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    got = make_cert(tmp_path)
    if got is None:
        pytest.skip("neither cryptography nor openssl to make a test certificate")
    return got


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("use_tls", [False, True], ids=["tcp", "tls"])
def test_remote_queue_server(
    use_tls: bool, servers: list[Any], request: pytest.FixtureRequest
) -> None:
    tls = request.getfixturevalue("tls_files") if use_tls else None
    proc, port = _spawn_server("sekrit", tls)
    servers.append(proc)
    put = _client(port, "sekrit", "put", tls[0] if tls else None)
    assert put.returncode == 0, put.stderr
    got = _client(port, "sekrit", "get", tls[0] if tls else None)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "[0, 1, 2, 3, 4]"
    wrong = _client(port, "wrong key", "get", tls[0] if tls else None)
    assert wrong.returncode != 0 and "AuthenticationError" in wrong.stderr
    if tls is not None:  # a client that does not speak TLS is turned away too
        plain = _client(port, "sekrit", "get")
        assert plain.returncode != 0 and "AuthenticationError" in plain.stderr
    # ... and the server goes on serving the others
    again = _client(port, "sekrit", "put", tls[0] if tls else None)
    assert again.returncode == 0, again.stderr


def test_in_process_server_with_tls_and_a_wrong_key(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    m = _targets.CounterManager(address=("127.0.0.1", 0), authkey=b"k", ssl_context=server_ctx)
    server = m.get_server()
    server.start()
    try:
        address = server.address
        bad = _targets.CounterManager(address=address, authkey=b"not k", ssl_context=client_ctx)
        with pytest.raises(AuthenticationError):
            bad.connect()
        good = _targets.CounterManager(address=address, authkey=b"k", ssl_context=client_ctx)
        good.connect()
        assert good.Counter(41).increment() == 42
    finally:
        server.stop()


def test_unknown_typeid_and_missing_server() -> None:
    with _targets.CounterManager() as m:
        with pytest.raises(KeyError):
            m._create("nope")
    lonely = _targets.CounterManager(address=("127.0.0.1", 1), authkey=b"x")
    with pytest.raises(ManagerUnavailableError):
        lonely.connect()
    with pytest.raises(ConnectionRefusedError):  # what the classic retry loop catches
        lonely.connect()


OWNER = r"""
import sys, time
import polyproc
from polyproc.managers import SyncManager
m = SyncManager(ctx=polyproc.get_context(sys.argv[1]))
m.start()
l = m.list()
print(m._process.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_manager_process_dies_with_its_owner(start_method: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, start_method],
        env=_targets.env_with_src(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        server_pid = int(owner.stdout.readline())
        server = psutil.Process(server_pid)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        gone, alive = psutil.wait_procs([server], timeout=20)  # polls with a deadline
        assert alive == [], f"manager process {server_pid} outlived its SIGKILLed owner"
    finally:
        owner.kill()
        owner.wait(10)


def test_start_runs_the_initializer_in_the_server(tmp_path: Path) -> None:
    marker = tmp_path / "initialized"
    m = _targets.CounterManager()
    m.start(_targets.touch, (str(marker),))
    try:
        assert marker.read_text() == str(m._process.pid)
    finally:
        m.shutdown()
    with pytest.raises(TypeError):
        _targets.CounterManager().start(initializer=42)  # type: ignore[arg-type]
