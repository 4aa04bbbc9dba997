"""``multiprocessing.connection``, for drop-in imports: Pipe, Connection, wait, Listener, Client."""

from ._connection import Connection as Connection
from ._connection import Pipe as Pipe
from ._connection import wait as wait
from ._listener import Client as Client
from ._listener import Listener as Listener
from .errors import AuthenticationError as AuthenticationError
from .errors import BufferTooShort as BufferTooShort

__all__ = ["AuthenticationError", "BufferTooShort", "Client", "Connection", "Listener", "Pipe",
           "wait"]
