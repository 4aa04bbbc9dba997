"""Start methods and contexts (issue #2, item 4): set/get_start_method, get_context, #109263.

The default start method is the one piece of process-wide state; every test
here that touches it restores it (the ``restore_default`` fixture).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import polyproc
import polyproc.context
from polyproc import _context

from . import _targets

pytestmark = pytest.mark.timeout(30)

ENV = "POLYPROC_START_METHOD"  # read by _context._Defaults.get


@pytest.fixture
def restore_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV, raising=False)
    saved = _context._defaults._method
    try:
        yield
    finally:
        _context._defaults._method = saved


def test_all_start_methods(restore_default: None) -> None:
    """The stdlib's list, the platform default first (as 3.14; 3.11's test accepts it too)."""
    assert polyproc.get_all_start_methods() == ["fork", "spawn", "forkserver"]
    assert polyproc.get_all_start_methods()[0] == polyproc.get_start_method()  # "auto" is "fork"
    polyproc.set_start_method("forkserver")
    assert polyproc.get_all_start_methods() == ["fork", "spawn", "forkserver"]


def test_default_is_auto(restore_default: None) -> None:
    """Issue 11: fork's semantics where fork is safe, the forkserver where it is not."""
    assert _context.DEFAULT_START_METHOD == "auto"
    assert polyproc.get_context().start_method == "auto"
    # ... reported by its stdlib name, so code comparing it to "fork" keeps working.
    assert polyproc.get_start_method() == "fork"
    assert polyproc.get_context().get_start_method() == "fork"
    assert polyproc.get_start_method(allow_none=True) is None  # nothing set yet


def test_auto_is_accepted_but_reported_as_fork(restore_default: None) -> None:
    polyproc.set_start_method("auto")
    assert polyproc.get_context().start_method == "auto"
    assert polyproc.get_start_method() == "fork"
    assert polyproc.get_start_method(allow_none=True) == "fork"
    assert polyproc.get_context("auto").get_start_method() == "fork"
    assert polyproc.get_context("auto") is not polyproc.get_context("fork")


def test_set_start_method(restore_default: None) -> None:
    polyproc.set_start_method("spawn")
    assert polyproc.get_start_method() == "spawn"
    assert polyproc.get_start_method(allow_none=True) == "spawn"
    assert polyproc.get_context().start_method == "spawn"
    with pytest.raises(RuntimeError):
        polyproc.set_start_method("fork")  # set once, as in the stdlib
    assert polyproc.get_start_method() == "spawn"
    polyproc.set_start_method("fork", force=True)
    assert polyproc.get_start_method() == "fork"
    polyproc.set_start_method(None, force=True)  # back to "not set"
    assert polyproc.get_start_method(allow_none=True) is None


def test_unknown_start_method(restore_default: None) -> None:
    with pytest.raises(ValueError):
        polyproc.set_start_method("threads", force=True)
    with pytest.raises(ValueError):
        polyproc.get_context("threads")
    assert polyproc.get_start_method(allow_none=True) is None


def test_environment_variable_picks_the_default(
    restore_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "spawn")
    assert polyproc.get_start_method() == "spawn"
    assert polyproc.get_context().start_method == "spawn"
    polyproc.set_start_method("fork", force=True)  # an explicit choice wins over the environment
    assert polyproc.get_start_method() == "fork"


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_get_context_changes_no_global_state(restore_default: None, method: str) -> None:
    """cpython #109263: in the stdlib, touching a context can fix the global start method."""
    ctx = polyproc.get_context(method)
    assert ctx.start_method == method
    assert ctx.get_start_method() == method
    assert polyproc.get_context(method) is ctx  # one value per method
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=_targets.send_value, args=(w, "hi"))
    p.start()  # using it, too, changes nothing
    w.close()
    assert r.recv() == "hi"
    p.join()
    assert polyproc.get_start_method(allow_none=True) is None
    assert polyproc.get_context().start_method == "auto"
    polyproc.set_start_method("spawn")  # and the default can still be set without force
    assert polyproc.get_start_method() == "spawn"


def test_context_is_a_frozen_value() -> None:
    ctx = polyproc.get_context("spawn")
    with pytest.raises(AttributeError):
        ctx.start_method = "fork"  # type: ignore[misc]
    assert ctx == polyproc.Context("spawn")
    assert hash(ctx) == hash(polyproc.Context("spawn"))
    assert ctx.serializer is not None
    with pytest.raises(ValueError):
        polyproc.Context("bogus")


def test_context_process_classes() -> None:
    assert polyproc.get_context("fork").Process is polyproc.context.ForkProcess
    assert polyproc.get_context("spawn").Process is polyproc.context.SpawnProcess
    assert polyproc.get_context("forkserver").Process is polyproc.context.ForkServerProcess
    for cls in (
        polyproc.context.ForkProcess,
        polyproc.context.SpawnProcess,
        polyproc.context.ForkServerProcess,
    ):
        assert issubclass(cls, polyproc.Process)


def test_context_mirrors_the_module_api() -> None:
    ctx = polyproc.get_context("spawn")
    for name in (
        "Process",
        "Pipe",
        "Lock",
        "RLock",
        "Condition",
        "Semaphore",
        "BoundedSemaphore",
        "Event",
        "Barrier",
        "Queue",
        "JoinableQueue",
        "SimpleQueue",
        "Value",
        "Array",
        "RawValue",
        "RawArray",
        "Pool",
        "Manager",
        "current_process",
        "parent_process",
        "active_children",
        "cpu_count",
        "freeze_support",
        "get_context",
        "get_start_method",
        "set_start_method",
        "get_all_start_methods",
        "log_to_stderr",
        "get_logger",
    ):
        assert callable(getattr(ctx, name)) or name == "Process", name
    assert ctx.get_context("fork") is polyproc.get_context("fork")
    assert ctx.cpu_count() == os.cpu_count()
    a, b = ctx.Pipe()
    with a, b:
        a.send(1)
        assert b.recv() == 1


def test_default_process_class_follows_set_start_method(restore_default: None) -> None:
    """``polyproc.Process`` asks for the default at start(), so a later set_start_method counts."""
    for method in ("fork", "spawn"):
        polyproc.set_start_method(method, force=True)
        r, w = polyproc.Pipe(duplex=False)
        _targets.MARKER[0] = "changed"
        try:
            p: Any = polyproc.Process(target=_targets.report_identity, args=(w,))
            p.start()
        finally:
            _targets.MARKER[0] = "pristine"
        w.close()
        info = r.recv()
        p.join()
        assert info["marker"] == ("changed" if method == "fork" else "pristine")
        assert info["name"].startswith("Process-")
