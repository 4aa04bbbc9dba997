"""Where a pool's tasks run: this machine (``"local"``) or a Dask or Ray cluster.

Chosen per pool, most specific first::

    Pool(..., backend=X)  /  ProcessPoolExecutor(..., backend=X)
      else  with polyproc.use_backend(X): ...     (a context variable)
      else  POLYPROC_BACKEND=X                      (the environment, read at each pool start)
      else  "local"

``X`` is ``"local"``, ``"dask"`` (the current ``distributed`` client, else a
``LocalCluster`` started for the pool and closed with it), a ``distributed.Client``,
a Dask scheduler address (``"tcp://host:8786"``), ``"ray"`` (``RAY_ADDRESS`` or a
local instance) or ``"ray://host:10001"``.

This module is stdlib only: the plugins (``polyproc.backends.dask``/``.ray``) and the
engines they drive are imported by name, the first time a pool asks for one, so the
core never imports them and ``import polyproc`` never pays for them. A missing
engine is an ``ImportError`` that names the extra to install.

A cluster backend plugs in behind the engine's worker interface (``_engine``): the
pool's own scheduler keeps ordering, lazy input, adaptive batching, timeouts,
retries and lost-worker handling, and each of its worker slots runs batches as
cluster tasks. See docs/scale-out.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["use_backend", "current_backend", "make_engine", "load", "ENV_VAR"]

ENV_VAR = "POLYPROC_BACKEND"

_chosen: contextvars.ContextVar[Any] = contextvars.ContextVar("polyproc_backend", default=None)

#: plugin module and the extra that installs its engine, by backend name
_PLUGINS: dict[str, tuple[str, str, str]] = {
    "dask": ("polyproc.backends.dask", "dask", "distributed"),
    "ray": ("polyproc.backends.ray", "ray", "ray"),
}


@contextlib.contextmanager
def use_backend(backend: Any) -> Iterator[Any]:
    """Pools made inside this block (in this thread or task) use ``backend`` unless told otherwise.

    For code that should not change at all: ``with polyproc.use_backend("dask"): main()``.
    """
    _check_spec(backend)
    token = _chosen.set(backend)
    try:
        yield backend
    finally:
        _chosen.reset(token)


def current_backend(explicit: Any = None) -> Any:
    """The backend a pool started now gets: the argument, the context, the environment, local."""
    if explicit is not None:
        return explicit
    chosen = _chosen.get()
    if chosen is not None:
        return chosen
    return os.environ.get(ENV_VAR) or "local"


def _kind(spec: Any) -> str:
    """``local``, ``dask`` or ``ray`` for an accepted value; ValueError otherwise."""
    if isinstance(spec, str):
        s = spec.strip()
        if s in ("", "local"):
            return "local"
        if s == "dask" or s.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            return "dask"
        if s == "ray" or s.startswith("ray://"):
            return "ray"
        raise ValueError(
            f"unknown backend {spec!r}: use 'local', 'dask', a Dask scheduler address "
            "('tcp://host:8786'), a distributed.Client, 'ray' or 'ray://host:10001'"
        )
    mod = type(spec).__module__
    if mod.startswith("distributed"):
        return "dask"
    raise TypeError(f"backend must be a name, an address or a distributed.Client, not {spec!r}")


def _check_spec(spec: Any) -> None:
    _kind(spec)


def load(kind: str) -> Any:
    """Import a backend plugin by name; a clear ImportError if its engine is not installed."""
    module, extra, engine = _PLUGINS[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] in (engine, extra, "dask", "ray", "distributed"):
            raise ImportError(
                f"the {kind!r} backend needs {engine!r}, which is not installed: "
                f"pip install 'polyproc[{extra}]'",
                name=missing,
            ) from exc
        raise


def make_engine(
    backend: Any,
    processes: int | None,
    *,
    ctx: Any,
    threads: bool,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    maxtasksperchild: int | None,
    max_memory_per_child: int | None,
    window: int = 3,
    target_batch_s: float | None = None,
) -> Any:
    """The engine a face drives: today's local one, or a cluster one (see the module docstring)."""
    if threads:
        if backend is not None and _kind(backend) != "local":
            raise ValueError("ThreadPool runs in this process; a backend is for process pools")
        spec: Any = "local"
    else:
        spec = current_backend(backend)
    kind = _kind(spec)
    if kind == "local":
        from .._pool.engine import Engine

        return Engine(
            processes,
            ctx=ctx,
            threads=threads,
            initializer=initializer,
            initargs=initargs,
            maxtasksperchild=maxtasksperchild,
            max_memory_per_child=max_memory_per_child,
            window=window,
            target_batch_s=target_batch_s,
        )
    if max_memory_per_child is not None:
        raise ValueError(
            f"max_memory_per_child is not supported on the {kind} backend "
            "(the cluster manages its workers' memory)"
        )
    plugin = load(kind)
    cluster = plugin.connect(spec, processes)
    from ._engine import ClusterEngine

    try:
        return ClusterEngine(
            cluster,
            initializer=initializer,
            initargs=initargs,
            maxtasksperchild=maxtasksperchild,
            target_batch_s=target_batch_s,
        )
    except BaseException:
        cluster.release()
        raise
