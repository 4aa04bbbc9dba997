"""The Ray backend: each of a pool's slots is one Ray actor (one worker process).

``connect`` takes ``"ray"`` (the running Ray if this process already called
``ray.init``, else ``ray.init()``: ``RAY_ADDRESS`` or a local instance, shut down
with the pool) or ``"ray://host:10001"``. A slot's actor runs the initializer in
its constructor (once per worker process) and its batches in send order, so a
slot keeps up to ``window`` batches in flight, as a local worker does.

* A lost worker: the actor's calls fail with ``RayActorError`` (or
  ``WorkerCrashedError``, ``ObjectLostError``); the slot is lost, its batch's task
  fails with ``WorkerLostError`` naming the actor's process and node (or runs
  again under ``retries=``), its later batches run on a new actor.
* A timeout: at the deadline the actor is killed (``ray.kill``: the process,
  by force), the task fails with ``TimeoutError`` and a new actor takes over.
* Actors are created with ``max_restarts=0``: polyproc decides what runs again.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

import ray
import ray.exceptions as rex

from .._pool.messages import TaskError
from ._engine import Cluster, ClusterSlot, _Entry
from ._remote import init_once
from ._remote import run as _run

__all__ = ["connect", "RayCluster"]

_LOST = tuple(getattr(rex, n) for n in ("RayActorError", "WorkerCrashedError", "ObjectLostError",
                                        "NodeDiedError", "ActorDiedError", "LocalRayletDiedError")
              if hasattr(rex, n))


class _Worker:
    """The actor: one worker process of one pool."""

    def __init__(self, token: str, init_blob: bytes | None, *init_refs: Any) -> None:
        self.token = token
        self.err = init_once(token, init_blob, list(init_refs))

    def ready(self) -> tuple[int, str, TaskError | None]:
        return os.getpid(), ray.util.get_node_ip_address(), self.err

    def run(self, fid: int, fn_blob: bytes, mode: int, blob: bytes, count: int,
            *refs: Any) -> bytes:
        return _run(self.token, None, [], fid, fn_blob, mode, blob, count, list(refs))


_Actor = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)


def connect(spec: Any, processes: int | None) -> RayCluster:
    """A pool's connection to Ray (see the module docstring for ``spec``)."""
    owned = False
    if not ray.is_initialized():
        ray.init(address=None if spec == "ray" else spec, include_dashboard=False,
                 configure_logging=False)
        owned = True
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    n = processes or max(1, int(cpus))
    return RayCluster(n, owned, min(1.0, cpus / n))


class RayCluster(Cluster):
    """One pool on a Ray cluster."""

    kind = "ray"
    window = 2
    target_batch_s = 0.02

    def __init__(self, processes: int, owned: bool, cpus_per_actor: float) -> None:
        super().__init__(processes)
        self.owned = owned
        self.cpus_per_actor = cpus_per_actor

    def slot(self, wid: int, post: Callable[..., None], init_blob: bytes | None,
             init_refs: list[Any]) -> ClusterSlot:
        return RaySlot(self, wid, post, init_blob, init_refs)

    def put(self, obj: Any) -> Any:
        return ray.put(obj)

    def release(self) -> None:
        super().release()
        if self.owned:
            self.owned = False
            ray.shutdown()


class RaySlot(ClusterSlot):
    cluster: RayCluster
    actor: Any = None

    def _start(self) -> None:
        self.actor = _Actor.options(num_cpus=self.cluster.cpus_per_actor).remote(
            self.cluster.token, self._init_blob, *self._init_refs)
        self.actor.ready.remote().future().add_done_callback(self._on_ready)

    def _on_ready(self, fut: Any) -> None:
        try:
            pid, ip, err = fut.result()
        except BaseException as exc:  # noqa: BLE001 - the actor never came up
            self._lost(f"{self.name} (its Ray actor died while starting: {type(exc).__name__})")
            return
        if err is not None:
            self._init_failed(err)
            return
        self.name = f"ray actor pid {pid} on {ip}"
        self._ready(pid)

    def _submit(self, entry: _Entry, fid: int, fn_blob: bytes, mode: int, blob: bytes,
                count: int, refs: list[Any]) -> None:
        ref = self.actor.run.remote(fid, fn_blob, mode, blob, count, *refs)
        entry.handle = ref
        ref.future().add_done_callback(lambda f: self._done(entry, f))

    def _done(self, entry: _Entry, fut: Any) -> None:
        if self.abandoned:
            return
        try:
            blob = fut.result()
        except _LOST as exc:
            self._answered(entry, ("lost", f"{self.name} ({type(exc).__name__})"))
            return
        except BaseException as exc:  # noqa: BLE001
            if self.abandoned:
                return
            self._answered(entry, ("ok", 0.0, None, [TaskError.local(exc)] * entry.count))
            return
        self._answered(entry, pickle.loads(blob))

    def _release(self) -> None:
        actor, self.actor = self.actor, None
        if actor is not None:
            ray.kill(actor, no_restart=True)
