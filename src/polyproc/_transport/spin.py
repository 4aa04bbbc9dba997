"""Busy-polling a little before sleeping: the adaptive budget (``Spin``) and the loop.

A sleep in ``poll`` and the wake-up that ends it cost ~20-25 us each on a small VM
when the wake-up lands on an idle vCPU (the hypervisor must wake it). When the peer
answers within microseconds, polling with a zero timeout for a few tens of
microseconds saves that wake-up. Who spins:

* the manager's serving loop, for the next request (``_manager/loop.py``);
* a pool worker, for its next task after answering (``_pool/worker.py``);
* a caller reading its own answer (``_pool/fastpath.py``, ``lead``).

The rules every spinner follows:

* **Bounded.** At most ``budget`` seconds, then the ordinary blocking ``poll``.
* **Adaptive.** A spin that found nothing halves the budget, off below 5 us; a sleep
  that turned out shorter than ``rearm`` (spinning would have caught it) sets it full
  again. So a waiter whose peer answers slowly, or not at all (an idle pool), stops
  spinning after a few misses and sleeps: an idle process burns nothing.
* **Yielding.** Each turn calls ``sched_yield``, which also releases the GIL: a peer,
  or another thread of ours, that needs this very CPU runs at once.
* **Never with one CPU** (``spin_budget`` is 0 there): a spinner only delays the
  process it waits for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["REARM", "Spin", "spin_budget", "spin_until", "wait_spinning"]

#: A sleep shorter than this would have been saved by spinning: spin again.
REARM = 100e-6
_MIN_SPIN = 5e-6


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def spin_budget(seconds: float) -> float:
    """``seconds``, or 0 where this process may use one CPU only."""
    return seconds if _cpus() > 1 else 0.0


class Spin:
    """An adaptive busy-poll budget: full after a spin that found something (or a sleep
    shorter than ``rearm``), halved after each spin that found nothing, off below 5 us.

    Polls fail in a row when the peer cannot run (other processes hold the CPUs) or
    does not answer soon (a slow task, an idle pool); then we stop spinning, until a
    sleep turns out short again. Races between threads on one ``Spin`` only make a
    budget a turn late: plain floats, no lock.
    """

    __slots__ = ("budget", "full", "rearm")

    def __init__(self, full: float, rearm: float = REARM) -> None:
        self.budget = self.full = full
        self.rearm = rearm

    def miss(self) -> None:
        half = self.budget / 2
        self.budget = half if half >= _MIN_SPIN else 0.0

    def slept(self, seconds: float) -> None:
        if seconds < self.rearm:
            self.budget = self.full


_clock = time.perf_counter
_yield = os.sched_yield


def spin_until(poll: Callable[[int], Any], spin: Spin) -> Any:
    """``poll(0)`` until it reports something or ``spin.budget`` runs out, yielding the
    CPU between polls; what it reported (true), or None. Adjusts ``spin``. After None
    the caller sleeps in its own ``poll`` and reports how long to ``spin.slept``
    (``wait_spinning`` does both)."""
    end = _clock() + spin.budget
    while True:
        got = poll(0)
        if got:
            spin.budget = spin.full
            return got
        _yield()
        if _clock() > end:
            spin.miss()
            return None


def wait_spinning(
    poll: Callable[[Any], Any], spin: Spin, timeout: Any, may_spin: bool = True
) -> Any:
    """Wait for ``poll`` as every spinner does: spin within the budget (if ``may_spin``),
    then sleep in ``poll(timeout)``, telling ``spin`` how long the sleep was; what the
    poll that found something reported (false if the sleep timed out)."""
    if may_spin and spin.budget:
        got = spin_until(poll, spin)
        if got:
            return got
    t = _clock()
    got = poll(timeout)
    if spin.full:
        spin.slept(_clock() - t)
    return got
