"""The commit journal: every finished task's result survives its worker's SIGKILL.

Each process worker owns one memfd (``SIZE`` bytes, pages touched only as used), made
by the pool as it starts the worker (``new_journal_fd``), mapped by the worker
read-write and by the parent read-only. The worker commits each task's result there
*before it starts the next task*; the parent reads it only after the worker's death:
no lock, no syscall per task (a commit is one or two stores into the mapping)::

    worker                                       parent (engine thread)
    ──────                                       ──────────────────────
    map the journal (fd from its start) ◄───  new_journal_fd(), map it read-only, close fd
    TASKS bid ◄──────────────────────────────────
    begin(bid): STARTED := -1, zero the tags, BASE := 0, BID := bid
    for each task i:  STARTED := j (= i - BASE), run it
        commit: [tags[j] := PENDING,] value into slot j, tags[j] := kind  ◄── the commit point
        no room (slots, area) or no in-band pickle:
            PARTIAL bid values[sent..i] ──────►  kept on the Handle (head batch)
            rebase: zero the tags, BASE := i + 1
    RESULTS bid values[sent..n-1] ─────────────►  batch_done(partial + values)
                                                  ...
                                  death ──────►  drain the channel to EOF, then read the
                                                  journal: tasks [0, k) are finished (their
                                                  values), task k was running if STARTED says
                                                  it began (fails, or is retried), else it is
                                                  re-queued; tasks after it never started

Layout (native byte order; the two sides are one machine)::

    0            header: 8 int64 words, [0] MAGIC, [1] BID, [2] BASE, [3] STARTED (the slot
                 of the task last called: -1 before the first)
    TAGS         SLOTS bytes: the kind of slot j's value, 0 = not committed
    VALS         SLOTS int64 (or float64) words: the value, or for a blob the end offset,
                 or UNSET
    AREA         blobs back to back from 0: in-band pickles, UTF-8 text, raw bytes

Kinds: an int is the slot itself with tag 0: ``begin`` fills the slots with UNSET
(-2**63), so storing the value *is* the commit, one store (an int equal to UNSET, or
too big for int64, takes the blob path). FLOAT holds the value in the slot plus its
tag; NONE/TRUE/FALSE only the tag; BLOB a pickle in the area ending at the slot's
offset, STR (UTF-8) and BYTES the raw bytes there, MARSHAL text, small bytes, or a
tuple, list or dict of scalars, marshalled (version 2). A task is committed once its tag
is set to its kind, or, tag 0, its slot no longer holds UNSET. A kind with a word in the
slot (FLOAT, a blob's offset) first tags it PENDING (read as not committed: that task was
running): else tag 0 and that word read as an int, and a worker killed between the two had
the float's bits or the offset delivered as its result (imap once yielded 40 for task 111).

Invariants (tests/pool/test_journal.py and test_exactly_once.py check them):

* A tag is written after everything it describes (PENDING before a word that is not an
  int's), and a header word after the tags it governs, so a worker killed between any
  two stores leaves a journal whose committed prefix is exactly right (a killed
  process's earlier stores all land).
* BID names the batch the journal speaks for, and is written last in ``begin``
  (after the tags are zeroed): a journal naming batch B never shows stale tags.
* The worker begins batch B+1 only after ``send(RESULTS B)`` returned, and rebases
  only after ``send(PARTIAL)`` returned: those bytes are then in the kernel's socket
  buffer, which outlives the worker, so the parent reads them on its drain. Hence
  ``BASE <= len(partial results received)`` always, and if the journal names an
  older batch than the head of the worker's window, the head never started.
* STARTED is stored just before a task is called (a plain store, no syscall), so a
  worker killed after committing task k-1 and before calling task k leaves
  STARTED = k-1 < k: task k never started and is re-queued, not failed. ``begin``
  writes STARTED := -1 first, so a journal caught mid-``begin`` says "not started".
* STATE says whether the worker was WAITING for a batch, LOADING one (set once it has
  arrived, before it is read and unpickled) or RUNNING one (set by ``begin``). Only a
  death while LOADING counts against the batch the parent was about to run there (the
  guard against an argument that kills every worker that unpickles it); a batch whose
  worker died waiting, or after ``begin`` and before its first call, is re-queued as is.
* At most one task per worker is ever "running": called but not committed. Only it
  is lost when the worker dies; a task is never run twice unless ``retries=`` says so.

A result too big for the area (or one carrying fds, or that only pickles out of
band) goes out at once in a PARTIAL message, with the uncommitted ones before it,
before the next task starts: the same guarantee through the socket instead.
"""

