"""Task functions for the pool tests: module level, so every start method can import them."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def add(a: int, b: int) -> int:
    return a + b


def pid_of(_: Any = None) -> int:
    return os.getpid()


def sleep_then(x: Any, seconds: float = 0.0) -> Any:
    time.sleep(seconds)  # a task that takes time (the subject, not synchronisation)
    return x


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def die_on(x: int, bad: int = 3, how: str = "kill") -> int:
    if x == bad:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(7)
        elif how == "segv":
            ctypes.string_at(0)
        elif how == "oom":
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))
            blob = bytearray(1024 * 2**20)  # MemoryError: the limit is below it
            return len(blob)
    return x * 10


def die_first_time(x: int, marker: str) -> int:
    """Dies the first time it runs (a marker file remembers), succeeds after."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


def raise_value_error(x: Any) -> Any:
    raise ValueError(f"bad {x}")


def raise_system_exit(x: Any) -> Any:
    raise SystemExit(3)


def raise_keyboard_interrupt(x: Any) -> Any:
    raise KeyboardInterrupt


def return_lock(_: Any) -> Any:
    return threading.Lock()


class Unpicklable(Exception):
    """An exception whose unpickling fails in the parent."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)  # args has one item, __init__ wants two: unpickling raises
        self.b = b


def raise_unpicklable_exception(x: Any) -> Any:
    raise Unpicklable(1, 2)


class Unsendable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to be pickled")


def raise_unsendable_exception(x: Any) -> Any:
    raise Unsendable("boom")


def bad_initializer() -> None:
    raise RuntimeError("initializer failed")


def limit_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def grab_memory(mib: int) -> int:
    blob = bytearray(mib * 2**20)
    blob[::4096] = b"x" * len(blob[::4096])
    return len(blob)


def rss_hog(x: int, keep: list[Any] = []) -> int:  # noqa: B006 - grows on purpose
    keep.append(bytearray(40 * 2**20))
    keep[-1][::4096] = b"x" * len(keep[-1][::4096])
    return os.getpid()


_init_state: dict[str, Any] = {}


def set_state(value: Any) -> None:
    _init_state["v"] = value


def get_state(_: Any = None) -> Any:
    return _init_state.get("v")


def wait_for_file(path: str) -> str:
    """Blocks until ``path`` exists (the test creates it): a task the test controls."""
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return path


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail_on(x: int, bad: int = 500) -> int:
    """``x`` back, except for ``bad``: a ValueError (a failure in the middle of a map)."""
    if x == bad:
        raise ValueError(x)
    return x


def ident(x: Any) -> Any:
    return x


def fail_every(x: int, every: int = 97) -> int:
    """``x`` back, except every ``every``-th item: a ValueError (failures inside batches)."""
    if x % every == every - 1:
        raise ValueError(x)
    return x


def stop_on(x: int, bad: int = 5) -> int:
    """``x`` back, except for ``bad``: the task raises StopIteration."""
    if x == bad:
        raise StopIteration(x)
    return x


def stop_twice_fail_once(x: int) -> int:
    """``x`` back, except: tasks 3 and 7 raise StopIteration, task 5 a ValueError."""
    if x in (3, 7):
        raise StopIteration(x)
    if x == 5:
        raise ValueError(x)
    return x


def walk(it: Any, calls: int) -> list[Any]:
    """``calls`` calls of ``next(it)``: each value, ``"Stop:<value>"`` or the error's name."""
    out: list[Any] = []
    for _ in range(calls):
        try:
            out.append(next(it))
        except StopIteration as stop:
            out.append(f"Stop:{stop.value}")
        except Exception as exc:  # noqa: BLE001 - recorded, compared with the stdlib's
            out.append(type(exc).__name__)
    return out


def _refuse_to_load() -> Any:
    raise ValueError("this argument does not unpickle")


class LoadsBadly:
    """Pickles fine in the parent; its unpickling raises in the worker."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


def append_pid(path: str) -> None:
    """An initializer that says, in a file, which processes ran it."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def standby_of(pool: Any) -> tuple[Any, ...]:
    """The pool's standby worker (``_pool/standby.py``: its Process, our channel end, its
    end, its journal fd), once the engine has made it: bounded, it fails the test if none
    comes (the engine makes it the first time it is idle after a replacement)."""
    deadline = time.monotonic() + 10
    while True:  # polling the engine's state, not ordering anything
        ready = pool._engine.workers.standby.ready
        if ready is not None:
            return tuple(ready)
        assert time.monotonic() < deadline, "no standby"
        time.sleep(0.01)
