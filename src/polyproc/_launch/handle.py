"""ChildHandle: what a launcher hands back for one child — pid, sentinel, exit status.

Two kinds, one interface:

* ``PidfdHandle`` for children of this process (fork, spawn): the sentinel is a
  pidfd, readable when the child exits; ``waitpid`` reaps it, in one place.
* ``StatusPipeHandle`` for forkserver children, which are the forkserver's and not
  ours: the forkserver reaps them and writes the wait status down a pipe whose read
  end is the sentinel.

Signals go through ``pidfd_send_signal`` where there is a pidfd, so a recycled pid
is never signalled by mistake.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import StartError

__all__ = [
    "ChildHandle",
    "PidfdHandle",
    "StatusPipeHandle",
    "wait_fd",
    "launch_errors",
    "PID",
    "report_status",
    "read_exactly",
]

#: A fork server's reply to a request: the new child's pid, or minus the errno of a failed fork.
PID = struct.Struct("<q")
#: A child's wait status, as a fork server writes it down the child's status pipe.
_STATUS = struct.Struct("<i")


def report_status(status_w: int, status: int) -> None:
    """In a fork server: write a reaped child's wait status down its status pipe (what
    ``StatusPipeHandle.poll`` reads) and close the pipe; a reader already gone is no error."""
    try:
        os.write(status_w, _STATUS.pack(status))
    except OSError:
        pass
    os.close(status_w)


def read_exactly(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd``, or fewer if the writer closed first (a short read is
    its death before it could say them)."""
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_fd(fd: int, timeout: float | None) -> bool:
    """True when ``fd`` is readable within ``timeout`` seconds (None: forever)."""
    from .._transport.wake import readable

    return bool(readable((fd,), timeout))


class ChildHandle:
    """The parent's grip on one child. Thread-safe; the exit code is cached once known."""

    pid: int
    sentinel: int

    def __init__(self, pid: int, sentinel: int) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._owner = os.getpid()

    def poll(self) -> int | None:
        """The exit code if the child has exited (negative: killed by that signal), else None."""
        raise NotImplementedError

    def pid_if_known(self) -> int | None:
        """The pid, or None where reading it would wait (``template._LatePidHandle``)."""
        return self.pid

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None and wait_fd(self.sentinel, timeout):
            code = self.poll_blocking()
        else:
            code = self.poll()
        if code is not None:
            _drain_logs()
        return code

    def poll_blocking(self) -> int | None:
        return self.poll()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        with self._lock:
            if self.sentinel >= 0:
                os.close(self.sentinel)
                self.sentinel = -1

    def __del__(
        self, _getpid: Callable[[], int] = os.getpid, _close: Callable[[int], None] = os.close
    ) -> None:
        # A Process started, joined and dropped without close() must not leak its
        # sentinel (the stdlib's Popen frees it with a finalizer). Only in the process
        # that opened it: a fork child's copy may have been closed and its number reused.
        fd = getattr(self, "sentinel", -1)
        if fd >= 0 and getattr(self, "_owner", None) == _getpid():
            self.sentinel = -1
            try:
                _close(fd)
            except OSError:
                pass


class PidfdHandle(ChildHandle):
    """A direct child: reaped with waitpid, its pidfd the sentinel."""

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def poll_blocking(self) -> int | None:
        return self._reap(0)

    def _reap(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flags)
                except ChildProcessError:
                    # Reaped elsewhere (a user's SIGCHLD handler): the status is lost.
                    self.returncode = 255
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is not None or self.sentinel < 0:
                return
            try:
                signal.pidfd_send_signal(self.sentinel, sig)
            except ProcessLookupError:
                pass


class StatusPipeHandle(ChildHandle):
    """A forkserver child: its wait status arrives on a pipe when it exits."""

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and self.sentinel >= 0 and wait_fd(self.sentinel, 0):
                data = read_exactly(self.sentinel, 4)
                if len(data) == 4:
                    self.returncode = os.waitstatus_to_exitcode(_STATUS.unpack(data)[0])
                else:  # the forkserver died before it could tell us: the child died with it
                    self.returncode = -signal.SIGKILL
            return self.returncode

    def send_signal(self, sig: int) -> None:
        pid = self.pid  # -1 when its server never said it: never kill(-1), "every process"
        if pid > 0 and self.poll() is None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _drain_logs() -> None:
    """A child that has exited has sent every log record it will: handle them now, so they
    are in the parent's handlers when ``join()`` returns (``logforward``)."""
    import sys

    forward = sys.modules.get("polyproc._launch.logforward")
    if forward is not None:
        forward.drain()


@contextmanager
def launch_errors(handle: ChildHandle) -> Iterator[None]:
    """If sending a new child its instructions fails, kill and reap it; raise StartError."""
    try:
        yield
    except OSError as exc:  # BrokenResourceError included: the child died at boot
        handle.send_signal(signal.SIGKILL)
        code = handle.wait(5.0)
        raise StartError(f"the child died while being started (exit code {code}): {exc}") from exc
