"""``multiprocessing.process``, for drop-in imports: re-exports from ``polyproc._process``."""

from ._process import BaseProcess as BaseProcess
from ._process import ParentProcess as ParentProcess
from ._process import Process as Process
from ._process import active_children as active_children
from ._process import current_process as current_process
from ._process import parent_process as parent_process

__all__ = [
    "BaseProcess",
    "ParentProcess",
    "Process",
    "active_children",
    "current_process",
    "parent_process",
]
