"""The commit journal (``_pool/journal.py``) in one process: what a dead worker leaves is exact.

The reader maps the same memfd, so a task can look at the journal at the instant it starts:
that is what the parent sees if the worker is killed then.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from polyproc._pool import journal as jr
from polyproc._pool.messages import TaskError
from polyproc._serialize import DEFAULT_SERIALIZER

pickle_dumps = DEFAULT_SERIALIZER.dumps_bytes


@pytest.fixture(autouse=True, params=["c", "python"])
def commit_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both commit loops: the C one (``_csem.run_scalars``) and Python's."""
    if request.param == "c" and jr._run_scalars is None:
        pytest.skip("no C extension")
    if request.param == "python":
        monkeypatch.setattr(jr, "_run_scalars", None)
    return str(request.param)


class _Probe:
    """A task function that, at each task, records what the journal says so far."""

    def __init__(self, reader: jr.JournalReader, bid: int, sent: list[Any]) -> None:
        self.reader = reader
        self.bid = bid
        self.sent = sent
        self.seen: list[list[Any] | None] = []
        self.started: list[bool | None] = []

    def __call__(self, x: Any) -> Any:
        known = len(self.sent)
        rest = self.reader.recover(self.bid, known)
        self.seen.append(None if rest is None else self.sent + rest.values)
        self.started.append(None if rest is None else rest.started)
        return x


def _values(r: jr.Recovery | None) -> list[Any]:
    assert r is not None
    return r.values


def _pair() -> tuple[jr.Journal, jr.JournalReader]:
    fd = jr.new_journal_fd()
    assert fd is not None
    reader = jr.JournalReader(os.dup(fd))
    return jr.Journal(fd), reader


def _run(values: list[Any], bid: int = 7) -> tuple[_Probe, list[Any], list[Any] | None]:
    j, reader = _pair()
    sent: list[Any] = []

    def flush(b: int, vals: list[Any]) -> bool:
        assert b == bid
        sent.extend(vals)
        return True

    probe = _Probe(reader, bid, sent)
    try:
        rest = j.run(
            probe, 0, values, bid, flush, TaskError.capture, DEFAULT_SERIALIZER.dumps_bytes
        )
        final = reader.recover(bid, len(sent), len(values))
    finally:
        j.close()
        reader.close()
    assert rest is not None
    return probe, sent + jr.values_of(rest), None if final is None else sent + final.values


VALUES = [
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**70,
    1.5,
    float("inf"),
    -0.0,
    None,
    True,
    False,
    "text",
    "\udc80 surrogate",
    b"bytes",
    (1, "t"),
    (1, 2.5, None, True, b"b", 2**80),
    (1, bytearray(b"x")),
    ((1,), 2),
    [1, 2],
    {"k": 1},
    bytearray(b"ba"),
]


def test_every_kind_round_trips_and_each_task_sees_exactly_its_predecessors() -> None:
    probe, out, final = _run(VALUES)
    assert out == VALUES
    assert final == VALUES  # the whole batch committed
    for i, seen in enumerate(probe.seen):
        assert seen == VALUES[:i], i  # when task i starts, tasks 0..i-1 are committed
    assert probe.started == [True] * len(VALUES)  # ... and the journal says task i began
    assert [type(v) for v in final] == [type(v) for v in VALUES]
    assert type(final[-5][1]) is bytearray  # inside a tuple too: marshal would say bytes


def test_a_result_too_big_for_the_area_is_flushed_before_the_next_task() -> None:
    big = b"\x01" * (jr.AREA_SIZE + 10)
    values = [1, 2, big, 3, "x"]
    probe, out, final = _run(values)
    assert out == values
    assert final == values
    assert probe.seen[3] == [1, 2, big]  # sent (PARTIAL) before task 3 began


def test_more_tasks_than_slots_roll_over() -> None:
    values = list(range(jr.SLOTS * 2 + 5))
    probe, out, final = _run(values)
    assert out == values and final == values
    assert probe.seen[jr.SLOTS + 3] == values[: jr.SLOTS + 3]


def test_a_result_with_an_fd_goes_on_the_channel() -> None:
    a, b = socket.socketpair()
    try:
        from polyproc._connection import Connection

        conn = Connection(a.detach())
        probe, out, final = _run([1, conn, 2])
        assert out[1] is conn and final is not None and final[1] is conn
        assert probe.seen[2] == [1, conn]
        conn.close()
    finally:
        b.close()


