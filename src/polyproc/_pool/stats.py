"""What ``Pool.statistics()`` and ``ProcessPoolExecutor.statistics()`` return: one snapshot type.

Frozen value objects (attribute access; assigning raises ``AttributeError``), which
also read like the dicts earlier versions returned (``stats["timed_out"]``,
``w["name"]``), so code written against those keeps working. Not ``@dataclass``:
``dataclasses`` brings ``inspect`` onto every pool's import path (see ``tasks._Record``).
"""

from __future__ import annotations

from typing import Any

from .tasks import _Record

__all__ = ["PoolStatistics", "WorkerStatistics"]


class _Snapshot(_Record):
    """Frozen fields (``__slots__``), compared and shown by value (``_Record``), readable
    as a mapping."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    # -- read as the dict earlier versions returned ----------------------------------
    def keys(self) -> list[str]:
        return list(self.__slots__)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__slots__ else default

    def __contains__(self, key: object) -> bool:
        return key in self.__slots__


class WorkerStatistics(_Snapshot):
    """One worker, live or one of the last 64 that ended."""

    __slots__ = ("id", "name", "state", "tasks", "busy_s", "rss", "peak_rss", "exitcode")
    id: int
    name: str
    state: str  # "starting", "ready", "retiring", "stopping", "dead"
    tasks: int
    busy_s: float
    rss: int | None
    peak_rss: int | None
    exitcode: int | None

    def __init__(
        self,
        *,
        id: int,
        name: str,
        state: str,
        tasks: int,
        busy_s: float,
        rss: int | None,
        peak_rss: int | None,
        exitcode: int | None,
    ) -> None:
        self._set(
            id=id,
            name=name,
            state=state,
            tasks=tasks,
            busy_s=busy_s,
            rss=rss,
            peak_rss=peak_rss,
            exitcode=exitcode,
        )


class PoolStatistics(_Snapshot):
    """A pool's counters at one moment (``Engine.statistics``)."""

    __slots__ = (
        "done",
        "failed",
        "lost",
        "timed_out",
        "retried",
        "workers_started",
        "workers_recycled",
        "workers",
        "processes",
        "state",
    )
    done: int
    failed: int
    lost: int
    timed_out: int
    retried: int
    workers_started: int
    workers_recycled: int
    workers: tuple[WorkerStatistics, ...]
    processes: int
    state: str  # the pool's ``PoolState``: "RUN", "CLOSE", "BROKEN", "TERMINATE"

    def __init__(
        self,
        *,
        done: int,
        failed: int,
        lost: int,
        timed_out: int,
        retried: int,
        workers_started: int,
        workers_recycled: int,
        workers: tuple[WorkerStatistics, ...],
        processes: int,
        state: str,
    ) -> None:
        self._set(
            done=done,
            failed=failed,
            lost=lost,
            timed_out=timed_out,
            retried=retried,
            workers_started=workers_started,
            workers_recycled=workers_recycled,
            workers=workers,
            processes=processes,
            state=state,
        )
