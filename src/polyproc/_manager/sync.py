"""SyncManager: the types ``polyproc.Manager()`` offers, registered on a BaseManager.

Server-side objects are the stdlib's plain ones (``queue.Queue``,
``threading.Lock`` ...); ``Pool`` is imported from ``polyproc.pool`` only when a
managed pool is first made, so the manager works without the pool package.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .proxytypes import (
    AcquirerProxy,
    ArrayProxy,
    BarrierProxy,
    ConditionProxy,
    DictProxy,
    EventProxy,
    IteratorProxy,
    ListProxy,
    Namespace,
    NamespaceProxy,
    PoolProxy,
    QueueProxy,
    Value,
    ValueProxy,
    make_array,
)
from .registry import BaseManager

__all__ = ["SyncManager"]


def _pool(*args: Any, **kwds: Any) -> Any:
    from .._pool.pool import Pool  # lazy: another package, and costly to import

    return Pool(*args, **kwds)


class SyncManager(BaseManager):
    """A manager with the stdlib's shared types: ``list``, ``dict``, ``Queue``, ``Lock`` ...

    The methods are made by ``register`` below, at import; the declarations here are
    for type checkers only (as typeshed declares the stdlib's).
    """

    __module__ = "polyproc.managers"  # its public home: repr, pickle

    if TYPE_CHECKING:

        def Queue(self, maxsize: int = 0) -> Any: ...  # noqa: N802 - stdlib names
        def JoinableQueue(self, maxsize: int = 0) -> Any: ...  # noqa: N802
        def Event(self) -> EventProxy: ...  # noqa: N802
        def Lock(self) -> AcquirerProxy: ...  # noqa: N802
        def RLock(self) -> AcquirerProxy: ...  # noqa: N802
        def Semaphore(self, value: int = 1) -> AcquirerProxy: ...  # noqa: N802
        def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy: ...  # noqa: N802
        def Condition(self, lock: Any = None) -> ConditionProxy: ...  # noqa: N802
        def Barrier(
            self,
            parties: int,
            action: Callable[[], object] | None = None,  # noqa: N802
            timeout: float | None = None,
        ) -> BarrierProxy: ...
        def Pool(
            self,
            processes: int | None = None,
            *args: Any,  # noqa: N802
            **kwds: Any,
        ) -> PoolProxy: ...
        def list(self, sequence: Iterable[Any] = ..., /) -> ListProxy: ...
        def dict(self, mapping: Mapping[Any, Any] = ..., /, **kwargs: Any) -> DictProxy: ...
        def Value(self, typecode: Any, value: Any, lock: bool = True) -> ValueProxy: ...  # noqa: N802
        def Array(
            self,
            typecode: str,
            sequence: Iterable[Any],  # noqa: N802
            lock: bool = True,
        ) -> Any: ...
        def Namespace(self, **kwds: Any) -> NamespaceProxy: ...  # noqa: N802


SyncManager.register("Queue", queue.Queue, QueueProxy)
SyncManager.register("JoinableQueue", queue.Queue, QueueProxy)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", threading.Lock, AcquirerProxy)
SyncManager.register("RLock", threading.RLock, AcquirerProxy)
SyncManager.register("Semaphore", threading.Semaphore, AcquirerProxy)
SyncManager.register("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy)
SyncManager.register("Condition", threading.Condition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", _pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", make_array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
# Types only ever returned by methods, never made directly:
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)
