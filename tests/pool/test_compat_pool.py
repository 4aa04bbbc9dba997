"""``Pool`` behaves as ``multiprocessing.pool`` where programs can tell (issue 12), per start method.

Each test mirrors a behaviour of CPython's own ``_test_multiprocessing`` pool tests:
input-iterator errors, released task references, workers that cannot start, and the
error types users catch.
"""

from __future__ import annotations

import gc
import io
import pickle
import sys
import threading
import types
import warnings
import weakref
from typing import Any

import compathelpers as c
import poolhelpers as h
import pytest

import polyproc.pool
from polyproc.errors import BrokenProcessPool, SerializationError
from polyproc.pool import MaybeEncodingError, Pool, RemoteTraceback

pytestmark = pytest.mark.timeout(60)


# -- an exception raised by the input iterator --------------------------------------------
@pytest.mark.parametrize("chunksize", [None, 1])
def test_imap_input_error_is_raised_by_next_at_its_position(ctx: Any, chunksize: Any) -> None:
    with Pool(2, context=ctx) as pool:
        it = pool.imap(c.sqr, c.exception_throwing_generator(1, -1), chunksize)
        with pytest.raises(c.SayWhenError):
            next(it)
        it = pool.imap(c.sqr, c.exception_throwing_generator(10, 3), chunksize)
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(c.SayWhenError) as info:
            next(it)
        assert info.value.__cause__ is None  # the parent's own error, not a remote one
        with pytest.raises(StopIteration):
            next(it)


def test_imap_input_error_with_a_chunksize_stands_for_its_chunk(ctx: Any) -> None:
    # As the stdlib: the chunk being built when the input failed is not run.
    with Pool(2, context=ctx) as pool:
        it = pool.imap(c.sqr, c.exception_throwing_generator(20, 7), 2)
        assert [next(it) for _ in range(6)] == [i * i for i in range(6)]
        with pytest.raises(c.SayWhenError):
            next(it)
        it = pool.imap(c.sqr, c.exception_throwing_generator(20, 7), 4)
        assert [next(it) for _ in range(4)] == [i * i for i in range(4)]
        with pytest.raises(c.SayWhenError):
            next(it)


