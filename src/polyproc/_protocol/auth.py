"""HMAC-SHA256 challenge-response on a shared ``authkey``, before anything is unpickled.

One *exchange* proves to a verifier that the prover knows the key; running it
once each way makes the handshake mutual. The two halves keep the stdlib's names
and roles, so a caller that copies the stdlib's order gets a mutual handshake::

    verifier: deliver_challenge(conn, key)      prover: answer_challenge(conn, key)
    ----------------------------------------    ---------------------------------------
    CHALLENGE  MAGIC 'C' nonce(32) ---------->  (checks the frame, computes the digest)
               <---------------------------- RESPONSE  MAGIC 'R' HMAC(key, LABEL+nonce)
    (constant-time compare)
    WELCOME MAGIC 'W' | FAILURE MAGIC 'F' --->  (FAILURE -> AuthenticationError)

    server side: server_handshake = deliver_challenge, then answer_challenge
    client side: client_handshake = answer_challenge,  then deliver_challenge

Why this shape:

* ``MAGIC`` opens every frame, so a frame from another protocol (the stdlib's
  ``#CHALLENGE#``, an HTTP probe, a stray pickle) is a ``ProtocolError`` at once,
  not a digest that happens to mismatch.
* The digest covers ``LABEL + nonce``, not the bare nonce: this key can never be
  turned into an oracle for some other protocol that HMACs raw nonces with it.
* The server verifies the client *first*: a peer without the key learns nothing
  from the server (it never answers a challenge before its own was passed), so the
  server cannot be used as a signing oracle against itself (a reflection attack).
* Every frame is read with ``recv_bytes(MAX_AUTH_FRAME)`` and parsed by exact
  length: an unauthenticated peer can make us hold at most a few hundred bytes,
  and nothing it sends is ever unpickled.

A relay (someone in the middle forwarding both ways) is not stopped by any
challenge-response; TLS (``ssl_context``) is the answer to that, see docs/managers.md.

The pure functions (``make_challenge``, ``make_response``, ``check_response``,
``parse_verdict`` ...) do no I/O, so an event-loop server can run the handshake
without a blocking read; ``ServerHandshake`` is exactly that: the accepting
side as a transition table, frames in, frames out (the manager's gate runs many
at once on one selector). The ``*_challenge``/``*_handshake`` functions wrap the
pure functions for any object with ``send_bytes(b)`` and ``recv_bytes(maxlength)``.
"""

from __future__ import annotations

import enum
import os
import sys
from _operator import _compare_digest as compare_digest  # what hmac.compare_digest falls back to
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import AuthenticationError, ProtocolError

__all__ = [
    "MAGIC",
    "NONCE_SIZE",
    "DIGEST_SIZE",
    "MAX_AUTH_FRAME",
    "ByteChannel",
    "make_challenge",
    "parse_challenge",
    "make_response",
    "check_response",
    "WELCOME",
    "FAILURE",
    "parse_verdict",
    "deliver_challenge",
    "answer_challenge",
    "server_handshake",
    "client_handshake",
    "Step",
    "ServerHandshake",
]

#: Opens every handshake frame; the version lives here, a new scheme gets a new MAGIC.
MAGIC = b"\x00polyproc-auth/1\x00"
NONCE_SIZE = 32
DIGEST_SIZE = 32  # SHA-256
#: The most we read from an unauthenticated peer in one frame. Generous: real frames are ~50 bytes.
MAX_AUTH_FRAME = 256

_CHALLENGE = b"C"
_RESPONSE = b"R"
_WELCOME = b"W"
_FAILURE = b"F"
#: What the digest covers besides the nonce (domain separation, see the module docstring).
_LABEL = b"polyproc-auth/1 response:"

WELCOME = MAGIC + _WELCOME
FAILURE = MAGIC + _FAILURE


class ByteChannel(Protocol):
    """What the handshake needs from a connection: whole messages, bounded reads."""

    def send_bytes(self, buf: bytes) -> None: ...

    def recv_bytes(self, maxlength: int | None = None) -> bytes: ...


def _check_key(authkey: object) -> bytes:
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
    return bytes(authkey)


