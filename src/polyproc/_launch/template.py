"""The default start method ("auto"): fork's semantics where fork is safe, forkserver's where not.

A child must see the parent as it is when the pool or process is made (logging
configured in the main guard, globals set after import, a main module with no
guard), and must never be forked from a process whose other threads may hold a
lock. Both hold if we fork only while the caller is the sole thread, apart from
polyproc's own threads *parked* where they hold no lock::

    Process.start() (auto)                     Pool / Executor created (auto)
    ──────────────────────                     ───────────────────────────────
    caller single-threaded?                    caller single-threaded?
      yes: park ours, os.fork() here             yes: park ours; the first worker's start
      no:  the forkserver (fresh interpreter)         forks a TEMPLATE, which forks that
                                                      worker at once; the caller forks the
                                                      other first workers itself, meanwhile
                                                 no:  no template (the forkserver)

    pool engine thread ── request(Process, fds) ──► template (single-threaded copy of
    (replacements after a crash, recycling)         the caller at creation) ── fork ──► worker

The template is a copy of the caller taken before the pool's engine thread exists,
so it has one thread; it runs the fork server's request loop (``server.Server``)
privately for its pool, and exits when the pool closes it or the caller dies.
The caller forks as many processes as the stdlib's Pool does (the template instead
of the first worker): the template forks that worker from the entry it already holds
(nothing pickled, no request), and says its pid on the boot socket while the caller
forks the next worker (``fork_with_first``; the pid is read when first asked).
Replacements come from the template too. Under ``fork`` the template is forked on its
own at pool creation and the first workers are forked here. Either way a worker costs
a fork (no interpreter boot, no import of ``__main__``), cannot inherit an fd another
thread of the caller opens later (a ``subprocess`` exec-status pipe: issue 11, case 4),
and never makes Python 3.12+ warn about forking with threads.

*Parked* means: a polyproc thread that registered the one lock it holds whenever
it runs Python code (the pool engine holds its lock except while in ``select``;
the launcher thread holds its lock while it launches). Holding all those locks,
we know each such thread is blocked in ``select``/``get`` or on that lock, holding
nothing a child could inherit locked. Any other thread (a user's, a ThreadPool
worker, a queue feeder) makes fork unsafe, and the forkserver is used instead.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import weakref
from typing import TYPE_CHECKING

from .child import die_with_parent, set_comm
from .handle import PID, StatusPipeHandle, report_status
from .parking import fork_is_safe as fork_is_safe
from .parking import parkable as parkable
from .parking import parked as parked

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

    The engine thread asks it for each replacement worker (``start``); ``close`` ends
    it (its workers, if any are left, die with it by PDEATHSIG).
    """

    def __init__(self, boot: Connection | None = None, handle: PidfdHandle | None = None) -> None:
        # No boot socket yet: a *pending* template, forked with its pool's first worker
        # (``fork_with_first``). The fields below are filled then.
        self._boot = boot
        self._handle = handle
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._address: bytes | None = None
        self._pidfd: int | None = None
        self._closed = False
        self._owner = os.getpid()
        #: The first worker's channel ends, which the template closes once it has forked
        #: that worker (set by the pool before that worker's start).
        self.first_fds: tuple[int, ...] = ()
        self._first: int | None = 0  # the first worker's pid once read (None: unread)
        self._first_lock = threading.Lock()
        _LIVE.add(self)

    @property
    def pending(self) -> bool:
        """Not forked yet: the pool's first worker start will fork it (``fork_with_first``)."""
        return self._boot is None and not self._closed

    def _forget_in_child(self) -> None:
        """In a forked child: drop our copies of this template's sockets, or the template
        would outlive its pool for as long as the child lives (it ends on EOF)."""
        self._lock = threading.Lock()
        if not self._closed:
            self._closed = True
            for conn in (self._conn, self._boot):
                if conn is not None:
                    conn.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            if self._handle is not None:
                self._handle.close()

    @classmethod
    def fork(cls) -> Template | None:
        """Fork a template from this thread now, or None if that is not safe."""
        template = cls()
        if template._fork(None) is None:
            template._closed = True
            return None
        return template

    def fork_with_first(self, spec: LaunchSpec) -> ChildHandle | None:
        """Fork this pending template now, and have it fork ``spec`` (the pool's first
        worker) at once; the worker's handle, or None if forking is not safe here.

        The caller forks once where it would fork twice (template, then worker): the
        template forks the worker while the caller goes on to the next one. The worker
        is the template's child, as replacements are: its exit status comes down a pipe.
        """
        if not self.pending:
            return None
        r, w = os.pipe()
        self._first = None  # the template sends it first, before its address
        try:
            got = self._fork((spec.entry, w, self.first_fds))
        finally:
            os.close(w)
            self.first_fds = ()
        if got is None:
            os.close(r)
            self._closed = True
            return None
        # Not waiting for the template to say the pid: the caller forks the next worker
        # meanwhile (the worker's READY says it too; ``pid`` reads it when asked).
        return _LatePidHandle(self._first_pid, r)

    def _first_pid(self) -> int:
        """The first worker's pid, as the template sent it first on the boot socket; -1 if
        the template died before saying it (its worker's status pipe then says it died)."""
        with self._first_lock:
            if self._first is None:
                self._first = -1
                if self._boot is not None and not self._boot.closed:
                    try:
                        (self._first,) = PID.unpack(self._boot.recv_bytes())
                    except (EOFError, OSError):
                        pass
            return max(self._first, -1)

    def _fork(self, first: _First | None) -> int | None:
        """Fork the template (fill in this object); its pid, or None if not safe now."""
        from .._connection import Connection
        from .._transport import UnixStream
        from .fork import prepare_to_fork
        from .handle import PidfdHandle

        prepare_to_fork()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with parked() as safe:
            if not safe:
                ours.close()
                theirs.close()
                return None
            _flush_stdio()
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ours.close()
                    _serve(Connection(UnixStream(theirs.detach())), parent, first)
                    code = 0
                finally:
                    os._exit(code)  # never the caller's atexit handlers: we are its copy
        theirs.close()
        self._boot = Connection(UnixStream(ours.detach()))
        self._handle = PidfdHandle(pid, os.pidfd_open(pid))
        return pid

    def _connect(self) -> Connection:
        from .._connection import Connection
        from .._transport import UnixStream

        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._closed or self._boot is None:
            raise OSError("the pool's template was closed")
        if self._address is None:
            if self._first is None:
                self._first_pid()  # the template said that first
            try:
                self._boot.send_bytes(_SERVE)  # it loads its server now (``_idle``)
                self._address = self._boot.recv()
            except EOFError as exc:  # it died before it could listen
                raise OSError("the pool's template exited") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
        from .forkserver import request

        return request(self._lock, self._connect, self._my_pidfd, spec, env=None, preload=False)

    def shut(self) -> None:
        """Tell the template to end (EOF on its boot socket), without waiting for it: a
        pool's shutdown does this first, so the template ends while its workers do."""
        with self._lock:
            if self._closed or self._owner != os.getpid():
                return
            self._closed = True
            if self._handle is None:  # pending: never forked
                return
            if self._first is None:
                self._first_pid()  # read while the template can still say it
            for conn in (self._conn, self._boot):
                if conn is not None:
                    conn.close()
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


