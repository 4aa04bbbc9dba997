"""``polyproc.dummy.connection``: Pipe/Listener/Client between threads, over queues."""

from __future__ import annotations

from queue import Queue
from typing import Any

__all__ = ["Client", "Listener", "Pipe", "Connection"]

families = [None]


class Connection:
    """One end of a thread pipe: ``send``/``recv``/``poll``."""

    def __init__(self, _in: Queue[Any], _out: Queue[Any]) -> None:
        self._out = _out
        self._in = _in
        self.send = self.send_bytes = _out.put
        self.recv = self.recv_bytes = _in.get

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message is waiting, after waiting up to ``timeout`` (None: forever)."""
        if self._in.qsize() > 0:
            return True
        if timeout is not None and timeout <= 0.0:
            return False
        with self._in.not_empty:
            self._in.not_empty.wait(timeout)
        return self._in.qsize() > 0

    def close(self) -> None:
        """Nothing to release: the queues go with the last reference."""
        pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener:
    """Hands out Connections to ``Client(listener.address)`` callers in this process."""

    def __init__(self, address: Any = None, family: Any = None, backlog: int = 1) -> None:
        self._backlog_queue: Queue[Any] | None = Queue(backlog)

    def accept(self) -> Connection:
        """The next Connection a ``Client`` made; blocks until one does."""
        if self._backlog_queue is None:
            raise OSError("listener is closed")
        return Connection(*self._backlog_queue.get())

    def close(self) -> None:
        """Stop accepting; ``accept`` then raises ``OSError``."""
        self._backlog_queue = None

    @property
    def address(self) -> Queue[Any] | None:
        """What to pass to ``Client``: the listener's backlog queue (None once closed)."""
        return self._backlog_queue

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def Client(address: Queue[Any]) -> Connection:  # noqa: N802
    """Connect to a dummy ``Listener`` at ``address`` (its backlog queue)."""
    _in: Queue[Any] = Queue()
    _out: Queue[Any] = Queue()
    address.put((_out, _in))
    return Connection(_in, _out)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802
    """Two connected Connections over a pair of queues (always duplex)."""
    a: Queue[Any] = Queue()
    b: Queue[Any] = Queue()
    return Connection(a, b), Connection(b, a)
