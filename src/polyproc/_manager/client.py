"""The client side of a manager: persistent connections, one per (thread, server).

::

    proxy._callmethod ──► request(address, key, op, body)
                            ├─ this thread's Channel for that address (made on first use:
                            │    connect, TLS, mutual HMAC handshake; kept until the thread ends)
                            ├─ pending DECREFs for that address go in the same write
                            └─ send frame, read one reply frame

The stdlib opens a new connection for each proxy (per thread) and sends an
INCREF and a DECREF round trip for each proxy made or dropped; here a thread
keeps one connection per server for its whole life, a proxy's first call takes
its reference in the same round trip (``Op.CALL_INCREF``), and finalizers only
*queue* their DECREF (a finalizer may run in the middle of another call on the
same connection, so it must never do I/O itself).

Everything process-wide sits in one holder, ``_state``, which a forked child
resets: the parent's connections and its queued DECREFs are the parent's.
"""

from __future__ import annotations

import _socket
import atexit
import os
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._serialize import Serializer
from ..errors import AuthenticationError, ProtocolError
from .wire import (
    COALESCE,
    HEADER,
    Address,
    FrameSocket,
    Op,
    broken,
    connect_socket,
    dumps,
    encode,
    loads_with,
    own_serializer,
)

if TYPE_CHECKING:
    import ssl

__all__ = [
    "Channel",
    "request",
    "post",
    "Ref",
    "release",
    "remember",
    "credentials_for",
    "current_authkey",
    "adopt",
]

#: Seconds a connect plus handshake may take before the server is declared unreachable.
CONNECT_TIMEOUT = 20.0
# Ops as plain ints for the per-call path (an ``Op.X`` lookup costs ~80 ns).
_CALL_ASYNC, _ASYNC_ERROR = int(Op.CALL_ASYNC), int(Op.ASYNC_ERROR)
_pack = HEADER.pack


class Ref:
    """Whether a proxy holds a server reference it must give back (shared with its finalizer).

    ``owner`` is the fork generation that took the reference (-1: none). A proxy copied
    into a forked child still says "owned" there, but the reference is the parent's: the
    child must take its own (``CALL_INCREF``) and must never give back the parent's.
    """

    __slots__ = ("owner",)

    def __init__(self, owned: bool) -> None:
        self.owner = _state.generation if owned else -1

    @property
    def owned(self) -> bool:
        return self.owner == _state.generation

    def take(self) -> None:
        self.owner = _state.generation


class _AuthChannel:
    """``send_bytes``/``recv_bytes`` over AUTH frames, for ``auth.client_handshake``."""

    def __init__(self, fs: FrameSocket, max_frame: int) -> None:
        self.fs = fs
        self.max_frame = max_frame

    def send_bytes(self, buf: bytes) -> None:
        self.fs.send(Op.AUTH, bytes(buf))

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        op, body = self.fs.recv(self.max_frame if maxlength is None else maxlength)
        if op != Op.AUTH:
            raise ProtocolError(f"{Op(op).name} frame during the handshake")
        return bytes(body)


