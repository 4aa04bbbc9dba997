"""Log records of spawn and forkserver children, handled by the parent's handlers.

A forked child inherits its parent's logging configuration (``basicConfig`` in the
main guard included), so its records go where the parent's go. A child that is a
fresh interpreter (spawn) or a fork of the forkserver has none of it: the stdlib
shows nothing at INFO, and WARNING lines unformatted. Here such a child sends each
record to its parent, which handles it as its own::

    parent                                      child (spawn / forkserver)
    ──────                                      ──────────────────────────
    spec(): levels, loggers with handlers,    install(spec): a _Forward handler on
            one end of a datagram socketpair ─►   root and each logger that has handlers
                                                  here, unless the child configured it
    receiver thread: recv ◄──── one datagram ──  _Forward.emit: the record's dict, message
      ─► getLogger(name).handle(record)            formatted, exception as text, pickled
         (the parent's filters, handlers, and
          propagation: each record once)

This module imports ``logging``: it is imported only by a process that has.
No line is duplicated: a child logger that has handlers of its own (configured by
module-level code in the main module, which the child runs too) keeps them and
gets no forwarder. ``drain()`` handles whatever is queued, so the records of a
child that has exited are handled before ``join()`` returns.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
from typing import Any

__all__ = ["spec", "install", "drain"]

_MAX = 60_000  # bytes of message kept in one datagram (the default socket buffer holds more)


class _Receiver:
    """The parent's end: one socketpair and one thread, made on first need."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.send_end: socket.socket | None = None
        self.owner = 0

    def child_end(self) -> int:
        with self.lock:
            if self.sock is None or self.owner != os.getpid():
                from .parking import parkable

                self.sock, self.send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.owner = os.getpid()
                thread = threading.Thread(
                    target=self._run, args=(self.sock,), name="polyproc-log-receiver", daemon=True
                )
                parkable(thread, self.lock)  # it handles records only under self.lock
                thread.start()
            assert self.send_end is not None
            return self.send_end.fileno()

    def _run(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 17)
            except OSError:
                return
            with self.lock:
                _handle(data)

    def drain(self) -> None:
        with self.lock:
            sock = self.sock
            if sock is None or self.owner != os.getpid():
                return
            while True:
                try:
                    data = sock.recv(1 << 17, socket.MSG_DONTWAIT)
                except (BlockingIOError, OSError):
                    return
                _handle(data)

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        for sock in (self.sock, self.send_end):
            if sock is not None:
                sock.close()
        self.sock = self.send_end = None


_RECEIVER = _Receiver()
os.register_at_fork(after_in_child=_RECEIVER.after_fork_in_child)


def _handle(data: bytes) -> None:
    try:
        attrs = pickle.loads(data)
        record = logging.makeLogRecord(attrs)
        logger = logging.getLogger() if record.name == "root" else logging.getLogger(record.name)
        logger.handle(record)
    except Exception:  # noqa: BLE001 - a bad record must not stop the receiver
        pass


def spec() -> dict[str, Any] | None:
    """What a new non-fork child needs to forward its records to us; None: nothing to do.

    Only when this process has configured logging (some logger has a handler): else
    the child behaves as the stdlib's does, and nothing is forwarded. Import this
    module only where ``logging`` is imported already (``child.log_spec``).
    """
    root = logging.getLogger()
    loggers = [lg for lg in root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    # As the stdlib's spawn: the child's "multiprocessing" logger (get_logger()) gets the
    # effective level of ours, so get_logger().setLevel() here reaches every child.
    mp = root.manager.loggerDict.get("multiprocessing")
    mp_level = mp.getEffectiveLevel() if isinstance(mp, logging.Logger) else None
    if not root.handlers and not any(lg.handlers for lg in loggers):
        return None if mp_level is None else {"mp_level": mp_level}
    from .._serialize import fd_handle

    return {
        "mp_level": mp_level,
        "fd": fd_handle(_RECEIVER.child_end()),
        "root": root.level,
        "levels": {lg.name: lg.level for lg in loggers if lg.level != logging.NOTSET},
        # Where the child forwards: each logger that has handlers here or stops
        # propagation here (and root); in the child those stop propagation, so a
        # record is sent once and the parent propagates it as it would its own.
        "forward_at": [lg.name for lg in loggers if lg.handlers or not lg.propagate],
    }


def install(spec: dict[str, Any] | None) -> None:
    """In the child: forward records to the parent from loggers we did not configure."""
    if spec is None:
        return
    if spec.get("mp_level") is not None:
        mp = logging.getLogger("multiprocessing")
        mp.propagate = False  # what get_logger() makes of it
        mp.setLevel(spec["mp_level"])
    if "fd" not in spec:
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=spec["fd"])
    handler = _Forward(sock)
    root = logging.getLogger()
    if not root.handlers:
        root.setLevel(spec["root"])
        root.addHandler(handler)
    for name, level in spec["levels"].items():
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET and not lg.handlers:
            lg.setLevel(level)
    for name in spec["forward_at"]:
        lg = logging.getLogger(name)
        if not lg.handlers:
            lg.addHandler(handler)
            lg.propagate = False


class _Forward(logging.Handler):
    """Send each record, made plain (message formatted, exception as text), to the parent."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attrs = dict(record.__dict__)
            attrs["msg"] = record.getMessage()[:_MAX]
            attrs["args"] = None
            if record.exc_info:
                attrs["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attrs["exc_info"] = None
            try:
                data = pickle.dumps(attrs)
            except Exception:  # noqa: BLE001 - an attribute that does not pickle: keep the rest
                data = pickle.dumps(
                    {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, type(None)))}
                )
            self.sock.send(data)
        except OSError:
            pass  # the parent is gone: its child's records have nowhere to go
        except Exception:  # noqa: BLE001
            self.handleError(record)


def drain() -> None:
    """Handle every record already sent to us (called once a child is seen to have exited)."""
    _RECEIVER.drain()
