"""Stub for the optional C extension ``polyproc._csem`` (see ``_csem.c``)."""

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
    fd: int, other_end: int, parent_pid: int, first: tuple[int, int, tuple[int, ...]] | None, /
) -> tuple[int, int]:
    """Fork a pool's template, parked in C until ``fd`` has data, and maybe its first
    worker: (0, template pid) here, (1, first worker's pid or 0) in the template woken,
    (2, 0) in the first worker."""

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
