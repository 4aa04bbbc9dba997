"""The Ray backend: a pool's slots run their batches as Ray tasks.

``connect`` takes ``"ray"`` (the running Ray if this process already called
``ray.init``, else ``ray.init()``: ``RAY_ADDRESS`` or a local instance, shut down
with the pool) or ``"ray://host:10001"``. Each batch is one call of a remote
function (``max_retries=0``: polyproc's ``retries=`` decide what runs again) on
Ray's pooled worker processes, so a pool starts no processes of its own and
starts in milliseconds; the initializer runs lazily, once per worker process.

* A lost worker: the task fails with ``WorkerCrashedError`` (or ``ObjectLostError``,
  ``NodeDiedError``...); its batch's task fails with ``WorkerLostError`` (or runs
  again under ``retries=``), the slot is replaced.
* A timeout: at the deadline the task is cancelled with ``ray.cancel(force=True)``,
  which kills the worker process running it; the task fails with ``TimeoutError``
  and a new slot takes over.
* A slot has one batch in flight (``window = 1``): Ray may run two of one slot's
  tasks on different workers, and a lost worker must fail only its own batch.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import ray
import ray.exceptions as rex

from .._pool.messages import TaskError
from ._engine import Cluster, ClusterSlot, _Entry
from ._remote import run as _run

__all__ = ["connect", "RayCluster"]

_LOST = tuple(
    getattr(rex, n)
    for n in (
        "WorkerCrashedError",
        "ObjectLostError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "OutOfMemoryError",
        "RayActorError",
    )
    if hasattr(rex, n)
)


def _batch(
    token: str,
    init_blob: bytes | None,
    n_init: int,
    fid: int,
    fn_blob: bytes,
    mode: int,
    blob: bytes,
    count: int,
    *refs: Any,
) -> bytes:
    """The remote function: Ray resolves the ``ObjectRef`` arguments in ``refs`` first."""
    return _run(
        token, init_blob, list(refs[:n_init]), fid, fn_blob, mode, blob, count, list(refs[n_init:])
    )


_task = ray.remote(max_retries=0, retry_exceptions=False)(_batch)


def connect(spec: Any, processes: int | None) -> RayCluster:
    """A pool's connection to Ray (see the module docstring for ``spec``)."""
    owned = False
    if not ray.is_initialized():
        ray.init(
            address=None if spec == "ray" else spec,
            include_dashboard=False,
            configure_logging=False,
        )
        owned = True
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    n = processes or max(1, int(cpus))
    return RayCluster(n, owned, min(1.0, cpus / n))


class RayCluster(Cluster):
    """One pool on a Ray cluster."""

    kind = "ray"
    window = 1
    target_batch_s = 0.1  # one batch in flight per slot: 0.1 s of work hides ~2-5 ms per task

    def __init__(self, processes: int, owned: bool, cpus_per_task: float) -> None:
        super().__init__(processes)
        self.owned = owned
        self.task = _task.options(num_cpus=cpus_per_task)

    def slot(
        self, wid: int, post: Callable[..., None], init_blob: bytes | None, init_refs: list[Any]
    ) -> ClusterSlot:
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

    def _submit(
        self,
        entry: _Entry,
        fid: int,
        fn_blob: bytes,
        mode: int,
        blob: bytes,
        count: int,
        refs: list[Any],
    ) -> None:
        cl = self.cluster
        ref = cl.task.remote(
            cl.token,
            self._init_blob,
            len(self._init_refs),
            fid,
            fn_blob,
            mode,
            blob,
            count,
            *self._init_refs,
            *refs,
        )
        entry.handle = ref
        ref.future().add_done_callback(lambda f: self._done(entry, f))

    def _done(self, entry: _Entry, fut: Any) -> None:
        """Ray's callback thread: the answer, or what went wrong."""
        if self.abandoned:
            return
        try:
            blob = fut.result()
        except _LOST as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._answered(
                entry,
                (
                    "lost",
                    f"the ray worker running task "
                    f"{entry.handle.task_id().hex()[:16]} "
                    f"({type(exc).__name__}: {first[:200]})",
                ),
            )
            return
        except BaseException as exc:  # noqa: BLE001
            if self.abandoned:
                return
            self._answered(entry, ("ok", 0.0, None, [TaskError.local(exc)] * entry.count))
            return
        self._answered(entry, pickle.loads(blob))

    def _cancel(self, entry: _Entry) -> None:
        # Kills the worker process running it: a late task's worker is replaced.
        ray.cancel(entry.handle, force=True)
