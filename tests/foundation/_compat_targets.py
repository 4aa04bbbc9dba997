"""Child-side functions for test_compat.py (importable by name, no pytest)."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

import polyproc
import polyproc.connection
import polyproc.util


def start_worker_thread(release: Any, done: Any) -> None:
    """Start a non-daemon thread that outlives this target, then return."""

    def work() -> None:
        release.wait(20)
        done.set()

    threading.Thread(target=work).start()


def send_after(gate: Any, conn: Any, address: Any, q: Any) -> None:
    gate.wait(20)
    conn.send(123)
    conn.close()
    c = polyproc.connection.Client(address)
    c.send(456)
    c.close()
    q.put("queued")


def report_start_method(conn: Any) -> None:
    conn.send(polyproc.get_start_method())


def report_flags(conn: Any) -> None:
    conn.send(tuple(sys.flags))


def bump(buf: Any) -> None:
    view = buf.create_memoryview().cast("i")
    view[0] += 1


def after_fork_hook(obj: Any) -> None:
    obj.seen.append("child")


class Holder:
    def __init__(self) -> None:
        self.seen: list[str] = []


HOLDER = Holder()


def report_after_fork(conn: Any) -> None:
    conn.send(list(HOLDER.seen))


class Point:
    """A type pickled by a registered reducer (it refuses plain pickling)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __reduce__(self) -> Any:
        raise TypeError("Point needs its registered reducer")


def _rebuild_point(x: int) -> Point:
    p = Point(x)
    p.x = x + 1000  # proves the registered reducer ran
    return p


def reduce_point(p: Point) -> Any:
    return (_rebuild_point, (p.x,))


def point_x(p: Point) -> int:
    return p.x


def set_event(e: Any) -> None:
    e.set()


class FooBar:
    def f(self) -> str:
        return "f()"

    def _h(self) -> str:
        return "_h()"


def report_windows_pipe_listener(conn: Any) -> None:
    """In a child: what ``Listener`` on a Windows pipe address raises (the stdlib: ValueError)."""
    try:
        polyproc.connection.Listener(r"\\.\pipe\x")
    except Exception as exc:  # noqa: BLE001 - the type is what the parent checks
        conn.send(type(exc).__name__)
    else:
        conn.send("nothing raised")


class Pair(ctypes.Structure):
    """A ctypes struct to share (module level: it travels to spawn children by name)."""

    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def bump_pair(shared: Any) -> None:
    shared.x += 100


def report_preloaded(conn: Any, name: str) -> None:
    """Where ``name`` was imported, if it was, without importing it: (its pid, our parent)."""
    module = sys.modules.get(name)
    conn.send((getattr(module, "IMPORTED_IN", None), os.getppid()))


def report_logger_level(conn: Any) -> None:
    conn.send(polyproc.util.get_logger().getEffectiveLevel())


def answer_on_socket(conn: Any, sock: Any) -> None:
    """Write on the socket given as an argument, then on one received through ``conn``."""
    sock.sendall(b"argument")
    sock.close()
    other = conn.recv()
    other.sendall(b"message")
    other.close()
