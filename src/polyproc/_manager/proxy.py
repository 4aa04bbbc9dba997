"""Token, BaseProxy, AutoProxy and MakeProxyType: objects that call a manager's objects.

A proxy is a ``Token`` (typeid, server address, object id) plus a ``Ref`` (do we
hold a server reference?). Calls go through ``client.request`` on this thread's
persistent connection::

    proxy.append(4)  ->  CALL (id, 'append', (4,), None)  ->  server
                     <-  RESULT None | ERROR exc (re-raised) | PROXY (id, typeid, exposed)
                                                              | FAULT text (RemoteError)

Reference counting, without the stdlib's extra round trips:

* a proxy made by ``manager.list()`` adopts the reference its CREATE made;
* a proxy rebuilt from a pickle in another process takes its reference with its
  first call (``CALL_INCREF``), and gives it back (a queued DECREF) when
  collected. Rebuilt inside the server process itself (a managed dict holding a
  managed list), it counts directly in the server's table, with no I/O.

Proxy classes are built by ``MakeProxyType`` from a method list with closures,
not ``exec``.
"""

from __future__ import annotations

import pickle
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._serialize import Serializer, reducers
from ..errors import RemoteError, SerializationError
from . import client
from .wire import Address, Op, dumps, loads_with

__all__ = ["Token", "BaseProxy", "AutoProxy", "MakeProxyType", "RebuildProxy", "public_methods"]

_CALL, _CALL_INCREF, _RESULT = int(Op.CALL), int(Op.CALL_INCREF), int(Op.RESULT)
_loads, _pickle_dumps = pickle.loads, pickle.dumps


class Token:
    """Identifies one object on one manager server: immutable, compared and hashed by value.

    A plain class, not a dataclass: ``dataclasses`` (with ``inspect``) cost ~9 ms to
    import and each decorated class ~1 ms to build, on the way to ``Manager()``.
    """

    __slots__ = ("typeid", "address", "id")

    typeid: str
    address: Address
    id: int

    def __init__(self, typeid: str, address: Address, id: int) -> None:  # noqa: A002 - stdlib name
        object.__setattr__(self, "typeid", typeid)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "id", id)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Token is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Token is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Token:
            return NotImplemented
        return (self.typeid, self.address, self.id) == (other.typeid, other.address, other.id)

    def __hash__(self) -> int:
        return hash((self.typeid, self.address, self.id))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Token, (self.typeid, self.address, self.id))

    def __repr__(self) -> str:
        return f"Token(typeid={self.typeid!r}, address={self.address!r}, id={self.id})"


def public_methods(obj: Any) -> list[str]:
    """The names a proxy may call when nobody listed them: public callables (as the stdlib)."""
    return [name for name in dir(obj) if name[0] != "_" and callable(getattr(obj, name, None))]


