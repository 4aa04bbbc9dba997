"""The pool's engine with cluster worker slots: the local scheduler, cluster tasks for batches.

::

    Pool / Executor faces ──► ClusterEngine (= Engine with ClusterWorkers: slots, not threads)
                                 Scheduler: ordering, lazy input, adaptive batches,
                                 timeouts, retries, lost workers  (unchanged)
                                   │ Send(wid, batch)          ▲ RESULTS / READY / LOST / STOP
                                   ▼                           │ (engine.post, any thread)
                               ClusterSlot wid  ── pack: function once, big objects
                                 │                 put in the object store once
                                 ▼
                               cluster task: _remote.run(batch)  (Dask future / Ray actor call)
                                 └─ done callback (engine's thread pool) ──► in send order

A slot is a ``Slot`` (``_pool/workers.py``), as a ``ThreadWorker`` is: ``name``,
``put(batch | None)``, ``abandoned``, ``start()``; ``ClusterWorkers`` is the
thread worker set with cluster slots. So the thread-worker paths do the rest: a
timed-out task's slot is abandoned at its deadline (its cluster task cancelled,
on Ray its actor process killed) and replaced; ``close`` stops slots once their
work is done; ``terminate`` abandons them all. What is new is one message,
``LOST``: the cluster says the worker running a batch died (Dask ``KilledWorker``,
Ray ``RayActorError``...), and the scheduler treats it exactly as a local
worker's death: that batch's task fails with ``WorkerLostError`` naming the
cluster worker (or runs again under ``retries=``), the rest run elsewhere.
"""

from __future__ import annotations

import io
import pickle
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from .._pool.engine import Engine
from .._pool.messages import INIT_FAILED, READY, RESULTS, STOP, TaskError
from .._pool.workers import ThreadWorkers
from ..errors import SerializationError

__all__ = ["ClusterEngine", "ClusterWorkers", "ClusterSlot", "Cluster", "LOST", "BIG"]

LOST = 101  # (LOST, wid, name): the cluster worker running this slot's batch died
BIG = 1 << 20  # objects this big and up go to the object store once, by reference
_STORE_BUDGET = 1 << 30


class Cluster:
    """One pool's connection to a cluster engine; a plugin subclasses it (see dask.py, ray.py).

    ``processes`` slots run at once; ``window`` batches may be in flight per slot
    (1 where the engine may run two of one slot's tasks on different workers);
    ``target_batch_s`` is the work per cluster task that hides its overhead, up to
    ``max_batch`` tasks; the tail of a map is not split into cluster tasks of less
    than ``min_batch_s`` of work (a cluster task costs milliseconds: 100,000 ``x + 1``
    go in 4 cluster tasks, not 52; docs/scale-out.md "Batching").
    """

    kind = "cluster"
    window = 1
    target_batch_s = 0.05
    max_batch = 1 << 15  # tasks per cluster task at most
    min_batch_s = 0.01  # the tail is not split into cluster tasks of less work than this

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.token = uuid.uuid4().hex
        self._store: OrderedDict[int, tuple[Any, Any, int]] = OrderedDict()
        self._store_bytes = 0
        self._store_lock = threading.Lock()
        self.stats = {"puts": 0, "bytes_put": 0, "tasks": 0}
        self._fns: OrderedDict[int, tuple[Any, int, bytes, list[Any]]] = OrderedDict()
        self._fids = 0

    # -- for plugins ---------------------------------------------------------------------
    def slot(
        self, wid: int, post: Callable[..., None], init_blob: bytes | None, init_refs: list[Any]
    ) -> ClusterSlot:
        raise NotImplementedError

    def put(self, obj: Any) -> Any:
        """Put ``obj`` in the engine's object store; a reference tasks can take."""
        raise NotImplementedError

    def release(self) -> None:
        """Everything this pool started on the cluster goes (after its engine has ended)."""
        with self._store_lock:
            self._store.clear()
            self._store_bytes = 0
            self._fns.clear()

    def function(self, fn: Any) -> tuple[int, bytes, list[Any]]:
        """The task function pickled once per pool: (id on the wire, blob, its refs).

        The engine hands slots objects, not bytes (thread-worker mode); workers cache
        the unpickled function by (pool token, id).
        """
        with self._store_lock:
            hit = self._fns.get(id(fn))
            if hit is not None and hit[0] is fn:
                return hit[1], hit[2], hit[3]
        refs: list[Any] = []
        blob = pack(self, fn, refs)
        with self._store_lock:
            self._fids += 1
            self._fns[id(fn)] = (fn, self._fids, blob, refs)
            if len(self._fns) > 64:
                self._fns.popitem(last=False)
            return self._fids, blob, refs

    # -- the object store: big objects once ------------------------------------------
    def ref(self, obj: Any, size: int) -> Any:
        """The store's reference for ``obj``, putting it the first time (kept alive by us)."""
        key = id(obj)
        with self._store_lock:
            hit = self._store.get(key)
            if hit is not None and hit[0] is obj:
                self._store.move_to_end(key)
                return hit[1]
        ref = self.put(obj)
        with self._store_lock:
            self.stats["puts"] += 1
            self.stats["bytes_put"] += size
            self._store[key] = (obj, ref, size)
            self._store_bytes += size
            while self._store_bytes > _STORE_BUDGET and len(self._store) > 1:
                # Tasks in flight keep their own reference: the engine frees it after them.
                _, (_, _, n) = self._store.popitem(last=False)
                self._store_bytes -= n
        return ref


