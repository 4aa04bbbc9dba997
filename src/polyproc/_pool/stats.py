"""What ``Pool.statistics()`` and ``ProcessPoolExecutor.statistics()`` return: one snapshot type.

Frozen dataclasses (attribute access, ``dataclasses.asdict``), which also read like
the dicts earlier versions returned (``stats["timed_out"]``, ``w["name"]``), so
code written against those keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["PoolStatistics", "WorkerStatistics"]


class _Mapping:
    """Read-only dict-style access to a dataclass's fields."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


@dataclass(frozen=True)
class WorkerStatistics(_Mapping):
    """One worker, live or one of the last 64 that ended."""

    id: int
    name: str
    state: str  # "starting", "ready", "retiring", "stopping", "dead"
    tasks: int
    busy_s: float
    rss: int | None
    peak_rss: int | None
    exitcode: int | None


@dataclass(frozen=True)
class PoolStatistics(_Mapping):
    """A pool's counters at one moment (``Engine.statistics``)."""

    done: int
    failed: int
    lost: int
    timed_out: int
    retried: int
    workers_started: int
    workers_recycled: int
    workers: tuple[WorkerStatistics, ...]
    processes: int
    state: str  # the pool's ``PoolState`` name: "RUN", "CLOSE", "BROKEN", "TERMINATE"
