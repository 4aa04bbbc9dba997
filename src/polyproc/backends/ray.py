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

import contextlib
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
import ray.exceptions as rex

from .._pool.messages import TaskError
from ._engine import Cluster, ClusterSlot, _Entry
from ._remote import run as _run

__all__ = ["connect", "init_local", "RayCluster"]

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


@contextlib.contextmanager
def _patient_raylet(wait_s: float) -> Iterator[None]:
    """Let a starting raylet take up to ``wait_s`` to register, not Ray's fixed 30 s.

    ``ray.init`` starts the GCS, then the raylet, which registers with the GCS only
    once its agents (Python processes that import Ray) are up; ``Node.__init__``
    polls ``services.get_node`` and gives up after a hard-coded 30 s
    (ray/_private/node.py). On a loaded 2-core machine, or the first start on a
    fresh one (cold page cache), the raylet is slow, not broken: we make each poll
    wait for the node itself, so Ray's clock only runs out after ``wait_s``.
    """
    services = ray._private.services
    original = getattr(services, "get_node", None)
    if original is None:  # another Ray layout: its own timeout applies
        yield
        return
    deadline = time.monotonic() + wait_s

    def get_node(gcs_address: Any, node_id: Any) -> Any:
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def init_local(num_cpus: int | None = None, *, wait_s: float = 180.0, **options: Any) -> None:
    """Start a local Ray instance for this process, lean and patient.

    Lean: no dashboard (its UI server, ``include_dashboard=False``) and Ray's own
    logging setup left alone. Patient: the raylet may take ``wait_s`` to come up
    (see ``_patient_raylet``). ``options`` go to ``ray.init`` as they are.
    """
    kw: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
    if num_cpus is not None:
        kw["num_cpus"] = num_cpus
    kw.update(options)
    with _patient_raylet(wait_s):
        ray.init(**kw)


def connect(spec: Any, processes: int | None) -> RayCluster:
    """A pool's connection to Ray (see the module docstring for ``spec``)."""
    owned = False
    if not ray.is_initialized():
        if spec == "ray" and not os.environ.get("RAY_ADDRESS"):
            init_local()
        else:
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
