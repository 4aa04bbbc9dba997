"""Every exception polyproc raises, in one tree.

Users catch multiprocessing's names (``ProcessError``, ``BufferTooShort``,
``AuthenticationError``, ``TimeoutError``) exactly as before; everything polyproc
adds hangs under the same root so ``except PolyprocError`` catches all of ours.
Where an error *means* a builtin, it also subclasses that builtin (the attrs
habit), so ``except TimeoutError`` and ``except ValueError`` keep working.

::

    PolyprocError
    ├── ProcessError
    │   ├── BufferTooShort
    │   ├── AuthenticationError
    │   ├── TimeoutError(builtins.TimeoutError)
    │   ├── SerializationError(pickle.PicklingError)   argument/result cannot be pickled
    │   │   └── MaybeEncodingError                     a task's result could not be sent back
    │   └── StartError                                 a child could not be started
    ├── ProtocolError(OSError)                         garbage, torn or oversize frame on a wire
    │   └── CorruptMessageError(UnpicklingError)       a well-framed message that is not a pickle
    ├── ClosedResourceError(OSError)                   closed *by you*, then used
    ├── BrokenResourceError(OSError)                   broken *underneath you* (peer or server died)
    │   └── ManagerUnavailableError(ConnectionRefusedError)  no manager server answers there
    ├── BrokenProcessPool(concurrent.futures.BrokenExecutor)   (and, once the stdlib's
    │   │                     concurrent.futures.process is imported, its BrokenProcessPool)
    │   └── WorkerLostError                            a pool worker died holding a task
    ├── PoolClosedError(ValueError)                    work submitted to a closed pool
    ├── RemoteError                                    a manager call failed on the server
    │   └── MethodNotExposedError (also AttributeError) the method is not exposed
    └── BrokenBarrierError(threading.BrokenBarrierError)

``RemoteTraceback`` is not raised: it is attached as ``__cause__`` of an exception
re-raised from a worker, so the worker's traceback prints under the parent's.

``except concurrent.futures.process.BrokenProcessPool`` must catch ours too, but
``except`` looks at the real MRO (an ABC ``__subclasscheck__`` is not consulted),
and importing that module loads the whole stdlib ``multiprocessing``, which
polyproc never does. So our ``BrokenProcessPool`` gets the stdlib class as a base
only when someone imports it: at our import if it is already loaded, else from a
one-shot ``sys.meta_path`` hook that fires when ``concurrent.futures.process``
finishes executing (``_pool_errors._adopt_stdlib_broken_pool``). A program that never imports
it loads nothing.

OS errors become these at one edge, where bytes meet the kernel: ``_transport``
(every stream, the one non-blocking writer, fd passing; tests/foundation/test_raw_io.py
keeps raw socket and pipe I/O there) and the launchers (``_launch``), which start
interpreters below it. A peer that went away is ``BrokenResourceError`` on a write
and end of stream on a read (so ``Connection.recv`` raises ``EOFError``, as the
stdlib's), a stream we closed is ``ClosedResourceError``; the services above
(Connection, Queue, the pool's channels, the manager) only ever see those. Both are
``OSError``, so code that catches ``OSError`` or ``BrokenPipeError``'s errno keeps
working. A deadline the caller set (``TimeoutError``), "try again" on a non-blocking
socket, and errors that are not about the peer (EMFILE, ENOMEM) pass through as the
``OSError`` they are.
"""

from __future__ import annotations

import builtins
import pickle
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._pool_errors import BrokenProcessPool as BrokenProcessPool
    from ._pool_errors import WorkerLostError as WorkerLostError

__all__ = [
    "PolyprocError",
    "ProcessError",
    "BufferTooShort",
    "AuthenticationError",
    "TimeoutError",
    "SerializationError",
    "MaybeEncodingError",
    "StartError",
    "ProtocolError",
    "CorruptMessageError",
    "ClosedResourceError",
    "BrokenResourceError",
    "ManagerUnavailableError",
    "BrokenProcessPool",
    "WorkerLostError",
    "PoolClosedError",
    "RemoteError",
    "MethodNotExposedError",
    "RemoteTraceback",
    "BrokenBarrierError",
]


class PolyprocError(Exception):
    """Root of every error polyproc raises itself."""


