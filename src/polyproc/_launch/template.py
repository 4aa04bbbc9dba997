"""The default start method ("auto"): fork's semantics where fork is safe, forkserver's where not.

A child must see the parent as it is when the pool or process is made (logging
configured in the main guard, globals set after import, a main module with no
guard), and must never be forked from a process whose other threads may hold a
lock. Both hold if we fork only while the caller is the sole thread, apart from
polyproc's own threads *parked* where they hold no lock::

    Process.start() (auto)                     Pool / Executor created (auto)
    ──────────────────────                     ───────────────────────────────
    caller single-threaded?                    caller single-threaded?
      yes: park ours, os.fork() here             yes: park ours; fork a TEMPLATE, parked
      no:  the forkserver (fresh interpreter)         in C, which forks every first
                                                      worker there
                                                 no:  no template (the forkserver)

    pool engine thread ── request(Process, fds) ──► template (single-threaded copy of
    (replacements after a crash, recycling)         the caller at creation) ── fork ──► worker
                       ◄── its spares' sockets ───  forks spares ahead of need
                       ── Process, fds ───────────────────────────────────────► spare: worker

The template is a copy of the caller taken before the pool's engine thread exists,
so it has one thread. It is forked *parked* (``_csem.fork_template``): before any Python
runs in it, it forks the pool's first workers (each one's pid goes down a pipe, read
when first asked), then waits in C, reaping those that die, until the pool's first
request. Each first worker's ``Process.start()`` only writes it down (``start_first``);
the pool forks the template once all are (``fork_now``). The caller thus forks once,
not once per worker (the stdlib's Pool forks each): ~0.7-1 ms of CPU per fork of a
~25 MB interpreter and the copy-on-write faults of everything it touches after each,
on the pool's critical path (issue 11: the caller's CPU to create a ``Pool(2)`` fell
from ~3.9 to ~2.6 ms, its faults from ~810 to ~420). Until its first request the
template costs ~20 page faults and no CPU (forked by ``os.fork`` it would run the
interpreter's after-fork work, ~0.7 ms and ~230 faults, before it could fork a worker).
Woken, it runs the fork server's request loop (``server.TemplateServer``) privately for
its pool, and hands the pool spares, children forked ahead of need that each take one
replacement straight from the pool (``spares.py``: the template is off the replacement's
path); it exits when the pool closes it (or kills it, never woken) or the caller dies.
Under ``fork`` too. Without the C extension the caller forks every first worker and
then the template with ``os.fork`` (``Template.fork_now``), which waits in Python.
Either way a worker costs a fork (no interpreter boot, no import of ``__main__``),
cannot inherit an fd another thread of the caller opens later (a ``subprocess``
exec-status pipe: issue 11, case 4), and never makes Python 3.12+ warn about forking
with threads.

*Parked* means: a polyproc thread that registered the one lock it holds whenever
it runs Python code (the pool engine holds its lock except while in ``select``;
the launcher thread holds its lock while it launches). Holding all those locks,
we know each such thread is blocked in ``select``/``get`` or on that lock, holding
nothing a child could inherit locked. Any other thread (a user's, a ThreadPool
worker, a queue feeder) makes fork unsafe, and the forkserver is used instead.
"""

from __future__ import annotations

import _socket
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .child import die_with_parent, set_comm
from .handle import PID, StatusPipeHandle, read_exactly
from .parking import fork_is_safe as fork_is_safe
from .parking import parkable as parkable
from .parking import parked as parked
from .spares import Spares

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._connection import Connection
    from .._context import Settings
    from . import LaunchSpec
    from .handle import ChildHandle, PidfdHandle

__all__ = ["start", "Template", "for_pool", "parkable", "parked", "fork_here", "fork_is_safe"]


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):  # or the child prints the parent's buffer again
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def fork_here(entry: Callable[[], int]) -> PidfdHandle | None:
    """Fork a child running ``entry`` from this thread if that is safe now; None if not."""
    from .fork import fork_child, prepare_to_fork

    prepare_to_fork()
    with parked() as safe:
        if not safe:
            return None
        return fork_child(entry)


