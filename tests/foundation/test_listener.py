"""Listener/Client: AF_UNIX and TCP, authkey both ways, TLS, deadlines, hostile peers."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polyproc._connection import Connection, Pipe
from polyproc._listener import Client, Listener, address_type
from polyproc.errors import AuthenticationError, ProtocolError

from . import _listener_targets

KEY = b"listener key"


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, box


@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET"])
def test_child_connects_with_a_key(ctx: Any, family: str) -> None:
    with Listener(family=family, authkey=KEY) as listener:
        assert address_type(listener.address) == family
        p = ctx.Process(target=_listener_targets.echo_client, args=(listener.address, KEY))
        p.start()
        with listener.accept() as conn:
            assert isinstance(conn, Connection)
            conn.send("ping")
            assert conn.recv() == ("hello from", "ping")
        p.join(30)
        assert p.exitcode == 0
        if family == "AF_INET":
            assert listener.last_accepted[0] == "127.0.0.1"


def test_no_key_on_either_side() -> None:
    with Listener(("127.0.0.1", 0)) as listener:
        t, box = _in_thread(listener.accept)
        c = Client(listener.address)
        t.join(10)
        server = box["value"]
        c.send_bytes(b"raw")
        assert server.recv_bytes() == b"raw"
        c.close()
        server.close()


def test_wrong_key_fails_both_sides_and_the_listener_goes_on() -> None:
    with Listener(authkey=KEY) as listener:
        t, box = _in_thread(listener.accept)
        with pytest.raises(AuthenticationError):
            Client(listener.address, authkey=b"wrong")
        t.join(10)
        assert isinstance(box.get("error"), AuthenticationError)
        t, box = _in_thread(listener.accept)
        good = Client(listener.address, authkey=KEY)
        t.join(10)
        good.send([1, 2])
        assert box["value"].recv() == [1, 2]
        good.close()
        box["value"].close()


class _Bomb:
    triggered = False

    def __reduce__(self) -> Any:
        return (_explode, ())


def _explode() -> None:
    _Bomb.triggered = True


def test_nothing_is_unpickled_before_authentication() -> None:
    with Listener(authkey=KEY) as listener:
        t, box = _in_thread(listener.accept)
        rogue = Client(listener.address)  # no key: it just sends a pickle
        rogue.send(_Bomb())
        t.join(10)
        assert isinstance(box.get("error"), (AuthenticationError, ProtocolError))
        assert not _Bomb.triggered
        rogue.close()


def test_a_silent_peer_cannot_hold_accept() -> None:
    with Listener(authkey=KEY, handshake_timeout=0.3) as listener:
        s = socket.socket(socket.AF_UNIX)
        s.connect(listener.address)
        with pytest.raises(AuthenticationError, match="too slow"):
            listener.accept()
        s.close()


def test_oversize_handshake_frame_is_refused() -> None:
    from polyproc._protocol.framing import Kind, encode_header

    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        t, box = _in_thread(listener.accept)
        s = socket.create_connection(listener.address)
        s.recv(4096)  # the challenge
        s.sendall(encode_header(Kind.BYTES, 1 << 40))
        t.join(10)
        assert isinstance(box.get("error"), ProtocolError)
        s.close()


def test_unix_listener_connections_carry_fds() -> None:
    with Listener(authkey=KEY) as listener:
        t, box = _in_thread(listener.accept)
        c = Client(listener.address, authkey=KEY)
        t.join(10)
        a, b = Pipe()
        c.send(b)
        got = box["value"].recv()
        a.send("through the passed pipe")
        assert got.recv() == "through the passed pipe"
        for conn in (a, b, c, got, box["value"]):
            conn.close()


def test_unix_socket_file_is_removed_on_close() -> None:
    listener = Listener()
    path = listener.address
    assert os.path.exists(path)
    listener.close()
    assert not os.path.exists(path)
    with pytest.raises(OSError):
        listener.accept()


def test_tls_with_a_key(tmp_path: Path) -> None:
    from tests.manager._tls import make_cert

    files = make_cert(tmp_path)
    if files is None:
        pytest.skip("no way to make a test certificate")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*files)
    client_ctx = ssl.create_default_context(cafile=str(files[0]))
    with Listener(("127.0.0.1", 0), authkey=KEY, ssl_context=server_ctx) as listener:
        t, box = _in_thread(listener.accept)
        c = Client(listener.address, authkey=KEY, ssl_context=client_ctx)
        t.join(10)
        server = box["value"]
        c.send({"secret": b"x" * 100_000})
        assert server.recv() == {"secret": b"x" * 100_000}
        server.send("back")
        assert c.recv() == "back"
        c.close()
        server.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Listener(family="AF_NOPE")
    with pytest.raises(TypeError):
        Listener(authkey="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        address_type(42)
