"""Pipe and Connection (issue #2, items 7-9): the stdlib API, big buffers, hostile bytes.

Most of this needs no child process: both ends live here, and a thread drains
the far end when a message is larger than a socket buffer. What crosses a
process boundary (a Connection as a Process argument, a big array to a child and
back) runs once per start method.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polyproc._connection import Connection, Pipe, wait
from polyproc._protocol.framing import HEADER, MAGIC, Kind, encode_header
from polyproc.errors import BufferTooShort, PolyprocError, ProtocolError

from . import _targets

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["duplex", "simplex"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Connection, Connection]]:
    """(reader, writer) over a socketpair or over a pipe."""
    if request.param == "duplex":
        a, b = Pipe()
        conns = (b, a)
    else:
        conns = Pipe(duplex=False)
    yield conns
    for c in conns:
        c.close()


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` on a thread now; the returned callable joins it and gives its result."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()

    def result() -> Any:
        t.join(20)
        assert not t.is_alive(), "the helper thread hung"
        return box[0]

    return result


# -- send / recv ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        None,
        0,
        -1,
        2**100,
        1.5,
        "text",
        "ü" * 10,
        b"",
        b"bytes",
        bytearray(b"ba"),
        ["test"],
        {"x": 0},
        (1, (2, 3)),
        {1, 2},
        ValueError("carried"),
        range(3),
    ],
)
def test_send_recv_round_trip(pair: tuple[Connection, Connection], obj: Any) -> None:
    r, w = pair
    w.send(obj)
    got = r.recv()
    if isinstance(obj, Exception):
        assert type(got) is type(obj) and got.args == obj.args
    else:
        assert got == obj and type(got) is type(obj)


def test_messages_keep_their_boundaries_and_order(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    for i in range(100):
        w.send(i)
        w.send_bytes(b"x" * i)
    for i in range(100):
        assert r.recv() == i
        assert r.recv_bytes() == b"x" * i


@pytest.mark.parametrize("duplex", [True, False])
def test_pipe_ends_are_not_inheritable(duplex: bool) -> None:
    """As ``os.pipe()``'s: an inheritable end would reach every spawned child (and every
    ``subprocess``), and the reader would never see EOF while one of them lives
    (CPython's TestWait hung so under spawn)."""
    a, b = Pipe(duplex)
    try:
        assert not os.get_inheritable(a.fileno())
        assert not os.get_inheritable(b.fileno())
    finally:
        a.close()
        b.close()


def test_duplex_talks_both_ways() -> None:
    a, b = Pipe()
    with a, b:
        a.send("ping")
        assert b.recv() == "ping"
        b.send("pong")
        assert a.recv() == "pong"


def test_lambdas_and_closures_travel_by_value() -> None:
    a, b = Pipe()
    k = 5
    with a, b:
        a.send(lambda x: x + k)
        assert b.recv()(1) == 6


# -- bytes ----------------------------------------------------------------------------------------


def test_send_bytes_offset_and_size(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    data = b"0123456789"
    w.send_bytes(data, 2)
    w.send_bytes(data, 2, 3)
    w.send_bytes(data, 10)
    w.send_bytes(bytearray(data), 0, 0)
    w.send_bytes(memoryview(data)[1:], 1, 2)
    assert r.recv_bytes() == b"23456789"
    assert r.recv_bytes() == b"234"
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == b"23"


def test_send_bytes_offsets_count_bytes_of_typed_buffers(
    pair: tuple[Connection, Connection],
) -> None:
    import array

    r, w = pair
    arr = array.array("i", [1, 2, 3, 4])
    w.send_bytes(arr)
    w.send_bytes(arr, 4, 8)  # offset and size count bytes, as in the stdlib (it casts to 'B')
    assert r.recv_bytes() == arr.tobytes()
    assert r.recv_bytes() == arr.tobytes()[4:12]


@pytest.mark.parametrize(("offset", "size"), [(-1, None), (11, None), (0, 11), (5, 6), (0, -1)])
def test_send_bytes_bad_offset_or_size(
    pair: tuple[Connection, Connection], offset: int, size: int | None
) -> None:
    r, w = pair
    with pytest.raises(ValueError):
        w.send_bytes(b"0123456789", offset, size)
    assert not r.poll(0)  # nothing was half-sent


def test_recv_bytes_maxlength(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    w.send_bytes(b"12345")
    assert r.recv_bytes(maxlength=5) == b"12345"
    w.send_bytes(b"123456")
    with pytest.raises(OSError):  # the stdlib's "bad message length"
        r.recv_bytes(maxlength=5)
    with pytest.raises(ValueError):
        Pipe()[0].recv_bytes(-1)


def test_recv_bytes_into(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    buf = bytearray(10)
    w.send_bytes(b"abc")
    assert r.recv_bytes_into(buf) == 3
    assert buf[:3] == b"abc"
    w.send_bytes(b"xyz")
    assert r.recv_bytes_into(buf, 7) == 3
    assert buf == b"abc\0\0\0\0xyz"
    w.send_bytes(b"too long for it")
    with pytest.raises(BufferTooShort) as info:
        r.recv_bytes_into(buf)
    assert info.value.args[0] == b"too long for it"  # the message is not lost
    assert buf == b"abc\0\0\0\0xyz"  # nor the buffer clobbered
    w.send_bytes(b"12")
    with pytest.raises(BufferTooShort):
        r.recv_bytes_into(buf, 9)


def test_recv_bytes_into_a_typed_buffer(pair: tuple[Connection, Connection]) -> None:
    import array

    r, w = pair
    target = array.array("i", [0, 0, 0])
    w.send_bytes(array.array("i", [7, 8]))
    assert r.recv_bytes_into(target) == 8
    assert list(target) == [7, 8, 0]


def test_send_bytes_then_recv_unpickles(pair: tuple[Connection, Connection]) -> None:
    """The stdlib's ``recv`` unpickles what ``send_bytes`` sent: both directions interoperate."""
    r, w = pair
    w.send_bytes(pickle.dumps({"a": 1}))
    assert r.recv() == {"a": 1}
    w.send({"b": 2})
    assert pickle.loads(r.recv_bytes()) == {"b": 2}


# -- poll, fileno, close, flags, context manager -----------------------------------------------------


def test_poll(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    assert r.poll() is False
    t0 = time.monotonic()
    assert r.poll(0.1) is False
    assert 0.08 <= time.monotonic() - t0 < 3
    w.send(1)
    assert r.poll() is True
    assert r.poll(None) is True
    assert r.recv() == 1
    assert r.poll(0) is False


def test_poll_none_waits_for_a_message(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    start = threading.Event()

    def later() -> None:
        start.wait(10)
        w.send("late")

    t = threading.Thread(target=later)
    t.start()
    start.set()
    assert r.poll(None) is True
    assert r.recv() == "late"
    t.join()


def test_fileno_and_flags() -> None:
    a, b = Pipe()
    r, w = Pipe(duplex=False)
    for c in (a, b, r, w):
        assert isinstance(c.fileno(), int) and c.fileno() >= 0
        assert not c.closed
    assert a.readable and a.writable and b.readable and b.writable
    assert r.readable and not r.writable
    assert w.writable and not w.readable
    with pytest.raises(OSError):
        r.send(1)
    with pytest.raises(OSError):
        w.recv()
    with pytest.raises(OSError):
        w.poll()
    for c in (a, b, r, w):
        c.close()
        assert c.closed
        c.close()  # idempotent


def test_closed_connection_refuses_use() -> None:
    a, b = Pipe()
    a.close()
    for use in (
        lambda: a.send(1),
        lambda: a.recv(),
        lambda: a.send_bytes(b"x"),
        lambda: a.recv_bytes(),
        lambda: a.poll(),
        lambda: a.fileno(),
    ):
        with pytest.raises(OSError):  # the stdlib's "handle is closed"
            use()
    b.close()


def test_context_manager_closes() -> None:
    a, b = Pipe()
    with a as entered, b:
        assert entered is a
        a.send("inside")
        assert b.recv() == "inside"
    assert a.closed and b.closed


def test_eof_when_the_peer_closes(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    w.send("last")
    w.close()
    assert r.recv() == "last"  # what was sent before close still arrives
    assert r.poll(0)  # EOF counts as readable, as in the stdlib
    with pytest.raises(EOFError):
        r.recv()
    with pytest.raises(EOFError):
        r.recv_bytes()


def test_send_to_a_closed_peer_raises_oserror() -> None:
    a, b = Pipe()
    b.close()
    with pytest.raises(OSError):
        for _ in range(100):
            a.send_bytes(b"x" * 65536)
    a.close()


def test_repr() -> None:
    a, b = Pipe()
    assert "fd=" in repr(a)
    a.close()
    assert "closed" in repr(a)
    b.close()


def test_connection_from_an_fd() -> None:
    s1, s2 = socket.socketpair()
    a, b = Connection(s1.detach()), Connection(s2.detach())
    with a, b:
        a.send([1])
        assert b.recv() == [1]
    with pytest.raises(ValueError):
        Connection(-1)


# -- wait -----------------------------------------------------------------------------------------


def test_wait() -> None:
    a, b = Pipe()
    c, d = Pipe()
    with a, b, c, d:
        assert wait([b, d], timeout=0) == []
        t0 = time.monotonic()
        assert wait([b, d], timeout=0.1) == []
        assert 0.08 <= time.monotonic() - t0 < 3
        c.send(1)
        assert wait([b, d], timeout=5) == [d]
        assert wait([b, d]) == [d]  # no timeout: returns as soon as one is ready
        a.send(2)
        assert set(map(id, wait([b, d], timeout=5))) == {id(b), id(d)}
        assert b.recv() == 2 and d.recv() == 1
        # raw fds and sockets are waitable too
        assert wait([b.fileno()], timeout=0) == []
        a.send(3)
        assert wait([b.fileno()], timeout=5) == [b.fileno()]
        assert b.recv() == 3


def test_wait_and_poll_see_messages_already_buffered() -> None:
    """Two messages read in one gulp: the second is ready though the fd has nothing left."""
    a, b = Pipe()
    with a, b:
        a.send("one")
        a.send("two")
        assert wait([b], timeout=5) == [b]
        assert b.recv() == "one"
        assert wait([b], timeout=0) == [b]
        assert b.poll(0)
        assert b.recv() == "two"
        assert wait([b], timeout=0) == []


def test_eof_from_a_child_that_exits(ctx: Any) -> None:
    a, b = Pipe()
    p = ctx.Process(target=_targets.send_value, args=(b, "last words"))
    p.start()
    b.close()  # the child holds the only other copy
    assert a.recv() == "last words"
    with pytest.raises(EOFError):
        a.recv()
    p.join()
    a.close()


def test_wait_sees_eof_and_process_sentinels(ctx: Any) -> None:
    a, b = Pipe()
    p = ctx.Process(target=_targets.signal_ready_then_wait, args=(b,))
    p.start()
    assert a.recv() == "ready"
    assert wait([p.sentinel], timeout=0) == []
    a.send("go")
    assert wait([p.sentinel], timeout=10) == [p.sentinel]
    p.join()
    b.close()
    assert wait([a], timeout=5) == [a]  # the peer closed: ready, and recv raises EOFError
    with pytest.raises(EOFError):
        a.recv()
    a.close()


def test_connection_face() -> None:
    pytest.importorskip(
        "polyproc._listener", reason="Listener/Client are being written (issue #2 item 7)"
    )
    import polyproc.connection as face

    assert face.Pipe is Pipe and face.Connection is Connection and face.wait is wait
    assert face.BufferTooShort is BufferTooShort


# -- big buffers ----------------------------------------------------------------------------------

_BIG = 8 << 20  # over any socket or pipe buffer, so the reader must run alongside the writer


def _big_values() -> list[Any]:
    pattern = bytes(range(256)) * (_BIG // 256)
    return [pattern, bytearray(pattern), memoryview(pattern)]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy", "numpy-in-dict"])
def test_large_buffers_round_trip(pair: tuple[Connection, Connection], kind: str) -> None:
    r, w = pair
    if kind.startswith("numpy"):
        np = pytest.importorskip("numpy")
        value: Any = np.arange(_BIG // 8, dtype=np.float64).reshape(-1, 16)
        if kind == "numpy-in-dict":
            value = {"a": value, "b": value[::2], "small": np.zeros(3)}
    else:
        value = _big_values()[["bytes", "bytearray", "memoryview"].index(kind)]
    result = _in_thread(r.recv)
    w.send(value)
    got = result()
    if kind == "numpy":
        assert got.dtype == value.dtype and got.shape == value.shape
        assert (got == value).all()
        assert got.flags.writeable
    elif kind == "numpy-in-dict":
        assert all((got[k] == value[k]).all() for k in value)
    elif kind == "memoryview":
        assert bytes(got) == bytes(value)
    else:
        assert type(got) is type(value) and got == value


def test_large_send_bytes_and_recv_bytes_into(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    data = os.urandom(_BIG)
    target = bytearray(_BIG + 10)
    result = _in_thread(lambda: r.recv_bytes_into(target, 10))
    w.send_bytes(data)
    assert result() == _BIG
    assert target[10:] == data
    result = _in_thread(r.recv_bytes)
    w.send_bytes(memoryview(data), 5, _BIG - 10)
    assert result() == data[5:-5]


def test_big_message_sizes_frame(pair: tuple[Connection, Connection]) -> None:
    """Sizes around the internal chunk and coalescing thresholds."""
    r, w = pair
    for n in (0, 1, (1 << 14) - 1, 1 << 14, (1 << 16) - 1, 1 << 16, (1 << 16) + 1, 1 << 17):
        data = os.urandom(n)
        result = _in_thread(r.recv_bytes)
        w.send_bytes(data)
        assert result() == data
        result = _in_thread(r.recv)
        w.send(bytearray(data))
        assert result() == data


def test_large_array_to_a_child_and_back(ctx: Any) -> None:
    np = pytest.importorskip("numpy")
    a, b = Pipe()
    p = ctx.Process(target=_targets.echo, args=(b,))
    p.start()
    value = {"array": np.arange(1 << 20, dtype=np.int64), "bytes": os.urandom(3 << 20)}
    result = _in_thread(a.recv)
    a.send(value)
    got = result()
    assert (got["array"] == value["array"]).all() and got["bytes"] == value["bytes"]
    a.send(None)
    p.join(10)
    assert p.exitcode == 0
    a.close()
    b.close()


# -- Connections as Process arguments --------------------------------------------------------------


def test_connections_pass_to_children(ctx: Any) -> None:
    a, b = Pipe()
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=_targets.echo, args=(b,))
    q = ctx.Process(target=_targets.send_value, args=(w, "over a simplex pipe"))
    p.start()
    q.start()
    w.close()
    assert r.recv() == "over a simplex pipe"
    a.send({"n": 1})
    assert a.recv() == {"n": 1}
    a.send(b"raw")
    assert a.recv() == b"raw"
    a.send(None)
    p.join(10)
    q.join(10)
    assert p.exitcode == q.exitcode == 0
    for c in (a, b, r):
        c.close()


def test_a_connection_travels_inside_a_message() -> None:
    """An fd-owning object inside a message arrives as a working Connection (SCM_RIGHTS)."""
    a, b = Pipe()
    x, y = Pipe()
    with a, b, x, y:
        a.send({"conn": y})
        carried = b.recv()["conn"]
        assert carried.fileno() != y.fileno()
        x.send("through the carried end")
        assert carried.recv() == "through the carried end"
        carried.close()


# -- hostile bytes ---------------------------------------------------------------------------------


def _raw_pair() -> tuple[Connection, int]:
    """A Connection and the raw fd of its peer, to write whatever bytes we like."""
    s1, s2 = socket.socketpair()
    return Connection(s1.detach()), s2.detach()


def _header(
    kind: int = Kind.BYTES, body: int = 0, nbuffers: int = 0, nfds: int = 0, magic: int = MAGIC
) -> bytes:
    return HEADER.pack(magic, kind, nfds, nbuffers, body)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("bad magic", _header(magic=0x1234, body=3) + b"abc"),
        ("unknown kind", _header(kind=99, body=3) + b"abc"),
        ("buffers in a bytes frame", _header(kind=Kind.BYTES, nbuffers=2, body=0) + b"\0" * 16),
        ("too many buffers", _header(kind=Kind.PICKLE, nbuffers=(1 << 16) + 1, body=0)),
        ("short header", _header(body=3)[:9]),
        ("truncated body", _header(body=100) + b"x" * 10),
        ("truncated buffer table", _header(kind=Kind.PICKLE, nbuffers=4, body=0) + b"\0" * 12),
        ("truncated buffer", encode_header(Kind.PICKLE, 1, [1000]) + b"N" + b"\0" * 10),
        ("huge length, then close", _header(body=1 << 62)),
    ],
)
@pytest.mark.parametrize("reader", ["recv", "recv_bytes", "recv_bytes_into"])
def test_hostile_frames_raise_and_never_hang(name: str, raw: bytes, reader: str) -> None:
    conn, fd = _raw_pair()
    os.write(fd, raw)
    os.close(fd)  # then the peer hangs up: nothing more will come
    read = {
        "recv": conn.recv,
        "recv_bytes": conn.recv_bytes,
        "recv_bytes_into": lambda: conn.recv_bytes_into(bytearray(1 << 20)),
    }[reader]
    with pytest.raises((ProtocolError, EOFError)):
        read()
    conn.close()


def _frames(*objs: Any) -> bytes:
    bodies = [pickle.dumps(o, 5) for o in objs]
    return b"".join(encode_header(Kind.PICKLE, len(b)) + b for b in bodies)


_TWO = (("a", 1), list(range(50)))
_FIRST = len(_frames(_TWO[0]))


@pytest.mark.parametrize(
    "split", [1, HEADER.size - 1, HEADER.size, HEADER.size + 1, _FIRST - 1, _FIRST, _FIRST + 1]
)
def test_a_message_cut_anywhere_by_the_reads_arrives_whole(split: int) -> None:
    """``recv`` takes a small message straight from a read when it is all there, and keeps
    what follows; a header or body cut by a read, or a message followed by the start of
    the next, is completed by the reads after it. The second part is written only once
    the reader has taken the first (nothing left queued on its socket). A first message
    goes before: a new Connection reads a header alone (a big body may follow)."""
    import fcntl
    import termios

    conn, fd = _raw_pair()
    os.write(fd, _frames("first"))
    assert conn.recv() == "first"
    raw = _frames(*_TWO)

    def queued() -> int:
        return int(struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0" * 4))[0])

    def feed() -> None:
        os.write(fd, raw[:split])
        deadline = time.monotonic() + 10
        while queued() and time.monotonic() < deadline:
            time.sleep(0.001)  # polling the kernel's queue, which the reader drains
        os.write(fd, raw[split:])

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert conn.recv() == _TWO[0]
        assert conn.recv() == _TWO[1]
    finally:
        writer.join()
        os.close(fd)
        conn.close()


def test_garbage_with_the_peer_still_open_raises_at_once() -> None:
    """A bad header is refused when read, without waiting for more bytes."""
    conn, fd = _raw_pair()
    os.write(fd, b"\xff" * 64)
    with pytest.raises(ProtocolError):
        conn.recv()
    assert conn.closed  # a stream that lied about framing is not read again
    os.close(fd)


def test_pickle_frame_with_garbage_body_raises_a_polyproc_error(
    request: pytest.FixtureRequest,
) -> None:
    conn, fd = _raw_pair()
    body = b"\x80\x05this is not a pickle"
    os.write(fd, encode_header(Kind.PICKLE, len(body)) + body)
    os.close(fd)
    try:
        conn.recv()
    except (PolyprocError, EOFError):
        pass
    except pickle.UnpicklingError as exc:
        raise AssertionError(f"unpickler error escaped: {exc!r}") from exc
    finally:
        conn.close()


def test_maxlength_refuses_before_reading_the_body() -> None:
    """A huge announced length with maxlength set fails at the header, without allocating it."""
    conn, fd = _raw_pair()
    os.write(fd, _header(body=1 << 40))
    with pytest.raises(OSError):
        conn.recv_bytes(maxlength=1024)
    os.close(fd)
    conn.close()


def test_fd_count_without_fds_does_not_hang() -> None:
    conn, fd = _raw_pair()
    os.write(fd, _header(kind=Kind.PICKLE, body=1, nfds=2) + b"N")
    os.close(fd)
    with pytest.raises((PolyprocError, EOFError)):
        conn.recv()
    conn.close()


def test_struct_layout_is_sixteen_bytes() -> None:
    assert HEADER.size == 16
    assert struct.calcsize("<HBBIQ") == 16


# -- out of band: the sender makes no copy -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "memoryview", "bytearray", "bytes"])
def test_large_buffers_leave_the_pickle_stream_uncopied(kind: str) -> None:
    """Inside a message, a 1 MiB buffer goes out of band, as a view of the original memory."""
    np = pytest.importorskip("numpy")
    from polyproc._serialize import DEFAULT_SERIALIZER

    if kind == "numpy":
        value: Any = np.arange(1 << 17, dtype=np.float64)
        memory = value
    else:
        backing = bytearray(os.urandom(1 << 20))
        value = {
            "memoryview": memoryview(backing)[16:],
            "bytearray": backing,
            "bytes": bytes(backing),
        }[kind]
        memory = np.frombuffer(value, dtype=np.uint8)
    payload = DEFAULT_SERIALIZER.dumps({"value": value, "small": b"x" * 10})
    assert len(payload.body) < 4096  # the megabyte is not in the stream ...
    assert len(payload.buffers) == 1  # ... but beside it, pointing at the original
    assert np.shares_memory(np.frombuffer(payload.buffers[0], dtype=np.uint8), memory)
    got = DEFAULT_SERIALIZER.loads(payload.body, payload.buffers)["value"]
    if kind == "numpy":
        assert (got == value).all()
    else:
        assert bytes(got) == bytes(value)
