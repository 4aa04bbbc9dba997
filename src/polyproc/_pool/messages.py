"""What the engine and a pool worker say to each other, and how a task's failure travels.

One private channel per worker (a socketpair from ``Pipe()``), used as a byte
stream with our own frames so the engine can read and write it without blocking::

    engine ──► worker   (TASKS, bid, fid, fn_bytes | None, mode, packed, args_body)  + buffers
                        (STOP,)
    worker ──► engine   (READY, pid)
                        (INIT_FAILED, TaskError)
                        (RESULTS, bid, busy_seconds, rss_bytes, values_body)        + buffers

A frame is ``<I nbuf><Q body_len>``, ``nbuf`` × ``<Q buf_len>``, the body (a pickle
of the message tuple), then the out-of-band buffers (pickle protocol 5), so a large
NumPy argument is written from its own memory rather than copied into the stream.

``packed`` says how ``args_body`` unpickles: ``False`` → a list of task arguments;
``True`` → a list of already-pickled arguments (``apply``/``submit`` pickle theirs in
the caller's thread, so an unpicklable argument fails at submit).

``TaskError`` stands in a results list where a task raised: it carries the pickled
exception and the worker's formatted traceback; the parent rebuilds the exception
lazily (in the thread that asks), with the traceback as its ``__cause__``. An
exception that cannot be pickled, or unpickled, still arrives as a clear error.
"""

from __future__ import annotations

import enum
import pickle
import struct
import traceback
from typing import Any

from ..errors import RemoteTraceback, SerializationError

__all__ = ["Msg", "TaskError", "HEADER", "BUFLEN", "encode_frame", "FrameReader"]


class Msg(enum.IntEnum):
    TASKS = 1
    STOP = 2
    READY = 3
    INIT_FAILED = 4
    RESULTS = 5


HEADER = struct.Struct("<IQ")
BUFLEN = struct.Struct("<Q")


def encode_frame(msg: tuple[Any, ...], buffers: list[memoryview] | None = None) -> list[Any]:
    """The frame for ``msg`` as a list of byte chunks (write them in order, or join them)."""
    body = pickle.dumps(msg, 5)
    bufs = buffers or []
    head = HEADER.pack(len(bufs), len(body))
    if bufs:
        head += b"".join(BUFLEN.pack(b.nbytes) for b in bufs)
        return [head, body, *bufs]
    return [head + body]


class FrameReader:
    """Sans-IO frame decoder: ``feed(bytes)``, then ``frames()`` yields ``(msg, buffers)``."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def frames(self) -> list[tuple[Any, list[bytes]]]:
        out: list[tuple[Any, list[bytes]]] = []
        buf, pos, end = self._buf, self._pos, len(self._buf)
        mv = memoryview(buf)
        try:
            while end - pos >= HEADER.size:
                nbuf, blen = HEADER.unpack_from(buf, pos)
                hdr = HEADER.size + nbuf * BUFLEN.size
                if end - pos < hdr:
                    break
                lens = [BUFLEN.unpack_from(buf, pos + HEADER.size + i * BUFLEN.size)[0]
                        for i in range(nbuf)]
                total = hdr + blen + sum(lens)
                if end - pos < total:
                    break
                p = pos + hdr
                msg = pickle.loads(mv[p:p + blen])
                p += blen
                bufs = []
                for n in lens:
                    bufs.append(bytes(mv[p:p + n]))
                    p += n
                out.append((msg, bufs))
                pos += total
        finally:
            mv.release()
        self._pos = pos
        return out


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
