"""One wire stack: raw socket and pipe I/O only in ``_transport`` (and ``_launch``).

Every module under ``src/polyproc`` is parsed (never imported) and its calls checked:
outside ``polyproc/_transport/`` and ``polyproc/_launch/`` none may

* make a socket or pipe: ``socket.socket``, ``socket.socketpair``, ``socket.fromfd``,
  ``socket.create_connection``/``create_server``, ``os.pipe``/``os.pipe2``;
* move bytes through an fd: ``os.read``, ``os.write``, ``os.readv``, ``os.writev``,
  ``os.sendfile``, ``os.splice``, ``os.eventfd_read``/``eventfd_write``;
* pass fds: ``socket.send_fds``/``recv_fds``, ``.sendmsg``/``.recvmsg``/``.recvmsg_into``;
* call a socket method that only sockets have: ``.sendall``, ``.recv_into``,
  ``.recvfrom``, ``.recvfrom_into``, ``.sendto``;
* call ``.send``/``.recv`` on something named like a socket (``sock``, ``self._sock``,
  ``conn.sock``, ``listener``): a ``Connection`` has ``send``/``recv`` too, so only a
  receiver whose name says "socket" can be told apart by reading the code.

``from os import write`` (and the like) counts as the call it enables.

Two rules this test does not make, and why. ``socket.socket(..., fileno=fd)`` adopts an
fd that arrived in a message (``_serialize`` rebuilds a pickled socket, as the stdlib's
reduction does): it makes no socket and moves no byte. And positional file access
(``os.pread``/``os.pwrite``) stays allowed. ``_shm/bulk.py`` reads and sets a byte
in a shared-memory segment's header page with it, the same as indexing the segment's
mmap, and the pool's worker reads ``/proc/self/statm``; neither is a stream, a frame
or a peer. Filling a memfd with a message's bytes (a stream write) is ``_transport``'s
``write_all_fd``.

``_launch`` is exempt: it starts interpreters (a forkserver's own accept loop, a
spawned child's bootstrap pipe, the log-forwarding datagram socket) below the
layers that use the transport's streams.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "polyproc"
EXEMPT = ("_transport", "_launch")

_SOCKET_FUNCS = frozenset(
    {
        "socket",
        "socketpair",
        "fromfd",
        "create_connection",
        "create_server",
        "send_fds",
        "recv_fds",
    }
)
_OS_FUNCS = frozenset(
    {
        "read",
        "write",
        "readv",
        "writev",
        "pipe",
        "pipe2",
        "sendfile",
        "splice",
        "eventfd_read",
        "eventfd_write",
    }
)
#: Methods only a socket has: any receiver.
_SOCKET_METHODS = frozenset(
    {
        "sendmsg",
        "recvmsg",
        "recvmsg_into",
        "recv_into",
        "sendall",
        "recvfrom",
        "recvfrom_into",
        "sendto",
    }
)
#: Methods a Connection has too: only on a receiver named like a socket.
_AMBIGUOUS = frozenset({"send", "recv"})
_SOCKETY = ("sock", "listener")


def _receiver_name(node: ast.expr) -> str:
    """The last name of a receiver: ``conn.sock`` -> "sock", ``self._sock`` -> "_sock"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


_MODULE = {"os": "os", "socket": "socket", "_socket": "socket"}


def raw_io(source: str, filename: str = "<test>") -> list[str]:
    """Every raw I/O call in ``source``, as ``"line: what"``."""
    tree = ast.parse(source, filename)
    # local name -> "os" or "socket" (the plain names count even unimported: an added
    # call may come with its import in another hunk). ``_socket``, the C module under
    # ``socket`` (our own sockets are its type: issue 11), counts as ``socket``.
    modules: dict[str, str] = dict(_MODULE)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in _MODULE:
                    modules[alias.asname or alias.name] = _MODULE[alias.name]
        elif isinstance(node, ast.ImportFrom) and node.module in _MODULE:
            banned = _OS_FUNCS if node.module == "os" else _SOCKET_FUNCS
            for alias in node.names:
                if alias.name in banned:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, value = node.func.attr, node.func.value
        module = modules.get(value.id) if isinstance(value, ast.Name) else None
        if module == "os" and attr in _OS_FUNCS:
            found.append(f"{node.lineno}: os.{attr}()")
        elif module == "socket" and attr in _SOCKET_FUNCS:
            if attr == "socket" and any(k.arg == "fileno" for k in node.keywords):
                continue  # adopts an fd that arrived in a message: no new socket, no I/O
            found.append(f"{node.lineno}: socket.{attr}()")
        elif attr in _SOCKET_METHODS:
            found.append(f"{node.lineno}: .{attr}()")
        elif attr in _AMBIGUOUS and any(s in _receiver_name(value).lower() for s in _SOCKETY):
            found.append(f"{node.lineno}: {ast.unparse(value)}.{attr}()")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in EXEMPT)


