"""What users hold while work runs: AsyncResult, MapResult, and the job builder.

The engine thread fills these (``_deliver``/``_done``); user threads wait on them::

    engine thread ── Future.set_result ──► AsyncResult.get()      (apply, submit)
                  ── _deliver(start, values, clean) ──► MapResult / IMapIterator (stream.py)
                  ── _done() ─────────────────────────┘        │
    user thread ◄── get() / a for loop ── waits on a Condition ┘
                 ── consumed(n) ──► engine (an iterator's credit: stream.py)

``Submitter`` turns a call into a scheduler ``Job``: the function is pickled once
per pool (``FnInfo`` cached by identity), a single task's arguments are pickled in
the caller's thread (so an unpicklable argument fails at submit, not later). An
argument or function that does not pickle raises the pickler's own exception (a
``TypeError`` for a lock, whatever a ``__reduce__`` raised), with a note naming the
part that failed, as the stdlib raises it.

The cache must not keep a user's objects alive after their tasks: a function that
its module holds anyway (``module.f``, a builtin, a class) is cached for good; any
other callable (a bound method and its object, a lambda, a closure, a partial) only
while some job still holds its ``FnInfo`` (a ``WeakValueDictionary``).
"""

from __future__ import annotations

import builtins
import functools
import itertools
import pickle
import sys
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from typing import Any, Generic, TypeVar

from .._serialize import reducers, refuse_out_of_band
from ..errors import TimeoutError
from .cell import Cell
from .messages import TaskError, pickling_error
from .scheduler import FnInfo, Job, Mode
from .stream import IMapIterator, IMapUnorderedIterator, MapIterator

_dumps = pickle.dumps
# Read once: an enum member lookup (``Mode.STAR``) costs ~150 ns on 3.11, once per submit.
_STAR, _KW = Mode.STAR, Mode.KW

T = TypeVar("T")

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "IMapUnorderedIterator",
    "MapIterator",
    "Submitter",
    "make_progress",
]


