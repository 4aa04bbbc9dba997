"""``polyproc tour``: the multiprocessing story, run live, one section at a time.

::

    tour_main(names) ─► for each Section in SECTIONS (a table, in story order):
        print title and intro
        print the source of the section's code (exactly what runs next)
        arm a watchdog (faulthandler: dump every thread and exit if the section hangs)
        demo()  ─────────► runs in this process; its children (Process, Pool workers,
                           manager servers) log to stdout as "<processName>: message"
        print ok / skipped (reason) / FAILED (traceback) ─► next section
    summary; exit status 0 only when no section failed

The demos live in ``basics.py`` (the tutorial's programs), ``services.py``
(managers), ``executor.py`` and ``beyond.py`` (what polyproc adds). They are
written against the public API (``import polyproc as mp``) exactly as a user would
write them, and their helpers are module-level functions so every start method
can run them. A demo returns None when it ran, or a string saying why it was
skipped (an optional dependency such as NumPy is missing).
"""

from __future__ import annotations

import ast
import faulthandler
import importlib
import inspect
import logging
import os
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Section", "SECTIONS", "tour_main", "tour_logger", "run_section", "listing"]

_RULE = "─" * 78


@dataclass(frozen=True)
class Section:
    """One stop of the tour: what it is about, which code it shows, which demo it runs."""

    name: str
    title: str
    intro: str
    module: str  # under polyproc._tour
    demo: str  # the function that runs; shown last
    shown: tuple[str, ...] = ()  # module-level helpers whose source is shown before the demo


SECTIONS: tuple[Section, ...] = (
    Section(
        "process",
        "Process and process names",
        """
        Two processes run a function each; the second is given a name. Logging's
        %(processName)s shows who is talking, with nothing to set up in the child.""",
        "basics",
        "demo_process",
        ("worker1", "worker2"),
    ),
    Section(
        "pool",
        "Pool: apply, apply_async, map, map_async, imap, get(timeout)",
        """
        apply_async returns at once, so "executed" is logged before the workers
        finish; get(timeout=...) raises TimeoutError when the result is late; apply
        and map block; map_async does not; imap yields results in order.""",
        "basics",
        "demo_pool",
        ("slow_double",),
    ),
    Section(
        "sharing",
        "Threads share a dict, processes do not",
        """
        Threads see one dict, so both increments land. Each process gets its own
        copy of the dict: each child sees {'x': 1}, and the parent still has {'x': 0}.""",
        "basics",
        "demo_sharing",
        ("add_one",),
    ),
    Section(
        "pipe",
        "Pipe",
        """
        A Pipe is two connected ends; a child sends a Python object, the parent
        receives it.""",
        "basics",
        "demo_pipe",
        ("send_test",),
    ),
    Section(
        "value-array",
        "Value and Array: memory shared between processes",
        """
        A Value and an Array live in shared memory: both children increment the
        same number and double the same array, so the parent sees 2.0 and
        [4, 8, 12, 16, 20].""",
        "basics",
        "demo_value_array",
        ("bump_and_double",),
    ),
    Section(
        "manager",
        "Manager: shared list, dict and Namespace",
        """
        A Manager runs a server process that owns the objects; the children change
        them through proxies. Two reverses give back [1, 2, 3].""",
        "services",
        "demo_manager",
        ("change_all",),
    ),
    Section(
        "basemanager",
        "BaseManager: your own type, and a remote server",
        """
        Register a class on a BaseManager to share instances of it. Then the classic
        queue server: a manager listening on TCP 127.0.0.1 with an authkey, fed by a
        producer process and read by the parent; a client with the wrong key is refused.""",
        "services",
        "demo_basemanager",
        (
            "Counter",
            "CounterManager",
            "bump",
            "QueueServer",
            "QueueClient",
            "serve_queue",
            "remote_producer",
        ),
    ),
    Section(
        "executor",
        "ProcessPoolExecutor (concurrent.futures)",
        """
        The same engine behind the concurrent.futures API: submit returns a real
        concurrent.futures.Future, so as_completed and asyncio work with it.""",
        "executor",
        "demo_executor",
        ("square", "slow_square"),
    ),
    Section(
        "worker-lost",
        "Beyond: a worker killed in the middle of a map",
        """
        One task kills its own worker with SIGKILL. Only that task fails, with a
        WorkerLostError that says which task it was; the pool replaces the worker
        and every other task completes. (The stdlib's Pool hangs here forever.)""",
        "beyond",
        "demo_worker_lost",
        ("die_on_3", "square"),
    ),
    Section(
        "timeout",
        "Beyond: a task timed out",
        """
        timeout= on a task: when it runs late its worker is killed and replaced, the
        task raises TimeoutError, and its neighbours are spared.""",
        "beyond",
        "demo_timeout",
        ("sleepy", "square"),
    ),
    Section(
        "lazy-imap",
        "Beyond: a lazy imap over an endless generator",
        """
        imap pulls input only as workers free up, so an endless generator is fine:
        take ten results and stop. (The stdlib's imap tries to read all of it first.)""",
        "beyond",
        "demo_lazy_imap",
        ("square",),
    ),
    Section(
        "shared-array",
        "Beyond: a zero-copy NumPy array",
        """
        shared_array(shape, dtype) is an ndarray in shared memory: every process
        maps the same pages, so children write into it and nothing is copied.
        Needs NumPy (pip install 'polyproc[numpy]'); skipped without it.""",
        "beyond",
        "demo_shared_array",
        ("fill_row",),
    ),
    Section(
        "progress",
        "Beyond: a progress bar",
        """
        progress=True on map/imap shows a tqdm bar (on stderr) that advances as
        results arrive.""",
        "beyond",
        "demo_progress",
        ("slow_square",),
    ),
    Section(
        "scale-out",
        "Beyond: the same imap on a Dask (or Ray) cluster",
        """
        backend= moves a pool onto a cluster engine with the calls unchanged; with no
        Dask client around, backend="dask" starts a LocalCluster for the pool and
        closes it. Needs Dask (pip install 'polyproc[dask]'); skipped without it.""",
        "scaleout",
        "demo_scale_out",
        ("square",),
    ),
)