class BaseProxy:
    """A reference to an object living in a manager's server process."""

    _exposed_: tuple[str, ...] | None = None
    _method_to_typeid_: Mapping[str, str] | None = None
    #: Methods whose result is always None and that cannot fail on the referent's
    #: type: sent without waiting for a reply (see loop.py for why that stays ordered).
    _async_methods_: frozenset[str] = frozenset()
    _isauto = False

    def __init__(
        self,
        token: Token,
        serializer: str = "pickle",
        manager: Any = None,
        authkey: bytes | None = None,
        exposed: Iterable[str] | None = None,
        incref: bool = True,
        manager_owned: bool = False,
    ) -> None:
        # ``incref=False`` means: adopt a reference someone already took for us
        # (the CREATE that made the object), and give it back when collected.
        self._token = token
        self._id = token.id
        self._address = token.address
        self._serializer = serializer
        self._manager = manager
        self._manager_cls: type | None = type(manager) if manager is not None else None
        self._authkey = bytes(authkey) if authkey is not None else None
        if exposed is not None:
            self._exposed_ = tuple(exposed)
        self._ref = client.Ref(owned=not incref)
        self._manager_owned = manager_owned
        server = client._state.server
        self._local_server: Any = None
        if server is not None and server.address == token.address:
            # Inside the server itself: count and call directly, no connection needed.
            self._local_server = server
            if incref:
                server.incref(token.id)
                self._ref.take()
        weakref.finalize(self, client.release, token.address, token.id, self._ref)

    # -- calling --------------------------------------------------------------
    def _callmethod(
        self, methodname: str, args: tuple[Any, ...] = (), kwds: Mapping[str, Any] | None = None
    ) -> Any:
        """Call ``methodname`` on the referent and return its result (or raise its error)."""
        if self._serializer != "pickle":
            return _xmlrpc_call(self, methodname, args, kwds)
        return self._call(methodname, args, kwds)

    def _call(self, methodname: str, args: tuple[Any, ...], kwds: Mapping[str, Any] | None) -> Any:
        # Every proxy method comes here: ops as ints, one dumps, one request, one loads.
        if self._local_server is not None and self._local_server is client._state.server:
            return self._call_local(methodname, args, kwds)
        address, ref = self._address, self._ref
        ser = client.serializer_for(address)
        message = (self._id, methodname, args, kwds or None)
        try:
            # ``wire.dumps``'s fast path without its frame; anything unusual (a
            # registered reducer, a lambda, an error) goes the whole way.
            if ser is None and not reducers.table:
                try:
                    request = _pickle_dumps(message, 5)
                except Exception:
                    request = dumps(message, ser)
            else:
                request = dumps(message, ser)
        except SerializationError as err:
            raise _pickling_error(err) from None
        if ref.owner == client._state.generation:  # ``ref.owned``, without a frame
            if methodname in self._async_methods_:
                client.post(address, self._authkey, request)
                return None
            op = _CALL
        else:
            op = _CALL_INCREF
        rop, body = client.request(address, self._authkey, op, request)
        if rop == _RESULT:
            if op == _CALL_INCREF:
                ref.take()
            return _loads(body) if ser is None else ser.loads(body)
        return self._unusual_reply(op, rop, body)

    def _call_local(
        self, methodname: str, args: tuple[Any, ...], kwds: Mapping[str, Any] | None
    ) -> Any:
        kind, value = self._local_server.call_local(self._id, methodname, args, kwds)
        if kind == "result":
            return value
        if kind == "proxy":
            ident, typeid, exposed = value
            return make_proxy(
                Token(typeid, self._address, ident),
                self._manager_cls,
                self._manager,
                self._authkey,
                exposed,
            )
        raise RemoteError(value)

    def _unusual_reply(self, op: int, rop: int, body: Any) -> Any:
        ser = client.serializer_for(self._address)
        if rop == Op.FAULT:
            raise RemoteError(loads_with(ser, body))
        if op == Op.CALL_INCREF:
            self._ref.take()
        if rop == Op.ERROR:
            raise loads_with(ser, body)
        if rop == Op.PROXY:
            ident, typeid, exposed = loads_with(ser, body)
            return make_proxy(
                Token(typeid, self._address, ident),
                self._manager_cls,
                self._manager,
                self._authkey,
                exposed,
            )
        raise RemoteError(f"unexpected reply {rop} from the manager at {self._address!r}")

    def _getvalue(self) -> Any:
        """A copy of the referent."""
        return self._callmethod("#GETVALUE")

    # -- identity and pickling ---------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        kwds: dict[str, Any] = {}
        if self._isauto:
            kwds["exposed"] = self._exposed_
        server = client._state.server
        # Inside the server we never write the key into a pickle: the reader of a
        # reply is already connected (and authenticated) to this very server.
        in_server = server is not None and server.address == self._address
        key = None if in_server else self._authkey
        if key is None and not in_server:
            key = client.credentials_for(self._address)[0]
        cls: Any = AutoProxy if self._isauto else type(self)
        if in_server:
            # A proxy the server sends out (``d['inner']`` where d holds a managed list):
            # the reference travels with it, taken now and adopted by the receiver, or
            # the server's own copy could be dropped (``d.clear()``) before the
            # receiver's first call takes one, and the object would be gone.
            server.incref(self._id)
            adopt = True
        else:
            adopt = False
        # The manager's message serializer travels too (None: the default), so a process
        # that only ever received this proxy pickles its calls as the server reads them.
        ser = client.serializer_for(self._address)
        args = (cls, self._token, self._serializer, kwds, key, self._manager_cls, adopt, ser)
        return (RebuildProxy, args if ser is not None else args[: 7 if adopt else 6])

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        """The referent's repr, as the stdlib shows it (``[1, 2, 3]``)."""
        try:
            return str(self._callmethod("__repr__"))
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def _pickling_error(err: SerializationError) -> BaseException:
    """An argument that does not pickle raises the pickler's own error, with a note naming
    the part that failed: as the stdlib (and polyproc's pool) does, so that
    ``manager.Pool().map(f, [obj])`` with a ``__reduce__`` raising ``RuntimeError`` raises
    ``RuntimeError``."""
    from .._pool.messages import pickling_error

    return pickling_error(err)


