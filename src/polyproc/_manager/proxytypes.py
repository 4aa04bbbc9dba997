"""The stdlib's proxy types, and the small server-side classes some of them refer to.

Server side (plain objects in the manager process): ``Namespace``, ``Value``.
Client side: ``ListProxy``, ``DictProxy``, ``NamespaceProxy``, ``ValueProxy``,
``ArrayProxy``, ``IteratorProxy``, ``AcquirerProxy``, ``ConditionProxy``,
``EventProxy``, ``BarrierProxy``, ``QueueProxy``, ``PoolProxy``.

Where we differ from the stdlib, for speed: iterating a list or dict proxy takes
one round trip for a snapshot (the stdlib takes one per item), and comparisons
(``==``, ``<`` ...) are forwarded to the referent.
"""

from __future__ import annotations

import array
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from .proxy import BaseProxy, MakeProxyType

__all__ = [
    "Namespace",
    "Value",
    "make_array",
    "BaseListProxy",
    "ListProxy",
    "DictProxy",
    "ArrayProxy",
    "NamespaceProxy",
    "ValueProxy",
    "IteratorProxy",
    "AcquirerProxy",
    "ConditionProxy",
    "EventProxy",
    "BarrierProxy",
    "QueueProxy",
    "PoolProxy",
]


# -- server side ---------------------------------------------------------------------
class Namespace:
    """A bag of attributes; ``repr`` is ``Namespace(y=2)`` as in the stdlib."""

    def __init__(self, /, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = [f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_")]
        return f"{type(self).__name__}({', '.join(sorted(items))})"


class Value:
    """A managed value with a typecode, as ``SyncManager.Value`` makes (no real lock needed)."""

    def __init__(self, typecode: Any, value: Any, lock: bool = True) -> None:
        self._typecode = typecode
        self._value = value

    def get(self) -> Any:
        """The current value (the typecode is kept for ``repr`` only, never enforced)."""
        return self._value

    def set(self, value: Any) -> None:
        """Replace the value."""
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self._value!r})"

    value = property(get, set)


def make_array(typecode: str, sequence: Any, lock: bool = True) -> array.array[Any]:
    """What ``SyncManager.Array`` makes on the server (``lock`` is accepted and unneeded)."""
    return array.array(typecode, sequence)


# -- client side ---------------------------------------------------------------------
_COMPARE = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__")

BaseListProxy = MakeProxyType(
    "BaseListProxy",
    (
        "__add__",
        "__contains__",
        "__delitem__",
        "__getitem__",
        "__len__",
        "__mul__",
        "__reversed__",
        "__rmul__",
        "__setitem__",
        "append",
        "clear",
        "copy",
        "count",
        "extend",
        "index",
        "insert",
        "pop",
        "remove",
        "reverse",
        "sort",
        "__imul__",
        *_COMPARE,
    ),
)


class ListProxy(BaseListProxy):  # type: ignore[misc,valid-type]
    """A managed ``list``; iterating costs a round trip per item, as in the stdlib
    (``proxy[:]`` fetches a snapshot in one).

    ``append`` and ``insert`` are sent without waiting for a reply, and ``+=`` sends
    one ``extend``.
    """

    _async_methods_ = frozenset({"append", "insert"})

    def __iadd__(self, value: Any) -> ListProxy:
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value: Any) -> ListProxy:
        self._callmethod("__imul__", (value,))
        return self

    def __iter__(self) -> Iterator[Any]:
        # By index, one round trip per item, as the stdlib (which has no ``__iter__``
        # and lets Python fall back to ``__getitem__``): changes made while iterating
        # are seen (``a[0] = 100`` after ``iter(a)``), under any manager class.
        i = 0
        while True:
            try:
                item = self._callmethod("__getitem__", (i,))
            except IndexError:
                return
            yield item
            i += 1

    __hash__ = None  # type: ignore[assignment]


class DictProxy(
    MakeProxyType(  # type: ignore[misc]
        "DictProxy",
        (
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__len__",
            "__setitem__",
            "__reversed__",
            "clear",
            "copy",
            "get",
            "items",
            "keys",
            "pop",
            "popitem",
            "setdefault",
            "update",
            "values",
            "__or__",
            "__ror__",
            "__ior__",
            "__iter__",
            *_COMPARE,
        ),
    )
):
    """A managed ``dict``; iterating is a server-side iterator (``keys()`` fetches all in one).

    ``d[k] = v`` does not wait for the server's reply (an unhashable key still raises
    here, at once).
    """

    _async_methods_ = frozenset({"__setitem__"})
    _method_to_typeid_ = {"__iter__": "Iterator"}

    def __setitem__(self, key: Any, value: Any) -> None:
        hash(key)  # the one way dict.__setitem__ fails: raise it here, before going async
        self._callmethod("__setitem__", (key, value))

    def __iter__(self) -> Iterator[Any]:
        # On the server, as the stdlib: a dict changed in size meanwhile raises RuntimeError.
        return cast(Iterator[Any], self._callmethod("__iter__"))

    def __ior__(self, other: Any) -> DictProxy:
        self._callmethod("update", (other,))
        return self

    __hash__ = None  # type: ignore[assignment]


ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))


