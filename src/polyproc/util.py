"""``multiprocessing.util``: the helpers libraries reach for (finalizers, after-fork hooks, logging).

Code written for the stdlib calls ``multiprocessing.util.register_after_fork`` (to
re-create a lock or a connection pool in each child) and ``Finalize`` (to clean
up at exit, or when an object dies); it logs through ``get_logger()``. The same
names work here, with the stdlib's semantics:

* ``register_after_fork(obj, fn)``: ``fn(obj)`` runs in every polyproc child
  process as it starts (any start method; only objects that exist there, so in
  practice under ``fork``), in registration order, while ``obj`` is alive.
* ``Finalize(obj, callback, exitpriority=...)``: runs ``callback`` once: when
  ``obj`` is garbage collected, when called, or at exit (if ``exitpriority`` is
  not None; higher first, equal ones last-registered first), in the process that
  made it. A forked child starts with none (they are the parent's).
* ``get_logger()``: the ``'multiprocessing'`` logger, as the stdlib names it (so
  logging configuration written for the stdlib applies), not propagating to the
  root logger; ``log_to_stderr()`` adds the stdlib's ``[LEVEL/ProcessName]`` handler.

Layer 0 (imports nothing else of polyproc): the child's start and exit path
(``_launch.child``) calls ``_run_after_forkers`` and ``_exit_function`` here when
this module has been imported.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = [
    "sub_debug",
    "debug",
    "info",
    "sub_warning",
    "get_logger",
    "log_to_stderr",
    "get_temp_dir",
    "register_after_fork",
    "is_exiting",
    "Finalize",
    "ForkAwareThreadLock",
    "ForkAwareLocal",
    "close_all_fds_except",
    "SUBDEBUG",
    "SUBWARNING",
    "is_abstract_socket_namespace",
    "abstract_sockets_supported",
]

NOTSET = 0
SUBDEBUG = 5
DEBUG = 10
INFO = 20
SUBWARNING = 25
WARNING = 30
LOGGER_NAME = "multiprocessing"
DEFAULT_LOGGING_FORMAT = "[%(levelname)s/%(processName)s] %(message)s"


class _State:
    """This module's process-wide state (the one mutable holder here)."""

    def __init__(self) -> None:
        self.logger: logging.Logger | None = None
        self.exiting = False
        self.atexit_registered = False
        self.counter = itertools.count()
        self.finalizers: dict[tuple[Any, int], Finalize] = {}
        self.after_fork: weakref.WeakValueDictionary[tuple[int, int, Any], Any] = (
            weakref.WeakValueDictionary()
        )
        self.temp_dir: str | None = None


_state = _State()
# The stdlib's private names for the two registries (tests written for it read them):
# the very same objects, never rebound.
_finalizer_registry = _state.finalizers
_afterfork_registry = _state.after_fork


# -- logging ---------------------------------------------------------------------------------------


def sub_debug(msg: str, *args: Any) -> None:
    if _state.logger:
        _state.logger.log(SUBDEBUG, msg, *args, stacklevel=2)


def debug(msg: str, *args: Any) -> None:
    if _state.logger:
        _state.logger.log(DEBUG, msg, *args, stacklevel=2)


def info(msg: str, *args: Any) -> None:
    if _state.logger:
        _state.logger.log(INFO, msg, *args, stacklevel=2)


def sub_warning(msg: str, *args: Any) -> None:
    if _state.logger:
        _state.logger.log(SUBWARNING, msg, *args, stacklevel=2)


def get_logger() -> logging.Logger:
    """The ``multiprocessing`` logger (created on first call, not propagating, as the stdlib's)."""
    import logging

    if _state.logger is None:
        logging.addLevelName(SUBDEBUG, "SUBDEBUG")
        logging.addLevelName(SUBWARNING, "SUBWARNING")
        logger = logging.getLogger(LOGGER_NAME)
        logger.propagate = False
        _state.logger = logger
    return _state.logger


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Add a stderr handler with the stdlib's format to ``get_logger()``; set ``level`` if given."""
    import logging

    logger = get_logger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(DEFAULT_LOGGING_FORMAT))
    logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    return logger


# -- abstract sockets and temp dirs ----------------------------------------------------------------


def is_abstract_socket_namespace(address: object) -> bool:
    """Is ``address`` a Linux abstract AF_UNIX name (starts with a NUL)?"""
    if not address:
        return False
    if isinstance(address, bytes):
        return address[0] == 0
    if isinstance(address, str):
        return address[0] == "\0"
    raise TypeError(f"address type of {address!r} unrecognized")


abstract_sockets_supported = sys.platform == "linux"


def get_temp_dir() -> str:
    """A private temporary directory for this process, removed at exit."""
    if _state.temp_dir is None or not os.path.isdir(_state.temp_dir):
        import shutil
        import tempfile

        path = tempfile.mkdtemp(prefix="pymp-")
        Finalize(
            None, shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, exitpriority=-100
        )
        _state.temp_dir = path
    return _state.temp_dir


# -- after-fork hooks --------------------------------------------------------------------------------


def register_after_fork(obj: Any, func: Callable[[Any], object]) -> None:
    """Call ``func(obj)`` in each polyproc child as it starts, while ``obj`` lives."""
    _state.after_fork[(next(_state.counter), id(obj), func)] = obj