def _body(frame: bytes, kind: bytes, size: int, what: str) -> bytes:
    """The payload of a ``MAGIC kind payload`` frame of exact ``size``; ProtocolError otherwise."""
    head = MAGIC + kind
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what}: expected bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if not frame.startswith(MAGIC):
        raise ProtocolError(f"{what}: not a polyproc authentication frame ({_peek(frame)})")
    if len(frame) != len(head) + size or not frame.startswith(head):
        raise ProtocolError(f"{what}: malformed frame ({_peek(frame)})")
    return frame[len(head) :]


def _peek(frame: bytes) -> str:
    """A short, safe description of hostile bytes for an error message."""
    return f"{len(frame)} bytes starting {frame[:24]!r}"


# -- sans-IO -----------------------------------------------------------------------
def make_challenge() -> tuple[bytes, bytes]:
    """A fresh challenge: ``(frame to send, nonce to keep for check_response)``."""
    nonce = os.urandom(NONCE_SIZE)
    return MAGIC + _CHALLENGE + nonce, nonce


def parse_challenge(frame: bytes) -> bytes:
    """The nonce in a CHALLENGE frame; ProtocolError if it is anything else."""
    return _body(frame, _CHALLENGE, NONCE_SIZE, "challenge")


# HMAC-SHA256 (RFC 2104) over the interpreter's own SHA-256 (``_sha256``/``_sha2``, ~0.3 ms
# to load) rather than ``hmac``, which loads OpenSSL's hashes (~3-5 ms): every process that
# shakes hands pays that import, a manager's server and each of its clients, at its first
# connection (the tutorial's two workers waited behind it and raced in lockstep).
# tests/protocol checks it against ``hmac.new(key, msg, "sha256")``. A build without the
# builtin hashes (a FIPS one) uses hmac.
def _builtin_sha256() -> Callable[..., Any] | None:
    try:
        if sys.version_info >= (3, 12):
            from _sha2 import sha256
        else:
            from _sha256 import sha256
    except ImportError:  # pragma: no cover - a build without the builtin hashes
        return None
    return sha256  # type: ignore[no-any-return]  # (typeshed: a module-level function)


_sha256 = _builtin_sha256()
_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """``hmac.new(key, msg, "sha256").digest()``."""
    if _sha256 is None:  # pragma: no cover - see above
        import hmac

        return hmac.new(key, msg, "sha256").digest()
    if len(key) > _BLOCK:
        key = _sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = _sha256(key.translate(_IPAD))
    inner.update(msg)
    outer = _sha256(key.translate(_OPAD))
    outer.update(inner.digest())
    return bytes(outer.digest())


def _digest(authkey: bytes, nonce: bytes) -> bytes:
    return hmac_sha256(authkey, _LABEL + nonce)


def make_response(challenge_frame: bytes, authkey: bytes) -> bytes:
    """The RESPONSE frame that answers ``challenge_frame`` with ``authkey``."""
    key = _check_key(authkey)
    nonce = parse_challenge(challenge_frame)
    return MAGIC + _RESPONSE + _digest(key, nonce)


def check_response(response_frame: bytes, nonce: bytes, authkey: bytes) -> bool:
    """Whether ``response_frame`` proves the key for ``nonce``; ProtocolError if malformed.

    Compared in constant time so the digest cannot be learnt byte by byte.
    """
    key = _check_key(authkey)
    got = _body(response_frame, _RESPONSE, DIGEST_SIZE, "response")
    return compare_digest(got, _digest(key, nonce))


def parse_verdict(frame: bytes) -> bool:
    """True for WELCOME, False for FAILURE; ProtocolError for anything else."""
    frame = bytes(frame) if isinstance(frame, (bytearray, memoryview)) else frame
    if frame == WELCOME:
        return True
    if frame == FAILURE:
        return False
    _body(frame, _WELCOME, 0, "verdict")  # raises with the right message
    raise AssertionError("unreachable")  # pragma: no cover


