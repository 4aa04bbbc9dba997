"""Child-side functions and classes for the manager tests (importable by name, no pytest)."""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

from polyproc._serialize import Serializer
from polyproc.managers import BaseManager, BaseProxy


def tutorial_worker(l: Any, d: Any, n: Any) -> None:  # noqa: E741 - the tutorial's names
    l.reverse()
    d["x"] += 1
    n.y += 1


def append_many(l: Any, start: int, count: int) -> None:  # noqa: E741
    for i in range(start, start + count):
        l.append(i)


def put_in_queue(q: Any, value: Any) -> None:
    q.put(value)


def write_nested(d: Any) -> None:
    d["inner"].append("from child")


def use_lock(lock: Any, counter: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            counter.value = counter.value + 1


def wait_event_then_set(ev_in: Any, ev_out: Any) -> None:
    ev_in.wait(30)
    ev_out.set()


def call_after_death(l: Any, conn: Any) -> None:  # noqa: E741
    try:
        l.append(1)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(type(exc).__name__)
    else:
        conn.send("no error")


class Counter:
    """A user class shared through a BaseManager registration."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def increment(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def get(self) -> int:
        return self.value

    def fail(self) -> None:
        raise ValueError("counter says no")


class CounterProxy(BaseProxy):
    _exposed_ = ("increment", "get")

    def increment(self, by: int = 1) -> int:
        return int(self._callmethod("increment", (by,)))

    def get(self) -> int:
        return int(self._callmethod("get"))


class CounterManager(BaseManager):
    pass


CounterManager.register("Counter", Counter)
CounterManager.register("TypedCounter", Counter, CounterProxy)


def bump(counter: Any, times: int) -> None:
    for _ in range(times):
        counter.increment()


# -- the "queue server" pattern: separate programs, run with ``python -m`` ------------
QUEUE_SERVER = r"""
import queue, sys, ssl
from polyproc.managers import BaseManager

class QueueManager(BaseManager):
    pass

q = queue.Queue()
QueueManager.register("get_queue", callable=lambda: q)
ctx = None
if len(sys.argv) > 2:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
m = QueueManager(address=("127.0.0.1", 0), authkey=sys.argv[1].encode(), ssl_context=ctx,
                 handshake_timeout=2.0)
s = m.get_server()
print(s.address[1], flush=True)
s.serve_forever()
"""

QUEUE_CLIENT = r"""
import sys, ssl
from polyproc.managers import BaseManager

class QueueManager(BaseManager):
    pass

QueueManager.register("get_queue")
ctx = None
if len(sys.argv) > 4:
    ctx = ssl.create_default_context(cafile=sys.argv[4])
m = QueueManager(address=("127.0.0.1", int(sys.argv[1])), authkey=sys.argv[2].encode(),
                 ssl_context=ctx)
m.connect()
q = m.get_queue()
if sys.argv[3] == "put":
    for i in range(5):
        q.put(i)
else:
    print(sorted(q.get(timeout=20) for _ in range(5)), flush=True)
"""


def env_with_src() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "src"), root] + sys.path)
    return env


def append_then_signal(lst: Any, n: int, conn: Any) -> None:
    for i in range(n):
        lst.append(i)  # fire-and-forget: no reply is awaited
    conn.send("done")


class Picky(dict):  # type: ignore[type-arg]
    """A mapping whose __setitem__ can fail on the server (to test deferred async errors)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if value == "bad":
            raise ValueError("picky says no")
        super().__setitem__(key, value)


def touch(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))


def drop_then_call(holder: list[Any], other: Any, conn: Any) -> None:
    import gc

    holder.clear()  # the child's copy of the proxy goes away ...
    gc.collect()
    other.append("x")  # ... and any queued DECREF would ride in front of this call
    conn.send("ok")


class Protocol4Messages(Serializer):
    """Pickles self-contained messages (the manager's bodies) with protocol 4, so they show
    on the wire (a pickle's second byte is its protocol); everything else as the default."""

    __slots__ = ()

    def dumps_bytes(self, obj: Any, *, what: str = "object") -> bytes:
        return pickle.dumps(obj, 4)


def report_message_serializer(lst: Any, out: Any) -> None:
    """In a child that only received ``lst``: which serializer its calls are pickled with."""
    from polyproc._manager import client

    lst.append("from the child")
    out.put(type(client.serializer_for(lst._token.address)).__name__)


def request_and_count_sleeps(sock: Any, out: Any) -> None:
    """Send one request the way a manager client does, wait for its reply, and report how
    many times this thread went to sleep meanwhile (``test_a_client_sleeps_once_per_call``)."""
    import resource

    from polyproc._manager.wire import FrameSocket, Op

    fs = FrameSocket(sock)
    fs.wait_in_poll()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    fs.send(Op.CALL, b"request")
    fs.recv()
    out.send(resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before)
