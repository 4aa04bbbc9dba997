"""Manager messages are pickled with the serializer of the manager's context.

Both ways: the owner's requests and proxies' calls (``client.serializer_for``) and
the server's replies (``Server(message_serializer=...)``, passed to the server
process). A pickle's second byte is its protocol, so a serializer that pickles
messages with protocol 4 shows on the wire; the default keeps its protocol-5 fast path.
"""

from __future__ import annotations

import pickle
import time
from typing import Any, ClassVar

import pytest

from polyproc._manager import client
from polyproc._manager.server import Server
from polyproc._manager.sync import SyncManager
from polyproc._manager.wire import default_address
from polyproc._protocol.compact import FrameDecoder, Op, encode
from polyproc._serialize import Serializer
from polyproc._transport.memory import memory_pair
from polyproc.context import Context

from ._targets import Protocol4Messages, report_message_serializer


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    seen: list[tuple[bytes, bytes]] = []
    real = client.request

    def spy(address: Any, authkey: Any, op: int, body: bytes) -> tuple[int, Any]:
        rop, rbody = real(address, authkey, op, body)
        seen.append((bytes(body[:2]), bytes(rbody[:2])))
        return rop, rbody

    monkeypatch.setattr(client, "request", spy)
    return seen


@pytest.mark.parametrize(
    ("serializer", "mark"), [(Protocol4Messages(), b"\x80\x04"), (Serializer(), b"\x80\x05")]
)
def test_requests_and_replies_use_the_contexts_serializer(
    monkeypatch: pytest.MonkeyPatch, start_method: str, serializer: Serializer, mark: bytes
) -> None:
    seen = _spy(monkeypatch)
    with SyncManager(ctx=Context(start_method, serializer)) as m:
        d = m.dict()
        d["k"] = [1, 2]
        assert d["k"] == [1, 2]
        assert d.get("missing") is None
    assert len(seen) >= 3  # the dict, d["k"], d.get (d["k"] = ... posts, no reply)
    assert all(request == mark and reply == mark for request, reply in seen), seen


def test_a_proxy_carries_the_serializer_to_a_process_that_only_received_it(
    start_method: str,
) -> None:
    ctx = Context(start_method, Protocol4Messages())
    with SyncManager(ctx=ctx) as m:
        lst = m.list()
        out = ctx.Queue()
        p = ctx.Process(target=report_message_serializer, args=(lst, out))
        p.start()
        assert out.get(timeout=30) == "Protocol4Messages"
        p.join(30)
        assert p.exitcode == 0
        assert list(lst) == ["from the child"]


class _Recording(Serializer):
    """Protocol 4 for messages, and a record of every body its ``loads`` reads."""

    __slots__ = ()
    read: ClassVar[list[bytes]] = []

    def dumps_bytes(self, obj: Any, *, what: str = "object") -> bytes:
        return pickle.dumps(obj, 4)

    def loads(self, body: Any, buffers: Any = (), fds: Any = ()) -> Any:
        _Recording.read.append(bytes(body[:2]))
        return super().loads(body, buffers, fds)


def test_the_server_reads_requests_and_writes_replies_with_its_serializer() -> None:
    """In process, over the memory transport: the request is read by the serializer's ``loads``."""
    _Recording.read.clear()
    srv = Server(SyncManager._registry, default_address(), b"k", message_serializer=_Recording())
    srv._loop.start()
    ours, theirs = memory_pair()
    try:
        srv._loop.add(theirs, b"")
        ours.write_all([encode(Op.CREATE, pickle.dumps(("list", (), {}), 4))])
        decoder, frames = FrameDecoder(1 << 20), []
        buf = memoryview(bytearray(1 << 16))
        deadline = time.monotonic() + 10
        while not frames and time.monotonic() < deadline:
            frames = decoder.feed_frames(buf[: ours.read_into(buf)])
        ((op, body),) = frames
        assert op == Op.PROXY and body[:2] == b"\x80\x04"
        assert _Recording.read == [b"\x80\x04"]
    finally:
        srv.stop()
        ours.close()