class Template:
    """A single-threaded copy of the caller, forked at pool creation, that forks workers.

    It is forked *parked* (``_csem.fork_template``), forking the pool's first workers as
    it is: it runs no Python, and costs no CPU, until the pool's first request wakes it
    (most pools never send one). The engine
    thread starts each replacement worker on a spare it forked, or asks it for one
    (``start``); ``close`` ends it (its workers and spares, if any are left, die with it
    by PDEATHSIG).
    """

    #: The next first worker's channel ends (and journal), which the template closes
    #: once it has forked that worker (set by the pool before that worker's start).
    first_fds: tuple[int, ...] = ()

    def __init__(self) -> None:
        # Pending until ``fork_now``; then these are filled in.
        self._firsts: list[_First] = []  # first workers it will fork (``start_first``)
        self._boot: Connection | None = None
        self._handle: PidfdHandle | None = None
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._address: bytes | None = None
        self._pidfd: int | None = None
        self._closed = False
        self._woken = False  # sent its first request: it has run Python since
        self._spares = Spares()  # those the template announced, once woken (``spares.py``)
        self._owner = os.getpid()
        _LIVE.add(self)

    def _forget_in_child(self) -> None:
        """In a forked child: drop our copies of this template's sockets, or the template
        would outlive its pool for as long as the child lives (it ends on EOF)."""
        self._firsts = []  # the caller's to fork (their pipes' write ends: closed in C)
        self._lock = threading.Lock()
        if not self._closed:
            self._closed = True
            for conn in (self._conn, self._boot):
                if conn is not None:
                    conn.close()
            self._spares.close()  # a dead spare's socket must end with it
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            if self._handle is not None:
                self._handle.close()

    @property
    def pending(self) -> bool:
        """Not forked yet (``fork_now`` forks it)."""
        return self._handle is None and not self._closed

    @property
    def has_firsts(self) -> bool:
        """First workers are written down, to be forked with it (``start_first``)."""
        return bool(self._firsts)

    def start_first(self, spec: LaunchSpec) -> ChildHandle | None:
        """One of the pool's first workers, from the main thread at the pool's creation.

        With the C extension it is not forked here: it is written down, and the
        template forks every first worker as it is itself forked (``fork_now``, called by
        the pool once all are written down), so the caller forks once, not once per
        worker. Its handle is returned now; its pid comes down a pipe once it is forked
        (read when first asked), its exit status down another. Without the C extension
        it is forked here (the caller's fork, as the stdlib's Pool); None if forking is
        not safe now.
        """
        fds, self.first_fds = self.first_fds, ()  # this worker's, whoever forks it
        if self.pending and _fork_template is not None:
            status_r, status_w = os.pipe()
            pid_r, pid_w = os.pipe()
            # The template closes, once the worker is forked, that worker's channel ends
            # and journal and the read ends of its two pipes, which are the caller's alone.
            closing = (*fds, status_r, pid_r)
            self._firsts.append((spec.entry, status_w, pid_w, closing))
            return _LatePidHandle(pid_r, status_r, self)
        return fork_here(spec.entry)

    def fork_now(self, foreign: tuple[int, ...] = ()) -> bool:
        """Fork this pending template now, and with it the first workers written down by
        ``start_first``; False (and closed) if that is not safe here. Either way, or if
        the fork fails (``OSError``, raised: EAGAIN, ENOMEM), workers not forked are
        reported dead at once: their pid and status pipes end.

        ``foreign``: fds of this process that the template must not keep (the pool's
        first workers' channels); it closes them when woken.
        """
        if not self.pending:
            return False
        firsts, self._firsts = self._firsts, []
        try:
            pid = self._fork(foreign, firsts)
        except OSError:
            self._closed = True
            raise
        finally:
            for _, status_w, pid_w, _closing in firsts:
                os.close(status_w)
                os.close(pid_w)
        if pid is None:
            self._closed = True
            return False
        return True

    def _fork(self, foreign: tuple[int, ...], firsts: list[_First]) -> int | None:
        """Fork the template (fill in this object); its pid, or None if not safe now."""
        from .._connection import Connection
        from .._transport import UnixStream, socketpair
        from .fork import prepare_to_fork
        from .handle import PidfdHandle

        prepare_to_fork()
        ours, theirs = socketpair()
        with parked() as safe:
            if not safe:
                ours.close()
                theirs.close()
                return None
            _flush_stdio()
            parent = os.getpid()
            try:
                if _fork_template is not None:
                    role, got = _fork_template(
                        theirs.fileno(), ours.fileno(), parent, tuple(f[1:] for f in firsts)
                    )
                else:  # no C extension: an ordinary fork, which waits in Python (``_serve``)
                    role, got = _CALLER, os.fork()
            except OSError:  # the fork failed: nobody else has these
                ours.close()
                theirs.close()
                raise
            if role == _CALLER and got == 0:  # os.fork's child
                role = _WOKEN
                ours.close()
            if role != _CALLER:
                code = 1
                try:
                    if _fork_template is not None:
                        ours.detach()  # closed in C, as was ``theirs`` in the first workers
                    if role == _FIRST:
                        theirs.detach()
                        code = firsts[got][0]()
                    else:
                        running = [] if not firsts else [(p, firsts[k][1]) for p, k in got]
                        _serve(Connection(UnixStream(theirs.detach())), parent, foreign, running)
                        code = 0
                finally:
                    os._exit(code)  # never the caller's atexit handlers: we are its copy
        theirs.close()
        self._boot = Connection(UnixStream(ours.detach()))
        self._handle = PidfdHandle(got, os.pidfd_open(got))
        return int(got)

    def _connect(self) -> Connection:
        from .._connection import Connection
        from .._transport import UnixStream

        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._closed or self._boot is None:
            raise OSError("the pool's template was closed")
        if self._address is None:
            self._woken = True
            try:
                self._boot.send_bytes(_SERVE)  # it wakes and loads its server now
                self._address = self._boot.recv()
            except EOFError as exc:  # it died before it could listen
                raise OSError("the pool's template exited") from exc
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(None)  # not socket.setdefaulttimeout()'s: it would make it non-blocking
        try:
            sock.connect(self._address)
        except OSError:
            sock.close()
            raise
        self._conn = Connection(UnixStream(sock.detach()))
        return self._conn

    def _my_pidfd(self) -> int:
        if self._pidfd is None:
            self._pidfd = os.pidfd_open(os.getpid())
        return self._pidfd

    def usable(self) -> bool:
        return (
            not self._closed
            and self._owner == os.getpid()
            and self._handle is not None
            and self._handle.poll() is None
        )

    def start(self, spec: LaunchSpec) -> ChildHandle:
        """A replacement worker: on a spare the template announced, with no round trip to
        the template (``spares.py``); with none (the first replacement, or the spares
        died), asked of the template, which forks spares after it."""
        with self._lock:
            boot = self._boot_here()
            if boot is not None:
                handle = self._spares.start(boot, spec)
                if handle is not None:
                    return handle
        from .forkserver import request

        handle = request(self._lock, self._connect, self._my_pidfd, spec, env=None, preload=False)
        with self._lock:
            self._spares.asked()
        return handle

    def _boot_here(self) -> Connection | None:
        """The boot socket, if this template is open and ours (not a forked child's copy)."""
        boot = self._boot
        if self._closed or boot is None or self._owner != os.getpid():
            return None
        return boot

    def spare_owed(self) -> int:
        """The boot socket's fd if the template owes the pool a spare it has not announced
        yet (it is forking one: the socket turns readable when it does), else -1."""
        with self._lock:
            boot = self._boot_here()
            if boot is None or boot.closed:
                return -1
            self._spares.collect(boot, 0)  # what it has announced already
            if self._spares.held or not self._spares.owed or boot.closed:
                return -1
            return boot.fileno()

    def start_on_spare(self, spec: LaunchSpec) -> ChildHandle | None:
        """``spec`` on a spare the template has announced, or None: never a request, so a
        template that has not served yet is not woken, and never a wait (one it still owes
        is waited for by the caller: ``spare_owed``; a pool's standby, ``_pool/standby.py``)."""
        with self._lock:
            boot = self._boot_here()
            if boot is None or not self._woken:
                return None
            return self._spares.start(boot, spec, 0)

    def shut(self) -> None:
        """Tell the template to end, without waiting for it: a terminating pool does this
        as it kills its workers (``ProcessWorkers.kill``), so the template ends beside them.

        One never woken, parked in C, is sent ``_END``: it kills its first workers still
        running, reaps each and writes its status, and exits (their statuses then come
        from their reaper, once they are dead). Not our end-of-file alone: another pool's
        parked template may hold a copy of our boot socket (it was forked while we lived),
        so our EOF would not reach it until that one ends; if the byte cannot be sent, it
        is killed."""
        with self._lock:
            if self._closed or self._owner != os.getpid():
                return
            self._closed = True
            if not self._woken and self._handle is not None:
                sent = False
                if self._boot is not None:
                    try:
                        sent = os.write(self._boot.fileno(), _END) == 1
                    except OSError:
                        pass
                if not sent:
                    self._handle.send_signal(9)
            for conn in (self._conn, self._boot):
                if conn is not None:
                    conn.close()
            self._spares.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def close(self) -> None:
        """End the template and reap it (its request loop ends on EOF of the boot socket)."""
        self.shut()
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None or self._owner != os.getpid():
            return
        if handle.wait(5.0) is None:
            handle.send_signal(9)
            handle.wait(5.0)
        handle.close()


