"""The pool's two errors, apart from ``errors.py`` so that importing polyproc stays light.

They subclass ``concurrent.futures.BrokenExecutor`` (so ``except BrokenExecutor``
catches them), which means importing ``concurrent.futures``: ``errors.py`` hands
them out lazily (PEP 562) and they present themselves as ``polyproc.errors.X``
(so they pickle, and print, under the name users know).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

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


class _LoaderProxy:
    """The real loader of ``concurrent.futures.process``, plus our hook after it executes."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._loader.exec_module(module)
        except BaseException:
            _install_watcher()  # it did not import: watch for the next try
            raise
        _adopt_stdlib_broken_pool(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # get_source, is_package, ... for inspect


class _StdlibPoolWatcher:
    """A ``sys.meta_path`` finder that only ever answers for ``concurrent.futures.process``.

    It asks the other finders for the real spec and wraps its loader; every other
    import costs one string comparison. It removes itself once it has fired.
    """

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != _STDLIB_POOL:
            return None
        _remove_watcher()
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderProxy(spec.loader)  # type: ignore[assignment]
                return spec
        return None


def _remove_watcher() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _StdlibPoolWatcher)]


def _install_watcher() -> None:
    if not any(isinstance(f, _StdlibPoolWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _StdlibPoolWatcher())


if not _adopt_stdlib_broken_pool():
    _install_watcher()
