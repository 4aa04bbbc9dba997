"""Choosing a backend: the accepted values, ``use_backend``, ``POLYPROC_BACKEND``, a missing
engine, and that the core never imports a backend it was not asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

import polyproc
from polyproc.backends import ENV_VAR, current_backend, load
from polyproc.futures import ProcessPoolExecutor
from polyproc.pool import Pool, ThreadPool

from .conftest import require_engine

pytestmark = pytest.mark.timeout(180)


def square(x: int) -> int:
    return x * x


def _kind(pool: Any) -> str:
    cluster = getattr(pool._engine, "cluster", None)
    return "local" if cluster is None else str(cluster.kind)


def test_default_is_local_and_the_core_imports_no_backend() -> None:
    code = (
        "import sys, polyproc\n"
        "with polyproc.Pool(1) as p: assert p.map(abs, [-1]) == [1]\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'ray')"
        " or m.startswith('polyproc.backends.')]\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_unknown_values_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend 'spark'"):
        Pool(1, backend="spark")
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, backend=3.5)
    with pytest.raises(ValueError, match="ThreadPool"):
        ThreadPool(1, backend="ray")
    with pytest.raises(ValueError, match="max_memory_per_child"):
        Pool(1, backend="ray", max_memory_per_child=1 << 30)


@pytest.mark.parametrize("engine", ["ray", "distributed"])
def test_missing_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    kind = "dask" if engine == "distributed" else "ray"
    monkeypatch.setitem(sys.modules, engine, None)  # "not installed"
    monkeypatch.delitem(sys.modules, f"polyproc.backends.{kind}", raising=False)
    extra = "dask" if kind == "dask" else "ray"
    with pytest.raises(ImportError, match=rf"pip install 'polyproc\[{extra}\]'"):
        load(kind)
    with pytest.raises(ImportError, match=rf"polyproc\[{extra}\]"):
        Pool(1, backend=kind)


def test_context_manager_and_environment(monkeypatch: pytest.MonkeyPatch, backend: Any) -> None:
    name = "ray" if backend == "ray" else "dask"
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert current_backend() == "local"
    with polyproc.use_backend(backend):
        assert current_backend() is backend
        with Pool(2) as p:
            assert _kind(p) == name and p.map(square, range(5)) == [0, 1, 4, 9, 16]
        with ProcessPoolExecutor(2) as ex:
            assert ex.submit(square, 3).result(timeout=60) == 9
        with Pool(1, backend="local") as p:  # the argument wins
            assert _kind(p) == "local"
    assert current_backend() == "local"
    if name == "ray":
        monkeypatch.setenv(ENV_VAR, "ray")
        with Pool(2) as p:
            assert _kind(p) == "ray" and p.apply(square, (4,)) == 16


def test_dask_current_client_and_address(dask_client: Any) -> None:
    with dask_client.as_current():
        with Pool(backend="dask") as p:
            assert p._engine.cluster.client is dask_client  # type: ignore[attr-defined]
            assert p._processes == 2  # the cluster's threads
            assert p.map(square, range(4)) == [0, 1, 4, 9]
    with Pool(2, backend=dask_client.scheduler.address) as p:
        assert p.map(square, range(4)) == [0, 1, 4, 9]
        own = p._engine.cluster._own_client  # type: ignore[attr-defined]
        assert own is not None and own is not dask_client
    assert own.status == "closed"


def test_dask_without_a_client_starts_and_closes_a_local_cluster() -> None:
    pytest.importorskip("distributed")
    from distributed import Client

    with pytest.raises(ValueError):
        Client.current()
    with Pool(2, backend="dask") as p:
        cluster = p._engine.cluster._own_cluster  # type: ignore[attr-defined]
        assert cluster is not None and len(cluster.workers) == 2
        assert p.map(square, range(4)) == [0, 1, 4, 9]
    assert cluster.status.name == "closed"
    # its worker processes are gone: the leak check (conftest) fails the test otherwise


@pytest.mark.parametrize("spec", ["ray://head.example:10001", "ray"])
def test_ray_address_reaches_ray_init(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    """``"ray://..."`` (and ``"ray"`` with ``RAY_ADDRESS``) connect to that cluster; only a
    bare ``"ray"`` with no address starts a local instance (``init_local``)."""
    ray = require_engine("ray")
    import polyproc.backends.ray as plugin

    calls: list[dict[str, Any]] = []

    class Refused(Exception):
        pass

    def fake_init(*args: Any, **kw: Any) -> None:
        calls.append(kw)
        raise Refused("no cluster here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    with pytest.raises(Refused):
        Pool(2, backend=spec)
    assert calls[-1]["address"] == (None if spec == "ray" else spec)  # None: Ray reads the env
    monkeypatch.delenv("RAY_ADDRESS")
    started: list[Any] = []
    monkeypatch.setattr(plugin, "init_local", lambda *a, **kw: started.append(a) or fake_init())
    with pytest.raises(Refused):
        Pool(2, backend=spec)
    assert bool(started) is (spec == "ray")


def test_a_slow_raylet_gets_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray polls for its raylet for a fixed 30 s; ``init_local`` lets each poll wait for the
    node itself, up to ``wait_s`` (a cold or loaded machine is slow, not broken)."""
    ray = require_engine("ray")
    from polyproc.backends.ray import _patient_raylet

    services = ray._private.services
    polls: list[float] = []

    def not_yet(gcs: Any, node: Any) -> dict[str, Any]:
        polls.append(time.monotonic())
        if len(polls) < 4:
            raise RuntimeError("node not registered yet")
        return {"node_id": node}

    monkeypatch.setattr(services, "get_node", not_yet)
    with _patient_raylet(30.0):
        assert services.get_node("gcs", "n1") == {"node_id": "n1"}  # one call: it waited
    assert len(polls) == 4 and services.get_node is not_yet  # put back

    def never(gcs: Any, node: Any) -> None:
        raise RuntimeError("raylet died")

    monkeypatch.setattr(services, "get_node", never)
    t0 = time.monotonic()
    with _patient_raylet(0.5), pytest.raises(RuntimeError, match="raylet died"):
        services.get_node("gcs", "n1")
    assert 0.4 < time.monotonic() - t0 < 10  # a dead raylet still ends in an error


def test_ci_fails_where_an_engine_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A skip must never hide a missing install in CI: there the fixtures fail instead."""
    monkeypatch.setitem(sys.modules, "ray", None)  # "not installed"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"ray is not installed"):
        require_engine("ray")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"pip install -e '\.\[test\]'"):
        require_engine("ray")
