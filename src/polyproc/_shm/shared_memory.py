"""``SharedMemory`` (and ``ShareableList``, from ``shareable_list``), compatible with ``multiprocessing.shared_memory``.

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
import sys
from typing import Any

from . import tracker

__all__ = ["SharedMemory"]

_DIR = "/dev/shm"
_PREFIX = "psm_"


class SharedMemory:
    """A named shared memory block: ``name``, ``size``, ``buf``, ``close()``, ``unlink()``."""

    __module__ = "polyproc.shared_memory"  # its public home: repr, pickle

    #: Flags to attach with (the stdlib's attribute: a subclass may add ``O_CREAT``).
    _flags = os.O_RDWR

    def __init__(
        self, name: str | None = None, create: bool = False, size: int = 0, *, track: bool = True
    ) -> None:
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
                n = name.lstrip("/") if name is not None else _new_name()
                try:
                    self._fd = os.open(
                        _path(n), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                    )
                    break
                except FileExistsError:
                    if name is not None:
                        raise
            self._name = "/" + n  # the stdlib's form; ``name`` has no slash
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                self._cleanup_failed()
                raise
            if self._track:
                tracker.register(n)
        else:
            assert name is not None
            self._name = "/" + name.lstrip("/")
            try:
                self._fd = os.open(_path(self.name), self._flags | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, f"no shared memory segment named {self.name!r}", _path(self.name)
                ) from None
            size = os.fstat(self._fd).st_size
            if size == 0:
                os.close(self._fd)
                raise ValueError(f"shared memory segment {self.name!r} is empty")
        self._size = size
        self._mmap = mmap.mmap(self._fd, size)
        self._buf = memoryview(self._mmap)

    def _cleanup_failed(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            os.unlink(_path(self.name))
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
        return self._name[1:]

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
            os.unlink(_path(self.name))
        finally:
            if self._track:
                tracker.unregister(self.name)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _make_filename() -> str:
    """A fresh segment name, with the stdlib's ``/psm_`` prefix."""
    return "/" + _PREFIX + secrets.token_hex(8)


def _new_name() -> str:
    # Through the public module when it is loaded, so a patched
    # ``polyproc.shared_memory._make_filename`` is honoured (CPython's tests patch it).
    face = sys.modules.get("polyproc.shared_memory")
    make = getattr(face, "_make_filename", _make_filename)
    return str(make()).lstrip("/")


def _path(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"bad shared memory name {name!r}")
    return os.path.join(_DIR, name)