def test_no_raw_io_outside_the_transport() -> None:
    offenders = {
        str(path.relative_to(SRC)): hits
        for path in _modules()
        if (hits := raw_io(path.read_text(), str(path)))
    }
    assert not offenders, (
        "raw socket/pipe I/O outside _transport (use a Stream, an Outbox, Wake, "
        f"fds.send_fds/recv_fds or read_exact_fd/write_all_fd): {offenders}"
    )


def test_the_walk_covers_the_services() -> None:
    names = {str(p.relative_to(SRC)) for p in _modules()}
    for service in (
        "_connection.py",
        "_listener.py",
        "_queues.py",
        "reduction.py",
        "_shm/bulk.py",
        "_pool/channel.py",
        "_pool/engine.py",
        "_manager/loop.py",
        "_manager/gate.py",
        "_manager/wire.py",
        "_manager/server.py",
        "_manager/client.py",
        "_manager/registry.py",
    ):
        assert service in names


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("conn.sock.send(out)", "conn.sock.send()"),
        ("n = self._sock.recv(4096)", "self._sock.recv()"),
        ("listener.send(b'x')", "listener.send()"),
        ("os.write(self._wake_w, b'x')", "os.write()"),
        ("os.read(fd, 4096)", "os.read()"),
        ("os.writev(fd, parts)", "os.writev()"),
        ("os.readv(fd, [view])", "os.readv()"),
        ("r, w = os.pipe()", "os.pipe()"),
        ("sock.sendmsg([b'x'], [], 0)", ".sendmsg()"),
        ("x.recvmsg(1, 64)", ".recvmsg()"),
        ("conn.recv_into(view)", ".recv_into()"),
        ("s.sendall(data)", ".sendall()"),
        ("socket.send_fds(s, [b'x'], [3])", "socket.send_fds()"),
        ("socket.recv_fds(s, 1, 1)", "socket.recv_fds()"),
        ("a, b = socket.socketpair()", "socket.socketpair()"),
        ("s = socket.socket(socket.AF_UNIX)", "socket.socket()"),
    ],
)
def test_a_raw_write_added_to_the_manager_loop_is_caught(line: str, what: str) -> None:
    source = (SRC / "_manager" / "loop.py").read_text()
    assert raw_io(source) == []
    hits = raw_io(
        source + f"\n\ndef _added(conn, self, s, x, fd, view, parts, data, out):\n    {line}\n"
    )
    assert len(hits) == 1 and hits[0].endswith(what), hits


def test_aliases_and_from_imports_are_caught() -> None:
    assert raw_io("import os as o\no.write(1, b'x')\n") == ["2: os.write()"]
    assert raw_io("from os import write\n") == ["1: from os import write"]
    assert raw_io("from socket import socketpair\n") == ["1: from socket import socketpair"]
    assert raw_io("import _socket\na, b = _socket.socketpair()\n") == ["2: socket.socketpair()"]
    assert raw_io("from _socket import socket\n") == ["1: from _socket import socket"]


def test_what_is_allowed() -> None:
    # A Connection's send/recv, a frame socket's, a stream's reads and writes.
    allowed = (
        "conn.send(obj)\nconn.recv()\nfs.send(op, body)\nstream.read_into(view)\n"
        "stream.write_all([b'x'])\nout.flush()\nos.pwrite(fd, b'\\1', 0)\nos.close(fd)\n"
        "send_fds(sock, b'x', fds)\nsocket.socket(family, kind, proto, fileno=fd)\n"
    )
    assert raw_io("import os\n" + allowed) == []


def test_the_transport_really_does_the_io() -> None:
    """The rule is not vacuous: the exempt package holds the calls it bans elsewhere."""
    hits = [h for p in (SRC / "_transport").rglob("*.py") for h in raw_io(p.read_text())]
    text = " ".join(hits)
    for what in ("sendmsg", "recvmsg", "os.write", "os.read", "os.writev", "sendall"):
        assert what in text
