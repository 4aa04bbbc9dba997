"""The settings a child is made with: a start method and a serializer. Data, nothing else.

``Settings`` is the frozen value every lower layer takes (``Process``, ``Pool``,
``Queue``, the locks, the launchers): how children are started and how objects
reach them. It imports nothing above ``_serialize``, makes nothing, and so sits at
the bottom of the import graph. The stdlib's context object, with its factories
(``ctx.Pool()``, ``ctx.Lock()`` ...), is ``polyproc.context.Context``, a subclass
in the public layer: it can import what it makes without an import circle.

The stdlib binds a start method globally the first time anything touches it
(cpython #109263); here ``get_context('spawn')`` returns a value and changes
nothing else. The one piece of process-wide state is the *default* start method,
kept in a single small holder (``_Defaults``) that ``set_start_method`` writes:
the block at the end of this module.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any

from ._serialize import DEFAULT_SERIALIZER, Serializer

__all__ = [
    "Settings",
    "START_METHODS",
    "DEFAULT_START_METHOD",
    "get_context",
    "set_start_method",
    "get_start_method",
    "get_all_start_methods",
    "stdlib_name",
    "as_settings",
    "default_context",
    "set_forkserver_preload",
]

#: Every start method ``get_context``/``set_start_method`` accept: the stdlib's three and
#: polyproc's default, ``"auto"``.
START_METHODS: tuple[str, ...] = ("auto", "fork", "spawn", "forkserver")

#: The stdlib's start methods, in its order (what ``get_all_start_methods`` lists on Linux).
STDLIB_START_METHODS: tuple[str, ...] = ("fork", "spawn", "forkserver")

#: "auto": fork's semantics where fork is safe, the forkserver's safety where it is
#: not. A child is forked from the caller (a pool's workers from a template forked
#: from the caller at pool creation) only while no thread but polyproc's own,
#: parked, is alive; otherwise it comes from the forkserver. Why, and the figures:
#: docs/architecture.md, "The default start method"; the code: _launch/template.py.
DEFAULT_START_METHOD = "auto"

#: The stdlib name ``get_start_method()`` answers for "auto" (fork's semantics, see above).
AUTO_REPORTS_AS = "fork"


class Settings:
    """How child processes are made and how objects reach them: a frozen, hashable value.

    Two values with the same start method and serializer are equal whatever their
    class, so ``polyproc.Context("spawn") == get_context("spawn")``. A plain class with
    ``__slots__`` rather than a dataclass: ``dataclasses`` costs milliseconds on the
    import path of every spawned child.
    """

    __slots__ = ("start_method", "serializer")

    start_method: str
    serializer: Serializer

    def __init__(
        self, start_method: str = DEFAULT_START_METHOD, serializer: Serializer = DEFAULT_SERIALIZER
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"cannot find context for {start_method!r}")
        object.__setattr__(self, "start_method", start_method)
        object.__setattr__(self, "serializer", serializer)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def _key(self) -> tuple[str, Serializer]:
        return (self.start_method, self.serializer)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(start_method={self.start_method!r}, "
            f"serializer={self.serializer!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._key())


# -- the default start method: the one process-wide setting --------------------------------------


class _Defaults:
    """The process-wide default start method: the single mutable setting, in one place."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._method: str | None = None
        self._fixed = False  # becomes True once a child has been started with it
        self.preload: list[str] = []  # set_forkserver_preload's list (checked, kept)

    def get(self) -> str:
        env = os.environ.get("POLYPROC_START_METHOD")
        return self._method or env or DEFAULT_START_METHOD

    def set(self, method: str | None, force: bool) -> None:
        with self._lock:
            if self._method is not None and not force:
                raise RuntimeError("context has already been set")
            if method is not None and method not in START_METHODS:
                raise ValueError(f"cannot find context for {method!r}")
            self._method = method


_defaults = _Defaults()


def default_context() -> Settings:
    """The Settings for the current default start method (what ``polyproc.Process`` uses)."""
    return get_context(None)


@functools.cache
def _context_for(method: str) -> Settings:
    return Settings(method)


def set_forkserver_preload(module_names: list[str]) -> None:
    """Modules for the forkserver to import once, before it forks (checked as by the stdlib).

    Sent with the next start request, so the server imports them even if it is running
    already; a child whose target lives in one of them then does not import it again.
    ``"__main__"`` is skipped: the server imports the main module in any case.
    """
    if not isinstance(module_names, list) or not all(isinstance(m, str) for m in module_names):
        raise TypeError("module_names must be a list of strings")
    _defaults.preload = list(module_names)


def get_context(method: str | None = None) -> Settings:
    """The Settings for ``method`` (the default when None). Changes no global state."""
    return _context_for(method or _defaults.get())


def as_settings(context: object) -> Settings:
    """A ``context=``/``mp_context=`` argument as Settings: polyproc's as it is, any other
    context (the stdlib's, when only the executor import was swapped) by its start method.

    Anything else is a ``TypeError`` here, not a worker that fails to start later.
    """
    if isinstance(context, Settings):
        return context
    getter = getattr(context, "get_start_method", None)
    method = getter() if callable(getter) else None
    if isinstance(method, str) and method in START_METHODS:
        return get_context(method)
    raise TypeError(
        f"context must be a start-method context (polyproc.get_context(...)), not {context!r}"
    )


def set_start_method(method: str | None, force: bool = False) -> None:
    """Set the default start method; ``RuntimeError`` if set already, unless ``force``."""
    _defaults.set(method, force)


def get_start_method(allow_none: bool = False) -> str | None:
    """The default start method, by its stdlib name; None if unset and ``allow_none``.

    Under polyproc's own default, ``"auto"``, this answers ``"fork"``: auto *is* fork's
    semantics (a fork of the caller, or for a pool of a template forked from it) and
    only falls back to the forkserver while another thread runs, so code that asks
    ``get_start_method() == "fork"`` (stdlib tests, libraries choosing a context) keeps
    the answer it had with the stdlib on Linux. ``get_context().start_method`` tells
    ``"auto"`` apart. Unlike the stdlib, asking never fixes the default.
    """
    if allow_none and _defaults._method is None:
        return None
    return stdlib_name(_defaults.get())


def stdlib_name(method: str) -> str:
    """The stdlib start method ``method`` reports as: ``"auto"`` is ``"fork"``, the rest themselves."""
    return AUTO_REPORTS_AS if method == "auto" else method


def get_all_start_methods() -> list[str]:
    """The stdlib's start methods on this platform, the platform default first.

    As Python 3.14 lists them (the default first, whatever ``set_start_method`` chose)
    and as 3.11's own test expects: ``["fork", "spawn", "forkserver"]`` on Linux, the
    default ``"auto"`` reporting as ``"fork"``. ``"auto"`` itself is polyproc's extra:
    accepted by ``get_context``/``set_start_method``, not listed.
    """
    if sys.platform != "linux":  # pragma: no cover - Linux is the supported platform
        return ["spawn"]
    default = stdlib_name(DEFAULT_START_METHOD)
    return [default] + [m for m in STDLIB_START_METHODS if m != default]
