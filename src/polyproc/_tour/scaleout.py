"""Tour section: the same ``imap`` on a Dask cluster (and on Ray), one keyword changed.

``backend="dask"`` with no Dask client around starts a ``LocalCluster`` of worker
processes for the pool and closes it with the pool; ``backend="tcp://host:8786"``
(or a ``distributed.Client``) uses a cluster you run, ``backend="ray"`` a Ray one.
``DASK_SCHEDULER_ADDRESS`` points the section at a Dask cluster you run.
Skipped when Dask is not installed. Ray runs too when it is installed and either
``RAY_ADDRESS`` names a running cluster or ``POLYPROC_TOUR_RAY=1`` (starting a local
Ray takes 4-20 s on a small machine, too long for a tour stop by default).
"""

from __future__ import annotations

import importlib.util
import os

import polyproc as mp

from . import tour_logger

log = tour_logger()


def square(x: int) -> int:
    return x * x


def demo_scale_out() -> str | None:
    if importlib.util.find_spec("distributed") is None:
        return "Dask is not installed (pip install 'polyproc[dask]')"
    # "dask" with no client around: the pool starts a LocalCluster of 2 processes and
    # closes it. A real cluster: its address, e.g. DASK_SCHEDULER_ADDRESS=tcp://host:8786
    where = os.environ.get("DASK_SCHEDULER_ADDRESS") or "dask"
    with mp.Pool(2, backend=where) as pool:
        log.info(f"dask: {list(pool.imap(square, range(8)))}")
    if importlib.util.find_spec("ray") is None:
        log.info("ray: not installed (pip install 'polyproc[ray]')")
    elif os.environ.get("RAY_ADDRESS") or os.environ.get("POLYPROC_TOUR_RAY"):
        with mp.Pool(2, backend="ray") as pool:
            log.info(f"ray: {list(pool.imap(square, range(8)))}")
    else:
        log.info("ray: installed; set POLYPROC_TOUR_RAY=1 (or RAY_ADDRESS) to run it too")
    return None
