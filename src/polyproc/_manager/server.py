"""The manager server: a table of objects served to authenticated connections.

::

    Gate (selector thread): accept -> [TLS] -> mutual HMAC -> ServeLoop.add(sock)
    adopt(sock): the owner's first connection (a socketpair made before the fork) -> ServeLoop.add
    ServeLoop (one thread, see loop.py): frames -> handle() -> reply frames
                                         calls that may block -> Deferred -> a worker
                                         per connection -> run() -> reply frames
    objects: {id: Entry(obj, typeid, exposed, method_to_typeid, refs, quick, methods)}

``handle`` unpickles a request and runs it at once if it is *quick*: a call on a
``list``, ``dict``, ``Namespace``, ``Value`` or ``array`` (their methods never
block), or the creation of a standard type. Anything else (``Queue.get``, locks,
a Pool, a user class) runs on the connection's worker thread, as the stdlib's
thread per connection would have run it.

Only the reference counts (create/incref/decref) take ``_lock``; an object
whose count reaches zero is dropped *outside* the lock, because dropping it may
run a nested proxy's finalizer, which decrefs again.

Nothing a client sends is unpickled before the gate has authenticated it; after
that, an authenticated peer can run code here (pickle): that is the threat model
(docs/managers.md). A connection that sends garbage is closed; the others go on.
"""

from __future__ import annotations

import _socket
import array
import itertools
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .._serialize import Serializer, reducers
from .._transport import SocketStream
from ..errors import MethodNotExposedError, ProtocolError
from . import client
from .gate import Gate
from .loop import Deferred, ServeLoop
from .proxytypes import Namespace, Value, make_array
from .wire import (
    HEADER,
    Address,
    FrameSocket,
    Op,
    SocketCarrier,
    dumps,
    encode,
    listen_socket,
    loads,
    loads_with,
    own_serializer,
)

if TYPE_CHECKING:
    import ssl

__all__ = ["TypeSpec", "Server", "serve_in_child"]

#: Method names every object answers, exposed or not (as the stdlib's fallbacks).
_FALLBACKS = frozenset({"__str__", "__repr__", "#GETVALUE"})
_VIEW_TYPES: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
# The ops as plain ints: the hot path compares with these (an ``Op.X`` lookup costs ~80 ns).
_CALL, _CALL_INCREF, _CALL_ASYNC = int(Op.CALL), int(Op.CALL_INCREF), int(Op.CALL_ASYNC)
_CREATE, _DECREF, _PING = int(Op.CREATE), int(Op.DECREF), int(Op.PING)
_STATS, _SHUTDOWN, _RESULT = int(Op.STATS), int(Op.SHUTDOWN), int(Op.RESULT)
_CALL_OPS = frozenset({_CALL, _CALL_INCREF, _CALL_ASYNC})
_pack = HEADER.pack
_pickle_dumps = pickle.dumps
#: Requests that never block and are cheap: run on the loop thread itself.
_QUICK_OPS = frozenset({_DECREF, _PING, _STATS, _SHUTDOWN})
#: Objects whose methods never block (run on the loop thread) ...
_QUICK_TYPES = frozenset({list, dict, Namespace, Value, array.array})
#: ... and constructors that never block (SyncManager's standard types).
_QUICK_CREATORS = frozenset(
    {
        list,
        dict,
        Namespace,
        Value,
        make_array,
        queue.Queue,
        threading.Event,
        threading.Lock,
        threading.RLock,
        threading.Semaphore,
        threading.BoundedSemaphore,
        threading.Condition,
        threading.Barrier,
    }
)


class TypeSpec(NamedTuple):
    """What ``register()`` recorded for a typeid."""

    callable: Callable[..., Any] | None
    exposed: tuple[str, ...] | None
    method_to_typeid: Mapping[str, str] | None
    proxytype: Any


