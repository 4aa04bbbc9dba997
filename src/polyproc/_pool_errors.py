"""The pool's two errors, apart from ``errors.py`` so that importing polyproc stays light.

They subclass ``concurrent.futures.BrokenExecutor`` (so ``except BrokenExecutor``
catches them), which means importing ``concurrent.futures``: ``errors.py`` hands
them out lazily (PEP 562) and they present themselves as ``polyproc.errors.X``
(so they pickle, and print, under the name users know).
"""

from __future__ import annotations

import sys
from concurrent.futures import BrokenExecutor
from types import ModuleType

from ._importhook import when_imported
from .errors import PolyprocError

__all__ = ["BrokenProcessPool", "WorkerLostError"]


class BrokenProcessPool(PolyprocError, BrokenExecutor):
    """A pool can no longer run work (the stdlib name, kept for ``except``)."""


class WorkerLostError(BrokenProcessPool):
    """A worker died while it held this task.

    Only the tasks that worker held fail; the pool replaces the worker and goes on.
    Attributes say what was lost: ``function``, ``index``, ``argument`` (a short
    repr), ``exitcode`` (negative: the signal), ``peak_rss`` in bytes or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        function: str | None = None,
        index: int | None = None,
        argument: str | None = None,
        exitcode: int | None = None,
        peak_rss: int | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.index = index
        self.argument = argument
        self.exitcode = exitcode
        self.peak_rss = peak_rss

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_worker_lost,
            (
                self.args[0] if self.args else "",
                self.function,
                self.index,
                self.argument,
                self.exitcode,
                self.peak_rss,
            ),
        )


def _rebuild_worker_lost(
    message: str,
    function: str | None,
    index: int | None,
    argument: str | None,
    exitcode: int | None,
    peak_rss: int | None,
) -> WorkerLostError:
    return WorkerLostError(
        message,
        function=function,
        index=index,
        argument=argument,
        exitcode=exitcode,
        peak_rss=peak_rss,
    )


for _cls in (BrokenProcessPool, WorkerLostError):
    _cls.__module__ = "polyproc.errors"
_rebuild_worker_lost.__module__ = "polyproc.errors"


# -- concurrent.futures.process.BrokenProcessPool, adopted lazily ------------------------
_STDLIB_POOL = "concurrent.futures.process"


def _adopt_stdlib_broken_pool(module: ModuleType | None = None) -> bool:
    """Make ours a real subclass of the stdlib's ``BrokenProcessPool`` (``except`` uses MRO).

    ``__bases__`` assignment recomputes the MRO of every subclass (``WorkerLostError``)
    and applies to instances already made. Returns whether it is done.
    """
    if module is None:
        module = sys.modules.get(_STDLIB_POOL)
    theirs = getattr(module, "BrokenProcessPool", None)
    if not isinstance(theirs, type) or not issubclass(theirs, BrokenExecutor):
        return False
    if issubclass(BrokenProcessPool, theirs):
        return True
    BrokenProcessPool.__bases__ = (PolyprocError, theirs)
    return True


when_imported(_STDLIB_POOL, _adopt_stdlib_broken_pool)
