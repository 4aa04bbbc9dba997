"""The authentication handshake at the byte level: no sockets, no processes.

A scripted channel plays the peer: it hands ``recv_bytes`` whatever bytes a test
chooses (hostile ones included) and records what we sent, so each property is a
statement about bytes in and bytes out.
"""

from __future__ import annotations

import pickle
import queue
import threading
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyproc._protocol import auth
from polyproc.errors import AuthenticationError, ProtocolError

KEY = b"secret key"


class Scripted:
    """A channel whose peer replies with a fixed script of frames."""

    def __init__(self, replies: Iterable[bytes]) -> None:
        self.replies = list(replies)
        self.sent: list[bytes] = []
        self.maxlengths: list[int | None] = []

    def send_bytes(self, buf: bytes) -> None:
        self.sent.append(bytes(buf))

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        self.maxlengths.append(maxlength)
        if not self.replies:
            raise EOFError
        return self.replies.pop(0)


class QueueEnd:
    """One end of an in-memory duplex channel (two threads play the two sides)."""

    def __init__(self, inbox: queue.Queue[bytes], outbox: queue.Queue[bytes]) -> None:
        self.inbox, self.outbox = inbox, outbox

    def send_bytes(self, buf: bytes) -> None:
        self.outbox.put(bytes(buf))

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        data = self.inbox.get(timeout=10)
        if maxlength is not None and len(data) > maxlength:
            raise ProtocolError("bad message length")
        return data


def _pair() -> tuple[QueueEnd, QueueEnd]:
    a: queue.Queue[bytes] = queue.Queue()
    b: queue.Queue[bytes] = queue.Queue()
    return QueueEnd(a, b), QueueEnd(b, a)


def _run_both(
    server_key: bytes, client_key: bytes
) -> tuple[BaseException | None, BaseException | None]:
    s, c = _pair()
    errors: dict[str, BaseException | None] = {"server": None, "client": None}

    def side(name: str, fn, end, key) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(end, key)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors[name] = exc
            # a failed side goes away, as a closed socket would: unblock the other
            end.outbox.put(b"")

    t = threading.Thread(target=side, args=("server", auth.server_handshake, s, server_key))
    t.start()
    side("client", auth.client_handshake, c, client_key)
    t.join(10)
    assert not t.is_alive()
    return errors["server"], errors["client"]


def test_mutual_handshake_succeeds_with_the_same_key() -> None:
    assert _run_both(KEY, KEY) == (None, None)


def test_wrong_key_fails_on_both_sides() -> None:
    server_err, client_err = _run_both(KEY, b"other key")
    assert isinstance(server_err, AuthenticationError)
    assert isinstance(client_err, AuthenticationError)


def test_response_is_bound_to_its_nonce() -> None:
    frame1, nonce1 = auth.make_challenge()
    frame2, nonce2 = auth.make_challenge()
    assert nonce1 != nonce2
    response = auth.make_response(frame1, KEY)
    assert auth.check_response(response, nonce1, KEY)
    assert not auth.check_response(response, nonce2, KEY)
    assert not auth.check_response(response, nonce1, b"wrong")


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_a_response_is_rejected(pos: int, bit: int) -> None:
    frame, nonce = auth.make_challenge()
    response = bytearray(auth.make_response(frame, KEY))
    response[pos % len(response)] ^= 1 << bit
    try:
        assert not auth.check_response(bytes(response), nonce, KEY)
    except ProtocolError:
        pass  # the flip hit the MAGIC or kind byte: rejected as garbage instead


def test_deliver_challenge_happy_path_sends_welcome() -> None:
    # The peer's response must answer *our* nonce, so compute it after we send.
    class Prover(Scripted):
        def recv_bytes(self, maxlength: int | None = None) -> bytes:
            self.maxlengths.append(maxlength)
            return auth.make_response(self.sent[-1], KEY)

    ch = Prover([])
    auth.deliver_challenge(ch, KEY)
    assert ch.sent[-1] == auth.WELCOME
    assert all(m is not None and m <= auth.MAX_AUTH_FRAME for m in ch.maxlengths)


