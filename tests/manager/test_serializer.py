"""Manager messages are pickled with the serializer of the manager's context.

Both ways: the owner's requests and proxies' calls (``client.serializer_for``) and
the server's replies (``Server(message_serializer=...)``, passed to the server
process). A pickle's second byte is its protocol, so a serializer that pickles
messages with protocol 4 shows on the wire; the default keeps its protocol-5 fast path.
"""

from __future__ import annotations

from typing import Any

import pytest

from polyproc._manager import client
from polyproc._manager.sync import SyncManager
from polyproc._serialize import Serializer
from polyproc.context import Context

from ._targets import Protocol4Messages


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
