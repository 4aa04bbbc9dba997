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

import os
import pickle
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._serialize import Payload
from ..errors import StartError
from .child import (
    BOOTSTRAP_ERROR,
    log_spec,
    preparation_data,
    set_comm,
    stdio_to_hand,
)
from .handle import PID, ChildHandle, StatusPipeHandle, launch_errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._connection import Connection
    from . import LaunchSpec

__all__ = ["start", "request", "serve"]


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
        with lock, stdio_to_hand() as stdio:
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


def serve(boot: Connection) -> int:
    """The forkserver's main (a spawn role): serve until the owner goes away."""
    from .server import Server

    set_comm("polyproc-fsrv")
    return Server(boot, inherit=_CLIENT).run()
