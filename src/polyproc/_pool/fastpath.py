"""The caller-side fast paths: a caller's thread runs the engine for a moment.

Two shortcuts save thread hops on a round trip (``submit(...).result()``,
``apply``), both taken only while the engine thread sleeps in select::

    caller: submit ──(engine asleep, a worker idle)── send_direct: Scheduler.add_single,
            │   the channel ARMED for the future (``Handle.led``: the engine does
            │   not watch it; an idle worker's channel is not in its selector
            │   anyway, ``Handle.busy``), then the task is written ──────────► worker
            result()                                                            │
              └─ lead(): claim the armed channel (LEADING), poll the Handle's   │
                 own dup of it (without waiting for up to CALLER_SPIN first),   │
                 lock released ◄──────────────────────────────── RESULTS ───────┘
                 └─ read_led: under the lock, read, run the scheduler, set the
                    Future (no waiter to wake: the waiter is us); give the channel
                    back in the same hold of the lock

Without them, a job goes caller ──► inbox ──► engine thread ──► worker, and the
result worker ──► engine thread ──► Future ──► caller: three wake-ups of ~20-30 us
each on a small VM, plus the engine's loop. With them a round trip is two wake-ups
(worker, caller), no epoll_ctl, and the engine thread never runs.

The channel is armed at send time, not when the caller comes to wait: a worker that
answers before the caller reaches ``result()`` would otherwise wake the engine
thread, which then reads the answer, sets the Future, and fights the caller for the
GIL (a third wake-up and futex traffic, ~30 % of executor round trips before). A
future nobody waits on must still complete: anything but ``result()``/``exception()``
that looks at an armed future reads what has come and gives the channel back
(``done``, ``running``, ``add_done_callback``, while the engine sleeps), or wakes the
engine, which gives every armed channel back whenever it wakes (``disarm``:
``concurrent.futures.wait``/``as_completed``, or an engine awake); so does the next
direct send, and the engine never sleeps longer than ``ARM_GRACE`` while a caller may
send directly.
A future that has a callback when it is sent is not armed.

Leading is only tried for the Future a direct send made (``Flags.led``), by one
caller at a time; anything else (a busy engine, another thread's Future, asyncio)
waits on the Future as usual. While a caller leads, the engine ignores that
channel's readable events but keeps watching the worker's sentinel: a death shuts
the channel for reading, the caller's poll wakes at end-of-file, finds the channel
closed and falls back to the Future, which the engine has failed.

Who may run the scheduler, and when, is written once: in ``Flags``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._transport.spin import Spin, spin_budget, wait_spinning
from .cell import _UNSET, Cell
from .channel import ARMED, LEADING, Handle
from .tasks import Job, PoolState, Send

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "ARM_GRACE",
    "Flags",
    "Leading",
    "LeadingFuture",
    "PoolFuture",
    "lead",
    "send_direct",
    "read_led",
    "disarm",
]


class Flags:
    """Who may run the scheduler, and when (loky's ``_ExecutorFlags`` is the pattern).

    The scheduler, the worker set and the channels have one writer at a time:
    whoever holds ``lock``.

    * The engine thread holds it always, except while it waits in select. Just
      before that wait it sets ``asleep`` (and ``direct`` if a worker is idle); just
      after, it takes the lock back and clears both.
    * A caller's thread may take it, never blocking (``acquire(False)``), only while
      ``asleep``: in ``Engine.submit`` when ``direct`` too, to send its own job
      (``send_direct``); in ``PoolFuture.result`` when its Future is ``led``, to
      read that worker's channel (``lead``). Holding it, the caller runs the
      scheduler exactly as the engine thread would, but leaves worker starts to the
      engine thread, and wakes it if its select timeout must change.
    * Nobody else takes it: user threads and thread workers post into the engine's
      inbox (``Engine.post``), and write to the wake pipe only while ``asleep``.

    ``asleep`` is read without the lock by posters: the engine sets it and then looks
    at the inbox once more before releasing the lock, so a post is never missed.
    """

    __slots__ = ("lock", "asleep", "direct", "led", "led_wid", "armed", "last_send", "spin")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asleep = False  # the engine thread waits in select, without the lock
        self.direct = False  # ... and a worker is idle: a caller may send its own job
        # The Future a caller's thread just sent itself, and its worker: that caller may
        # read the answer itself when it waits (``lead``), saving a wake-up.
        self.led: Any = None  # a Leading future (a PoolFuture or an executor's)
        self.led_wid = 0
        # Its channel, when ``send_direct`` armed it for that caller (``Handle.led``
        # ARMED): the engine's selector no longer watches it until the caller claims it
        # in ``lead`` or, if the caller never comes, until ``disarm`` gives it back.
        self.armed: Handle | None = None
        self.last_send: Send | None = None  # the last Send carried out (read by send_direct)
        # How long a leading caller polls its channel before sleeping (``lead``): one
        # budget per pool, as one caller leads at a time.
        self.spin = Spin(CALLER_SPIN)


class Leading:
    """A future whose ``result()`` may read its own answer (mixed into a future class).

    ``PoolFuture`` (``Pool.apply_async``: a ``Cell``) and the executor's futures (real
    ``concurrent.futures.Future`` objects, through ``LeadingFuture``) share it.

    A direct send arms the channel for its future at once (``send_direct``): the
    engine stops watching it before the task goes out, so a quick answer cannot wake
    the engine thread first. Its answer is then read by whoever calls ``result()`` or
    ``exception()``; any other look at the future (``done``, ``running``,
    ``add_done_callback``, ``wait``/``as_completed`` through ``_waiters``) gives the
    channel back to the engine first (``_release``), so nothing waits on a reader that
    never comes. ``ARM_GRACE`` bounds what no hook sees.
    """

    __slots__ = ()
    _engine: Engine | None

    def _eager(self) -> bool:
        """May a direct send arm the channel for this future (nothing registered to run
        when it completes: a callback needs the engine to read the answer)?"""
        return False

    def _settled(self) -> bool:
        """``done()`` for ``lead``: no hook, no lock (a plain read of the outcome)."""
        return bool(self.done())

    def _release(self, read: bool = True) -> None:
        """Someone looks at the future other than to wait for it: if its channel is armed,
        read what has come on it now and give it back to the engine, so ``done()`` (a
        pool's ``ready()``) says True once the answer is here, as the stdlib's does once
        its result thread has it. If the engine is awake (the lock is taken), or ``read``
        is False, wake it instead: it disarms as it goes back to sleep. Never blocks on
        the lock, any thread."""
        engine = self._engine
        if engine is None:
            return
        flags = engine.flags
        if flags.armed is None or flags.led is not self:
            return
        lock = flags.lock
        if not read or not lock.acquire(False):
            engine.wake()
            return
        try:
            h = flags.armed
            if h is None or flags.led is not self:
                return
            flags.armed = None
            if h.led == ARMED and h.conn is not None and not h.conn.closed:
                try:
                    if h.lead_poller()(0):
                        read_led(engine, h)
                except Exception as exc:  # noqa: BLE001 - an engine bug, met in this thread
                    engine.fail_from_caller(exc)
            if h.led == ARMED:
                _give_back(engine, h)
        finally:
            lock.release()

    def result(self, timeout: float | None = None) -> Any:
        engine = self._engine
        if engine is not None and engine.flags.led is self:
            timeout = lead(engine, self, timeout)
        return super().result(timeout)  # type: ignore[misc]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        engine = self._engine
        if engine is not None and engine.flags.led is self:
            timeout = lead(engine, self, timeout)
        return super().exception(timeout)  # type: ignore[misc,no-any-return]

    def done(self) -> bool:
        self._release()
        return super().done()  # type: ignore[misc,no-any-return]

    def running(self) -> bool:
        self._release()
        return super().running()  # type: ignore[misc,no-any-return]

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        self._release()
        super().add_done_callback(fn)  # type: ignore[misc]


class LeadingFuture(Leading):
    """``Leading`` for the executor's futures (``future.LightFuture``: a
    ``concurrent.futures.Future`` whose Condition and lists are made when needed).

    ``concurrent.futures.wait`` and ``as_completed`` reach a future's ``_waiters`` list
    directly, never a method: reading it gives an armed channel back (``_release``).
    """

    __slots__ = ()

    def _eager(self) -> bool:
        return self._callbacks is None  # type: ignore[attr-defined]

    def _settled(self) -> bool:
        return self._state in _SETTLED  # type: ignore[attr-defined]

    @property
    def _waiters(self) -> list[Any]:
        # Never read here: ``wait``/``as_completed`` hold the future's condition and have
        # judged it unfinished; the engine must finish it after their waiter is in.
        self._release(read=False)
        return super()._waiters  # type: ignore[misc,no-any-return]


_SETTLED = ("CANCELLED_AND_NOTIFIED", "FINISHED")  # concurrent.futures' final states

#: Seconds a leading caller polls for its answer before it sleeps (``_transport/spin.py``):
#: a small task's answer comes ~10-15 us after the send (the worker's share).
CALLER_SPIN = spin_budget(50e-6)

#: The longest an armed channel nobody reads stays unread, whatever looks at its future
#: (the engine never sleeps longer while a caller may send directly, and disarms on waking).
ARM_GRACE = 1.0


class PoolFuture(Leading, Cell):
    """``Pool.apply_async``'s future: a ``Cell`` that may lead."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine | None = None) -> None:
        super().__init__()
        self._engine = engine

    def _eager(self) -> bool:
        return self._callbacks is None

    def _settled(self) -> bool:
        return self._value is not _UNSET or self._error is not None