def _big_size(obj: Any) -> int:
    t = type(obj)
    if t is bytes or t is bytearray:
        return len(obj)
    if t.__name__ == "ndarray" and t.__module__ == "numpy":
        return int(obj.nbytes)
    return 0


class _RefPickler:
    """cloudpickle, with objects of ``BIG`` bytes and up replaced by store references."""

    def __init__(self, cluster: Cluster, refs: list[Any]) -> None:
        import cloudpickle

        self.buf = io.BytesIO()
        outer = self

        def persistent_id(_pickler: Any, obj: Any) -> Any:
            return outer._pid(obj)

        # Made with type(): cloudpickle has no type hints to subclass under mypy --strict.
        pickler = type("_Pickler", (cloudpickle.Pickler,), {"persistent_id": persistent_id})
        self.pickler = pickler(self.buf, protocol=5)
        self.cluster = cluster
        self.refs = refs
        self.seen: dict[int, int] = {}

    def _pid(self, obj: Any) -> int | None:
        size = _big_size(obj)
        if size < BIG:
            return None
        index = self.seen.get(id(obj))
        if index is None:
            index = self.seen[id(obj)] = len(self.refs)
            self.refs.append(self.cluster.ref(obj, size))
        return index

    def dumps(self, obj: Any) -> bytes:
        self.pickler.dump(obj)
        return self.buf.getvalue()


def pack(cluster: Cluster, obj: Any, refs: list[Any]) -> bytes:
    """Pickle ``obj`` for a cluster task: plain pickle when it is small and plain, else
    cloudpickle with big objects by reference (appended to ``refs``).

    Anything from ``__main__`` goes by value (cloudpickle): a cluster worker's
    ``__main__`` is the engine's, not the user's script.
    """
    oob: list[Any] = []
    try:
        body = pickle.dumps(obj, 5, buffer_callback=oob.append)
    except Exception:  # noqa: BLE001 - a lambda or a closure: cloudpickle below
        pass
    else:
        if not oob and len(body) < BIG and b"__main__" not in body:
            return body
    return _RefPickler(cluster, refs).dumps(obj)


class _Entry:
    __slots__ = ("bid", "count", "handle", "answer")

    def __init__(self, bid: int, count: int) -> None:
        self.bid = bid
        self.count = count
        self.handle: Any = None
        self.answer: tuple[Any, ...] | None = None