def tour_logger() -> logging.Logger:
    """The logger the tour's children and parent write through: "<processName>: message".

    Set up once per process at import of a section module, so a spawned child that
    imports the module to find its target is set up too; it writes to stdout and
    never touches the root logger (the user's own logging is left alone).
    """
    log = logging.getLogger("polyproc.tour")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(processName)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def _source(obj: object) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))  # type: ignore[arg-type]
    except (OSError, TypeError):  # source not shipped (a zipapp): say so rather than fail
        return f"# (source of {getattr(obj, '__name__', obj)!r} not available)\n"


#: What a copied listing does instead of ``log = tour_logger()``: the same lines on stdout.
_LOGGING = (
    "logging.basicConfig(stream=sys.stdout, level=logging.INFO,",
    "                    format='%(processName)s: %(message)s')  # '<processName>: message'",
    "log = logging.getLogger('polyproc.tour')",
)


def listing(section: Section) -> str:
    """The section's code as a whole script: what the tour shows, runnable as shown.

    From the section's module, in its order: the imports, the module-level
    statements that set up what is shown (constants it uses, ``register`` calls on
    its classes), the shown helpers and the demo; then a main guard that runs the
    demo. The tour's logger becomes ``logging.basicConfig`` on stdout, so a copy
    prints the same lines the tour does.
    """
    mod = importlib.import_module(f"{__name__}.{section.module}")
    try:
        source = inspect.getsource(mod)
    except (OSError, TypeError):
        lines = [_source(getattr(mod, n)).rstrip() for n in (*section.shown, section.demo)]
        return "import polyproc as mp\n\n" + "\n\n".join(lines) + "\n"
    tree = ast.parse(source)
    src_lines = source.splitlines()
    shown = {*section.shown, section.demo}
    used = {
        n.id
        for node in tree.body
        if getattr(node, "name", None) in shown
        for n in ast.walk(node)
        if isinstance(n, ast.Name)
    }
    head: list[str] = ["import logging", "import sys"]
    body: list[str] = []
    for node in tree.body:
        text = "\n".join(src_lines[node.lineno - 1 : node.end_lineno])  # with its comments
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.level:  # tour plumbing
                continue
            if text not in head:
                head.append(text)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if node.name in shown:
                body.append(_source(getattr(mod, node.name)).rstrip())
        elif isinstance(node, ast.Assign):
            targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if targets == {"log"}:
                body.append("\n".join(_LOGGING))
            elif targets & used:
                body.append(text)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            base = node.value.func
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in shown:  # Manager.register(...)
                body.append(text)
    if head[2:3] == ["from __future__ import annotations"]:
        head.insert(0, head.pop(2))  # it must come first
    guard = f'if __name__ == "__main__":\n    {section.demo}()'
    return "\n".join(head) + "\n\n" + "\n\n".join([*body, guard]) + "\n"


