"""A pool's standby worker: its next replacement, started ahead of need on a spare.

Once a pool's template has served a replacement (``_launch/template.py``: the first
worker death, or the first recycle under ``maxtasksperchild``), the pool keeps one
*standby*: a worker process started on the template's spare (``_launch/spares.py``)
while the engine is idle, booted as far as ``worker_main``, waiting on its channel for
``GO``. The next replacement is that standby::

    engine (ProcessWorkers)                        standby (was the template's spare)
    ───────────────────────                        ──────────────────────────────────
    idle, one wanted: make() ── its Process ─────► unpickle, run_in_child, worker_main:
                                                   waits on its channel
    a worker died: spawn(wid) ─► promote(wid):
        its channel and sentinel watched,
        (GO,) then its first batch ──────────────► initializer, READY, serves
    READY, then the engine idle: make() the next one

Why: a replacement started on a spare waits while the spare becomes the worker
(unpickling its ``Process``, ``run_in_child``, ``worker_main``: ~1-1.5 ms of CPU on a
2-CPU machine, beside the template's next fork and that spare's own start): a
replacement took ~3.6 ms (issue 11: <= 3). A standby did all of that before the death;
the replacement is one message.

The rules:

* Made once the last replacement has said READY, the first time the engine is then
  idle (nothing queued or in flight): its ~0.5 ms in the engine thread must not delay
  an answer. A pool busy without a pause replaces workers as before.
* Made only on a spare the template announced, never by asking the template: a
  template that has not served stays parked (most pools never replace a worker). One
  the template still owes (it is forking it) is waited for in the engine's selector
  (``Tag.TEMPLATE``, the template's boot socket), not in the engine's thread.
* Its sentinel is not watched until it is promoted: one found dead then is dropped,
  and that replacement starts as any would. Three that could not be made, and the
  pool makes no more.
* Its initializer runs only on ``GO``: one never needed never runs it. The pool's end
  kills it; until promoted it is not in the scheduler's workers, the statistics,
  ``_pool`` or ``active_children()``.
"""

from __future__ import annotations

import selectors
from typing import TYPE_CHECKING, Any

from .._process import set_listed
from .channel import Handle, Tag, close_unused
from .messages import GO

if TYPE_CHECKING:
    from .._launch import LaunchSpec
    from .._launch.handle import ChildHandle
    from .._launch.template import Template
    from .processes import ProcessWorkers

__all__ = ["Standby"]

#: Standbys that could not be made (no spare, a start that failed) before the pool stops trying.
MAX_FAILURES = 3


class _NoSpare(OSError):
    """The template has no spare to start a standby on (never raised to users)."""


class Standby:
    """At most one standby worker of a ``ProcessWorkers`` (the engine thread's alone)."""

    def __init__(self, workers: ProcessWorkers) -> None:
        self.workers = workers
        #: (Process, our channel end, its channel end, its journal fd) of the standby.
        self.ready: tuple[Any, Any, Any, int | None] | None = None
        self.failures = 0
        self.awaiting = 0  # the replacement whose READY asks for the next standby
        self.watched = -1  # the template's boot socket, while a spare is owed (``announced``)

    def replaced(self, wid: int) -> None:
        """Worker ``wid`` was started to replace one: once it has said READY, make the
        next standby the first time the engine is idle (not before: the engine's work
        and the standby's start would delay that worker's first answer)."""
        self.awaiting = wid

    def ready_said(self, wid: int) -> None:
        if wid == self.awaiting:
            self.awaiting = 0
            self._want()

    def _want(self) -> None:
        """Make a standby the next time the engine is idle, unless one is there or the
        pool has stopped trying."""
        if self.ready is None and self.failures < MAX_FAILURES:
            self.workers.engine.idle_work = self.make

    def make(self) -> None:
        """Start a standby on the template's spare (the engine is idle)."""
        from .._connection import Pipe
        from .journal import new_journal_fd

        workers = self.workers
        template = workers.template
        if self.ready is not None or template is None:
            return
        owed = template.spare_owed()
        if owed >= 0:
            # The template is forking the spare still: start on it once it is announced
            # (the boot socket turns readable), not by waiting for it here.
            self._watch(owed)
            return
        ours, theirs = Pipe()
        jfd = new_journal_fd()
        proc = workers.new_process(theirs, jfd, standby=True)
        proc.__dict__["_polyproc_launch"] = _OnSpare(template)
        try:
            proc.start()
        except Exception:  # noqa: BLE001 - no spare, or it cannot start: replace as before
            self.failures += 1
            close_unused(ours, theirs, jfd)
            return
        self.failures = 0
        set_listed(proc, False)  # not one of the program's children until it is used
        self.ready = (proc, ours, theirs, jfd)

    def _watch(self, fd: int) -> None:
        sel = self.workers.sel
        if self.watched != fd:
            self._unwatch()
            sel.register(fd, selectors.EVENT_READ, (Tag.TEMPLATE, None))
            self.watched = fd

    def _unwatch(self) -> None:
        if self.watched >= 0:
            try:
                self.workers.sel.unregister(self.watched)
            except (KeyError, ValueError, OSError):
                pass
            self.watched = -1

    def announced(self) -> None:
        """The boot socket is readable: the spare has come. Start on it when idle (the
        socket stays readable until ``make`` reads the announcement: no longer watched)."""
        self._unwatch()
        self._want()

    def promote(self, wid: int) -> bool:
        """Make the standby worker ``wid`` (False: there is none alive)."""
        ready, self.ready = self.ready, None
        if ready is None:
            return False
        proc, ours, theirs, jfd = ready
        if not proc.is_alive():
            _end(proc)
            close_unused(ours, theirs, jfd)
            return False
        workers = self.workers
        set_listed(proc, True)
        h = Handle(wid)
        h.name = proc.name
        h.proc = proc
        workers.handles[wid] = h
        workers._attach(h, ours, theirs, jfd)
        workers._queue(h, (GO,))
        self.replaced(wid)
        return True

    def kill(self) -> None:
        """The pool ends: the standby goes at once, beside its workers."""
        if self.ready is not None:
            try:
                self.ready[0].kill()
            except (ValueError, OSError, AssertionError):
                pass

    def discard(self) -> None:
        """The pool has ended: kill and reap the standby, close what it held."""
        self.failures = MAX_FAILURES  # and make no more
        self._unwatch()
        self.kill()
        ready, self.ready = self.ready, None
        if ready is not None:
            proc, ours, theirs, jfd = ready
            _end(proc)
            close_unused(ours, theirs, jfd)


class _OnSpare:
    """``Process.start``'s launch for a standby: the template's spare, or ``_NoSpare``."""

    def __init__(self, template: Template) -> None:
        self.template = template

    def __call__(self, spec: LaunchSpec) -> ChildHandle:
        handle = self.template.start_on_spare(spec)
        if handle is None:
            raise _NoSpare("the pool's template has no spare now")
        return handle


def _end(proc: Any) -> None:
    try:
        proc.join()
        proc.close()
    except (ValueError, OSError, AssertionError):
        pass
