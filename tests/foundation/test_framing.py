"""Properties of ``polyproc._protocol.framing`` (sans-IO: bytes in, headers out), and of frames on a wire.

The first group needs no I/O at all; the last feeds arbitrary byte strings to a
real Connection and checks that the reader always ends (a message, EOFError or
ProtocolError) and never hangs or dies another way.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from polyproc._connection import Connection
from polyproc._protocol.framing import (
    HEADER,
    MAGIC,
    MAX_BUFFERS,
    Header,
    Kind,
    decode_header,
    decode_lengths,
    encode_header,
)
from polyproc.errors import PolyprocError, ProtocolError

U64 = st.integers(min_value=0, max_value=2**64 - 1)
kinds = st.sampled_from(list(Kind))
lengths_tables = st.lists(U64, max_size=8)

pytestmark = pytest.mark.timeout(60)


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(kind=kinds, body=U64, nfds=st.integers(0, 255))
def test_header_round_trip(kind: Kind, body: int, nfds: int) -> None:
    raw = encode_header(kind, body, nfds=nfds)
    assert len(raw) == HEADER.size == 16
    assert decode_header(raw) == Header(kind, nfds, 0, body)


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(body=U64, table=lengths_tables, nfds=st.integers(0, 255))
def test_pickle_header_with_buffer_table_round_trip(body: int, table: list[int], nfds: int) -> None:
    raw = encode_header(Kind.PICKLE, body, table, nfds=nfds)
    assert len(raw) == 16 + 8 * len(table)
    head = decode_header(raw)
    assert head == Header(Kind.PICKLE, nfds, len(table), body)
    assert head.table_length == 8 * len(table)
    assert decode_lengths(raw, 16, head.nbuffers) == table


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(prefix=st.binary(max_size=32), kind=kinds, body=U64)
def test_decode_at_an_offset(prefix: bytes, kind: Kind, body: int) -> None:
    raw = prefix + encode_header(kind, body)
    assert decode_header(raw, len(prefix)) == Header(kind, 0, 0, body)
    assert decode_header(memoryview(bytearray(raw)), len(prefix)).body_length == body


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(raw=st.binary(min_size=16, max_size=16))
def test_any_sixteen_bytes_decode_or_raise_protocol_error(raw: bytes) -> None:
    try:
        head = decode_header(raw)
    except ProtocolError:
        magic, kind, _, nbuffers, _ = HEADER.unpack(raw)
        assert (
            magic != MAGIC
            or kind not in set(Kind)
            or nbuffers > MAX_BUFFERS
            or (nbuffers and kind != Kind.PICKLE)
        )
    else:  # what decodes is exactly what encodes to these bytes
        assert HEADER.pack(MAGIC, head.kind, head.nfds, head.nbuffers, head.body_length) == raw


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(magic=st.integers(0, 0xFFFF), kind=kinds, body=U64)
def test_wrong_magic_is_garbage(magic: int, kind: Kind, body: int) -> None:
    assume(magic != MAGIC)
    with pytest.raises(ProtocolError, match="magic"):
        decode_header(HEADER.pack(magic, kind, 0, 0, body))


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(kind=st.integers(0, 255).filter(lambda k: k not in set(Kind)))
def test_unknown_kind_is_garbage(kind: int) -> None:
    with pytest.raises(ProtocolError, match="kind"):
        decode_header(HEADER.pack(MAGIC, kind, 0, 0, 1))


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(kind=st.sampled_from([k for k in Kind if k is not Kind.PICKLE]), n=st.integers(1, 2**32 - 1))
def test_buffers_only_in_pickle_frames(kind: Kind, n: int) -> None:
    with pytest.raises(ProtocolError):
        decode_header(HEADER.pack(MAGIC, kind, 0, n, 0))


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(n=st.integers(MAX_BUFFERS + 1, 2**32 - 1))
def test_buffer_count_is_bounded(n: int) -> None:
    with pytest.raises(ProtocolError):
        decode_header(HEADER.pack(MAGIC, Kind.PICKLE, 0, n, 0))


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(body=U64, limit=U64)
def test_max_size_bounds_the_body(body: int, limit: int) -> None:
    raw = encode_header(Kind.BYTES, body)
    if body > limit:
        with pytest.raises(ProtocolError, match="length"):
            decode_header(raw, 0, limit)
    else:
        assert decode_header(raw, 0, limit).body_length == body


@settings(deadline=None)  # timing on a loaded 2-core machine is no property
@given(table=st.lists(st.integers(0, 2**40), min_size=1, max_size=6), limit=st.integers(0, 2**42))
def test_max_size_bounds_the_buffers(table: list[int], limit: int) -> None:
    raw = encode_header(Kind.PICKLE, 0, table)
    if sum(table) > limit:
        with pytest.raises(ProtocolError):
            decode_lengths(raw, 16, len(table), limit)
    else:
        assert decode_lengths(raw, 16, len(table), limit) == table


def test_lengths_past_four_gib_frame() -> None:
    big = (5 << 30) + 7
    assert decode_header(encode_header(Kind.BYTES, big)).body_length == big
    assert decode_lengths(encode_header(Kind.PICKLE, 1, [big, 1]), 16, 2) == [big, 1]


def test_short_input_raises() -> None:
    with pytest.raises(Exception):  # noqa: B017 - struct.error: callers always pass a full header
        decode_header(b"\x50\x50\x01")


# -- on a wire: a Connection reads whatever bytes it is given, and always ends ------------------

messages = st.one_of(
    st.binary(max_size=300),
    st.tuples(
        st.just("obj"),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.text(max_size=20)
            | st.binary(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=5), inner, max_size=4)
            ),
            max_leaves=10,
        ),
    ),
)


def _pair() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(messages, max_size=12))
def test_frames_keep_boundaries_on_a_stream(batch: list[object]) -> None:
    w, r = _pair()
    with w, r:
        for m in batch:
            if isinstance(m, bytes):
                w.send_bytes(m)
            else:
                w.send(m)
        for m in batch:
            if isinstance(m, bytes):
                assert r.recv_bytes() == m
            else:
                assert r.recv() == m
        assert not r.poll(0)


def _read_all_then_end(raw: bytes) -> list[object]:
    """Write ``raw`` (then hang up) into a Connection and read until it raises a polyproc error."""
    conn, peer = _pair()
    fd = peer._stream.fd  # type: ignore[union-attr]
    writer = threading.Thread(target=lambda: (os.write(fd, raw) if raw else None, peer.close()))
    writer.start()
    got: list[object] = []
    try:
        with conn:
            for _ in range(len(raw) + 2):  # each frame eats >= 16 bytes: this bounds the loop
                got.append(conn.recv_bytes(maxlength=1 << 20))
    except (EOFError, PolyprocError):  # ProtocolError; BrokenResourceError if fds were promised
        pass
    finally:
        writer.join(10)
    return got


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_random_bytes_end_in_eof_or_protocol_error(raw: bytes) -> None:
    _read_all_then_end(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(st.binary(max_size=64), min_size=1, max_size=5), data=st.data())
def test_valid_frames_cut_or_corrupted_anywhere_never_hang(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_header(Kind.BYTES, len(p)) + p for p in payloads)
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    flip = data.draw(st.none() | st.integers(0, len(stream) - 1), label="flip")
    raw = bytearray(stream[:cut])
    if flip is not None and flip < len(raw):
        raw[flip] ^= 0xFF
    got = _read_all_then_end(bytes(raw))
    if flip is None:  # an intact prefix yields exactly the whole frames it contains
        whole, pos = [], 0
        for p in payloads:
            pos += 16 + len(p)
            if pos <= cut:
                whole.append(p)
        assert got == whole