class ClusterSlot:
    """One of the pool's worker slots on a cluster (see the module docstring).

    A plugin supplies ``_start`` (then ``_ready``), ``_submit`` (arrange for
    ``_answered`` to be called once with an answer tuple), ``_cancel`` and
    ``_release``. Answers are posted to the engine in send order.
    """

    def __init__(
        self,
        cluster: Cluster,
        wid: int,
        post: Callable[..., None],
        init_blob: bytes | None,
        init_refs: list[Any],
    ) -> None:
        self.cluster = cluster
        self.wid = wid
        self.name = f"{cluster.kind} slot {wid}"
        self.abandoned = False
        self._post = post
        self._init_blob = init_blob
        self._init_refs = init_refs
        self._lock = threading.Lock()
        self._pending: deque[_Entry] = deque()
        self._stopping = False
        self._over = False  # LOST or STOP posted: nothing more from us

    # -- the engine's side -------------------------------------------------------------
    def start(self) -> None:
        self._start()

    def put(self, item: tuple[int, Callable[..., Any], int, list[Any]] | None) -> None:
        if item is None:
            if self.abandoned:
                self.kill()
                return
            with self._lock:
                self._stopping = True
                done = not self._pending
            if done:
                self._stop_now()
            return
        bid, fn, mode, args = item
        entry = _Entry(bid, len(args))
        with self._lock:
            self._pending.append(entry)
        try:
            fid, fn_blob, refs = self.cluster.function(fn)
            refs = list(refs)
            blob = pack(self.cluster, args, refs)
        except Exception as exc:  # noqa: BLE001 - the batch fails, the slot goes on
            err = TaskError.local(
                SerializationError(f"the batch could not be pickled for the cluster: {exc!r}")
            )
            self._answered(entry, ("ok", 0.0, None, [err] * len(args)))
            return
        self.cluster.stats["tasks"] += 1
        try:
            self._submit(entry, fid, fn_blob, mode, blob, len(args), refs)
        except Exception as exc:  # noqa: BLE001 - the cluster refused it: the slot is lost
            self._answered(entry, ("lost", f"{self.name} (submit failed: {exc!r})"))

    def kill(self) -> None:
        """Abandoned (timeout, terminate): cancel what is in flight and release the worker."""
        with self._lock:
            self._over = True
            pending, self._pending = list(self._pending), deque()
        for e in pending:
            if e.handle is not None:
                try:
                    self._cancel(e)
                except Exception:  # noqa: BLE001 - the cluster may be gone already
                    pass
        self.release()

    def release(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: BLE001
            pass

    # -- for plugins -------------------------------------------------------------------
    def _start(self) -> None:
        self._ready(0)

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
        raise NotImplementedError

    def _cancel(self, entry: _Entry) -> None:
        pass

    def _release(self) -> None:
        pass

    def _ready(self, pid: int) -> None:
        self._post(READY, self.wid, pid)

    def _init_failed(self, err: TaskError) -> None:
        self._post(INIT_FAILED, self.wid, err)

    def _lost(self, name: str) -> None:
        with self._lock:
            if self._over or self.abandoned:
                return
            self._over = True
        self._post(LOST, self.wid, name)

    def _answered(self, entry: _Entry, answer: tuple[Any, ...]) -> None:
        """Any thread, once per batch: post this and every earlier answer, in send order."""
        with self._lock:
            entry.answer = answer
            while self._pending and not self._over:
                head = self._pending[0].answer
                if head is None:
                    break
                self._deliver(self._pending.popleft(), head)
            stop = self._stopping and not self._pending and not self._over
        if stop:
            self._stop_now()

    def _deliver(self, e: _Entry, answer: tuple[Any, ...]) -> None:
        """Under the slot lock (keeps the order); posting is a deque append."""
        kind = answer[0]
        if self.abandoned:
            return
        if kind == "ok":
            _, busy, _pid, values = answer
            if len(values) != e.count:
                values = [
                    TaskError.local(
                        SerializationError("the cluster task returned the wrong number of results")
                    )
                ] * e.count
            self._post(RESULTS, self.wid, e.bid, busy, None, values)
        elif kind == "init":
            self._over = True
            self._post(INIT_FAILED, self.wid, answer[2])
        else:  # lost
            self._over = True
            self._post(LOST, self.wid, answer[1])

    def _stop_now(self) -> None:
        with self._lock:
            if self._over:
                return
            self._over = True
        self._post(STOP, self.wid)


class ClusterWorkers(ThreadWorkers):
    """The engine's worker set for a cluster: each worker is a ``ClusterSlot`` (a ``Slot``)."""

    def __init__(
        self, engine: Engine, cluster: Cluster, init_blob: bytes | None, init_refs: list[Any]
    ) -> None:
        super().__init__(engine, prefix=f"{cluster.kind}-slot")
        self.cluster = cluster
        self._init_blob = init_blob
        self._init_refs = init_refs

    def spawn(self, wid: int) -> None:
        name = f"worker {wid}"
        try:
            slot = self.cluster.slot(wid, self.post_message, self._init_blob, self._init_refs)
            name = slot.name
            self.slots[wid] = slot
            slot.start()
        except Exception:  # noqa: BLE001 - a slot that cannot start is a worker that died
            self.slots.pop(wid, None)
            self.sched.worker_exited(wid, None, name=name)

    def message(self, kind: int, wid: int, rest: tuple[Any, ...]) -> None:
        slot = self.slots.get(wid)
        if not isinstance(slot, ClusterSlot) or slot.abandoned:
            return
        if kind == LOST:
            # Like a worker's death: the engine ends the slot, the scheduler re-runs or
            # fails exactly the tasks it held, and a new slot takes its place.
            slot.abandoned = True
            slot.kill()
            del self.slots[wid]
            if wid in self.sched.workers:
                self.sched.worker_exited(wid, None, name=str(rest[0]))
            return
        if kind == STOP:
            slot.release()
        super().message(kind, wid, rest)

    def release(self) -> None:
        self._init_refs = []
        self.cluster.release()


class ClusterEngine(Engine):
    """``Engine`` whose worker set is ``ClusterWorkers`` (nothing pickled by the engine)."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        maxtasksperchild: int | None,
        target_batch_s: float | None,
    ) -> None:
        self.cluster = cluster
        init_refs: list[Any] = []
        init_blob = (
            None
            if initializer is None
            else pack(cluster, (initializer, tuple(initargs)), init_refs)
        )
        super().__init__(
            cluster.processes,
            ctx=None,
            threads=True,
            maxtasksperchild=maxtasksperchild,
            window=cluster.window,
            target_batch_s=(cluster.target_batch_s if target_batch_s is None else target_batch_s),
            workers=lambda engine: ClusterWorkers(engine, cluster, init_blob, init_refs),
        )
        # A cluster task costs milliseconds, not a local frame's microseconds: let tiny
        # tasks travel tens of thousands to one (the local cap, 4096, would make 100,000
        # ``x + 1`` cost ~25 round trips per slot). ``target_batch_s`` still bounds it.
        self.sched.max_batch = cluster.max_batch
        self.sched.min_batch_s = cluster.min_batch_s
