"""BaseManager: register types, start a server process (or connect to one), make proxies.

::

    owner process                                   manager process (a polyproc Process)
    -------------                                   ------------------------------------
    BaseManager.start() ── Process(serve_in_child) ──► Server(registry, address, authkey)
        control socket ◄─────────── ("ok", address) ──  gate + serving threads
        owner socketpair (this thread's connection,
          no handshake) ── m.list(): CREATE ─────────►  objects[id] = list()
                 ◄─ PROXY (id, typeid, exposed) ─────
        shutdown(): a byte on the control socket ────►  stop; join (then terminate)
        owner dies: PR_SET_PDEATHSIG, and EOF on the control socket ─► stop

The life of a manager is a transition table (``_TRANSITIONS``): INITIAL ->
STARTED | CONNECTED -> SHUTDOWN, and anything else raises.
"""

from __future__ import annotations

import _socket
import enum
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .._context import Settings, default_context, get_context
from .._process import process_class
from .._transport import SocketStream, socketpair
from ..errors import ClosedResourceError, ProcessError, StartError
from . import client
from .proxy import AutoProxy, BaseProxy, Token, make_proxy
from .server import Server, TypeSpec, read_status, serve_in_child
from .wire import (
    Address,
    Op,
    SocketCarrier,
    default_address,
    dumps,
    loads_with,
    own_serializer,
)

if TYPE_CHECKING:
    import ssl

__all__ = ["BaseManager", "State"]


class State(enum.Enum):
    INITIAL = "initial"
    STARTED = "started"
    CONNECTED = "connected"
    SHUTDOWN = "shutdown"


_TRANSITIONS: dict[tuple[State, str], State] = {
    (State.INITIAL, "start"): State.STARTED,
    (State.INITIAL, "connect"): State.CONNECTED,
    (State.INITIAL, "get_server"): State.INITIAL,
    (State.STARTED, "shutdown"): State.SHUTDOWN,
    (State.CONNECTED, "shutdown"): State.SHUTDOWN,
    (State.SHUTDOWN, "shutdown"): State.SHUTDOWN,
}


