"""The manager server: a table of objects, and one thread per authenticated connection.

::

    Gate (selector thread): accept -> [TLS] -> mutual HMAC -> on_ready(sock)
                                                                |
    serving thread per connection:  recv frame -> decode -> objects[id].method(*args)
                                    <- RESULT / ERROR / PROXY / FAULT

    objects: {id: Entry(obj, typeid, exposed, method_to_typeid, refs)}

A serving thread does recv -> call -> send with no lock of its own: the objects
are ordinary Python objects (``list``, ``queue.Queue``, ``threading.Lock``) whose
own thread safety is what the stdlib's manager offers too. Only the reference
counts (create/incref/decref) take ``_lock``; an object whose count reaches zero
is dropped *outside* the lock, because dropping it may run a nested proxy's
finalizer, which decrefs again.

Nothing a client sends is unpickled before the gate has authenticated it; after
that, an authenticated peer can run code here (pickle): that is the threat model
(docs/managers.md). A connection that sends garbage is closed; the others go on.
"""

from __future__ import annotations

import itertools
import signal
import socket
import ssl
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import ProtocolError
from . import client
from .gate import Gate
from .wire import Address, FrameSocket, Op, dumps, listen_socket, loads

__all__ = ["TypeSpec", "Server", "serve_in_child"]

#: Method names every object answers, exposed or not (as the stdlib's fallbacks).
_FALLBACKS = frozenset({"__str__", "__repr__", "#GETVALUE"})
_VIEW_TYPES: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))


class TypeSpec(NamedTuple):
    """What ``register()`` recorded for a typeid."""

    callable: Callable[..., Any] | None
    exposed: tuple[str, ...] | None
    method_to_typeid: Mapping[str, str] | None
    proxytype: Any


@dataclass(slots=True, eq=False)
class Entry:
    obj: Any
    typeid: str
    exposed: frozenset[str]
    method_to_typeid: Mapping[str, str]
    refs: int


