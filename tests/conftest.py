"""Shared fixtures: start methods as a parameter, and leak checks on every test.

Every test is checked for what it leaves behind: a child process still alive
after the test (given a short grace to exit, then killed and reported), or a new
entry in /dev/shm that no process outside this test's tree holds (another test run on
the machine may be using its own). Either fails the test that leaked it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once per start method."""
    return str(request.param)


@pytest.fixture
def ctx(start_method: str):  # type: ignore[no-untyped-def]
    import polyproc

    return polyproc.get_context(start_method)


# Only names polyproc or these tests make count: other programs on the machine (another test
# run, a browser) create and remove /dev/shm entries at any time, and must not fail a test here.
_OURS = ("psm_", "polyproc", "pp_", "test_")


def _shm_entries() -> set[str]:
    try:
        return {e for e in os.listdir("/dev/shm") if e.startswith(_OURS)}
    except OSError:
        return set()


def _held_elsewhere(name: str, ours: set[int]) -> bool:
    """Whether a process outside our tree has ``/dev/shm/name`` open or mapped.

    Another test run on the same machine (another checkout, a CI job) makes
    segments with the same prefixes at any time; one it holds is its own, not a
    leak of ours. Scanned only when a new name turns up, which is rare.
    """
    path = f"/dev/shm/{name}"
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        if pid in ours:
            continue
        try:
            with open(f"/proc/{pid}/maps") as fh:
                if path in fh.read():
                    return True
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    return True
        except OSError:
            continue
    return False


def _new_shm(before: set[str], me: psutil.Process) -> set[str]:
    """Entries that appeared during the test and are nobody else's, after a short grace."""
    deadline = time.monotonic() + 2.0
    while True:
        new = _shm_entries() - before
        if new:
            ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
            new = {n for n in new if not _held_elsewhere(n, ours)}
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)  # polling the filesystem for another process's unlink


def _is_forkserver(p: psutil.Process) -> bool:
    try:
        # a shared template or an idle spare interpreter, not a leaked child
        return p.name() in ("polyproc-fsrv", "polyproc-spare")
    except psutil.Error:
        return False


#: ``leak_excuse(process, before) -> bool``: True for a child that is not this test's leak.
LeakExcuse = Callable[[psutil.Process, set[int]], bool]


@pytest.fixture
def leak_excuse() -> LeakExcuse:
    """Which new children a test may leave: none here; a folder's conftest may override it
    (tests/backends: the shared clusters' workers, restarted under their nannies)."""
    return lambda p, before: False


@pytest.fixture
def leak_grace() -> float:
    """Seconds a leftover child gets to exit before it counts as leaked."""
    return 5.0


@pytest.fixture(autouse=True)
def _no_leaks(
    request: pytest.FixtureRequest, leak_excuse: LeakExcuse, leak_grace: float
) -> Iterator[None]:
    """Fail a test that leaves a child process or a /dev/shm entry behind."""
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    before_shm = _shm_entries()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + leak_grace
    leaked: list[psutil.Process] = []
    while True:
        leaked = []
        for p in me.children(recursive=True):
            try:
                if (
                    p.pid in before_children
                    or _is_forkserver(p)
                    or p.status() == psutil.STATUS_ZOMBIE
                    or leak_excuse(p, before_children)
                ):
                    continue
            except psutil.Error:
                continue  # it ended while we looked
            leaked.append(p)
        if not leaked or time.monotonic() > deadline:
            break
        psutil.wait_procs(leaked, timeout=0.1)
    if leaked:
        desc = [f"{p.pid} {p.name()} {p.cmdline()[:4]}" for p in leaked]
        for p in leaked:
            try:
                p.kill()
            except psutil.Error:
                pass
        pytest.fail(f"child processes outlived the test: {desc}")
    new_shm = _new_shm(before_shm, me)
    if new_shm:
        pytest.fail(f"/dev/shm entries leaked: {sorted(new_shm)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the cluster-backend tests last.

    Their Dask and Ray clusters are started once per session and keep client threads
    alive in this process; a test that forks afterwards would fork a threaded process
    (and the default start method would, rightly, stop using fork). Last, they share
    the session with nothing that cares.
    """
    backends = ROOT / "tests" / "backends"
    items.sort(key=lambda item: Path(str(item.path)).is_relative_to(backends))
