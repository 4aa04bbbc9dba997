"""``ShareableList``: a fixed-length list of scalars in one SharedMemory, in the stdlib's layout.

The layout is the stdlib's byte for byte, so a list made here can be attached
(``ShareableList(name=...)``) by a process using ``multiprocessing.shared_memory``
and the other way round. All fields are native-endian, 8-byte aligned::

    q                  n, the number of items
    q * (n + 1)        end offset of each item's slot in the data area (first is 0)
    data               each item packed with its format (ints 'q', floats 'd',
                       bool 'xxxxxxx?', None 'xxxxxx?x', str/bytes '<k>s', k a
                       multiple of 8 above the encoded length at creation)
    8s * n             each item's current format, NUL-padded
    b * n              how to turn the unpacked value back (0 as is, 1 decode str,
                       2 strip bytes, 3 None)

A slot never grows: assigning a str/bytes longer than its slot raises
``ValueError("... exceeds available storage")``; any scalar fits any slot.
Pickles by name: the receiver attaches to the same memory.
"""

from __future__ import annotations

import functools
import struct
import types
from collections.abc import Iterable, Iterator
from typing import Any

from .shared_memory import SharedMemory

__all__ = ["ShareableList"]

_ENCODING = "utf8"
_ALIGN = 8
_SCALAR_FORMATS: dict[type, str] = {int: "q", float: "d", bool: "xxxxxxx?", type(None): "xxxxxx?x"}
_AS_IS, _STR, _BYTES, _NONE = 0, 1, 2, 3


def _format_of(item: Any) -> str:
    if isinstance(item, (str, bytes)):
        # The stdlib sizes a str's slot by its length in characters; one whose UTF-8
        # is longer than that slot gets a bigger one here (the stdlib truncates it).
        slot = _ALIGN * (len(item) // _ALIGN + 1)
        encoded = len(item.encode(_ENCODING)) if isinstance(item, str) else len(item)
        if encoded > slot:
            slot = _ALIGN * (encoded // _ALIGN + 1)
        return f"{slot}s"
    try:
        return _SCALAR_FORMATS[type(item)]
    except KeyError:
        raise TypeError(
            f"ShareableList items must be int, float, bool, None, str or bytes, "
            f"not {type(item).__name__}"
        ) from None


def _code_of(item: Any) -> int:
    if isinstance(item, str):
        return _STR
    if isinstance(item, bytes):
        return _BYTES
    return _NONE if item is None else _AS_IS


def _back(code: int, raw: Any) -> Any:
    if code == _STR:
        return raw.rstrip(b"\0").decode(_ENCODING)
    if code == _BYTES:
        return raw.rstrip(b"\0")
    return None if code == _NONE else raw


class ShareableList:
    """``multiprocessing.shared_memory.ShareableList``."""

    __module__ = "polyproc.shared_memory"  # its public home: repr, pickle

    def __init__(self, sequence: Iterable[Any] | None = None, *, name: str | None = None) -> None:
        if name is None or sequence is not None:
            items = list(sequence or ())
            formats = [_format_of(x) for x in items]
            self._n = len(items)
            ends = [0]
            for fmt in formats:
                ends.append(ends[-1] + (int(fmt[:-1]) if fmt[-1] == "s" else _ALIGN))
            self._ends = ends
            size = 8 * (self._n + 2) + ends[-1] + 8 * self._n + self._n
            self.shm = SharedMemory(name, create=True, size=size)
            buf = self.shm.buf
            struct.pack_into("q" * (self._n + 2), buf, 0, self._n, *ends)
            struct.pack_into(
                "".join(formats),
                buf,
                self._data,
                *(x.encode(_ENCODING) if isinstance(x, str) else x for x in items),
            )
            struct.pack_into(
                "8s" * self._n, buf, self._formats, *(f.encode(_ENCODING) for f in formats)
            )
            struct.pack_into("b" * self._n, buf, self._codes, *(_code_of(x) for x in items))
        else:
            self.shm = SharedMemory(name)
            self._n = len(self)
            self._ends = list(struct.unpack_from("q" * (self._n + 1), self.shm.buf, 8))

    # -- where things are --------------------------------------------------------------
    @property
    def _data(self) -> int:
        return 8 * (self._n + 2)

    @property
    def _formats(self) -> int:
        return self._data + self._ends[-1]

    @property
    def _codes(self) -> int:
        return self._formats + 8 * self._n

    def _position(self, i: int) -> int:
        j = i + self._n if i < 0 else i
        if not 0 <= j < self._n:
            raise IndexError("index out of range")
        return j

    def _get_packing_format(self, i: int) -> str:
        j = self._position(i)
        raw = struct.unpack_from("8s", self.shm.buf, self._formats + 8 * j)[0]
        return str(raw.rstrip(b"\0").decode(_ENCODING))

    # -- the list ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(struct.unpack_from("q", self.shm.buf, 0)[0])

    def __getitem__(self, i: int) -> Any:
        j = self._position(i)
        buf = self.shm.buf
        (raw,) = struct.unpack_from(self._get_packing_format(j), buf, self._data + self._ends[j])
        return _back(struct.unpack_from("b", buf, self._codes + j)[0], raw)

    def __setitem__(self, i: int, value: Any) -> None:
        try:
            j = self._position(i)
        except IndexError:
            raise IndexError("assignment index out of range") from None
        current = self._get_packing_format(j)
        if isinstance(value, (str, bytes)):
            room = self._ends[j + 1] - self._ends[j]
            encoded: Any = value.encode(_ENCODING) if isinstance(value, str) else value
            if len(encoded) > room:
                raise ValueError("bytes/str item exceeds available storage")
            fmt = current if current[-1] == "s" else f"{room}s"
        else:
            fmt = _format_of(value)
            encoded = value
        buf = self.shm.buf
        struct.pack_into(fmt, buf, self._data + self._ends[j], encoded)
        struct.pack_into("8s", buf, self._formats + 8 * j, fmt.encode(_ENCODING))
        struct.pack_into("b", buf, self._codes + j, _code_of(value))

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(self._n))

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(type(self), name=self.shm.name), ())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The ``struct`` format of all items, concatenated."""
        return "".join(self._get_packing_format(i) for i in range(self._n))

    def count(self, value: Any) -> int:
        """How many items equal ``value``."""
        return sum(value == x for x in self)

    def index(self, value: Any) -> int:
        """The position of the first item equal to ``value``; ``ValueError`` if none."""
        for i, x in enumerate(self):
            if value == x:
                return i
        raise ValueError(f"{value!r} not in this container")

    __class_getitem__: Any = classmethod(types.GenericAlias)
