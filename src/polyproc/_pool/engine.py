"""The engine: one thread per pool that owns the workers and runs the scheduler.

::

    user threads                       engine thread                          workers
    ────────────                       ─────────────                          ───────
    Pool / Executor faces              selectors loop over:
      post(fn, arg) ──► inbox ───────►  ├─ wake pipe (written only while
      (deque; one byte on the            │  the engine sleeps)
       wake pipe if asleep)             ├─ each worker's channel ◄──────────  RESULTS / READY
                                        │    (Connection.recv, frame by frame)
                                        ├─ each worker's sentinel  ◄────────  death
                                        ├─ channel writable (a send that
                                        │    did not fit: non-blocking writes)
                                        └─ the clock: task deadlines, RSS samples
                                        ▼
                                      Scheduler (pure) ──► actions: Spawn, Send, Stop,
                                        Kill, Deliver ──► Future.set_result / sinks

The scheduler and the channels are touched under one lock, which the engine
thread holds except while it waits in select. Then, and only when a worker is
idle, a caller's ``add_job`` takes the lock and sends its job itself (saving the
thread hop into the engine); everything else (results, deaths, timers) is the
engine thread's. Sends never block: the engine writes with ``MSG_DONTWAIT`` and
keeps what did not fit until the channel is writable, so a worker writing a large
result while we write it a large batch cannot deadlock the two of us. Reads are
frame by frame with ``Connection.recv`` (a worker only ever waits on us to read,
never the reverse). On a worker's death the channel is shut for reading and
drained to end-of-file, so results it sent before dying still count; then its
commit journal (``journal.py``) says which tasks of the running batch finished
(delivered), which one was running (failed, or retried) and which never started
(requeued): exactly once. A torn frame (a worker killed mid-send) closes only
that channel: the selector watches a dup of the channel's fd that the engine
closes itself, after unregistering it.

Thread workers (``ThreadPool``) post their messages into the same inbox.
"""

from __future__ import annotations

import atexit
import os
import pickle
import selectors
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from .._connection import Pipe  # here, not at the first start: pool start is timed
from .._launch.template import for_pool, parkable
from .._serialize import fd_handle
from .._transport import wrap_fd
from ..errors import BrokenProcessPool, CorruptMessageError, PoolClosedError
from .channel import Handle, pickle_buffer
from .channel import packed as pack_single
from .journal import JournalReader, values_of
from .lead import PoolFuture
from .messages import (
    INIT_FAILED,
    PARTIAL,
    READY,
    RESULTS,
    STOP,
    TASKS,
    TaskError,
    pickling_error,
    unpickling_error,
)
from .scheduler import (
    Broken,
    Deliver,
    DeliverSingles,
    Done,
    Job,
    Kill,
    PoolState,
    Recovered,
    Scheduler,
    Send,
    Spawn,
    Stop,
    WorkerState,
)
from .worker import ThreadWorker, by_reference, current_rss, worker_main

_dumps = pickle.dumps

__all__ = ["Engine", "WORKER_PREFIX"]

WORKER_PREFIX = {
    "fork": "ForkPoolWorker",
    "spawn": "SpawnPoolWorker",
    "forkserver": "ForkServerPoolWorker",
    "auto": "ForkPoolWorker",
}
_SMALL = 1 << 14  # a single task's message smaller than this skips the serializer
_RSS_EVERY = 0.2  # seconds between RSS samples of busy workers (peak RSS on death)


