"""Connection streams (issue #14): the fast paths keep every byte, boundary and fd.

What changed for speed, each checked at the sizes where it switches on:

* ``recv_bytes`` of a body not yet buffered reads straight into the ``bytes`` it
  returns (``_DIRECT``), and after a big frame reads the next header alone; up to
  32 MiB the read itself makes that ``bytes`` (``Stream.read_bytes``), so a process
  never imports ctypes to receive one (docs/connection.md, stop 18);
* ``send`` of a small object uses plain pickle first, and falls back to the full
  serializer for anything special (out-of-band buffers, fds, lambdas, big bytes);
* ``send_bytes`` from ``bulk.BYTES_THRESHOLD`` up lends the bytes through a pooled
  memfd (off by default; switched on here), the receiver maps each slot once.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polyproc import _connection
from polyproc._connection import Connection, Pipe
from polyproc._protocol.framing import Kind, encode_header
from polyproc._shm import bulk
from polyproc._transport import FdStream, UnixStream, big_pipe, stream
from polyproc._transport.buffers import HUGE
from polyproc._transport.fds import send_fds
from polyproc.errors import BrokenResourceError, ProtocolError

from . import _programs, _stream_targets
from ._stream_targets import payload

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
#: Sizes either side of every switch: coalescing, _DIRECT, the 64 KiB chunk, 1 MiB (lending).
BOUNDARIES = [
    0,
    1,
    4095,
    4096,
    _connection._COALESCE - 1,
    _connection._COALESCE,
    _connection._DIRECT - 1,
    _connection._DIRECT,
    _connection._DIRECT + 1,
    _connection._CHUNK - 17,
    _connection._CHUNK - 16,
    _connection._CHUNK,
    _connection._CHUNK + 1,
    MIB - 1,
    MIB,
    MIB + 1,
    3 * MIB + 5,
]


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


#: ``lending``'s ``made()``.
Made = Callable[[], list[Any]]


@pytest.fixture
def lending() -> Iterator[Made]:
    """Lend from 1 MiB up (the default is off), and leave no warm slot behind.

    Yields ``made()``: the pooled slots made since the test began. The slot pool is the
    process's own: free slots earlier tests left warm are dropped first (one of them
    would be lent here), and any still busy (another test's receiver holding a lease)
    is not counted.
    """
    old = bulk.BYTES_THRESHOLD
    bulk.trim()
    before = list(bulk._pool.slots)  # held: no id of theirs is reused during the test
    bulk.BYTES_THRESHOLD = MIB
    yield lambda: [s for s in bulk._pool.slots if all(s is not b for b in before)]
    bulk.BYTES_THRESHOLD = old
    bulk.trim()


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    box: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # pragma: no cover - surfaced by result()
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result() -> Any:
        t.join(30)
        assert not t.is_alive(), "the helper thread hung"
        if errors:
            raise errors[0]
        return box[0] if box else None

    return result


# -- the direct receive path ----------------------------------------------------------------------


def test_every_boundary_size_arrives_intact_as_bytes(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    sent = [payload(n, i) for i, n in enumerate(BOUNDARIES)]
    done = _in_thread(lambda: [w.send_bytes(d) for d in sent])
    for d in sent:
        got = r.recv_bytes()
        assert type(got) is bytes and got == d, len(d)
    done()


def test_recv_of_boundary_sizes_keeps_bytes_and_bytearray(
    pair: tuple[Connection, Connection],
) -> None:
    r, w = pair
    sent: list[Any] = []
    for i, n in enumerate(BOUNDARIES):
        sent += [payload(n, i), bytearray(payload(n, -i))]
    done = _in_thread(lambda: [w.send(d) for d in sent])
    for d in sent:
        got = r.recv()
        assert type(got) is type(d) and got == d, (type(d), len(d))
    done()


def test_interleaved_big_and_small_keep_boundaries(pair: tuple[Connection, Connection]) -> None:
    """After a big frame the reader reads a header alone; small ones must still batch right."""
    r, w = pair
    msgs: list[Any] = []
    for i in range(40):
        msgs += [payload(_connection._DIRECT * (1 + i % 3), i), i, payload(i, i), ("t", i)]
    done = _in_thread(
        lambda: [w.send_bytes(m) if isinstance(m, bytes) else w.send(m) for m in msgs]
    )
    for m in msgs:
        got = r.recv_bytes() if isinstance(m, bytes) else r.recv()
        assert got == m
    done()


def test_recv_bytes_into_after_a_direct_read(pair: tuple[Connection, Connection]) -> None:
    r, w = pair
    big, small = payload(MIB + 3, 1), payload(10, 2)
    done = _in_thread(lambda: (w.send_bytes(big), w.send_bytes(small)))
    buf = bytearray(MIB + 20)
    assert r.recv_bytes_into(buf, 5) == MIB + 3
    assert bytes(buf[5 : 5 + MIB + 3]) == big
    assert r.recv_bytes() == small
    done()


def test_peer_closing_inside_a_big_body_is_a_protocol_error() -> None:
    a, b = socket.socketpair()
    conn = Connection(b.detach())
    a.sendall(encode_header(Kind.BYTES, 4 * MIB) + b"x" * 50_007)  # fits the socket buffer
    a.close()
    with pytest.raises(ProtocolError, match="truncated"):
        conn.recv_bytes()
    assert conn.closed


def test_maxlength_still_refuses_a_big_frame() -> None:
    a, b = Pipe()
    with a, b:
        done = _in_thread(lambda: a.send_bytes(payload(MIB, 0)))
        with pytest.raises(OSError):
            b.recv_bytes(MIB - 1)
        try:
            done()  # the sender finishes, unless the refusing end hung up first:
        except (BrokenPipeError, BrokenResourceError):
            pass  # a refused frame closes the receiving end, so EPIPE is the other outcome


@pytest.mark.parametrize("size", [64 << 10, 4 * MIB])
@pytest.mark.parametrize("kind", ["duplex", "simplex"])
def test_peer_closing_inside_a_body_is_a_protocol_error(kind: str, size: int) -> None:
    """Both ways a body is read (made by the read and joined, or into a fresh bytes)."""
    if kind == "duplex":
        a, b = socket.socketpair()
        conn, write, close = Connection(b.detach()), a.sendall, a.close
    else:
        r, w = big_pipe()
        conn = Connection(r, writable=False)

        def write(data: bytes) -> None:
            os.write(w, data)

        def close() -> None:
            os.close(w)

    write(encode_header(Kind.BYTES, size) + b"x" * 50_007)  # fits either buffer
    close()
    with pytest.raises(ProtocolError, match="truncated"):
        conn.recv_bytes()
    assert conn.closed


# -- bodies made by the read itself (no ctypes up to 32 MiB) ---------------------------------------


def test_receiving_up_to_32_mib_imports_no_ctypes(tmp_path: Any) -> None:
    """ctypes (fresh_bytes) cost 2-7 ms on a process's first big receive: a tenth of a 64 KiB
    stream. A fresh interpreter receives every size below HUGE, both kinds of Pipe, a body
    alone and after bytes already buffered, and must not have imported it."""
    source = f"""
        import sys, threading
        import polyproc

        def through(w, r, sizes):
            for n in sizes:
                t = threading.Thread(target=w.send_bytes, args=(bytes([n % 251]) * n,))
                t.start()
                got = r.recv_bytes()
                t.join()
                assert got == bytes([n % 251]) * n, n

        a, b = polyproc.Pipe()
        through(a, b, [5, 64 << 10, 64 << 10, 5, {MIB + 3}, {4 * MIB}, {HUGE - 1}, 3])
        r, w = polyproc.Pipe(duplex=False)
        through(w, r, [5, 64 << 10, 64 << 10, {MIB}])
        print("ctypes" in sys.modules)
    """
    done = _programs.run(source, "fork", tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


class _Counting(UnixStream):
    """A Unix stream that records the size of every ``read_into`` (the reads of the buffer)."""

    sizes: list[int]

    def read_into(self, view: memoryview, flags: int = 0) -> int:
        self.sizes.append(view.nbytes)
        return super().read_into(view, flags)


def test_a_first_big_body_goes_straight_into_place() -> None:
    """A Connection's first read takes a header alone: a big body after it is read into
    its own bytes, never into the 64 KiB chunk (copy-on-write faults in a fork child)."""
    a, b = socket.socketpair()
    s = _Counting(b.detach())
    s.sizes = []
    conn = Connection(s)
    with a, conn:
        body = payload(64 << 10, 3)
        a.sendall(encode_header(Kind.BYTES, len(body)) + body + encode_header(Kind.BYTES, 2))
        a.sendall(b"ok" + encode_header(Kind.BYTES, 1) + b"!")
        assert conn.recv_bytes() == body
        assert s.sizes == [_connection._HDR]  # the body came from one read_bytes
        assert conn.recv_bytes() == b"ok"  # a small one after: header alone, then a chunk
        assert conn.recv_bytes() == b"!"  # ... which held this one too
        assert s.sizes == [_connection._HDR, _connection._HDR, _connection._CHUNK]


def _frame_to(sock: socket.socket, body: bytes) -> None:
    sock.sendall(encode_header(Kind.BYTES, len(body)) + body)


class _Trickle(UnixStream):
    """A Unix stream whose reads of a header's room return at most ``cut`` bytes (a header
    split by the kernel: fds riding on its first byte, a writer caught mid-write)."""

    cut = 7

    def read_into(self, view: memoryview, flags: int = 0) -> int:
        return super().read_into(
            view[: self.cut] if view.nbytes == _connection._HDR else view, flags
        )


def test_big_bodies_skip_the_receive_buffer_and_a_split_header_still_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a big frame (and at first) recv_bytes reads a header alone and the body straight
    into its bytes, without the buffer's machinery; a header that comes in pieces falls back
    to it, and the frames keep their boundaries either way."""
    a, b = socket.socketpair()
    conn = Connection(UnixStream(b.detach()))
    needs: list[int] = []
    need = conn._need
    monkeypatch.setattr(conn, "_need", lambda *args: needs.append(args[1]) or need(*args))
    bodies = [payload(_connection._DIRECT + i, i) for i in range(3)]
    with a, conn:
        done = _in_thread(lambda: [_frame_to(a, body) for body in [*bodies, b"small"]])
        assert [conn.recv_bytes() for _ in bodies] == bodies
        assert needs == []
        assert conn.recv_bytes() == b"small"
        done()
    a, b = socket.socketpair()
    conn = Connection(_Trickle(b.detach()))
    with a, conn:
        done = _in_thread(lambda: [_frame_to(a, body) for body in [*bodies, b"small"]])
        assert [conn.recv_bytes() for _ in bodies] + [conn.recv_bytes()] == [*bodies, b"small"]
        done()


