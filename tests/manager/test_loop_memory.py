"""The manager's serving loop driven over the in-memory transport: no process, no socket.

A ``Server``'s table and its ``ServeLoop`` thread, fed frames through
``_transport.memory.memory_pair()`` ends (an eventfd each, so the loop's epoll
watches them as it watches sockets): whole frames, frames torn into single bytes,
pipelined frames, garbage and a frame cut short by a hang-up. Each bad connection
closes; the others are served on.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from polyproc._manager.loop import ServeLoop
from polyproc._manager.server import Server
from polyproc._manager.sync import SyncManager
from polyproc._protocol.compact import HEADER, FrameDecoder, Op, encode
from polyproc._transport.memory import MemoryStream, memory_pair
from polyproc._transport.outbox import Outbox
from polyproc.errors import BrokenResourceError

KEY = b"memory-loop-key"


class Client:
    """The test's end of one connection: frames out, frames in (blocking, with a deadline)."""

    def __init__(self, end: MemoryStream) -> None:
        self.end = end
        self.decoder = FrameDecoder(1 << 30)
        self.frames: list[tuple[int, bytes]] = []

    def send(self, data: bytes) -> None:
        self.end.write_all([data])

    def reply(self, timeout: float = 10.0) -> tuple[int, Any]:
        deadline = time.monotonic() + timeout
        while not self.frames:
            self._read(deadline)
        op, body = self.frames.pop(0)
        return op, pickle.loads(body)

    def _read(self, deadline: float) -> int:
        buf = bytearray(1 << 16)
        self.end.setblocking(False)
        while True:
            try:
                n = self.end.read_into(memoryview(buf))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("no reply from the loop") from None
                time.sleep(0.001)  # polling a deadline, not synchronising
        self.frames.extend(self.decoder.feed_frames(memoryview(buf)[:n]))
        return n

    def closed_by_loop(self, timeout: float = 10.0) -> bool:
        """Read until end of stream (True) or the deadline (False)."""
        deadline = time.monotonic() + timeout
        try:
            while self._read(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def call(self, op: Op, request: Any) -> tuple[int, Any]:
        self.send(encode(op, pickle.dumps(request)))
        return self.reply()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(SyncManager._registry, "\0polyproc-test-memory-loop-unused", KEY)
    srv._loop.start()  # the loop only: nothing is accepted, frames come from memory
    yield srv
    srv.stop()


_opened: list[MemoryStream] = []


@pytest.fixture(autouse=True)
def _close_client_ends() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _connect(srv: Server | ServeLoop, capacity: int = 1 << 20) -> Client:
    ours, theirs = memory_pair(capacity)
    _opened.append(ours)
    (srv._loop if isinstance(srv, Server) else srv).add(theirs, b"")
    return Client(ours)


def _new_list(c: Client) -> int:
    op, (ident, typeid, _exposed) = c.call(Op.CREATE, ("list", (), {}))
    assert op == Op.PROXY and typeid == "list"
    return int(ident)


def test_frames_in_and_replies_out(server: Server) -> None:
    c = _connect(server)
    ident = _new_list(c)
    assert c.call(Op.CALL, (ident, "append", (5,), {})) == (Op.RESULT, None)
    assert c.call(Op.CALL, (ident, "__len__", (), {})) == (Op.RESULT, 1)
    assert c.call(Op.PING, ()) == (Op.RESULT, None)


def test_a_frame_torn_into_single_bytes_is_served(server: Server) -> None:
    c = _connect(server)
    ident = _new_list(c)
    data = encode(Op.CALL, pickle.dumps((ident, "append", ("x",), {})))
    for i in range(len(data)):
        c.send(data[i : i + 1])
    assert c.reply() == (Op.RESULT, None)
    assert c.call(Op.CALL, (ident, "__getitem__", (0,), {})) == (Op.RESULT, "x")


def test_pipelined_frames_run_in_order_with_async_calls_first(server: Server) -> None:
    c = _connect(server)
    ident = _new_list(c)
    burst = b"".join(
        encode(Op.CALL_ASYNC, pickle.dumps((ident, "append", (i,), {}))) for i in range(50)
    )
    c.send(burst + encode(Op.CALL, pickle.dumps((ident, "__len__", (), {}))))
    assert c.reply() == (Op.RESULT, 50)


def test_garbage_closes_that_connection_only(server: Server) -> None:
    good, bad = _connect(server), _connect(server)
    ident = _new_list(good)
    bad.send(HEADER.pack(3, 250) + b"abc")  # op 250 does not exist
    assert bad.closed_by_loop()
    assert good.call(Op.CALL, (ident, "__len__", (), {})) == (Op.RESULT, 0)


def test_a_frame_cut_short_by_a_hang_up_is_dropped(server: Server) -> None:
    good, torn = _connect(server), _connect(server)
    assert good.call(Op.PING, ()) == (Op.RESULT, None)
    assert torn.call(Op.PING, ()) == (Op.RESULT, None)  # both are being served now
    assert len(server._loop.conns) == 2
    frame = encode(Op.CALL, pickle.dumps((1, "append", (1,), {})))
    torn.send(frame[: len(frame) // 2])
    torn.end.close()
    deadline = time.monotonic() + 10
    while len(server._loop.conns) > 1 and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a deadline, not synchronising
    assert len(server._loop.conns) == 1  # the torn one is gone, the good one stays
    assert good.call(Op.PING, ()) == (Op.RESULT, None)


def test_replies_bigger_than_the_transport_wait_for_room() -> None:
    """A reply that does not fit (capacity 256 bytes) goes out as the client reads it."""
    big = b"y" * 100_000

    def decode(op: int, body: bytes) -> tuple[bool, Any]:
        return True, body

    def run(op: int, request: Any) -> bytes:
        return encode(Op.RESULT, pickle.dumps(big))

    loop = ServeLoop(decode, run)
    loop.start()
    try:
        c = _connect(loop, 256)
        c.send(encode(Op.PING, b""))
        assert c.reply() == (Op.RESULT, big)
    finally:
        loop.stop()


def test_a_reply_from_a_worker_thread_reaches_the_client() -> None:
    """A call that may block runs on the connection's worker; its reply is written from there."""
    release = threading.Event()

    def decode(op: int, body: bytes) -> tuple[bool, Any]:
        return op != Op.CALL, body  # CALL "may block": the connection's worker runs it

    def run(op: int, request: Any) -> bytes:
        if op == Op.CALL:
            assert release.wait(10)
            return encode(Op.RESULT, pickle.dumps("slow"))
        return encode(Op.RESULT, pickle.dumps("quick"))

    loop = ServeLoop(decode, run)
    loop.start()
    try:
        slow, quick = _connect(loop), _connect(loop)
        slow.send(encode(Op.CALL, b""))
        assert quick.call(Op.PING, ()) == (Op.RESULT, "quick")  # not stuck behind the worker
        release.set()
        assert slow.reply() == (Op.RESULT, "slow")
    finally:
        loop.stop()


def test_outbox_over_memory_wants_write_and_closes_fds() -> None:
    import os

    a, b = memory_pair(8)
    out = Outbox(a)
    r, w = os.pipe()
    try:
        out.push(b"0123456789abcdef")  # twice the capacity
        assert out.flush() is True  # some is left: wait for writability
        got = bytearray()
        buf = memoryview(bytearray(64))
        got += buf[: b.read_into(buf)]
        assert out.flush() is False
        got += buf[: b.read_into(buf)]
        assert bytes(got) == b"0123456789abcdef"

        out.push(b"F", [r], [r])  # the fd rides along; ours closes once it is sent
        assert out.flush() is False
        with pytest.raises(OSError):
            os.fstat(r)
        b.read_into(buf)
        (fd,) = b.take_fds(1)
        os.close(fd)

        b.close()
        r2, w2 = os.pipe()
        os.close(w2)
        out.push(b"lost", [r2], [r2])
        with pytest.raises(BrokenResourceError):
            out.flush()
        assert not out  # dropped, and the fd it was to carry is closed
        with pytest.raises(OSError):
            os.fstat(r2)
    finally:
        os.close(w)
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_a_call_whose_id_cannot_be_looked_up_is_answered_with_a_fault(server: Server) -> None:
    """An unhashable or missing id, or a body that is not a 4-tuple, costs that call a FAULT:
    the loop thread (which runs every connection's quick calls) must not die of it."""
    c = _connect(server)
    ident = _new_list(c)
    for bad in ([1], "m", (), None), ({}, "append", (1,), None), 7, (), (ident, "append"):
        op, text = c.call(Op.CALL, bad)
        assert op == Op.FAULT and "malformed request" in text, bad
    # Fire-and-forget: its error comes as ASYNC_ERROR in front of the next reply, never
    # as a reply of its own (the client would take it for the next call's answer).
    c.send(encode(Op.CALL_ASYNC, pickle.dumps(([1], "append", (1,), None))))
    c.send(encode(Op.CALL_ASYNC, b"not a pickle"))
    c.send(encode(Op.CALL, pickle.dumps((ident, "__len__", (), {}))))
    for _ in range(2):
        op, text = c.reply()
        assert op == Op.ASYNC_ERROR and "malformed request" in text
    assert c.reply() == (Op.RESULT, 0)
    assert _connect(server).call(Op.PING, ()) == (Op.RESULT, None)  # the loop still serves


def test_outbox_write_goes_straight_out_or_queues_behind() -> None:
    """``Outbox.write``: with nothing queued the part goes to the kernel at once; what does
    not fit is queued (True: wait for writability), and a later part waits behind it."""
    a, b = memory_pair(8)
    out = Outbox(a)
    buf = memoryview(bytearray(64))
    try:
        assert out.write(b"abc") is False and not out
        assert bytes(buf[: b.read_into(buf)]) == b"abc"
        assert out.write(b"0123456789") is True  # 8 fit, 2 wait
        assert out.write(b"XY") is True  # behind them, in order
        got = bytearray(buf[: b.read_into(buf)])
        assert out.flush() is False
        got += buf[: b.read_into(buf)]
        assert bytes(got) == b"0123456789XY"
        b.close()
        with pytest.raises(BrokenResourceError):
            out.write(b"lost")
        assert not out
    finally:
        a.close()
        b.close()
