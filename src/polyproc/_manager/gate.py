"""The gate: accepts connections and authenticates them, off the serving threads.

::

    listening socket --accept--> pending handshakes (non-blocking, one selector thread)
                                   TLS handshake (if ssl_context) -> ServerHandshake frames
                                   |  deadline passed / cap reached / garbage / wrong key
                                   |       -> closed (nothing was unpickled)
                                   v  both sides proved the key
                                 on_ready(sock, leftover) -> the server's loop serves it

Frames are ``_protocol.compact``'s; bytes move through an ``Outbox`` and a
``SocketStream`` per handshake (``_transport``), never straight on the socket.

Why a selector and not a thread per newcomer: a flood of connections that never
say a word must cost a socket and a few hundred bytes each, not a thread. The
flood is bounded three ways: each pending handshake has a deadline
(``timeout``); at most ``max_pending`` wait at once (the oldest is dropped to
make room, so a flood cannot lock out a real client for longer than it takes
that client to answer); and each reads at most one ``MAX_AUTH_FRAME`` frame at
a time through ``FrameDecoder``, which rejects a bigger length prefix before
buffering its body.
"""

from __future__ import annotations

import _socket
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING

from .._protocol.compact import FrameDecoder, Op, encode
from .._transport import Outbox, SocketStream, Wake, accept, want_errors
from ..errors import AuthenticationError, ProtocolError

if TYPE_CHECKING:
    import ssl

    from .._protocol import auth

__all__ = ["Gate"]

_READ_SIZE = 4096
_LISTEN = object()
_WAKE = object()


class _Pending:
    """One connection still proving the key."""

    __slots__ = ("sock", "deadline", "hs", "tls_pending", "decoder", "stream", "out")

    def __init__(
        self,
        sock: _socket.socket,
        deadline: float,
        hs: auth.ServerHandshake,
        tls_pending: bool,
        decoder: FrameDecoder,
    ) -> None:
        self.sock = sock
        self.deadline = deadline
        self.hs = hs
        self.tls_pending = tls_pending
        self.decoder = decoder
        self.stream = SocketStream(sock)
        self.out = Outbox(self.stream)


