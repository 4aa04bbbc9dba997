"""Connection and Pipe: messages (objects or raw bytes) over a byte stream.

The stdlib's ``multiprocessing.connection.Connection`` API exactly, on our own
framing (``_protocol.framing``) and streams (``_transport``). What it adds:

* ``send(obj)`` hands large buffers (NumPy arrays, memoryviews) out of band:
  they are written straight from their memory with ``writev`` and read straight
  into their final bytearray, so the sender makes no copy and the receiver one.
* ``recv_bytes`` of a big message reads it straight into the ``bytes`` object it
  returns (one kernel copy, ``MSG_WAITALL``). ``send_bytes`` of at least
  ``bulk.BYTES_THRESHOLD`` over a duplex Pipe can lend the bytes through a warm
  pooled memfd instead (falling back to the socket when every slot is in
  flight); measured no faster than the single-copy socket path, it is off by
  default. The measurements, and where the time goes: docs/connection.md.
* Objects that own an fd (another Connection, a shared segment, a lock) travel
  over a duplex ``Pipe()`` (an AF_UNIX socketpair): the fd rides along with
  SCM_RIGHTS and the receiver gets its own copy.
* Garbage, a torn frame, or an oversize frame raises ``ProtocolError``, never a
  hang or a crash; a peer that closed raises ``EOFError`` as in the stdlib.

A Connection is not thread-safe, like the stdlib's: one reader, one writer.
"""

from __future__ import annotations

import os
import pickle
import select
import stat
import struct
from collections.abc import Iterable
from typing import Any, cast

from ._protocol.framing import HEADER, MAGIC, Kind, decode_header, decode_lengths, encode_header
from ._serialize import (
    DEFAULT_SERIALIZER,
    Payload,
    Serializer,
    _fd_table,
    fd_handle,
    names_lost_main,
    refuse_out_of_band,
)
from ._transport import (
    FdStream,
    Stream,
    UnixStream,
    big_pipe,
    buffered_socketpair,
    readable,
    stream_for_socket,
)
from ._transport.fds import close_fds
from .errors import BufferTooShort, ClosedResourceError, CorruptMessageError, ProtocolError

__all__ = ["Connection", "Pipe", "wait"]

_HDR = HEADER.size
_CHUNK = 1 << 16
#: Under this, header and body are joined into one write: one syscall beats writev.
_COALESCE = 1 << 14
_HEAD_PACK = HEADER.pack
_HEAD_UNPACK = HEADER.unpack_from
_PICKLE = int(Kind.PICKLE)
_BYTES = int(Kind.BYTES)
_pickle_dumps = pickle.dumps
#: A message pickled in band up to this size is sent as is; past it the full serializer
#: runs again, so a big bytes inside a container goes out of band (memfd) instead.
_INBAND_MAX = 1 << 20
_TRUST = 64 << 20  # bytes allocated up front for one frame part; more as they arrive
#: A body at least this big, not yet wholly buffered, is read straight into its final object.
_DIRECT = 1 << 15
#: Past this a header's promise is not allocated up front (a lie must cost its sender bytes).
_DIRECT_MAX = 1 << 30
_SHARED_BYTES = int(Kind.SHARED_BYTES)
_LEN = struct.Struct("<Q")
#: No message below this size is ever lent: below it ``bulk`` is not even imported (its first
#: import, 3 ms with bytecode cached and 80 ms without, once cost a 64 KiB stream half its rate).
_LEND_MIN = 1 << 20


