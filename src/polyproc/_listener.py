"""Listener and Client: Connections between unrelated processes, over AF_UNIX or TCP.

The stdlib's ``multiprocessing.connection.Listener``/``Client`` API, returning
our ``Connection``::

    Listener(address, authkey=k)                 Client(address, authkey=k)
      accept() -> socket [-> TLS handshake]        connect [-> TLS handshake]
               -> verify the peer (challenge)  <->  prove the key (answer)
               -> prove the key (answer)       <->  verify the server (challenge)
               -> Connection                        -> Connection

* With ``authkey`` the handshake is ``_protocol.auth``: HMAC-SHA256 both ways,
  bounded reads, and nothing received is unpickled before it succeeds. A wrong
  key raises ``AuthenticationError`` on both sides; ``accept()`` closes that
  peer and raises, and the listener keeps listening.
* ``ssl_context`` wraps the socket in TLS first: an authkey proves who may talk,
  TLS keeps the pickles (which can run code) private on a network.
* A peer that connects and never speaks cannot hold ``accept()`` forever: the
  handshake has a deadline (``handshake_timeout``, default 30 s).
* AF_UNIX connections can carry fds (``Connection.send`` of a Connection, a
  lock ...); TCP ones cannot.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import tempfile
from typing import Any

from ._connection import Connection
from ._protocol import auth
from ._protocol.auth import FAILURE as _FAILURE
from ._protocol.auth import MAGIC, client_handshake, server_handshake
from ._protocol.auth import WELCOME as _WELCOME
from ._transport import accept, connect_socket, listen_socket, stream_for_socket, wrap_fd
from .errors import AuthenticationError, ProtocolError

__all__ = [
    "Listener",
    "Client",
    "address_type",
    "arbitrary_address",
    "FAMILIES",
    "families",
    "deliver_challenge",
    "answer_challenge",
    "CHALLENGE",
    "WELCOME",
    "FAILURE",
]

FAMILIES = ("AF_UNIX", "AF_INET", "AF_INET6")
#: The stdlib's ``multiprocessing.connection.families`` on Linux (AF_INET6 works here too).
families = ["AF_INET", "AF_UNIX"]
#: The first bytes of each handshake frame (the stdlib's constants, with our frames).
CHALLENGE = MAGIC + b"C"
WELCOME = _WELCOME
FAILURE = _FAILURE
_FAMILY = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
Address = Any  # str (a path, or "\0name" for the abstract namespace) or (host, port)


def address_type(address: Address) -> str:
    """The family an address belongs to (as the stdlib's ``address_type``)."""
    if isinstance(address, tuple):
        return "AF_INET6" if ":" in str(address[0]) else "AF_INET"
    if isinstance(address, str) and address.startswith("\\\\"):
        return "AF_PIPE"  # a Windows named pipe: refused by _check_family, as the stdlib does
    if isinstance(address, (str, bytes)):
        return "AF_UNIX"
    raise ValueError(f"address type of {address!r} unrecognized")


def _check_family(family: str) -> None:
    if family not in _FAMILY:
        raise ValueError(f"Family {family} is not recognized.")


def deliver_challenge(connection: auth.ByteChannel, authkey: bytes) -> None:
    """Make the peer prove it knows ``authkey``; ``AuthenticationError`` if it does not.

    The stdlib's function. A reply that is not a response frame at all is an
    authentication failure too (``ProtocolError`` underneath, as its cause).
    """
    try:
        auth.deliver_challenge(connection, authkey)
    except ProtocolError as exc:
        raise AuthenticationError(f"authentication failed: {exc}") from exc


def answer_challenge(connection: auth.ByteChannel, authkey: bytes) -> None:
    """Prove to the peer that we know ``authkey``; ``AuthenticationError`` if it refuses."""
    try:
        auth.answer_challenge(connection, authkey)
    except ProtocolError as exc:
        raise AuthenticationError(f"authentication failed: {exc}") from exc


def arbitrary_address(family: str) -> Address:
    """A fresh address for ``family`` (a socket path in a private temp dir for AF_UNIX)."""
    if family == "AF_INET":
        return ("localhost", 0)
    if family == "AF_INET6":
        return ("::1", 0)
    if family == "AF_UNIX":
        return os.path.join(tempfile.mkdtemp(prefix="polyproc-"), "listener")
    raise ValueError(f"unrecognized family {family!r}")


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _set_deadline(sock: socket.socket, timeout: float | None) -> None:
    """Bound each handshake read and write: Python's timeout for TLS, the kernel's otherwise.

    Kernel timeouts (SO_RCVTIMEO) because an AF_UNIX Connection reads the raw fd,
    not through the socket object.
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(timeout)
        return
    value = _timeval(timeout or 0.0)
    for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, opt, value)


def _clear_deadline(sock: socket.socket, conn: Connection) -> None:
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(None)
        return
    probe = wrap_fd(conn.fileno())  # the same socket, briefly; detached below
    try:
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            probe.setsockopt(socket.SOL_SOCKET, opt, _timeval(0.0))
    finally:
        probe.detach()


def _handshake(
    sock: socket.socket,
    authkey: bytes | None,
    timeout: float | None,
    server: bool,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> Connection:
    """TLS (if asked), then the HMAC handshake (if a key), under one deadline."""
    try:
        if ssl_context is not None:
            sock.settimeout(timeout)
            if server:
                sock = ssl_context.wrap_socket(sock, server_side=True)
            else:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
            sock.settimeout(None)
        if authkey is None:
            return Connection(stream_for_socket(sock))
        if timeout is not None:
            _set_deadline(sock, timeout)
        conn = Connection(stream_for_socket(sock))
        try:
            (server_handshake if server else client_handshake)(conn, authkey)
        except (EOFError, BlockingIOError, TimeoutError) as exc:
            conn.close()
            why = "hung up" if isinstance(exc, EOFError) else "was too slow"
            raise AuthenticationError(f"authentication failed: the peer {why}") from exc
        except BaseException:
            conn.close()
            raise
        if timeout is not None:
            _clear_deadline(sock, conn)
        return conn
    except BaseException:
        try:
            sock.close()
        except OSError:
            pass
        raise


class Listener:
    """Accepts Connections at ``address`` (the stdlib signature, plus TLS and a deadline)."""

    __module__ = "polyproc.connection"  # its public home: repr, pickle

    def __init__(
        self,
        address: Address = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = 30.0,
    ) -> None:
        family = family or (address_type(address) if address is not None else "AF_UNIX")
        _check_family(family)
        if address is None:
            address = arbitrary_address(family)
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        self._family = family
        sock = listen_socket(_FAMILY[family], address, backlog)
        self._sock: socket.socket | None = sock
        if family == "AF_UNIX":
            self._address: Address = address
            self._unlink = (
                address if isinstance(address, str) and not address.startswith("\0") else None
            )
        else:
            host, port = sock.getsockname()[:2]
            self._address = (host, port)
            self._unlink = None
        self._authkey = authkey
        self._ssl = ssl_context
        self._timeout = handshake_timeout
        self._last_accepted: Address = None

    def accept(self) -> Connection:
        """The next connection that completes the handshake; ``AuthenticationError`` for one that fails."""
        if self._sock is None:
            raise OSError("listener is closed")
        sock, addr = accept(self._sock)  # blocking, not socket.setdefaulttimeout()'s; tuned
        self._last_accepted = addr
        return _handshake(sock, self._authkey, self._timeout, True, self._ssl, None)

    def close(self) -> None:
        """Stop listening and remove its Unix socket file (if it has one); idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        path, self._unlink = self._unlink, None
        if path is not None:
            try:
                os.unlink(path)
                if os.path.basename(path) == "listener":  # the private dir arbitrary_address made
                    os.rmdir(os.path.dirname(path))
            except OSError:
                pass

    @property
    def address(self) -> Address:
        """Where clients connect: a path for AF_UNIX, ``(host, port)`` for AF_INET.

        With port 0 this is the port actually bound.
        """
        return self._address

    @property
    def last_accepted(self) -> Address:
        """The peer address of the last accepted connection (None before any)."""
        return self._last_accepted

    def fileno(self) -> int:
        """The listening socket's fd (for ``select``/``wait``); ``OSError`` once closed."""
        if self._sock is None:
            raise OSError("listener is closed")
        return self._sock.fileno()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<polyproc.Listener {self._family} {self._address!r}>"


def Client(
    address: Address,
    family: str | None = None,
    authkey: bytes | None = None,  # noqa: N802
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float | None = 30.0,
) -> Connection:
    """A Connection to a Listener at ``address`` (the stdlib signature, plus TLS)."""
    family = family or address_type(address)
    _check_family(family)
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    # Blocking, whatever socket.setdefaulttimeout() says: with a timeout the socket is
    # non-blocking underneath and a Unix connect to a full backlog fails with EAGAIN
    # at once instead of waiting for the listener to accept.
    sock = connect_socket(address, None, _FAMILY[family])
    if ssl_context is not None and server_hostname is None and ssl_context.check_hostname:
        server_hostname = address[0] if isinstance(address, tuple) else None
    return _handshake(sock, authkey, handshake_timeout, False, ssl_context, server_hostname)
