"""Tour sections on managers: Manager, and BaseManager with a custom type and a remote server.

::

    demo_basemanager, remote part:
      parent ──Pipe──► "queue server" process: QueueServer(("127.0.0.1", 0), authkey).get_server()
        ▲                 sends back its address, then serve_forever()
        │                        ▲                         ▲
        │ q.get()                │ TCP + HMAC handshake    │ q.put()
        └── QueueClient.connect()┘                         └── producer process (QueueClient)

The manager classes are module-level (as users write them) so that spawned
children rebuild the same registrations when they import this module.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import polyproc as mp
from polyproc.managers import BaseManager

from . import tour_logger

log = tour_logger()

_AUTHKEY = b"tour-secret"


# -- manager ---------------------------------------------------------------------------------


def change_all(lst: Any, d: Any, ns: Any, lock: Any) -> None:
    with lock:  # d['x'] += 1 is a get and a set: two calls to the server
        lst.reverse()
        d["x"] += 1
        ns.y += 1


def demo_manager() -> None:
    with mp.Manager() as manager:
        lst = manager.list()
        d = manager.dict()
        ns = manager.Namespace()
        lock = manager.Lock()
        lst.append(1)
        lst.append(2)
        lst.append(3)
        d["x"] = 0
        ns.y = 0
        procs = [mp.Process(target=change_all, args=(lst, d, ns, lock)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        log.info(lst)  # [1, 2, 3]
        log.info(d)  # {'x': 2}
        log.info(ns)  # Namespace(y=2)


# -- basemanager -----------------------------------------------------------------------------


class Counter:
    """An ordinary class; the manager's server holds the one instance."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()  # the server serves each client on its own thread

    def increment(self) -> int:
        with self._lock:
            self._n += 1
            return self._n

    def value(self) -> int:
        return self._n


class CounterManager(BaseManager):
    Counter: Callable[[], Any]  # made by register() below; declared for type checkers


CounterManager.register("Counter", Counter)


def bump(counter: Any, times: int) -> None:
    for _ in range(times):
        counter.increment()


class QueueServer(BaseManager):
    pass


class QueueClient(BaseManager):
    get_queue: Callable[[], Any]


QueueClient.register("get_queue")  # the client only names it: the server has the queue


def serve_queue(address_conn: Any) -> None:
    jobs: queue.Queue[str] = queue.Queue()
    QueueServer.register("get_queue", callable=lambda: jobs)
    server = QueueServer(address=("127.0.0.1", 0), authkey=_AUTHKEY).get_server()
    address_conn.send(server.address)  # port 0: the OS chose a free port
    address_conn.close()
    server.serve_forever()


def remote_producer(address: tuple[str, int]) -> None:
    m = QueueClient(address=address, authkey=_AUTHKEY)
    m.connect()
    jobs = m.get_queue()
    for n in range(3):
        jobs.put(f"job {n} from {mp.current_process().name}")


def demo_basemanager() -> None:
    manager = CounterManager()
    with manager:  # starts the server process; shuts it down at the end of the block
        counter = manager.Counter()
        procs = [mp.Process(target=bump, args=(counter, 50)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        log.info(f"two processes made 2 x 50 increments: {counter.value()}")  # 100

    reader, writer = mp.Pipe(duplex=False)
    server = mp.Process(target=serve_queue, args=(writer,), name="queue server", daemon=True)
    server.start()
    writer.close()
    address = reader.recv()
    log.info(f"queue server listening on {address}")
    producer = mp.Process(target=remote_producer, args=(address,), name="producer")
    producer.start()
    producer.join()
    client = QueueClient(address=address, authkey=_AUTHKEY)
    client.connect()
    jobs = client.get_queue()
    for _ in range(3):
        log.info(f"got {jobs.get(timeout=5)!r}")
    try:
        QueueClient(address=address, authkey=b"wrong key").connect()
    except mp.AuthenticationError as exc:
        log.info(f"a client with the wrong authkey was refused: {exc!r}")
    else:
        raise RuntimeError("a client with the wrong authkey was let in")
    server.terminate()
    server.join()
    reader.close()
