"""Process: the stdlib's ``multiprocessing.Process``, on our launchers.

::

    Process.start() ──► LAUNCHERS[start_method].start(process) ──► ChildHandle(pid, sentinel)
                                                                     │
    child: _launch.child / fork / forkserver ──► run_in_child(process) ──► exit code
    join()/is_alive()/exitcode ◄── ChildHandle.wait/poll (pidfd or status pipe)

Per-process state (who am I, who is my parent, my children, the counter that
numbers them, the authkey) lives in one holder, ``_STATE``, reset in each child.
Names follow the stdlib: ``Process-N`` and ``Process-N:M`` for a child's child.

Logging: the stdlib's ``LogRecord`` reads ``processName`` from the stdlib
package, which we never import; in each child we install a record factory that
fills it from ``current_process()``, so ``%(processName)s`` just works.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context
    from ._launch.handle import ChildHandle

__all__ = [
    "Process",
    "ForkProcess",
    "SpawnProcess",
    "ForkServerProcess",
    "AutoProcess",
    "ParentProcess",
    "current_process",
    "parent_process",
    "active_children",
    "log_to_stderr",
    "get_logger",
]


class _State:
    """Everything this process knows about itself. One instance; reset in each child."""

    def __init__(self) -> None:
        self.current: BaseProcess = _MainProcess()
        self.parent: ParentProcess | None = None
        self.children: set[BaseProcess] = set()
        self.counter = itertools.count(1)
        self.atexit_registered = False
        self.lock = threading.Lock()

    def become_child(self, process: BaseProcess, parent: ParentProcess) -> None:
        self.current = process
        self.parent = parent
        self.children = set()
        self.counter = itertools.count(1)
        self.atexit_registered = False
        self.lock = threading.Lock()


class BaseProcess:
    """The stdlib Process API. Subclass and override ``run``, or pass ``target``."""

    _start_method: str | None = None  # None: the default context at start()
    _ctx: Context | None = None

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        if group is not None:
            raise ValueError("group argument must be None for now")
        me = _STATE.current
        count = next(_STATE.counter)
        self._identity: tuple[int, ...] = (*me._identity, count)
        self._config: dict[str, Any] = {"authkey": me.authkey}
        self._config["daemon"] = me.daemon if daemon is None else bool(daemon)
        self._parent_pid = os.getpid()
        self._parent_name = me.name
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        # "Process-N" for ours (whatever the start method), "<Subclass>-N" for a user's.
        kind = "Process" if type(self).__module__ == __name__ else type(self).__name__
        self._name = name or f"{kind}-" + ":".join(str(i) for i in self._identity)
        self._handle: ChildHandle | None = None
        self._closed = False
        self._popen_pid: int | None = None

    # -- the stdlib API -------------------------------------------------------
    def run(self) -> None:
        """What the child does; by default call ``target(*args, **kwargs)``."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def start(self) -> None:
        """Launch the child. Arguments are pickled here, so a bad one fails here, whole."""
        self._check_closed()
        if self._handle is not None:
            raise AssertionError("cannot start a process twice")
        if self._parent_pid != os.getpid():
            raise AssertionError("can only start a process object created by current process")
        from ._launch import launcher_for

        ctx = self._context()
        _cleanup()
        self._handle = launcher_for(ctx.start_method).start(self, ctx)
        self._popen_pid = self._handle.pid
        # The child has its own copy; drop ours so big arguments are freed (as the stdlib does).
        self._target = None
        self._args = ()
        self._kwargs = {}
        with _STATE.lock:
            _STATE.children.add(self)
            if not _STATE.atexit_registered:
                _STATE.atexit_registered = True
                atexit.register(_exit_function)

    def _context(self) -> Context:
        if self._ctx is not None:
            return self._ctx
        from ._context import default_context, get_context

        return get_context(self._start_method) if self._start_method else default_context()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to end (at most ``timeout`` seconds)."""
        self._check_closed()
        if self._parent_pid != os.getpid():
            raise AssertionError("can only join a child process")
        if self._handle is None:
            raise AssertionError("can only join a started process")
        if self._handle.wait(timeout) is not None:
            _STATE.children.discard(self)

    def is_alive(self) -> bool:
        """True from ``start()`` until the child ends; False when asked from another process."""
        self._check_closed()
        if self is _STATE.current:
            return True
        if self._handle is None or self._parent_pid != os.getpid():
            return False
        if self._handle.poll() is None:
            return True
        _STATE.children.discard(self)
        return False

    def terminate(self) -> None:
        """SIGTERM the child."""
        self._check_closed()
        if self._handle is not None:
            self._handle.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child."""
        self._check_closed()
        if self._handle is not None:
            self._handle.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Release the sentinel; ValueError if the child still runs."""
        if self._closed:
            return
        if self._handle is not None:
            if self._handle.poll() is None:
                raise ValueError("Cannot close a process while it is still running. "
                                 "You should first call join() or terminate().")
            self._handle.close()
            self._handle = None
        _STATE.children.discard(self)
        self._closed = True

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    @property
    def name(self) -> str:
        """A label for logs and ``repr``; it has no meaning to the OS."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        self._name = name

    @property
    def daemon(self) -> bool:
        """Daemonic children are terminated, not joined, when their parent exits."""
        return bool(self._config.get("daemon", False))

    @daemon.setter
    def daemon(self, value: bool) -> None:
        if self._handle is not None:
            raise AssertionError("process has already started")
        self._config["daemon"] = bool(value)

    @property
    def authkey(self) -> bytes:
        """The key for Listener/Client and managers; children inherit their parent's."""
        return bytes(self._config["authkey"])

    @authkey.setter
    def authkey(self, value: bytes) -> None:
        self._config["authkey"] = bytes(value)

    @property
    def exitcode(self) -> int | None:
        """None while running; the exit status, or minus the signal that killed it."""
        self._check_closed()
        if self._handle is None:
            return None
        return self._handle.poll()

    @property
    def ident(self) -> int | None:
        """The pid (the child's once started, else None; our own for ``current_process()``).

        ``pid`` is the same property.
        """
        self._check_closed()
        if self is _STATE.current:
            return os.getpid()
        return self._popen_pid

    pid = ident

    @property
    def sentinel(self) -> int:
        """An fd that becomes readable when the child ends (for ``connection.wait``)."""
        self._check_closed()
        if self._handle is None:
            raise ValueError("process not started")
        return self._handle.sentinel

    def __repr__(self) -> str:
        if self is _STATE.current:
            status = "started"
        elif self._closed:
            status = "closed"
        elif self._handle is None:
            status = "initial"
        else:
            code = self._handle.poll()
            status = "started" if code is None else ("stopped" if code == 0 else f"stopped[{_code_name(code)}]")
        daemon = " daemon" if self.daemon else ""
        return f"<{type(self).__name__} name={self._name!r} parent={self._parent_pid} {status}{daemon}>"

    # -- travelling to the child ------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_config"] = dict(self._config)
        return state


