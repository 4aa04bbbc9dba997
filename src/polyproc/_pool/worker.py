"""The worker side of the pool: the loop each worker process (or ThreadPool thread) runs.

A process worker owns one end of a private channel (a ``Pipe()`` socketpair)::

    engine ──(TASKS bid fid fn? mode packed args)──►  recv ─► cache fn by fid (fid > 0)
                                                        │
                                                        ▼ run every task of the batch,
                                                          catching BaseException per task,
                                                          committing each result to the
                                                          journal before the next (journal.py)
    engine ◄──(PARTIAL bid values)───────────────────  a result the journal cannot hold
    engine ◄──(RESULTS bid busy rss values)──────────  send (an unpicklable value is
                                                          replaced by its own error)

Between batches the worker holds nothing of the last one (its argument, function,
results), so a task's objects die when the task does, as the user expects of
``__del__`` and weakref callbacks. READY carries the journal's fd and the RSS the
worker started with (a fork child's pages shared with its parent, which
``max_memory_per_child`` does not count).

It ignores SIGINT (the parent owns Ctrl+C and tears the pool down), runs the
initializer once (reporting ``INIT_FAILED`` instead of dying, so the pool breaks
cleanly rather than respawning forever), then serves batches until ``STOP`` or
end-of-file on the channel (the parent is gone), and returns quietly: no
traceback, exit code 0. Its RSS rides on its results (every batch's under
``max_memory_per_child``, so recycling by memory needs no extra round trip; else at
most every ``RSS_EVERY``), and after answering it polls for its next task a little
before sleeping (``_transport/spin.py``).

A thread worker (``ThreadWorker``) runs the same calls on objects directly: no
pickling, results handed to the engine through a callback.
"""

from __future__ import annotations

import _signal
import os
import pickle
import select
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from .._serialize import Serializer
from .._transport.spin import Spin, spin_budget, wait_spinning
from ..errors import SerializationError
from .journal import Journal, Values, values_of
from .messages import (
    GO,
    INIT_FAILED,
    PARTIAL,
    READY,
    RESULTS,
    STOP,
    JournalFd,
    TaskError,
    encoding_error,
)