def _unix_pair() -> tuple[socket.socket, UnixStream]:
    a, b = socket.socketpair()
    return a, UnixStream(b.detach())


def test_read_bytes_of_a_unix_stream_keeps_head_and_order() -> None:
    a, s = _unix_pair()
    with a:
        body = payload(100_000, 1)
        a.sendall(body)
        got = s.read_bytes(len(body))
        assert type(got) is bytes and got == body
        a.sendall(b"tail" + body)
        assert s.read_bytes(len(body) + 7, bytearray(b"abc")) == b"abctail" + body
        a.sendall(body[:10])
        done = _in_thread(lambda: a.sendall(body[10:]))  # one call waits for the rest
        assert s.read_bytes(len(body)) == body
        done()
    s.close()


def test_fds_on_a_header_are_kept_and_on_a_body_are_not_leaked() -> None:
    """A frame's fds ride on its header, read by ``read_into``; a body is read without
    room for fds, so any a peer put there are closed by the kernel, not leaked to us."""
    a, s = _unix_pair()
    r, w = os.pipe()
    try:
        with a:
            body = payload(50_000, 2)
            send_fds(a, b"head", [w])
            a.sendall(body)
            head = bytearray(4)
            assert s.read_into(memoryview(head)) == 4 and head == b"head"
            assert s.read_bytes(len(body)) == body
            (passed,) = s.take_fds(1)
            os.write(passed, b"!")
            os.close(passed)
            assert os.read(r, 1) == b"!"
            before = len(os.listdir("/proc/self/fd"))
            send_fds(a, body, [w, w, w])
            assert s.read_bytes(len(body)) == body
            assert len(os.listdir("/proc/self/fd")) == before
            assert s.take_fds(0) == []
    finally:
        os.close(r)
        os.close(w)
    s.close()


