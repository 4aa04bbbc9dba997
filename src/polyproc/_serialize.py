"""The serializer: pickle protocol 5, cloudpickle for code, buffers out of band, fds alongside.

One ``Serializer`` value travels in the ``Context``; nothing here is a mutable
module global (the stdlib swaps its reducer by rebinding module attributes).

A message is three parts, kept apart so the transport can send them without
copying them together::

    dumps(obj) -> Payload(body: bytes, buffers: [memoryview, ...], fds: [int, ...])

* ``body``: the pickle stream. Plain ``pickle`` first (fast, C); if that fails
  (a lambda, a closure, a class defined in a REPL) the cloudpickle pickler runs.
* ``buffers``: large contiguous buffers (NumPy arrays, bytearray, memoryview,
  PickleBuffer) handed out of band by protocol 5, so the sender never copies them
  into the stream; the transport writes them straight from their memory.
* ``fds``: file descriptors of objects that own one (a Connection, a shared
  memory segment, a lock's segment). Their ``__reduce__`` calls ``fd_handle(fd)``;
  the transport passes the fds with SCM_RIGHTS (or to a child at launch), and on
  the other side ``loads`` hands each back to the object being rebuilt. An fd that
  no rebuilt object claims is closed, so nothing leaks.

Functions defined in ``__main__`` go by reference when the child can import the
main module (as the stdlib does: ``__main__`` is ``__mp_main__`` there), and by
value (cloudpickle) when it cannot: a REPL, ``python -c``, a notebook.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

from .errors import SerializationError

__all__ = [
    "Payload",
    "Serializer",
    "fd_handle",
    "describe_unpicklable",
    "names_lost_main",
    "refuse_out_of_band",
    "DEFAULT_SERIALIZER",
    "register_reducer",
    "reducers",
]


class Payload:
    """One pickled message: the stream, its out-of-band buffers and the fds it carries.

    A plain class, not a dataclass: ``dataclasses`` (and the ``inspect`` it imports)
    would add ~9 ms to ``import polyproc``, which every spawned child pays.
    """

    __slots__ = ("body", "buffers", "fds")

    def __init__(
        self, body: bytes, buffers: list[memoryview] | None = None, fds: list[int] | None = None
    ) -> None:
        self.body = body
        self.buffers: list[memoryview] = [] if buffers is None else buffers
        self.fds: list[int] = [] if fds is None else fds

    def __eq__(self, other: object) -> bool:
        if type(other) is not Payload:
            return NotImplemented
        return (self.body, self.buffers, self.fds) == (other.body, other.buffers, other.fds)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"Payload(body={self.body!r}, buffers={self.buffers!r}, fds={self.fds!r})"

    @property
    def nbytes(self) -> int:
        return len(self.body) + sum(b.nbytes for b in self.buffers)


class _Reducers:
    """Reducers registered for types (``reduction.ForkingPickler.register``): process-wide.

    The one mutable registry of this module. Empty (the common case) costs nothing:
    plain ``pickle.dumps`` runs. Non-empty, every pickler polyproc uses (Pipe, Queue,
    pool, manager, the Process itself) gets them in its ``dispatch_table``.
    """

    def __init__(self) -> None:
        self.table: dict[type, Callable[[Any], Any]] = {}
        self.chain: Any = None

    def register(self, kind: type, reducer: Callable[[Any], Any]) -> None:
        import collections
        import copyreg

        self.table[kind] = reducer
        self.chain = collections.ChainMap(self.table, copyreg.dispatch_table)


reducers = _Reducers()


def register_reducer(kind: type, reducer: Callable[[Any], Any]) -> None:
    """Pickle instances of ``kind`` as ``reducer(obj)`` says, in every polyproc transport."""
    reducers.register(kind, reducer)


def _plain_dumps(
    obj: Any, protocol: int, cb: Callable[[pickle.PickleBuffer], bool] | None
) -> bytes:
    """``pickle.dumps``, with the registered reducers when there are any."""
    if not reducers.table:
        return pickle.dumps(obj, protocol, buffer_callback=cb)
    out = io.BytesIO()
    p = pickle.Pickler(out, protocol, buffer_callback=cb)
    p.dispatch_table = reducers.chain
    p.dump(obj)
    return out.getvalue()


class _FdTable(threading.local):
    """Per-thread: the fds being collected by ``dumps`` or handed out by ``loads``.

    Thread-local because two threads may pickle at once; each sees only its own.
    """

    collecting: list[int] | None = None
    receiving: list[int] | None = None
    claimed: set[int] | None = None


_fd_table = _FdTable()


class _FdHandle:
    """Stands for an fd inside a pickle stream; see ``fd_handle``."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[int], int], tuple[int]]:
        out = _fd_table.collecting
        if out is None:
            raise SerializationError(
                "an object owning a file descriptor (a lock, a connection, a shared "
                "segment) can only travel to a child process at start, or through a "
                "polyproc Pipe/Queue/pool, not into a plain pickle"
            )
        out.append(self.fd)
        return (_claim_fd, (len(out) - 1,))


