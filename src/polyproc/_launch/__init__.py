"""Start methods as a strategy table: ``LAUNCHERS[name].start(spec) -> ChildHandle``.

A launcher starts a ``LaunchSpec``: an entry point that runs in the child and
returns its exit code, a description for errors, and the ``Settings`` (whose
serializer carries the entry to spawn and forkserver children). It never sees a
``Process``: ``_process`` builds the spec, so this package never imports it back.

::

    fork.py        os.fork(); the child calls the entry it inherited
    spawn.py       posix_spawn a fresh interpreter; send it preparation data and the
                   pickled entry (with fds) over a socketpair dup'ed to its fd 3
    forkserver.py  a long-lived spawned template that has imported __main__ forks a
                   child per request; the request carries the pickled entry and fds
    template.py    "auto", the default: fork here when no other thread can hold a
                   lock, else the forkserver; a pool forks a private template of the
                   caller at creation, and its workers are forked from that
    child.py       the child's side: prepare, die with the parent, run
    handle.py      ChildHandle: pid, sentinel fd, exit status

PDEATHSIG follows the thread that created a child, so a launch from any thread
other than the main one is carried out by one long-lived launcher thread
(``on_launcher_thread``): a user thread that starts a Process and then ends must
not take the child with it.
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from .._context import Settings
    from .handle import ChildHandle
    from .template import Template

__all__ = ["LaunchSpec", "Launcher", "LAUNCHERS", "launcher_for", "on_launcher_thread"]

T = TypeVar("T")


class LaunchSpec(NamedTuple):
    """What to start: everything a launcher needs, and nothing it would have to import."""

    #: Runs in the child; its return value is the exit code. Pickled (by
    #: ``settings.serializer``) for spawn and forkserver, so it must pickle by reference.
    entry: Callable[[], int]
    #: Names the entry in a SerializationError: "the Process 'x' (its target, args ...)".
    what: str
    #: The start method and serializer.
    settings: Settings
    #: A pool worker's template (``template.py``): fork it from there when it is usable.
    template: Template | None = None


class Launcher(Protocol):
    def start(self, spec: LaunchSpec) -> ChildHandle: ...


#: name -> module implementing ``start(spec)``; imported on first use.
LAUNCHERS: dict[str, str] = {
    "fork": "polyproc._launch.fork",
    "spawn": "polyproc._launch.spawn",
    "forkserver": "polyproc._launch.forkserver",
    "auto": "polyproc._launch.template",
}


def launcher_for(method: str) -> Launcher:
    """The launcher module for ``method``; RuntimeError while a child imports its main module."""
    from .child import check_not_bootstrapping

    check_not_bootstrapping()
    try:
        module = importlib.import_module(LAUNCHERS[method])
    except KeyError:
        raise ValueError(f"unknown start method {method!r}") from None
    return cast("Launcher", module)


class _LauncherThread:
    """One daemon thread, started on first need, that runs launches for other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] | None = None
        self._owner_pid = 0
        self._busy = threading.Lock()  # held while a launch runs: see template.parkable

    def run(self, fn: Callable[[], T]) -> T:
        import os

        with self._lock:
            if self._jobs is None or self._owner_pid != os.getpid():
                from .template import parkable

                self._jobs = queue.SimpleQueue()
                self._owner_pid = os.getpid()
                self._busy = threading.Lock()
                thread = threading.Thread(target=self._loop, args=(self._jobs, self._busy),
                                          name="polyproc-launcher", daemon=True)
                parkable(thread, self._busy)
                thread.start()
            jobs = self._jobs
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        jobs.put((fn, reply))
        ok, value = reply.get()
        if ok:
            return cast("T", value)
        raise value

    @staticmethod
    def _loop(jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]],
              busy: threading.Lock) -> None:
        while True:
            fn, reply = jobs.get()
            with busy:
                try:
                    reply.put((True, fn()))
                except BaseException as exc:  # handed back to the caller's thread
                    reply.put((False, exc))


_LAUNCHER_THREAD = _LauncherThread()


def on_launcher_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` (which creates a child) on a thread that lives as long as this process."""
    if threading.current_thread() is threading.main_thread():
        return fn()
    return _LAUNCHER_THREAD.run(fn)
