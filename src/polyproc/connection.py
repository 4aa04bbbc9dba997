"""``multiprocessing.connection``, for drop-in imports: Pipe, Connection, wait, Listener, Client.

Also the stdlib's ``families``, ``address_type``, ``arbitrary_address`` and the two
halves of the authentication handshake (``deliver_challenge``/``answer_challenge``,
polyproc's HMAC-SHA256 frames, see ``_protocol.auth``).
"""

from ._connection import Connection as Connection
from ._connection import Pipe as Pipe
from ._connection import wait as wait
from ._listener import CHALLENGE as CHALLENGE
from ._listener import FAILURE as FAILURE
from ._listener import WELCOME as WELCOME
from ._listener import Client as Client
from ._listener import Listener as Listener
from ._listener import address_type as address_type
from ._listener import answer_challenge as answer_challenge
from ._listener import arbitrary_address as arbitrary_address
from ._listener import deliver_challenge as deliver_challenge
from ._listener import families as families
from .errors import AuthenticationError as AuthenticationError
from .errors import BufferTooShort as BufferTooShort

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "Client",
    "Connection",
    "Listener",
    "Pipe",
    "wait",
]
