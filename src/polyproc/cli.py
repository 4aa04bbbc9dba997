"""The ``polyproc`` command: ``polyproc tour``, ``polyproc bench`` and ``polyproc chaos``.

::

    polyproc tour [SECTION ...] [--list] [--start-method M]   a guided, live run (polyproc._tour)
    polyproc bench [--quick] [--json PATH] [--plot PATH.png]  the benchmark suite (polyproc._bench)
                   [--filter SUBSTR] [--repeat N] [--list]
    polyproc chaos [--quick] [--scenario S] [--start-method M]  the chaos suite (bench/chaos.py)

Both tools import their modules only when their subcommand runs, so ``polyproc
--help`` stays instant and a tour never pays for the bench runner.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyproc",
        description="polyproc: multiprocessing rebuilt -- a drop-in that is faster and cannot hang.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tour = sub.add_parser(
        "tour",
        help="a guided, live run of the multiprocessing story",
        description="Run the tour: every section, or the ones named.",
    )
    tour.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help="section names (see --list); default: all of them",
    )
    tour.add_argument("--list", action="store_true", help="list the sections and exit")
    tour.add_argument(
        "--start-method",
        choices=("fork", "spawn", "forkserver"),
        help="start method for the whole tour (default: polyproc's default)",
    )
    tour.add_argument(
        "--section-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="abort a section that runs longer than this (default 60)",
    )

    bench = sub.add_parser(
        "bench",
        help="benchmarks side by side with the stdlib",
        description="Run bench/bench_*.py, each case in fresh interpreters.",
    )
    from ._bench import add_arguments

    add_arguments(bench)
    # Only for --help: ``main`` hands everything after "chaos" to bench/chaos.py's own parser.
    sub.add_parser(
        "chaos",
        help="workers killed, parents killed, Ctrl+C, a soak, leaks, "
        "hostile bytes (bench/chaos.py)",
        add_help=False,
    )
    return parser


def chaos_main(argv: Sequence[str]) -> int:
    """``polyproc chaos``: run the checkout's ``bench/chaos.py`` (it is not part of the package)."""
    import importlib

    from ._bench import find_bench_dir

    bench_dir = find_bench_dir()
    if bench_dir is None or not (bench_dir / "chaos.py").is_file():
        print(
            "polyproc chaos: no bench/chaos.py found; run it from a polyproc checkout, "
            "or set POLYPROC_BENCH_DIR",
            file=sys.stderr,
        )
        return 2
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    chaos = importlib.import_module("chaos")
    return int(chaos.main(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polyproc`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"]:
        return chaos_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tour":
        from ._tour import tour_main

        return tour_main(
            args.sections,
            list_only=args.list,
            start_method=args.start_method,
            section_timeout=args.section_timeout,
        )
    if args.command == "bench":
        from ._bench import bench_main

        return bench_main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
