"""Task functions and odd objects for the stdlib-compatibility tests (module level, so every
start method can import them). Modelled on CPython's own test objects."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import weakref
from typing import Any


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total: int, when: int) -> Any:
    """CPython's helper: raises SayWhenError at item ``when`` (-1: before the first)."""
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


class SpecialIterable:
    """Claims a length, then raises on the first item."""

    def __iter__(self) -> SpecialIterable:
        return self

    def __next__(self) -> Any:
        raise SayWhenError("special")

    def __len__(self) -> int:
        return 1


def sqr(x: int) -> int:
    return x * x


def mul(a: int, b: int) -> int:
    return a * b


def identity(x: Any) -> Any:
    return x


class Counted:
    """Every instance alive in this process is in ``alive`` (a WeakSet): rebuilt copies too."""

    alive: weakref.WeakSet[Counted] = weakref.WeakSet()

    def __init__(self, payload: Any = None) -> None:
        self.payload = payload
        Counted.alive.add(self)

    def __reduce__(self) -> Any:
        return (Counted, (self.payload,))

    def method(self, x: Any) -> Any:
        return x

    def ret(self, x: Any) -> Any:
        return Counted(x)


def make_counted(x: Any) -> Counted:
    return Counted(x)


def return_lock(_: Any = None) -> Any:
    return threading.Lock()


def raise_runtime_error_123() -> None:
    raise RuntimeError(123)  # some comment


class ReduceRaises:
    """Its ``__reduce__`` raises ZeroDivisionError: pickling it must raise exactly that."""

    def __reduce__(self) -> Any:
        raise ZeroDivisionError("no pickling me")


class ErrorAtPickle:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("Error in pickle")


class ExitAtPickle:
    def __reduce__(self) -> Any:
        sys.exit(1)


def _raise_unpickling_error() -> None:
    raise pickle.UnpicklingError("error at unpickle")


def _exit_now() -> None:
    sys.exit(1)


class ErrorAtUnpickle:
    """Pickles fine; raises UnpicklingError when rebuilt."""

    def __reduce__(self) -> Any:
        return (_raise_unpickling_error, ())


class ExitAtUnpickle:
    def __reduce__(self) -> Any:
        return (_exit_now, ())


def return_instance(cls: type) -> Any:
    return cls()


def exit_at_start() -> None:
    os._exit(3)


def touch_then_wait(started: str, release: str) -> str:
    """Marks that it runs, then waits (bounded) for the test to create ``release``."""
    with open(started, "w"):
        pass
    deadline = time.monotonic() + 30
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)  # waiting on the file system: the only channel here
    return started


def wait_for_path(path: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