__all__ = ["worker_main", "run_batch", "ThreadWorker", "current_rss", "by_reference"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: Seconds a process worker polls for its next task after answering, before it sleeps
#: (``_transport/spin.py``: adaptive, bounded, yielding, off with one CPU). In a loop of
#: round trips the next task comes ~20-30 us after the answer (the caller's share).
WORKER_SPIN = spin_budget(50e-6)

ONE, STAR, KW = 0, 1, 2  # scheduler.Mode values, as plain ints on the hot path
_pickle_loads = pickle.loads


def run_batch(
    fn: Callable[..., Any],
    mode: int,
    args: list[Any],
    capture: Callable[[BaseException], TaskError] = TaskError.capture,
) -> list[Any]:
    """Call ``fn`` on each argument; a task that raises (anything) yields a ``TaskError``."""
    out: list[Any] = []
    append = out.append
    for a in args:
        try:
            if mode == ONE:
                append(fn(a))
            elif mode == STAR:
                append(fn(*a))
            else:
                append(fn(*a[0], **a[1]))
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a task must not end the worker
            append(capture(exc))
    return out


#: Seconds between two RSS reads a worker sends with its results, unless the pool has a
#: ``max_memory_per_child`` (then every batch): reading /proc/self/statm is ~1.5 us and a
#: syscall, a tenth of a worker's part of a round trip, and a worker's RSS, shown by
#: ``statistics()``, moves no faster than that matters. The engine keeps the last one.
RSS_EVERY = 0.005


class _Rss:
    """Current RSS from /proc/self/statm, read with pread on a held fd (about 2 us)."""

    def __init__(self, every: float = 0.0) -> None:
        try:
            self.fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.fd = None
        self.every = every
        self.due = 0.0  # the clock (perf_counter) from which ``sample`` reads again

    def sample(self, now: float) -> int | None:
        """``read()``, or None (nothing new: the engine keeps the last) until ``every``
        seconds have passed since the last read."""
        if now < self.due:
            return None
        self.due = now + self.every
        return self.read()

    def read(self) -> int | None:
        if self.fd is None:
            return None
        try:
            return int(os.pread(self.fd, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return None


def by_reference(fn: Any) -> bool:
    """Does ``fn`` pickle as a name that its module keeps alive (a module-level function,
    class or builtin)? Only those may a worker cache across batches: caching anything
    else (a bound method, a partial, a closure) would keep its objects alive after the task."""
    if isinstance(fn, types.BuiltinFunctionType):
        owner = getattr(fn, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            return False  # a bound builtin method: ``[].append``
    elif not isinstance(fn, (types.FunctionType, type)):
        return False
    mod = sys.modules.get(getattr(fn, "__module__", None) or "")
    target: Any = mod
    try:
        for part in fn.__qualname__.split("."):
            target = getattr(target, part)
    except AttributeError:
        return False
    return target is fn


def current_rss(pid: int) -> int | None:
    """Another process's RSS in bytes (the engine samples busy workers with it)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def worker_main(
    chan: Any,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    serializer: Any,
    exact_rss: bool = True,
    journal_fd: JournalFd | None = None,
    standby: bool = False,
) -> None:
    """Entry point of a pool worker process (the ``target`` of its ``Process``).
    ``exact_rss``: send the RSS with every batch's results (the pool recycles by memory),
    else at most every ``RSS_EVERY`` seconds; the pool made the journal's memory
    (``journal_fd``). A ``standby`` worker (``standby.py``) boots this far, then waits
    for ``GO`` before its initializer: one that is never needed never runs it."""
    # ``_signal``'s, not ``signal.signal``: that wrapper's enum conversions cost a fresh
    # fork child ~0.2 ms of CPU (the pages they touch are copied on write; issue 11).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    rss = _Rss(0.0 if exact_rss else RSS_EVERY)
    if standby:
        try:
            if chan.recv()[0] != GO:
                return  # STOP: the pool ended without needing us
        except (EOFError, OSError):
            return
    start_rss = rss.read()  # before the initializer: what it allocates is the worker's own
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - report, never die with a traceback
        # Say so where the stdlib's executor does (programs and its tests listen there),
        # before reporting: the pool kills its workers once it knows it is broken.
        import logging

        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
        _send_quietly(chan, (INIT_FAILED, TaskError.capture(exc)))
        return
    journal: Journal | None = None  # none: results still travel, only exactly-once on death is lost
    if journal_fd is not None:
        try:
            journal = Journal(journal_fd.fd)
        except (OSError, ValueError):
            journal = None
    if not _send_quietly(chan, (READY, os.getpid(), start_rss)):
        return
    _serve(chan, serializer, rss, journal)


def _serve(chan: Any, serializer: Any, rss: _Rss, journal: Journal | None) -> None:
    fns: dict[int, Callable[..., Any]] = {}  # functions the parent may name by fid alone
    unloadable: dict[int, BaseException] = {}  # fids whose function failed to load
    loads = serializer.loads
    plain = type(serializer) is Serializer  # its loads of bytes is pickle.loads
    dumps = serializer.dumps_bytes
    clock = time.perf_counter
    capture = TaskError.capture

    def flush(bid: int, values: list[Any]) -> bool:
        return _send_results(chan, (PARTIAL, bid), values)

    # After answering, poll for the next task a little before sleeping (spin.py's rules):
    # in a round-trip loop it comes within microseconds, and a sleep and its wake-up on
    # an idle CPU cost ~25 us. Our own poll object on the channel (the worker owns it for
    # its life): no Connection call per turn.
    spin = Spin(WORKER_SPIN)
    ready = select.poll()
    ready.register(chan.fileno(), select.POLLIN)
    wait = ready.poll
    buffered = chan._has_buffered
    while True:
        # Nothing of the last batch is held here while we wait: its argument, function and
        # results die with it (only ``fns`` keeps functions, and only those the parent
        # names by fid: module-level ones, which their module keeps alive anyway).
        try:
            if journal is not None:
                # Waiting, then loading: a death in between is no fault of the batch
                # (journal.py, STATE). One poll per batch, none if it is already buffered.
                journal.waiting()
                if not buffered():
                    wait_spinning(wait, spin, -1)
                journal.loading()
            msg = chan.recv()
        except (EOFError, OSError):
            return  # the parent went away: nothing to report to
        if msg[0] == STOP:
            return
        _, bid, fid, blob, mode, packed, args = msg
        msg = None
        start = clock()
        fn = fns.get(fid)
        values: Values | None = None
        if fn is None:
            try:
                if blob is None:  # sent once, and it failed then: the same error again
                    raise unloadable.get(fid) or LookupError(f"no function {fid}")
                fn = loads(blob)
                if fid > 0:
                    fns[fid] = fn
            except BaseException as exc:  # noqa: BLE001
                unloadable[fid] = exc
                err = TaskError.capture(
                    SerializationError(
                        f"the task function could not be unpickled in the worker: {exc!r}"
                    )
                )
                values = [err] * len(args)
                fn = None
        blob = None
        if fn is not None and packed and len(args) == 1 and journal is not None:
            # A round trip's batch, one task: no list of arguments, no span (``run_one``).
            one = args[0]
            if type(one) is bytes and plain:
                try:
                    arg = _pickle_loads(one)  # what Serializer.loads does with no fds
                except BaseException as exc:  # noqa: BLE001 - the task's error
                    arg = _unloadable(exc)
            else:
                arg = _unpack(loads, one)
            one = None
            if type(arg) is not _Unpacked:
                values = journal.run_one(fn, mode, arg, bid, capture, dumps)
                fn = None
            else:
                args, packed, fn, mode = [arg], False, _WithErrors(fn, mode), ONE
            arg = None
        if fn is not None:
            if packed:
                args = [_unpack(loads, a) for a in args]
                if any(type(a) is _Unpacked for a in args):
                    fn, mode = _WithErrors(fn, mode), ONE
            if journal is not None:
                values = journal.run(fn, mode, args, bid, flush, capture, dumps)
                if values is None:
                    return
            else:
                values = run_batch(fn, mode, args)
        fn = args = None
        end = clock()
        assert values is not None
        ok = _send_results(chan, (RESULTS, bid, end - start, rss.sample(end)), values)
        values = None
        if not ok:
            return


class _Unpacked:
    __slots__ = ("error",)

    def __init__(self, error: TaskError) -> None:
        self.error = error


def _unpack(loads: Callable[..., Any], item: Any) -> Any:
    """One pre-pickled task argument: bytes, or (body, buffers, fds), or its pickling error."""
    if type(item) is TaskError:
        return _Unpacked(item)
    try:
        if type(item) is bytes:
            return loads(item)
        return loads(item[0], item[1], item[2])
    except BaseException as exc:  # noqa: BLE001
        return _unloadable(exc)


def _unloadable(exc: BaseException) -> _Unpacked:
    return _Unpacked(
        TaskError.capture(
            SerializationError(
                f"the task's arguments could not be unpickled in the worker: {exc!r}"
            )
        )
    )


class _WithErrors:
    """``fn`` for a batch where some arguments did not unpickle: those tasks' value is their
    error (a ``TaskError``), the others run as usual."""

    __slots__ = ("fn", "mode")

    def __init__(self, fn: Callable[..., Any], mode: int) -> None:
        self.fn = fn
        self.mode = mode

    def __call__(self, a: Any) -> Any:
        if type(a) is _Unpacked:
            return a.error
        if self.mode == ONE:
            return self.fn(a)
        if self.mode == STAR:
            return self.fn(*a)
        return self.fn(*a[0], **a[1])


def _send_quietly(chan: Any, msg: tuple[Any, ...]) -> bool:
    try:
        chan.send(msg)
    except OSError:
        return False
    return True


def _send_results(chan: Any, head: tuple[Any, ...], values: Values) -> bool:
    """Send ``(*head, values)``; values that cannot be pickled become errors in place.

    A value whose pickling raises an ``Exception`` becomes ``MaybeEncodingError`` (the
    stdlib Pool's error; the executor face unwraps the pickler's own error from it);
    one whose ``__reduce__`` raises ``SystemExit`` or the like has that as its outcome,
    as in the stdlib's executor.
    """
    try:
        chan.send((*head, values))
        return True
    except OSError:
        return False
    except BaseException:  # noqa: BLE001 - some value's __reduce__ raised: find which below
        pass
    values = list(values_of(values))
    for i, v in enumerate(values):
        try:
            chan._ser.dumps(v, what="result")
        except Exception as exc:  # noqa: BLE001
            values[i] = TaskError.capture(encoding_error(exc, v))
        except BaseException as exc:  # noqa: BLE001
            values[i] = TaskError.capture(exc)
    return _send_quietly(chan, (*head, values))


# -- thread workers (ThreadPool) ------------------------------------------------------
class ThreadWorker:
    """A worker thread for ``ThreadPool``: batches in through a queue, results out through ``post``.

    ``post(kind, wid, *payload)`` is the engine's inbox; kinds are the same ints as
    on a process channel, plus ``STOP`` when the thread ends.
    """

    def __init__(
        self,
        wid: int,
        name: str,
        post: Callable[..., None],
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.wid = wid
        import queue  # here: only a ThreadPool has thread workers

        self.inbox: queue.SimpleQueue[tuple[int, Callable[..., Any], int, list[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._post = post
        self._init = initializer
        self._initargs = initargs
        self.abandoned = False
        self.put = self.inbox.put  # the worker-set interface (``workers.Slot``), no extra call
        self.name = name
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            if self._init is not None:
                self._init(*self._initargs)
        except BaseException as exc:  # noqa: BLE001
            self._post(INIT_FAILED, self.wid, TaskError.local(exc))
            self._post(STOP, self.wid)
            return
        self._post(READY, self.wid, os.getpid())
        clock = time.perf_counter
        while True:
            item = self.inbox.get()
            if item is None or self.abandoned:
                break
            bid, fn, mode, args = item
            start = clock()
            values = run_batch(fn, mode, args, TaskError.local)
            if self.abandoned:
                break
            self._post(RESULTS, self.wid, bid, clock() - start, None, values)
            # Drop the batch before waiting for the next: nothing outlives its task.
            del item, fn, args, values
        self._post(STOP, self.wid)