class Entry:
    """One held object: what its proxies may call, its reference count, whether it is quick.

    ``methods``: for a quick object (a builtin ``list``, ``dict`` ...: its attributes
    never change), its exposed methods already bound, so that a call is one dict
    lookup instead of a membership test plus ``getattr`` (which makes a new bound
    method each time). Empty for any other object: a user's object may change its
    attributes, and is looked up per call as the stdlib does (``Server.invoke``).
    Only exposed names are ever in it, so it checks as much as ``exposed`` does.

    (A plain slots class: a dataclass costs ``dataclasses`` and ``inspect`` at import.)
    """

    __slots__ = ("obj", "typeid", "exposed", "method_to_typeid", "refs", "quick", "methods")

    def __init__(
        self,
        obj: Any,
        typeid: str,
        exposed: frozenset[str],
        method_to_typeid: Mapping[str, str],
        refs: int,
        quick: bool,
    ) -> None:
        self.obj = obj
        self.typeid = typeid
        self.exposed = exposed
        self.method_to_typeid = method_to_typeid
        self.refs = refs
        self.quick = quick  # its methods never block: run them on the loop thread
        self.methods: dict[str, Callable[..., Any]] = {}
        if quick:
            for name in exposed:
                method = getattr(obj, name, None)
                if method is not None:
                    self.methods[name] = method


