"""What the engine and a pool worker say to each other, and how a task's failure travels.

One private channel per worker: a ``Pipe()`` socketpair. Each message is one
polyproc frame (``_protocol.framing``: header, pickle-5 body, out-of-band buffers,
fds) holding a plain tuple whose first item is one of the ints below (plain ints,
not an enum member: they are pickled on every message)::

    engine ──► worker   (TASKS, bid, fid, fn_blob | None, mode, packed, args)
                        (STOP,)
                        (GO,)   a standby worker becomes the pool's (standby.py)
    worker ──► engine   (READY, pid, start_rss)
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
from typing import Any

from .._serialize import fd_handle
from ..errors import MaybeEncodingError, RemoteTraceback, SerializationError

__all__ = [
    "JournalFd",
    "TASKS",
    "STOP",
    "READY",
    "INIT_FAILED",
    "RESULTS",
    "PARTIAL",
    "GO",
    "TaskError",
    "pickling_error",
    "unpickling_error",
    "encoding_error",
]

TASKS = 1
STOP = 2
READY = 3
INIT_FAILED = 4
RESULTS = 5
PARTIAL = 6
GO = 7


class TaskError:
    """A failed task's exception, as it travels and until someone asks for it."""

    __slots__ = ("blob", "tb", "desc", "_exc")

    def __init__(
        self, blob: bytes | None, tb: str, desc: str, exc: BaseException | None = None
    ) -> None:
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
        import traceback  # here: only a failing task needs it (a short script's import)

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
        blob = self.blob
        if blob is None and self._exc is not None:
            # A local error sent on (a map argument that did not pickle rides to its
            # worker in its task's place): the exception itself travels if it can.
            try:
                blob = pickle.dumps(self._exc, 5)
            except Exception:  # noqa: BLE001 - then the description says what it was
                blob = None
        return (TaskError, (blob, self.tb, self.desc))

    def exception(self) -> BaseException:
        """The exception to raise here, with the worker's traceback as its cause."""
        if self._exc is not None:
            return self._exc
        if self.blob is None:
            exc: BaseException = SerializationError(
                f"the task raised {self.desc}, which could not be pickled to send back"
            )
        else:
            try:
                exc = pickle.loads(self.blob)
                if not isinstance(exc, BaseException):
                    raise TypeError(f"not an exception: {type(exc).__name__}")
            except Exception as err:
                exc = SerializationError(
                    f"the task raised {self.desc}, which could not be unpickled here: {err!r}"
                )
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


def pickling_error(err: BaseException) -> BaseException:
    """The exception to raise for an object that would not pickle: the pickler's own.

    The serializer wraps what the pickler raised (``X``) in a ``SerializationError``
    whose message names the part that failed. The stdlib raises ``X`` itself (a
    ``TypeError`` for a lock, whatever a ``__reduce__`` raised), and code catches
    that, so ``X`` is what we raise, carrying our message as a note. A
    ``SerializationError`` of our own (an fd in a plain pickle) stays as it is.
    """
    cause = err.__cause__
    if type(err) is not SerializationError or not isinstance(cause, Exception):
        return err
    text = str(err)
    tail = f": {cause}"
    if text.endswith(tail):
        text = text[: -len(tail)]
    notes = getattr(cause, "__notes__", None)
    note = f"polyproc: {text}"
    if not notes or note not in notes:
        cause.add_note(note)
    return cause


def unpickling_error(exc: BaseException, fn_name: str) -> BaseException:
    """A task's error for a result that did not unpickle here: the unpickler's own exception.

    Only that task fails (the stdlib's executor breaks the whole pool). An exception
    that must not be raised in a user's thread as-is (``SystemExit``,
    ``KeyboardInterrupt`` from a ``__reduce__``) becomes a ``SerializationError``.
    """
    text = f"polyproc: a result of {fn_name} could not be unpickled here"
    if isinstance(exc, Exception):
        notes = getattr(exc, "__notes__", None)
        if not notes or text not in notes:
            exc.add_note(text)
        return exc
    err = SerializationError(f"{text[len('polyproc: ') :]}: {exc!r}")
    err.__cause__ = exc
    return err


def encoding_error(exc: BaseException, value: Any) -> MaybeEncodingError:
    """In a worker: the error for a result ``value`` that would not pickle (``exc``)."""
    err = pickling_error(exc)
    try:
        pickle.dumps(err, 5)
        travels: BaseException | None = err
    except Exception:  # noqa: BLE001
        travels = None
    wrapped = MaybeEncodingError(_safe_desc(err), _safe_desc(value), error=travels)
    wrapped.__cause__ = err  # the worker's traceback text then shows where pickling failed
    return wrapped


def _rebuild_fd(fd: int) -> JournalFd:
    return JournalFd(fd)


class JournalFd:
    """A journal's fd in a worker's start arguments: inherited as it is by a forked
    worker, received as the child's own copy (fd passing) by one started otherwise."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_fd, (fd_handle(self.fd),))
