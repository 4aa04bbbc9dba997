"""Local worker processes: start, feed, read, stop, kill, and a death's exact accounting.

::

    engine thread (or a caller holding the engine lock)           worker process
    ───────────────────────────────────────────────────           ──────────────
    spawn(wid) ── Pipe, Process(worker_main).start() ─────────────► READY (pid, RSS)
               └─ or the standby started ahead, sent GO (standby.py)
    send(Send) ── Handle.queue: MSG_DONTWAIT, rest on EVENT_WRITE ─► TASKS
    on_readable(h) ◄── Tag.CHANNEL readable, frame by frame ◄─────── RESULTS / PARTIAL
    on_death(h) ◄── Tag.SENTINEL readable ◄──────────────────────── exit
        └─ shut the channel for reading, drain it to end-of-file, read the commit
           journal (_recover) ──► Scheduler.worker_exited(..., recovered=...)
    sample_rss() ── /proc/PID every 0.2 s while a worker is busy (peak RSS on death)

Sends never block: a worker writing a large result while we write it a large batch
cannot deadlock the two of us. Reads are frame by frame with ``Connection.recv``
(a worker only ever waits on us to read, never the reverse). On a worker's death
the channel is drained to end-of-file, so results it sent before dying still count;
then its commit journal (``journal.py``) says which tasks of the running batch
finished (delivered), which one was running (failed, or retried) and which never
started (requeued): exactly once. A torn frame (a worker killed mid-send) closes
only that channel: the selector watches a dup of the channel's fd that we close
ourselves, after unregistering it.
"""

from __future__ import annotations

import _socket
import os
import pickle
import selectors
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import errors
from .._connection import Pipe  # here, not at the first start: pool start is timed
from .._launch.child import is_refusal
from .._launch.template import for_pool
from .._serialize import Serializer, fd_handle
from .._shm import bulk
from .._transport import wrap_fd
from ..errors import CorruptMessageError
from .channel import LEADING, Handle, Tag, close_unused, pickle_buffer
from .channel import packed as pack_single
from .journal import JournalReader, new_journal_fd, values_of
from .messages import (
    INIT_FAILED,
    PARTIAL,
    READY,
    RESULTS,
    STOP,
    TASKS,
    JournalFd,
    TaskError,
    pickling_error,
    unpickling_error,
)
from .standby import Standby
from .tasks import PoolState, Recovered, Send
from .worker import by_reference, current_rss, worker_main
from .workers import WorkerSet

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["ProcessWorkers", "WORKER_PREFIX"]

_dumps = pickle.dumps

WORKER_PREFIX = {
    "fork": "ForkPoolWorker",
    "spawn": "SpawnPoolWorker",
    "forkserver": "ForkServerPoolWorker",
    "auto": "ForkPoolWorker",
}
_SMALL = 1 << 14  # a single task's message smaller than this skips the serializer
_BYTES_ONLY = {bytes}  # single tasks whose arguments pickled plainly (no buffers, no fds)


