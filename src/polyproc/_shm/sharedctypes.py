"""Value, Array, RawValue, RawArray: ctypes objects living in shared memory.

``RawValue('d', 1.5)`` is a real ``ctypes.c_double`` whose bytes sit in a heap
block (``heap.allocate``). Its class is a tiny subclass of the ctypes type made
once per type (``_shared_type``) that only adds ``__reduce__`` (and a stdlib-like
``repr``), so the object pickles as its block: under spawn/forkserver, through a
Pipe or a Queue, the memfd travels by SCM_RIGHTS and the receiver sees the same
bytes. Under fork the mapping is simply inherited.

``Value``/``Array`` wrap that object with a lock (an ``RLock`` by default, as in
the stdlib): ``Synchronized``, ``SynchronizedArray``, ``SynchronizedString``
(c_char arrays: ``.value``/``.raw``), or a per-Structure wrapper whose field
properties take the lock. Those locked attributes are ``_sync._sem.locked_attr``
descriptors: one C call each with the extension (so the lock is held for less
time), a property otherwise.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, cast

from .._sync._sem import locked_attr
from .heap import Block, allocate

__all__ = [
    "RawValue",
    "RawArray",
    "Value",
    "Array",
    "synchronized",
    "copy",
    "Synchronized",
    "SynchronizedArray",
    "SynchronizedString",
    "typecode_to_type",
]

typecode_to_type: dict[str, type[Any]] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}


def _ctype(typecode_or_type: Any) -> type[Any]:
    """The ctypes type for a typecode or a ctypes type; TypeError that lists the typecodes."""
    if isinstance(typecode_or_type, str):
        t = typecode_to_type.get(typecode_or_type)
        if t is None:
            raise TypeError(
                f"bad typecode {typecode_or_type!r}: expected one of "
                f"{''.join(typecode_to_type)!r} or a ctypes type"
            )
        return t
    try:
        ctypes.sizeof(typecode_or_type)
    except TypeError:
        raise TypeError(
            f"bad type {typecode_or_type!r}: expected a typecode or a ctypes type"
        ) from None
    return cast(type[Any], typecode_or_type)


def _base_repr(obj: Any) -> str:
    base = _plain_type(type(obj))
    if issubclass(base, ctypes._SimpleCData):
        return f"{base.__name__}({obj.value!r})"
    return f"<polyproc.sharedctypes.{base.__name__} object at {ctypes.addressof(obj):#x}>"


def _plain_type(t: type[Any]) -> type[Any]:
    return cast(type[Any], t.__dict__.get("_polyproc_base", t))


def _reduce_shared(obj: Any) -> tuple[Any, ...]:
    base = _plain_type(type(obj))
    if issubclass(base, ctypes.Array):
        return (_rebuild_array, (base._type_, base._length_, obj._polyproc_block))
    return (_rebuild_value, (base, obj._polyproc_block))


@functools.cache
def _shared_type(base: type[Any]) -> type[Any]:
    """``base`` plus ``__reduce__``: made once per ctypes type."""
    return type(
        base.__name__,
        (base,),
        {
            "__reduce__": _reduce_shared,
            # copy.copy/deepcopy: a distinct object with the same contents, as the stdlib
            # (pickling by reference would alias the same shared memory instead).
            "__copy__": copy,
            "__deepcopy__": lambda self, memo: copy(self),
            "__repr__": _base_repr,
            "_polyproc_base": base,
            "__module__": "polyproc.sharedctypes",
        },
    )


def _at(base: type[Any], block: Block) -> Any:
    obj = _shared_type(base).from_buffer(block.arena.mm, block.offset)  # type: ignore[arg-type]
    obj._polyproc_block = block  # keeps the block (and its arena) alive with the object
    return obj


def _rebuild_value(base: type[Any], block: Block) -> Any:
    return _at(base, block)


def _rebuild_array(item: type[Any], length: int, block: Block) -> Any:
    return _at(item * length, block)


def _new(base: type[Any]) -> Any:
    return _at(base, allocate(ctypes.sizeof(base)))


def RawValue(typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802 - stdlib name
    """A ctypes object in shared memory, no lock."""
    base = _ctype(typecode_or_type)
    obj = _new(base)
    if args:
        base.__init__(obj, *args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
    """A ctypes array in shared memory, no lock; zero-filled, or copied from a sequence."""
    item = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, int):
        size = size_or_initializer
        init: Any = None
    else:
        init = list(size_or_initializer)
        size = len(init)
    if size < 0:
        raise ValueError(f"array size must be >= 0, not {size}")
    try:
        base = item * size
        nbytes = ctypes.sizeof(base)
    except (OverflowError, MemoryError) as exc:
        raise ValueError(f"an array of {size} {item.__name__} does not fit in memory") from exc
    _check_fits(nbytes, size, item)
    obj = _at(base, allocate(nbytes))
    if init is not None:
        if item is ctypes.c_char and init and isinstance(init[0], int):
            init = [bytes([b]) for b in init]
        base.__init__(obj, *init)
    return obj


def _check_fits(nbytes: int, size: int, item: type[Any]) -> None:
    if nbytes < 1 << 30:
        return
    import psutil

    limit = psutil.virtual_memory().total + psutil.swap_memory().total
    if nbytes > limit:
        raise ValueError(
            f"an array of {size} {item.__name__} ({nbytes} bytes) is larger than this "
            f"machine's memory ({limit} bytes)"
        )


def _make_lock(lock: Any, ctx: Any) -> Any:
    if lock is True or lock is None:
        from .._sync import RLock

        return RLock(ctx=ctx)
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:  # noqa: N802
    """A shared ctypes object, wrapped with a lock unless ``lock=False``."""
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _make_lock(lock, ctx))


def Array(
    typecode_or_type: Any,
    size_or_initializer: Any,
    *,
    lock: Any = True,  # noqa: N802
    ctx: Any = None,
) -> Any:
    """A shared ctypes array, wrapped with a lock unless ``lock=False``."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _make_lock(lock, ctx))