def test_a_journal_for_another_batch_says_not_started() -> None:
    j, reader = _pair()
    try:
        j.begin(3, 0, 10)
        assert reader.recover(4, 0) is None
        assert _values(reader.recover(3, 0)) == []
        j.begin(3, 2, 10)
        j.tags[0] = jr.NONE
        j.tags[1] = jr.TRUE
        # PARTIAL results up to the journal's base or past it: only the ones after them.
        assert _values(reader.recover(3, 2)) == [None, True]
        assert _values(reader.recover(3, 3)) == [True]
        # Fewer than its base: a PARTIAL message is missing, the journal cannot be used.
        assert reader.recover(3, 1) is None
    finally:
        j.close()
        reader.close()


def test_a_corrupt_journal_trusts_nothing_past_the_damage() -> None:
    j, reader = _pair()
    try:
        j.begin(5, 0, 3)
        j.tags[0] = jr.INT
        j.ivals[0] = 11
        j.tags[1] = jr.BLOB
        j.ivals[1] = jr.AREA_SIZE + 1  # an offset past the area
        j.tags[2] = jr.INT
        got = reader.recover(5, 0)
        assert got is not None and got.values == [11]
        assert got.started  # damage: the task there may have run, never run it again
        j.ivals[1] = 3
        j.area[0:3] = b"zzz"  # not a pickle: that task's result is an error
        vals = _values(reader.recover(5, 0))
        assert vals[0] == 11 and type(vals[1]) is TaskError
    finally:
        j.close()
        reader.close()


def test_started_tells_a_task_that_was_called_from_one_that_never_began() -> None:
    """STARTED (a header word stored just before each call) against the committed prefix:
    a worker killed after committing task k-1 and before calling task k leaves STARTED one
    short of k, so the parent re-queues k instead of failing it."""
    j, reader = _pair()
    head = j._head
    try:
        j.begin(3, 0, 10)
        r = reader.recover(3, 0)
        assert r is not None and r.values == [] and not r.started  # begun, nothing called
        head[jr._H_STARTED] = 0
        r = reader.recover(3, 0)
        assert r is not None and r.values == [] and r.started  # task 0 was called
        j.tags[0] = jr.NONE  # task 0 committed ...
        r = reader.recover(3, 0)
        assert r is not None and r.values == [None] and not r.started  # ... task 1 not called
        head[jr._H_STARTED] = 1
        r = reader.recover(3, 0)
        assert r is not None and r.values == [None] and r.started
        # A rebase after a PARTIAL flush: the flushed task's slot stays uncommitted in the
        # old span; the next task (index 2, after the two sent) has not been called.
        r = reader.recover(3, 2)
        assert r is not None and r.values == [] and not r.started
        # Mid-begin of the next span: STARTED is reset first, the old tags still there.
        j.tags[1] = jr.TRUE
        head[jr._H_STARTED] = -1
        r = reader.recover(3, 2)
        assert r is not None and r.values == [] and not r.started
    finally:
        j.close()
        reader.close()


def test_a_full_span_says_the_next_task_never_began() -> None:
    """Killed after the last slot of a span committed, before the flush: the next task
    (the first of the next span) was not called."""
    j, reader = _pair()
    try:
        j.begin(9, 0, jr.SLOTS + 5)
        for k in range(jr.SLOTS):
            j._head[jr._H_STARTED] = k
            j.ivals[k] = k
        r = reader.recover(9, 0, jr.SLOTS + 5)
        assert r is not None and r.values == list(range(jr.SLOTS)) and not r.started
    finally:
        j.close()
        reader.close()


@pytest.mark.parametrize("n", [0, 1, 5])
def test_empty_and_short_batches(n: int) -> None:
    _, out, final = _run(list(range(n)))
    assert out == list(range(n)) and final == list(range(n))


def test_a_batch_of_marshalled_results_travels_as_one_marshalled_list() -> None:
    """Tuples, text, small bytes, lists and dicts of scalars are committed by marshal; when
    every result of a batch is, RESULTS carries the journal's blobs as one marshalled list
    (no second pickle of the values), and ``values_of`` gives them back exactly."""
    values: list[Any] = [(i, "k") for i in range(50)] + ["s", b"b", [1, (2, "x")], {"a": 1.5}]
    fd = jr.new_journal_fd()
    assert fd is not None
    j = jr.Journal(fd)
    try:
        rest = j.run(lambda x: x, 0, values, 1, lambda b, v: True, TaskError.capture, pickle_dumps)
    finally:
        j.close()
    assert type(rest) is tuple  # the marshalled form, not a list
    assert rest is not None and jr.values_of(rest) == values
    with pytest.raises(ValueError):
        jr.values_of(("x", b""))


