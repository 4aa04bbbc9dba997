"""The public API is typed: ``help()`` shows real signatures, mypy checks user programs.

The stdlib's stubs (typeshed) let mypy catch ``pool.mapp(...)`` and infer
``pool.map(int, ["1"])`` as ``list[int]``; polyproc, a drop-in, must do no worse.
``test_mypy_on_a_user_program`` runs mypy (``mypy.api.run``) on a small program
that uses ``reveal_type`` and reads its report: it takes a few seconds (mypy
analyses polyproc and the stdlib stubs it touches), hence the wider timeout.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest

import polyproc
import polyproc.context
import polyproc.pool

SRC = Path(__file__).resolve().parents[2] / "src"


def test_factories_show_real_signatures() -> None:
    pool = inspect.signature(polyproc.Pool)
    assert list(pool.parameters)[:4] == ["processes", "initializer", "initargs", "maxtasksperchild"]
    assert "timeout" in pool.parameters and "max_memory_per_child" in pool.parameters
    assert "options" not in pool.parameters  # no ``**options: Any`` hiding the API
    assert "Pool" in str(pool.return_annotation)
    assert "processes" in (polyproc.Pool.__doc__ or "")
    assert list(inspect.signature(polyproc.Barrier).parameters) == ["parties", "action", "timeout"]
    assert "Lock" in str(inspect.signature(polyproc.Lock).return_annotation)
    assert "Queue" in str(inspect.signature(polyproc.Queue).return_annotation)
    ctx = polyproc.get_context("spawn")
    assert list(inspect.signature(ctx.Pool).parameters) == list(pool.parameters)


def test_pool_factories_take_what_the_pool_takes() -> None:
    """``polyproc.Pool`` and ``ctx.Pool`` spell out Pool's parameters: none may be missing."""
    real = inspect.signature(polyproc.pool.Pool.__init__).parameters
    wanted = [name for name in real if name not in ("self", "context")]
    for factory in (polyproc.Pool, polyproc.context.Context.Pool):
        params = inspect.signature(factory).parameters
        got = [name for name in params if name != "self"]
        assert got == wanted, factory
        for name in got:
            assert params[name].default == real[name].default, (factory, name)


def test_help_shows_the_signature() -> None:
    import pydoc

    text = pydoc.render_doc(polyproc.Pool, renderer=pydoc.plaintext)
    assert "processes" in text and "maxtasksperchild" in text and "-> " in text


_PROGRAM = """
    import polyproc

    def f(x: int) -> str:
        return str(x)

    if __name__ == "__main__":
        with polyproc.Pool(2) as pool:
            reveal_type(pool.map(int, ["1"]))
            reveal_type(pool.apply(f, (1,)))
            reveal_type(pool.imap(f, [1, 2]))
            reveal_type(pool.map_async(f, [1]).get())
            reveal_type(polyproc.get_context("spawn").Pool(2))
            reveal_type(polyproc.Queue())
            reveal_type(polyproc.Lock())
            reveal_type(polyproc.Pipe())
            reveal_type(polyproc.Manager())
            pool.mapp(f, [1])
"""


@pytest.mark.timeout(120)
def test_mypy_on_a_user_program(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(_PROGRAM))
    # The program's own directory as the config: the project's (strict, src/polyproc
    # only) must not apply; a cache dir of its own keeps runs independent.
    config = tmp_path / "mypy.ini"
    # ``mypy_path``: this checkout's polyproc, not whichever one is installed.
    config.write_text(f"[mypy]\nignore_missing_imports = True\nmypy_path = {SRC}\n")
    stdout, stderr, _status = api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            str(program),
        ]
    )
    out = stdout + stderr
    # Older mypy versions spell builtins in full ("builtins.list[builtins.int]").
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "([^"]+)"', out)]
    assert revealed[:4] == [
        "list[int]",
        "str",
        "polyproc._pool.stream.IMapIterator[str]",
        "list[str]",
    ], out
    assert revealed[4] == "polyproc._pool.pool.Pool", out
    assert revealed[5] == "polyproc._queues.Queue", out
    assert revealed[6] == "polyproc._sync.locks.Lock", out
    assert revealed[7].startswith("tuple[polyproc._connection.Connection"), out
    assert revealed[8] == "polyproc._manager.sync.SyncManager", out
    assert re.search(r'"Pool" has no attribute "mapp"', out), out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1, out  # the typo, and nothing else