def RebuildProxy(
    func: Callable[..., BaseProxy],
    token: Token,
    serializer: str,  # noqa: N802
    kwds: dict[str, Any],
    authkey: bytes | None = None,
    manager_cls: type | None = None,
    adopt: bool = False,
    message_serializer: Serializer | None = None,
) -> BaseProxy:
    """Unpickle a proxy: it takes its own reference on first use (or at once, in the server);
    ``adopt``: the sender (the server) took one for it already; ``message_serializer``: the
    manager's, when not the default."""
    if authkey is not None and client.credentials_for(token.address)[0] is None:
        client.remember(token.address, authkey, None, message_serializer)
    elif message_serializer is not None and client.serializer_for(token.address) is None:
        client.remember_serializer(token.address, message_serializer)
    proxy = func(token, serializer, authkey=authkey, incref=not adopt, **kwds)
    proxy._manager_cls = manager_cls
    return proxy


def make_proxy(
    token: Token,
    manager_cls: type | None,
    manager: Any,
    authkey: bytes | None,
    exposed: Iterable[str] | None,
) -> BaseProxy:
    """A proxy for a reference the server just made for us (CREATE, or a PROXY result)."""
    proxytype: Any = None
    if manager_cls is not None:
        spec = getattr(manager_cls, "_registry", {}).get(token.typeid)
        proxytype = spec.proxytype if spec is not None else None
    if proxytype is None:
        proxytype = AutoProxy
    serializer = getattr(manager, "_serializer", "pickle")
    proxy: BaseProxy = proxytype(
        token, serializer, manager=manager, authkey=authkey, exposed=exposed, incref=False
    )
    proxy._manager_cls = manager_cls
    return proxy


def _xmlrpc_call(
    proxy: BaseProxy, methodname: str, args: tuple[Any, ...], kwds: Mapping[str, Any] | None
) -> Any:
    """A call under ``serializer='xmlrpclib'``: values limited to XML-RPC's types, as the stdlib.

    Arguments and results go through ``xmlrpc.client``'s marshalling (tuples arrive
    as lists; a function, a set or any other object raises ``TypeError`` here); the
    frames themselves stay polyproc's (pickle, after the HMAC handshake).
    """
    args = tuple(_xmlrpc_filter(list(args)))
    kwds = _xmlrpc_filter(dict(kwds)) if kwds else None
    result = proxy._call(methodname, args, kwds)
    return result if isinstance(result, BaseProxy) else _xmlrpc_filter(result)


def _xmlrpc_filter(value: Any) -> Any:
    import xmlrpc.client

    data = xmlrpc.client.dumps((value,), allow_none=True)
    return xmlrpc.client.loads(data, use_builtin_types=True)[0][0]


def _method(name: str) -> Callable[..., Any]:
    def method(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(name, args, kwds)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Call ``{name}`` on the managed object and return its result."
    return method


def MakeProxyType(
    name: str,
    exposed: Iterable[str],  # noqa: N802 - stdlib name
    _cache: dict[tuple[str, tuple[str, ...]], type[BaseProxy]] | None = None,
    *,
    bases: tuple[type, ...] = (BaseProxy,),
    module: str | None = None,
) -> type[BaseProxy]:
    """A proxy class whose methods ``exposed`` forward to the referent."""
    exposed = tuple(exposed)
    key = (name, exposed)
    if _cache is not None and key in _cache:
        return _cache[key]
    namespace: dict[str, Any] = {name_: _method(name_) for name_ in exposed}
    namespace["_exposed_"] = exposed
    namespace["__doc__"] = (
        f"Proxy whose methods ({', '.join(exposed) or 'none'}) "
        "call their namesakes on the managed object."
    )
    # Pickled by reference: name the module that binds the class (the caller's).
    namespace["__module__"] = module or sys._getframe(1).f_globals.get("__name__", __name__)
    cls = type(name, bases, namespace)
    if _cache is not None:
        _cache[key] = cls
    return cls


class _AutoState:
    """Generated AutoProxy classes, by (typeid, exposed): made once per process."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, tuple[str, ...]], type[BaseProxy]] = {}


_auto = _AutoState()


def AutoProxy(
    token: Token,
    serializer: str = "pickle",
    manager: Any = None,  # noqa: N802
    authkey: bytes | None = None,
    exposed: Iterable[str] | None = None,
    incref: bool = True,
    manager_owned: bool = False,
) -> BaseProxy:
    """A proxy for any object: its methods are those the server says it exposes."""
    if exposed is None:
        raise RemoteError(f"AutoProxy for {token.typeid!r} needs the exposed method list")
    exposed = tuple(exposed)
    cls = _auto.cache.get((token.typeid, exposed))
    if cls is None:
        cls = MakeProxyType(f"AutoProxy[{token.typeid}]", exposed, module=__name__)
        cls._isauto = True
        _auto.cache[(token.typeid, exposed)] = cls
    return cls(
        token,
        serializer,
        manager=manager,
        authkey=authkey,
        exposed=exposed,
        incref=incref,
        manager_owned=manager_owned,
    )