class Gate:
    """Authenticates newcomers on ``listener``; hands each authenticated socket to ``on_ready``."""

    def __init__(
        self,
        listener: socket.socket,
        authkey: bytes,
        on_ready: Callable[[_socket.socket, bytes], None],
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        max_pending: int = 256,
    ) -> None:
        self._listener = listener
        self._key = bytes(authkey)
        self._on_ready = on_ready
        self._ssl = ssl_context
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: dict[_socket.socket, _Pending] = {}  # insertion order = age
        self._sel = selectors.DefaultSelector()
        self._waker = Wake()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="polyproc-manager-gate", daemon=True)
        self.rejected = 0  #: handshakes that failed or timed out (for tests and statistics)

    def start(self) -> None:
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, _LISTEN)
        self._sel.register(self._waker.fileno(), selectors.EVENT_READ, _WAKE)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._waker.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def handshakes(self) -> Sized:
        """The pending handshakes themselves (a live view: the loop tests it while it spins)."""
        return self._pending

    # -- the loop ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._warm()
            while not self._stopping:
                timeout = None
                if self._pending:
                    timeout = max(
                        0.0, min(p.deadline for p in self._pending.values()) - time.monotonic()
                    )
                for key, mask in self._sel.select(timeout):
                    if key.data is _LISTEN:
                        self._accept_all()
                    elif key.data is _WAKE:
                        self._waker.drain()
                    elif isinstance(key.data, _Pending):
                        self._drive(key.data, mask)
                self._expire(time.monotonic())
        finally:
            for p in list(self._pending.values()):
                self._drop(p)
            self._sel.close()
            self._waker.close()

    @staticmethod
    def _warm() -> None:
        """Load ``auth`` (~0.7-1 ms; ~3-5 ms while it loaded hmac and OpenSSL's hashes) now,
        on the gate's own thread, not at the first connection: the processes an owner
        starts at once (the tutorial's two workers) would queue behind that import, get in
        together and race in lockstep."""
        from .._protocol import auth  # noqa: F401

    def _accept_all(self) -> None:
        # Loaded by ``_warm`` as the gate's thread starts; named here for the calls below.
        from .._protocol import auth

        while True:
            try:
                sock, _addr = accept(self._listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: try again on the next readiness event
            if len(self._pending) >= self._max_pending:
                self._drop(next(iter(self._pending.values())))  # oldest makes room
            try:
                sock.setblocking(False)
                tls = self._ssl is not None
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                p = _Pending(
                    sock,
                    time.monotonic() + self._timeout,
                    auth.ServerHandshake(self._key),
                    tls,
                    FrameDecoder(auth.MAX_AUTH_FRAME),
                )
                if not tls:
                    p.out.push(encode(Op.AUTH, p.hs.first))
                self._pending[sock] = p
                self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, p)
            except OSError:
                sock.close()

    def _expire(self, now: float) -> None:
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self._drop(p)

    def _drop(self, p: _Pending) -> None:
        self.rejected += 1
        self._forget(p)
        try:
            p.sock.close()
        except OSError:
            pass

    def _forget(self, p: _Pending) -> None:
        self._pending.pop(p.sock, None)
        try:
            self._sel.unregister(p.sock)
        except (KeyError, ValueError, OSError):
            pass

    # -- one handshake, one readiness event ----------------------------------------
    def _drive(self, p: _Pending, mask: int) -> None:
        from .._protocol import auth  # loaded by _accept_all already

        try:
            if p.tls_pending and not self._tls_step(p):
                return
            self._flush(p)
            if mask & selectors.EVENT_READ or p.stream.pending():
                if not self._read(p):
                    return
            self._flush(p)
            if p.hs.state is auth.Step.DONE and not p.out:
                self._forget(p)
                p.sock.setblocking(True)
                self._on_ready(p.sock, p.decoder.leftover())
                return
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if p.out else 0)
            self._sel.modify(p.sock, events, p)
        except (AuthenticationError, ProtocolError):
            if p.hs.farewell:
                p.out.push(encode(Op.AUTH, p.hs.farewell))
                try:
                    self._flush(p)
                except OSError:  # ssl.SSLError is an OSError
                    pass
            self._drop(p)
        except (OSError, EOFError, ValueError):
            self._drop(p)

    def _tls_step(self, p: _Pending) -> bool:
        import ssl  # a TLS handshake means the caller made an SSLContext: ssl is loaded

        assert isinstance(p.sock, ssl.SSLSocket)
        try:
            p.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(p.sock, selectors.EVENT_READ, p)
            return False
        except ssl.SSLWantWriteError:
            self._sel.modify(p.sock, selectors.EVENT_WRITE, p)
            return False
        p.tls_pending = False
        p.out.push(encode(Op.AUTH, p.hs.first))
        return True

    def _flush(self, p: _Pending) -> None:
        p.out.flush()  # what does not fit waits for EVENT_WRITE (see _drive)

    def _read(self, p: _Pending) -> bool:
        """Read what is there and run the handshake on it; False when the peer is gone."""
        from .._protocol import auth  # loaded by _accept_all already

        while True:
            try:
                data = p.stream.read_some(_READ_SIZE)
            except want_errors():
                return True
            if not data:
                self._drop(p)
                return False
            p.decoder.feed(data)
            while p.hs.state is not auth.Step.DONE:
                frame = p.decoder.next_frame()
                if frame is None:
                    break
                op, body = frame
                if op == Op.HELLO and p.hs.state is auth.Step.AWAIT_RESPONSE:
                    continue  # see Op.HELLO
                if op != Op.AUTH:
                    raise ProtocolError(f"{Op(op).name} frame before authentication")
                reply = p.hs.receive(body)
                if reply:
                    p.out.push(encode(Op.AUTH, reply))
            if p.hs.state is auth.Step.DONE:
                return True
            if not p.stream.pending():
                return True