def send_direct(engine: Engine, job: Job) -> None:
    """In a caller's thread, holding the engine lock while the engine is in select.

    A single task for a ``Leading`` future with nothing registered on it goes to an
    idle worker whose channel is armed for it (``_arm``) before the task goes out: the
    engine's selector does not watch it, and a quick answer cannot wake the engine
    thread first. Its reader is whoever waits on the future (``lead``).
    """
    flags = engine.flags
    sched = engine.sched
    if flags.armed is not None:
        disarm(engine)  # armed for a future nobody has read yet: the engine reads it
    deadlines = len(sched.deadlines)
    inbox = engine.inbox
    sent: Send | None
    if len(inbox) == 1 and not sched.actions and inbox[0] is job:
        # Only our job: the scheduler's short way (an idle worker, nothing queued).
        inbox.popleft()
        sent = sched.add_single(job)
        sink = job.sink
        if sent is not None and isinstance(sink, Leading) and engine.workers.leads:
            flags.led, flags.led_wid = sink, sent.wid
            if sink._eager():
                _arm(engine, sent.wid)
    else:
        flags.last_send = None
        engine.drain_inbox()
        sent = None
    acts = sched.actions
    if sent is not None and len(acts) == 1:
        sched.actions = []  # only our Send: what act() would do, without its match
        engine.workers.send(sent)
    elif acts:
        engine.act(True)
    if sent is None:
        sent, flags.last_send = flags.last_send, None  # never keep a batch alive
        if (
            sent is not None
            and isinstance(job.sink, Leading)  # Pool's and the executor's futures
            and engine.workers.leads
            and sent.batch.owners
            and sent.batch.owners[-1] is job
        ):
            flags.led, flags.led_wid = job.sink, sent.wid
    flags.last_send = None
    flags.direct = sched.has_idle_worker()
    _hand_back(engine, deadlines)