class Connection:
    """One end of a message stream (``Pipe()``, ``Listener.accept()``, ``Client()``)."""

    __module__ = "polyproc.connection"  # its public home: repr, pickle

    def __init__(
        self,
        handle: int | Stream,
        readable: bool = True,
        writable: bool = True,
        *,
        serializer: Serializer | None = None,
    ) -> None:
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        if isinstance(handle, int):
            if handle < 0:
                raise ValueError("invalid handle")
            handle = (
                UnixStream(handle) if stat.S_ISSOCK(os.fstat(handle).st_mode) else FdStream(handle)
            )
        self._stream: Stream | None = handle
        self._readable = readable
        self._writable = writable
        self._ser = serializer or DEFAULT_SERIALIZER
        self._buf = bytearray()
        # Made at the first read that needs it (a pool reads its worker Pipes its own way)
        self._chunk_view: memoryview | None = None
        self._head = memoryview(bytearray(_HDR))  # a header read alone (after a big body)
        self._poller: select.poll | None = None
        self._peer_maps: Any = None  # bulk.PeerMaps, made at the first lent message
        # Was the last frame's body big (read the next header alone)? True at first too: a first
        # big body then skips the 64 KiB chunk (COW faults in a fork child, docs/connection.md).
        self._big = True

    # -- state ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called on this end."""
        return self._stream is None

    @property
    def readable(self) -> bool:
        """Whether this end can ``recv`` (False for the writer of a simplex Pipe)."""
        return self._readable

    @property
    def writable(self) -> bool:
        """Whether this end can ``send`` (False for the reader of a simplex Pipe)."""
        return self._writable

    def fileno(self) -> int:
        """The underlying fd, for ``select``/``wait``; ``ClosedResourceError`` once closed."""
        return self._live().fd

    def close(self) -> None:
        """Close this end; idempotent. The peer then sees EOF."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        maps, self._peer_maps = self._peer_maps, None
        if maps is not None:
            maps.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._stream is None else f"fd={self._stream.fd}"
        return f"<polyproc.Connection {state} readable={self._readable} writable={self._writable}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # The fd travels beside the pickle (SCM_RIGHTS or at child start).
        return (_rebuild_connection, (fd_handle(self.fileno()), self._readable, self._writable))

    def _live(self) -> Stream:
        if self._stream is None:
            raise ClosedResourceError("handle is closed")
        return self._stream

    def _for_writing(self) -> Stream:
        stream = self._live()
        if not self._writable:
            raise OSError("connection is read-only")
        return stream

    def _for_reading(self) -> Stream:
        stream = self._live()
        if not self._readable:
            raise OSError("connection is write-only")
        return stream

    # -- sending ----------------------------------------------------------------
    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send a bytes-like object (or a slice of it, offsets in bytes) as one message."""
        stream = self._stream
        if stream is None or not self._writable:
            stream = self._for_writing()
        if type(buf) is bytes and not offset and size is None:
            n = len(buf)
            if n < _COALESCE:
                stream.write_one(_HEAD_PACK(MAGIC, _BYTES, 0, 0, n) + buf)
                return
            if n < _LEND_MIN or not stream.supports_fds:
                stream.write_pair(_HEAD_PACK(MAGIC, _BYTES, 0, 0, n), buf)
                return
        view = memoryview(buf)
        if view.itemsize > 1 or view.format != "B":
            view = view.cast("B")
        n = view.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        if size >= _LEND_MIN and stream.supports_fds:
            from ._shm import bulk

            if size >= bulk.BYTES_THRESHOLD:
                fd = bulk.lend(view[offset : offset + size])
                if fd is not None:  # else every slot is in flight: the socket it is
                    stream.write_all(
                        [_HEAD_PACK(MAGIC, _SHARED_BYTES, 1, 0, 8) + _LEN.pack(size)], [fd]
                    )
                    return
        self._write(stream, encode_header(Kind.BYTES, size), view[offset : offset + size])

    def send(self, obj: Any) -> None:
        """Send a picklable object; large buffers go out of band, fds ride along."""
        stream = self._stream
        if stream is None or not self._writable:
            stream = self._for_writing()
        kind = type(obj)
        if kind is bytes:
            self._write(stream, encode_header(Kind.RAW_BYTES, len(obj)), obj)
            return
        if kind is bytearray:
            self._write(stream, encode_header(Kind.RAW_BYTEARRAY, len(obj)), obj)
            return
        if self._ser is DEFAULT_SERIALIZER and _fd_table.collecting is None:
            # Plain pickle first: ~4x cheaper than the full serializer for the small
            # messages a stream is made of. Anything the full path treats specially
            # aborts it early: an out-of-band buffer (``refuse_out_of_band``), an fd (its handle
            # refuses to pickle with no table), a lambda (cloudpickle is needed).
            try:
                body = _pickle_dumps(obj, 5, buffer_callback=refuse_out_of_band)
            except Exception:
                body = None
            if body is not None and body.find(b"main__") >= 0 and names_lost_main(body):
                body = None  # a REPL's function, say: by value (cloudpickle)
            if body is not None:
                n = len(body)
                if n < _COALESCE:
                    stream.write_one(_HEAD_PACK(MAGIC, _PICKLE, 0, 0, n) + body)
                    return
                if n < _INBAND_MAX:  # big bytes pickled in band: the copy is made, send it
                    stream.write_pair(_HEAD_PACK(MAGIC, _PICKLE, 0, 0, n), body)
                    return
        payload = self._ser.dumps(obj, what="message")
        body = payload.body
        if not payload.buffers and not payload.fds and len(body) < _COALESCE:
            # The common case, kept short: one header+body write, no frame table.
            stream.write_all((_HEAD_PACK(MAGIC, _PICKLE, 0, 0, len(body)) + body,))
            return
        self.send_payload(payload)

    def send_payload(self, payload: Payload) -> None:
        """Send an already pickled message (body, out-of-band buffers, fds) as one frame."""
        stream = self._for_writing()
        if not payload.buffers and not payload.fds:
            self._write(stream, encode_header(Kind.PICKLE, len(payload.body)), payload.body)
            return
        if stream.supports_fds and payload.buffers:
            self._send_shared(stream, payload.body, payload.buffers, payload.fds)
            return
        head = encode_header(
            Kind.PICKLE,
            len(payload.body),
            [b.nbytes for b in payload.buffers],
            nfds=len(payload.fds),
        )
        stream.write_all([head, payload.body, *payload.buffers], payload.fds)

    @staticmethod
    def _send_shared(
        stream: Stream, body: bytes, buffers: list[memoryview], fds: list[int]
    ) -> None:
        """Large out-of-band buffers go through shared memory (``_shm.bulk``), not the socket.

        Wire convention: such a buffer has length 0 in the frame's length table and
        its memfd is appended after the message's own fds, in buffer order. (A
        genuinely empty out-of-band buffer disables this for the frame.)
        """
        from ._shm import bulk

        parts, all_fds, to_close = bulk.encode_frame(body, buffers, fds, encode_header, Kind.PICKLE)
        try:
            stream.write_all(parts, all_fds)
        finally:
            close_fds(to_close)

    @staticmethod
    def _write(stream: Stream, head: bytes, body: Any) -> None:
        if len(body) < _COALESCE:
            stream.write_all([head + bytes(body) if type(body) is not bytes else head + body])
        else:
            stream.write_pair(head, body)

    # -- receiving --------------------------------------------------------------
    def _fill(self, stream: Stream) -> bool:
        """Read what is available into the buffer; False at end of stream. After a big frame,
        expect another: just a header, so the body goes straight into its object."""
        view = self._chunk_view
        if view is None:
            view = self._chunk_view = memoryview(bytearray(_CHUNK))
        n = stream.read_into(view[:_HDR] if self._big else view)
        if n == 0:
            return False
        self._buf += view[:n]
        return True

    def _need(self, stream: Stream, count: int, started: bool) -> None:
        while len(self._buf) < count:
            if not self._fill(stream):
                if not started and not self._buf:
                    raise EOFError
                self.close()
                raise ProtocolError("truncated frame: the peer closed in the middle of a message")

    def _take(self, stream: Stream, count: int, *, mutable: bool = False) -> Any:
        """The next ``count`` bytes of the stream; large ones read straight into place."""
        buf = self._buf
        if count <= len(buf) or count < _DIRECT:
            self._need(stream, count, True)
            if count < 4096:
                out = bytearray(buf[:count]) if mutable else bytes(buf[:count])
            else:
                with memoryview(buf) as whole:
                    out = bytearray(whole[:count]) if mutable else bytes(whole[:count])
            del buf[:count]
            return out
        if count <= _DIRECT_MAX:
            return self._take_direct(stream, count, mutable)
        # Allocate what a header promises only as bytes arrive (doubling past 64 MiB), so a
        # hostile length prefix costs nothing until the peer actually sends that much.
        target = bytearray(min(count, _TRUST))
        view = memoryview(target)
        have = min(len(buf), count)
        view[:have] = buf[:have]
        del buf[:have]
        while have < count:
            if have == len(target):
                view.release()
                target.extend(bytes(min(count, 2 * len(target)) - len(target)))
                view = memoryview(target)
            n = stream.read_into(view[have:])
            if n == 0:
                self.close()
                raise ProtocolError("truncated frame: the peer closed in the middle of a message")
            have += n
        view.release()
        return target

    def _take_direct(self, stream: Stream, count: int, mutable: bool = False) -> Any:
        """``count`` (more than is buffered) straight into the object we return: what is
        buffered, then the kernel's copy into the rest. No staging buffer."""
        buf = self._buf
        if mutable:
            target: bytes | bytearray = bytearray(count)
            with memoryview(target) as into:
                into[: len(buf)] = buf
                got = len(buf) + stream.read_exact_into(into[len(buf) :])
        else:
            target = stream.read_bytes(count, buf)
            got = len(target)
        buf.clear()
        if got < count:
            self.close()
            raise ProtocolError("truncated frame: the peer closed in the middle of a message")
        return target

    def _read_frame(self, max_size: int | None = None) -> tuple[Kind, Any, list[Any], list[int]]:
        stream = self._for_reading()
        self._need(stream, _HDR, False)
        try:
            head = decode_header(self._buf, 0, max_size)
            lengths: list[int] = []
            if head.nbuffers:
                self._need(stream, _HDR + head.table_length, True)
                lengths = decode_lengths(self._buf, _HDR, head.nbuffers, max_size)
        except ProtocolError:
            self.close()  # a stream that lied about framing cannot be resynchronised
            raise
        del self._buf[: _HDR + head.table_length]
        self._big = head.body_length >= _DIRECT
        body = self._take(stream, head.body_length, mutable=head.kind is Kind.RAW_BYTEARRAY)
        buffers = [self._take(stream, n, mutable=True) for n in lengths]
        fds = stream.take_fds(head.nfds) if head.nfds else []
        if head.kind is Kind.SHARED_BYTES:
            return Kind.BYTES, self._take_lent(body, fds), [], []
        if fds and 0 in lengths:
            fds = self._map_shared(stream, lengths, buffers, fds)
        return head.kind, body, buffers, fds

    def _take_lent(self, body: bytes, fds: list[int]) -> bytes:
        """Receiving side of a lent ``send_bytes``: copy the bytes out of the peer's slot."""
        from ._shm import bulk

        if len(fds) != 1 or len(body) != _LEN.size:
            close_fds(fds)
            self.close()
            raise ProtocolError("garbage on the wire: a shared bytes frame without its memfd")
        if self._peer_maps is None:
            self._peer_maps = bulk.PeerMaps()
        try:
            return bytes(self._peer_maps.take(fds[0], _LEN.unpack(body)[0]))
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"a shared buffer could not be mapped: {exc}") from exc

    def _map_shared(
        self, stream: Stream, lengths: list[int], buffers: list[Any], fds: list[int]
    ) -> list[int]:
        """Receiving side of ``_send_shared``: map each big buffer's memfd in place (no copy)."""
        from ._shm import bulk

        shared = [i for i, n in enumerate(lengths) if n == 0]
        if len(shared) > len(fds):
            close_fds(fds)
            self.close()
            raise ProtocolError("garbage on the wire: shared buffers without their memfds")
        own, extra = fds[: len(fds) - len(shared)], fds[len(fds) - len(shared) :]
        sizes = [bulk.read_size_marker(self._take(stream, bulk.MARKER_SIZE)) for _ in shared]
        for j, (i, fd) in enumerate(zip(shared, extra, strict=False)):
            try:
                buffers[i] = bulk.import_buffer(fd, sizes[j])
            except (OSError, ValueError) as exc:
                close_fds(extra[j + 1 :] + own)
                raise ProtocolError(f"a shared buffer could not be mapped: {exc}") from exc
        return own

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes; ``OSError`` (ProtocolError) if longer than ``maxlength``."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        buf, stream = self._buf, self._stream
        if self._big and not buf and stream is not None and self._readable:
            # After a big frame (and at first) a header is read alone into its own buffer,
            # a big body straight into its bytes: 1.2-1.6 us less Python per 64 KiB message.
            n = stream.read_into(self._head)
            magic, kind_no, nfds, nbuf, size = _HEAD_UNPACK(self._head)
            if n == _HDR and magic == MAGIC and kind_no == _BYTES and not (nfds or nbuf):
                if _DIRECT <= size <= _DIRECT_MAX and (maxlength is None or size <= maxlength):
                    return self._take_direct(stream, size)  # type: ignore[no-any-return]
            buf += self._head[:n]
        if len(buf) < _HDR or stream is None or not self._readable:
            self._need(self._for_reading(), _HDR, False)
        magic, kind_no, nfds, nbuf, size = _HEAD_UNPACK(buf)
        if (
            magic == MAGIC
            and kind_no == _BYTES
            and not nfds
            and not nbuf
            and (maxlength is None or size <= maxlength)
        ):
            # The common cases, kept short: no header object, no enum, no frame table.
            end = _HDR + size
            if len(buf) >= end:
                if size < 4096:
                    body = bytes(buf[_HDR:end])
                else:
                    with memoryview(buf) as whole:
                        body = bytes(whole[_HDR:end])
                del buf[:end]
                self._big = size >= _DIRECT
                return body
            if _DIRECT <= size <= _DIRECT_MAX and self._stream is not None:
                del buf[:_HDR]
                self._big = True
                return cast(bytes, self._take_direct(self._stream, size))
        kind, body, buffers, fds = self._read_frame(maxlength)
        if buffers or fds:
            close_fds(fds)
            raise ProtocolError(
                "recv_bytes() got an object message with out-of-band parts; use recv()"
            )
        return bytes(body) if type(body) is not bytes else body

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive into ``buf`` at byte ``offset``; ``BufferTooShort`` holds the message if it does not fit."""
        view = memoryview(buf)
        if view.itemsize > 1 or view.format != "B":
            view = view.cast("B")
        if offset < 0 or offset > view.nbytes:
            raise ValueError("offset out of bounds")
        data = self.recv_bytes()
        if len(data) > view.nbytes - offset:
            raise BufferTooShort(data)
        view[offset : offset + len(data)] = data
        return len(data)

    def recv_payload(self) -> Payload:
        """Receive one pickled message without unpickling it (the caller owns its fds)."""
        kind, body, buffers, fds = self._read_frame()
        if kind is not Kind.PICKLE:
            close_fds(fds)
            raise ProtocolError("expected a pickled message")
        return Payload(body, buffers, fds)

    def recv(self) -> Any:
        """Receive one object sent by ``send`` (or bytes sent by ``send_bytes``, unpickled)."""
        buf, stream, body = self._buf, self._stream, cast(Any, None)
        if not buf and stream is not None and self._readable and not self._big:
            # Nothing buffered (a reader that keeps up): a small pickle loads from the read's
            # chunk, not copied into the buffer and out (0.3 us of ~2.7); the rest is kept.
            view = self._chunk_view
            if view is None:
                view = self._chunk_view = memoryview(bytearray(_CHUNK))
            n = stream.read_into(view)
            if n == 0:
                raise EOFError
            magic, kind_no, nfds, nbuf, size = _HEAD_UNPACK(view)  # the chunk is >= _HDR
            end = _HDR + size
            if n >= end and magic == MAGIC and kind_no == _PICKLE and not nfds and not nbuf:
                body = view[_HDR:end]
                buf += view[end:n]
            else:
                buf += view[:n]
        if body is None:
            if len(buf) < _HDR or stream is None or not self._readable:
                self._need(self._for_reading(), _HDR, False)
            magic, kind_no, nfds, nbuf, size = _HEAD_UNPACK(buf)
            end = _HDR + size
            if magic == MAGIC and kind_no == _PICKLE and not nfds and not nbuf and len(buf) >= end:
                # The common case: a small pickle wholly in our buffer. No header object, no enum.
                body = buf[_HDR:end]
                del buf[:end]
        if body is not None:
            try:
                return pickle.loads(body)
            except pickle.UnpicklingError as exc:
                raise CorruptMessageError(
                    f"received a message that is not a valid pickle: {exc}"
                ) from exc
        kind, body, buffers, fds = self._read_frame()
        if kind is Kind.RAW_BYTEARRAY:
            return body
        if kind is Kind.RAW_BYTES:  # a large body is read into a bytearray: give back bytes
            return body if type(body) is bytes else bytes(body)
        try:
            return self._ser.loads(body, buffers, fds)
        except (EOFError, ProtocolError):
            raise
        except pickle.UnpicklingError as exc:
            raise CorruptMessageError(
                f"received a message that is not a valid pickle: {exc}"
            ) from exc
        except Exception as exc:
            if kind is Kind.PICKLE:
                raise  # the object's own error while being rebuilt (an import, a __setstate__)
            raise CorruptMessageError(
                f"received bytes that are not a pickled object: {exc}"
            ) from exc

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Is there data (or EOF) to read? Waits up to ``timeout`` seconds (None: forever)."""
        stream = self._for_reading()
        if self._buf:
            return True
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(stream.fd, select.POLLIN)
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(self._poller.poll(ms))

    def _has_buffered(self) -> bool:
        return bool(self._buf)


def _rebuild_connection(fd: int, readable: bool, writable: bool) -> Connection:
    return Connection(fd, readable, writable)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802 - stdlib name
    """Two connected Connections. Duplex: a socketpair (can carry fds); else a pipe, reader first."""
    if duplex:
        a, b = buffered_socketpair()
        return Connection(stream_for_socket(a)), Connection(stream_for_socket(b))
    r, w = big_pipe()
    return Connection(FdStream(r), writable=False), Connection(FdStream(w), readable=False)


def wait(object_list: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Those of ``object_list`` (Connections, sockets, fds, sentinels) that are ready.

    A Connection with bytes already buffered is ready without a syscall.
    """
    objects = list(object_list)
    ready = [o for o in objects if isinstance(o, Connection) and not o.closed and o._has_buffered()]
    if ready:
        return ready
    by_fd: dict[int, list[Any]] = {}
    for o in objects:
        by_fd.setdefault(o if isinstance(o, int) else o.fileno(), []).append(o)
    out = [o for fd in readable(by_fd, timeout) for o in by_fd[fd]]
    return [o for o in objects if o in out]