from __future__ import annotations

import marshal
import mmap
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

_run_scalars: Callable[..., tuple[int, object, bool]] | None
try:  # the commit loop in C (optional: without a compiler, the same loop in Python)
    from .._csem import run_scalars as _run_scalars
except ImportError:  # pragma: no cover - no C extension
    _run_scalars = None

__all__ = ["SIZE", "SLOTS", "Journal", "JournalReader", "Recovery", "new_journal_fd", "values_of"]

MAGIC = 0x706F6C796A726E31  # "polyjrn1"
SLOTS = 4096  # tasks per journal (a batch longer than this flushes)
SIZE = 1 << 20
_HEADER = 64
TAGS = _HEADER
VALS = TAGS + SLOTS
AREA = VALS + 8 * SLOTS
AREA_SIZE = SIZE - AREA

EMPTY, INT, FLOAT, NONE, TRUE, FALSE, BLOB, STR, BYTES, MARSHAL = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
PENDING = 10  # a slot's word is being written, not an int's (``_csem.c``'s J_PENDING)
_FLAT = frozenset({int, float, str, bytes, bool, type(None)})
_marshal = marshal.dumps
_SMALL_BYTES = 4096  # bytes up to this are marshalled (a copy more), bigger ones go raw
_SHALLOW = 64  # members of a container worth checking for marshal (past it: pickle)
_LIST = b"["  # marshal's list type code (version 2: no reference flag)
_MARSHALLED = "m"  # RESULTS values ``("m", marshalled list)``: see ``values_of``
#: A batch's values as RESULTS carries them: a list, an all-int batch's int64s, or an
#: all-marshal batch's marshalled list (``Journal._collect``; ``values_of`` reads each).
Values = list[Any] | bytes | tuple[str, bytes]
_H_MAGIC, _H_BID, _H_BASE, _H_STARTED, _H_STATE = 0, 1, 2, 3, 4
_HEAD = struct.Struct("=4q")
#: What the worker is doing between batches (header word STATE): a death while WAITING
#: for the next batch, or after ``begin``, is no fault of the batch it was about to get;
#: a death while LOADING one (reading it, unpickling its function and arguments) may be.
WAITING, LOADING, RUNNING = 0, 1, 2
_WORD = struct.Struct("=q")
_ZEROS = bytes(SLOTS)
UNSET = -(2**63)  # an int slot not yet written (an int result of this value is a blob)
_UNSET_FILL = struct.pack("=q", UNSET) * SLOTS
_NOTHING: Any = object()

ONE, STAR = 0, 1  # scheduler.Mode values, as plain ints (KW is anything else)


