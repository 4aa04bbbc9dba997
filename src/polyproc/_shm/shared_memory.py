"""``SharedMemory`` and ``ShareableList``, compatible with ``multiprocessing.shared_memory``.

A named segment is a file in /dev/shm (what ``shm_open`` does on Linux), made
with ``O_CREAT | O_EXCL`` and mapped with ``mmap``. The creator registers the
name with its tracker (``tracker``), which unlinks it if the creator exits or is
killed without calling ``unlink()``; ``unlink()`` unregisters it. Attaching
processes never unlink (and never warn, unlike the stdlib's resource tracker).

A SharedMemory also pickles by name, as the stdlib's does, so it travels
anywhere (even a plain pickle); the receiver attaches.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import struct
from typing import Any

from . import tracker

__all__ = ["SharedMemory", "ShareableList"]

_DIR = "/dev/shm"
_PREFIX = "psm_"


class SharedMemory:
    """A named shared memory block: ``name``, ``size``, ``buf``, ``close()``, ``unlink()``."""

    __module__ = "polyproc.shared_memory"  # its public home: repr, pickle

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0,
                 *, track: bool = True) -> None:
        if size < 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        self._track = track and create
        self._fd = -1
        self._mmap: mmap.mmap | None = None
        self._buf: memoryview | None = None
        if create:
            while True:
                n = name if name is not None else _PREFIX + secrets.token_hex(8)
                try:
                    self._fd = os.open(_path(n), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                       0o600)
                    break
                except FileExistsError:
                    if name is not None:
                        raise
            self._name = n
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                self._cleanup_failed()
                raise
            if self._track:
                tracker.register(n)
        else:
            assert name is not None
            self._name = name.lstrip("/")
            try:
                self._fd = os.open(_path(self._name), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT,
                                        f"no shared memory segment named {self._name!r}",
                                        _path(self._name)) from None
            size = os.fstat(self._fd).st_size
            if size == 0:
                os.close(self._fd)
                raise ValueError(f"shared memory segment {self._name!r} is empty")
        self._size = size
        self._mmap = mmap.mmap(self._fd, size)
        self._buf = memoryview(self._mmap)

    def _cleanup_failed(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            os.unlink(_path(self._name))
        except OSError:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    @property
    def buf(self) -> memoryview:
        """A memoryview of the whole block; ``ValueError`` once closed."""
        if self._buf is None:
            raise ValueError("the shared memory block is closed")
        return self._buf

    @property
    def name(self) -> str:
        """The segment's name (no leading slash), to attach from another process."""
        return self._name

    @property
    def size(self) -> int:
        """The size in bytes: as asked when created, the segment's size when attached."""
        return self._size

    def close(self) -> None:
        """Unmap it from this process (raises BufferError while views of ``buf`` exist)."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the name; the memory goes when the last mapping goes."""
        try:
            os.unlink(_path(self._name))
        finally:
            if self._track:
                tracker.unregister(self._name)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _path(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"bad shared memory name {name!r}")
    return os.path.join(_DIR, name)


# -- ShareableList -------------------------------------------------------------
# Layout: int64 count; int64 offset of each item's data (count+1 entries); then
# the packed format codes (8 bytes each); then the data. Items are int, float,
# bool, None, str, bytes; str/bytes keep the size they were created with.

_ALIGN = 8
_TYPES = {int: "q", float: "d", bool: "?", type(None): "x"}


def _fmt_for(item: Any) -> str:
    if type(item) in _TYPES:
        return _TYPES[type(item)]
    if isinstance(item, str):
        return f"{(len(item.encode()) // _ALIGN + 1) * _ALIGN}s"
    if isinstance(item, bytes):
        return f"{(len(item) // _ALIGN + 1) * _ALIGN}y"
    raise TypeError(f"ShareableList items must be int, float, bool, None, str or bytes, not "
                    f"{type(item).__name__}")


class ShareableList:
    """A fixed-length list of int, float, bool, None, str, bytes in a SharedMemory."""

    __module__ = "polyproc.shared_memory"  # its public home: repr, pickle

    def __init__(self, sequence: Any = None, *, name: str | None = None) -> None:
        if name is None or sequence is not None:
            items = list(sequence or ())
            fmts = [_fmt_for(x) for x in items]
            sizes = [_size(f) for f in fmts]
            header = 8 + 8 * (len(items) + 1) + 8 * len(items)
            self.shm = SharedMemory(name, create=True, size=max(header + sum(sizes), 1))
            buf = self.shm.buf
            struct.pack_into("q", buf, 0, len(items))
            off = header
            for i, f in enumerate(fmts):
                struct.pack_into("q", buf, 8 + 8 * i, off)
                struct.pack_into("8s", buf, 8 + 8 * (len(items) + 1) + 8 * i, f.encode())
                off += sizes[i]
            struct.pack_into("q", buf, 8 + 8 * len(items), off)
            for i, x in enumerate(items):
                self[i] = x
        else:
            self.shm = SharedMemory(name)

    def _meta(self, i: int) -> tuple[int, str]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("index out of range")
        buf = self.shm.buf
        off = struct.unpack_from("q", buf, 8 + 8 * i)[0]
        fmt = struct.unpack_from("8s", buf, 8 + 8 * (n + 1) + 8 * i)[0].rstrip(b"\0").decode()
        return off, fmt

    def __len__(self) -> int:
        return int(struct.unpack_from("q", self.shm.buf, 0)[0])

    def __getitem__(self, i: int) -> Any:
        off, fmt = self._meta(i)
        buf = self.shm.buf
        kind = fmt[-1]
        if kind == "x":
            return None
        if kind in "sy":
            raw = bytes(buf[off:off + _size(fmt)])
            n = struct.unpack_from("q", raw, 0)[0]
            data = raw[8:8 + n]
            return data.decode() if kind == "s" else data
        return struct.unpack_from(fmt, buf, off)[0]

    def __setitem__(self, i: int, value: Any) -> None:
        off, fmt = self._meta(i)
        kind = fmt[-1]
        buf = self.shm.buf
        if kind in "sy":
            data = value.encode() if kind == "s" and isinstance(value, str) else value
            if (kind == "s") != isinstance(value, str) or not isinstance(data, bytes):
                raise TypeError(f"item {i} holds {'str' if kind == 's' else 'bytes'}")
            if len(data) > _size(fmt) - 8:
                raise ValueError(f"item {i} can hold at most {_size(fmt) - 8} bytes")
            struct.pack_into("q", buf, off, len(data))
            buf[off + 8:off + 8 + len(data)] = data
        elif kind == "x":
            if value is not None:
                raise TypeError(f"item {i} holds None")
        else:
            struct.pack_into(fmt, buf, off, value)

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_list, (self.shm.name,))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)!r}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The ``struct`` format of every item, concatenated (stdlib parity)."""
        return "".join(self._meta(i)[1] for i in range(len(self)))

    def count(self, value: Any) -> int:
        """How many items equal ``value``."""
        return sum(1 for x in self if x == value)

    def index(self, value: Any) -> int:
        """The position of the first item equal to ``value``; ``ValueError`` if none."""
        for i, x in enumerate(self):
            if x == value:
                return i
        raise ValueError(f"{value!r} not in this container")


def _size(fmt: str) -> int:
    kind = fmt[-1]
    if kind in "sy":
        return 8 + int(fmt[:-1])
    return 8


def _attach_list(name: str) -> ShareableList:
    return ShareableList(name=name)
