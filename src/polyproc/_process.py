"""Process: the stdlib's ``multiprocessing.Process``, on our launchers.

::

    Process.start() ──► LaunchSpec(entry=_Entry(process), settings)
                    ──► LAUNCHERS[start_method].start(spec) ──► ChildHandle(pid, sentinel)
                                                                     │
    child: _launch.child / fork / forkserver ──► spec.entry() = run_in_child(process) ──► exit code
    join()/is_alive()/exitcode ◄── ChildHandle.wait/poll (pidfd or status pipe)

``_launch`` never imports this module: it is handed a ``LaunchSpec`` whose entry
point is ``run_in_child`` bound to the Process (pickled by reference, so a spawned
child imports us when it unpickles the entry), which keeps the import graph a tree.

Per-process state (who am I, who is my parent, my children, the counter that
numbers them, the authkey) lives in one holder, ``_STATE``, reset in each child.
Names follow the stdlib: ``Process-N`` and ``Process-N:M`` for a child's child.

Logging: the stdlib's ``LogRecord`` reads ``processName`` from the stdlib
package, which we never import; in each child we install a record factory that
fills it from ``current_process()``, so ``%(processName)s`` just works.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._context import Settings, default_context, get_context
from ._importhook import when_imported
from ._parent import ParentProcess
from ._serialize import DEFAULT_SERIALIZER

if TYPE_CHECKING:
    import logging
    from types import ModuleType

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
    "process_class",
    "run_in_child",
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

    __module__ = "polyproc.process"  # its public home: repr, pickle

    _start_method: str | None = None  # None: the default context at start()
    _ctx: Settings | None = None

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
        kind = (
            "Process"
            if type(self) in _OURS or type(self).__module__ == __name__
            else type(self).__name__
        )
        self._name = name or f"{kind}-" + ":".join(str(i) for i in self._identity)
        self._handle: ChildHandle | None = None
        self._closed = False

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
        # Imported here, not at the top: the launchers' package brings the launcher
        # thread's queue, and ``import polyproc`` is on the path of every spawned child.
        from ._launch import LaunchSpec, launcher_for

        ctx = self._context()
        self._config["start_method"] = ctx.start_method  # the child's default (stdlib parity)
        _cleanup()
        # A pool worker carries its pool's template (``_launch/template.py``, None where
        # there is none), set by the engine: the key alone says "a pool worker".
        pool_worker = "_polyproc_template" in self.__dict__
        template = self.__dict__.pop("_polyproc_template", None)
        # A pool's standby worker is started on its template's spare or not at all
        # (``_pool/standby.py``): the pool hands the launch itself.
        launch = self.__dict__.pop("_polyproc_launch", None)
        spec = LaunchSpec(
            _Entry(self),
            f"the Process {self.name!r} (its target, args and kwargs)",
            ctx,
            template,
            pool_worker,
        )
        # Its pid is read from the handle when asked: a pool's first worker, forked by
        # the pool's template, has one only once the template has said it (template.py).
        self._handle = (launch or launcher_for(ctx.start_method).start)(spec)
        if not getattr(self._handle, "forked_later", False):
            self._drop_target()
        with _STATE.lock:
            _STATE.children.add(self)
            if not _STATE.atexit_registered:
                _STATE.atexit_registered = True
                atexit.register(_exit_function)

    def _drop_target(self) -> None:
        """The child has its own copy: drop ours, so big arguments are freed (as the
        stdlib does). Not yet for a pool's first worker that its template forks after
        ``start()`` returns (template.py): the pool calls this once it is forked."""
        self._target = None
        self._args = ()
        self._kwargs = {}

    def _context(self) -> Settings:
        if self._ctx is not None:
            return self._ctx
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
                raise ValueError(
                    "Cannot close a process while it is still running. "
                    "You should first call join() or terminate()."
                )
            self._handle.close()
            self._handle = None
        _STATE.children.discard(self)
        self._closed = True

    def _release_sentinel(self) -> None:
        """Close the sentinel of a child that has ended, keeping its exit code: for an
        owner that keeps the object after it is done with it (a manager's ``_process``,
        whose ``exitcode`` programs read after ``shutdown``), where ``close()`` would make
        every attribute raise."""
        if self._handle is not None and self._handle.poll() is not None:
            self._handle.close()

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
        handle = self._handle
        return None if handle is None else handle.pid

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
            status = (
                "started"
                if code is None
                else ("stopped" if code == 0 else f"stopped[{_code_name(code)}]")
            )
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


class Process(BaseProcess):
    """A process started with the default start method (see ``set_start_method``)."""

    __module__ = "polyproc"  # its public home: repr, pickle


class ForkProcess(Process):
    """A Process made by ``os.fork()`` of this process: fast, but may deadlock if it has threads."""

    __module__ = "polyproc.context"  # its public home: repr, pickle

    _start_method = "fork"


class SpawnProcess(Process):
    """A Process started as a fresh interpreter (slow; inherits nothing by accident)."""

    __module__ = "polyproc.context"  # its public home: repr, pickle

    _start_method = "spawn"


class ForkServerProcess(Process):
    """A Process forked from the forkserver, a clean single-threaded process."""

    __module__ = "polyproc.context"  # its public home: repr, pickle

    _start_method = "forkserver"


class AutoProcess(Process):
    """A Process started by ``auto``, the default: a fork where that is safe, else the forkserver."""

    __module__ = "polyproc.context"  # its public home: repr, pickle

    _start_method = "auto"


#: Our own Process classes: their children are named "Process-N", a user's "<Subclass>-N".
_OURS: frozenset[type[BaseProcess]] = frozenset(
    {BaseProcess, Process, ForkProcess, SpawnProcess, ForkServerProcess, AutoProcess}
)

_BY_METHOD: dict[str, type[Process]] = {
    "fork": ForkProcess,
    "spawn": SpawnProcess,
    "forkserver": ForkServerProcess,
    "auto": AutoProcess,
}


@functools.cache
def process_class(settings: Settings) -> type[Process]:
    """ForkProcess / SpawnProcess / ForkServerProcess / AutoProcess for ``settings`` (``ctx.Process``).

    Module-level classes, so they pickle; settings with a non-default serializer get
    a subclass carrying them.
    """
    base = _BY_METHOD[settings.start_method]
    if settings.serializer == DEFAULT_SERIALIZER:
        return base
    return type(base.__name__, (base,), {"_ctx": settings})


class _Entry:
    """``LaunchSpec.entry`` for a Process: ``run_in_child(process)``, pickled by reference.

    A small class rather than ``functools.partial``, so a pickling error can be traced
    into the Process's arguments (``describe_unpicklable`` walks ``vars()``).
    """

    def __init__(self, process: BaseProcess) -> None:
        self.process = process

    def __call__(self) -> int:
        return run_in_child(self.process)


def run_in_child(process: BaseProcess) -> int:
    """Become ``process`` in a new child and run it; return the exit code.

    The traceback of a failing target is printed here, in the child, under a
    ``Process <name>:`` line, and the exit code is 1; ``sys.exit(n)`` gives ``n``.
    """
    parent = ParentProcess(process._parent_name, process._parent_pid)
    _STATE.become_child(process, parent)
    from ._launch import child

    child.set_comm(process.name)
    _install_log_record_factory()
    _log_event("child process calling self.run()")
    code = 1
    try:
        try:
            child.begin(process._config.get("start_method") or process._context().start_method)
            process.run()
            code = 0
        finally:
            child.before_exit()
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
        child.finish()  # joins non-daemon threads: they may still put on queues
        queues = sys.modules.get("polyproc._queues")
        if queues is not None:
            queues.flush_all()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
    return code


def _log_event(msg: str, *args: object) -> None:
    """A child's life events (the stdlib's words) on the ``multiprocessing`` logger, as
    ``log_to_stderr()`` shows them: only when that logger has handlers of its own (set
    here, inherited by fork, or forwarding to the parent's), so a ``basicConfig`` at
    INFO does not fill with them. Without ``logging`` imported it has none."""
    logging = sys.modules.get("logging")
    if logging is None:
        return

    # util.LOGGER_NAME, not imported from there: a fork child would import util for it
    logger = logging.getLogger("multiprocessing")
    if logger.handlers and logger.isEnabledFor(logging.INFO):
        logger.info(msg, *args)


def _install_log_record_factory() -> None:
    """Make ``%(processName)s`` show our name in every record made in this process: now if
    ``logging`` is imported, else when it is (a child that never logs never imports it)."""
    when_imported("logging", _wrap_record_factory)


def _wrap_record_factory(module: ModuleType) -> None:
    previous = module.getLogRecordFactory()
    if isinstance(previous, _RecordFactory):
        return
    module.setLogRecordFactory(_RecordFactory(previous))


class _RecordFactory:
    """The log record factory in force before ours, with ``processName`` filled from us."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        import logging

        record = self.previous(*args, **kwargs)
        if logging.logMultiprocessing:
            record.processName = _STATE.current.name
        return record


def set_listed(process: BaseProcess, listed: bool) -> None:
    """List a started ``process`` in ``active_children()`` (and the exit's join), or not:
    a pool's standby worker is not one of the program's children until it is used."""
    with _STATE.lock:
        if listed:
            _STATE.children.add(process)
        else:
            _STATE.children.discard(process)


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


def get_logger() -> logging.Logger:
    """The ``multiprocessing`` logger, as the stdlib names it (see ``polyproc.util``)."""
    from .util import get_logger

    return get_logger()


def log_to_stderr(level: int | None = None) -> logging.Logger:
    """Send ``get_logger()`` to stderr with the stdlib's format (see ``polyproc.util``)."""
    from .util import log_to_stderr

    return log_to_stderr(level)


_STATE = _State()

# Objects of classes defined in __main__ that a spawn/forkserver child sends back are
# pickled as "__mp_main__.<name>" (the child runs our main under that name): make that
# name resolve here too, as the stdlib does.
sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
