"""Child-side functions for test_listener (importable by name, no pytest)."""

from __future__ import annotations

from typing import Any

from polyproc._listener import Client


def echo_client(address: Any, authkey: bytes | None, family: str | None = None) -> None:
    with Client(address, family=family, authkey=authkey) as conn:
        conn.send(("hello from", conn.recv()))
