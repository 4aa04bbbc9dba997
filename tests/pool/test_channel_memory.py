"""A pool channel's write half over the in-memory transport: no process, no socket.

The engine queues messages on a worker's ``Handle`` (pickled once, big buffers as
memfds) and flushes them through its ``Outbox`` when the selector says the channel
is writable; the worker reads them with ``Connection.recv``. Here the channel is a
``memory_pair()`` whose capacity is small, so the "wants write" path is taken.
"""

from __future__ import annotations

import selectors
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from polyproc._connection import Connection
from polyproc._pool.channel import Handle, pickle_buffer
from polyproc._serialize import DEFAULT_SERIALIZER
from polyproc._shm import bulk
from polyproc._transport.memory import memory_pair


@pytest.fixture
def channel() -> Iterator[tuple[Handle, Connection, selectors.BaseSelector]]:
    ours, theirs = memory_pair(4096)
    h = Handle(1)
    h.attach(ours)
    h.fd = ours.fd
    sel = selectors.DefaultSelector()
    worker = Connection(theirs)
    yield h, worker, sel
    sel.close()
    worker.close()
    ours.close()


def _drain(h: Handle, sel: selectors.BaseSelector, reader: threading.Thread) -> None:
    """What the engine does: flush whenever the selector says the channel is writable."""
    while h.writing:
        for _key, mask in sel.select(5.0):
            if mask & selectors.EVENT_WRITE:
                h.flush(sel)
    reader.join(10)
    assert not reader.is_alive()


def test_small_messages_arrive_in_order(channel: Any) -> None:
    h, worker, sel = channel
    for i in range(20):
        h.queue(("task", i, [i] * 3), DEFAULT_SERIALIZER, sel)
    h.queue_plain(b"\x80\x05K*.", sel)  # a pickled 42
    assert not h.writing
    assert [worker.recv() for _ in range(20)] == [("task", i, [i] * 3) for i in range(20)]
    assert worker.recv() == 42


def test_a_message_bigger_than_the_channel_waits_for_writability(channel: Any) -> None:
    h, worker, sel = channel
    payload = b"z" * 200_000
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(worker.recv()))
    reader.start()
    h.queue(("big", payload), DEFAULT_SERIALIZER, sel)
    assert h.writing and h.watched & selectors.EVENT_WRITE  # the engine was asked to wait
    _drain(h, sel, reader)
    assert got == [("big", payload)]
    assert not h.watched & selectors.EVENT_WRITE


def test_big_buffers_cross_as_memfds(channel: Any) -> None:
    h, worker, sel = channel
    data = bytearray(b"q" * (bulk.THRESHOLD + 10))
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(worker.recv()))
    reader.start()
    h.queue(("args", pickle_buffer(memoryview(data))), DEFAULT_SERIALIZER, sel)
    _drain(h, sel, reader)
    (kind, buf) = got[0]
    assert kind == "args" and bytes(buf) == bytes(data)


def test_a_gone_worker_drops_what_was_queued(channel: Any) -> None:
    h, worker, sel = channel
    worker.close()
    h.queue(("task", 1), DEFAULT_SERIALIZER, sel)  # no error: its sentinel reports the death
    assert not h.writing and not h.out
