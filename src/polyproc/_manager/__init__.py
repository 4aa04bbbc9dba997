"""Managers: a server process that owns objects, and proxies that call them from anywhere.

::

    wire.py       the wire vocabulary (an Op enum), 5-byte frames, bounded reads, addresses
    gate.py       the listening socket; authenticates (and TLS-handshakes) newcomers off-thread
    loop.py       the serving loop: quick calls inline, calls that may block on a worker
    server.py     the object table, request decoding and dispatch; serve_in_child
    client.py     per-thread persistent connections; queued decrefs; fire-and-forget posts
    proxy.py      Token, BaseProxy, AutoProxy, MakeProxyType (no exec)
    proxytypes.py the stdlib's proxy types (list, dict, Namespace, Value, locks, Pool ...)
    registry.py   BaseManager: register(), start(), connect(), shutdown()
    sync.py       SyncManager: the types ``polyproc.Manager()`` offers

The public face is ``polyproc.managers``; docs/managers.md has the design and threat model.
"""