class BaseManager:
    """Shares objects living in a server process (``start``) or another host (``connect``)."""

    __module__ = "polyproc.managers"  # its public home: repr, pickle

    _registry: ClassVar[dict[str, TypeSpec]] = {}

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: Any = None,
        *,
        shutdown_timeout: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        if serializer not in ("pickle", "xmlrpclib"):
            raise ValueError(f"unknown serializer {serializer!r}: 'pickle' or 'xmlrpclib'")
        if authkey is None:
            authkey = client.current_authkey()
        self._address = address
        self._authkey = bytes(authkey)
        self._serializer = serializer
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout  # server side: see gate.py
        self._state = State.INITIAL
        self._process: Any = None
        self._control: _socket.socket | None = None

    def _move(self, action: str) -> None:
        new = _TRANSITIONS.get((self._state, action))
        if new is None:
            if self._state is State.SHUTDOWN:
                raise ClosedResourceError("the manager has been shut down")
            if self._state is State.INITIAL:
                raise ProcessError("the manager has not been started (call start() or connect())")
            raise ProcessError(f"cannot {action}: the manager is already {self._state.value}")
        self._state = new

    # -- registering ------------------------------------------------------------------
    @classmethod
    def register(
        cls,
        typeid: str,
        callable: Callable[..., Any] | None = None,
        proxytype: Any = None,
        exposed: Sequence[str] | None = None,
        method_to_typeid: Mapping[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Make ``typeid`` available: ``manager.<typeid>(*args)`` returns a proxy."""
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)  # a subclass gets its own copy
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in method_to_typeid.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError(f"{key!r} -> {value!r}: method_to_typeid maps str to str")
        cls._registry[typeid] = TypeSpec(
            callable,
            tuple(exposed) if exposed else None,
            dict(method_to_typeid) if method_to_typeid else None,
            proxytype,
        )
        if create_method:

            def create(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
                return self._create_proxy(typeid, args, kwds)

            create.__name__ = create.__qualname__ = typeid
            create.__doc__ = f"Create a {typeid} on the manager server; return its proxy."
            setattr(cls, typeid, create)

    # -- starting -----------------------------------------------------------------------
    def _context(self) -> Settings:
        if self._ctx is None:
            self._ctx = default_context()
        ctx: Settings = self._ctx
        return ctx

    def get_server(self) -> Server:
        """A Server for ``address`` in *this* process; call ``serve_forever()`` on it."""
        self._move("get_server")
        if self._address is None:
            self._address = default_address()
        return Server(
            self._registry,
            self._address,
            self._authkey,
            message_serializer=self._context().serializer,
            ssl_context=self._ssl,
            handshake_timeout=self._handshake_timeout,
        )

    def start(
        self, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()
    ) -> None:
        """Start the server process and wait until it listens."""
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._move("start")
        ctx = self._context()
        if ctx.start_method == "auto":  # decide here: a forked server must close our ends
            from .._launch.parking import fork_is_safe  # not .template: ~0.5 ms we never use

            ctx = get_context("fork" if fork_is_safe() else "forkserver")
        if (
            ctx.start_method == "forkserver"
            and threading.active_count() == 1
            and threading.current_thread() is threading.main_thread()
        ):
            # The forkserver exists because forking a process that has threads can
            # deadlock the child on a lock another thread held. With no other thread
            # there is no such lock, and fork starts the server ~10x sooner than
            # spawning the template first (the stdlib's default before 3.14 is fork).
            ctx = get_context("fork")
        # Two socketpairs: ``control`` (our "ok"/"stop" line, EOF = we are gone) and
        # ``owner``, this thread's first connection, authenticated by construction
        # (only we and the server hold it), so starting costs no connect, no handshake,
        # and not even importing the handshake's code.
        control, control_child = socketpair()
        owner, owner_child = socketpair()
        address = self._address if self._address is not None else default_address()
        fork = ctx.start_method == "fork"
        ssl_context = self._ssl if fork else None
        process = process_class(ctx)(
            target=serve_in_child,
            name=f"{type(self).__name__}-server",
            args=(
                self._registry,
                address,
                self._authkey,
                ssl_context,
                initializer,
                tuple(initargs),
                SocketCarrier(control_child),
            ),
            kwargs={
                "handshake_timeout": self._handshake_timeout,
                # the context's, not ``ctx``'s (which "auto" may have swapped for another)
                "message_serializer": own_serializer(self._context().serializer),
                "owner": SocketCarrier(owner_child),
                # a forked child inherits our ends too: it must close them
                "inherited": SocketCarrier(control, owner) if fork else None,
            },
        )
        process.daemon = True
        try:
            try:
                process.start()
            finally:
                control_child.close()
                owner_child.close()
            status, value = read_status(control, 60.0)
        except BaseException as exc:
            owner.close()
            self._abandon(process, control)
            if isinstance(exc, (EOFError, OSError)):
                why = (
                    "did not report its address within 60 s"
                    if isinstance(exc, TimeoutError)
                    else f"died while starting: {exc}"
                )
                raise StartError(f"the manager process {why}") from exc
            raise
        if status != "ok":
            owner.close()
            self._abandon(process, control)
            raise StartError(f"the manager process could not serve at {address!r}: {value}")
        self._address = value
        self._process, self._control = process, control
        client.remember(value, self._authkey, self._ssl, self._context().serializer)
        client.adopt(value, self._authkey, owner)

    def _abandon(self, process: Any, control: _socket.socket) -> None:
        self._state = State.SHUTDOWN
        control.close()
        if process.pid is not None:
            if process.is_alive():
                process.kill()
            process.join(5.0)

    def connect(self) -> None:
        """Connect to a server already running at ``address`` (started elsewhere)."""
        if self._address is None:
            raise ValueError("connect() needs the manager's address")
        self._move("connect")
        client.remember(self._address, self._authkey, self._ssl, self._context().serializer)
        try:
            self._request(Op.PING, ())
        except BaseException:
            self._state = State.INITIAL
            raise

    def shutdown(self) -> None:
        """Stop the server process (only a manager that ``start()``-ed it owns one)."""
        if self._state is State.SHUTDOWN:
            return
        self._move("shutdown")
        # ``_process`` stays: the stdlib's does, and programs read ``manager._process``'s
        # exitcode and pid after shutdown (its sentinel is released below, not kept open).
        process, control = self._process, self._control
        self._control = None
        if process is None or control is None:
            return
        try:
            SocketStream(control).write_one(b"stop")
        except OSError:
            pass
        process.join(self._shutdown_timeout)
        if process.is_alive():
            process.terminate()
            process.join(self._shutdown_timeout)
            if process.is_alive():
                process.kill()
                process.join()
        process._release_sentinel()  # now, not when the object happens to be collected
        control.close()
        if self._address is not None:
            client.forget(self._address)  # no DECREFs to send to a server that is gone

    # -- using --------------------------------------------------------------------------
    @property
    def address(self) -> Address | None:
        """Where the server listens; None until ``start``/``get_server`` picks one, if none was given."""
        return self._address

    def _request(self, op: int, payload: Any) -> Any:
        if self._state is State.SHUTDOWN:
            raise ClosedResourceError("the manager has been shut down")
        if self._state is State.INITIAL or self._address is None:
            raise ProcessError("the manager has not been started (call start() or connect())")
        ser = client.serializer_for(self._address)
        body = dumps(payload, ser)
        rop, body = client.request(self._address, self._authkey, op, body)
        if rop == Op.RESULT:
            return loads_with(ser, body)
        if rop == Op.PROXY:
            return loads_with(ser, body)
        if rop == Op.ERROR:
            raise loads_with(ser, body)
        from ..errors import RemoteError

        raise RemoteError(loads_with(ser, body))

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Token, tuple[str, ...]]:
        """Make a ``typeid`` object on the server: ``(token, exposed)`` (the stdlib's shape)."""
        ident, typeid, exposed = self._request(Op.CREATE, (typeid, args, kwds or None))
        assert self._address is not None
        return Token(typeid, self._address, ident), exposed

    def _create_proxy(self, typeid: str, args: tuple[Any, ...], kwds: dict[str, Any]) -> BaseProxy:
        token, exposed = self._create(typeid, *args, **kwds)
        return make_proxy(token, type(self), self, self._authkey, exposed)

    def statistics(self) -> dict[str, int]:
        """The server's counts: ``objects``, ``connections``, ``rejected``/``pending`` handshakes."""
        return dict(self._request(Op.STATS, ()))

    def _number_of_objects(self) -> int:
        """The stdlib's debugging helper: how many objects the server holds."""
        return int(self.statistics()["objects"])

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server process to exit (after ``shutdown``)."""
        if self._process is not None:
            self._process.join(timeout)

    def __enter__(self) -> Self:
        if self._state is State.INITIAL:
            self.start()
        elif self._state is not State.STARTED and self._state is not State.CONNECTED:
            raise ClosedResourceError("the manager has been shut down")
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            if self._control is not None:
                self.shutdown()
        except Exception:
            pass

    def __reduce__(self) -> Any:
        raise TypeError("a manager cannot be pickled; pass its proxies (or its address) instead")
