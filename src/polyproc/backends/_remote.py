"""What runs on a cluster worker: one batch of a pool's tasks per cluster task.

::

    client (pool's slot)                                cluster worker process
    ────────────────────                                ──────────────────────
    run(token, init, fid, fn_blob, mode, args_blob, refs) ──►  initializer once per
                                                               (process, pool token)
                                                           fn = cache[token, fid] or loads
                                                           args = loads(args_blob, refs)
                                                           run_batch (an error per task,
                                                                      with its traceback)
    ◄── bytes: ("ok", busy_s, pid, values) | ("init", pid, TaskError)

Big objects (``_pack.BIG`` bytes and up) are not in the blobs: the client put them in
the engine's object store once and the blobs hold their index in ``refs``, which the
engine resolves before calling us (Dask resolves futures in a list argument; Ray
resolves ``ObjectRef`` arguments). The answer is one pickled ``bytes``, so a result
that does not pickle becomes that task's error here, not a failed cluster task.

Needs only polyproc importable on the worker (and cloudpickle, a polyproc dependency).
"""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .._pool.messages import TaskError
from .._pool.worker import run_batch
from ..errors import SerializationError

__all__ = ["run", "init_once", "loads_with"]

_lock = threading.Lock()
_inited: dict[str, TaskError | None] = {}
_fns: OrderedDict[tuple[str, int], Callable[..., Any]] = OrderedDict()
_MAX_FNS = 256


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, refs: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._refs = refs

    def persistent_load(self, pid: Any) -> Any:
        return self._refs[pid]


def loads_with(data: bytes, refs: list[Any]) -> Any:
    """Unpickle a blob whose big objects are indices into ``refs``."""
    if not refs:
        return pickle.loads(data)
    return _RefUnpickler(data, refs).load()


def init_once(token: str, init_blob: bytes | None, refs: list[Any]) -> TaskError | None:
    """Run the pool's initializer once in this process (the pool is ``token``).

    Under a lock: a Dask worker may run two of our tasks at once in its threads.
    """
    if init_blob is None:
        return None
    with _lock:
        if token in _inited:
            return _inited[token]
        err: TaskError | None = None
        try:
            fn, args = loads_with(init_blob, refs)
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported, the pool breaks cleanly
            err = TaskError.capture(exc)
        _inited[token] = err
        return err


def _function(token: str, fid: int, blob: bytes, refs: list[Any]) -> Callable[..., Any]:
    key = (token, fid)
    with _lock:
        hit = _fns.get(key)
        if hit is not None:
            _fns.move_to_end(key)
            return hit
    fn: Callable[..., Any] = loads_with(blob, refs)
    if not callable(fn):
        raise TypeError(f"not callable: {type(fn).__name__}")
    with _lock:
        _fns[key] = fn
        if len(_fns) > _MAX_FNS:
            _fns.popitem(last=False)
    return fn


def run(
    token: str,
    init_blob: bytes | None,
    init_refs: list[Any],
    fid: int,
    fn_blob: bytes,
    mode: int,
    args_blob: bytes,
    count: int,
    refs: list[Any],
) -> bytes:
    """Run one batch here; the answer is pickled (see the module docstring)."""
    pid = os.getpid()
    err = init_once(token, init_blob, init_refs)
    if err is not None:
        return pickle.dumps(("init", pid, err), 5)
    busy = 0.0
    try:
        fn = _function(token, fid, fn_blob, refs)
    except BaseException as exc:  # noqa: BLE001
        values: list[Any] = [
            TaskError.capture(
                SerializationError(
                    f"the task function could not be unpickled on the cluster worker: {exc!r}"
                )
            )
        ] * count
    else:
        try:
            args = loads_with(args_blob, refs)
        except BaseException as exc:  # noqa: BLE001
            values = [
                TaskError.capture(
                    SerializationError(
                        f"the task's arguments could not be unpickled on the cluster worker: {exc!r}"
                    )
                )
            ] * count
        else:
            # ``busy`` is the calls alone: the pool sizes batches from it (seconds per
            # task), and a first batch that also paid for unpickling the function would
            # make a 0.1 us task look like a slow one for several round trips.
            start = time.perf_counter()
            values = run_batch(fn, mode, args)
            busy = time.perf_counter() - start
    return _dump_answer(busy, pid, values)


def _dump_answer(busy: float, pid: int, values: list[Any]) -> bytes:
    try:
        return pickle.dumps(("ok", busy, pid, values), 5)
    except Exception:  # noqa: BLE001 - one value does not pickle: find it below
        pass
    import cloudpickle

    out: list[Any] = []
    for v in values:
        try:
            cloudpickle.dumps(v, 5)
            out.append(v)
        except Exception as exc:  # noqa: BLE001
            out.append(
                TaskError.capture(
                    SerializationError(
                        f"the task's result could not be pickled to send back: "
                        f"{type(v).__name__}: {exc}"
                    )
                )
            )
    blob: bytes = cloudpickle.dumps(("ok", busy, pid, out), 5)
    return blob
