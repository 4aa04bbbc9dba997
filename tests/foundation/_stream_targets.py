"""Child-side functions for test_connection_streams (importable by name under spawn)."""

from __future__ import annotations

import hashlib
from typing import Any

from polyproc._shm import bulk


def payload(size: int, seed: int) -> bytes:
    """Deterministic bytes of ``size``, different per ``seed``, cheap to make and check."""
    block = hashlib.sha256(f"{seed}:{size}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def lend_from(threshold: int) -> None:
    bulk.BYTES_THRESHOLD = threshold


def echo_stream(conn: Any, threshold: int, sizes: list[int]) -> None:
    """Receive ``len(sizes)`` messages and check them, then send each back (both ways lent)."""
    lend_from(threshold)
    got = [conn.recv_bytes() for _ in sizes]
    bad = [i for i, (data, n) in enumerate(zip(got, sizes, strict=True)) if data != payload(n, i)]
    conn.send(bad)
    for i, n in enumerate(sizes):
        conn.send_bytes(payload(n, i + 1000))
    conn.recv()  # the parent's "done": keep our slots alive until it has copied them out
    conn.close()
