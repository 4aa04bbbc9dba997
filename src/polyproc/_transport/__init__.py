"""The transport layer: every byte read or written, and every fd passed, happens here.

Services above (``_connection``, ``_listener``, ``_queues``, ``_pool``, ``_manager``)
speak frames (``_protocol``) over the objects this package gives them; a test
(tests/foundation/test_raw_io.py) fails if socket or fd I/O appears anywhere else
but ``_launch`` (which starts interpreters before any of this exists). One module
per concept:

* ``stream``: ``Stream`` and its kinds (pipe, Unix socket with fds, TCP/TLS socket):
  blocking ``read_into``/``write_all``, non-blocking ``write_some``; plain-fd reads
  and writes (a Queue's pipe, a memfd being filled).
* ``fds``: SCM_RIGHTS, the one path by which fds cross a socket.
* ``outbox``: ``Outbox``, the one non-blocking writer (pool channels, manager loop
  and gate): queue parts and fds, flush what fits, "wants write".
* ``sockets``: making sockets and pipes, listening, connecting, TLS probes.
* ``wake``: ``Wake``, the wake-up pipe of every selector loop; ``readable``, waiting
  for fds with a deadline.
* ``spin``: ``Spin``, the adaptive busy-poll before a sleep (the manager's loop, a pool
  worker after answering, a caller waiting for its answer).
* ``memory``: ``memory_pair()``, an in-process transport with the same interface, so
  the manager loop and a pool channel can be tested with no process.
* ``buffers``: fresh ``bytes`` a read fills in place.

``OSError`` from the kernel becomes the error tree's ``BrokenResourceError`` (the
peer went away) or ``ClosedResourceError`` (we closed it) here; a read from a peer
that went away is end of stream, as a pipe's. ``TimeoutError`` (a deadline the
caller set) and "try again" (``BlockingIOError``, TLS's wants) pass through as is.
"""

from __future__ import annotations

from .fds import MAX_FDS
from .outbox import Outbox
from .sockets import (
    accept,
    big_pipe,
    buffered_socketpair,
    connect_socket,
    family_of,
    is_tls,
    listen_socket,
    new_socket,
    socketpair,
    tls_pending,
    tune,
    want_errors,
    wrap_fd,
)
from .stream import (
    FdStream,
    SocketStream,
    Stream,
    UnixStream,
    read_exact_fd,
    stream_for_socket,
    write_all_fd,
    write_some_fd,
)
from .wake import Wake, readable

__all__ = [
    "MAX_FDS",
    "Outbox",
    "readable",
    "Wake",
    "Stream",
    "FdStream",
    "UnixStream",
    "SocketStream",
    "stream_for_socket",
    "read_exact_fd",
    "write_all_fd",
    "write_some_fd",
    "accept",
    "big_pipe",
    "buffered_socketpair",
    "connect_socket",
    "family_of",
    "is_tls",
    "listen_socket",
    "new_socket",
    "socketpair",
    "tls_pending",
    "tune",
    "want_errors",
    "wrap_fd",
]
