"""The launcher thread: children started from threads other than the main one.

PDEATHSIG follows the thread that created a child, so a launch from any thread
other than the main one is carried out by one long-lived daemon thread; a user
thread that starts a Process and then ends must not take the child with it.
The thread is parkable (``parking.py``) while it waits for work.
"""

from __future__ import annotations

import threading
from _queue import SimpleQueue  # queue.SimpleQueue itself, without queue.py and heapq
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .parking import parkable

__all__ = ["on_launcher_thread"]

T = TypeVar("T")


class _LauncherThread:
    """One daemon thread, started on first need, that runs launches for other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: SimpleQueue[tuple[Callable[[], Any], SimpleQueue[Any]]] | None = None
        self._owner_pid = 0
        self._busy = threading.Lock()  # held while a launch runs: see template.parkable

    def run(self, fn: Callable[[], T]) -> T:
        import os

        with self._lock:
            if self._jobs is None or self._owner_pid != os.getpid():
                self._jobs = SimpleQueue()
                self._owner_pid = os.getpid()
                self._busy = threading.Lock()
                thread = threading.Thread(
                    target=self._loop,
                    args=(self._jobs, self._busy),
                    name="polyproc-launcher",
                    daemon=True,
                )
                parkable(thread, self._busy)
                thread.start()
            jobs = self._jobs
        reply: SimpleQueue[Any] = SimpleQueue()
        jobs.put((fn, reply))
        ok, value = reply.get()
        if ok:
            return cast("T", value)
        raise value

    @staticmethod
    def _loop(
        jobs: SimpleQueue[tuple[Callable[[], Any], SimpleQueue[Any]]],
        busy: threading.Lock,
    ) -> None:
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