def test_shapes_marshal_would_change_are_pickled() -> None:
    """marshal turns a bytearray into bytes and loses shared mutable members: those pickle."""
    shared = [1]
    values: list[Any] = [(1, bytearray(b"x")), [shared, shared], {"k": [1]}, [bytearray(b"y")]]
    _, out, final = _run(values)
    for got in (out, final):
        assert got is not None and got == values
        assert type(got[0][1]) is bytearray and type(got[3][0]) is bytearray
        assert got[1][0] is got[1][1]  # still one list, as pickle keeps it


def test_state_says_whether_the_worker_was_loading_a_batch() -> None:
    j, reader = _pair()
    try:
        j.waiting()
        assert not reader.loading()  # died waiting: not the batch's fault
        j.loading()
        assert reader.loading()  # died reading or unpickling it: maybe its fault
        j.begin(1, 0, 3)
        assert not reader.loading()  # loaded; ``begin`` ran
    finally:
        j.close()
        reader.close()


class _BigBuffer:
    """Pickles (protocol 5) as one out-of-band-capable buffer, as a NumPy array does."""

    def __init__(self, n: int) -> None:
        self.data = bytearray(n)

    def __reduce_ex__(self, protocol: Any) -> Any:
        import pickle

        return (bytearray, (pickle.PickleBuffer(self.data),))


def test_a_result_too_big_for_the_journal_is_never_copied_in_band() -> None:
    """A 32 MiB buffer and a 1 MiB journal area: ``_blob`` gives up before it copies the
    buffer into a pickle it would then throw away (that copy cost more than the whole
    transfer of a 512 MiB array, #14)."""
    import tracemalloc

    value = _BigBuffer(32 << 20)
    tracemalloc.start()
    try:
        assert jr._blob(DEFAULT_SERIALIZER.dumps_bytes, value, 1 << 20) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated: the buffer was copied"
    small = _BigBuffer(1000)
    blob = jr._blob(DEFAULT_SERIALIZER.dumps_bytes, small, 1 << 20)
    assert blob is not None and len(blob) > 1000  # a buffer that fits stays in band


def _raise_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def _add(a: int, b: int) -> int:
    return a + b


def test_a_raising_task_is_committed_as_its_error_and_the_batch_goes_on() -> None:
    j, reader = _pair()
    try:
        rest = j.run(
            _raise_on_odd,
            jr.ONE,
            [0, 1, 2, 3],
            9,
            lambda b, v: True,
            TaskError.capture,
            pickle_dumps,
        )
        final = reader.recover(9, 0, 4)
    finally:
        j.close()
        reader.close()
    assert rest is not None and final is not None
    for got in (jr.values_of(rest), final.values):
        assert got[0] == 0 and got[2] == 2
        assert type(got[1]) is TaskError and type(got[3]) is TaskError
        err = got[1].exception()
        assert isinstance(err, ValueError) and err.args == (1,)


def test_star_tasks_take_their_arguments_spread() -> None:
    j, reader = _pair()
    try:
        rest = j.run(
            _add,
            jr.STAR,
            [(1, 2), [3, 4], (5, 6)],
            3,
            lambda b, v: True,
            TaskError.capture,
            pickle_dumps,
        )
        final = reader.recover(3, 0, 3)
    finally:
        j.close()
        reader.close()
    assert rest is not None and final is not None
    assert jr.values_of(rest) == final.values == [3, 7, 11]


def _kw(a: int, *, b: int) -> int:
    return a - b


def _ident(x: Any) -> Any:
    return x


