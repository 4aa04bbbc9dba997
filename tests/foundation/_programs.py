"""Run a user program in a fresh interpreter, as a user would, under a chosen start method.

Behaviours that belong to a whole program (its ``__main__`` imported by spawn and
forkserver children as ``__mp_main__``, what happens at interpreter exit, a parent
killed with SIGKILL) can only be seen from outside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: How the program is handed to Python: a script file, ``-m module``, ``-c source``, or stdin.
MODES = ("script", "module", "command", "stdin")


def env_for(method: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["POLYPROC_START_METHOD"] = method  # polyproc._context._Defaults reads it
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def command(
    source: str, mode: str, where: Path, name: str = "userprog"
) -> tuple[list[str], str | None]:
    """The argv that runs ``source`` in ``mode`` (files go in ``where``), and the stdin text."""
    source = textwrap.dedent(source)
    if mode in ("script", "module"):
        (where / f"{name}.py").write_text(source)
    if mode == "script":
        return [sys.executable, str(where / f"{name}.py")], None
    if mode == "module":
        return [sys.executable, "-m", name], None
    if mode == "command":
        return [sys.executable, "-c", source], None
    if mode == "stdin":
        return [sys.executable, "-"], source
    raise ValueError(mode)


def run(
    source: str,
    method: str,
    where: Path,
    *,
    mode: str = "script",
    timeout: float = 30,
    args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    argv, stdin = command(source, mode, where)
    return subprocess.run(
        [*argv, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_for(method),
        cwd=str(where),
    )


def popen(source: str, method: str, where: Path, *, mode: str = "script") -> subprocess.Popen[str]:
    argv, stdin = command(source, mode, where)
    assert stdin is None
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(method),
        cwd=str(where),
    )