def _run_after_forkers() -> None:
    """Child side: forget the parent's finalizers, then run the after-fork hooks in order."""
    _state.finalizers.clear()
    _state.temp_dir = None  # the parent's: it removes it, not us
    for (_index, _ident, func), obj in sorted(_state.after_fork.items(), key=lambda kv: kv[0][0]):
        try:
            func(obj)
        except Exception as exc:
            info("after forker raised exception %s", exc)


# -- finalizers ------------------------------------------------------------------------------------


class Finalize:
    """Run ``callback(*args, **kwargs)`` once: when ``obj`` dies, when called, or at exit."""

    def __init__(
        self,
        obj: Any,
        callback: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        exitpriority: int | None = None,
    ) -> None:
        if exitpriority is not None and not isinstance(exitpriority, int):
            raise TypeError(
                f"Exitpriority ({exitpriority!r}) must be None or int, not {type(exitpriority)}"
            )
        if obj is not None:
            self._weakref: Any = weakref.ref(obj, self)
        elif exitpriority is None:
            raise ValueError("Without object, exitpriority cannot be None")
        else:
            self._weakref = None
        self._callback: Callable[..., Any] | None = callback
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._key: tuple[Any, int] | None = (exitpriority, next(_state.counter))
        self._pid = os.getpid()
        _state.finalizers[self._key] = self
        if exitpriority is not None:
            _register_atexit()

    def __call__(self, wr: object = None) -> Any:
        """Run the callback now (once; later calls return None)."""
        try:
            if self._key is None:  # ran or cancelled already
                raise KeyError
            del _state.finalizers[self._key]
        except KeyError:
            sub_debug("finalizer no longer registered")
            return None
        callback = self._callback
        if callback is None or self._pid != os.getpid():
            res = None  # made in our parent before a fork: not ours to run
        else:
            sub_debug(
                "finalizer calling %s with args %s and kwargs %s",
                callback,
                self._args,
                self._kwargs,
            )
            res = callback(*self._args, **self._kwargs)
        self._weakref = self._callback = self._key = None
        self._args, self._kwargs = (), {}
        return res

    def cancel(self) -> None:
        """Forget the finalizer without running it."""
        try:
            if self._key is None:  # ran or cancelled already
                raise KeyError
            del _state.finalizers[self._key]
        except KeyError:
            pass
        else:
            self._weakref = self._callback = self._key = None
            self._args, self._kwargs = (), {}

    def still_active(self) -> bool:
        return self._key in _state.finalizers

    def __repr__(self) -> str:
        obj = self._weakref() if self._weakref is not None else None
        if self._callback is None:
            return "<Finalize object, dead>"
        name = getattr(self._callback, "__name__", self._callback)
        out = f"<{type(self).__name__} object, callback={name}"
        if obj is not None:
            out += f", object={obj!r}"
        if self._key is not None and self._key[0] is not None:
            out += f", exitpriority={self._key[0]}"
        return out + ">"


def _run_finalizers(minpriority: int | None = None) -> None:
    """Run finalizers with ``exitpriority >= minpriority`` (all with one if None), highest first."""
    if minpriority is None:

        def wanted(key: tuple[Any, int]) -> bool:
            return key[0] is not None
    else:

        def wanted(key: tuple[Any, int]) -> bool:
            return key[0] is not None and key[0] >= minpriority

    keys = sorted((k for k in list(_state.finalizers) if wanted(k)), reverse=True)
    for key in keys:
        finalizer = _state.finalizers.get(key)
        if finalizer is None:
            continue
        try:
            finalizer()
        except Exception:
            import traceback

            traceback.print_exc()
    if minpriority is None:
        _state.finalizers.clear()


def is_exiting() -> bool:
    """True once this process has begun its exit cleanup."""
    return _state.exiting


def _exit_function() -> None:
    """Exit cleanup of this module: finalizers with an exit priority, highest first."""
    if not _state.exiting:
        _state.exiting = True
        _run_finalizers(0)
        _run_finalizers()


def _register_atexit() -> None:
    if not _state.atexit_registered:
        _state.atexit_registered = True
        atexit.register(_exit_function)


def _after_fork_in_child() -> None:
    # A plain os.fork() child (not a polyproc Process) keeps the parent's finalizers
    # out of its exit: they check the pid they were made in.
    _state.exiting = False


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- fork-aware helpers ----------------------------------------------------------------------------


class ForkAwareThreadLock:
    """A ``threading.Lock`` that a polyproc child gets fresh (unlocked) as it starts."""

    def __init__(self) -> None:
        self._at_fork_reinit()
        register_after_fork(self, ForkAwareThreadLock._at_fork_reinit)

    def _at_fork_reinit(self) -> None:
        self._lock = threading.Lock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> None:
        self._lock.__exit__(*args)


class ForkAwareLocal(threading.local):
    """A ``threading.local`` emptied in a polyproc child as it starts."""

    def __init__(self) -> None:
        register_after_fork(self, lambda obj: obj.__dict__.clear())

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), ()


def close_all_fds_except(fds: Iterable[int]) -> None:
    """Close every fd of this process except ``fds``."""
    keep = sorted({-1, *fds, os.sysconf("SC_OPEN_MAX")})
    for lo, hi in itertools.pairwise(keep):
        os.closerange(lo + 1, hi)