def fd_handle(fd: int) -> Any:
    """Use inside ``__reduce__``: the fd travels beside the stream, the receiver gets its own copy.

    On unpickling the argument becomes an ``int``: a new fd owned by the receiver.
    """
    return _FdHandle(fd)


def _claim_fd(index: int) -> int:
    fds, claimed = _fd_table.receiving, _fd_table.claimed
    if fds is None or claimed is None or not 0 <= index < len(fds):
        raise SerializationError("a message refers to a file descriptor it did not carry")
    claimed.add(index)
    return fds[index]


def _rebuild_memoryview(buf: Any) -> memoryview:
    return memoryview(buf)


def _rebuild_socket(fd: int, family: int, kind: int, proto: int) -> Any:
    import socket

    return socket.socket(family, kind, proto, fileno=fd)


def _rebuild_bytes(buf: Any) -> bytes:
    return bytes(buf)  # the receiver's one copy: bytes are immutable, the buffer is not


def _rebuild_bytearray(buf: Any) -> bytearray:
    return buf if type(buf) is bytearray else bytearray(buf)


class _OutOfBand:
    """Stands in for a big bytes/bytearray so pickle hands its memory out of band.

    The C pickler writes bytes and bytearray into the stream itself (they are
    atoms to it: no reducer is ever asked), so ``_lift_big_bytes`` swaps them for
    this before pickling, and the sender copies nothing.
    """

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = _rebuild_bytes if type(self.value) is bytes else _rebuild_bytearray
        return (rebuild, (pickle.PickleBuffer(self.value),))


_SCAN_WIDTH = 256  # containers wider than this are not searched (the scan must stay cheap)


def _has_big_bytes(obj: Any, threshold: int, depth: int) -> bool:
    """Does a tuple/list/dict hold a big bytes/bytearray within ``depth`` levels? (hot path)"""
    if len(obj) > _SCAN_WIDTH:
        return False
    for x in obj.values() if type(obj) is dict else obj:
        t = type(x)
        if t is bytes or t is bytearray:
            if len(x) >= threshold:
                return True
        elif (
            (t is tuple or t is list or t is dict)
            and depth > 1
            and _has_big_bytes(x, threshold, depth - 1)
        ):
            return True
    return False


