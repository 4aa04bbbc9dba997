"""The server's per-request path (``Server.handle``): what runs on the loop thread, what is
deferred to a worker, and that the table of bound methods checks what ``exposed`` checks.

``handle`` is driven directly (no process, no socket) where the answer is a frame; the
direct reply write of the loop (``Conn.send``) with a real manager.
"""

from __future__ import annotations

import pickle
import queue
from collections.abc import Iterator
from typing import Any

import pytest

import polyproc
from polyproc._manager.loop import Deferred
from polyproc._manager.server import Server
from polyproc._manager.sync import SyncManager
from polyproc._manager.wire import HEADER, Op, default_address
from polyproc.managers import BaseManager

KEY = b"dispatch-key"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(SyncManager._registry, default_address(), KEY)  # never started: no thread
    try:
        yield srv
    finally:
        srv.stop()


def _reply(frame: bytes | Deferred | None) -> tuple[int, Any]:
    assert isinstance(frame, bytes)
    length, op = HEADER.unpack_from(frame)
    assert length + HEADER.size == len(frame)
    return op, pickle.loads(frame[HEADER.size :])


def _call(server: Server, op: Op, *request: Any) -> bytes | Deferred | None:
    return server.handle(int(op), pickle.dumps(request, 5))


def test_quick_calls_are_answered_inline(server: Server) -> None:
    ident, _, _ = server.register_object({}, "dict")
    assert _call(server, Op.CALL_ASYNC, ident, "__setitem__", ("k", 7), None) is None
    assert _reply(_call(server, Op.CALL, ident, "__getitem__", ("k",), None)) == (Op.RESULT, 7)
    assert _reply(_call(server, Op.CALL, ident, "get", ("x", 1), None)) == (Op.RESULT, 1)
    assert _reply(_call(server, Op.CALL, ident, "keys", (), None)) == (Op.RESULT, ["k"])
    op, exc = _reply(_call(server, Op.CALL, ident, "__getitem__", ("nope",), None))
    assert op == Op.ERROR and isinstance(exc, KeyError)


def test_a_call_on_an_object_that_may_block_is_deferred_to_the_worker(server: Server) -> None:
    ident, _, _ = server.register_object(queue.Queue(), "Queue")
    got = _call(server, Op.CALL, ident, "put", (5,), None)
    assert isinstance(got, Deferred) and got.op == Op.CALL
    assert server.run(got.op, got.request) == server._none_frame  # what the worker does
    assert _reply(server.run(int(Op.CALL), (ident, "get", (), None))) == (Op.RESULT, 5)


@pytest.mark.parametrize(
    "body",
    [
        b"not a pickle",
        pickle.dumps(("too", "short")),
        pickle.dumps(([1], "__len__", (), None)),  # an unhashable id
    ],
)
def test_malformed_calls_are_answered_never_raised(server: Server, body: bytes) -> None:
    op, text = _reply(server.handle(int(Op.CALL), body))
    assert op == Op.FAULT and "malformed request" in text
    op, text = _reply(server.handle(int(Op.CALL_ASYNC), body))
    assert op == Op.ASYNC_ERROR and "malformed request" in text


def test_an_unhashable_method_name_is_an_error_reply(server: Server) -> None:
    ident, _, _ = server.register_object([], "list")
    op, exc = _reply(_call(server, Op.CALL, ident, ["append"], (1,), None))
    assert op == Op.ERROR and isinstance(exc, TypeError)


class NarrowManager(BaseManager):
    pass


NarrowManager.register("narrow_dict", dict, exposed=("__getitem__", "__setitem__", "__len__"))


def test_a_builtin_registered_with_fewer_methods_refuses_the_others() -> None:
    """A ``dict`` is served from its table of bound methods: only the exposed ones are in it."""
    with NarrowManager() as manager:
        d = manager.narrow_dict()
        d["a"] = 1
        assert d["a"] == 1 and len(d) == 1
        for name in ("keys", "clear", "__class__", "__init__", "pop"):
            with pytest.raises(AttributeError, match="not in the list of allowed"):
                d._callmethod(name)
        assert d._getvalue() == {"a": 1} and str(d) == "{'a': 1}"  # the fallbacks still answer


def test_a_reply_bigger_than_the_socket_buffer_goes_out_in_pieces() -> None:
    """The loop writes a reply straight to the socket; what does not fit waits for room
    while the loop serves the others."""
    big = bytes(range(256)) * (32 << 10)  # 8 MiB: many socket buffers
    with polyproc.Manager() as manager:
        d = manager.dict()
        d["big"] = big
        for _ in range(3):
            assert d["big"] == big
            assert d.get("missing", 0) == 0  # the same connection, at a frame boundary
        assert manager.statistics()["connections"] >= 1