def new_journal_fd() -> int | None:
    """A worker's journal (a sparse memfd), made by the pool for a worker it starts (whose
    READY is then plain data: ~65 page faults less than passing the fd back, issue 11)."""
    fd = -1
    try:
        fd = os.memfd_create("polyproc-journal", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        return fd
    except (OSError, AttributeError):
        if fd >= 0:
            os.close(fd)
        return None


class Journal:
    """The worker's side: runs batches, committing each result before the next task."""

    def __init__(self, fd: int) -> None:
        """Map the journal the pool made (``new_journal_fd``); the fd is closed here."""
        try:
            self.mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        view = memoryview(self.mm)
        self._head = view[:_HEADER].cast("q")
        self.tags = view[TAGS:VALS]
        self._words = view[VALS:AREA]
        self.ivals = self._words.cast("q")
        self.fvals = self._words.cast("d")
        self.area = view[AREA:SIZE]
        self._head[_H_MAGIC] = MAGIC

    def begin(self, bid: int, base: int, n: int) -> None:
        """Speak for tasks ``base..`` of batch ``bid`` (nothing of it committed yet)."""
        # One slot past the tasks it will hold is reset too: the reader stops there, not at
        # a stale slot of a longer batch before.
        k = min(n - base + 1, SLOTS)
        head = self._head
        head[_H_STARTED] = -1  # first: whatever slot it named belongs to the old span
        head[_H_STATE] = RUNNING
        if k > 0:
            self.tags[:k] = _ZEROS[:k]
            self._words[: 8 * k] = _UNSET_FILL[: 8 * k]
        head[_H_BASE] = base
        head[_H_BID] = bid  # last: the journal now names this batch

    def waiting(self) -> None:
        """Between batches: about to wait for the next one."""
        self._head[_H_STATE] = WAITING

    def loading(self) -> None:
        """A batch has arrived: about to read and unpickle it."""
        self._head[_H_STATE] = LOADING

    def run(
        self,
        fn: Callable[..., Any],
        mode: int,
        args: list[Any],
        bid: int,
        flush: Callable[[int, list[Any]], bool],
        capture: Callable[[BaseException], Any],
        dumps: Callable[[Any], bytes],
    ) -> Values | None:
        """Run one batch; return the values not yet sent (``None``: the channel is gone).

        The values come back as a list, or, when every one is marshalled in the journal,
        as that marshalled list (``("m", bytes)``), or, when every one is an int that the journal
        holds in place, as those int64s' bytes (``values_of`` reads either): the parent
        then rebuilds them at C speed instead of unpickling a list.
        ``flush(bid, values)`` sends a PARTIAL message and returns False if it could not.
        """
        n = len(args)
        lo = 0
        while True:
            hi = min(n, lo + SLOTS)
            k, others, big = self._span(fn, mode, args, lo, hi, bid, n, capture, dumps)
            if big is _NOTHING and lo + k == n:
                return self._collect(k, others, raw=True)
            values = self._collect(k - 1 if big is not _NOTHING else k, others, raw=False)
            assert isinstance(values, list)  # raw=False: always a list (for mypy; per span)
            if big is not _NOTHING:
                values.append(big)
            if not flush(bid, values):
                return None
            lo += k
            if lo >= n:
                return []

    def run_one(
        self,
        fn: Callable[..., Any],
        mode: int,
        arg: Any,
        bid: int,
        capture: Callable[[BaseException], Any],
        dumps: Callable[[Any], bytes],
    ) -> list[Any]:
        """Run a batch of one task (a round trip's): ``run`` without its span machinery.

        The same commit point (STARTED before the call, the value committed before it
        is sent). A value the journal cannot hold needs no PARTIAL: there is no next
        task, and the RESULTS that carries it goes before the next ``begin``.
        """
        self.begin(bid, 0, 1)
        self._head[_H_STARTED] = 0  # the task is being called: from here on it was running
        try:
            if mode == ONE:
                v = fn(arg)
            elif mode == STAR:
                v = fn(*arg)
            else:
                v = fn(*arg[0], **arg[1])
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a task must not end the worker
            v = capture(exc)
        if type(v) is int and v != UNSET:
            try:
                self.ivals[0] = v  # the commonest result: one store, as ``_commit``'s first case
                return [v]
            except (ValueError, OverflowError):
                pass
        self._commit(0, v, 0, [], dumps)
        return [v]

    def _span(
        self,
        fn: Callable[..., Any],
        mode: int,
        args: list[Any],
        lo: int,
        hi: int,
        bid: int,
        n: int,
        capture: Callable[[BaseException], Any],
        dumps: Callable[[Any], bytes],
    ) -> tuple[int, list[Any], Any]:
        """Run tasks ``lo..hi-1``, committing each. Stops early after a task whose result
        the journal cannot hold, returned as ``big`` (to be sent before the next task)."""
        self.begin(bid, lo, n)
        items = args[lo:hi] if lo or hi < n else args
        others: list[Any] = []  # results that are not ints, floats, None or bools, in order
        if _run_scalars is not None and (mode == ONE or mode == STAR):
            # The loop in C: scalars committed there; anything else comes back to _commit.
            run, star, mm, m = _run_scalars, mode == STAR, self.mm, len(items)
            pos = j = 0
            while True:
                j, got, raised = run(fn, star, items, j, m, mm, TAGS, VALS, _H_STARTED, UNSET)
                if j >= m:
                    return m, others, _NOTHING
                v: Any = capture(got) if raised else got  # type: ignore[arg-type]
                pos = self._commit(j, v, pos, others, dumps)
                if pos < 0:
                    return j + 1, others, v  # too big, or it needs fds: the channel takes it
                j += 1
        # The same loop in Python: without the C extension, and for keyword tasks.
        head = self._head
        one = mode == ONE
        pos = 0  # end of the blobs in the area
        j = -1
        for j, a in enumerate(items):  # noqa: B007
            head[_H_STARTED] = j  # task j is being called: from here on it was running
            try:
                if one:
                    v = fn(a)
                elif mode == STAR:
                    v = fn(*a)
                else:
                    v = fn(*a[0], **a[1])
            except BaseException as exc:  # noqa: BLE001 - SystemExit in a task must not end the worker
                v = capture(exc)
            pos = self._commit(j, v, pos, others, dumps)  # before the next task starts
            if pos < 0:
                return j + 1, others, v  # too big, or it needs fds: the channel takes it
        return j + 1, others, _NOTHING

    def _commit(
        self,
        j: int,
        v: Any,
        pos: int,
        others: list[Any],
        dumps: Callable[[Any], bytes],
    ) -> int:
        """Commit task ``j``'s value ``v``; the area's new end, or -1 if it does not fit
        (nothing committed: the channel takes it)."""
        # An int is one store: its slot held UNSET, so writing the value is the commit
        # (UNSET itself takes the blob path).
        t = type(v)
        if t is int:
            try:
                self.ivals[j] = v
                if v != UNSET:
                    return pos
            except (ValueError, OverflowError):
                pass
        elif t is float:
            self.tags[j] = PENDING  # its word is not an int's: never read it as one
            self.fvals[j] = v
            self.tags[j] = FLOAT
            return pos
        elif v is None:
            self.tags[j] = NONE
            return pos
        elif t is bool:
            self.tags[j] = TRUE if v else FALSE
            return pos
        # Text, small bytes, and tuples, lists and dicts of scalars (``(key, value)``,
        # the map-reduce shape): marshal, about twice as fast as pickle and exact for
        # exact builtin types (not for a bytearray or memoryview, which it would turn
        # into bytes, nor for shared mutable members: those pickle). Version 2 has no
        # back-references, so a span's blobs concatenate into one marshalled list.
        kind = MARSHAL
        blob: bytes | None
        if t is str or (t is bytes and len(v) <= _SMALL_BYTES):
            blob = _marshal(v, 2)
        elif t is tuple and len(v) == 2 and type(v[0]) in _FLAT and type(v[1]) in _FLAT:
            blob = _marshal(v, 2)  # a pair, the commonest shape: checked inline
        elif (t is tuple or t is list) and _shallow(v):
            blob = _marshal(v, 2)
        elif t is dict and _shallow_dict(v):
            blob = _marshal(v, 2)
        elif t is bytes and len(v) < AREA_SIZE - pos:
            blob = v
            kind = BYTES
        else:
            blob = _blob(dumps, v, AREA_SIZE - pos)
            kind = BLOB
        if blob is None or len(blob) > AREA_SIZE - pos:
            return -1
        end = pos + len(blob)
        self.area[pos:end] = blob
        self.tags[j] = PENDING  # the offset is not an int result: never read it as one
        self.ivals[j] = end
        self.tags[j] = kind
        others.append(v)
        return end

    def _collect(self, k: int, others: list[Any], raw: bool) -> Values:
        """The values of the span's first ``k`` tasks, from the journal (and ``others``)."""
        tags = self.tags[:k].tobytes()
        if not tags.count(0) - k:
            data = self.ivals[:k]
            return data.tobytes() if raw else data.tolist()
        if raw and tags.count(MARSHAL) == k:
            # Every value is a marshal blob, back to back in the area: together they are
            # the body of a marshalled list. Send that, not a second pickle of the values.
            return (
                _MARSHALLED,
                b"".join((_LIST + k.to_bytes(4, "little"), self.area[: self.ivals[k - 1]])),
            )
        if tags.count(FLOAT) == k:
            return self.fvals[:k].tolist()
        ivals, fvals = self.ivals, self.fvals
        objs = iter(others)
        out: list[Any] = []
        append = out.append
        for j, t in enumerate(tags):
            if t == 0:
                append(ivals[j])
            elif t == FLOAT:
                append(fvals[j])
            elif t == NONE:
                append(None)
            elif t == TRUE:
                append(True)
            elif t == FALSE:
                append(False)
            else:
                append(next(objs))
        return out

    def close(self) -> None:
        for v in (self._head, self.tags, self.ivals, self.fvals, self._words, self.area):
            v.release()
        self.mm.close()


def _blob(dumps: Callable[[Any], bytes], v: Any, room: int) -> bytes | None:
    """``v`` pickled in band if it fits in ``room`` bytes; None to send it on the channel.

    Plain pickle first (C, and no check of ``__main__``): whatever it can name by
    reference here, the parent can too. Then the serializer's way (cloudpickle).
    """
    t = type(v)
    if (t is bytes or t is bytearray) and len(v) >= room:
        return None  # do not copy a big buffer only to find it does not fit

    def in_band(buf: pickle.PickleBuffer) -> bool:
        # A buffer that alone overflows the area aborts before it is copied: a 512 MiB
        # array pickled in band only to be thrown away cost more than its whole transfer.
        if buf.raw().nbytes > room:
            raise _TooBig
        return True  # true: pickle keeps it in band

    try:
        blob = _plain(v, 5, buffer_callback=in_band)
    except _TooBig:
        return None
    except BaseException:  # noqa: BLE001
        try:
            blob = dumps(v)
        except BaseException:  # noqa: BLE001 - fds, or not picklable: the channel says which
            return None
    return blob if len(blob) <= room else None


_plain = pickle.dumps


class _TooBig(Exception):
    """An out-of-band buffer bigger than the journal's room: send the value on the channel."""


class Recovery:
    """What a dead worker's journal says: ``values`` of the tasks it finished (from the
    first not already known), and whether the task after them had been ``started``
    (called: it was running when the worker died) or never began (re-queue it)."""

    __slots__ = ("values", "started")

    def __init__(self, values: list[Any], started: bool) -> None:
        self.values = values
        self.started = started

    def __repr__(self) -> str:
        return f"Recovery({self.values!r}, started={self.started})"


class JournalReader:
    """The parent's side: a read-only mapping of a worker's journal, read after its death."""

    def __init__(self, fd: int) -> None:
        try:
            self.mm: mmap.mmap | None = mmap.mmap(fd, SIZE, prot=mmap.PROT_READ)
            # Workers forked later must not inherit this mapping (nor the fd: closed below).
            self.mm.madvise(mmap.MADV_DONTFORK)
        except (OSError, ValueError, AttributeError):
            self.mm = None
        finally:
            os.close(fd)

    def recover(self, bid: int, known: int, n: int | None = None) -> Recovery | None:
        """Results of batch ``bid`` (``n`` tasks) from task ``known`` on, as far as committed,
        and whether the task after them was called.

        ``known`` results of the batch came in PARTIAL messages already. Returns None if
        the journal does not speak for ``bid`` (the batch never started) or cannot be read.
        """
        mm = self.mm
        if mm is None:
            return None
        magic, jbid, base, started = _HEAD.unpack_from(mm, 0)
        if magic != MAGIC or jbid != bid or not 0 <= base <= known:
            return None
        count = SLOTS if n is None else max(0, min(SLOTS, n - base))
        tags = mm[TAGS : TAGS + count]
        words = memoryview(mm[VALS : VALS + 8 * count])
        ivals, fvals = words.cast("q"), words.cast("d")
        out: list[Any] = []
        pos = 0
        for j in range(count):
            tag = tags[j]
            if tag == EMPTY:
                v: Any = ivals[j]
                if v == UNSET:
                    break  # the first task not committed: it was running
            elif tag == PENDING:
                break  # killed while committing it: not committed, it was running
            elif tag == INT:
                v = ivals[j]
            elif tag == FLOAT:
                v = fvals[j]
            elif tag == NONE:
                v = None
            elif tag == TRUE:
                v = True
            elif tag == FALSE:
                v = False
            elif BLOB <= tag <= MARSHAL:
                end = ivals[j]
                if not pos <= end <= AREA_SIZE:
                    started = SLOTS  # not a journal we wrote: trust nothing past here,
                    break  # and say the next task ran (the safe side: never run twice)
                data = mm[AREA + pos : AREA + end]
                if tag == BYTES:
                    v = data
                elif tag == STR:
                    v = data.decode(errors="surrogatepass")
                else:
                    v = _loads(data, tag == MARSHAL)
                pos = end
            else:
                started = SLOTS
                break
            if base + j >= known:
                out.append(v)
        ivals.release()
        fvals.release()
        words.release()
        # The next task (absolute index ``known + len(out)``) was called iff STARTED reached
        # it: STARTED is stored before each call, so a worker killed between committing a
        # task and calling the next leaves it one short (and -1 mid-``begin``).
        return Recovery(out, base + started >= known + len(out))

    def loading(self) -> bool:
        """Did the worker die while loading a batch (reading or unpickling it), rather than
        while waiting for one or running one? Only such a death may be the batch's fault."""
        mm = self.mm
        if mm is None:
            return True  # cannot tell: as if it were (the batch gets a strike)
        magic, state = _WORD.unpack_from(mm, 0)[0], _WORD.unpack_from(mm, 8 * _H_STATE)[0]
        return bool(magic != MAGIC or state == LOADING)

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None


def values_of(values: Values) -> list[Any]:
    """A RESULTS message's values: a list, the int64s of an all-int batch, or the marshalled
    list of an all-marshal batch (``Journal._collect``)."""
    if type(values) is list:
        return values
    if type(values) is bytes:
        return memoryview(values).cast("q").tolist()
    tag, body = values
    if tag != _MARSHALLED or type(body) is not bytes:
        raise ValueError(f"not a batch's values: {tag!r}")
    out = marshal.loads(body)
    if type(out) is not list:
        raise ValueError("not a batch's values: not a list")
    return out


def _shallow(v: tuple[Any, ...] | list[Any]) -> bool:
    """Is ``v`` scalars and tuples of scalars only, of exact builtin types (marshal is exact)?"""
    if len(v) > _SHALLOW:
        return False
    for x in v:
        t = type(x)
        if t not in _FLAT:
            if t is not tuple or len(x) > _SHALLOW:
                return False
            for y in x:
                if type(y) not in _FLAT:
                    return False
    return True


def _shallow_dict(v: dict[Any, Any]) -> bool:
    if len(v) > _SHALLOW:
        return False
    for key, x in v.items():
        if type(key) not in _FLAT or type(x) not in _FLAT:
            return False
    return True


def _loads(blob: bytes, marshalled: bool = False) -> Any:
    from ..errors import SerializationError
    from .messages import TaskError

    try:
        return marshal.loads(blob) if marshalled else pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - the task's result, as its error
        return TaskError.local(
            SerializationError(
                f"a task's result, recovered from its dead worker, could not be unpickled here: {exc!r}"
            )
        )
