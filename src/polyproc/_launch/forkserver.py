"""The forkserver start method: a spawned template process that forks children on request.

The template is a fresh interpreter (so no parent threads or locks leak into
children) that has already imported polyproc and the user's main module, so a
child costs a fork, not an interpreter start::

    client process                         forkserver (comm "polyproc-fsrv")          child
    ──────────────                         ─────────────────────────────────          ─────
    dumps(entry)     (fails here)
    status pipe r/w
    send_payload(entry, fds=[...payload,     selectors loop:
       status_w, my pidfd, stdin/out/err]) ─► recv request ── fork ─────────────────► dup2 stdio,
    recv pid ◄──────────────────────────────  reply pid                                die with server,
                                             SIGCHLD ─► waitpid ─► status_w            entry()
    sentinel = status r (readable at exit) ◄─ write wait status, close
                                             client pidfd readable ─► SIGKILL its children

Lifetimes: the server dies with the process that started it (PDEATHSIG, and EOF
on the bootstrap socket); children die with the server (PDEATHSIG) and are
killed when the client that asked for them dies, so "children die with their
parent" holds even though the forkserver is their OS parent. Clients connect to
an abstract AF_UNIX address, checked by SO_PEERCRED to be the same user.
Descendants (fork or forkserver children) reuse their ancestor's server.
"""

from __future__ import annotations

import errno
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._serialize import Payload
from ..errors import StartError
from .child import (
    BOOTSTRAP_ERROR,
    die_with_parent,
    install_log_forwarding,
    log_spec,
    open_stdio,
    preparation_data,
    set_comm,
)
from .handle import PID, ChildHandle, StatusPipeHandle, launch_errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._connection import Connection
    from . import LaunchSpec

__all__ = ["start", "request", "serve", "Server"]

_CONTROL_FDS = 5  # status_w, client pidfd, stdin, stdout, stderr: after the payload's own fds