def _lift_big_bytes(obj: Any, threshold: int, depth: int = 3) -> Any:
    """``obj`` with big bytes/bytearray (to ``depth`` levels of tuple/list/dict) swapped
    for ``_OutOfBand``; the very same object when there are none (the common case)."""
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return _OutOfBand(obj) if len(obj) >= threshold else obj
    if depth == 0:
        return obj
    if kind is tuple or kind is list:
        if len(obj) > _SCAN_WIDTH:
            return obj
        items = [_lift_big_bytes(x, threshold, depth - 1) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return tuple(items) if kind is tuple else items
    if kind is dict:
        if len(obj) > _SCAN_WIDTH:
            return obj
        values = {k: _lift_big_bytes(v, threshold, depth - 1) for k, v in obj.items()}
        if all(values[k] is v for k, v in obj.items()):
            return obj
        return values
    return obj


class _RefusedOutOfBand(Exception):
    """Raised by ``refuse_out_of_band``."""


def refuse_out_of_band(buf: pickle.PickleBuffer) -> bool:
    """``buffer_callback`` for a one-call plain pickle of a hot path (a small ``send``, a
    task's argument): it gives up at the first buffer the full serializer would hand out
    of band, and the caller takes that full path (``except Exception``)."""
    raise _RefusedOutOfBand


class _MainCheck:
    """The last answer of ``_main_is_importable``, kept per main module object (hot path)."""

    main: object = None
    answer = False


_main_check = _MainCheck()


def names_lost_main(body: bytes) -> bool:
    """Does a plain pickle name something in a main module a child cannot import (a REPL's
    or ``python -c``'s function or class, by reference)? Then it must go by value
    (cloudpickle). Data that names nothing of it (a worker's READY, results, most
    arguments) loads anywhere, so such a program need not pay cloudpickle (a 26 ms import
    in every worker's first message) for it. A string that merely contains the name takes
    the slow path, correctly. ``find`` first: both names end in ``main__``, and on 3.11
    ``bytes.find`` is ~85 ns where each ``in`` is ~150 (it takes a buffer), 0.3 us of a
    ~2.7 us small ``send``."""
    return (
        body.find(b"main__") >= 0
        and (body.find(b"__main__") >= 0 or body.find(b"__mp_main__") >= 0)
        and not _main_is_importable()
    )


def _main_is_importable() -> bool:
    """Can a child re-import ``__main__`` (as ``__mp_main__``)? Not from a REPL or ``-c``."""
    main = sys.modules.get("__main__")
    check = _main_check
    if main is check.main and main is not None:
        return check.answer
    answer = _main_is_importable_uncached(main)
    check.main, check.answer = main, answer
    return answer


def _main_is_importable_uncached(main: Any) -> bool:
    if main is None:
        return False
    # Mirrors _launch.child.preparation_data: what it will not import, we must not name.
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", "__mp_main__"):
        return True
    # ``__file__`` is gone once the script has run (CPython deletes it); the loader knows.
    path = getattr(main, "__file__", None) or getattr(
        getattr(main, "__loader__", None), "path", None
    )
    return isinstance(path, str) and _is_script(path)


@functools.lru_cache(maxsize=8)
def _is_script(path: str) -> bool:
    """A real file a child can run (``python -`` sets ``__file__`` to ``<stdin>``)."""
    return not path.endswith(("ipython", "<stdin>")) and os.path.exists(path)


_MAIN_NAMES = ("__main__", "__mp_main__")


@functools.cache
def _have_cloudpickle() -> bool:
    """False under ``python -S`` or a trimmed install: plain pickle is then all we have."""
    import importlib.util

    return importlib.util.find_spec("cloudpickle") is not None


@functools.cache
def _pickler_class() -> type:
    """The cloudpickle-based pickler, built on first need: children that only receive
    plain pickles (the common case) never import cloudpickle, which keeps spawn fast."""
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        """cloudpickle, plus: memoryviews out of band, ``__main__`` code by reference when importable."""

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is memoryview:
                return (_rebuild_memoryview, (pickle.PickleBuffer(obj),))
            # A socket travels as its fd (the receiver gets its own copy), as the stdlib's
            # reduction registers it: a server can hand accepted connections to workers.
            # Reached only when plain pickle refused the object; not imported, not one.
            # The exact type, as a dispatch table would: an SSLSocket is more than its fd.
            plain = getattr(sys.modules.get("socket"), "socket", None)
            if plain is not None and type(obj) is plain and obj.fileno() >= 0:
                return (_rebuild_socket, (fd_handle(obj.fileno()), obj.family, obj.type, obj.proto))
            if isinstance(obj, (types.FunctionType, type)) and obj.__module__ in _MAIN_NAMES:
                if _main_is_importable() and _lookup(obj) is obj:
                    return NotImplemented  # plain save_global: ``__main__.name``
            return super().reducer_override(obj)

    return _Pickler


def _lookup(obj: Any) -> Any:
    mod = sys.modules.get(obj.__module__)
    target: Any = mod
    try:
        for part in obj.__qualname__.split("."):
            target = getattr(target, part)
    except AttributeError:
        return None
    return target


class Serializer:
    """How objects become bytes for another process. Immutable; carried by the Context.

    ``oob_threshold``: buffers at least this large leave the stream (protocol 5).
    (A frozen value written by hand: see ``Payload`` on why not a dataclass.)
    """

    __slots__ = ("protocol", "oob_threshold")
    protocol: int
    oob_threshold: int

    def __init__(self, protocol: int = 5, oob_threshold: int = 64 * 1024) -> None:
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "oob_threshold", oob_threshold)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Serializer is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Serializer is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Serializer)
        return (self.protocol, self.oob_threshold) == (other.protocol, other.oob_threshold)

    def __hash__(self) -> int:
        return hash((type(self), self.protocol, self.oob_threshold))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(protocol={self.protocol!r}, "
            f"oob_threshold={self.oob_threshold!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.protocol, self.oob_threshold))

    def dumps(self, obj: Any, *, what: str = "object") -> Payload:
        """Pickle ``obj``; raise ``SerializationError`` naming the part that failed."""
        buffers: list[memoryview] = []
        threshold = self.oob_threshold

        def keep_in_band(pb: pickle.PickleBuffer) -> bool:
            view = pb.raw()
            if view.nbytes < threshold:
                return True
            buffers.append(view)
            return False

        kind = type(obj)
        if kind is bytes or kind is bytearray:
            obj = _lift_big_bytes(obj, threshold)
        elif (kind is tuple or kind is list or kind is dict) and _has_big_bytes(obj, threshold, 3):
            obj = _lift_big_bytes(obj, threshold)
        outer = _fd_table.collecting
        fds: list[int] = []
        _fd_table.collecting = fds
        try:
            try:
                body = _plain_dumps(obj, self.protocol, keep_in_band)
                if names_lost_main(body) and _have_cloudpickle():
                    raise pickle.PicklingError("main is not importable: use cloudpickle")
            except SerializationError:
                raise
            except Exception:
                buffers.clear()
                fds.clear()
                body = self._dumps_cloud(obj, keep_in_band)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {what}: {describe_unpicklable(obj, what, self)}: {exc}"
            ) from exc
        finally:
            _fd_table.collecting = outer
        return Payload(body, buffers, fds)

    def _dumps_cloud(self, obj: Any, cb: Callable[[pickle.PickleBuffer], bool] | None) -> bytes:
        out = io.BytesIO()
        p = _pickler_class()(out, protocol=self.protocol, buffer_callback=cb)
        if reducers.table:
            import collections

            p.dispatch_table = collections.ChainMap(reducers.table, p.dispatch_table)
        p.dump(obj)
        return out.getbuffer().tobytes()

    def dumps_bytes(self, obj: Any, *, what: str = "object") -> bytes:
        """Pickle to one self-contained bytes (buffers in band, no fds): for storage and TCP."""
        try:  # plain pickle first: fast, and cloudpickle need not even be imported
            body = _plain_dumps(obj, self.protocol, None)
            if not names_lost_main(body):
                return body
        except Exception:
            pass
        try:
            return self._dumps_cloud(obj, None)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {what}: {describe_unpicklable(obj, what, self)}: {exc}"
            ) from exc

    def loads(
        self, body: bytes | memoryview, buffers: Sequence[Any] = (), fds: Sequence[int] = ()
    ) -> Any:
        """Unpickle; any fd carried but not claimed by a rebuilt object is closed."""
        if not fds:
            return pickle.loads(body, buffers=buffers)
        outer = (_fd_table.receiving, _fd_table.claimed)
        claimed: set[int] = set()
        _fd_table.receiving, _fd_table.claimed = list(fds), claimed
        try:
            return pickle.loads(body, buffers=buffers)
        finally:
            _fd_table.receiving, _fd_table.claimed = outer
            for i, fd in enumerate(fds):
                if i not in claimed:
                    try:
                        os.close(fd)
                    except OSError:
                        pass


DEFAULT_SERIALIZER = Serializer()


def _picklable(obj: Any, ser: Serializer) -> bool:
    try:
        ser.dumps(obj)
    except Exception:
        return False
    return True


def describe_unpicklable(obj: Any, path: str, ser: Serializer | None = None, depth: int = 0) -> str:
    """Find the innermost part of ``obj`` that fails to pickle and name it by its path.

    ``args[1]['lock'] (a _thread.lock)`` tells a user far more than pickle's own message.
    Only called on the failure path, so its cost does not matter.
    """
    ser = ser or DEFAULT_SERIALIZER
    if depth < 6:
        children: list[tuple[str, Any]] = []
        if isinstance(obj, (list, tuple)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        elif isinstance(obj, dict):
            children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType)):
            children = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
        for sub_path, value in children:
            if not _picklable(value, ser):
                return describe_unpicklable(value, sub_path, ser, depth + 1)
    kind = type(obj)
    return f"{path} (a {kind.__module__}.{kind.__qualname__})"
