"""``multiprocessing.managers``, for drop-in imports: BaseManager, SyncManager, proxies.

Re-exports only; the work is in ``polyproc._manager`` (see its package docstring).
"""

from ._manager.proxy import AutoProxy as AutoProxy
from ._manager.proxy import BaseProxy as BaseProxy
from ._manager.proxy import MakeProxyType as MakeProxyType
from ._manager.proxy import RebuildProxy as RebuildProxy
from ._manager.proxy import Token as Token
from ._manager.proxy import public_methods as public_methods
from ._manager.proxytypes import AcquirerProxy as AcquirerProxy
from ._manager.proxytypes import ArrayProxy as ArrayProxy
from ._manager.proxytypes import BarrierProxy as BarrierProxy
from ._manager.proxytypes import BaseListProxy as BaseListProxy
from ._manager.proxytypes import ConditionProxy as ConditionProxy
from ._manager.proxytypes import DictProxy as DictProxy
from ._manager.proxytypes import EventProxy as EventProxy
from ._manager.proxytypes import IteratorProxy as IteratorProxy
from ._manager.proxytypes import ListProxy as ListProxy
from ._manager.proxytypes import Namespace as Namespace
from ._manager.proxytypes import NamespaceProxy as NamespaceProxy
from ._manager.proxytypes import PoolProxy as PoolProxy
from ._manager.proxytypes import Value as Value
from ._manager.proxytypes import ValueProxy as ValueProxy
from ._manager.registry import BaseManager as BaseManager
from ._manager.server import Server as Server
from ._manager.shm import SharedMemoryManager as SharedMemoryManager
from ._manager.sync import SyncManager as SyncManager
from .errors import RemoteError as RemoteError

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseListProxy",
    "BaseManager",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "MakeProxyType",
    "Namespace",
    "NamespaceProxy",
    "PoolProxy",
    "RebuildProxy",
    "RemoteError",
    "Server",
    "SharedMemoryManager",
    "SyncManager",
    "Token",
    "Value",
    "ValueProxy",
    "public_methods",
]
