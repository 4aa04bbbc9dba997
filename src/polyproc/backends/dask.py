"""The Dask backend: a pool's slots run their batches as ``distributed`` tasks.

``connect`` takes ``"dask"`` (the current client, else a ``LocalCluster`` started
for the pool and closed with it), a ``distributed.Client``, or a scheduler address
(a client made for the pool and closed with it). Each batch is one
``client.submit(_remote.run, ...)``; its done callback (Dask's callback thread)
fetches the answer and hands it to the slot.

* A lost worker: Dask reports ``KilledWorker`` once a task was running on more
  workers that died than ``distributed.scheduler.allowed-failures`` allows. The
  ``LocalCluster`` polyproc starts (``local_cluster``) sets it to 0, so the first
  death is reported and polyproc's own ``retries=`` decide; on a cluster you run,
  Dask first re-runs it on other workers that many times (default 3).
* A timeout: Dask cannot interrupt a running task. At the deadline the task fails
  with ``TimeoutError``, its future is cancelled (the result is dropped) and a new
  slot takes over; the worker thread finishes the late call before it takes more.
* A slot has one batch in flight (``window = 1``): Dask may run two of one slot's
  tasks on different workers, and a lost worker must fail only its own batch.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from collections.abc import Callable
from typing import Any

import dask
import distributed
from distributed import Client, LocalCluster

from .._pool.messages import TaskError
from ._engine import Cluster, ClusterSlot, _Entry
from ._remote import run as _run

__all__ = ["connect", "local_cluster", "DaskCluster"]

#: what polyproc's LocalCluster runs with: report a lost worker at once (polyproc's
#: ``retries=`` decide), and give a worker no more tasks than it has threads, so a
#: death fails only the task that was running there.
CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.worker-saturation": 1.0,
}


def local_cluster(n_workers: int | None = None, **options: Any) -> LocalCluster:
    """A ``LocalCluster`` of worker processes, one thread each, set up as polyproc expects."""
    kw: dict[str, Any] = {
        "n_workers": n_workers or os.cpu_count() or 1,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",
        "silence_logs": logging.ERROR,
    }
    kw.update(options)
    with dask.config.set(CONFIG):
        return LocalCluster(**kw)


def connect(spec: Any, processes: int | None) -> DaskCluster:
    """A pool's connection to Dask (see the module docstring for ``spec``)."""
    own_client: Client | None = None
    own_cluster: LocalCluster | None = None
    if isinstance(spec, Client):
        client = spec
    elif spec == "dask":
        try:
            client = Client.current()
        except ValueError:
            own_cluster = local_cluster(processes)
            client = own_client = Client(own_cluster, set_as_default=False)
    else:
        client = own_client = Client(spec, set_as_default=False)
    try:
        threads = sum(client.nthreads().values())
        if not threads:
            client.wait_for_workers(1, timeout=60)
            threads = sum(client.nthreads().values())
    except BaseException:
        _close(own_client, own_cluster)
        raise
    return DaskCluster(client, processes or max(1, threads), own_client, own_cluster)


def _close(client: Client | None, cluster: LocalCluster | None) -> None:
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


class DaskCluster(Cluster):
    """One pool on a Dask cluster."""

    kind = "dask"
    window = 1
    target_batch_s = 0.1

    def __init__(
        self,
        client: Client,
        processes: int,
        own_client: Client | None,
        own_cluster: LocalCluster | None,
    ) -> None:
        super().__init__(processes)
        self.client = client
        self._own_client = own_client
        self._own_cluster = own_cluster

    def slot(
        self, wid: int, post: Callable[..., None], init_blob: bytes | None, init_refs: list[Any]
    ) -> ClusterSlot:
        return DaskSlot(self, wid, post, init_blob, init_refs)

    def put(self, obj: Any) -> Any:
        return self.client.scatter([obj], hash=False)[0]

    def release(self) -> None:
        super().release()
        client, cluster = self._own_client, self._own_cluster
        self._own_client = self._own_cluster = None
        _close(client, cluster)


class DaskSlot(ClusterSlot):
    cluster: DaskCluster

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
        fut = cl.client.submit(
            _run,
            cl.token,
            self._init_blob,
            self._init_refs,
            fid,
            fn_blob,
            mode,
            blob,
            count,
            refs,
            pure=False,
            key=f"polyproc-batch-{uuid.uuid4().hex}",
        )
        entry.handle = fut
        fut.add_done_callback(lambda f: self._done(entry, f))

    def _done(self, entry: _Entry, fut: Any) -> None:
        """Dask's callback thread: fetch the answer (a gather), or say what went wrong."""
        if self.abandoned:
            return
        try:
            try:
                blob = fut.result()
            finally:
                fut.release()  # the scheduler forgets the task now, not at garbage collection
        except distributed.KilledWorker as exc:
            last = getattr(exc, "last_worker", None)
            where = getattr(last, "address", None) or "unknown"
            self._answered(entry, ("lost", f"dask worker {where}"))
            return
        except BaseException as exc:  # noqa: BLE001 - cancelled, or the cluster went away
            if self.abandoned:
                return
            if "Cancelled" in type(exc).__name__ or "Comm" in type(exc).__name__:
                self._answered(entry, ("lost", f"{self.name} (dask: {exc!r})"))
            else:
                self._answered(entry, ("ok", 0.0, None, [TaskError.local(exc)] * entry.count))
            return
        self._answered(entry, pickle.loads(blob))

    def _cancel(self, entry: _Entry) -> None:
        entry.handle.cancel()