@pytest.mark.parametrize("kind", ["unix", "pipe"])
def test_read_bytes_ends_short_at_end_of_stream(kind: str) -> None:
    if kind == "unix":
        a, s = _unix_pair()
        write, close = a.sendall, a.close
    else:
        r, w = os.pipe()
        s = FdStream(r)

        def write(data: bytes) -> None:
            os.write(w, data)

        def close() -> None:
            os.close(w)

    write(b"x" * 1000)
    close()
    assert s.read_bytes(5000) == b"x" * 1000
    assert s.read_bytes(5000, b"yy") == b"yy"
    s.close()


class _BehindPipe(FdStream):
    """A pipe whose writer is behind: the rest of a message is written after the first read."""

    def __init__(self, r: int, w: int, rest: bytes) -> None:
        super().__init__(r)
        self.w, self.rest, self.reads = w, rest, 0

    def _read_new(self, n: int) -> bytes:
        data = super()._read_new(n)
        self.reads += 1
        if self.rest:
            os.write(self.w, self.rest)
            self.rest = b""
        return data


def test_read_bytes_of_a_pipe_joins_a_short_read() -> None:
    r, w = big_pipe()
    body = payload(300_000, 4)
    s = _BehindPipe(r, w, body[100_000:])
    os.write(w, body[:100_000])
    assert s.read_bytes(len(body)) == body
    assert s.reads == 2
    s.close()
    os.close(w)