class Server:
    """Owns the objects; serves them at ``address`` to clients that know ``authkey``."""

    def __init__(self, registry: Mapping[str, TypeSpec], address: Address, authkey: bytes,
                 serializer: str = "pickle", *, ssl_context: ssl.SSLContext | None = None,
                 handshake_timeout: float = 10.0, max_pending: int = 256) -> None:
        if not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        self.registry = dict(registry)
        self.authkey = authkey
        self._listener, self.address = listen_socket(address)
        self._objects: dict[int, Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._conns: set[FrameSocket] = set()
        self.stop_event = threading.Event()
        self._gate = Gate(self._listener, authkey, self._on_ready, ssl_context=ssl_context,
                          timeout=handshake_timeout, max_pending=max_pending)
        self._started = False

    # -- life -------------------------------------------------------------------
    def start(self) -> None:
        """Serve in background threads (returns at once)."""
        if self._started:
            return
        self._started = True
        client._state.server = self
        client.remember(self.address, self.authkey, None)
        self._gate.start()

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
        self.stop_event.set()
        self._gate.stop()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for fs in conns:
            try:
                fs.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if client._state.server is self:
            client._state.server = None

    def statistics(self) -> dict[str, int]:
        """Objects held, connections served, handshakes refused (and pending)."""
        return {"objects": len(self._objects), "connections": len(self._conns),
                "rejected": self._gate.rejected, "pending": self._gate.pending}

    # -- the table ---------------------------------------------------------------
    def _exposed(self, spec: TypeSpec, obj: Any) -> tuple[str, ...]:
        exposed = spec.exposed
        if exposed is None and spec.proxytype is not None:
            exposed = getattr(spec.proxytype, "_exposed_", None)
        return tuple(exposed) if exposed is not None else tuple(_public(obj))

    def register_object(self, obj: Any, typeid: str) -> tuple[int, str, tuple[str, ...]]:
        spec = self.registry.get(typeid) or TypeSpec(None, None, None, None)
        exposed = self._exposed(spec, obj)
        m2t = spec.method_to_typeid
        if m2t is None and spec.proxytype is not None:
            m2t = getattr(spec.proxytype, "_method_to_typeid_", None)
        entry = Entry(obj, typeid, frozenset(exposed), dict(m2t or {}), 1)
        ident = next(self._ids)
        with self._lock:
            self._objects[ident] = entry
        return ident, typeid, exposed

    def incref(self, ident: int) -> None:
        with self._lock:
            entry = self._objects.get(ident)
            if entry is not None:
                entry.refs += 1

    def decref(self, ident: int) -> None:
        dropped = None
        with self._lock:
            entry = self._objects.get(ident)
            if entry is not None:
                entry.refs -= 1
                if entry.refs <= 0:
                    dropped = self._objects.pop(ident)
        del dropped  # outside the lock: may run finalizers that decref (see docstring)

    # -- serving ----------------------------------------------------------------
    def _on_ready(self, sock: socket.socket, leftover: bytes) -> None:
        fs = FrameSocket(sock, leftover)
        with self._lock:
            self._conns.add(fs)
        threading.Thread(target=self._serve, args=(fs,), name="polyproc-manager-conn",
                         daemon=True).start()

    def _serve(self, fs: FrameSocket) -> None:
        try:
            while True:
                op, body = fs.recv()
                if op == Op.CALL or op == Op.CALL_INCREF:
                    self._call(fs, op, body)
                elif op == Op.DECREF:
                    for ident in loads(body):
                        self.decref(int(ident))
                elif op == Op.CREATE:
                    self._create(fs, body)
                elif op == Op.PING:
                    fs.send(Op.RESULT, dumps(None))
                elif op == Op.STATS:
                    fs.send(Op.RESULT, dumps(self.statistics()))
                elif op == Op.SHUTDOWN:
                    fs.send(Op.RESULT, dumps(None))
                    self.stop()
                    return
                else:
                    raise ProtocolError(f"unexpected {Op(op).name} frame from a client")
        except (EOFError, OSError, ProtocolError):
            pass  # the client went away, or spoke garbage: only this connection ends
        except Exception:  # pragma: no cover - a bug: keep serving the others
            traceback.print_exc()
        finally:
            with self._lock:
                self._conns.discard(fs)
            fs.close()

    def _call(self, fs: FrameSocket, op: int, body: Any) -> None:
        try:
            ident, method, args, kwargs = loads(body)
        except Exception as exc:
            fs.send(Op.FAULT, dumps(f"malformed request: {exc!r}"))
            return
        entry = self._objects.get(ident)
        if entry is None:
            fs.send(Op.FAULT, dumps(f"no object with id {ident!r} on this manager "
                                    "(released, or it belongs to another server)"))
            return
        if op == Op.CALL_INCREF:
            self.incref(ident)
        obj = entry.obj
        try:
            if method in entry.exposed:
                result = getattr(obj, method)(*args, **kwargs) if kwargs else getattr(obj, method)(*args)
            elif method in _FALLBACKS:
                result = obj if method == "#GETVALUE" else getattr(obj, method)()
            else:
                raise AttributeError(f"method {method!r} of {type(obj)!r} object is not in "
                                     f"the list of allowed methods")
        except Exception as exc:
            self._send_error(fs, exc)
            return
        typeid = entry.method_to_typeid.get(method) if entry.method_to_typeid else None
        if typeid is not None:
            fs.send(Op.PROXY, dumps(self.register_object(result, typeid)))
            return
        if type(result) in _VIEW_TYPES:
            result = list(result)  # dict views do not pickle; the stdlib sends lists too
        try:
            data = dumps(result)
        except Exception as exc:
            fs.send(Op.FAULT, dumps(f"cannot send the result of {method!r}: {exc}"))
            return
        fs.send(Op.RESULT, data)

    def _create(self, fs: FrameSocket, body: Any) -> None:
        try:
            typeid, args, kwargs = loads(body)
            spec = self.registry[typeid]
            if spec.callable is None:
                raise ValueError(f"typeid {typeid!r} has no callable registered on the server")
            obj = spec.callable(*args, **(kwargs or {}))
        except Exception as exc:
            self._send_error(fs, exc)
            return
        fs.send(Op.PROXY, dumps(self.register_object(obj, typeid)))

    @staticmethod
    def _send_error(fs: FrameSocket, exc: BaseException) -> None:
        try:
            data = dumps(exc)
            loads(data)  # an exception that pickles but cannot unpickle must not poison the client
        except Exception:
            fs.send(Op.FAULT, dumps("".join(traceback.format_exception(exc))))
            return
        fs.send(Op.ERROR, data)


def _public(obj: Any) -> list[str]:
    from .proxy import public_methods

    return public_methods(obj)


def serve_in_child(registry: Mapping[str, TypeSpec], address: Address, authkey: bytes,
                   ssl_context: ssl.SSLContext | None, initializer: Callable[..., Any] | None,
                   initargs: tuple[Any, ...], control: Any) -> None:
    """The manager process's target: serve until the owner says stop, or goes away.

    ``control`` is one end of a Pipe: we send our address on it, then any message
    or EOF from the owner means stop.
    """
    # Ctrl+C in a terminal reaches the whole process group; the owner decides (bpo-36368).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    try:
        server = Server(registry, address, authkey, ssl_context=ssl_context)
    except BaseException as exc:
        control.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    server.start()
    control.send(("ok", server.address))
    watcher = threading.Thread(target=_watch_owner, args=(control, server), daemon=True)
    watcher.start()
    server.stop_event.wait()
    server.stop()


def _watch_owner(control: Any, server: Server) -> None:
    try:
        control.recv_bytes()
    except BaseException:
        pass
    server.stop_event.set()