class ApplyResult(Generic[T]):
    """The result of ``apply_async``: ``get``, ``wait``, ``ready``, ``successful``; awaitable."""

    __module__ = "polyproc.pool"  # its public home: repr, pickle

    def __init__(
        self,
        future: Cell | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._future = future if future is not None else Cell()
        if callback is not None or error_callback is not None:
            self._future.add_done_callback(_callbacks(callback, error_callback))

    def ready(self) -> bool:
        """Whether the task has finished (either way)."""
        return self._future.done()

    def successful(self) -> bool:
        """Whether it finished without raising; ValueError while not ready (as the stdlib)."""
        if not self._future.done():
            raise ValueError(f"{self!r} not ready")
        return self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Block until ready or ``timeout`` passes; never raises the task's error."""
        try:
            self._future.exception(timeout)
        except BaseException:  # noqa: BLE001 - wait never raises the task's error
            pass

    def get(self, timeout: float | None = None) -> T:
        """The result, or the task's exception raised here; TimeoutError if not ready in time."""
        try:
            return self._future.result(timeout)  # type: ignore[no-any-return]
        except builtins.TimeoutError:
            if self._future.done():
                raise  # the task itself raised (or timed out in its worker)
            raise TimeoutError(f"no result within {timeout} s") from None

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # here: importing asyncio costs a short script more than its pool

        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def copy(cell: Cell) -> None:
            loop.call_soon_threadsafe(_copy_outcome, cell, waiter)

        self._future.add_done_callback(copy)
        return waiter.__await__()

    def __repr__(self) -> str:
        state = "ready" if self._future.done() else "pending"
        return f"<{type(self).__name__} {state}>"


AsyncResult = ApplyResult


def _copy_outcome(cell: Cell, waiter: Any) -> None:
    """In the event loop: give an awaited result's outcome to its asyncio future."""
    if waiter.cancelled():
        return
    error = cell.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(cell.result())


def _callbacks(
    callback: Callable[[T], object] | None,
    error_callback: Callable[[BaseException], object] | None,
) -> Callable[[Cell], None]:
    def run(fut: Cell) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            if callback is not None:
                callback(fut.result())
        elif error_callback is not None:
            error_callback(exc)

    return run


class MapResult(ApplyResult[list[T]]):
    """``map_async``/``starmap_async``: one list, complete or failed with the first error."""

    __module__ = "polyproc.pool"  # its public home: repr, pickle

    def __init__(
        self,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        progress: Any = None,
    ) -> None:
        super().__init__(None, callback, error_callback)
        self._values: list[Any] = []
        self._error: BaseException | None = None
        self._progress = progress

    def _deliver(self, start: int, values: list[Any], clean: bool = False) -> None:
        vals = self._values
        if len(vals) < start + len(values):
            vals.extend([None] * (start + len(values) - len(vals)))
        vals[start : start + len(values)] = values
        if self._error is None and not clean:
            for v in values:
                if type(v) is TaskError:
                    self._error = v.exception()
                    break
        if self._progress is not None:
            self._progress.update(len(values))

    def _done(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._error is not None:
            self._future.set_exception(self._error)
        else:
            self._future.set_result(self._values)


def make_progress(progress: Any, total: int | None, desc: str) -> Any:
    """A tqdm bar for ``progress=True`` or a dict of tqdm options; None for no bar.

    Without tqdm's monitor thread (``monitor_interval = 0``): started by the first bar and
    alive for the program's life, it is a thread polyproc cannot park, so every later pool
    would lose its template and start its workers from the forkserver (``auto``: fork only
    where no other thread can hold a lock). What the monitor did, refresh a bar whose
    adaptive ``miniters`` grew too far, ``miniters=1`` does instead: each update looks at the
    clock and redraws every ``mininterval`` seconds.
    """
    if not progress:
        return None
    opts: dict[str, Any] = {"total": total, "desc": desc, "miniters": 1}
    if isinstance(progress, dict):
        opts.update(progress)
    return _bar_class()(**opts)


@functools.cache
def _bar_class() -> Any:
    from tqdm import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        monitor_interval = 0

    return Bar


class Submitter:
    """Builds scheduler jobs for one pool: functions pickled once, arguments at submit."""

    _MAX_FNS = 512

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.threads = engine.threads
        self.serializer = engine.serializer
        self._fns: OrderedDict[int, FnInfo] = OrderedDict()  # module-level functions
        self._transient: weakref.WeakValueDictionary[int, FnInfo] = weakref.WeakValueDictionary()
        self._fids = itertools.count(1)
        self._lock = threading.Lock()
        self._last: FnInfo | None = None  # the last module-level function: no lookup at all
        from .._serialize import Serializer, _main_is_importable

        self._fast = (
            not self.threads
            and type(self.serializer) is Serializer
            and self.serializer.protocol == 5
            and _main_is_importable()
        )

    def fn_info(self, fn: Callable[..., Any]) -> FnInfo:
        key = id(fn)
        info = self._fns.get(key)
        if info is not None and info.fn is fn:
            self._last = info  # its module holds it anyway: keeping it costs nothing
            return info
        info = self._transient.get(key)
        if info is not None and info.fn is fn:
            return info
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        try:
            blob: Any = (
                fn if self.threads else self.serializer.dumps_bytes(fn, what="the task function")
            )
        except Exception as err:  # noqa: BLE001 - the pickler's own error, with a note
            raise pickling_error(err) from None
        with self._lock:
            info = FnInfo(next(self._fids), fn, str(name), blob)
            if _module_holds(fn):
                self._fns[key] = info
                self._last = info
                if len(self._fns) > self._MAX_FNS:
                    self._fns.popitem(last=False)
            else:
                self._transient[key] = info
        return info

    def pack(self, arg: Any) -> Any:
        """A single task's argument pickled now, in the caller's thread."""
        if self.threads:
            return arg
        if self._fast and not reducers.table:
            # The common case in one C call: plain pickle, no buffers, no fds. Anything
            # else (a lambda, a NumPy array, an fd owner) takes the serializer's full path.
            try:
                return _dumps(arg, 5, buffer_callback=refuse_out_of_band)
            except Exception:  # noqa: BLE001 - the full path below says what failed
                pass
        try:
            p = self.serializer.dumps(arg, what="the task's arguments")
        except Exception as err:  # noqa: BLE001 - the pickler's own error, with a note
            raise pickling_error(err) from None
        if not p.buffers and not p.fds:
            return p.body
        return (p.body, p.buffers, p.fds)

    def single(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Any,
        timeout: float | None = None,
        retries: int = 0,
        claim: Callable[[list[Job]], list[Job]] | None = None,
    ) -> Job:
        """One task's job. Few objects per submit: with 200k futures in flight each one is
        garbage-collector work, so the argument is kept only in its pickled form (a task
        error's message reads it back, ``Job.call_arg``) unless that form is not plain bytes.
        ``claim``: the face's hook that starts a batch of its futures when they are sent
        and drops the cancelled ones (the executor's ``_claim``); None for ``Pool``."""
        info = self._last
        if info is None or info.fn is not fn:
            info = self.fn_info(fn)
        if kwargs:
            mode, arg = _KW, (args, kwargs)
        else:
            mode, arg = _STAR, args
        blob = self.pack(arg)
        return Job.task(
            info,
            mode,
            future,
            blob,
            None if type(blob) is bytes else arg,
            timeout,
            retries,
            claim,
        )

    def many(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        sink: Any,
        *,
        star: bool,
        ordered: bool,
        credit: bool,
        chunksize: int | None,
        timeout: float | None,
        retries: int,
    ) -> Job:
        info = self.fn_info(fn)
        try:
            length = len(iterable) if isinstance(iterable, Sized) else None
        except TypeError:
            length = None
        it: Iterator[Any] = iter(iterable)
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        return Job(
            info,
            Mode.STAR if star else Mode.ONE,
            sink,
            it=it,
            length=length,
            ordered=ordered,
            credit=credit,
            chunksize=chunksize,
            timeout=timeout,
            retries=retries,
        )


def _module_holds(fn: Any) -> bool:
    """Whether ``fn`` is reachable as ``module.qualname`` (so caching it keeps nothing alive)."""
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
        return False
    qualname = getattr(fn, "__qualname__", "")
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or not qualname or "<" in qualname:
        return False
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is fn
