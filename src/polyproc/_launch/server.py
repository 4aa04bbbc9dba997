"""The fork server's loop: the forkserver's (``forkserver.serve``) and a pool template's.

One single-threaded process forks children on request: a request carries the pickled
entry, a status pipe's write end, the client's pidfd and its stdin/stdout/stderr (the
last ``_CONTROL_FDS`` fds); the reply is the child's pid (``handle.PID``). The server
reaps its children and writes each wait status down its pipe, and kills the children of
a client whose pidfd fires. A pool's template may have forked its first workers before
serving (``first``), and hands spare children to its pool (``TemplateServer``; the
protocol and the pool's side are in ``spares.py``).
The client side and the shared forkserver's lifetime are in ``forkserver.py``.
"""

from __future__ import annotations

import _signal
import _socket
import errno
import os
import pickle
import selectors
import signal
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._serialize import Payload
from .child import die_with_parent, install_log_forwarding, set_comm
from .handle import PID, report_status

if TYPE_CHECKING:
    from .._connection import Connection

__all__ = ["Server", "TemplateServer"]

_CONTROL_FDS = 5  # status_w, client pidfd, stdin, stdout, stderr: after the payload's own fds


def _print_and_exit() -> None:
    """A child whose entry could not run: its traceback on its stderr, exit code 1."""
    try:
        import traceback  # here: a pool's template loads this module at birth

        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(1)


