"""The ``polyproc`` command: ``polyproc tour`` and ``polyproc bench``.

::

    polyproc tour [SECTION ...] [--list] [--start-method M]   a guided, live run (polyproc._tour)
    polyproc bench [--quick] [--json PATH] [--plot PATH.png]  the benchmark suite (polyproc._bench)
                   [--filter SUBSTR] [--repeat N] [--list]

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

    tour = sub.add_parser("tour", help="a guided, live run of the multiprocessing story",
                          description="Run the tour: every section, or the ones named.")
    tour.add_argument("sections", nargs="*", metavar="SECTION",
                      help="section names (see --list); default: all of them")
    tour.add_argument("--list", action="store_true", help="list the sections and exit")
    tour.add_argument("--start-method", choices=("fork", "spawn", "forkserver"),
                      help="start method for the whole tour (default: polyproc's default)")
    tour.add_argument("--section-timeout", type=float, default=60.0, metavar="S",
                      help="abort a section that runs longer than this (default 60)")

    bench = sub.add_parser("bench", help="benchmarks side by side with the stdlib",
                           description="Run bench/bench_*.py, each case in fresh interpreters.")
    from ._bench import add_arguments

    add_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polyproc`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tour":
        from ._tour import tour_main

        return tour_main(args.sections, list_only=args.list, start_method=args.start_method,
                         section_timeout=args.section_timeout)
    if args.command == "bench":
        from ._bench import bench_main

        return bench_main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