class Channel:
    """One authenticated connection to a manager server."""

    __slots__ = ("address", "authkey", "fs")

    def __init__(
        self,
        address: Address,
        authkey: bytes,
        ssl_context: ssl.SSLContext | None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        from .._protocol import auth  # here, not at import: ~1 ms, a start needs none

        self.address = address
        self.authkey = authkey
        sock = connect_socket(address, timeout)
        try:
            if ssl_context is not None:
                host = address[0] if isinstance(address, tuple) else None
                sock = ssl_context.wrap_socket(
                    sock, server_hostname=host if ssl_context.check_hostname else None
                )
            fs = FrameSocket(sock)
            try:
                if ssl_context is None:
                    fs.send(Op.HELLO, b"")  # a TLS server hangs up on this at once (Op.HELLO)
                auth.client_handshake(_AuthChannel(fs, auth.MAX_AUTH_FRAME), authkey)
            except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
                raise AuthenticationError(
                    f"the manager at {address!r} closed the connection during the handshake "
                    "(wrong authkey, or TLS expected?)"
                ) from exc
            except TimeoutError as exc:
                raise AuthenticationError(
                    f"the manager at {address!r} did not complete the handshake in time"
                ) from exc
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        fs.wait_in_poll()
        self.fs = fs

    @classmethod
    def adopt(cls, address: Address, authkey: bytes, sock: _socket.socket) -> Channel:
        """A channel over a socket the server already trusts (``BaseManager.start``)."""
        ch = cls.__new__(cls)
        ch.address, ch.authkey = address, authkey
        ch.fs = FrameSocket(sock)
        ch.fs.wait_in_poll()
        return ch

    def close(self) -> None:
        self.fs.close()


class _State:
    """Process-wide client state: the one mutable holder of this module."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        #: address -> (authkey, ssl context) learnt from managers started or connected here
        self.credentials: dict[Address, tuple[bytes, ssl.SSLContext | None]] = {}
        #: address -> the serializer of the manager's context, where not the default
        self.serializers: dict[Address, Serializer] = {}
        #: address -> ids whose DECREF waits for the next request to that address
        self.decrefs: dict[Address, list[int]] = {}
        #: the manager Server running in this process, if any (see proxy rebuilding)
        self.server: Any = None
        #: bumped in every forked child: tells references taken here from inherited ones
        self.generation = 0

    def after_fork(self) -> None:
        channels: dict[Address, Channel] = getattr(self.local, "channels", {})
        for ch in channels.values():
            ch.close()  # our copy only: the parent's connection is untouched
        self.lock = threading.Lock()
        self.local = threading.local()
        self.decrefs = {}
        self.server = None
        self.generation += 1


_state = _State()
os.register_at_fork(after_in_child=_state.after_fork)
_NONE: dict[Address, Channel] = {}  # no channel yet in this thread (never written)


def current_authkey() -> bytes:
    """This process's authkey (``current_process().authkey``), as the stdlib uses by default."""
    from .._process import current_process

    return bytes(current_process().authkey)


def remember(
    address: Address,
    authkey: bytes,
    ssl_context: ssl.SSLContext | None,
    serializer: Serializer | None = None,
) -> None:
    """Record how to reach ``address`` (and how to pickle for it) for proxies made here."""
    own = own_serializer(serializer)
    with _state.lock:
        _state.credentials[address] = (bytes(authkey), ssl_context)
        if own is not None:
            _state.serializers[address] = own


def remember_serializer(address: Address, serializer: Serializer) -> None:
    """Record the serializer of the manager at ``address`` (a proxy that came from it says)."""
    own = own_serializer(serializer)
    if own is not None:
        with _state.lock:
            _state.serializers[address] = own


#: ``serializer_for(address)``: the serializer requests to ``address`` are pickled with
#: (None: the default). The dict's own ``get``, with no Python frame around it: every proxy
#: call asks (``_state.serializers`` is never replaced, a forked child keeps it).
serializer_for: Callable[[Address], Serializer | None] = _state.serializers.get


def credentials_for(address: Address) -> tuple[bytes | None, ssl.SSLContext | None]:
    got = _state.credentials.get(address)
    return got if got is not None else (None, None)


def _channel(address: Address, authkey: bytes | None) -> Channel:
    local = _state.local
    try:
        channels: dict[Address, Channel] = local.channels
    except AttributeError:
        channels = local.channels = {}
    ch = channels.get(address)
    if ch is not None and authkey is not None and authkey != ch.authkey:
        # A caller naming a different key must prove it: a cached, authenticated
        # connection must never stand in for a handshake with another key.
        channels.pop(address).close()
        ch = None
    if ch is None:
        key, ssl_context = credentials_for(address)
        if authkey is None:
            authkey = key if key is not None else current_authkey()
        ch = channels[address] = Channel(address, authkey, ssl_context)
    return ch


def adopt(address: Address, authkey: bytes, sock: _socket.socket) -> None:
    """Make ``sock`` (already trusted by the server at ``address``) this thread's channel."""
    local = _state.local
    try:
        channels: dict[Address, Channel] = local.channels
    except AttributeError:
        channels = local.channels = {}
    old = channels.pop(address, None)
    if old is not None:
        old.close()
    channels[address] = Channel.adopt(address, authkey, sock)


def drop_channel(address: Address) -> None:
    channels: dict[Address, Channel] | None = getattr(_state.local, "channels", None)
    if channels:
        ch = channels.pop(address, None)
        if ch is not None:
            ch.close()


def request(address: Address, authkey: bytes | None, op: int, body: bytes) -> tuple[int, Any]:
    """Send one request on this thread's connection and return the reply ``(op, body)``."""
    # This thread's channel, looked up here (``_channel`` makes one the first time).
    ch = getattr(_state.local, "channels", _NONE).get(address)
    if ch is None or (authkey is not None and authkey != ch.authkey):
        ch = _channel(address, authkey)
    fs = ch.fs
    try:
        if _state.decrefs and _state.decrefs.get(address):
            with _state.lock:
                ids = _state.decrefs.pop(address, [])
            rop, rbody = fs.exchange(encode(Op.DECREF, dumps(ids)) + encode(op, body))
        elif len(body) < COALESCE:
            rop, rbody = fs.exchange(_pack(len(body), op) + body)  # one write, one frame
        else:
            fs.send(op, body)
            rop, rbody = fs.recv()
        while rop == _ASYNC_ERROR:
            warnings.warn(
                f"an earlier fire-and-forget manager call failed: {loads_with(serializer_for(address), rbody)}",
                RuntimeWarning,
                stacklevel=3,
            )
            rop, rbody = fs.recv()
        return rop, rbody
    except BaseException as exc:
        # Whatever happened (the server died, Ctrl+C mid-read), this stream can no
        # longer be trusted to be at a frame boundary: forget it.
        drop_channel(address)
        if isinstance(exc, (OSError, EOFError)) and not isinstance(exc, TimeoutError):
            raise broken(address, exc) from exc
        raise


def post(address: Address, authkey: bytes | None, body: bytes) -> None:
    """Send a CALL_ASYNC (no reply comes): ``lst.append(x)``, ``d[k] = v``.

    The write completes before we return, so the bytes sit in the server's socket
    buffer before this process can tell anyone else about the change (see loop.py).
    """
    ch = getattr(_state.local, "channels", _NONE).get(address)  # as in ``request``
    if ch is None or (authkey is not None and authkey != ch.authkey):
        ch = _channel(address, authkey)
    fs = ch.fs
    try:
        if _state.decrefs and _state.decrefs.get(address):
            with _state.lock:
                ids = _state.decrefs.pop(address, [])
            fs.write(encode(Op.DECREF, dumps(ids)) + encode(_CALL_ASYNC, body))
        else:
            fs.send(_CALL_ASYNC, body)  # one write under COALESCE
    except BaseException as exc:
        drop_channel(address)
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            raise broken(address, exc) from exc
        raise


def release(address: Address, ident: int, ref: Ref) -> None:
    """A proxy's finalizer: queue its DECREF (no I/O here, see the module docstring)."""
    if not ref.owned:
        return  # never took one, or inherited it through fork: not ours to give back
    ref.owner = -1
    server = _state.server
    if server is not None and server.address == address:
        server.decref(ident)
        return
    with _state.lock:
        _state.decrefs.setdefault(address, []).append(ident)


def forget(address: Address) -> None:
    """The server at ``address`` is gone for good (we shut it down): drop what we hold for it."""
    drop_channel(address)
    with _state.lock:
        _state.decrefs.pop(address, None)


def flush(address: Address, timeout: float = 1.0) -> None:
    """Send the DECREFs queued for ``address`` now (best effort)."""
    with _state.lock:
        ids = _state.decrefs.pop(address, [])
    if not ids:
        return
    try:
        ch = _channel(address, None)
        ch.fs.sock.settimeout(timeout)
        ch.fs.send(Op.DECREF, dumps(ids))
        ch.fs.sock.settimeout(None)
    except (OSError, EOFError, AuthenticationError, ProtocolError, ImportError):
        drop_channel(address)


def _flush_all_at_exit() -> None:
    for address in list(_state.decrefs):
        flush(address)


atexit.register(_flush_all_at_exit)