def test_big_reads_still_go_into_a_fresh_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """From HUGE up (huge pages asked for), and a big rest after a head (no join of it all)."""
    made: list[int] = []

    def spy(n: int) -> Any:
        made.append(n)
        return real(n)

    real = stream.fresh_bytes
    monkeypatch.setattr(stream, "fresh_bytes", spy)
    a, s = _unix_pair()
    with a:
        head = b"h" * 10
        rest = payload(stream._JOIN_MAX + 1, 5)
        done = _in_thread(lambda: a.sendall(rest + payload(HUGE, 6)))
        assert s.read_bytes(len(head) + len(rest), head) == head + rest
        assert s.read_bytes(HUGE) == payload(HUGE, 6)
        done()
        assert made == [len(head) + len(rest), HUGE]
        done = _in_thread(lambda: a.sendall(payload(HUGE - 1, 7)))
        assert s.read_bytes(HUGE - 1) == payload(HUGE - 1, 7)
        done()
        assert made == [len(head) + len(rest), HUGE]
    s.close()


# -- the plain-pickle fast path of send ------------------------------------------------------------


def test_send_falls_back_for_what_plain_pickle_cannot_carry() -> None:
    a, b = Pipe()
    c, d = Pipe()
    with a, b, c, d:
        k = 3
        big = payload(2 * MIB, 7)
        a.send(lambda x: x * k)  # needs cloudpickle
        a.send((1, d))  # an fd-owning object inside a tuple
        a.send(("big", big))  # big bytes: out of band, not in the pickle stream
        a.send(("mid", payload(100_000, 1)))  # pickled in band, sent as is
        assert b.recv()(2) == 6
        tag, passed = b.recv()
        assert tag == 1
        c.send("through the passed end")
        assert passed.recv() == "through the passed end"
        passed.close()
        assert b.recv() == ("big", big)
        assert b.recv() == ("mid", payload(100_000, 1))


def test_send_of_an_out_of_band_buffer_takes_the_full_path() -> None:
    a, b = Pipe()
    with a, b:
        view = memoryview(bytearray(payload(200_000, 3)))
        pb = pickle.PickleBuffer(view)
        done = _in_thread(lambda: a.send(pb))
        got = b.recv()
        assert bytes(got) == bytes(view)
        done()


# -- lending big send_bytes through pooled memfds --------------------------------------------------


def test_lending_switches_at_the_threshold_and_keeps_every_byte(lending: Made) -> None:
    a, b = Pipe()
    with a, b:
        sizes = [MIB - 1, MIB, MIB + 1, 2 * MIB, MIB - 1, 5 * MIB + 3, MIB]
        sent = [payload(n, i) for i, n in enumerate(sizes)]
        for d in sent:  # one at a time: each is lent (a slot is free again after each)
            a.send_bytes(d)
            assert b.recv_bytes() == d
        assert b._peer_maps is not None  # the ones >= 1 MiB were lent
        # Slots are reused: sizes seen were MiB, MiB+1, 2 MiB, 5 MiB+3: at most one each.
        assert len(lending()) <= 4


def test_a_stream_of_one_size_reuses_its_slots_and_mappings(lending: Made) -> None:
    a, b = Pipe()
    with a, b:
        for i in range(30):
            a.send_bytes(payload(2 * MIB, i))
            assert b.recv_bytes() == payload(2 * MIB, i)
        assert len([s for s in lending() if s.capacity == 2 * MIB]) == 1
        assert len(b._peer_maps._maps) == 1


def test_a_slow_receiver_gets_everything_in_order(lending: Made) -> None:
    """More lent messages than slots before the reader reads: the rest go by socket."""
    a, b = Pipe()
    with a, b:
        n = bulk._LEND_SLOTS
        for i in range(n):  # lent: only a small frame enters the socket, no wait
            a.send_bytes(payload(2 * MIB, i))
        busy = [s for s in lending() if s.capacity == 2 * MIB]
        assert len(busy) == n and all(s.busy() for s in busy)
        # Every slot of this size is in flight: these go through the socket (and block
        # until the reader drains it, as a socket does), in order after the lent ones.
        done = _in_thread(lambda: [a.send_bytes(payload(2 * MIB, n + k)) for k in range(3)])
        for i in range(n + 3):
            assert b.recv_bytes() == payload(2 * MIB, i)
        done()
        assert len([s for s in lending() if s.capacity == 2 * MIB]) == n


