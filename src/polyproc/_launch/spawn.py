"""The spawn start method: a fresh interpreter, told what it needs over a socket.

::

    parent                                       child (python -c <boot>, fd 3 = socket)
    dumps(spec.entry)  (fails here, nothing started)
    posix_spawn ─────────────────────────────────► import polyproc._launch.spawn
    send {parent_pid, prep} ─────────────────────► die_with_parent; prepare (import __main__
                                                   as __mp_main__)
    send_payload(entry + fds) ───────────────────► recv -> entry; exit(entry())

The same channel starts the forkserver: its second message is a ``Role`` (a
callable that takes the channel) instead of an entry.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .child import (
    BOOTSTRAP_ERROR,
    REFUSED_EXIT,
    die_with_parent,
    install_log_forwarding,
    is_refusal,
    log_spec,
    open_stdio,
    preparation_data,
    prepare,
    set_comm,
)
from .handle import PidfdHandle, launch_errors

if TYPE_CHECKING:
    from .._connection import Connection
    from . import LaunchSpec

__all__ = ["start", "spawn_interpreter", "child_main", "Role"]

# os.path, not pathlib: every spawned child imports this module as it boots, and pathlib
# (with traceback, imported only on failure below) is ~11 ms of a clean interpreter's start.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, {path!r}); "
    "from polyproc._launch.spawn import child_main; child_main(3)"
)


class Role(NamedTuple):
    """A long-lived job for a spawned interpreter (the forkserver): ``main(channel)``."""

    main: Callable[[Connection], int]


def start(spec: LaunchSpec) -> PidfdHandle:
    payload = spec.settings.serializer.dumps(spec.entry, what=spec.what)
    conn, handle = _SPARES.take()
    with launch_errors(handle), conn:
        head = {
            "parent_pid": os.getpid(),
            "prep": preparation_data(),
            "env": dict(os.environ),
            "log": log_spec(),
            "quiet_refusal": spec.pool_worker,
        }
        conn.send(_with_stdio(head))
        conn.send_payload(payload)
    return handle


def _with_stdio(head: dict[str, Any]) -> dict[str, Any]:
    """Carry our *current* fds 0-2, so a child started after a redirect writes where we do."""
    from .._serialize import fd_handle

    stdio = [None if fd is None else fd_handle(fd) for fd in open_stdio()]
    head["stdio"] = stdio
    return head


def _boot_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that act when an interpreter boots; only these make a spare stale."""
    return {k: v for k, v in env.items() if k.startswith(("PYTHON", "LD_", "MALLOC"))}