_LIVE: weakref.WeakSet[Template] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for template in list(_LIVE):
        template._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


_fork_template: Callable[..., tuple[int, Any]] | None
try:
    from .._csem import fork_template as _fork_template
except ImportError:  # pragma: no cover - no C extension: see ``Template._fork``
    _fork_template = None

_CALLER, _WOKEN, _FIRST = 0, 1, 2  # ``_csem.fork_template``'s roles
#: Sent to a parked template to end it (``_csem.c``'s TEMPLATE_END; a request starts
#: otherwise). Without the C extension the template waits in Python, where any byte or
#: EOF on the boot socket that is not ``_SERVE`` ends it.
_END = b"X"
#: A first worker the template forks before parking: (entry, status pipe's write end, pid
#: pipe's write end, fds to close once it is forked: that worker's channel ends and
#: journal and the read ends of those pipes).
_First = tuple["Callable[[], int]", int, int, tuple[int, ...]]


class _LatePidHandle(StatusPipeHandle):
    """A pool's first worker, forked by the template: its pid is read when first asked
    (the template writes it down a pipe as it forks the worker). Asked before the
    template is forked, it forks it first (the pool forks it once every first worker
    is written down: nothing asks before, but a pipe nobody will write must never be
    read)."""

    #: Forked only after ``Process.start()`` returns: the Process keeps its target and
    #: arguments for the fork (the pool drops them once it is done, ``_drop_target``).
    forked_later = True

    def __init__(self, pid_r: int, sentinel: int, template: Template) -> None:
        self._pid_r = pid_r
        self._pid = -1
        self._template: Template | None = template
        super().__init__(-1, sentinel)

    @property
    def pid(self) -> int:
        if self._pid_r >= 0:
            template, self._template = self._template, None
            if template is not None and template.pending:
                template.fork_now()
            data = b""
            try:
                data = read_exactly(self._pid_r, 8)
            finally:
                os.close(self._pid_r)
                self._pid_r = -1
            if len(data) == 8:
                self._pid = max(PID.unpack(data)[0], -1)  # -errno: its fork failed
        return self._pid

    @pid.setter
    def pid(self, value: int) -> None:
        if value >= 0:
            self._pid = value

    def pid_if_known(self) -> int | None:
        return None if self._pid_r >= 0 else self._pid

    def close(self) -> None:
        self._template = None
        if self._pid_r >= 0:
            os.close(self._pid_r)
            self._pid_r = -1
        super().close()


