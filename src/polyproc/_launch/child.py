"""The child's side of a launch: become the process the parent described.

Every start method ends here. ``prepare`` makes a fresh interpreter look like its
parent (sys.path, cwd, argv, the parent's main module imported as
``__mp_main__``); ``die_with_parent`` ties the child's life to its parent's;
``run_process`` runs the Process object and turns its end into an exit code.

Kept light: a spawned child imports this before anything else, and every
millisecond here is a millisecond of every ``spawn`` start.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import types
from typing import Any

__all__ = ["preparation_data", "prepare", "die_with_parent", "set_comm", "open_stdio", "spawn_main"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def set_comm(name: str) -> None:
    """Show ``name`` (15 bytes of it) as this process's name in ps, top and psutil."""
    try:
        _libc().prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when the parent dies; then check it has not already.

    PDEATHSIG follows the *thread* that created us, so launchers create children
    from the main thread or from the long-lived launcher thread (see ``_launch``).
    """
    try:
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent_pid:  # it died between our birth and the prctl
        os._exit(70)


def open_stdio() -> list[int | None]:
    """Our fds 0-2 as a new child should inherit them now (None for one that is closed).

    Both spawn (a spare booted earlier) and forkserver (a template started earlier)
    hand the child these, so it writes where we write *now*, after any redirect.
    """
    out: list[int | None] = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            out.append(None)
        else:
            out.append(fd)
    return out


def preparation_data() -> dict[str, Any]:
    """What a fresh interpreter needs to resemble this one (parent side)."""
    main = sys.modules.get("__main__")
    data: dict[str, Any] = {
        "sys_path": list(sys.path),
        "cwd": os.getcwd(),
        "argv": list(sys.argv),
    }
    spec = getattr(main, "__spec__", None)
    # CPython deletes ``__main__.__file__`` once the script has run (pymain), but a pool
    # may still start workers then (an executor finishing its work at exit): ask the loader.
    path = getattr(main, "__file__", None) or getattr(getattr(main, "__loader__", None), "path", None)
    if spec is not None and spec.name not in ("__main__", "__mp_main__"):
        data["main_module"] = spec.name
    elif path and not path.endswith(("ipython", "<stdin>")) and os.path.exists(path):
        data["main_path"] = os.path.abspath(path)
    return data


def prepare(data: dict[str, Any]) -> None:
    """Child side of ``preparation_data``: paths, cwd, argv, then the main module."""
    sys.path[:] = data["sys_path"]
    try:
        os.chdir(data["cwd"])
    except OSError:
        pass
    sys.argv[:] = data["argv"]
    if "main_module" in data:
        _import_main(data["main_module"], None)
    elif "main_path" in data:
        _import_main(None, data["main_path"])


def _import_main(name: str | None, path: str | None) -> None:
    """Run the parent's main module as ``__mp_main__`` and alias it as ``__main__``.

    Its ``if __name__ == '__main__':`` block does not run, but module-level setup
    (``logging.basicConfig``, imports, definitions) does, as in the stdlib.
    """
    current = sys.modules["__main__"]
    module = types.ModuleType("__mp_main__")
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__mp_main__"] = sys.modules["__main__"] = module
    try:
        if name is not None:
            import importlib.util

            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot find the main module {name!r}")
            code = spec.loader.get_code(name)  # type: ignore[attr-defined]
            module.__spec__ = spec
            module.__file__ = spec.origin
            module.__package__ = spec.parent
        else:
            assert path is not None
            with open(path, "rb") as f:
                code = compile(f.read(), path, "exec")
            module.__file__ = path
        # Executed in the module's own namespace, so functions defined there see
        # the module as their globals and pickle by reference as __main__.<name>.
        exec(code, module.__dict__)
    except BaseException:
        sys.modules["__main__"] = current
        raise


def spawn_main() -> None:
    """Entry point of a spawned interpreter: the bootstrap socket is fd 3."""
    from .spawn import child_main

    child_main(3)