class Server:
    """A fork server's state: its sockets, its clients, and which client owns which child.

    The forkserver runs one (``inherit``: the client state its children inherit, so
    descendants reuse it); a pool's template (``template.py``) runs another, private to
    that pool.
    """

    def __init__(
        self, boot: Connection, *, inherit: Any = None, first: list[tuple[int, int]] | None = None
    ) -> None:
        """``first``: (pid, status pipe) of each child forked before serving (a pool's first
        workers, forked by its template at birth): reaped and reported like the others."""
        self.boot = boot
        self.inherit = inherit  # forkserver._CLIENT, or None (a template)
        self.sel = selectors.DefaultSelector()
        self.listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.listener.settimeout(None)  # not socket.setdefaulttimeout()'s
        self.listener.bind(b"\0polyproc-forkserver-" + os.urandom(12).hex().encode())
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.children: dict[int, tuple[int, int]] = {}  # pid -> (status_w, client pidfd)
        self.clients: dict[int, Connection] = {}  # conn fd -> conn
        self.client_pidfd: dict[int, int] = {}  # conn fd -> that client's pidfd
        self.pidfd_children: dict[int, set[int]] = {}  # client pidfd -> its live children
        self.dead: set[int] = set()  # client pidfds whose process has exited
        for pid, status_w in first or ():
            self.children[pid] = (status_w, -1)  # no client pidfd: it dies with us

    def run(self) -> int:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # Ctrl+C is for the clients to handle
        _signal.set_wakeup_fd(self.wake_w)
        _signal.signal(_signal.SIGCHLD, lambda *_: None)
        self._reap()  # a child that ended before the handler was set sent no wake-up
        self.boot.send(self.listener.getsockname())
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.boot.fileno(), selectors.EVENT_READ, "boot")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "sigchld")
        while True:
            for key, _ in self.sel.select():
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # unregistered by an earlier event of this batch (EOF, then pidfd)
                what = key.data
                if what == "boot":
                    if not self._on_boot():
                        return 0  # our owner is gone; our children follow by PDEATHSIG
                elif what == "accept":
                    self._accept()
                elif what == "sigchld":
                    self._reap()
                elif what == "client-dead":
                    self._client_died(key.fd)
                else:
                    self._request(key.fd)

    def _accept(self) -> None:
        from .._connection import Connection
        from .._transport import UnixStream, wrap_fd

        try:
            fd, _ = self.listener._accept()  # type: ignore[attr-defined]  # the C type's accept
        except OSError:
            return
        sock = wrap_fd(fd)  # blocking, as the listener's accepted fds are
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            sock.close()
            return
        conn = Connection(UnixStream(sock.detach()))
        self.clients[conn.fileno()] = conn
        self.sel.register(conn.fileno(), selectors.EVENT_READ, "request")

    def _drop(self, fd: int) -> None:
        self.sel.unregister(fd)
        self.clients.pop(fd).close()
        pidfd = self.client_pidfd.pop(fd, None)
        if pidfd is not None and not self.pidfd_children.get(pidfd):
            self._close_pidfd(pidfd)

    def _request(self, fd: int) -> None:
        conn = self.clients[fd]
        try:
            payload = conn.recv_payload()
        except (EOFError, OSError):
            self._drop(fd)
            return
        if not payload.fds:  # a preload list (see _send_preload)
            self._preload(payload.body)
            return
        if len(payload.fds) < _CONTROL_FDS:
            for extra in payload.fds:
                os.close(extra)
            self._drop(fd)
            return
        status_w, pidfd, *stdio = payload.fds[-_CONTROL_FDS:]
        own = payload.fds[:-_CONTROL_FDS]
        known = self.client_pidfd.get(fd)
        if known is None:
            self.client_pidfd[fd] = known = pidfd
            self.pidfd_children[pidfd] = set()
            self.sel.register(pidfd, selectors.EVENT_READ, "client-dead")
        else:
            os.close(pidfd)
        server_pid = os.getpid()  # before the fork: in the child, getppid() may be 1
        try:
            pid = os.fork()
        except OSError as exc:
            pid = -(exc.errno or errno.EAGAIN)
        if pid == 0:
            self._become_child(payload, status_w, stdio, own, server_pid)
        if pid > 0:
            self.children[pid] = (status_w, known)
            self.pidfd_children[known].add(pid)
        else:
            os.close(status_w)
        for extra in (*own, *stdio):
            os.close(extra)
        try:
            conn.send_bytes(PID.pack(pid))
        except OSError:
            self._drop(fd)
        self._after_reply(pid)

    # -- hooks (a pool's template: ``TemplateServer``) -----------------------------------
    def _on_boot(self) -> bool:
        """The boot socket is readable: False to end. The forkserver's owner never writes
        there after its start, so readable means it is gone (end of file)."""
        return False

    def _after_reply(self, pid: int) -> None:
        """After a request is answered (``pid``: the child's, or minus an errno), while
        nobody waits for us."""

    def _reaped_stranger(self, pid: int, status: int) -> None:
        """A child that is nobody's worker (no status pipe) has been reaped."""

    @staticmethod
    def _preload(body: bytes | memoryview) -> None:
        import importlib

        try:
            names = pickle.loads(body)
        except Exception:
            return
        for name in names if isinstance(names, list) else ():
            if isinstance(name, str) and name not in sys.modules:
                try:
                    importlib.import_module(name)
                except Exception:  # a module that cannot load here is simply left to the child
                    pass

    def _become_child(
        self, payload: Payload, status_w: int, stdio: list[int], own: list[int], server_pid: int
    ) -> None:
        code = 1
        try:
            self._detach(server_pid)
            os.close(status_w)
            code = self._run(payload, stdio, own)
        except BaseException:
            _print_and_exit()
        finally:
            os._exit(code)

    def _detach(self, server_pid: int) -> None:
        """In a child just forked: tie its life to ours, then drop everything of the server's."""
        # First, and against the pid the server had before the fork: a server killed
        # in between (its owner was kill -9'd) must not leave us running under init
        # (``os.getppid()`` here would already say 1, and the check would pass).
        die_with_parent(server_pid)
        _signal.set_wakeup_fd(-1)
        # ``_signal``'s: ``signal.signal``'s enum conversions cost a fork child ~0.1 ms each.
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        self._close_all()
        if self.inherit is not None:  # descendants reuse the forkserver, not a template
            self.inherit.address = self.listener.getsockname()
        self.listener.close()

    @staticmethod
    def _run(payload: Payload, stdio: list[int], own: list[int]) -> int:
        """In the child: the client's stdio, its environment, then the entry it sent."""
        for std, fd in enumerate(stdio):
            os.dup2(fd, std)
            os.close(fd)
        from .._serialize import DEFAULT_SERIALIZER

        entry: Callable[[], int]
        env: dict[str, str] | None
        entry, env, log = DEFAULT_SERIALIZER.loads(payload.body, payload.buffers, own)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        install_log_forwarding(log)
        return entry()

    def _close_all(self) -> None:
        self.sel.close()
        self.boot.close()
        for conn in self.clients.values():
            conn.close()
        for fd in (self.wake_r, self.wake_w, *self.pidfd_children):
            os.close(fd)
        for status_w, _ in self.children.values():
            os.close(status_w)

    def _reap(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None:
                self._reaped_stranger(pid, status)
                continue
            status_w, pidfd = entry
            report_status(status_w, status)
            owned = self.pidfd_children.get(pidfd)
            if owned is not None:
                owned.discard(pid)
                if not owned and pidfd not in self.client_pidfd.values():
                    self._close_pidfd(pidfd)

    def _client_died(self, pidfd: int) -> None:
        """The client is gone: its children go too (they are its, not ours)."""
        for pid in self.pidfd_children.get(pidfd, ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for fd, known in list(self.client_pidfd.items()):
            if known == pidfd:
                del self.client_pidfd[fd]
        self.sel.unregister(pidfd)
        self.dead.add(pidfd)
        if not self.pidfd_children.get(pidfd):  # else closed when its last child is reaped
            self._close_pidfd(pidfd)

    def _close_pidfd(self, pidfd: int) -> None:
        del self.pidfd_children[pidfd]
        if pidfd not in self.dead:
            self.sel.unregister(pidfd)
        self.dead.discard(pidfd)
        os.close(pidfd)


#: How many spares a woken template keeps announced to its pool (each ~1.5 MB of private
#: memory). Measured with two: under ``maxtasksperchild=1`` (a worker started each time one
#: is sent its last task) starts waited for the template's next fork ~1 in 20 instead of
#: ~1 in 5 (p90 0.06 ms against 0.4-0.8), with no throughput change we could measure, and
#: the first replacement took ~1.2 ms longer (its worker starts beside both forks).
SPARES = 1


class TemplateServer(Server):
    """A pool template's fork server: ``Server`` plus the spares it hands to its pool
    (``spares.py``: why, and the wire)."""

    def __init__(self, boot: Connection, *, first: list[tuple[int, int]] | None = None) -> None:
        super().__init__(boot, first=first)
        #: Spares announced and not yet taken.
        self.announced: set[int] = set()
        #: The wait status of an announced spare reaped before its ``take`` came (it died
        #: waiting, or as the worker it had just become): written down its pipe then.
        self.unclaimed: dict[int, int] = {}

    def _on_boot(self) -> bool:
        """Each ``take`` the pool sent; False at end of file (the pool is gone)."""
        while True:
            try:
                payload = self.boot.recv_payload()
            except (EOFError, OSError):
                return False
            if len(payload.body) == PID.size and len(payload.fds) == 1:
                self._take(PID.unpack(payload.body)[0], payload.fds[0])
            else:  # not a take (a bug of ours): its fds are not ours to keep
                for fd in payload.fds:
                    os.close(fd)
            if not self.boot.poll(0):  # more may be in its buffer: no select would say so
                return True

    def _take(self, pid: int, status_w: int) -> None:
        """The pool handed spare ``pid`` a worker: its status goes down ``status_w``."""
        self.announced.discard(pid)
        status = self.unclaimed.pop(pid, None)
        if status is not None:
            report_status(status_w, status)
        else:
            self.children[pid] = (status_w, -1)  # no client pidfd: it dies with us
        self._refill()

    def _after_reply(self, pid: int) -> None:
        if pid > 0:  # the first replacement, or the pool's spares were dead
            self._refill()

    def _reaped_stranger(self, pid: int, status: int) -> None:
        if pid in self.announced:
            self.unclaimed[pid] = status

    def _refill(self) -> None:
        while len(self.announced) < SPARES and self._fork_spare():
            pass

    def _fork_spare(self) -> bool:
        """Fork a spare and announce it (or the fork's failure, then False). Our copy of its
        socket's pool end is closed: the spare's end then ends with the spare, so the
        pool's send to a dead one fails. It dies with us (PDEATHSIG)."""
        from .._transport import socketpair

        ours, theirs = socketpair()
        server_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            self._announce(-(exc.errno or errno.EAGAIN), None)
            return False
        if pid == 0:
            self._become_spare(ours, theirs, server_pid)
        theirs.close()
        self.announced.add(pid)
        self._announce(pid, ours)
        return True

    def _announce(self, pid: int, sock: _socket.socket | None) -> None:
        try:
            fds = [] if sock is None else [sock.fileno()]
            self.boot.send_payload(Payload(PID.pack(pid), None, fds))
        except OSError:
            pass  # the pool is gone: the boot socket's end of file ends us
        finally:
            if sock is not None:
                sock.close()

    def _become_spare(self, ours: _socket.socket, sock: _socket.socket, server_pid: int) -> None:
        """In the spare: drop all of the template's state, then wait for one worker."""
        from .._connection import Connection
        from .._transport import UnixStream

        code = 1
        try:
            ours.close()
            self._detach(server_pid)
            set_comm("polyproc-tspare")  # not "polyproc-spare": that is process-wide
            conn = Connection(UnixStream(sock.detach()))
            try:
                payload = conn.recv_payload()
            except (EOFError, OSError):
                code = 0  # the pool closed, or dropped us
            else:
                conn.close()
                *own, i, o, e = payload.fds
                code = self._run(payload, [i, o, e], own)
        except BaseException:
            _print_and_exit()
        finally:
            os._exit(code)