class Server:
    """Owns the objects; serves them at ``address`` to clients that know ``authkey``."""

    def __init__(
        self,
        registry: Mapping[str, TypeSpec],
        address: Address,
        authkey: bytes,
        serializer: str = "pickle",
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        max_pending: int = 256,
        message_serializer: Serializer | None = None,
    ) -> None:
        if not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        self.registry = dict(registry)
        self.authkey = authkey
        #: the manager's context's serializer for replies (None: the default's fast path)
        self._ser = own_serializer(message_serializer)
        #: ``loads`` of request bodies (the serializer's own, else plain pickle)
        self._loads: Callable[[bytes], Any] = loads if self._ser is None else self._ser.loads
        #: the whole RESULT frame of a call that returned None (most calls): built once
        self._none_frame = encode(Op.RESULT, dumps(None, self._ser))
        self._listener, self.address = listen_socket(address)
        self._objects: dict[int, Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop = ServeLoop(self.decode, self.run, self.handle)
        self.stop_event = threading.Event()
        self._gate = Gate(
            self._listener,
            authkey,
            self._on_ready,
            ssl_context=ssl_context,
            timeout=handshake_timeout,
            max_pending=max_pending,
        )
        self._loop.handshakes = self._gate.handshakes
        self._started = False
        self._serving_here = False

    @property
    def listener(self) -> _socket.socket:
        """The listening socket (the stdlib's attribute: ``close()`` frees the address)."""
        return self._listener

    # -- life -------------------------------------------------------------------
    def start(self, *, loop_thread: bool = True) -> None:
        """Serve in background threads (returns at once).

        ``loop_thread=False`` starts the gate only: the caller then serves on its own
        thread with ``serve_here`` (the manager process's main thread does).
        """
        if self._started:
            return
        self._started = True
        client._state.server = self
        client.remember(self.address, self.authkey, None, self._ser)
        if loop_thread:
            self._loop.start()
        self._gate.start()

    def serve_here(self, control: _socket.socket | None = None) -> None:
        """Run the serving loop on this thread until ``stop()``, a SHUTDOWN, or (given
        ``control``) any byte or end of stream on ``control``. After ``start(loop_thread=False)``."""
        if control is not None:
            self._loop.watch(control.fileno(), self._stop_serving_here)
        self._serving_here = True
        self._loop.run()

    def _stop_serving_here(self) -> None:
        """On the loop thread of ``serve_here``: no other thread would stop the loop."""
        self.stop_event.set()
        self._loop.stop()

    def adopt(self, sock: _socket.socket) -> None:
        """Serve ``sock`` without a handshake: only for a socket nobody but our owner holds."""
        self._loop.add(SocketStream(sock), b"")

    def serve_forever(self) -> None:
        """Serve until a client sends SHUTDOWN (``manager.shutdown()``) or Ctrl+C."""
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting and serving; ``serve_forever`` then returns."""
        self.stop_event.set()
        self._gate.stop()
        try:
            self._listener.close()
        except OSError:
            pass
        self._loop.stop()
        if client._state.server is self:
            client._state.server = None

    def statistics(self) -> dict[str, int]:
        """Objects held, connections served, handshakes refused (and pending)."""
        return {
            "objects": len(self._objects),
            "connections": len(self._loop.conns),
            "rejected": self._gate.rejected,
            "pending": self._gate.pending,
        }

    # -- the table ---------------------------------------------------------------
    def _exposed(self, spec: TypeSpec, obj: Any) -> tuple[str, ...]:
        exposed = spec.exposed
        if exposed is None and spec.proxytype is not None:
            exposed = getattr(spec.proxytype, "_exposed_", None)
        return tuple(exposed) if exposed is not None else tuple(_public(obj))

    def register_object(self, obj: Any, typeid: str) -> tuple[int, str, tuple[str, ...]]:
        """Hold ``obj`` with one reference; ``(id, typeid, exposed methods)`` for its proxy."""
        spec = self.registry.get(typeid) or TypeSpec(None, None, None, None)
        exposed = self._exposed(spec, obj)
        m2t = spec.method_to_typeid
        if m2t is None and spec.proxytype is not None:
            m2t = getattr(spec.proxytype, "_method_to_typeid_", None)
        entry = Entry(
            obj, typeid, frozenset(exposed), dict(m2t or {}), 1, type(obj) in _QUICK_TYPES
        )
        ident = next(self._ids)
        with self._lock:
            self._objects[ident] = entry
        return ident, typeid, exposed

    def incref(self, ident: int) -> None:
        """One more proxy refers to object ``ident`` (unknown ids are ignored)."""
        with self._lock:
            entry = self._objects.get(ident)
            if entry is not None:
                entry.refs += 1

    def decref(self, ident: int) -> None:
        """One proxy fewer; the object is dropped when none is left."""
        dropped = None
        with self._lock:
            entry = self._objects.get(ident)
            if entry is not None:
                entry.refs -= 1
                if entry.refs <= 0:
                    dropped = self._objects.pop(ident)
        del dropped  # outside the lock: may run finalizers that decref (see docstring)

    # -- serving (called by the loop, and by workers for calls that may block) --------
    def _on_ready(self, sock: _socket.socket, leftover: bytes) -> None:
        self._loop.add(SocketStream(sock), leftover)

    def handle(self, op: int, body: bytes) -> bytes | Deferred | None:
        """One request frame on the loop thread: the reply frame, None (no reply due),
        or ``Deferred`` for a call that may block (the connection's worker ``run``s it).

        ``decode`` and ``run`` in one: a quick call (most of them) is unpickled, run
        and answered in two frames of ours (this and ``call``). Anything unusual is
        handled as ``run`` would: a request that does not unpickle, or whose id cannot
        be looked up, is answered (FAULT / ASYNC_ERROR), never raised into the loop.
        """
        if op in _CALL_OPS:
            try:
                request = self._loads(body)
            except Exception as exc:
                return self._malformed(op, exc)
            return self.call(op, request, True)
        quick, request = self.decode(op, body)
        return self._run_other(op, request) if quick else Deferred(op, request)

    def decode(self, op: int, body: bytes) -> tuple[bool, Any]:
        """``(quick, request)`` for a frame; ProtocolError ends a connection that sends nonsense.

        (``handle`` is the loop's fast path; this stays for every other op and as the
        split form ``ServeLoop(decode, run)`` takes.) A request that does not unpickle,
        or whose id cannot be looked up, becomes a ``_Malformed`` answered with FAULT
        (``run``), never an exception in the loop.
        """
        if op in _CALL_OPS:
            try:
                request = self._loads(body)
                entry = self._objects.get(request[0])
            except Exception as exc:
                return True, _Malformed(exc)
            return (entry is None or entry.quick), request
        if op in _QUICK_OPS:
            return True, loads(body) if op == _DECREF else None
        try:
            request = self._loads(body)
        except Exception as exc:
            return True, _Malformed(exc)
        if op == _CREATE:
            spec = self.registry.get(request[0]) if isinstance(request, tuple) and request else None
            return (spec is not None and spec.callable in _QUICK_CREATORS), request
        raise ProtocolError(f"unexpected {Op(op).name} frame from a client")

    def _run_other(self, op: int, request: Any) -> bytes | None:
        """``run`` for every op but the calls."""
        if isinstance(request, _Malformed):
            return encode(Op.FAULT, dumps(f"malformed request: {request.exc!r}", self._ser))
        if op == _DECREF:
            for ident in request:
                self.decref(int(ident))
            return None
        if op == _CREATE:
            return self._create(request)
        if op == _PING:
            return self._none_frame
        if op == _STATS:
            return encode(Op.RESULT, dumps(self.statistics(), self._ser))
        if op == _SHUTDOWN:
            if self._serving_here:
                self._stop_serving_here()  # the reply still goes out (loop.py flushes it)
            else:
                self.stop_event.set()  # serve_forever's thread stops us
            return self._none_frame
        return encode(Op.FAULT, dumps(f"unexpected {op}", self._ser))  # pragma: no cover

    def run(self, op: int, request: Any) -> bytes | None:
        """Carry out one decoded request (a worker's, or ``decode``'s); the encoded reply
        frame, or None when none is due."""
        if op not in _CALL_OPS:
            return self._run_other(op, request)
        if isinstance(request, _Malformed):
            return self._malformed(op, request.exc)
        reply = self.call(op, request, False)
        assert not isinstance(reply, Deferred)  # noqa: S101 - loop_thread=False never defers
        return reply

    def _malformed(self, op: int, why: BaseException) -> bytes:
        # A fire-and-forget call gets no reply of its own: its error is the kind the
        # client reads (and warns about) in front of its next reply.
        fault = Op.ASYNC_ERROR if op == _CALL_ASYNC else Op.FAULT
        return encode(fault, dumps(f"malformed request: {why!r}", self._ser))

    def call(self, op: int, request: Any, loop_thread: bool) -> bytes | Deferred | None:
        """A CALL, CALL_INCREF or CALL_ASYNC: the hot path of every proxy method.

        On the loop thread (``loop_thread``) a call on an object that is not quick is
        returned as ``Deferred``, for the connection's worker. The method comes from
        the entry's table of bound exposed methods (quick objects) or ``invoke`` (the
        others: exposed check, then ``getattr``); a result of None is a pre-encoded
        frame; any other is pickled here (``wire.dumps``'s fast path inlined).
        """
        try:
            ident, method, args, kwargs = request
            entry = self._objects.get(ident)
        except Exception as exc:
            return self._malformed(op, exc)
        if entry is None:
            text = (
                f"no object with id {ident!r} on this manager "
                "(released, or it belongs to another server)"
            )
            return encode(Op.ASYNC_ERROR if op == _CALL_ASYNC else Op.FAULT, dumps(text, self._ser))
        if loop_thread and not entry.quick:
            return Deferred(op, request)
        if op == _CALL_INCREF:
            self.incref(ident)
        try:
            fn = entry.methods.get(method)
            if fn is not None:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            else:
                result = self.invoke(entry, method, args, kwargs)
        except Exception as exc:
            if op == _CALL_ASYNC:
                return encode(
                    Op.ASYNC_ERROR, dumps(f"{method}() failed on the manager: {exc!r}", self._ser)
                )
            return self._error(exc)
        if op == _CALL_ASYNC:
            return None
        if entry.method_to_typeid:
            typeid = entry.method_to_typeid.get(method)
            if typeid is not None:
                return encode(Op.PROXY, dumps(self.register_object(result, typeid), self._ser))
        if result is None:
            return self._none_frame
        if type(result) in _VIEW_TYPES:
            result = list(result)  # dict views do not pickle; the stdlib sends lists too
        ser = self._ser
        try:
            if ser is None and not reducers.table:
                try:
                    body = _pickle_dumps(result, 5)
                except Exception:
                    body = dumps(result, None)  # cloudpickle, or the serializer's own error
            else:
                body = dumps(result, ser)
        except Exception as exc:
            return encode(
                Op.FAULT, dumps(f"cannot send the result of {method!r}: {exc}", self._ser)
            )
        return _pack(len(body), _RESULT) + body

    @staticmethod
    def invoke(entry: Entry, method: str, args: Any, kwargs: Any) -> Any:
        """Call an exposed ``method`` on a held object; AttributeError for any other name."""
        obj = entry.obj
        if method in entry.exposed:
            return getattr(obj, method)(*args, **kwargs) if kwargs else getattr(obj, method)(*args)
        if method in _FALLBACKS:
            return obj if method == "#GETVALUE" else getattr(obj, method)()
        raise MethodNotExposedError(
            f"method {method!r} of {type(obj)!r} object is not in the list of allowed methods"
        )

    def call_local(self, ident: int, method: str, args: Any, kwargs: Any) -> tuple[str, Any]:
        """A call from a proxy living in this very process (nested proxies): no socket."""
        entry = self._objects.get(ident)
        if entry is None:
            return "fault", f"no object with id {ident!r} on this manager"
        result = self.invoke(entry, method, args, kwargs)
        typeid = entry.method_to_typeid.get(method) if entry.method_to_typeid else None
        if typeid is not None:
            return "proxy", self.register_object(result, typeid)
        return "result", result

    def _create(self, request: Any) -> bytes:
        try:
            typeid, args, kwargs = request
            spec = self.registry[typeid]
            if spec.callable is None:
                raise ValueError(f"typeid {typeid!r} has no callable registered on the server")
            obj = spec.callable(*args, **(kwargs or {}))
        except Exception as exc:
            return self._error(exc)
        return encode(Op.PROXY, dumps(self.register_object(obj, typeid), self._ser))

    def _error(self, exc: BaseException) -> bytes:
        try:
            data = dumps(exc, self._ser)
            loads_with(
                self._ser, data
            )  # an exception that pickles but cannot unpickle must not poison the client
        except Exception:
            import traceback  # here: 2.5 ms at import for an unusual reply

            return encode(Op.FAULT, dumps("".join(traceback.format_exception(exc)), self._ser))
        return encode(Op.ERROR, data)


class _Malformed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _public(obj: Any) -> list[str]:
    from .proxy import public_methods

    return public_methods(obj)


def serve_in_child(
    registry: Mapping[str, TypeSpec],
    address: Address,
    authkey: bytes,
    ssl_context: ssl.SSLContext | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    control: SocketCarrier,
    *,
    handshake_timeout: float = 10.0,
    owner: SocketCarrier | None = None,
    inherited: SocketCarrier | None = None,
    message_serializer: Serializer | None = None,
) -> None:
    """The manager process's target: serve until the owner says stop, or goes away.

    ``control`` carries one socket: we send ``("ok", address)`` (or ``("error",
    text)``) on it, then any byte or EOF from the owner means stop. ``owner`` is
    the owner's first connection, served without a handshake (see
    ``BaseManager.start``); ``inherited`` are the owner's own ends, which a forked
    child must close (or our EOF on them would never come).
    """
    # Ctrl+C in a terminal reaches the whole process group; the owner decides (bpo-36368).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sock in inherited.socks if inherited is not None else ():
        sock.close()
    ctl = control.socks[0]
    if initializer is not None:
        initializer(*initargs)
    try:
        server = Server(
            registry,
            address,
            authkey,
            ssl_context=ssl_context,
            handshake_timeout=handshake_timeout,
            message_serializer=message_serializer,
        )
    except BaseException as exc:
        _send_status(ctl, ("error", f"{type(exc).__name__}: {exc}"))
        raise
    if owner is not None:
        server.adopt(owner.socks[0])
    # The gate starts before we report ready: processes the owner starts right
    # away (the tutorial's two workers) must find it up, or they queue in the
    # backlog, get in together and race each other in lockstep.
    server.start(loop_thread=False)
    _send_status(ctl, ("ok", server.address))
    # This thread serves (the owner's first call may already wait: no thread to start
    # first), and watches the control socket: a byte or EOF from the owner means stop.
    try:
        server.serve_here(ctl)
    finally:
        server.stop()


def _send_status(sock: _socket.socket, status: tuple[str, Any]) -> None:
    FrameSocket(sock).send(Op.RESULT, dumps(status))


def read_status(sock: _socket.socket, timeout: float) -> tuple[str, Any]:
    """The owner's side of ``_send_status``: TimeoutError, or EOFError if the child died."""
    sock.settimeout(timeout)
    try:
        _op, body = FrameSocket(sock).recv(1 << 16)
    finally:
        sock.settimeout(None)
    status, value = loads(body)
    return str(status), value