def test_interleaved_sizes_both_directions_with_fds_alongside(lending: Made) -> None:
    a, b = Pipe()
    extra_r, extra_w = Pipe()
    with a, b, extra_r, extra_w:

        def side(me: Connection, seed: int) -> list[Any]:
            for i, n in enumerate([3 * MIB, 10, MIB, 70_000, 2 * MIB]):
                me.send_bytes(payload(n, seed + i))
                if i == 2:
                    me.send(("fd", extra_w if seed == 0 else extra_r))
            return [me.recv_bytes() if k != 3 else me.recv() for k in range(6)]

        left = _in_thread(lambda: side(a, 0))
        right = side(b, 100)
        got_left = left()
        sizes = [3 * MIB, 10, MIB, 70_000, 2 * MIB]
        assert [x for x in right if isinstance(x, bytes)] == [
            payload(n, i) for i, n in enumerate(sizes)
        ]
        assert [x for x in got_left if isinstance(x, bytes)] == [
            payload(n, 100 + i) for i, n in enumerate(sizes)
        ]
        fd_from_left = next(x for x in right if isinstance(x, tuple))[1]
        fd_from_right = next(x for x in got_left if isinstance(x, tuple))[1]
        fd_from_left.send("over a passed end")
        assert fd_from_right.recv() == "over a passed end"
        fd_from_left.close()
        fd_from_right.close()


def test_recv_of_a_lent_send_bytes_unpickles_it(lending: Made) -> None:
    a, b = Pipe()
    with a, b:
        obj = {"pad": payload(MIB, 9)}
        a.send_bytes(pickle.dumps(obj))
        assert b.recv() == obj


def test_a_retired_slot_is_let_go_by_the_receiver(lending: Made) -> None:
    a, b = Pipe()
    with a, b:
        a.send_bytes(payload(2 * MIB, 1))
        assert b.recv_bytes() == payload(2 * MIB, 1)
        assert len(b._peer_maps._maps) == 1
        bulk.trim()  # the sender drops its free slots: each is marked retired
        a.send_bytes(payload(3 * MIB, 2))
        assert b.recv_bytes() == payload(3 * MIB, 2)
        assert len(b._peer_maps._maps) == 1  # the retired 2 MiB mapping went


def test_closing_a_connection_unmaps_its_peer_slots(lending: Made) -> None:
    a, b = Pipe()
    a.send_bytes(payload(MIB, 1))
    assert b.recv_bytes() == payload(MIB, 1)
    maps = b._peer_maps._maps
    mm = next(iter(maps.values()))
    b.close()
    a.close()
    assert mm.closed and b._peer_maps is None


def test_garbage_shared_bytes_frame_without_an_fd_is_refused() -> None:
    a, b = socket.socketpair()
    conn = Connection(b.detach())
    a.sendall(encode_header(Kind.SHARED_BYTES, 8) + (5).to_bytes(8, "little"))
    with pytest.raises(ProtocolError):
        conn.recv_bytes()
    a.close()
    conn.close()


def test_lent_streams_cross_processes_both_ways(ctx: Any, lending: Made) -> None:
    sizes = [MIB - 1, MIB, 2 * MIB, 64 << 10, 4 * MIB + 1, MIB]
    a, b = Pipe()
    p = ctx.Process(target=_stream_targets.echo_stream, args=(b, MIB, sizes))
    p.start()
    b.close()
    try:
        for i, n in enumerate(sizes):
            a.send_bytes(payload(n, i))
        assert a.recv() == []
        for i, n in enumerate(sizes):
            assert a.recv_bytes() == payload(n, i + 1000)
        a.send("done")
    finally:
        p.join(30)
        a.close()
    assert p.exitcode == 0


def test_no_fd_leaks_over_a_lent_stream(lending: Made) -> None:
    a, b = Pipe()
    with a, b:
        for i in range(2):  # the slot's own mapping (Python's mmap dups its fd) is made at reuse
            a.send_bytes(payload(2 * MIB, i))
            b.recv_bytes()
        before = len(os.listdir("/proc/self/fd"))
        for i in range(20):
            a.send_bytes(payload(2 * MIB, i))
            b.recv_bytes()
        assert len(os.listdir("/proc/self/fd")) == before
