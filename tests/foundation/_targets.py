"""Child-side functions for the foundation tests.

Kept apart from the test modules so that a spawned child imports only this
(and polyproc), not pytest and hypothesis: targets must be importable by name.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import polyproc
import polyproc.context

#: Changed by a test in the parent just before start(): a fork child sees the change,
#: a spawn or forkserver child (a fresh import) does not.
MARKER = ["pristine"]


def noop() -> None:
    pass


def send_value(conn: Any, value: Any) -> None:
    conn.send(value)
    conn.close()


def echo(conn: Any) -> None:
    """Send back what arrives, until None (or EOF).

    Not EOF alone: under fork the child inherits the parent's end too, so
    closing it in the parent would not end the stream.
    """
    try:
        while (obj := conn.recv()) is not None:
            conn.send(obj)
    except EOFError:
        pass
    finally:
        conn.close()


def echo_bytes(conn: Any) -> None:
    """Send back each message as bytes, until an empty one."""
    while data := conn.recv_bytes():
        conn.send_bytes(data)
    conn.close()


def wait_for_eof(conn: Any) -> None:
    """Block until the other end says anything (or closes): a child that waits on the test.

    Tests send a message rather than close: a fork child holds a copy of the parent's end.
    """
    try:
        conn.recv()
    except EOFError:
        pass


def signal_ready_then_wait(conn: Any) -> None:
    conn.send("ready")
    wait_for_eof(conn)


def ignore_sigterm_then_wait(conn: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("ready")
    wait_for_eof(conn)


def exit_with(code: Any) -> None:
    sys.exit(code)


def raise_error(message: str) -> None:
    raise ValueError(message)


def call_with(kwargs_out: Any, *args: Any, **kwargs: Any) -> None:
    kwargs_out.send((args, kwargs))
    kwargs_out.close()


def report_identity(conn: Any) -> None:
    """What the child knows about itself and its parent."""
    me = polyproc.current_process()
    parent = polyproc.parent_process()
    conn.send(
        {
            "name": me.name,
            "pid": me.pid,
            "ident": me.ident,
            "os_pid": os.getpid(),
            "daemon": me.daemon,
            "authkey": me.authkey,
            "is_alive": me.is_alive(),
            "parent_name": None if parent is None else parent.name,
            "parent_pid": None if parent is None else parent.pid,
            "parent_alive": None if parent is None else parent.is_alive(),
            "active_children": polyproc.active_children(),
            "marker": MARKER[0],
            "ppid": os.getppid(),
            "mp_imported": "multiprocessing" in sys.modules,
        }
    )
    conn.close()


def start_grandchild(conn: Any, method: str) -> None:
    """Start a child of our own; report its name, its view of its parent, and our children."""
    ctx = polyproc.get_context(method)
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=report_identity, args=(w,))
    p.start()
    w.close()
    seen_alive = [c.name for c in polyproc.active_children()]
    info = r.recv()
    p.join()
    conn.send(
        {
            "child": polyproc.current_process().name,
            "grandchild": info,
            "seen_alive": seen_alive,
            "exitcode": p.exitcode,
        }
    )
    conn.close()


def type_name(conn: Any, obj: Any) -> None:
    conn.send(type(obj).__qualname__)
    conn.close()


def sleep_forever() -> None:
    time.sleep(3600)


def print_lines(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


class Greeter(polyproc.Process):
    """A subclass that overrides run(): the stdlib idiom."""

    def __init__(self, conn: Any, who: str) -> None:
        super().__init__()
        self.conn = conn
        self.who = who

    def run(self) -> None:
        self.conn.send(f"hello {self.who} from {polyproc.current_process().name}")
        self.conn.close()


class ForkGreeter(Greeter, polyproc.context.ForkProcess):
    pass


class SpawnGreeter(Greeter, polyproc.context.SpawnProcess):
    pass


class ForkServerGreeter(Greeter, polyproc.context.ForkServerProcess):
    pass


GREETERS: dict[str, type[Greeter]] = {
    "fork": ForkGreeter,
    "spawn": SpawnGreeter,
    "forkserver": ForkServerGreeter,
}


def write_fd(fd: int, text: str) -> None:
    """Write to an fd directly (under pytest, sys.stdout of a fork child is pytest's object)."""
    os.write(fd, text.encode())


def start_sleeper_and_report(conn: Any, method: str) -> None:
    """Start a grandchild that would sleep for an hour; report its pid; wait to be killed."""
    g = polyproc.get_context(method).Process(target=sleep_forever)
    g.start()
    conn.send(g.pid)
    time.sleep(3600)


def serializer_threshold(conn: Any) -> None:
    conn.send(polyproc.current_process()._context().serializer.oob_threshold)
    conn.close()


def use_and_describe(conn: Any, lock: Any, queue: Any, classes: list[type]) -> None:
    """Use a Lock and a Queue that came by pickle; send back what the child saw."""
    with lock:
        queue.put("from the child")
    conn.send(
        {
            "lock": f"{type(lock).__module__}.{type(lock).__qualname__}",
            "queue": f"{type(queue).__module__}.{type(queue).__qualname__}",
            "classes": classes,  # pickled back by reference, resolved in the parent
            "me": f"{type(polyproc.current_process()).__module__}."
            f"{type(polyproc.current_process()).__qualname__}",
        }
    )
    conn.close()


def log_info(name: str, message: str, *args: Any) -> None:
    import logging

    logging.getLogger(name).info(message, *args)


def get_item(mapping: Any, key: Any) -> Any:
    return mapping[key]


def send_env(conn: Any, name: str) -> None:
    import os

    conn.send(os.environ.get(name))
    conn.close()


def square(x: int) -> int:
    return x * x


def getpid_of(_: object) -> int:
    """The worker's pid (the argument is ignored: a map's item)."""
    return os.getpid()
