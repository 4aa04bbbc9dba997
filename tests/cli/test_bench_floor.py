"""The ``floor`` implementation of a bench case (issue #14): the machine beside the libraries."""

from __future__ import annotations

from polyproc import _bench
from polyproc._bench import Case, CaseResult


def _case(**kw: object) -> Case:
    return Case(
        "x",
        "us",
        {"polyproc": lambda: 1.0, "stdlib": lambda: 2.0, "floor": lambda: 0.5},
        higher_is_better=False,
        **kw,
    )  # type: ignore[arg-type]


def test_floor_always_runs_and_is_not_a_package() -> None:
    assert _bench.impl_available("floor")


def test_floor_shows_beside_the_libraries_in_table_and_markdown() -> None:
    r = CaseResult("bench_x", _case(), samples={"polyproc": [1.0], "stdlib": [2.0], "floor": [0.5]})
    table = _bench.format_table([r])
    assert "floor" in table.splitlines()[0] and " 0.5 " in table.splitlines()[2]
    md = _bench.format_markdown([r])
    assert (
        md.splitlines()[0] == "| case | unit | polyproc | stdlib | floor | ratio | target | met |"
    )
    assert "| 1.00 | 2.00 | 0.5 | 2.00x |" in md


def test_a_case_against_the_floor_has_its_ratio_and_verdict() -> None:
    case = Case(
        "rt",
        "us",
        {"polyproc": lambda: 1.0, "floor": lambda: 1.0},
        baseline="floor",
        higher_is_better=False,
        target=1 / 1.2,
    )
    ok = CaseResult("bench_x", case, samples={"polyproc": [11.0], "floor": [10.0]})
    slow = CaseResult("bench_x", case, samples={"polyproc": [13.0], "floor": [10.0]})
    assert ok.met is True and slow.met is False


def test_markdown_without_floors_keeps_its_columns() -> None:
    case = Case("y", "ops/s", {"polyproc": lambda: 1.0, "stdlib": lambda: 1.0})
    r = CaseResult("bench_x", case, samples={"polyproc": [2.0], "stdlib": [1.0]})
    assert _bench.format_markdown([r]).splitlines()[0] == (
        "| case | unit | polyproc | stdlib | ratio | target | met |"
    )