class _Spares:
    """Interpreters booted ahead of need, so a spawn start costs a message, not a boot.

    A spare has imported polyproc and waits on its socket with PDEATHSIG set; it is
    used only if the boot-time environment it started with (PYTHON*, LD_*) is still
    ours. Each use starts a replacement at once, which boots while the caller goes on;
    ``POLYPROC_SPAWN_SPARES`` sets how many are kept (default 1; 0 turns this off).
    Two overlapping boots did not help back-to-back starts on a loaded 2-core machine.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spares: list[tuple[Connection, PidfdHandle, dict[str, str]]] = []

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        for conn, handle, _ in self.spares:
            conn.close()
            handle.close()
        self.spares = []

    @staticmethod
    def wanted() -> int:
        try:
            return max(0, int(os.environ.get("POLYPROC_SPAWN_SPARES", "1")))
        except ValueError:
            return 1

    def take(self) -> tuple[Connection, PidfdHandle]:
        wanted = self.wanted()
        if wanted == 0:
            return spawn_interpreter("polyproc-spawn")
        env = _boot_env(os.environ)
        chosen: tuple[Connection, PidfdHandle] | None = None
        stale = []
        with self.lock:
            while self.spares and chosen is None:
                conn, handle, boot_env = self.spares.pop(0)  # the oldest is the most booted
                if boot_env == env and handle.poll() is None:
                    chosen = (conn, handle)
                else:
                    stale.append((conn, handle))
            missing = wanted - len(self.spares)
        for conn, handle in stale:
            conn.close()  # it exits on EOF
            handle.wait(5.0)
            handle.close()
        if chosen is None:
            chosen = spawn_interpreter("polyproc-spawn")
        for _ in range(missing):
            conn, handle = spawn_interpreter("polyproc-spare")
            with self.lock:
                self.spares.append((conn, handle, env))
        return chosen


_SPARES = _Spares()
os.register_at_fork(after_in_child=_SPARES.after_fork_in_child)


@functools.cache
def _interpreter_flags() -> tuple[str, ...]:
    """This interpreter's flags (``-E -S -O -X ...``), for the child: the stdlib passes them too."""
    import subprocess

    return tuple(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


def spawn_interpreter(tag: str) -> tuple[Connection, PidfdHandle]:
    """Start ``python -c <boot>`` with one end of a socketpair as its fd 3."""
    from .._connection import Connection
    from .._transport import UnixStream, socketpair
    from .thread import on_launcher_thread

    ours, theirs = socketpair()
    fd = theirs.fileno()
    spare = None
    if fd == 3:  # dup2(3, 3) would leave close-on-exec set and the child would lose it
        spare = os.dup(fd)
        fd = spare
    argv = [
        sys.executable,
        *_interpreter_flags(),
        "-c",
        _BOOT.format(path=_PACKAGE_PARENT),
        tag,
        str(os.getpid()),
    ]
    try:
        pid = on_launcher_thread(
            # SIGINT blocked from the first instruction: a Ctrl+C that lands while the
            # interpreter boots must not print a traceback (child_main unblocks it).
            lambda: os.posix_spawn(
                sys.executable,
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, 3)],
                setsigmask=[signal.SIGINT],
            )
        )
    finally:
        theirs.close()
        if spare is not None:
            os.close(spare)
    handle = PidfdHandle(pid, os.pidfd_open(pid))
    return Connection(UnixStream(ours.detach())), handle


def child_main(fd: int) -> None:
    """The spawned interpreter's main (``_BOOT``; ``fd`` is the socket to the parent).

    Prepare, receive the entry (or a Role), run it.
    """
    from .._connection import Connection
    from .._transport import UnixStream

    # Ctrl+C reaches the whole process group: an idle spare, or a child still being
    # prepared, is the parent's business and must not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # a pending one is dropped
    conn = Connection(UnixStream(fd))
    head: dict[str, Any] = {}
    try:
        die_with_parent(int(sys.argv[2]))
        if sys.argv[1] == "polyproc-spare":
            set_comm("polyproc-spare")  # an idle spare is not a leaked child (tests/conftest.py)
        head = conn.recv()
        for std, fd in enumerate(head.get("stdio", ())):
            if fd is not None:
                os.dup2(fd, std)
                os.close(fd)
        if "env" in head:  # the spare booted with an older environment
            os.environ.clear()
            os.environ.update(head["env"])
        prepare(head["prep"])
        install_log_forwarding(head.get("log"))
        obj: Any = conn.recv()
    except EOFError:  # the parent gave up on us (it died, or the launch failed)
        os._exit(70)
    except BaseException as exc:
        refused = is_refusal(exc)
        if refused:
            try:  # a forkserver being started waits for this: it raises it, once
                conn.send(("polyproc-refused", BOOTSTRAP_ERROR))
            except OSError:
                pass
            if head.get("quiet_refusal"):
                # A pool worker, or the forkserver: the parent raises this error once,
                # where the program can catch it; N children printing it would bury it.
                os._exit(REFUSED_EXIT)
        import traceback

        sys.stderr.write("polyproc: a spawned child could not be prepared:\n")
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if isinstance(obj, Role):
        code = obj.main(conn)
    else:
        entry: Callable[[], int] = obj
        conn.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = entry()
    sys.exit(code)
