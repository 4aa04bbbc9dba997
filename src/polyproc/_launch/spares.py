"""A pool template's spares: children forked ahead of need, handed to the pool.

A woken template (``template.py``, running ``server.TemplateServer``) keeps ``server.SPARES``
(one) *spares*: children forked from it that wait for one request each on a socket of their
own. It hands each spare's socket to the pool over the boot socket as it forks it, so the
pool starts a replacement worker on a spare with no round trip to the template::

    pool (Template, Spares)                  template (TemplateServer)         spare
    ───────────────────────                  ─────────────────────────         ─────
    held ◄─────────────────────────────────── announce: pid + socket end  ◄── fork (waits on
                                             (its own copy closed)             its socket)
    (a worker died: start)
    the pickled worker ──────────────────────────────────────────────────────► entry()
    take: pid + status pipe's write end ───► records the pipe (at once, if it
                                             reaped that spare already: its status)
    returns StatusPipeHandle(pid, r)         forks the next spare, announces it

Why: after each fork every page the template's Python then touched was a copy-on-write
fault; when the pool asked the template for each replacement (a request, then the pid
in reply), that was ~1.2 ms of a ~2.5-3 ms replacement spent waiting (issue 11: <= 3 ms).
Now the template's work (recording the pipe, the next fork) runs beside the new worker.

The wire, on the boot socket after the template's listener address: the template's
*announcement* (a ``handle.PID`` body: the spare's pid with its socket end, or minus the
errno of a fork that failed, with no fd), one after every fork it tries; the pool's
*take* (the pid, with the status pipe's write end). The boot socket's end of file still
ends the template. A spare's socket end is held by the spare alone, so a send to a spare
that died fails at once (EPIPE): the pool then tries the next, and with none left asks
the template for the worker (``forkserver.request`` over its listener), as for the
first replacement; the template forks more spares after either.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._serialize import Payload
from .handle import PID, StatusPipeHandle

if TYPE_CHECKING:
    from .._connection import Connection
    from . import LaunchSpec

__all__ = ["Spares"]


class Spares:
    """The pool's side: the spares its template announced, and handing one a worker.

    Not thread-safe: the ``Template`` calls it under its lock.
    """

    def __init__(self) -> None:
        #: Announced and not taken: (pid, our end of its socket), oldest first.
        self.held: list[tuple[int, int]] = []
        #: Announcements the template owes us (at least: it may send more, never fewer).
        self.owed = 0

    def asked(self) -> None:
        """The template answered a request: it forks at least one spare after it."""
        self.owed = max(self.owed, 1)

    def collect(self, boot: Connection, timeout: float | None) -> None:
        """Take in what the template announced. With none in hand and one owed, wait up
        to ``timeout`` (None: until it comes): the template is forking it now, quicker
        than asking it for the worker instead."""
        while not boot.closed and boot.poll(0 if self.held or not self.owed else timeout):
            try:
                payload = boot.recv_payload()
            except (EOFError, OSError):  # the template is gone
                self.owed = 0
                return
            self.owed = max(0, self.owed - 1)
            pid = PID.unpack(payload.body)[0] if len(payload.body) == PID.size else -1
            if pid > 0 and len(payload.fds) == 1:
                self.held.append((pid, payload.fds[0]))
                continue
            for fd in payload.fds:  # its fork failed (minus an errno): none this time
                os.close(fd)

    def start(
        self, boot: Connection, spec: LaunchSpec, wait: float | None = None
    ) -> StatusPipeHandle | None:
        """``spec`` on a spare; None if none is there (or all died), or the template did.
        ``wait``: how long to wait for a spare the template owes (None: until it comes)."""
        from .child import stdio_to_hand

        self.collect(boot, wait)
        if not self.held:
            return None
        payload = spec.settings.serializer.dumps((spec.entry, None, None), what=spec.what)
        with stdio_to_hand() as stdio:
            while self.held:
                pid, sock = self.held.pop(0)
                handle = self._hand(boot, pid, sock, [*payload.fds, *stdio], payload)
                if handle is not None:
                    return handle
        return None

    def _hand(
        self, boot: Connection, pid: int, sock: int, fds: list[int], payload: Payload
    ) -> StatusPipeHandle | None:
        from .._connection import Connection
        from .._transport import UnixStream

        spare = Connection(UnixStream(sock))
        r, w = os.pipe()
        try:
            # The spare first: it starts the worker while the template, told next where
            # the spare's status goes, forks the next spare. Told even if the spare died
            # waiting (its send fails): the take is what makes the template fork another.
            try:
                spare.send_payload(Payload(payload.body, payload.buffers, fds))
                sent = True
            except OSError:
                sent = False
            finally:
                spare.close()
            try:
                boot.send_payload(Payload(PID.pack(pid), None, [w]))
                self.owed += 1
            except OSError:
                pass  # the template is gone, and its spares with it: the pipe's end says so
        finally:
            os.close(w)
        if not sent:
            os.close(r)
            return None
        return StatusPipeHandle(pid, r)

    def close(self) -> None:
        """Drop every spare (each ends when it reads the end of its socket, or with the
        template); in a forked child, our copies (a dead spare's send must fail)."""
        held, self.held = self.held, []
        self.owed = 0
        for _, sock in held:
            os.close(sock)
