"""Hostile input to a manager server: garbage, truncation, oversize lengths, floods, hang-ups.

Each must cost the server nothing lasting: the bad connection closes, memory
stays bounded, and a good client is served as before. The framing and the
handshake are also checked sans-IO with hypothesis.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyproc._manager import client
from polyproc._manager.server import Server
from polyproc._manager.sync import SyncManager
from polyproc._manager.wire import (
    HEADER,
    FrameDecoder,
    FrameSocket,
    Op,
    default_address,
    dumps,
    encode,
)
from polyproc._protocol import auth
from polyproc.errors import AuthenticationError, ProtocolError

KEY = b"hostile-test-key"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(
        SyncManager._registry, default_address(), KEY, handshake_timeout=1.0, max_pending=32
    )
    srv.start()
    yield srv
    srv.stop()


def _raw(srv: Server) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.address)  # blocking: a full backlog waits for the gate to accept
    s.settimeout(10)
    return s


def _closed_by_server(s: socket.socket) -> bool:
    """Read until the server hangs up (True) or 10 s pass with it still open (False)."""
    try:
        while s.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def _works(srv: Server) -> None:
    """A good client on a fresh connection can still create and call."""
    ch = client.Channel(srv.address, KEY, None)
    try:
        ch.fs.send(Op.CREATE, dumps(("list", ([1],), None)))
        op, body = ch.fs.recv()
        assert op == Op.PROXY
        ident = pickle.loads(body)[0]
        ch.fs.send(Op.CALL, dumps((ident, "__len__", (), None)))
        op, body = ch.fs.recv()
        assert (op, pickle.loads(body)) == (Op.RESULT, 1)
    finally:
        ch.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00" * 64,
        pickle.dumps(("evil", 1)),
        encode(Op.CALL, pickle.dumps((1, "append", (1,), None))),  # a call before authenticating
        b"#CHALLENGE#" + b"x" * 40,
    ],
)
def test_garbage_closes_only_that_connection(server: Server, junk: bytes) -> None:
    s = _raw(server)
    s.sendall(junk)
    assert _closed_by_server(s)
    s.close()
    _works(server)


def test_oversize_length_prefix_is_refused_before_any_body(server: Server) -> None:
    s = _raw(server)
    s.recv(4096)  # our challenge
    s.sendall(HEADER.pack(0xFFFFFFFF, Op.AUTH) + b"x" * 100)
    assert _closed_by_server(s)
    _works(server)


def test_truncated_frame_then_hang_up(server: Server) -> None:
    s = _raw(server)
    s.recv(4096)
    s.sendall(HEADER.pack(auth.MAX_AUTH_FRAME, Op.AUTH) + b"partial")
    s.close()
    _works(server)


def test_silent_connections_time_out(server: Server) -> None:
    s = _raw(server)
    assert _closed_by_server(s)  # the handshake deadline (1 s here) closes it
    assert server.statistics()["rejected"] >= 1


@pytest.mark.timeout(60)
def test_a_flood_of_silent_connections_does_not_lock_out_a_real_client(server: Server) -> None:
    flood = [_raw(server) for _ in range(200)]  # far past max_pending=32
    try:
        _works(server)
        assert server.statistics()["pending"] <= 32
    finally:
        for s in flood:
            s.close()


def test_wrong_key_is_refused_and_others_go_on(server: Server) -> None:
    with pytest.raises(AuthenticationError):
        client.Channel(server.address, b"wrong", None)
    _works(server)


def test_client_hangs_up_mid_call(server: Server) -> None:
    ch = client.Channel(server.address, KEY, None)
    ch.fs.write(HEADER.pack(1000, Op.CALL) + b"\x80\x05half a pickle")
    ch.close()
    ch2 = client.Channel(server.address, KEY, None)
    ch2.fs.send(Op.CREATE, dumps(("Queue", (), None)))
    _, body = ch2.fs.recv()
    ident = pickle.loads(body)[0]
    ch2.fs.send(Op.CALL, dumps((ident, "get", (), None)))  # blocks on the server...
    ch2.close()  # ... and we leave; the server thread must not take the others down
    _works(server)
    # Then the get is let go, so its thread ends with the server: a thread left behind
    # would make every later fork in this test process unsafe (no pool template after it).
    ch3 = client.Channel(server.address, KEY, None)
    ch3.fs.send(Op.CALL, dumps((ident, "put", (1,), None)))
    assert ch3.fs.recv()[0] != Op.FAULT
    ch3.close()


def test_authenticated_garbage(server: Server) -> None:
    ch = client.Channel(server.address, KEY, None)
    ch.fs.send(Op.CALL, b"not a pickle")
    op, body = ch.fs.recv()
    assert op == Op.FAULT and "malformed" in pickle.loads(body)
    ch.fs.send(Op.CALL, dumps((10**9, "append", (), None)))
    op, body = ch.fs.recv()
    assert op == Op.FAULT and "no object" in pickle.loads(body)
    ch.fs.write(struct.pack("<IB", 0, 200))  # an unknown op: that connection ends
    assert _closed_by_server(ch.fs.sock)
    ch.close()
    _works(server)


def test_request_pipelined_with_the_handshake_is_served(server: Server) -> None:
    """A request written together with the last handshake frame reaches the loop as leftover."""
    s = _raw(server)
    fs = FrameSocket(s)
    held: list[bytes] = []

    class Holding:  # delays each handshake frame until we next read, so the last one waits
        def send_bytes(self, buf: bytes) -> None:
            held.append(encode(Op.AUTH, bytes(buf)))

        def recv_bytes(self, maxlength: int | None = None) -> bytes:
            s.sendall(b"".join(held))
            held.clear()
            op, body = fs.recv(auth.MAX_AUTH_FRAME)
            assert op == Op.AUTH
            return bytes(body)

    auth.client_handshake(Holding(), KEY)
    assert held  # the verdict: it goes out in one write with the first request
    s.sendall(b"".join(held) + encode(Op.CREATE, dumps(("list", ([1, 2],), None))))
    op, body = fs.recv()
    assert op == Op.PROXY
    s.close()


# -- sans-IO, property based -------------------------------------------------------
frames = st.lists(st.tuples(st.sampled_from(list(Op)), st.binary(max_size=300)), max_size=8)


@given(frames, st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_decoder_reassembles_any_chunking(msgs: list[tuple[Op, bytes]], cuts: list[int]) -> None:
    data = b"".join(encode(op, body) for op, body in msgs)
    dec = FrameDecoder(max_size=300)
    out: list[tuple[int, bytes]] = []
    pos, i = 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        dec.feed(data[pos : pos + step])
        pos, i = pos + step, i + 1
        while (frame := dec.next_frame()) is not None:
            out.append(frame)
    assert out == [(int(op), body) for op, body in msgs]
    assert dec.buffered() == 0


@given(frames, st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_feed_frames_matches_feed_then_frames(
    msgs: list[tuple[Op, bytes]], cuts: list[int]
) -> None:
    data = b"".join(encode(op, body) for op, body in msgs)
    dec = FrameDecoder(max_size=300)
    out: list[tuple[int, bytes]] = []
    pos, i = 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out += dec.feed_frames(memoryview(data)[pos : pos + step])
        pos, i = pos + step, i + 1
    assert out == [(int(op), body) for op, body in msgs]
    assert dec.buffered() == 0


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_decoder_on_garbage_raises_protocol_error_or_waits_bounded(data: bytes) -> None:
    dec = FrameDecoder(max_size=auth.MAX_AUTH_FRAME)
    try:
        for i in range(0, len(data), 64):
            dec.feed(data[i : i + 64])
            while dec.next_frame() is not None:
                pass
            # never more than one (bounded) frame plus one read is buffered
            assert dec.buffered() <= HEADER.size + auth.MAX_AUTH_FRAME + 64
    except ProtocolError:
        pass


def _client_side(key: bytes) -> Iterator[bytes]:
    """A generator playing client_handshake: send() it server frames, it yields client frames."""
    challenge = yield b""
    reply = auth.make_response(challenge, key)
    verdict = yield reply
    assert auth.parse_verdict(verdict)
    frame, nonce = auth.make_challenge()
    response = yield frame
    assert auth.check_response(response, nonce, key)
    yield auth.WELCOME


def test_server_handshake_table_with_the_right_key() -> None:
    hs = auth.ServerHandshake(KEY)
    peer = _client_side(KEY)
    next(peer)
    out = peer.send(hs.first)  # RESPONSE
    welcome = hs.receive(out)
    challenge = peer.send(welcome)
    response = hs.receive(challenge)
    final = peer.send(response)
    assert hs.receive(final) == b"" and hs.state is auth.Step.DONE
    with pytest.raises(ProtocolError):
        hs.receive(final)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_server_handshake_never_done_without_the_key(script: list[bytes]) -> None:
    hs = auth.ServerHandshake(KEY)
    try:
        for frame in script:
            hs.receive(frame)
    except (AuthenticationError, ProtocolError):
        assert hs.state is auth.Step.FAILED
        return
    assert hs.state is not auth.Step.DONE


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_live_server_survives_random_bytes(data: bytes) -> None:
    srv = _shared_server()
    s = _raw(srv)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert _closed_by_server(s)
    finally:
        s.close()
    _works(srv)


class _Shared:
    server: Any = None


def _shared_server() -> Server:
    if _Shared.server is None:
        _Shared.server = Server(
            SyncManager._registry, default_address(), KEY, handshake_timeout=2.0
        )
        _Shared.server.start()
    return _Shared.server  # type: ignore[no-any-return]


def teardown_module() -> None:
    if _Shared.server is not None:
        _Shared.server.stop()