class _LatePidHandle(StatusPipeHandle):
    """A pool's first worker, forked by the template: its pid is read when first asked."""

    def __init__(self, read_pid: Callable[[], int], sentinel: int) -> None:
        self._read_pid: Callable[[], int] | None = read_pid
        self._pid = -1
        super().__init__(-1, sentinel)

    @property
    def pid(self) -> int:
        read = self._read_pid
        if read is not None:
            self._pid = read()
            self._read_pid = None
        return self._pid

    @pid.setter
    def pid(self, value: int) -> None:
        if value >= 0:
            self._pid = value

    def pid_if_known(self) -> int | None:
        return None if self._read_pid is not None else self._pid


_LIVE: weakref.WeakSet[Template] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for template in list(_LIVE):
        template._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


#: What a template forks first, before serving: (entry, status pipe's write end, fds to
#: close once it is forked: that worker's channel ends, which replacements must not hold).
_First = tuple["Callable[[], int]", int, tuple[int, ...]]


def _serve(boot: Connection, parent: int, first: _First | None) -> None:
    """The template's main: a private fork server for one pool.

    It forks its first worker at once, then waits (``_idle``) and loads the server's code
    only when the pool first asks for a replacement: nobody waits for the template.
    """
    import signal

    from .handle import PID

    die_with_parent(parent)
    forked: tuple[int, int] | None = None
    if first is not None:
        entry, status_w, channel = first
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            pid = -(exc.errno or 11)
        if pid == 0:
            code = 1
            try:
                os.close(status_w)
                boot.close()
                die_with_parent(me)
                code = entry()
            finally:
                os._exit(code)
        for fd in channel:
            os.close(fd)
        boot.send_bytes(PID.pack(pid))
        if pid > 0:
            forked = (pid, status_w)
        else:
            os.close(status_w)
    set_comm("polyproc-tmpl")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    forked = _idle(boot, forked)
    if boot.closed:
        return  # the pool ended without asking for a replacement
    from .server import Server

    Server(boot, first=forked).run()