class Engine:
    """Runs one pool. Faces call ``post``/``add_job``/``close``/``terminate``/``join``."""

    def __init__(
        self,
        processes: int,
        *,
        ctx: Any,
        threads: bool = False,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        max_memory_per_child: int | None = None,
        window: int = 3,
        target_batch_s: float = 0.004,
    ) -> None:
        self.ctx = ctx
        self.threads = threads
        # First, while the caller may still be single-threaded: a copy of it to fork
        # workers from (fork semantics without forking a threaded process; template.py).
        self.template = None if threads else for_pool(ctx)
        self.serializer = ctx.serializer if ctx is not None else None
        from .._serialize import Serializer

        # The default serializer pickles plain data exactly as ``pickle.dumps``.
        self._plain = type(self.serializer) is Serializer and self.serializer.protocol == 5
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.prefix = (
            "ThreadPoolWorker" if threads else WORKER_PREFIX.get(ctx.start_method, "PoolWorker")
        )
        self.broken: BaseException | None = None
        # Set once the first workers' ``start()`` calls are done; ``start_error`` is the
        # first exception one raised (it broke the pool: the cause of every later error).
        self.started = threading.Event()
        self.start_error: BaseException | None = None
        self.inbox: deque[Any] = deque()  # Job, or (fn, arg) to call
        # Held by whoever runs the scheduler: the engine thread, except while it waits in
        # select, when a caller may take it to send its own job (``add_job``).
        self._lock = threading.Lock()
        self._direct = False  # the engine sleeps and a worker is idle
        # The Future a caller's thread just sent itself, and its worker: that caller may
        # read the answer itself when it waits (``lead``), saving a wake-up.
        self._led: Any = None
        self._led_wid = 0
        self._last_send: Send | None = None
        self._asleep = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.handles: dict[int, Handle] = {}
        self.sel = selectors.DefaultSelector()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.finished = threading.Event()
        self._next_rss = 0.0
        self.sched = Scheduler(
            processes,
            maxtasksperchild=maxtasksperchild,
            max_memory_per_child=max_memory_per_child,
            window=window,
            target_batch_s=target_batch_s,
        )
        ref = weakref.ref(self)
        self._atexit = lambda: _terminate_ref(ref)
        self._atexit_registered = False
        self.thread = threading.Thread(target=self._main, name="polyproc-pool-engine", daemon=True)
        parkable(self.thread, self._lock)  # it runs Python code only holding _lock
        self.thread.start()  # last: the thread reads everything above

    # -- user-thread side ----------------------------------------------------------------
    def post(self, fn: Callable[..., Any], arg: Any = None) -> None:
        """Run ``fn(arg)`` in the engine thread soon. Safe from any thread."""
        self.inbox.append((fn, arg))
        if self._asleep:
            self._wake()

    def add_job(self, job: Job) -> None:
        if self.finished.is_set():
            raise self._closed_error()
        self.inbox.append(job)  # a bare Job: one tuple fewer per submit
        if self.finished.is_set():
            self._fail_leftovers()  # it ended between our check and our append
            return
        if not self._asleep:
            return  # the engine is awake and will see it
        if self._direct and self._lock.acquire(False):
            # The engine sleeps and a worker is idle: send from this thread, saving the
            # thread hop to the engine and back (a quarter of a round trip).
            try:
                if self._asleep and self._direct:
                    self._run_direct(job)
                    return
            finally:
                self._lock.release()
        self._wake()

    def _run_direct(self, job: Job) -> None:
        """In a caller's thread, holding the engine lock while the engine is in select."""
        sched = self.sched
        deadlines = len(sched._deadlines)
        self._last_send = None
        self._drain_inbox()
        if sched.actions:
            self._act(True)
        sent, self._last_send = self._last_send, None  # never keep a batch alive
        if (
            sent is not None
            and type(job.sink) is PoolFuture
            and sent.batch.owners
            and sent.batch.owners[-1] is job
        ):
            self._led, self._led_wid = job.sink, sent.wid
        self._direct = self._idle_worker()
        if (
            len(sched._deadlines) != deadlines
            or sched.state is not PoolState.RUNNING
            or sched.actions
        ):
            self._wake()  # its select timeout must change, or it has work: let it run

    def _read_led(self, h: Handle) -> None:
        """In a leading caller's thread (``lead``), holding the lock: read what came."""
        sched = self.sched
        deadlines = len(sched._deadlines)
        self._on_readable(h, False)
        if sched.actions:
            self._act(True)
        self._last_send = None
        self._direct = self._asleep and self._idle_worker()
        if (
            len(sched._deadlines) != deadlines
            or sched.state is not PoolState.RUNNING
            or sched.actions
        ):
            self._wake()

    def _wake(self) -> None:
        if self._asleep:
            self._asleep = False
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # full: it will wake anyway; closed: the engine is gone

    def _idle_worker(self) -> bool:
        for slot in self.sched.workers.values():
            if slot.state is WorkerState.READY and not slot.window and not slot.exclusive:
                return True
        return False

    def _closed_error(self) -> BaseException:
        if self.broken is not None:
            err = BrokenProcessPool(str(self.broken))
            err.__cause__ = self.broken  # and through it, why it broke
            return err
        return PoolClosedError("Pool not running")

    def close(self) -> None:
        self.post(_call, self.sched.close)

    def terminate(self, error: BaseException | None = None) -> None:
        err = error or PoolClosedError("the pool was terminated")
        self.post(self.sched.terminate, err)

    def join(self, timeout: float | None = None) -> bool:
        # Event.wait is interruptible by Ctrl+C; join the thread only once it is done.
        if not self.finished.wait(timeout):
            return False
        self.thread.join()
        return True

    # -- the loop ------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a bug here must not hang users
            self._crash(exc)
        finally:
            self.started.set()
            self._shutdown()

    def _loop(self) -> None:
        sched = self.sched
        inbox = self.inbox
        select = self.sel.select
        lock = self._lock
        lock.acquire()
        try:
            if sched.actions:
                self._act()  # the first workers' starts
            self.started.set()
            while True:
                if inbox:
                    self._drain_inbox()
                if sched.actions:
                    self._act()
                if sched.finished() and not inbox:
                    self._direct = False
                    return
                timeout = self._timeout()
                self._direct = self._idle_worker()
                self._asleep = True
                if inbox:
                    self._asleep = False
                    continue
                lock.release()
                try:
                    events = select(timeout)
                finally:
                    lock.acquire()
                self._asleep = False
                self._direct = False
                self._on_events(events)
                if sched._deadlines:
                    sched.tick(time.monotonic())
        finally:
            lock.release()

    def _on_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in events:
            data = key.data
            if data is None:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            elif data[0] == 0:
                if mask & selectors.EVENT_READ and not data[1].led:
                    self._on_readable(data[1])
                if mask & selectors.EVENT_WRITE:
                    data[1].flush(self.sel)
            else:
                self._on_death(data[1])

    def _timeout(self) -> float | None:
        now = time.monotonic()
        t: float | None = None
        deadline = self.sched.next_deadline()
        if deadline is not None:
            t = max(0.0, deadline - now)
        if not self.threads and any(s.window for s in self.sched.workers.values()):
            if now >= self._next_rss:
                self._sample_rss()
                self._next_rss = now + _RSS_EVERY
            t = _RSS_EVERY if t is None else min(t, _RSS_EVERY)
        return t

    def _sample_rss(self) -> None:
        for wid, slot in self.sched.workers.items():
            h = self.handles.get(wid)
            if slot.window and h is not None and h.pid is not None:
                rss = current_rss(h.pid)
                if rss is not None and (h.peak is None or rss > h.peak):
                    h.peak = rss

    def _drain_inbox(self) -> None:
        inbox = self.inbox
        jobs: list[Job] = []
        while inbox:
            item = inbox.popleft()
            if type(item) is Job:
                jobs.append(item)
                continue
            fn, arg = item
            if jobs:
                self.sched.add_jobs(jobs)
                jobs = []
            fn(arg)
        if jobs:
            self.sched.add_jobs(jobs)

    def _act(self, caller: bool = False) -> None:
        """Carry out the scheduler's actions; in a caller's thread, leave starts to the engine."""
        sched = self.sched
        later: list[Any] = []
        while sched.actions:
            acts, sched.actions = sched.actions, []
            for a in acts:
                t = type(a)
                if t is DeliverSingles:
                    for job, v in zip(a.jobs, a.values, strict=False):  # type: ignore[union-attr]
                        _resolve(job.sink, v)
                    led = self._led
                    if led is not None and led.done():
                        self._led = None  # answered: do not keep it (and its result) alive
                elif t is Send:
                    self._send_batch(a)  # type: ignore[arg-type]
                elif t is Deliver:
                    job = a.job  # type: ignore[union-attr]
                    if job.single:
                        _resolve(job.sink, a.values[0])  # type: ignore[union-attr]
                    else:
                        _guard(job.sink._deliver, a.start, a.values)  # type: ignore[union-attr]
                elif t is Done:
                    job = a.job  # type: ignore[union-attr]
                    if not job.single:
                        _guard(job.sink._done)
                elif t is Spawn:
                    if caller:
                        later.append(a)
                    else:
                        self._spawn(a.wid)  # type: ignore[union-attr]
                elif t is Stop:
                    self._stop(a.wid)  # type: ignore[union-attr]
                elif t is Kill:
                    self._kill(a.wid)  # type: ignore[union-attr]
                elif t is Broken:
                    self.broken = a.error  # type: ignore[union-attr]
        if later:
            sched.actions.extend(later)
        if not caller:
            self._last_send = None  # only a caller's direct send reads it

    # -- workers: start, stop, kill, death ------------------------------------------------
    def _spawn(self, wid: int) -> None:
        h = Handle(wid)
        self.handles[wid] = h
        if self.threads:
            h.name = f"{self.prefix}-{wid}"
            h.thread = ThreadWorker(
                wid, h.name, self._post_from_thread, self.initializer, self.initargs
            )
            h.thread.start()
            return
        ours, theirs = Pipe()
        try:
            from .._process import process_class  # ctx is Settings: data, no factories

            proc = process_class(self.ctx)(
                target=worker_main,
                daemon=True,
                args=(theirs, self.initializer, self.initargs, self.serializer),
            )
            proc.name = proc.name.replace("Process", self.prefix)
            proc.__dict__["_polyproc_template"] = self.template  # read (and removed) by start()
            h.name = proc.name
            proc.start()
        except BaseException as exc:  # noqa: BLE001 - a start failure is a worker death
            ours.close()
            theirs.close()
            del self.handles[wid]
            if not isinstance(exc, Exception):
                raise
            if not self.started.is_set():
                # A first worker cannot even be started (its initializer does not pickle,
                # fork fails): every start would fail alike. Break now, with the cause.
                if self.start_error is None:
                    self.start_error = exc
                err = BrokenProcessPool(f"a pool worker could not be started: {exc!r}")
                err.__cause__ = exc
                self.sched._break(err)
            self.sched.worker_exited(wid, None, name=h.name)
            return
        theirs.close()
        if not self._atexit_registered:
            # Registered after the first start, so it runs before polyproc's own exit
            # hook (atexit is LIFO): the pool stops its workers itself, rather than
            # seeing them killed and starting replacements during shutdown.
            self._atexit_registered = True
            atexit.register(self._atexit)
        h.proc, h.conn, h.pid = proc, ours, proc.pid
        h.sock = wrap_fd(os.dup(ours.fileno()))
        h.fd = h.sock.fileno()
        self.sel.register(h.fd, selectors.EVENT_READ, (0, h))
        h.watched = selectors.EVENT_READ
        self.sel.register(proc.sentinel, selectors.EVENT_READ, (1, h))

    def _stop(self, wid: int) -> None:
        h = self.handles.get(wid)
        if h is None:
            return
        if h.thread is not None:
            h.thread.inbox.put(None)
        else:
            self._queue(h, (STOP,))

    def _kill(self, wid: int) -> None:
        h = self.handles.get(wid)
        if h is None:
            return
        if h.thread is not None:
            # A thread cannot be killed: abandon it (its late results are dropped).
            h.thread.abandoned = True
            h.thread.inbox.put(None)
            self.handles.pop(wid, None)
            self.sched.worker_exited(wid, None, name=h.name)
            return
        try:
            h.proc.kill()
        except (OSError, ValueError):
            pass

    def _on_death(self, h: Handle) -> None:
        """The sentinel fired: take what the worker sent before dying, then tell the scheduler."""
        self.sel.unregister(h.proc.sentinel)
        if h.conn is not None and not h.conn.closed:
            try:
                assert h.sock is not None
                h.sock.shutdown(socket.SHUT_RD)  # reads now end at EOF, never block
            except OSError:
                pass
            # Every frame it sent, to the end: what is in the socket was sent before the
            # journal moved on (journal.py), so the journal reads right only after all of it.
            while h.conn is not None and not h.conn.closed:
                self._on_readable(h, False)
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
        if h.sock is not None:
            h.sock.close()
            h.sock = None
        if h.journal is not None:
            h.journal.close()
            h.journal = None
        h.partial = []
        h.drop_output()

    # -- reading -------------------------------------------------------------------------
    def _on_readable(self, h: Handle, look: bool = True) -> None:
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
                self._kill(h.wid)
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
            if type(values) is not list:
                values = values_of(values)  # an all-int or all-marshal batch (journal.py)
            if rss is not None and (h.peak is None or rss > h.peak):
                h.peak = rss
            if h.partial:
                if h.partial_bid == bid:
                    values = h.partial + values
                h.partial = []
            if not self._is_head(h.wid, bid):
                return  # its batch was already failed (an earlier part did not unpickle)
            self.sched.batch_done(h.wid, bid, values, busy, rss)
        elif kind == PARTIAL:
            _, bid, values = msg
            if h.partial_bid != bid:
                h.partial_bid = bid
                h.partial = []
            h.partial.extend(values)
        elif kind == READY:
            h.pid = msg[1]
            baseline = None
            if len(msg) > 2:
                baseline = msg[2] if self.ctx.start_method != "spawn" else None
                if msg[3] is not None:
                    h.journal = JournalReader(msg[3])
            self.sched.worker_ready(h.wid, baseline=baseline)
        elif kind == INIT_FAILED:
            self.sched.worker_failed_init(h.wid, msg[1].exception())

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

    def _post_from_thread(self, kind: int, wid: int, *rest: Any) -> None:
        self.post(self._thread_message, (kind, wid, rest))

    def _thread_message(self, item: tuple[int, int, tuple[Any, ...]]) -> None:
        kind, wid, rest = item
        h = self.handles.get(wid)
        if h is None or h.thread is None or h.thread.abandoned:
            return
        if kind == STOP:
            self.handles.pop(wid, None)
            if wid in self.sched.workers:
                self.sched.worker_exited(wid, 0, name=h.name)
        elif kind == INIT_FAILED:
            self.sched.worker_failed_init(wid, rest[0].exception())
        else:
            self._on_message(h, (kind, *rest))

    # -- writing -------------------------------------------------------------------------
    def _send_batch(self, a: Send) -> None:
        h = self.handles.get(a.wid)
        if h is None:
            return
        batch = a.batch
        fn = batch.fn
        self._last_send = a
        if h.thread is not None:
            direct = batch.args if batch.owners is None else [j.blob for j in batch.owners]
            h.thread.inbox.put((batch.bid, fn.fn, int(batch.mode), direct))
            return
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
        if batch.owners is not None:
            args: list[Any] = [pack_single(j.blob) for j in batch.owners]
            packed = True
            if (
                self._plain
                and len(args) == 1
                and type(args[0]) is bytes
                and (len(args[0]) + len(fn.blob if first else b"") < _SMALL)
            ):
                # The round trip's case: one small pre-pickled task. Plain pickle, no scan
                # for big buffers or fds (there can be none), one write.
                h.queue_plain(
                    _dumps((TASKS, batch.bid, fid, blob, int(batch.mode), True, args), 5), self.sel
                )
                return
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

    # -- the end -------------------------------------------------------------------------
    def _crash(self, exc: BaseException) -> None:
        self._direct = False
        err = BrokenProcessPool(f"the pool's engine failed: {exc!r}")
        err.__cause__ = exc
        self.broken = err
        try:
            self.sched.actions.clear()
            self.sched._fail_everything(err)
            for a in self.sched.actions:
                if isinstance(a, Deliver):
                    if a.job.single:
                        _resolve(a.job.sink, a.values[0])
                    else:
                        _guard(a.job.sink._deliver, a.start, a.values)
                elif isinstance(a, Done) and not a.job.single:
                    _guard(a.job.sink._done)
        except BaseException:  # noqa: BLE001
            pass

    def _shutdown(self) -> None:
        with self._lock:  # a leading caller may be reading a channel
            self._close_all()
        if self.template is not None:
            self.template.close()
        self.finished.set()
        # Late posts from user threads find the write end closed, not another file.
        os.close(self._wake_w)
        self._wake_w = -1
        atexit.unregister(self._atexit)
        self._fail_leftovers()

    def _close_all(self) -> None:
        for h in list(self.handles.values()):
            if h.proc is not None:
                try:
                    if h.proc.is_alive():
                        h.proc.kill()
                    h.proc.join()
                    h.proc.close()
                except (ValueError, OSError, AssertionError):
                    pass
            elif h.thread is not None:
                h.thread.abandoned = True
                h.thread.inbox.put(None)
            self._close_channel(h)
        self.handles.clear()
        self.sel.close()
        os.close(self._wake_r)

    def _fail_leftovers(self) -> None:
        """Jobs that reached the inbox as the engine ended: fail them, never leave them."""
        err = self._closed_error()
        while True:
            try:
                item = self.inbox.popleft()
            except IndexError:
                return
            if type(item) is Job:
                if item.single:
                    _resolve(item.sink, TaskError.local(err))
                else:
                    _guard(item.sink._deliver, 0, [TaskError.local(err)])
                    _guard(item.sink._done)


def _call(fn: Callable[[], Any]) -> None:
    fn()


def _terminate_ref(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None and not engine.finished.is_set():
        engine.terminate()
        engine.join(5.0)


def _resolve(fut: Future[Any], value: Any) -> None:
    try:
        if type(value) is TaskError:
            fut.set_exception(value.exception())
        else:
            fut.set_result(value)
    except InvalidStateError:
        pass  # cancelled meanwhile


def _guard(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a user callback must not stop the engine
        import traceback

        traceback.print_exc()
