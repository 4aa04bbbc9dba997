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
    └── BrokenBarrierError(threading.BrokenBarrierError)

``RemoteTraceback`` is not raised: it is attached as ``__cause__`` of an exception
re-raised from a worker, so the worker's traceback prints under the parent's.

OS errors become these at the edges where bytes meet the kernel: the streams in
``_transport`` (for ``Connection``/``Listener``) and the launchers. Not yet only
there: the pool's channel and worker, the manager's wire, loop and gate, ``Queue``
and shared memory do some of their own I/O and catch ``OSError`` beside it (issue
10 gathers that into ``_transport``).
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


class PoolClosedError(PolyprocError, ValueError):
    """Work was submitted to a pool after ``close()``/``shutdown()``."""


class RemoteError(PolyprocError):
    """A call on a manager's server failed there; the text is the server's traceback."""

    def __str__(self) -> str:
        return "\n" + "-" * 75 + "\n" + str(self.args[0]) + "-" * 75


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