#: What the pool sends on the boot socket before its first request: serve from now on.
_SERVE = b"serve"


def _idle(boot: Connection, forked: tuple[int, int] | None) -> tuple[int, int] | None:
    """Wait, having loaded nothing more, until the pool's first request (``_SERVE``) or
    its end (EOF: ``boot`` is then closed); what is left of ``forked`` to serve.

    The server's code and state (its import, a listening socket) cost the template ~2 ms
    of CPU, which at birth competes with the caller and the first workers for the CPUs:
    a pool that never replaces a worker never pays it. Meanwhile the first worker's end
    is reported as the server would: its wait status down its status pipe.
    """
    import select

    poller = select.poll()
    poller.register(boot.fileno(), select.POLLIN)
    pidfd = -1
    if forked is not None:
        pidfd = os.pidfd_open(forked[0])
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd != pidfd:
                    try:
                        boot.recv_bytes()  # _SERVE
                    except (EOFError, OSError):
                        boot.close()
                    return forked
                assert forked is not None
                pid, status_w = forked
                _, status = os.waitpid(pid, 0)
                report_status(status_w, status)
                poller.unregister(pidfd)
                os.close(pidfd)
                pidfd, forked = -1, None
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def for_pool(ctx: Settings) -> Template | None:
    """A template for a new pool's workers, forked now, or None (then workers start as usual).

    Called by the pool engine in the caller's thread, before the engine's own thread
    exists. Only the fork-like methods use one: ``auto`` always, ``fork`` too (its
    workers then see the caller as at pool creation, as the stdlib's initial workers
    do, and no fd opened later by another thread leaks into them).
    """
    from .child import check_not_bootstrapping

    check_not_bootstrapping()
    if ctx.start_method == "fork":
        return Template.fork()
    if ctx.start_method != "auto" or not fork_is_safe():
        return None
    return Template()  # pending: forked with the first worker (``fork_with_first``)


def start(spec: LaunchSpec) -> ChildHandle:
    """The ``auto`` launcher: a fork here if safe, else a pool's template, else the forkserver.

    A pool worker asked for from the main thread is one of the pool's first: the engine
    starts those in the caller's thread at pool creation, right after forking the
    template, so a fork here sees the caller as the template does, and costs one fork
    instead of a request to the template and an unpickle there. Replacements are asked
    for by the engine's thread, where forking is never safe: the template serves them.
    """
    from ..errors import ProcessError

    template = spec.template
    tried_here = False
    if template is not None and template.pending:
        if threading.current_thread() is threading.main_thread():
            handle = template.fork_with_first(spec)
            if handle is not None:
                return handle
        template.close()  # not safe now: the pool's workers start as below
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
