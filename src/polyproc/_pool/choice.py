"""Which engine a face (``Pool``, ``ProcessPoolExecutor``) drives: this machine's, or a cluster's.

Apart from ``engine.py`` because the cluster backends import the engine: the choice
imports them (lazily), the engine never does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .engine import Engine

__all__ = ["make_engine"]


def make_engine(backend: Any, processes: int | None, **options: Any) -> Any:
    """The local engine unless a backend is asked for (``backend=``, ``use_backend``,
    ``POLYPROC_BACKEND``). ``polyproc.backends`` is imported only then: ``use_backend``
    cannot have been entered if it never was (issue 11: a short script pays for no
    import it does not use)."""
    if (
        backend is None
        and "polyproc.backends" not in sys.modules
        and not os.environ.get("POLYPROC_BACKEND")
    ):
        return Engine(processes, **options)
    from ..backends import make_engine as cluster_or_local

    return cluster_or_local(backend, processes, **options)
