"""The child's side of a launch: become the process the parent described.

Every start method ends here. ``prepare`` makes a fresh interpreter look like its
parent (sys.path, cwd, argv, the parent's main module imported as
``__mp_main__``); ``die_with_parent`` ties the child's life to its parent's;
the entry the parent sent (``LaunchSpec.entry``) runs the work and returns the exit code.

Kept light: a spawned child imports this before anything else, and every
millisecond here is a millisecond of every ``spawn`` start.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "preparation_data",
    "prepare",
    "die_with_parent",
    "set_comm",
    "open_stdio",
    "stdio_to_hand",
    "begin",
    "before_exit",
    "finish",
    "check_not_bootstrapping",
    "BOOTSTRAP_ERROR",
    "REFUSED_EXIT",
    "is_refusal",
    "log_spec",
    "install_log_forwarding",
]

#: The stdlib's words (multiprocessing/spawn.py), so searches for the message find the fix.
BOOTSTRAP_ERROR = """
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase.

        This probably means that you are not using fork to start your
        child processes and you have forgotten to use the proper idiom
        in the main module:

            if __name__ == '__main__':
                freeze_support()
                ...

        The "freeze_support()" line can be omitted if the program
        is not going to be frozen to produce an executable.

        To fix this issue, refer to the "Safe importing of main module"
        section in https://docs.python.org/3/library/multiprocessing.html
        """


#: A spawned pool worker's exit code when it refused to start for that reason (its
#: parent's pool then raises the error once, itself: see ``spawn.child_main``).
REFUSED_EXIT = 78  # EX_CONFIG: the program, not the worker, must change


def is_refusal(exc: BaseException | None) -> bool:
    """Is ``exc`` the "bootstrapping phase" refusal (raised as is, never wrapped)?"""
    return isinstance(exc, RuntimeError) and exc.args == (BOOTSTRAP_ERROR,)


class _Boot:
    """Whether this process is importing its parent's main module right now (one flag)."""

    importing_main = False


def check_not_bootstrapping() -> None:
    """Refuse to start a child while a spawned child imports its parent's main module.

    A main module without ``if __name__ == "__main__":`` would otherwise start a pool
    in every child, whose children start pools...: a process explosion.
    """
    if _Boot.importing_main:
        raise RuntimeError(BOOTSTRAP_ERROR)


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


@functools.cache
def _prctl() -> Callable[[int, int | bytes], Any]:
    """``prctl(option, arg)``: the C extension's (``_csem.prctl``), else ctypes' (about
    2 ms to import, in every child that did not inherit it: issue 11's start-up cost)."""
    try:
        from .. import _csem

        return _csem.prctl
    except (ImportError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return lambda option, arg: libc.prctl(option, arg, 0, 0, 0)


def set_comm(name: str) -> None:
    """Show ``name`` (15 bytes of it) as this process's name in ps, top and psutil."""
    try:
        _prctl()(_PR_SET_NAME, name.encode()[:15])
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when the parent dies; then check it has not already.

    PDEATHSIG follows the *thread* that created us, so launchers create children
    from the main thread or from the long-lived launcher thread (see ``_launch``).
    """
    try:
        _prctl()(_PR_SET_PDEATHSIG, signal.SIGKILL)
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


@contextlib.contextmanager
def stdio_to_hand() -> Iterator[list[int]]:
    """Our fds 0-2 to send a child (``open_stdio``), /dev/null for one that is closed, which
    is closed again after: the forkserver's requests and a template's spares both send them."""
    fds = [os.open(os.devnull, os.O_RDWR) if fd is None else fd for fd in open_stdio()]
    try:
        yield fds
    finally:
        for fd, std in zip(fds, (0, 1, 2), strict=True):
            if fd != std:
                os.close(fd)


def log_spec() -> dict[str, Any] | None:
    """What a spawn/forkserver child needs to send its log records to our handlers.

    None (and ``logging`` left unimported) when this process has not imported logging.
    """
    if "logging" not in sys.modules:
        return None
    from .logforward import spec

    return spec()


def install_log_forwarding(spec: dict[str, Any] | None) -> None:
    """Child side of ``log_spec`` (after the main module ran: its own config wins)."""
    if spec is not None:
        from .logforward import install

        install(spec)


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
    path = getattr(main, "__file__", None) or getattr(
        getattr(main, "__loader__", None), "path", None
    )
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
    _Boot.importing_main = True
    try:
        if "main_module" in data:
            _import_main(data["main_module"], None)
        elif "main_path" in data:
            _import_main(None, data["main_path"])
    finally:
        _Boot.importing_main = False


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
            get_code = getattr(spec.loader, "get_code", None) if spec is not None else None
            if spec is None or get_code is None:
                raise ImportError(f"cannot find the main module {name!r}")
            code = get_code(name)
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


def begin(start_method: str) -> None:
    """A child's first steps as its Process, before ``run()`` (the stdlib's ``_bootstrap``).

    The child's default start method becomes the one it was started with (so
    ``get_start_method()`` there answers it, and its own children use it);
    ``threading.main_thread().native_id`` is refreshed (after ``fork`` it still holds
    the parent's thread id), and the ``util.register_after_fork`` hooks run.
    """
    import threading

    from .._context import set_start_method

    set_start_method(start_method, force=True)

    main = threading.main_thread()
    main._set_native_id()  # type: ignore[attr-defined]
    util = sys.modules.get("polyproc.util")
    if util is not None:
        util._run_after_forkers()


def before_exit() -> None:
    """After ``run()``: ``util.Finalize`` callbacks with an exit priority run, as at exit."""
    util = sys.modules.get("polyproc.util")
    if util is not None:
        util._exit_function()


def finish() -> None:
    """The last step of a child: wait for its non-daemon threads, as the stdlib does.

    ``fork`` and forkserver children leave by ``os._exit``, which would cut those
    threads off mid-work; a thread the user started and did not mark daemon is
    joined first (``threading._shutdown``, what the interpreter itself runs at exit).
    """
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
