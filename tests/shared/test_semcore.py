"""SemLock, the core under every lock: the C extension and its ctypes twin behave alike.

Each test runs on both cores (the ``core`` fixture): ``polyproc._csem.SemLock``
(skipped when the extension is not built) and ``_sem.PySemLock``. The whole
test_sync.py suite also runs once more with ``POLYPROC_NO_CEXT=1``, where every
Lock is built on the ctypes core, processes included.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from polyproc._shm.heap import allocate
from polyproc._sync import Lock, RLock, _sem

pytestmark = pytest.mark.timeout(60)

HAVE_BUILT_CEXT = importlib.util.find_spec("polyproc._csem") is not None


def _cores() -> list[Any]:
    params: list[Any] = [pytest.param(_sem.PySemLock, id="ctypes")]
    if HAVE_BUILT_CEXT:
        from polyproc import _csem

        params.insert(0, pytest.param(_csem.SemLock, id="c"))
    else:  # pragma: no cover - no compiler where the package was installed
        params.insert(0, pytest.param(None, id="c", marks=pytest.mark.skip("_csem not built")))
    return params


@pytest.fixture(params=_cores())
def core(request: pytest.FixtureRequest) -> Any:
    return request.param


def make(core: Any, value: int, maxvalue: int = -1, recursive: bool = False) -> Any:
    """A SemLock of class ``core`` over a fresh shared block (kept alive on the object)."""
    block = allocate(128)
    words = (ctypes.c_int64 * 16).from_buffer(block.arena.mm, block.offset)
    addr = ctypes.addressof(words)
    _sem.init(addr, value)

    class Sem(core):  # type: ignore[misc]
        pass

    sem = Sem()
    sem._attach(addr, addr + 64 if recursive else 0, maxvalue)
    sem.keep = (block, words)
    return sem


# -- single thread -------------------------------------------------------------
def test_lock_mode(core: Any) -> None:
    lock = make(core, 1, maxvalue=1)
    assert lock.get_value() == 1
    assert lock.acquire() is True
    assert lock.get_value() == 0
    assert lock.acquire(False) is False
    assert lock.acquire(block=False) is False
    assert lock.acquire(True, 0) is False
    assert lock.acquire(timeout=-1) is False
    t = time.monotonic()
    assert lock.acquire(timeout=0.05) is False
    assert time.monotonic() - t >= 0.045
    lock.release()
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    with lock as got:
        assert got is True
        assert lock.get_value() == 0
    assert lock.get_value() == 1


def test_semaphore_modes(core: Any) -> None:
    sem = make(core, 2)
    assert sem.acquire() and sem.acquire() and not sem.acquire(False)
    for _ in range(5):
        sem.release()  # unbounded
    assert sem.get_value() == 5
    bounded = make(core, 2, maxvalue=2)
    with pytest.raises(ValueError):
        bounded.release()
    assert bounded.acquire(timeout=1)
    bounded.release()
    assert bounded.get_value() == 2


def test_rlock_mode(core: Any) -> None:
    rlock = make(core, 1, recursive=True)
    owner = (ctypes.c_int64 * 2).from_address(ctypes.addressof(rlock.keep[1]) + 64)
    assert rlock.acquire() and rlock.acquire(False) and rlock.acquire(timeout=0)
    assert (owner[0], owner[1]) == (threading.get_native_id(), 3)
    with rlock:
        assert owner[1] == 4
    results: list[Any] = []

    def other() -> None:
        results.append(rlock.acquire(timeout=0.05))
        try:
            rlock.release()
        except AssertionError as exc:
            results.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert results == [False, "attempt to release recursive lock not owned by thread"]
    for _ in range(3):
        rlock.release()
    assert (owner[0], owner[1]) == (0, 0) and rlock.get_value() == 1
    with pytest.raises(AssertionError):
        rlock.release()


def test_bad_arguments(core: Any) -> None:
    lock = make(core, 0, maxvalue=1)
    with pytest.raises(TypeError):
        lock.acquire(True, None, 3)
    with pytest.raises(TypeError):
        lock.acquire(blocking=True)
    with pytest.raises(TypeError):
        lock.acquire(True, timeout="soon")  # read only when it has to wait
    with pytest.raises((ValueError, ctypes.ArgumentError)):
        core().acquire(False)  # never attached


# -- threads: the GIL is released while sleeping -------------------------------
@pytest.mark.parametrize("timeout", [None, 10.0])
def test_blocked_thread_wakes_on_release(core: Any, timeout: float | None) -> None:
    lock = make(core, 0, maxvalue=1)
    started = threading.Event()
    got: list[bool] = []

    def waiter() -> None:
        started.set()
        got.append(lock.acquire(True, timeout))

    t = threading.Thread(target=waiter)
    t.start()
    assert started.wait(10)
    # This thread keeps running while the waiter sleeps: it does not hold the GIL.
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        pass
    lock.release()
    t.join(10)
    assert got == [True]


def test_counter_under_lock_across_threads(core: Any) -> None:
    lock = make(core, 1, recursive=True)
    box = [0]

    def work() -> None:
        for _ in range(20_000):
            with lock:
                with lock:
                    box[0] += 1

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box[0] == 60_000


# -- locked_attr: the Synchronized accessors -----------------------------------
def _locked_attr_impls() -> list[Any]:
    impls: list[Any] = [pytest.param(_sem._locked_property, id="property")]
    if HAVE_BUILT_CEXT:
        from polyproc import _csem

        impls.insert(0, pytest.param(_csem.LockedAttr, id="c"))
    return impls


@pytest.mark.parametrize("make_attr", _locked_attr_impls())
@pytest.mark.parametrize("lock_kind", ["polyproc", "threading"])
def test_locked_attr(make_attr: Any, lock_kind: str) -> None:
    lock: Any = Lock() if lock_kind == "polyproc" else threading.Lock()

    class Target:
        def __init__(self) -> None:
            self._x = 1

        @property
        def x(self) -> int:
            assert lock.acquire(False) is False, "read without the lock"
            return self._x

        @x.setter
        def x(self, v: int) -> None:
            assert lock.acquire(False) is False, "written without the lock"
            if v < 0:
                raise ValueError("negative")
            self._x = v

    class Wrapper:
        x = make_attr("x")

        def __init__(self) -> None:
            self._lock, self._obj = lock, Target()

    w = Wrapper()
    assert w.x == 1
    w.x += 41
    assert w.x == 42
    with pytest.raises(ValueError, match="negative"):
        w.x = -1
    assert lock.acquire(False)  # released after the error
    lock.release()
    Wrapper.y = make_attr("nope")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = w.y  # type: ignore[attr-defined]
    assert lock.acquire(False)
    lock.release()


# -- which core is in use ---------------------------------------------------------
def test_locks_use_the_extension_when_built() -> None:
    if os.environ.get("POLYPROC_NO_CEXT", "") not in ("", "0"):
        assert not _sem.HAVE_CEXT and issubclass(Lock, _sem.PySemLock)
    elif HAVE_BUILT_CEXT:
        from polyproc import _csem

        assert _sem.HAVE_CEXT and issubclass(RLock, _csem.SemLock)


@pytest.mark.timeout(120)
def test_sync_suite_under_ctypes_fallback() -> None:
    """Every lock test, processes and Ctrl+C included, on the ctypes core."""
    here = Path(__file__).parent
    env = dict(os.environ, POLYPROC_NO_CEXT="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            str(here / "test_sync.py"),
            str(here / "test_semcore.py") + "::test_locks_use_the_extension_when_built",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        cwd=here.parent.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