# -- over a connection -------------------------------------------------------------
def deliver_challenge(conn: ByteChannel, authkey: bytes) -> None:
    """Make the peer prove it knows ``authkey`` (one direction of the handshake).

    Raises ``AuthenticationError`` (after telling the peer) when it does not,
    ``ProtocolError`` when its reply is not a response frame at all.
    """
    key = _check_key(authkey)
    frame, nonce = make_challenge()
    conn.send_bytes(frame)
    reply = conn.recv_bytes(MAX_AUTH_FRAME)
    try:
        ok = check_response(reply, nonce, key)
    except ProtocolError:
        _try_send(conn, FAILURE)
        raise
    if not ok:
        _try_send(conn, FAILURE)
        raise AuthenticationError("digest received was wrong")
    conn.send_bytes(WELCOME)


def answer_challenge(conn: ByteChannel, authkey: bytes) -> None:
    """Prove to the peer that we know ``authkey`` (the other direction).

    Raises ``AuthenticationError`` when the peer rejects our digest.
    """
    key = _check_key(authkey)
    challenge = conn.recv_bytes(MAX_AUTH_FRAME)
    conn.send_bytes(make_response(challenge, key))
    if not parse_verdict(conn.recv_bytes(MAX_AUTH_FRAME)):
        raise AuthenticationError("digest sent was rejected")


def server_handshake(conn: ByteChannel, authkey: bytes) -> None:
    """The accepting side: verify the peer first, then prove ourselves (see docstring)."""
    deliver_challenge(conn, authkey)
    answer_challenge(conn, authkey)


def client_handshake(conn: ByteChannel, authkey: bytes) -> None:
    """The connecting side: prove ourselves first, then verify the server."""
    answer_challenge(conn, authkey)
    deliver_challenge(conn, authkey)


def _try_send(conn: ByteChannel, frame: bytes) -> None:
    """Tell a failed peer so, best effort: it may already be gone, and that is its business."""
    try:
        conn.send_bytes(frame)
    except (OSError, EOFError):
        pass


# -- the accepting side, sans-IO -----------------------------------------------------
class Step(enum.Enum):
    """Where a server-side handshake stands."""

    AWAIT_RESPONSE = "await response"  #: we sent our challenge
    AWAIT_CHALLENGE = "await challenge"  #: the peer proved the key; now it checks us
    AWAIT_VERDICT = "await verdict"  #: we answered its challenge
    DONE = "done"  #: both sides proved the key
    FAILED = "failed"


class ServerHandshake:
    """``server_handshake`` without I/O: ``first`` to send, then ``receive(frame) -> reply``.

    ``receive`` returns the frame to send (``b""`` for none) and moves along
    ``NEXT``; on a bad frame it sets ``state = FAILED`` and raises
    ``AuthenticationError`` or ``ProtocolError``, leaving in ``farewell`` what the
    peer should be told (best effort). Nothing it receives is ever unpickled.
    """

    NEXT = {
        Step.AWAIT_RESPONSE: Step.AWAIT_CHALLENGE,
        Step.AWAIT_CHALLENGE: Step.AWAIT_VERDICT,
        Step.AWAIT_VERDICT: Step.DONE,
    }

    def __init__(self, authkey: bytes) -> None:
        self._key = _check_key(authkey)
        self.first, self._nonce = make_challenge()
        self.state = Step.AWAIT_RESPONSE
        self.farewell = b""

    def receive(self, frame: bytes) -> bytes:
        state = self.state
        if state not in self.NEXT:
            raise ProtocolError(f"handshake frame after the handshake ended ({state.value})")
        try:
            reply = self._handle(state, frame)
        except (AuthenticationError, ProtocolError):
            self.state = Step.FAILED
            raise
        self.state = self.NEXT[state]
        return reply

    def _handle(self, state: Step, frame: bytes) -> bytes:
        if state is Step.AWAIT_RESPONSE:
            try:
                ok = check_response(frame, self._nonce, self._key)
            except ProtocolError:
                self.farewell = FAILURE
                raise
            if not ok:
                self.farewell = FAILURE
                raise AuthenticationError("digest received was wrong")
            return WELCOME
        if state is Step.AWAIT_CHALLENGE:
            return make_response(frame, self._key)
        if not parse_verdict(frame):
            raise AuthenticationError("digest sent was rejected")
        return b""
