"""Issue #14: every performance target is a case of the real bench/, with its baseline.

Importing the bench modules is cheap (their workloads import polyproc, the stdlib and
NumPy lazily), so this checks the case tables themselves: a renamed case, a dropped
floor or a target changed by accident fails here, not in the lead's final run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from polyproc._bench import FLOOR, Discovered, discover, select

BENCH = Path(__file__).resolve().parents[2] / "bench"

#: (--filter, case name, baseline, target, impls that must be there)
TARGETS = [
    ("send_bytes stream", "send_bytes stream 64 KiB, parent -> child", "stdlib", 1.0, {FLOOR}),
    ("send_bytes stream", "send_bytes stream 4 MiB, child -> parent", "stdlib", 1.5, {FLOOR}),
    ("send() stream", "send() stream of ~100 B tuples", "stdlib", 1.5, set()),
    ("socketpair floor", "Pipe round trip vs socketpair floor", FLOOR, 1 / 1.2, set()),
    ("1M tiny", "Pool.map 1M tiny, default chunks vs Pool.map", "stdlib", 1.0, {"mpire"}),
    ("1M tiny", "Pool.imap 1M tiny, default chunks vs Pool.map", "stdlib", 1.0, set()),
    ("1M tiny", "Executor.map 1M tiny, defaults vs Pool.map", "stdlib", 0.8, {"loky"}),
    (
        "slow consumer",
        "imap, slow consumer of a 191k-item generator: parent RSS growth",
        "stdlib",
        1.0,
        set(),
    ),
    ("MiB array", "pool: 512 MiB array argument", "stdlib", 10.0, set()),
    ("MiB array", "pool: 512 MiB array result", "stdlib", 10.0, set()),
    (
        "shared_array",
        "pool: 512 MiB shared_array argument vs an 8 B one",
        FLOOR,
        1 / 1.5,
        {"stdlib"},
    ),
    ("manager dict", "manager dict get round trip vs socketpair floor", FLOOR, 1 / 1.5, set()),
    ("manager dict", "manager dict set+get, 2 processes", "stdlib", 2.0, set()),
    (
        "ping-pong floor",
        "submit().result() round trip vs pipe ping-pong floor",
        FLOOR,
        0.5,
        {"stdlib", "loky"},
    ),
    ("ping-pong floor", "Pool.apply round trip vs pipe ping-pong floor", FLOOR, 0.5, {"stdlib"}),
    ("separate submits", "200k separate submits", "stdlib", 20.0, {"loky"}),
    ("pool start", "pool start + first map (spawn)", "stdlib", 1.0, set()),
]


@pytest.fixture(scope="module")
def cases() -> list[Discovered]:
    found, broken = discover(BENCH)
    assert not broken, broken
    return found


@pytest.mark.parametrize(("flt", "name", "baseline", "target", "impls"), TARGETS)
def test_each_issue_14_target_is_a_case(
    cases: list[Discovered], flt: str, name: str, baseline: str, target: float, impls: set[str]
) -> None:
    chosen = {d.case.name: d.case for d in select(cases, filters=[flt])}
    assert name in chosen, sorted(chosen)
    case = chosen[name]
    assert case.baseline == baseline
    assert case.target == pytest.approx(target)
    assert {"polyproc", baseline} | impls <= set(case.impls)


def test_items_pulled_ahead_is_bounded_by_four_per_worker(cases: list[Discovered]) -> None:
    (d,) = select(cases, filters=["items pulled ahead"])
    assert d.case.extra["absolute"] == "8"  # 4 x the bench's 2 workers
    assert not d.case.higher_is_better
