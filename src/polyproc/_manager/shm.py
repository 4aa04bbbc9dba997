"""SharedMemoryManager: a SyncManager that also hands out shared memory, freed at shutdown.

As in the stdlib, ``smm.SharedMemory(size)`` and ``smm.ShareableList(seq)`` make
the segment in the *calling* process (no copy through the server) and record its
name on the manager's server; ``shutdown()`` (or leaving ``with``) unlinks every
segment recorded there, whoever made it::

    smm.SharedMemory(64) ─► SharedMemory(create=True) here ─► names.add(name) on the server
    smm.shutdown()       ─► names on the server ─► unlink each here ─► stop the server

A segment's creator also registers it with polyproc's segment tracker, so one
whose manager never shuts down is still unlinked when its creator exits.
"""

from __future__ import annotations

from typing import Any

from .._shm import tracker
from .._shm.shareable_list import ShareableList
from .._shm.shared_memory import SharedMemory
from .registry import State
from .sync import SyncManager

__all__ = ["SharedMemoryManager"]


class SharedMemoryManager(SyncManager):
    """``multiprocessing.managers.SharedMemoryManager``."""

    def _names(self) -> Any:
        if self._state is not State.STARTED and self._state is not State.CONNECTED:
            raise ValueError("the SharedMemoryManager has not been started")
        names = getattr(self, "_segment_names", None)
        if names is None:
            names = self._segment_names = self._SegmentNames()  # type: ignore[attr-defined]
        return names

    def SharedMemory(self, size: int) -> SharedMemory:  # noqa: N802 - stdlib name
        """A new segment of ``size`` bytes, unlinked when this manager shuts down."""
        names = self._names()
        shm = SharedMemory(None, create=True, size=size)
        try:
            names.append(shm.name)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        return shm

    def ShareableList(self, sequence: Any = None) -> ShareableList:  # noqa: N802 - stdlib name
        """A new ShareableList, unlinked when this manager shuts down."""
        names = self._names()
        sl = ShareableList(sequence)
        try:
            names.append(sl.shm.name)
        except BaseException:
            sl.shm.close()
            sl.shm.unlink()
            raise
        return sl

    def shutdown(self) -> None:
        """Unlink every segment made through this manager, then stop its server."""
        names = getattr(self, "_segment_names", None)
        if names is not None and self._state is State.STARTED:
            self._segment_names = None
            try:
                recorded = list(names[:])
            except Exception:
                recorded = []
            del names
            for name in recorded:
                try:
                    seg = SharedMemory(name)
                except (FileNotFoundError, ValueError):
                    continue
                seg.close()
                try:
                    seg.unlink()
                except FileNotFoundError:
                    pass
                tracker.unregister(name)  # made here: no need to guard it any longer
        super().shutdown()


SharedMemoryManager.register(
    "_SegmentNames", list, create_method=True, exposed=("append", "__getitem__", "__len__")
)