def _code_name(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return str(code)


class _MainProcess(BaseProcess):
    """The process the user started: ``MainProcess``, identity ()."""

    def __init__(self) -> None:  # noqa: D107 - does not call super on purpose
        self._identity = ()
        self._config = {"authkey": os.urandom(32), "daemon": False}
        self._parent_pid = -1
        self._parent_name = ""
        self._target = None
        self._args = ()
        self._kwargs = {}
        self._name = "MainProcess"
        self._handle = None
        self._closed = False
        self._popen_pid = None


class Process(BaseProcess):
    """A process started with the default start method (see ``set_start_method``)."""


class ForkProcess(Process):
    """A Process made by ``os.fork()`` of this process: fast, but may deadlock if it has threads."""

    _start_method = "fork"


class SpawnProcess(Process):
    """A Process started as a fresh interpreter (slow; inherits nothing by accident)."""

    _start_method = "spawn"


class ForkServerProcess(Process):
    """A Process forked from the forkserver, a clean single-threaded process."""

    _start_method = "forkserver"


class AutoProcess(Process):
    """A Process started by ``auto``, the default: a fork where that is safe, else the forkserver."""

    _start_method = "auto"


class ParentProcess:
    """The parent as its child sees it: name, pid, and whether it still lives."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = self.ident = pid
        self.daemon = False
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    @property
    def sentinel(self) -> int:
        """A pidfd that becomes readable when the parent exits (for ``wait``)."""
        if self._pidfd is None:
            raise ValueError("parent is gone")
        return self._pidfd

    def is_alive(self) -> bool:
        """Whether the parent still runs (polled through its pidfd, no signals)."""
        from ._launch.handle import wait_fd

        return self._pidfd is not None and not wait_fd(self._pidfd, 0)

    def join(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for the parent to exit."""
        from ._launch.handle import wait_fd

        if self._pidfd is not None:
            wait_fd(self._pidfd, timeout)

    @property
    def exitcode(self) -> int | None:
        """Always None: a child cannot learn its parent's exit status."""
        return None

    def __repr__(self) -> str:
        return f"<ParentProcess name={self.name!r} pid={self.pid}>"


def run_in_child(process: BaseProcess) -> int:
    """Become ``process`` in a new child and run it; return the exit code.

    The traceback of a failing target is printed here, in the child, under a
    ``Process <name>:`` line, and the exit code is 1; ``sys.exit(n)`` gives ``n``.
    """
    parent = ParentProcess(process._parent_name, process._parent_pid)
    _STATE.become_child(process, parent)
    from ._launch.child import set_comm

    set_comm(process.name)
    _install_log_record_factory()
    _log_event("child process calling self.run()")
    code = 1
    try:
        try:
            process.run()
            code = 0
        finally:
            _exit_function()
            queues = sys.modules.get("polyproc._queues")
            if queues is not None:  # fork children leave by os._exit: write queue backlogs now
                queues.flush_all()
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            sys.stderr.write(str(exc.code) + "\n")
            code = 1
    except BaseException:
        code = 1
        import traceback

        sys.stderr.write(f"Process {process.name}:\n")
        traceback.print_exc()
    finally:
        _log_event("process exiting with exitcode %d", code)
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
    return code


def _log_event(msg: str, *args: object) -> None:
    """A child's life events (the stdlib's words) on the ``polyproc`` logger, as
    ``log_to_stderr()`` shows them: only when that logger has handlers of its own (set
    here, inherited by fork, or forwarding to the parent's), so a ``basicConfig`` at
    INFO does not fill with them."""
    import logging

    logger = logging.getLogger("polyproc")
    if logger.handlers and logger.isEnabledFor(logging.INFO):
        logger.info(msg, *args)


def _install_log_record_factory() -> None:
    """Make ``%(processName)s`` show our name in every record made in this process."""
    import logging

    previous = logging.getLogRecordFactory()
    if getattr(previous, "_polyproc", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if logging.logMultiprocessing:
            record.processName = _STATE.current.name
        return record

    factory._polyproc = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _cleanup() -> None:
    """Forget children that have ended (the stdlib's ``_cleanup``)."""
    for p in list(_STATE.children):
        if p._handle is not None and p._handle.poll() is not None:
            _STATE.children.discard(p)


def _exit_function() -> None:
    """At exit: terminate daemonic children, then join the others (stdlib semantics)."""
    children = [p for p in list(_STATE.children) if p._parent_pid == os.getpid()]
    for p in children:
        if p.daemon and p._handle is not None and p._handle.poll() is None:
            p._handle.send_signal(signal.SIGTERM)
    for p in children:
        if p._handle is not None:
            p._handle.wait(None)
    _STATE.children.clear()


def current_process() -> BaseProcess:
    """The Process object of the calling process (``MainProcess`` in the parent)."""
    return _STATE.current


def parent_process() -> ParentProcess | None:
    """The parent of the calling process, or None in the main process."""
    return _STATE.parent


def active_children() -> list[BaseProcess]:
    """Children still running; joins (reaps) those that have ended."""
    _cleanup()
    return list(_STATE.children)


def get_logger() -> Any:
    """The ``polyproc`` logger (the stdlib's is named ``multiprocessing``)."""
    import logging

    return logging.getLogger("polyproc")


def log_to_stderr(level: int | None = None) -> Any:
    """Send the ``polyproc`` logger to stderr with the stdlib's format."""
    import logging

    logger = get_logger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(levelname)s/%(processName)s] %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False  # as the stdlib's: its lines are not printed again by root's handlers
    if level:
        logger.setLevel(level)
    return logger


_STATE = _State()

# Objects of classes defined in __main__ that a spawn/forkserver child sends back are
# pickled as "__mp_main__.<name>" (the child runs our main under that name): make that
# name resolve here too, as the stdlib does.
sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
