"""``polyproc.pool``: the public face of ``multiprocessing.pool`` (re-exports only).

The work is done in ``polyproc._pool`` (scheduler, engine, worker); see docs/pool.md.
"""

from __future__ import annotations

from ._pool.pool import (
    CLOSE as CLOSE,
)
from ._pool.pool import (
    RUN as RUN,
)
from ._pool.pool import (
    TERMINATE as TERMINATE,
)
from ._pool.pool import (
    ApplyResult as ApplyResult,
)
from ._pool.pool import (
    AsyncResult as AsyncResult,
)
from ._pool.pool import (
    IMapIterator as IMapIterator,
)
from ._pool.pool import (
    IMapUnorderedIterator as IMapUnorderedIterator,
)
from ._pool.pool import (
    MapResult as MapResult,
)
from ._pool.pool import (
    Pool as Pool,
)
from ._pool.pool import (
    ThreadPool as ThreadPool,
)
from .errors import MaybeEncodingError as MaybeEncodingError
from .errors import RemoteTraceback as RemoteTraceback
from .errors import TimeoutError as TimeoutError
from .errors import WorkerLostError as WorkerLostError

__all__ = [
    "Pool",
    "ThreadPool",
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "IMapUnorderedIterator",
    "TimeoutError",
    "WorkerLostError",
    "MaybeEncodingError",
    "RemoteTraceback",
    "RUN",
    "CLOSE",
    "TERMINATE",
]