def test_imap_unordered_input_error_is_raised_by_next(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        it = pool.imap_unordered(c.sqr, c.exception_throwing_generator(1, -1), 1)
        with pytest.raises(c.SayWhenError):
            next(it)
        it = pool.imap_unordered(c.sqr, c.exception_throwing_generator(10, 3), 1)
        expected = [0, 1, 4]
        with pytest.raises(c.SayWhenError):
            for _ in range(10):
                value = next(it)
                expected.remove(value)  # only results of items before the error


_STDLIB_WALK = """
import json, multiprocessing, sys
import poolhelpers as h
if __name__ == "__main__":
    method, calls = sys.argv[1], int(sys.argv[2])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        it = getattr(pool, method)(h.stop_twice_fail_once, range(10))
        print(json.dumps(h.walk(it, calls)))
"""


def _stdlib_walk(method: str, calls: int) -> list[Any]:
    """What the stdlib's ``Pool`` (default chunksize, 1) does, in a process of its own (this
    one must not load ``multiprocessing``: tests/pool/test_compat_errors.py)."""
    import json
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.path.dirname(h.__file__)}
    out = subprocess.run(
        [sys.executable, "-c", _STDLIB_WALK, method, str(calls)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
@pytest.mark.parametrize("chunksize", [None, 1])
def test_a_task_raising_stopiteration_stops_next_once_as_the_stdlibs(
    ctx: Any, method: str, chunksize: Any
) -> None:
    """The stdlib's ``next`` raises a task's StopIteration (a ``for`` loop ends there) and
    the next ``next`` goes on with the later results. One difference: the first one is a
    bare StopIteration here (docs/migrating.md), so its value is not compared."""
    theirs = _stdlib_walk(method, 13)
    with Pool(2, context=ctx) as pool:
        ours = h.walk(getattr(pool, method)(h.stop_twice_fail_once, range(10), chunksize), 13)
    if method == "imap":
        theirs[theirs.index("Stop:3")] = "Stop:None"
    else:  # completion order: compare what came, not when (nor which stop came first)
        theirs, ours = (sorted(str(x).split(":")[0] for x in w) for w in (theirs, ours))
    assert ours == theirs


def test_map_and_starmap_over_a_failing_iterator_raise_its_error(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        for _ in range(2):  # and again: the pool is not harmed
            with pytest.raises(c.SayWhenError):
                pool.map(c.sqr, c.exception_throwing_generator(1, -1), 1)
        with pytest.raises(c.SayWhenError):
            pool.map(c.sqr, c.exception_throwing_generator(10, 3))
        with pytest.raises(c.SayWhenError):
            pool.map(c.sqr, c.SpecialIterable(), 1)
        with pytest.raises(c.SayWhenError):
            pool.starmap(c.mul, ((x, x) for x in c.exception_throwing_generator(10, 3)))
        with pytest.raises(c.SayWhenError):
            pool.map_async(c.sqr, c.exception_throwing_generator(10, 3)).get(timeout=10)
        with pytest.raises(c.SayWhenError):
            pool.starmap_async(c.mul, ((x, x) for x in c.exception_throwing_generator(5, 2))).get(
                timeout=10
            )
        assert pool.map(c.sqr, range(4)) == [0, 1, 4, 9]


# -- finished tasks keep nothing alive ----------------------------------------------------
def _gone(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


def test_finished_tasks_release_their_arguments_functions_and_results(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        # A bound method (the per-pool function cache used to hold it and its object).
        obj = c.Counted("bound")
        ref = weakref.ref(obj)
        assert pool.apply(obj.method, (1,)) == 1
        assert pool.map(obj.method, range(5)) == list(range(5))
        assert list(pool.imap(obj.method, range(5))) == list(range(5))
        del obj
        assert _gone(ref)
        # A closure over a big object, and map arguments (cpython issue #29861).
        ref = _apply_a_closure(pool)
        assert _gone(ref)
        objs = [c.Counted(i) for i in range(10)]
        refs = [weakref.ref(o) for o in objs]
        assert len(pool.map(c.identity, objs)) == 10
        del objs
        gc.collect()
        assert {r() for r in refs} == {None}
        # Results the user dropped without reading (nothing but the user holds them).
        results = [pool.apply_async(c.make_counted, (i,)) for i in range(5)]
        for r in results:
            r.wait(timeout=10)
        del results, r
        gc.collect()
        assert len(c.Counted.alive) == 0, list(c.Counted.alive)


def _apply_a_closure(pool: Pool) -> weakref.ref[Any]:
    big = c.Counted("closure")

    def closure() -> Any:
        return big.payload

    assert pool.apply(closure) == "closure"
    return weakref.ref(big)


# -- workers that cannot start ------------------------------------------------------------
def _causes(exc: BaseException) -> list[BaseException]:
    out = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__
    return out


def test_a_pool_whose_workers_cannot_start_raises_and_leaves_no_process(ctx: Any) -> None:
    # Killed before it is ready, every time: broken after a few tries, never a hang.
    pool = Pool(2, context=ctx, initializer=c.exit_at_start)
    with pytest.raises(BrokenProcessPool, match="starting"):
        pool.apply_async(h.inc, (1,)).get(timeout=30)
    with pytest.raises(BrokenProcessPool):
        pool.apply(h.inc, (1,))
    pool.terminate()
    pool.join()
    # (the leak check of tests/conftest.py fails the test if a worker outlived it)


def test_a_context_that_is_none_is_a_type_error_at_once() -> None:
    """Not a pool that breaks later (CPython's test_release_unused_processes passes a mock)."""
    from polyproc.futures import ProcessPoolExecutor

    with pytest.raises(TypeError, match="context"):
        Pool(2, context=object())
    with pytest.raises(TypeError, match="context"):
        ProcessPoolExecutor(1, mp_context=_NotAContext())


class _NotAContext:
    def get_start_method(self) -> Any:
        return object()


class _ForeignContext:
    """A context of another library (the stdlib's): only its start method is read."""

    def __init__(self, method: str) -> None:
        self.method = method

    def get_start_method(self) -> str:
        return self.method


def test_a_foreign_context_is_taken_by_its_start_method(ctx: Any) -> None:
    from polyproc.futures import ProcessPoolExecutor

    with Pool(1, context=_ForeignContext(ctx.start_method)) as pool:
        assert pool.apply(h.inc, (1,)) == 2
    with ProcessPoolExecutor(1, mp_context=_ForeignContext(ctx.start_method)) as ex:
        assert ex.submit(h.inc, 1).result(timeout=30) == 2
        assert ex._mp_context == ctx  # polyproc's own context for that start method


def test_an_initializer_that_does_not_pickle_breaks_the_pool_with_that_cause(ctx: Any) -> None:
    lock = threading.Lock()
    pool = Pool(2, context=ctx, initializer=h.set_state, initargs=(lock,))
    try:
        if ctx.start_method == "fork":
            assert pool.apply(h.inc, (1,)) == 2  # fork pickles nothing
            return
        with pytest.raises(BrokenProcessPool) as info:
            pool.apply(h.inc, (1,))
        assert any(
            isinstance(e, TypeError) and "lock" in str(e) for e in _causes(info.value)
        ) or "lock" in str(info.value), _causes(info.value)
        with pytest.raises(BrokenProcessPool):
            pool.apply_async(h.inc, (1,))
    finally:
        pool.terminate()
        pool.join()


def test_an_initializer_that_cannot_be_imported_breaks_the_pool(ctx: Any) -> None:
    if ctx.start_method == "fork":
        pytest.skip("a forked child has every module its parent has")
    mod = types.ModuleType("polyproc_test_ghost")
    exec("def init():\n    pass\n", mod.__dict__)
    sys.modules[mod.__name__] = mod  # pickled by reference; no child can import it
    try:
        pool = Pool(2, context=ctx, initializer=mod.init)
        try:
            with pytest.raises(BrokenProcessPool):
                pool.apply_async(h.inc, (1,)).get(timeout=30)
        finally:
            pool.terminate()
            pool.join()
    finally:
        del sys.modules[mod.__name__]


# -- the error types users catch -----------------------------------------------------------
def test_an_unpicklable_result_is_maybe_encoding_error(ctx: Any) -> None:
    with Pool(2, context=ctx) as pool:
        for _ in range(3):  # the pool loses no worker over it
            seen: list[BaseException] = []
            res = pool.apply_async(c.return_lock, error_callback=seen.append)
            with pytest.raises(MaybeEncodingError) as info:
                res.get(timeout=10)
            err = info.value
            assert seen and isinstance(seen[0], MaybeEncodingError)
            assert err.exc is not None and err.value is not None
            assert str(err).startswith("Error sending result: '") and "'. Reason: '" in str(err)
            assert "lock" in err.value and "TypeError" in err.exc
            assert isinstance(err, SerializationError) and isinstance(err, pickle.PicklingError)
        with pytest.raises(MaybeEncodingError):
            pool.map(c.return_lock, range(3))
        assert pool.apply(h.inc, (1,)) == 2


def test_an_argument_whose_reduce_raises_raises_that_error(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        with pytest.raises(ZeroDivisionError) as info:
            pool.apply_async(c.identity, (c.ReduceRaises(),))
        assert type(info.value) is ZeroDivisionError
        assert any("arguments[0]" in n for n in getattr(info.value, "__notes__", []))
        with pytest.raises(ZeroDivisionError):
            pool.map(c.identity, [1, c.ReduceRaises(), 3])
        with pytest.raises(RuntimeError, match="cannot pickle"):
            pool.map(c.sqr, [_RuntimeReduce()] * 3)
        # An object pickle refuses is a TypeError, as in the stdlib.
        with pytest.raises(TypeError, match="lock"):
            pool.apply(c.identity, (threading.Lock(),))
        assert pool.apply(h.inc, (1,)) == 2


class _RuntimeReduce:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle")


def test_a_managed_pool_argument_whose_reduce_raises_raises_that_error(ctx: Any) -> None:
    """CPython's WithManagerTestPool.test_map_unplicklable: through a manager proxy too."""
    with ctx.Manager() as manager:
        pool = manager.Pool(1)
        with pytest.raises(RuntimeError, match="cannot pickle") as info:
            pool.map(c.sqr, [_RuntimeReduce()] * 3)
        assert type(info.value) is RuntimeError
        assert any("manager message" in n for n in getattr(info.value, "__notes__", []))
        with pytest.raises(TypeError, match="lock"):
            pool.apply(c.identity, (threading.Lock(),))
        assert pool.map(c.sqr, [1, 2]) == [1, 4]  # the proxy and its pool go on


def test_remote_tracebacks_are_pool_remote_traceback(ctx: Any) -> None:
    with Pool(1, context=ctx) as pool:
        with pytest.raises(RuntimeError) as info:
            pool.apply(c.raise_runtime_error_123)
    exc = info.value
    assert type(exc) is RuntimeError and exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is polyproc.pool.RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in cause.tb
    assert str(cause) == cause.tb
    out = io.StringIO()
    old = sys.stderr
    sys.stderr = out
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    finally:
        sys.stderr = old
    assert "raise RuntimeError(123)  # some comment" in out.getvalue()


def test_pool_module_exports_the_stdlib_names(ctx: Any) -> None:
    for name in ("RUN", "CLOSE", "TERMINATE", "MaybeEncodingError", "RemoteTraceback"):
        assert name in polyproc.pool.__all__ and hasattr(polyproc.pool, name)
    assert (polyproc.pool.RUN, polyproc.pool.CLOSE, polyproc.pool.TERMINATE) == (
        "RUN",
        "CLOSE",
        "TERMINATE",
    )
    assert polyproc.pool.RemoteTraceback is RemoteTraceback
    pool = Pool(1, context=ctx)
    assert pool._state == polyproc.pool.RUN and len(pool._pool) == 1
    pool.close()
    assert pool._state == polyproc.pool.CLOSE
    pool.terminate()
    assert pool._state == polyproc.pool.TERMINATE
    pool.join()
    # A pool dropped while running warns, as the stdlib's does (its finalizer still kills it).
    pool = Pool(1, context=ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del pool
        gc.collect()
    assert any(
        issubclass(w.category, ResourceWarning) and "unclosed running" in str(w.message)
        for w in caught
    )


def test_repopulate_pool_exists_and_the_pool_is_full_after_recycling(ctx: Any) -> None:
    """The stdlib's private ``_repopulate_pool()``, which programs and CPython's tests call
    after ``maxtasksperchild`` recycled workers: ours refills by itself, so after the call
    the pool has its size in live workers, none of them the first ones."""
    import time

    with Pool(2, maxtasksperchild=2, context=ctx) as p:
        first = {w.pid for w in p._pool}
        assert p.map(h.double, range(20), chunksize=1) == [2 * i for i in range(20)]
        p._repopulate_pool()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = p._pool
            if len(workers) == 2 and all(w.is_alive() for w in workers):
                break
            time.sleep(0.01)  # polling the pool's own view of its replacements
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
        assert not first & {w.pid for w in workers}
