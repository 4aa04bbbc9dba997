"""The leak check itself (tests/conftest.py, issue 13 item 7): it blames a test only for what
polyproc or the test made, never for /dev/shm entries of other programs on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest
from conftest import _new_shm, _shm_entries

pytestmark = pytest.mark.timeout(60)


def _make(name: str) -> None:
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


def _unlink(name: str) -> None:
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


def test_an_entry_left_by_the_test_is_reported_and_anothers_is_not() -> None:
    me = psutil.Process()
    before = _shm_entries()
    mine, foreign = f"psm_{uuid.uuid4().hex[:12]}", f"chromium-{uuid.uuid4().hex[:12]}"
    _make(mine)
    _make(foreign)  # another program's name: not ours to judge
    try:
        assert _new_shm(before, me) == {mine}
    finally:
        _unlink(mine)
        _unlink(foreign)
    assert _new_shm(before, me) == set()


_HOLDER = """
    import os, sys, time
    if os.fork():
        os._exit(0)  # the daemon below is reparented: outside the test's process tree
    fd = os.open("/dev/shm/" + sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    print(os.getpid(), flush=True)
    time.sleep(50)
"""


def test_an_entry_with_our_prefix_held_by_a_process_outside_our_tree_is_not_ours() -> None:
    """Another test run on the machine makes ``psm_`` segments too: one that a process
    outside this test's tree holds is that run's, not a leak of this test."""
    me = psutil.Process()
    before = _shm_entries()
    name = f"psm_{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER), name],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the daemon's pid, once it holds the entry
    proc.stdout.close()
    proc.wait(30)
    pid = int(line)
    try:
        assert pid not in {p.pid for p in me.children(recursive=True)}
        assert _new_shm(before, me) == set()
    finally:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
        _unlink(name)
