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
    │   └── StartError                                 a child could not be started
    ├── ProtocolError(OSError)                         garbage, torn or oversize frame on a wire
    │   └── CorruptMessageError(UnpicklingError)       a well-framed message that is not a pickle
    ├── ClosedResourceError(OSError)                   closed *by you*, then used
    ├── BrokenResourceError(OSError)                   broken *underneath you* (peer or server died)
    │   └── ManagerUnavailableError(ConnectionRefusedError)  no manager server answers there
    ├── BrokenProcessPool(concurrent.futures.BrokenExecutor)
    │   └── WorkerLostError                            a pool worker died holding a task
    ├── PoolClosedError(ValueError)                    work submitted to a closed pool
    ├── RemoteError                                    a manager call failed on the server
    │   └── MethodNotExposedError (also AttributeError) the method is not exposed
    └── BrokenBarrierError(threading.BrokenBarrierError)

``RemoteTraceback`` is not raised: it is attached as ``__cause__`` of an exception
re-raised from a worker, so the worker's traceback prints under the parent's.

OS errors become these only at the edges (transport, launch); nothing in between
catches ``OSError``.
"""

from __future__ import annotations

import builtins
import pickle
import threading
from concurrent.futures import BrokenExecutor

__all__ = [
    "PolyprocError",
    "ProcessError",
    "BufferTooShort",
    "AuthenticationError",
    "TimeoutError",
    "SerializationError",
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


class BrokenProcessPool(PolyprocError, BrokenExecutor):
    """A pool can no longer run work (the stdlib name, kept for ``except``)."""


class WorkerLostError(BrokenProcessPool):
    """A worker died while it held this task.

    Only the tasks that worker held fail; the pool replaces the worker and goes on.
    Attributes say what was lost: ``function``, ``index``, ``argument`` (a short
    repr), ``exitcode`` (negative: the signal), ``peak_rss`` in bytes or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        function: str | None = None,
        index: int | None = None,
        argument: str | None = None,
        exitcode: int | None = None,
        peak_rss: int | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.index = index
        self.argument = argument
        self.exitcode = exitcode
        self.peak_rss = peak_rss

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_worker_lost,
            (self.args[0] if self.args else "", self.function, self.index, self.argument,
             self.exitcode, self.peak_rss),
        )


def _rebuild_worker_lost(
    message: str, function: str | None, index: int | None, argument: str | None,
    exitcode: int | None, peak_rss: int | None,
) -> WorkerLostError:
    return WorkerLostError(message, function=function, index=index, argument=argument,
                           exitcode=exitcode, peak_rss=peak_rss)


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