@settings(max_examples=300)
@given(st.binary(max_size=auth.MAX_AUTH_FRAME))
def test_deliver_challenge_rejects_hostile_replies(reply: bytes) -> None:
    ch = Scripted([reply])
    with pytest.raises((AuthenticationError, ProtocolError)):
        auth.deliver_challenge(ch, KEY)
    assert ch.sent[-1] == auth.FAILURE  # the peer is told, and never welcomed
    assert ch.maxlengths == [auth.MAX_AUTH_FRAME]


@settings(max_examples=300)
@given(st.binary(max_size=auth.MAX_AUTH_FRAME))
def test_answer_challenge_rejects_hostile_challenges(challenge: bytes) -> None:
    ch = Scripted([challenge, auth.WELCOME])
    try:
        auth.answer_challenge(ch, KEY)
    except ProtocolError:
        assert ch.sent == []  # garbage is never answered
    else:
        # only a well-formed challenge gets an answer
        assert auth.parse_challenge(challenge)


@settings(max_examples=300)
@given(st.binary(max_size=auth.MAX_AUTH_FRAME))
def test_answer_challenge_rejects_hostile_verdicts(verdict: bytes) -> None:
    frame, _ = auth.make_challenge()
    ch = Scripted([frame, verdict])
    if verdict == auth.WELCOME:
        auth.answer_challenge(ch, KEY)
    else:
        with pytest.raises((AuthenticationError, ProtocolError)):
            auth.answer_challenge(ch, KEY)


@given(st.binary(min_size=auth.NONCE_SIZE, max_size=auth.NONCE_SIZE), st.binary(max_size=8))
def test_truncated_and_padded_challenges_are_garbage(nonce: bytes, extra: bytes) -> None:
    frame = auth.MAGIC + b"C" + nonce
    assert auth.parse_challenge(frame) == nonce
    for bad in (frame[:-1], frame[: len(auth.MAGIC)], frame + extra + b"x"):
        with pytest.raises(ProtocolError):
            auth.parse_challenge(bad)


@pytest.mark.parametrize(
    "frame",
    [
        b"#CHALLENGE#" + b"x" * 40,  # the stdlib's handshake
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        pickle.dumps(("evil", 1)),
        b"",
    ],
)
def test_frames_from_other_protocols_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match="authentication frame|malformed"):
        auth.answer_challenge(Scripted([frame]), KEY)


def test_nothing_is_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the handshake unpickled something")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    assert _run_both(KEY, KEY) == (None, None)
    with pytest.raises(ProtocolError):
        auth.deliver_challenge(Scripted([pickle.dumps(object)]), KEY)


def test_authkey_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="authkey must be bytes"):
        auth.deliver_challenge(Scripted([]), "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        auth.make_response(auth.make_challenge()[0], None)  # type: ignore[arg-type]


def test_a_peer_that_hangs_up_mid_handshake_raises_eof() -> None:
    with pytest.raises(EOFError):
        auth.deliver_challenge(Scripted([]), KEY)
    with pytest.raises(EOFError):
        auth.answer_challenge(Scripted([auth.make_challenge()[0]]), KEY)


def test_the_hmac_is_hmac_sha256() -> None:
    """``auth`` computes HMAC-SHA256 over the interpreter's own SHA-256 (hmac would load
    OpenSSL's hashes, ~3-5 ms per process): it must agree with ``hmac`` everywhere, keys
    shorter than, equal to and longer than the 64-byte block included."""
    import hmac
    import random

    from polyproc._protocol import auth

    rng = random.Random(7)
    for key_len in (*range(0, 70), 100, 128, 129, 1000):
        key = rng.randbytes(key_len)
        for msg_len in (0, 1, 31, 32, 64, 65, 200):
            msg = rng.randbytes(msg_len)
            assert auth.hmac_sha256(key, msg) == hmac.new(key, msg, "sha256").digest()


def test_the_handshake_does_not_load_openssl() -> None:
    """A handshake loads neither ``hmac`` nor OpenSSL's ``_hashlib`` (~3-5 ms)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from polyproc._protocol import auth\n"
        "frame, nonce = auth.make_challenge()\n"
        "assert auth.check_response(auth.make_response(frame, b'k' * 32), nonce, b'k' * 32)\n"
        "print(sorted(m for m in ('hmac', '_hashlib', 'hashlib') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