def _serve(
    boot: Connection, parent: int, foreign: tuple[int, ...], first: list[tuple[int, int]]
) -> None:
    """The template's main, once woken: a private fork server for one pool.

    Parked in C (``_csem.fork_template``), it gets here only when the pool's first
    request is on its way (``_SERVE``, already readable); forked by ``os.fork``, it waits
    here for it, having loaded nothing more. A pool that never replaces a worker never
    pays for the server's code and state. ``first``: (pid, status pipe) of each of the
    pool's first workers the template forked that still runs: the server reports its end.
    """
    import _signal

    die_with_parent(parent)
    set_comm("polyproc-tmpl")
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    try:
        if boot.recv_bytes() != _SERVE:
            return
    except Exception:  # noqa: BLE001 - EOF, or _END read as a torn frame
        return  # the pool ended without asking for a replacement
    for fd in foreign:  # not ours to keep, nor to hand to the workers we fork
        try:
            os.close(fd)
        except OSError:
            pass
    from .server import TemplateServer

    TemplateServer(boot, first=first).run()


#: What the pool sends on the boot socket before its first request: serve from now on.
_SERVE = b"serve"


def for_pool(ctx: Settings) -> Template | None:
    """A template for a new pool's workers, or None (then workers start as usual).

    Called by the pool engine in the caller's thread, before the engine's own thread
    exists; it is forked, with the pool's first workers, once their ``start()`` calls
    have written them down (``fork_now``), or, without the C extension, right after the
    caller forked them. Only the fork-like methods use one: ``auto`` always, ``fork``
    too (its workers then see the caller as at pool creation, as the stdlib's initial
    workers do, and no fd opened later by another thread leaks into them).
    """
    from .child import check_not_bootstrapping

    check_not_bootstrapping()
    if ctx.start_method not in ("fork", "auto") or not fork_is_safe():
        return None
    return Template()  # pending: forked after the pool's first workers


