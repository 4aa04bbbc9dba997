"""Managers: a server process that owns objects, and proxies that call them from anywhere.

::

    messages.py   the wire vocabulary: an Op enum and one record per message
    wire.py       frames on a socket (length, op, body), bounded reads; connect() for clients
    gate.py       the listening socket; authenticates (and TLS-handshakes) newcomers off-thread
    server.py     the object table and one thread per authenticated connection
    client.py     per-address, per-thread persistent connections; batched decrefs
    proxy.py      Token, BaseProxy, AutoProxy, MakeProxyType (no exec)
    proxytypes.py the stdlib's proxy types (list, dict, Namespace, Value, locks, Pool ...)
    registry.py   BaseManager: register(), start(), connect(), shutdown()
    sync.py       SyncManager: the types ``polyproc.Manager()`` offers
"""
