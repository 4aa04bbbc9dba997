"""Fixtures for the cluster backends: one Dask LocalCluster and one local Ray for the session.

``backend`` parametrises a test over both engines. A missing engine skips its tests
(the reason names the extra), except under ``CI``, where it fails: CI installs the
test extra and must run them all. Each cluster starts once for the whole directory
(Ray takes 4-20 s to start on a small VM), before any test's leak snapshot.

The leak check is the parent's, adapted: processes the clusters own (Ray's
workers under its raylet, Dask workers the nanny restarted after a test killed
one) are the fixture's, not leaks; any other new child process still fails the
test, so a LocalCluster or actor a pool started and did not stop is caught.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

_clusters: list[Any] = []


def require_engine(module: str) -> Any:
    """Import a cluster engine; where it is missing, skip, except in CI, which must run
    every backend test (the test extra installs both): there a missing install fails."""
    if os.environ.get("CI", "").lower() in ("", "0", "false", "no"):
        return pytest.importorskip(
            module, reason=f"{module} is not installed: pip install -e '.[test]'"
        )
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"CI runs every backend test, but {module} is not installed ({exc}): "
            "the test extra installs it (pip install -e '.[test]')"
        )


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    require_engine("distributed")
    from distributed import Client

    from polyproc.backends.dask import local_cluster

    cluster = local_cluster(2)
    client = Client(cluster, set_as_default=False)
    _clusters.append(cluster)
    yield client
    _clusters.remove(cluster)
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[Any]:
    ray = require_engine("ray")
    from polyproc.backends.ray import init_local

    # Ray's workers are started by its raylet, with our environment but not our sys.path:
    # give them this worktree's polyproc and the test modules (Dask's spawned workers
    # get sys.path from us).
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        # One patient start, never a skip: Ray's raylet gets a fixed 30 s to register,
        # which a loaded or cold 2-core machine can pass; init_local waits up to 120 s
        # (within the first test's 180 s). A small object store (the tests put 8 MiB
        # arrays) so a CI container's small /dev/shm holds it; no worker started before
        # the first task, so start-up does not compete with two worker boots.
        init_local(
            2,
            wait_s=120.0,
            log_to_driver=False,
            object_store_memory=200 << 20,
            _system_config={"enable_worker_prestart": False},
        )
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", params=["dask", "ray"])
def backend(request: pytest.FixtureRequest) -> Any:
    """What to pass as ``backend=``: the fixture's Dask client, or ``"ray"``."""
    if request.param == "dask":
        return request.getfixturevalue("dask_client")
    request.getfixturevalue("ray_instance")
    return "ray"


def kind(backend: Any) -> str:
    return "ray" if backend == "ray" else "dask"


def _cluster_pids() -> set[int]:
    """The fixture cluster's worker processes now (its nannies restart killed ones)."""
    pids: set[int] = set()
    for cluster in _clusters:
        for nanny in list(cluster.workers.values()):
            proc = getattr(nanny, "process", None)
            pid = getattr(proc, "pid", None)
            if pid is not None:
                pids.add(pid)
    return pids


@pytest.fixture
def leak_excuse() -> Callable[[psutil.Process, set[int]], bool]:
    """The shared clusters' workers are not a test's leak: those alive now, and any new
    one under a process that was there before the test (a nanny restarting a killed
    worker)."""

    def excused(p: psutil.Process, before: set[int]) -> bool:
        return p.pid in _cluster_pids() or any(a.pid in before for a in p.parents())

    return excused


@pytest.fixture
def leak_grace() -> float:
    """Ray and Dask release their task processes more slowly than a local pool."""
    return 10.0