def start(spec: LaunchSpec) -> ChildHandle:
    """The ``auto`` launcher: a fork here if safe, else a pool's template, else the forkserver.

    A pool worker asked for from the main thread is one of the pool's first: the engine
    starts those in the caller's thread at pool creation, and the template, forked
    once all are written down, forks them (``Template.start_first``). Replacements are
    asked for by the engine's thread, where forking is never safe: the template serves
    them.
    """
    from ..errors import ProcessError

    template = spec.template
    tried_here = False
    if template is not None and template.pending:
        # A pool's first worker: forked by the template as it is forked, or (no C
        # extension) here, before the template (``ProcessWorkers.first_started``).
        if threading.current_thread() is threading.main_thread():
            handle = template.start_first(spec)
            if handle is not None:
                return handle
        template.close()  # not safe now: neither the template nor its workers
        tried_here = True
    if template is not None and template.usable():
        if threading.current_thread() is threading.main_thread():
            tried_here = True
            handle = fork_here(spec.entry)
            if handle is not None:
                return handle
        try:
            return template.start(spec)
        except (OSError, ProcessError):  # the template is gone, or cannot take this one
            pass
    handle = None if tried_here else fork_here(spec.entry)
    if handle is not None:
        return handle
    from . import forkserver

    return forkserver.start(spec)