def copy(obj: Any) -> Any:
    """A new shared object with the same type and contents as ``obj``."""
    base = _plain_type(type(obj))
    new = _new(base)
    # A byte copy: ``pointer(new)[0] = obj`` refuses a plain ``base`` instance (the
    # shared object is of a subclass of it), and ``copy`` accepts plain ctypes objects.
    ctypes.memmove(ctypes.addressof(new), ctypes.addressof(obj), ctypes.sizeof(base))
    return new


class SynchronizedBase:
    """A shared ctypes object plus the lock that guards it."""

    def __init__(self, obj: Any, lock: Any = None, ctx: Any = None) -> None:
        self._obj = obj
        self._lock = lock if lock is not None else _make_lock(True, ctx)
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> Any:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple[Any, ...]:
        return (synchronized, (self._obj, self._lock))

    def get_obj(self) -> Any:
        """The raw shared ctypes object; using it bypasses the lock."""
        return self._obj

    def get_lock(self) -> Any:
        """The lock that guards the object (also used by ``with obj:``)."""
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj!r}>"


class Synchronized(SynchronizedBase):
    """A simple value: ``.value`` reads and writes under the lock."""

    value = locked_attr("value")


class SynchronizedArray(SynchronizedBase):
    """An array: indexing and slicing under the lock."""

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        with self._lock:
            return self._obj[i]

    def __setitem__(self, i: Any, v: Any) -> None:
        with self._lock:
            self._obj[i] = v

    def __iter__(self) -> Any:
        return iter(self[:])


class SynchronizedString(SynchronizedArray):
    """A ``c_char`` array: also ``.value`` (up to the first NUL) and ``.raw``."""

    value = locked_attr("value")
    raw = locked_attr("raw")


@functools.cache
def _struct_wrapper(base: type[Any]) -> type[SynchronizedBase]:
    """A Synchronized class for one Structure: one locked property per field (no exec)."""
    props = {name: locked_attr(name) for name, *_ in base._fields_}
    return type(f"Synchronized{base.__name__}", (SynchronizedBase,), props)


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> SynchronizedBase:
    """Wrap a shared ctypes object with ``lock`` (a new RLock if None)."""
    if isinstance(obj, SynchronizedBase):
        raise TypeError("object is already synchronized")
    base = _plain_type(type(obj))
    if issubclass(base, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if issubclass(base, ctypes.Array):
        if base._type_ is ctypes.c_char:  # type: ignore[comparison-overlap]
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    if issubclass(base, ctypes.Structure):
        return _struct_wrapper(base)(obj, lock, ctx)
    raise TypeError(f"cannot synchronize a {base.__name__}")