class ProcessError(PolyprocError):
    """multiprocessing's base error; kept so ``except ProcessError`` still works."""


class BufferTooShort(ProcessError):
    """``recv_bytes_into`` was given a buffer smaller than the message.

    ``args[0]`` is the whole message as bytes, as in the stdlib, so nothing is lost.
    """


class AuthenticationError(ProcessError):
    """The peer did not prove it knows the authkey (or we could not)."""


class TimeoutError(ProcessError, builtins.TimeoutError):
    """A blocking call ran past its timeout.

    Also the builtin ``TimeoutError`` so ``except TimeoutError`` catches it with or
    without ``from polyproc import TimeoutError``.
    """


class SerializationError(ProcessError, pickle.PicklingError):
    """An object could not be pickled for another process; the message names it."""


class MaybeEncodingError(SerializationError):
    """A task's result could not be pickled to send it back (``multiprocessing.pool``'s name).

    As in the stdlib, ``exc`` and ``value`` are the reprs of the pickling error and of
    the result, and ``str()`` reads ``Error sending result: '...'. Reason: '...'``.
    Also a ``SerializationError`` (so a ``pickle.PicklingError``). ``error`` is the
    pickling error itself when it could travel (``ProcessPoolExecutor`` raises that,
    as the stdlib's does), else ``None``.
    """

    def __init__(self, exc: object, value: object, *, error: BaseException | None = None) -> None:
        self.exc = exc if isinstance(exc, str) else repr(exc)
        self.value = value if isinstance(value, str) else repr(value)
        super().__init__(self.exc, self.value)
        self.error = error

    def __str__(self) -> str:
        return f"Error sending result: '{self.value}'. Reason: '{self.exc}'"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the reprs as they are: the stdlib's default reduce would repr them
        # again on the other side (quotes doubled).
        return (_rebuild_maybe_encoding, (self.exc, self.value, self.error))


def _rebuild_maybe_encoding(
    exc: str, value: str, error: BaseException | None
) -> MaybeEncodingError:
    return MaybeEncodingError(exc, value, error=error)


class StartError(ProcessError):
    """A child process could not be started (or died before it could run)."""


class ProtocolError(PolyprocError, OSError):
    """Bytes on a wire that are not a valid polyproc frame: garbage, torn or oversize."""


class CorruptMessageError(ProtocolError, pickle.UnpicklingError):
    """A well-framed message whose body is not a valid pickle (garbage inside a frame)."""


class ClosedResourceError(PolyprocError, OSError):
    """A connection, queue or pool was closed by this process and then used."""


class BrokenResourceError(PolyprocError, OSError):
    """The other side went away: a peer closed mid-message, a server died."""


class ManagerUnavailableError(BrokenResourceError, ConnectionRefusedError):
    """No manager server answers at an address: never started, shut down, or died.

    Also ``ConnectionRefusedError``, which is what the stdlib raises there, so the
    classic "retry until the remote manager is up" loop keeps working.
    """


class PoolClosedError(PolyprocError, ValueError):
    """Work was submitted to a pool after ``close()``/``shutdown()``."""


class RemoteError(PolyprocError):
    """A call on a manager's server failed there; the text is the server's traceback."""

    def __str__(self) -> str:
        return "\n" + "-" * 75 + "\n" + str(self.args[0]) + "-" * 75


class MethodNotExposedError(RemoteError, AttributeError):
    """A proxy called a method its managed object does not expose.

    A ``RemoteError`` (what the stdlib raises) and an ``AttributeError`` (what it means).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the ``__cause__`` of a re-raised error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class BrokenBarrierError(PolyprocError, threading.BrokenBarrierError):
    """A process ``Barrier`` was reset or aborted while parties waited on it."""


def __getattr__(name: str) -> Any:
    """``BrokenProcessPool`` and ``WorkerLostError`` load on first use (PEP 562).

    They subclass ``concurrent.futures.BrokenExecutor``, and importing
    ``concurrent.futures`` (with the ``logging`` it imports) would double the cost of
    ``import polyproc`` for programs, and spawned children, that use no pool.
    """
    if name in ("BrokenProcessPool", "WorkerLostError", "_rebuild_worker_lost"):
        from . import _pool_errors

        value = getattr(_pool_errors, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'polyproc.errors' has no attribute {name!r}")