class NamespaceProxy(BaseProxy):
    """Attributes of a managed ``Namespace``; names starting with ``_`` stay on the proxy."""

    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")
    _async_methods_ = frozenset({"__setattr__"})

    def __getattr__(self, key: str) -> Any:
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return self._callmethod("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key[0] == "_":
            object.__setattr__(self, key, value)
            return
        self._callmethod("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key[0] == "_":
            object.__delattr__(self, key)
            return
        self._callmethod("__delattr__", (key,))


class ValueProxy(BaseProxy):
    """A managed value: ``get``/``set`` or the ``value`` property (no lock; ``set`` is async)."""

    _exposed_ = ("get", "set")
    _async_methods_ = frozenset({"set"})

    def get(self) -> Any:
        """The referent's current value (one round trip)."""
        return self._callmethod("get")

    def set(self, value: Any) -> None:
        """Replace the referent's value; does not wait for the server's reply."""
        self._callmethod("set", (value,))

    value = property(get, set)


class IteratorProxy(BaseProxy):
    """An iterator or generator living on the server (what ``imap`` on a managed pool returns)."""

    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    def send(self, *args: Any) -> Any:
        """``generator.send`` on the referent."""
        return self._callmethod("send", args)

    def throw(self, *args: Any) -> Any:
        """``generator.throw`` on the referent."""
        return self._callmethod("throw", args)

    def close(self, *args: Any) -> Any:
        """``generator.close`` on the referent."""
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    """A managed ``Lock``/``RLock``/``Semaphore``; usable in ``with``."""

    _exposed_: tuple[str, ...] = ("acquire", "release")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire on the server, as ``threading.Lock.acquire(blocking, timeout)``."""
        args = (blocking,) if timeout is None else (blocking, timeout)
        return bool(self._callmethod("acquire", args))

    def release(self) -> None:
        """Release on the server, as ``threading.Lock.release``."""
        self._callmethod("release")

    def __enter__(self) -> bool:
        return bool(self._callmethod("acquire"))

    def __exit__(self, *exc: object) -> None:
        self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    """A managed ``threading.Condition``."""

    _exposed_ = ("acquire", "release", "wait", "notify", "notify_all")

    def wait(self, timeout: float | None = None) -> bool:
        """``Condition.wait`` on the server; False when ``timeout`` passed."""
        return bool(self._callmethod("wait", (timeout,)))

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters."""
        self._callmethod("notify", (n,))

    def notify_all(self) -> None:
        """Wake every waiter."""
        self._callmethod("notify_all")

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true; it runs here, not on the server (as the stdlib)."""
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    """A managed ``threading.Event``."""

    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return bool(self._callmethod("is_set"))

    def set(self) -> None:
        """Set the flag, waking every waiter."""
        self._callmethod("set")

    def clear(self) -> None:
        """Reset the flag."""
        self._callmethod("clear")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set; False when ``timeout`` passed."""
        return bool(self._callmethod("wait", (timeout,)))


class BarrierProxy(BaseProxy):
    """A managed ``threading.Barrier``; each attribute read is one round trip."""

    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout: float | None = None) -> int:
        """``Barrier.wait``: this party's index; ``BrokenBarrierError`` if broken or timed out."""
        return int(self._callmethod("wait", (timeout,)))

    def abort(self) -> None:
        """Break the barrier: current and future waiters get ``BrokenBarrierError``."""
        self._callmethod("abort")

    def reset(self) -> None:
        """Return the barrier to its empty state (current waiters get ``BrokenBarrierError``)."""
        self._callmethod("reset")

    @property
    def parties(self) -> int:
        """How many parties must call ``wait``."""
        return int(self._callmethod("__getattribute__", ("parties",)))

    @property
    def n_waiting(self) -> int:
        """How many parties are waiting now."""
        return int(self._callmethod("__getattribute__", ("n_waiting",)))

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken."""
        return bool(self._callmethod("__getattribute__", ("broken",)))


QueueProxy = MakeProxyType(
    "QueueProxy",
    (
        "empty",
        "full",
        "get",
        "get_nowait",
        "put",
        "put_nowait",
        "qsize",
        "task_done",
        "join",
    ),
)

_PoolBase = MakeProxyType(
    "PoolProxy",
    (
        "apply",
        "apply_async",
        "close",
        "imap",
        "imap_unordered",
        "join",
        "map",
        "map_async",
        "starmap",
        "starmap_async",
        "terminate",
    ),
)


class PoolProxy(_PoolBase):  # type: ignore[misc,valid-type]
    """A pool owned by the manager: ``*_async`` return result proxies, ``imap`` an iterator proxy.

    Leaving a ``with`` block terminates the pool, as in the stdlib.
    """

    _method_to_typeid_ = {
        "apply_async": "AsyncResult",
        "map_async": "AsyncResult",
        "starmap_async": "AsyncResult",
        "imap": "Iterator",
        "imap_unordered": "Iterator",
    }

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