@pytest.mark.parametrize("value", [*VALUES, b"\x01" * (jr.AREA_SIZE + 10)])
def test_a_batch_of_one_task_commits_its_value_before_it_is_sent(value: Any) -> None:
    """``run_one`` (a round trip's batch): the same commit point as ``run``; a value too big
    for the journal is left uncommitted (RESULTS carries it before the journal moves on)."""
    j, reader = _pair()
    seen: list[Any] = []

    def task(x: Any) -> Any:
        rest = reader.recover(5, 0, 1)
        seen.append(None if rest is None else (rest.values, rest.started))
        return x

    try:
        j.run(
            _ident, jr.ONE, list(range(50)), 4, lambda b, v: True, TaskError.capture, pickle_dumps
        )
        got = j.run_one(task, jr.ONE, value, 5, TaskError.capture, pickle_dumps)
        final = reader.recover(5, 0, 1)
    finally:
        j.close()
        reader.close()
    assert got == [value] and type(got[0]) is type(value)
    assert seen == [([], True)]  # called: it was running, nothing of batch 4 shows through
    assert final is not None
    if type(value) is bytes and len(value) > jr.AREA_SIZE:
        assert final.values == [] and final.started
    else:
        assert final.values == [value] and type(final.values[0]) is type(value)


def test_a_batch_of_one_task_spreads_its_arguments_and_captures_its_error() -> None:
    j, reader = _pair()
    try:
        assert j.run_one(_add, jr.STAR, (1, 2), 1, TaskError.capture, pickle_dumps) == [3]
        assert j.run_one(_kw, 2, ((5,), {"b": 2}), 2, TaskError.capture, pickle_dumps) == [3]
        (err,) = j.run_one(_raise_on_odd, jr.ONE, 1, 3, TaskError.capture, pickle_dumps)
        final = reader.recover(3, 0, 1)
    finally:
        j.close()
        reader.close()
    assert type(err) is TaskError and isinstance(err.exception(), ValueError)
    assert final is not None and type(final.values[0]) is TaskError


class _Died(Exception):
    """The worker's death, just before one of its stores into the journal."""


class _Stores:
    """A view of the journal whose stores are counted with the other views': the ``at``-th
    store of them all raises ``_Died`` instead of landing (a SIGKILL between two stores)."""

    def __init__(self, view: memoryview, count: list[int], at: int) -> None:
        self.view = view
        self.count = count
        self.at = at

    def __getitem__(self, key: Any) -> Any:
        return self.view[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.count[0] == self.at:
            raise _Died
        self.count[0] += 1
        self.view[key] = value


_VIEWS = ("tags", "ivals", "fvals", "area", "_words")


_KINDS = [7, 1.5, -0.0, None, True, "text", (1, "t"), b"raw" * 2000, 2**70, bytearray(b"b")]


@pytest.mark.parametrize(
    "value", _KINDS, ids=[type(v).__name__ + str(i) for i, v in enumerate(_KINDS)]
)
def test_a_worker_killed_between_any_two_stores_of_a_commit_never_shows_a_wrong_value(
    value: Any,
) -> None:
    """A commit is one store (an int) or several (a float: its slot and its tag; a blob: the
    area, its end offset in the slot, its tag). Killed before any of them, the task is
    either committed with its value or not committed (it was running), never anything
    else. A float's or a blob's slot word written before its tag once read as a committed
    int: the float's bits, or the blob's end offset (an imap under a killer yielded 40, an
    offset, for task 111): such a slot is tagged PENDING before its word."""
    outcomes = set()
    for at in range(6):
        j, reader = _pair()
        saved = {name: getattr(j, name) for name in _VIEWS}
        count = [0]
        try:
            # An earlier batch's blobs and floats in the slots: ``begin`` must hide them.
            j.run(
                _ident,
                jr.ONE,
                ["x", 2.5] * 8,
                8,
                lambda b, v: True,
                TaskError.capture,
                pickle_dumps,
            )
            j.begin(9, 0, 3)
            j._head[jr._H_STARTED] = 0  # as the commit loop does before it calls the task
            for name, view in saved.items():
                setattr(j, name, _Stores(view, count, at))
            died = False
            try:
                j._commit(0, value, 0, [], pickle_dumps)
            except _Died:
                died = True
            r = reader.recover(9, 0, 3)
        finally:
            for name, view in saved.items():
                setattr(j, name, view)
            j.close()
            reader.close()
        assert r is not None
        if died and not r.values:
            assert r.started  # not committed: it was running
            outcomes.add("running")
        else:
            (got,) = r.values
            assert type(got) is type(value) and repr(got) == repr(value)  # -0.0 too
            assert not r.started  # committed: the next task was not called
            outcomes.add("committed")
    assert outcomes == {"running", "committed"}