class _Client:
    """This process's link to its forkserver. Reset in a forked child (see register_at_fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.address: bytes | None = None
        self.conn: Connection | None = None
        self.boot: Connection | None = None  # held only by the process that started the server
        self.pidfd: int | None = None
        self.preloaded: set[str] = set()  # polyproc modules the server was told to import
        self.server: ChildHandle | None = None  # the server we started (we must reap it)
        self.refused = False  # our server refused to start: the main module has no guard

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        if self.server is not None:  # our parent's child, not ours: drop our copy of its pidfd
            # (not through close(): its lock may have been held by a thread of the parent)
            fd, self.server.sentinel = self.server.sentinel, -1
            if fd >= 0:
                os.close(fd)
            self.server = None
        for conn in (self.conn, self.boot):
            if conn is not None:
                conn.close()
        self.conn = self.boot = None
        self.preloaded = set()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def connection(self) -> Connection:
        """The connection to our server, starting the server if there is none."""
        from .._connection import Connection
        from .._transport import UnixStream

        self.forget_dead_server(0)
        if self.conn is not None and not self.conn.closed:
            return self.conn
        if self.refused:
            raise RuntimeError(BOOTSTRAP_ERROR)
        if self.address is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(None)  # not socket.setdefaulttimeout()'s
            try:
                sock.connect(self.address)
            except OSError:  # our ancestor's server is gone: start our own
                sock.close()
                self.address = None
            else:
                self.conn = Connection(UnixStream(sock.detach()))
                return self.conn
        self._start_server()
        return self.connection()

    def _start_server(self) -> None:
        from .spawn import Role, spawn_interpreter

        boot, handle = spawn_interpreter("polyproc-forkserver")
        with launch_errors(handle):
            # quiet_refusal: a main module with no guard is our RuntimeError to raise
            boot.send(
                {"parent_pid": os.getpid(), "prep": preparation_data(), "quiet_refusal": True}
            )
            try:
                boot.send(Role(serve))
            except OSError:
                pass  # it died on the first message: its reply, if any, says why
            try:
                reply = boot.recv()
            except EOFError as exc:
                raise OSError("the forkserver exited while starting") from exc
        if isinstance(reply, tuple) and reply[:1] == ("polyproc-refused",):
            # Our main module starts processes when imported (no main guard): say so
            # once, here, and start no more servers that would do the same.
            handle.wait(5.0)
            self.refused = True
            raise RuntimeError(BOOTSTRAP_ERROR)
        self.address = reply
        self.boot = boot
        # The server is reaped by nobody but us (forget_dead_server); it exits when we do.
        self.server = handle

    def forget_dead_server(self, timeout: float) -> bool:
        """If the server we started has died (kill -9), reap it and forget it; True if so.

        Without this a killed server stays a zombie until we exit, and every later
        start fails on its dead connection instead of starting a new server.
        """
        handle = self.server
        if handle is None or handle.wait(timeout) is None:
            return False
        handle.close()
        for conn in (self.conn, self.boot):
            if conn is not None:
                conn.close()
        self.conn = self.boot = self.server = self.address = None
        self.preloaded = set()
        return True

    @property
    def server_pid(self) -> int | None:
        """The pid of the server this process started (None before the first start)."""
        handle = self.server
        return handle.pid if handle is not None else None

    def my_pidfd(self) -> int:
        if self.pidfd is None:
            self.pidfd = os.pidfd_open(os.getpid())
        return self.pidfd


_CLIENT = _Client()
os.register_at_fork(after_in_child=_CLIENT.after_fork_in_child)


def _stdio_fds() -> list[int]:
    """Our fds 0-2 for the child; /dev/null stands in for a closed one."""
    return [os.open(os.devnull, os.O_RDWR) if fd is None else fd for fd in open_stdio()]


def start(spec: LaunchSpec) -> StatusPipeHandle:
    # The environment travels with each request: a child sees the client's os.environ
    # as it is now, as a spawn child does (the server's is the one it booted with).
    return request(
        _CLIENT.lock,
        _CLIENT.connection,
        _CLIENT.my_pidfd,
        spec,
        env=dict(os.environ),
        preload=True,
        log=log_spec(),
        retry=_CLIENT.forget_dead_server,
    )


def request(
    lock: threading.Lock,
    connect: Callable[[], Connection],
    pidfd: Callable[[], int],
    spec: LaunchSpec,
    *,
    env: dict[str, str] | None,
    preload: bool,
    log: dict[str, Any] | None = None,
    retry: Callable[[float], bool] | None = None,
) -> StatusPipeHandle:
    """Ask a server (the forkserver, or a pool's template) for one child running ``spec``.

    ``retry(timeout)`` is asked, once, after a failed send: True if the server was
    found dead and forgotten, so that ``connect()`` starts a new one.
    """
    payload = spec.settings.serializer.dumps((spec.entry, env, log), what=spec.what)
    r, w = os.pipe()
    try:
        with lock:
            stdio = _stdio_fds()
            try:
                for attempt in (1, 2):
                    conn = connect()
                    fds = [*payload.fds, w, pidfd(), *stdio]
                    try:
                        if preload:
                            _send_preload(conn)
                        conn.send_payload(Payload(payload.body, payload.buffers, fds))
                        reply = conn.recv_bytes()
                        break
                    except (OSError, EOFError) as exc:
                        conn.close()
                        # our server was killed: reap it and try once with a new one
                        if attempt == 1 and retry is not None and retry(2.0):
                            continue
                        raise StartError(f"the forkserver is gone: {exc}") from exc
            finally:
                for fd, std in zip(stdio, (0, 1, 2), strict=True):
                    if fd != std:
                        os.close(fd)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    (pid,) = PID.unpack(reply)
    if pid < 0:
        os.close(r)
        raise StartError(f"the forkserver could not fork: {os.strerror(-pid)}")
    return StatusPipeHandle(pid, r)


def _send_preload(conn: Connection) -> None:
    """Tell the server which modules to import once, before forking, instead of in every
    child: the polyproc modules we use (a pool worker would import the pool's modules)
    and ``set_forkserver_preload``'s list, as the stdlib's forkserver imports it (a
    child whose target lives in a heavy module then does not import it again)."""
    from .._context import _defaults

    # Not the cluster backends: they import dask/ray (and with them the stdlib's
    # multiprocessing), which a locally forked worker never needs. Not "__main__":
    # the server has imported the main module already.
    loaded = {
        name
        for name in sys.modules
        if name.startswith("polyproc.") and not name.startswith("polyproc.backends")
    }
    loaded.update(name for name in _defaults.preload if name != "__main__")
    new = loaded - _CLIENT.preloaded
    if new:
        conn.send_payload(Payload(pickle.dumps(sorted(new))))  # a frame with no fds
        _CLIENT.preloaded |= new


# -- the server ------------------------------------------------------------------


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

    The forkserver runs one (``shared``: its address is inherited by descendants); a
    pool's template (``template.py``) runs another, private to that pool.
    """

    def __init__(
        self, boot: Connection, *, shared: bool = True, first: tuple[int, int] | None = None
    ) -> None:
        """``first``: (pid, status pipe) of a child forked before serving (a pool's first
        worker, forked by its template at birth): reaped and reported like the others."""
        self.boot = boot
        self.shared = shared
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.settimeout(None)  # not socket.setdefaulttimeout()'s
        self.listener.bind(b"\0polyproc-forkserver-" + os.urandom(12).hex().encode())
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.children: dict[int, tuple[int, int]] = {}  # pid -> (status_w, client pidfd)
        self.clients: dict[int, Connection] = {}  # conn fd -> conn
        self.client_pidfd: dict[int, int] = {}  # conn fd -> that client's pidfd
        self.pidfd_children: dict[int, set[int]] = {}  # client pidfd -> its live children
        self.dead: set[int] = set()  # client pidfds whose process has exited
        self.spare: tuple[int, Connection] | None = None  # (pid, its socket): templates only
        if first is not None:
            self.children[first[0]] = (first[1], -1)  # no client pidfd: it dies with us

    def run(self) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the clients to handle
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
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
                    return 0  # our owner is gone; our children follow by PDEATHSIG
                if what == "accept":
                    self._accept()
                elif what == "sigchld":
                    self._reap()
                elif what == "client-dead":
                    self._client_died(key.fd)
                else:
                    self._request(key.fd)

    def _accept(self) -> None:
        from .._connection import Connection
        from .._transport import UnixStream

        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(None)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
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
        pid = 0
        if self.spare is not None:
            # Known as the child before it gets the request: if it dies at once, the
            # reaper must find whom to tell.
            spare = self.spare[0]
            self.children[spare] = (status_w, known)
            self.pidfd_children[known].add(spare)
            if self._hand_to_spare(payload, own, stdio) is not None:
                pid = spare
            else:
                self.children.pop(spare, None)
                self.pidfd_children[known].discard(spare)
        if pid == 0:
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
        if not self.shared and self.spare is None and pid > 0:
            self._fork_spare()  # after the reply: nobody waits for it

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
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._close_all()
        if self.shared:  # descendants reuse the forkserver, not a pool's template
            _CLIENT.address = self.listener.getsockname()
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

    # -- a pool template's spare ------------------------------------------------------
    def _fork_spare(self) -> None:
        """Fork a child that waits for the next request (a pool's template, after its first).

        The next replacement then costs no fork and no child set-up: the request goes
        to the spare, which runs it at once, and a new spare is forked after the reply,
        while nobody waits (issue 11: a replacement in <= 3 ms). A pool that lost one
        worker often loses more (the same OOM), and ``maxtasksperchild`` replaces
        workers all the time. It dies with the template (PDEATHSIG).
        """
        from .._connection import Connection
        from .._transport import UnixStream

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            code = 1
            try:
                ours.close()
                self._detach(server_pid)
                set_comm("polyproc-tspare")  # not "polyproc-spare": that is process-wide
                conn = Connection(UnixStream(theirs.detach()))
                try:
                    payload = conn.recv_payload()
                except (EOFError, OSError):
                    code = 0  # the template ended, or dropped us
                else:
                    conn.close()
                    *own, i, o, e = payload.fds
                    code = self._run(payload, [i, o, e], own)
            except BaseException:
                _print_and_exit()
            finally:
                os._exit(code)
        theirs.close()
        self.spare = (pid, Connection(UnixStream(ours.detach())))

    def _hand_to_spare(self, payload: Payload, own: list[int], stdio: list[int]) -> int | None:
        """Give a request to the spare; its pid, or None if there is none (or it died)."""
        if self.spare is None:
            return None
        pid, conn = self.spare
        self.spare = None
        try:
            conn.send_payload(Payload(payload.body, payload.buffers, [*own, *stdio]))
        except OSError:  # it died: fork instead
            return None
        finally:
            conn.close()
        return pid

    def _close_all(self) -> None:
        self.sel.close()
        self.boot.close()
        if self.spare is not None:
            self.spare[1].close()
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
                if self.spare is not None and self.spare[0] == pid:  # it died waiting
                    self.spare[1].close()
                    self.spare = None
                continue
            status_w, pidfd = entry
            try:
                os.write(status_w, struct.pack("<i", status))
            except OSError:
                pass
            os.close(status_w)
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


def serve(boot: Connection) -> int:
    """The forkserver's main (a spawn role): serve until the owner goes away."""
    set_comm("polyproc-fsrv")
    return Server(boot).run()
