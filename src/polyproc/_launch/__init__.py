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
                   lock, else the forkserver; a pool forks its first workers and a
                   private template of the caller at creation, and its replacement
                   workers are forked from that template
    child.py       the child's side: prepare, die with the parent, run
    handle.py      ChildHandle: pid, sentinel fd, exit status

PDEATHSIG follows the thread that created a child, so a launch from any thread
other than the main one is carried out by one long-lived launcher thread
(``on_launcher_thread``): a user thread that starts a Process and then ends must
not take the child with it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

if TYPE_CHECKING:
    from .._context import Settings
    from .handle import ChildHandle
    from .template import Template

__all__ = ["LaunchSpec", "Launcher", "LAUNCHERS", "launcher_for"]


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
    #: A pool's worker: a spawned one that refuses to import a main module with no
    #: guard exits quietly (``child.REFUSED_EXIT``), and its pool raises the error once.
    pool_worker: bool = False


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
