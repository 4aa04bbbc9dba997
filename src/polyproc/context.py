"""``multiprocessing.context``, for drop-in imports: the Context and the Process classes."""

from ._context import Context as BaseContext
from ._context import Context as Context
from ._context import default_context as default_context
from ._context import get_context as get_context
from ._process import ForkProcess as ForkProcess
from ._process import ForkServerProcess as ForkServerProcess
from ._process import Process as Process
from ._process import SpawnProcess as SpawnProcess
from .errors import AuthenticationError as AuthenticationError
from .errors import BufferTooShort as BufferTooShort
from .errors import ProcessError as ProcessError
from .errors import TimeoutError as TimeoutError  # noqa: A004

__all__ = ["AuthenticationError", "BaseContext", "BufferTooShort", "Context", "ForkProcess",
           "ForkServerProcess", "Process", "ProcessError", "SpawnProcess", "TimeoutError",
           "default_context", "get_context"]
