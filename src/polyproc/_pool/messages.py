"""What the engine and a pool worker say to each other, and how a task's failure travels.

One private channel per worker: a ``Pipe()`` socketpair. Each message is one
polyproc frame (``_protocol.framing``: header, pickle-5 body, out-of-band buffers,
fds) holding a plain tuple whose first item is one of the ints below (plain ints,
not an enum member: they are pickled on every message)::

    engine ──► worker   (TASKS, bid, fid, fn_blob | None, mode, packed, args)
                        (STOP,)
    worker ──► engine   (READY, pid, start_rss, journal_fd | None)
                        (INIT_FAILED, TaskError)
                        (RESULTS, bid, busy_seconds, rss_bytes, values)
                        (PARTIAL, bid, values)   the first results of a batch (journal.py)

``fn_blob`` is the pickled function, sent only the first time a worker sees
``fid``; after that the worker's cache has it. A negative ``fid`` is a function the
worker must not keep (a bound method, a partial, a closure: caching it would keep
its objects alive after the task), so its blob comes with every batch. ``mode`` says how to call it
(``scheduler.Mode``). ``packed`` says how ``args`` unpickles: ``False`` → a list
of task arguments; ``True`` → a list of ``(body, buffers)`` already pickled by the
caller's thread (``apply``/``submit`` pickle there, so an unpicklable argument
fails at submit).

``TaskError`` stands in a results list where a task raised: it carries the pickled
exception and the worker's formatted traceback; the parent rebuilds the exception
lazily (in the thread that asks), with the traceback as its ``__cause__``. An
exception that cannot be pickled, or unpickled, still arrives as a clear error.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from ..errors import RemoteTraceback, SerializationError

__all__ = ["TASKS", "STOP", "READY", "INIT_FAILED", "RESULTS", "PARTIAL", "TaskError"]

TASKS = 1
STOP = 2
READY = 3
INIT_FAILED = 4
RESULTS = 5
PARTIAL = 6


class TaskError:
    """A failed task's exception, as it travels and until someone asks for it."""

    __slots__ = ("blob", "tb", "desc", "_exc")

    def __init__(self, blob: bytes | None, tb: str, desc: str,
                 exc: BaseException | None = None) -> None:
        self.blob = blob
        self.tb = tb
        self.desc = desc
        self._exc = exc

    @classmethod
    def local(cls, exc: BaseException) -> TaskError:
        """An error made in this process (a lost worker, a timeout): nothing to rebuild."""
        return cls(None, "", repr(exc), exc)

    @classmethod
    def capture(cls, exc: BaseException) -> TaskError:
        """In a worker: the exception pickled now (it may not pickle) and its traceback text."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        desc = _safe_desc(exc)
        try:
            blob: bytes | None = pickle.dumps(exc, 5)
        except Exception:
            try:
                import cloudpickle

                blob = cloudpickle.dumps(exc, 5)
            except Exception:
                blob = None
        return cls(blob, tb, desc)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskError, (self.blob, self.tb, self.desc))

    def exception(self) -> BaseException:
        """The exception to raise here, with the worker's traceback as its cause."""
        if self._exc is not None:
            return self._exc
        if self.blob is None:
            exc: BaseException = SerializationError(
                f"the task raised {self.desc}, which could not be pickled to send back")
        else:
            try:
                exc = pickle.loads(self.blob)
                if not isinstance(exc, BaseException):
                    raise TypeError(f"not an exception: {type(exc).__name__}")
            except Exception as err:
                exc = SerializationError(
                    f"the task raised {self.desc}, which could not be unpickled here: {err!r}")
        if self.tb:
            exc.__cause__ = RemoteTraceback(f'\n"""\n{self.tb}"""')
        self._exc = exc
        return exc

    def __repr__(self) -> str:
        return f"<TaskError {self.desc}>"


def _safe_desc(exc: BaseException) -> str:
    try:
        text = repr(exc)
    except Exception:
        text = f"<{type(exc).__name__}>"
    return text if len(text) < 300 else text[:297] + "..."
