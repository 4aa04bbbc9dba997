"""``shared_array(shape, dtype)``: a NumPy array every process maps, never copies.

The array's memory is a memfd block (``heap.allocate``; big ones get a memfd of
their own). The array is a thin ndarray subclass whose ``__reduce__`` sends the
block (its fd, by SCM_RIGHTS or inherited at fork) plus shape, dtype, strides
and offset, so a view or slice passed to another process maps the very same
bytes: writes on either side are seen by the other, and nothing is copied.

Arrays computed from it (``a + 1``) are ordinary memory and pickle as usual.
NumPy is imported lazily (it is an optional dependency).
"""

from __future__ import annotations

import ctypes
from typing import Any

from .heap import Block, allocate

__all__ = ["shared_array"]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - numpy is the [numpy] extra
        raise ImportError("shared_array needs NumPy: pip install 'polyproc[numpy]'") from exc
    return numpy


def _array_class() -> type[Any]:
    np = _numpy()
    cls = _CLASS.get("cls")
    if cls is None:

        class SharedNDArray(np.ndarray):  # type: ignore[misc,name-defined]
            """An ndarray over a shared memfd block; pickles as the block, not the data."""

            _polyproc_block: Block | None = None

            def __array_finalize__(self, obj: Any) -> None:
                self._polyproc_block = getattr(obj, "_polyproc_block", None)

            def __reduce__(self) -> Any:
                block = self._polyproc_block
                if block is not None:
                    start = _block_address(block)
                    addr = self.__array_interface__["data"][0]
                    span = self.nbytes if self.size else 0
                    if start <= addr and addr + span <= start + block.size:
                        return (
                            _rebuild,
                            (block, self.shape, self.dtype.str, self.strides, addr - start),
                        )
                return np.asarray(self).copy().__reduce__()

        SharedNDArray.__module__ = "polyproc"
        cls = _CLASS["cls"] = SharedNDArray
    return cls


_CLASS: dict[str, type[Any]] = {}


def _block_address(block: Block) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(block.arena.mm, block.offset))


def _rebuild(
    block: Block, shape: tuple[int, ...], dtype: str, strides: tuple[int, ...], offset: int
) -> Any:
    return _wrap(block, shape, _numpy().dtype(dtype), strides, offset)


def _wrap(
    block: Block, shape: tuple[int, ...], dtype: Any, strides: tuple[int, ...] | None, offset: int
) -> Any:
    cls = _array_class()
    arr: Any = cls.__new__(
        cls,
        shape,
        dtype,
        block.arena.mm,  # type: ignore[call-overload]
        block.offset + offset,
        strides,
    )
    arr._polyproc_block = block
    return arr


def shared_array(shape: int | tuple[int, ...], dtype: Any = "float64", *, fill: Any = None) -> Any:
    """A writable, zero-filled (or ``fill``-ed) ndarray in shared memory.

    Pass it to a Process, a Pool task, a Pipe or a Queue: the receiver maps the
    same memory (no copy); every write is seen by every process.
    """
    np = _numpy()
    dt = np.dtype(dtype)
    shape_t = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape_t):
        raise ValueError(f"negative dimension in shape {shape_t}")
    nbytes = int(np.prod(shape_t, dtype=np.int64)) * dt.itemsize
    arr = _wrap(allocate(max(nbytes, 1)), shape_t, dt, None, 0)
    if fill is not None:
        arr[...] = fill
    return arr


def __getattr__(name: str) -> Any:
    if name == "SharedNDArray":
        return _array_class()
    raise AttributeError(name)