def _print_code(section: Section, out: TextIO) -> None:
    for line in listing(section).rstrip().splitlines():
        print(f"  │ {line}" if line else "  │", file=out)
    print("  │", file=out)


def run_section(
    section: Section, *, out: TextIO | None = None, timeout: float = 60.0, number: str = ""
) -> str:
    """Show and run one section: returns "ok", "skipped" or "failed"."""
    out = out or sys.stdout
    print(f"\n{_RULE}\n{number}{section.title}   [polyproc tour {section.name}]\n{_RULE}", file=out)
    print(textwrap.dedent(section.intro).strip() + "\n", file=out)
    try:
        mod = importlib.import_module(f"{__name__}.{section.module}")
        demo: Callable[[], str | None] = getattr(mod, section.demo)
        _print_code(section, out)
    except Exception:
        print("FAILED to load the section:", file=out)
        traceback.print_exc(file=out)
        return "failed"
    print("  running ...", file=out)
    out.flush()
    t0 = time.monotonic()
    # Impossible to hang: if the demo outlives its time, print where every thread is and
    # exit; children die with us (PR_SET_PDEATHSIG).
    faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__ or sys.stderr)
    try:
        skipped = demo()
    except Exception:
        faulthandler.cancel_dump_traceback_later()
        print(f"FAILED after {time.monotonic() - t0:.1f} s:", file=out)
        traceback.print_exc(file=out)
        return "failed"
    faulthandler.cancel_dump_traceback_later()
    if skipped:
        print(f"  skipped: {skipped}", file=out)
        return "skipped"
    print(f"  ✓ {section.name} ran in {time.monotonic() - t0:.1f} s", file=out)
    return "ok"


def _set_start_method(method: str) -> None:
    # The environment carries it into every process the tour starts, and into polyproc's
    # default for this process whatever its import order.
    os.environ["POLYPROC_START_METHOD"] = method
    import polyproc

    setter = getattr(polyproc, "set_start_method", None)
    if setter is not None:
        setter(method, force=True)


def tour_main(
    names: Sequence[str] = (),
    *,
    list_only: bool = False,
    start_method: str | None = None,
    section_timeout: float = 60.0,
    out: TextIO | None = None,
) -> int:
    """``polyproc tour``: 0 when every section ran (or was skipped), 1 if any failed, 2 on bad usage."""
    out = out or sys.stdout
    by_name = {s.name: s for s in SECTIONS}
    if list_only:
        for s in SECTIONS:
            print(f"{s.name:<14} {s.title}", file=out)
        return 0
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(
            f"polyproc tour: no section {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(by_name)}",
            file=sys.stderr,
        )
        return 2
    chosen = [by_name[n] for n in names] if names else list(SECTIONS)
    reconfigure = getattr(out, "reconfigure", None)
    if reconfigure is not None:
        # Children write to the same stdout: flush each line so the story stays in order
        # (and a forked child never inherits half a buffer to print twice).
        reconfigure(line_buffering=True)
    if start_method:
        _set_start_method(start_method)
    import polyproc

    # polyproc's own name ("auto"), not the stdlib name get_start_method() answers.
    method = polyproc.get_context().start_method
    print(f"polyproc tour: {len(chosen)} section(s), start method {method!r}", file=out)
    t0 = time.monotonic()
    outcome: dict[str, str] = {}
    for n, s in enumerate(chosen, 1):
        outcome[s.name] = run_section(
            s, out=out, timeout=section_timeout, number=f"{n}/{len(chosen)}  "
        )
    failed = [n for n, o in outcome.items() if o == "failed"]
    skipped = [n for n, o in outcome.items() if o == "skipped"]
    ok = len(outcome) - len(failed) - len(skipped)
    print(f"\n{_RULE}\ntour done in {time.monotonic() - t0:.1f} s: {ok} ran", file=out, end="")
    print(f", {len(skipped)} skipped ({', '.join(skipped)})" if skipped else "", file=out, end="")
    print(f", {len(failed)} FAILED ({', '.join(failed)})" if failed else "", file=out)
    return 1 if failed else 0