def _arm(engine: Engine, wid: int) -> None:
    """Reserve worker ``wid``'s channel for the caller that leads ``flags.led`` (lock held)."""
    h = engine.workers.handles.get(wid)
    if h is not None and not h.led and h.conn is not None and not h.conn.closed:
        h.led = ARMED
        h.watch(engine.sel)  # the engine no longer reads it
        engine.flags.armed = h


def disarm(engine: Engine) -> None:
    """Give an armed channel nobody claimed back to the engine (lock held): its caller
    was interrupted before it waited, or the engine woke first and reads it itself."""
    flags = engine.flags
    h, flags.armed = flags.armed, None
    if h is not None and h.led == ARMED:
        _give_back(engine, h)


def _give_back(engine: Engine, h: Handle) -> None:
    """The engine reads ``h`` again (lock held); a channel closed meanwhile loses its lead dup."""
    h.led = 0
    if h.conn is not None and not h.conn.closed and h.fd >= 0:
        h.watch(engine.sel)  # level-triggered: unread bytes wake the engine
    else:
        h.close_lead()


def read_led(engine: Engine, h: Handle) -> None:
    """In a leading caller's thread (``lead``), holding the lock: read what came."""
    flags = engine.flags
    sched = engine.sched
    deadlines = len(sched.deadlines)
    engine.workers.on_readable(h, False)
    if sched.actions:
        engine.act(True)
    flags.last_send = None
    flags.direct = flags.asleep and sched.has_idle_worker()
    _hand_back(engine, deadlines)


