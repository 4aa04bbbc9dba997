"""``when_imported(name, hook)``: run ``hook(module)`` once ``name`` has been imported.

Now if it already is; else right after its first import finishes executing, through
a ``sys.meta_path`` finder that answers for that one name (every other import costs
it one dict lookup) and removes itself once it has fired. What needs a heavy module
waits for the program to import it instead of importing it for the program:
``concurrent.futures.process`` (``_pool_errors``), ``logging`` in a child
(``_process``: 2-3 ms of a short script that never logs).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

__all__ = ["when_imported"]

Hook = Callable[[ModuleType], object]


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` now if ``name`` is imported, else just after it is."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    with _WATCHER.lock:
        _WATCHER.hooks.setdefault(name, []).append(hook)
        _WATCHER.install()


class _LoaderProxy:
    """The real loader of a watched module, plus its hooks after it executes."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._loader.exec_module(module)
        except BaseException:
            _WATCHER.put_back(self._name)  # it did not import: watch for the next try
            raise
        for hook in _WATCHER.fired.pop(self._name, []):
            hook(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # get_source, is_package, ... for inspect


class _Watcher:
    """The one ``sys.meta_path`` finder: it knows the names watched and their hooks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hooks: dict[str, list[Hook]] = {}
        self.fired: dict[str, list[Hook]] = {}

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def put_back(self, name: str) -> None:
        with self.lock:
            self.hooks.setdefault(name, []).extend(self.fired.pop(name, []))
            self.install()

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self.hooks:
            return None
        with self.lock:
            hooks = self.hooks.pop(name, None)
            if hooks is None:
                return None
            self.fired.setdefault(name, []).extend(hooks)
            if not self.hooks:
                sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is None or finder is self:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderProxy(spec.loader, name)  # type: ignore[assignment]
                return spec
        return None


_WATCHER = _Watcher()
