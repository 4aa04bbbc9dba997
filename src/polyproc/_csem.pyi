"""Stub for the optional C extension ``polyproc._csem`` (see ``_csem.c``)."""

from typing import Any

SEM_SIZE: int

class SemLock:
    """A process-shared ``sem_t`` in shared memory, driven from C."""

    def _attach(self, sem_addr: int, owner_addr: int, maxvalue: int, /) -> None: ...
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> None: ...
    def get_value(self) -> int: ...

class LockedAttr:
    """``inst.<attr>`` is ``inst._obj.<name>``, read and written under ``inst._lock``."""

    def __init__(self, name: str, /) -> None: ...
    def __get__(self, inst: object, owner: type | None = None) -> object: ...
    def __set__(self, inst: object, value: object) -> None: ...

def prctl(option: int, arg: int | bytes, /) -> None:
    """``prctl(2)`` with one argument (PR_SET_PDEATHSIG, PR_SET_NAME), no ctypes."""

def fork_template(
    fd: int,
    other_end: int,
    parent_pid: int,
    firsts: tuple[tuple[int, int, tuple[int, ...]], ...],
    /,
) -> tuple[int, Any]:
    """Fork a pool's template, parked in C until ``fd`` has data, and its first workers
    (one per ``(status_w, pid_w, close_fds)``): (0, template pid) here; in the template
    woken, (1, ((pid, k), ...)) for the first workers still running; (2, k) in first
    worker k."""

def run_scalars(
    fn: object,
    star: bool,
    items: list[object],
    j: int,
    stop: int,
    journal: object,
    tags_at: int,
    vals_at: int,
    started_word: int,
    unset: int,
    /,
) -> tuple[int, object, bool]:
    """The pool journal's commit loop (``Journal._span``): scalars committed in C."""