class ProcessWorkers(WorkerSet):
    """A pool's local worker processes, each with its ``Handle`` (channel, sentinel, journal)."""

    samples_rss = True
    leads = True

    def __init__(
        self,
        engine: Engine,
        *,
        ctx: Any,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        super().__init__(engine)
        self.ctx = ctx
        # A copy of the caller to fork workers from, made while the caller may still be
        # single-threaded (fork semantics without forking a threaded process; template.py).
        self.template = for_pool(ctx)
        self.first_in_caller = self.template is not None
        # Forked from the caller or its template, not an interpreter booted (spawn, or
        # the forkserver: ``auto`` without a template, because another thread runs).
        self.quick_start = ctx.start_method == "fork" or self.template is not None
        self.serializer = ctx.serializer
        # The default serializer pickles plain data exactly as ``pickle.dumps``.
        self._plain = type(self.serializer) is Serializer and self.serializer.protocol == 5
        self.initializer = initializer
        self.initargs = initargs
        self.prefix = WORKER_PREFIX.get(ctx.start_method, "PoolWorker")
        self.sel = engine.sel
        # First workers the template will fork (``first_started``): their set-up waits.
        self._deferred: list[tuple[Handle, Any, Any, int | None]] = []
        self.standby = Standby(self)  # the next replacement, once one was needed

    def first_started(self) -> None:
        """Every first worker's ``start()`` is done: fork the template now, with the
        first workers it forks at once (C extension: ``Template.start_first`` wrote them
        down), or after them (none: the caller forked them, and the template closes
        their channels, which it inherits, when woken); then finish those workers'
        set-up, which needed their fds open until the fork (template.py)."""
        template = self.template
        deferred, self._deferred = self._deferred, []
        if template is not None and template.pending:
            foreign: list[int] = []
            for h in self.handles.values():
                for fd in (h.fd, h.conn.fileno() if h.conn is not None else -1, h.proc.sentinel):
                    if fd >= 0:
                        foreign.append(fd)
            try:
                forked = template.fork_now(tuple(foreign))
            except OSError as exc:  # as a first worker's failed start: every one would fail
                forked = False
                self._cannot_start(exc)
            if not forked:
                self.template = None  # replacements then start as any worker would
        for h, ours, theirs, jfd in deferred:
            self._attach(h, ours, theirs, jfd)

    def __len__(self) -> int:
        return len(self.handles)

    def name_of(self, wid: int) -> str:
        h = self.handles.get(wid)
        return f"worker {wid}" if h is None else h.name

    def live(self) -> list[Any]:
        return [h.proc for h in list(self.handles.values()) if h.proc is not None]

    def processes(self) -> dict[int, Any]:
        return {h.proc.pid: h.proc for h in list(self.handles.values()) if h.proc is not None}

    # -- start, stop, kill, death ------------------------------------------------------
    def new_process(self, theirs: Any, jfd: int | None, standby: bool = False) -> Any:
        """A worker's ``Process`` (not started): ``theirs`` its end of the channel, ``jfd``
        its journal; a ``standby`` one waits for GO (``standby.py``)."""
        from .._process import process_class  # ctx is Settings: data, no factories

        args = (
            theirs,
            self.initializer,
            self.initargs,
            self.serializer,
            self.sched.max_memory is not None,
            None if jfd is None else JournalFd(jfd),
        )
        proc = process_class(self.ctx)(
            target=worker_main, daemon=True, args=(*args, True) if standby else args
        )
        proc.name = proc.name.replace("Process", self.prefix)
        proc.__dict__["_polyproc_template"] = self.template  # read (and removed) by start()
        return proc

    def spawn(self, wid: int) -> None:
        if self.standby.promote(wid):
            return  # the standby started ahead of need is this worker (standby.py)
        h = Handle(wid)
        self.handles[wid] = h
        ours, theirs = Pipe()
        jfd = new_journal_fd()
        try:
            proc = self.new_process(theirs, jfd)
            if self.template is not None and self.template.pending:
                # The template may fork this first worker: then it must not keep its
                # channel, nor its journal.
                self.template.first_fds = (ours.fileno(), theirs.fileno()) + (
                    () if jfd is None else (jfd,)
                )
            h.name = proc.name
            proc.start()
        except BaseException as exc:  # noqa: BLE001 - a start failure is a worker death
            close_unused(ours, theirs, jfd)
            del self.handles[wid]
            if not isinstance(exc, Exception):
                raise
            if not self.engine.started.is_set():
                self._cannot_start(exc)
            self.sched.worker_exited(wid, None, name=h.name)
            return
        h.proc = proc
        template = self.template
        if template is not None and template.pending and template.has_firsts:
            # Not forked yet: the template forks it with the others (``first_started``),
            # so its end of the channel and its journal stay open until then.
            self._deferred.append((h, ours, theirs, jfd))
            return
        self._attach(h, ours, theirs, jfd)
        if template is not None and self.engine.started.is_set():
            self.standby.replaced(wid)  # the next replacement may be ready ahead of need

    def _cannot_start(self, exc: BaseException) -> None:
        """A first worker cannot even be started (its initializer does not pickle, fork
        fails): every start would fail alike. Break the pool now, with the cause."""
        engine = self.engine
        if engine.start_error is None:
            engine.start_error = exc
        err = errors.BrokenProcessPool(f"a pool worker could not be started: {exc!r}")
        err.__cause__ = exc
        # A main module with no guard (the forkserver would not import it) is the
        # program's error: raised as it is, not as a broken pool.
        self.sched._break(exc if is_refusal(exc) else err)

    def _attach(self, h: Handle, ours: Any, theirs: Any, jfd: int | None) -> None:
        """A started worker's parent side: our copies of its ends closed, its journal
        mapped, its channel and sentinel watched."""
        theirs.close()
        proc = h.proc
        proc._drop_target()  # forked: the child has its own copy
        if jfd is not None:
            h.journal = JournalReader(jfd)  # maps it and closes our fd
        self.engine.hook_exit()  # after the first start (engine.py says why)
        handle = proc._handle
        assert handle is not None
        # A first worker forked by the template says its pid in READY: not waited for here.
        h.conn, h.pid = ours, handle.pid_if_known()
        h.sock = wrap_fd(os.dup(ours.fileno()))
        h.fd = h.sock.fileno()
        self.sel.register(h.fd, selectors.EVENT_READ, (Tag.CHANNEL, h))
        h.watched = selectors.EVENT_READ
        self.sel.register(proc.sentinel, selectors.EVENT_READ, (Tag.SENTINEL, h))

    def stop(self, wid: int) -> None:
        h = self.handles.get(wid)
        if h is not None:
            self._queue(h, (STOP,))

    def kill(self, wid: int) -> None:
        h = self.handles.get(wid)
        if h is None:
            return
        try:
            h.proc.kill()
        except (OSError, ValueError):
            pass
        if self.sched.state is PoolState.TERMINATE and self.template is not None:
            # The pool ends: the template ends now too, beside its workers, rather than
            # after them (``close_all``); parked, it reaps them first (template.py).
            self.template.shut()

    def on_death(self, h: Handle) -> None:
        """The sentinel fired: take what the worker sent before dying, then tell the scheduler."""
        self.sel.unregister(h.proc.sentinel)
        if h.conn is not None and not h.conn.closed:
            try:
                assert h.sock is not None
                h.sock.shutdown(_socket.SHUT_RD)  # reads now end at EOF, never block
            except OSError:
                pass
            # Every frame it sent, to the end: what is in the socket was sent before the
            # journal moved on (journal.py), so the journal reads right only after all of it.
            while h.conn is not None and not h.conn.closed:
                self.on_readable(h, False)
        recovered = self._recover(h)
        self._close_channel(h)
        h.proc.join()
        exitcode, pid = h.proc.exitcode, h.proc.pid
        try:
            h.proc.close()
        except (ValueError, OSError):
            pass
        self.handles.pop(h.wid, None)
        if h.wid in self.sched.workers:
            # The pid in the name: what the OOM killer's log and ``ps`` speak of.
            name = f"{h.name} (pid {pid})"
            self.sched.worker_exited(
                h.wid, exitcode, peak_rss=h.peak, name=name, recovered=recovered
            )

    def on_template(self) -> None:
        """The template announced a spare a standby waits for (``standby.py``)."""
        self.standby.announced()

    def _recover(self, h: Handle) -> Recovered | None:
        """What the dead worker's journal says about the head of its window (journal.py)."""
        slot = self.sched.workers.get(h.wid)
        if h.journal is None or slot is None or not slot.window:
            return None
        head = slot.window[0]
        known = h.partial if h.partial_bid == head.bid else []
        try:
            rest = h.journal.recover(head.bid, len(known), len(head))
        except Exception:  # noqa: BLE001 - a journal we cannot read: as if there were none
            return None
        if rest is None:
            # The journal speaks for an older batch: the head never started, unless
            # PARTIAL results of it came (then the journal could not be read right).
            return None if known else Recovered(head.bid, None, loading=h.journal.loading())
        return Recovered(head.bid, known + rest.values, rest.started)

    def _close_channel(self, h: Handle) -> None:
        self._channel_gone(h)
        if h.led != LEADING:
            h.close_lead()  # else the caller polling it closes it when it gives it back
        if h.sock is not None:
            h.sock.close()
            h.sock = None
        if h.journal is not None:
            h.journal.close()
            h.journal = None
        h.partial = []
        h.drop_output()

    # -- reading -------------------------------------------------------------------------
    def on_readable(self, h: Handle, look: bool = True) -> None:
        conn = h.conn
        if look and not conn._has_buffered() and not h.readable():
            return  # a leading caller (``lead``) read it since select said readable
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                self._channel_gone(h)
                return
            except CorruptMessageError as exc:
                # A whole frame whose body did not unpickle (a result's own reduce raised
                # UnpicklingError): the stream is still in step, so only that batch fails.
                self._unreadable_results(h, exc.__cause__ or exc)
            except OSError:
                # Garbage or a torn frame: the worker cannot be trusted; its death follows.
                self._channel_gone(h)
                self.kill(h.wid)
                return
            except BaseException as exc:  # noqa: BLE001 - a result that does not unpickle here
                self._unreadable_results(h, exc)  # (SystemExit from its reduce included)
            else:
                self._on_message(h, msg)
            # Only what this Connection already buffered: epoll is level-triggered, so
            # bytes still in the socket wake the loop again (one syscall fewer per result).
            if conn.closed or not conn._has_buffered():
                return

    def _channel_gone(self, h: Handle) -> None:
        """Stop watching and close the read side; idempotent, whatever state the Connection is in
        (it closes itself on a torn frame). The registered fd is the dup's, still open here, so
        the epoll entry goes with it and the fd number is free for the next worker."""
        if h.fd >= 0:
            if h.watched:
                try:
                    self.sel.unregister(h.fd)
                except (KeyError, ValueError):
                    pass
            h.watched = 0
            h.fd = -1
        if h.conn is not None and not h.conn.closed:
            h.conn.close()

    def _on_message(self, h: Handle, msg: Any) -> None:
        kind = msg[0]
        if kind == RESULTS:
            _, bid, busy, rss, values = msg
            clean = type(values) is not list
            if clean:
                values = values_of(values)  # an all-int or all-marshal batch: no failure
            if rss is not None and (h.peak is None or rss > h.peak):
                h.peak = rss
            if h.partial:
                if h.partial_bid == bid:
                    values = h.partial + values
                    clean = False
                h.partial = []
            if not self._is_head(h.wid, bid):
                return  # its batch was already failed (an earlier part did not unpickle)
            self.sched.batch_done(h.wid, bid, values, busy, rss, clean)
            self._settle(h)
        elif kind == PARTIAL:
            _, bid, values = msg
            if h.partial_bid != bid:
                h.partial_bid = bid
                h.partial = []
            h.partial.extend(values)
        elif kind == READY:
            self.standby.ready_said(h.wid)
            h.pid = msg[1]
            baseline = None
            if len(msg) > 2:
                baseline = msg[2] if self.ctx.start_method != "spawn" else None
            self.sched.worker_ready(h.wid, baseline=baseline)
            self._settle(h)
        elif kind == INIT_FAILED:
            self.sched.worker_failed_init(h.wid, msg[1].exception())

    def _settle(self, h: Handle) -> None:
        """After an answer: stop watching the channel of a worker left with nothing in
        flight (``Handle.busy``); ``send`` watches it again."""
        slot = self.sched.workers.get(h.wid)
        if slot is None or not slot.window:
            h.busy = False
            h.watch(self.sel)

    def _is_head(self, wid: int, bid: int) -> bool:
        slot = self.sched.workers.get(wid)
        return slot is not None and bool(slot.window) and slot.window[0].bid == bid

    def _unreadable_results(self, h: Handle, exc: BaseException) -> None:
        slot = self.sched.workers.get(h.wid)
        if slot is None or not slot.window:
            return
        batch = slot.window[0]
        err = TaskError.local(unpickling_error(exc, batch.fn.name))
        h.partial = []
        self.sched.batch_done(h.wid, batch.bid, [err] * len(batch), 0.0)
        self._settle(h)

    def send(self, a: Send) -> None:
        h = self.handles.get(a.wid)
        if h is None:
            return
        if not h.busy:
            h.busy = True  # an answer will come: watch for it (unless a caller leads)
            h.watch(self.sel)
        batch = a.batch
        fn = batch.fn
        if fn.by_ref is None:
            fn.by_ref = by_reference(fn.fn)
        if fn.by_ref:
            fid = fn.fid
            first = fid not in h.fids
            if first:
                h.fids.add(fid)
        else:
            # The worker must not cache it (it would keep its objects alive): a negative
            # fid, and the function with every batch.
            fid, first = -fn.fid, True
        blob = fn.blob if first else None
        owners = batch.owners
        if owners is not None:
            args: list[Any] = batch.args  # the owners' pre-pickled blobs, in order
            if len(args) == 1 and self._plain:
                one = args[0]
                if type(one) is bytes and len(one) + (0 if blob is None else len(blob)) < _SMALL:
                    # The round trip's case: one small pre-pickled task. Plain pickle, no
                    # scan for big buffers or fds (there can be none), one write.
                    h.queue_plain(
                        _dumps((TASKS, batch.bid, fid, blob, int(batch.mode), True, [one]), 5),
                        self.sel,
                    )
                    return
            if set(map(type, args)) != _BYTES_ONLY:  # a burst of plain ones: nothing to do
                args = [pack_single(b) for b in args]
            packed = True
        else:
            args, packed = batch.args, False
        msg = (TASKS, batch.bid, fid, blob, int(batch.mode), packed, args)
        try:
            nbytes = self._queue(h, msg)
            per = nbytes / len(args)
            fn.nbytes = per if fn.nbytes is None else 0.7 * fn.nbytes + 0.3 * per
        except Exception as exc:  # noqa: BLE001 - some argument of a map will not pickle
            self._queue(
                h,
                (
                    TASKS,
                    batch.bid,
                    fid,
                    blob,
                    int(batch.mode),
                    True,
                    self._pack_each(args, packed, exc),
                ),
            )

    def _pack_each(self, args: list[Any], packed: bool, exc: BaseException) -> list[Any]:
        """Pickle each argument alone; the ones that fail become their task's error."""
        assert self.serializer is not None
        out: list[Any] = []
        for a in args:
            if packed:
                out.append(a)
                continue
            try:
                p = self.serializer.dumps(a, what="a task argument")
                out.append(
                    (p.body, [pickle_buffer(b) for b in p.buffers], [fd_handle(f) for f in p.fds])
                )
            except Exception as err:  # noqa: BLE001
                out.append(TaskError.local(pickling_error(err)))  # the pickler's own error
        return out

    def _queue(self, h: Handle, msg: tuple[Any, ...]) -> int:
        return h.queue(msg, self.serializer, self.sel)

    # -- the end ---------------------------------------------------------------------
    def close_all(self) -> None:
        for h in list(self.handles.values()):  # all killed first, so they die side by side
            if h.proc is not None:
                try:
                    if h.proc.is_alive():
                        h.proc.kill()
                except (ValueError, OSError, AssertionError):
                    pass
        self.standby.kill()
        if self.template is not None:
            self.template.shut()  # and the template ends meanwhile (its workers with it)
        for h in list(self.handles.values()):
            if h.proc is not None:
                try:
                    if h.proc.is_alive():
                        h.proc.kill()
                    h.proc.join()
                    h.proc.close()
                except (ValueError, OSError, AssertionError):
                    pass
            self._close_channel(h)
        self.handles.clear()
        self.standby.discard()
        if self.template is not None:
            self.template.close()
        # The workers are gone, and with them any use of the mappings this process kept
        # of their big-result slots (and of its own argument slots): give them back, or a
        # closed pool would leave their fds open (bulk.py; a live lease keeps its own).
        bulk.trim()

    def sample_rss(self) -> None:
        for wid, slot in self.sched.workers.items():
            h = self.handles.get(wid)
            if slot.window and h is not None and h.pid is not None:
                rss = current_rss(h.pid)
                if rss is not None and (h.peak is None or rss > h.peak):
                    h.peak = rss