def _hand_back(engine: Engine, deadlines: int) -> None:
    """After a caller ran the engine's column: wake the engine thread if its select timeout
    must change (a deadline came or went), or it has work (the pool stops, actions left)."""
    sched = engine.sched
    if len(sched.deadlines) != deadlines or sched.state is not PoolState.RUN or sched.actions:
        engine.wake()


def lead(engine: Engine, fut: Any, timeout: float | None) -> float | None:
    """Wait for ``fut`` by reading its worker's channel in this thread, if we may.

    Returns what is left of ``timeout`` for the ordinary wait that follows (which
    returns at once when ``fut`` is done).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    flags = engine.flags
    lock = flags.lock
    if not lock.acquire(False):
        return timeout
    try:
        if flags.led is not fut:
            return timeout
        flags.led = None  # first: our ``done()`` below must not release the channel
        h, flags.armed = flags.armed, None
        if h is not None:  # armed for us at send time (``send_direct``)
            if fut._settled() or h.conn is None or h.conn.closed:
                _give_back(engine, h)
                return timeout
        else:
            if fut._settled():
                return timeout
            if not flags.asleep:
                return timeout
            h = engine.workers.handles.get(flags.led_wid)
            if h is None or h.led or h.conn is None or h.conn.closed:
                return timeout
        h.led = LEADING
        try:
            if h.watched:
                h.watch(engine.sel)  # the engine no longer reads it
            poll = h.lead_poller()
        except BaseException:
            _give_back(engine, h)
            raise
    finally:
        lock.release()
    given = False
    spin = flags.spin
    try:
        while not fut._settled():
            if deadline is None:
                ms = -1
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ms = max(1, int(left * 1000 + 0.999))
            # Poll a little before sleeping (_transport/spin.py): the answer of a small
            # task usually comes within microseconds, and a wake-up costs ~25 us.
            if not wait_spinning(poll, spin, ms):
                continue
            with lock:
                if h.conn is None or h.conn.closed or h.led != LEADING:
                    break  # the worker died: the engine has dealt with it
                try:
                    read_led(engine, h)
                except Exception as exc:  # noqa: BLE001 - an engine bug, met in this thread
                    engine.fail_from_caller(exc)
                    break
                if fut._settled():
                    given = True  # in the same hold of the lock as the read
                    _give_back(engine, h)
                    break
    finally:
        if not given:
            with lock:
                _give_back(engine, h)
    return None if deadline is None else max(0.0, deadline - time.monotonic())
