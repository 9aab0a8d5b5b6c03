"""Host side: connect to a board and drive a session.

with farm.connect("127.0.0.1", 9090, key="rasp4") as remote:
    remote.upload("libvadd.so")
    vadd = remote.load_module("libvadd.so").get_function(
        "vadd", signature="void vadd(const float *a, const float *b, float *c, int64_t n)")
    a, b = remote.array(x), remote.array(y)
    c = remote.empty(x.shape, "float32")
    vadd(a, b, c, x.size)
    np.testing.assert_allclose(c.numpy(), x + y)
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import socket
import ssl
import struct
import sys
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import (
    ArgumentError,
    BoardBusyError,
    DataError,
    FarmError,
    HandshakeError,
    PathEscapeError,
    ProtocolError,
    RemoteError,
    SessionLostError,
    SkippedCallError,
)
from ..net.credentials import Credentials
from ..net.opening import OpeningClosed, open_socket
from ..net.secret import SECRET_ENV, secret_from
from ..net.sockets import is_tls, keep_alive, would_block
from ..net.tls import ENV as TLS_ENV
from ..net.tls import TlsConfig, TlsError
from ..net.transport import ConnectionClosed, FramedSocket, tune
from ..protocol.auth import AuthError
from ..protocol.calls import (
    MAX_ARGS,
    NOT_A_RESULT,
    RESULT_FRAME_SIZE,
    CallFrame,
    decode_result,
    encode_call,
    read_result_frame,
    tag_of,
)
from ..protocol.framing import Frame, FrameReader
from ..protocol.handshake import CODE_BUSY, CODE_MISMATCH, encode_hello
from ..protocol.opening import Connector, Kind, Opened, Refused
from ..protocol.ops import PICKLE_PROTOCOL, RESULT_PICKLE, Op
from ..protocol.timing import TimingOptions, timing_options
from ..protocol.values import decode_value
from ..signature import DTYPE_SIZES, Signature, parse_signature
from .callpath import BAIL, compiled_path
from .pipeline import MAX_IN_FLIGHT, CallFuture, Pipeline
from .timing import BenchmarkResult

PathLike = Union[str, "os.PathLike[str]"]
SUPPORTED_DTYPES = tuple(sorted(DTYPE_SIZES))

#: Argument shapes one function keeps a CALL frame for; a function called with ever new ones starts afresh.
_FRAMES_PER_FUNCTION = 16
_RESULT, _CALL, _PIPELINED_CALL = int(Op.RESULT), int(Op.CALL), int(Op.PIPELINED_CALL)  # plain ints: quicker
#: Most freed array ids one request carries to the board.
MAX_RELEASE = 4096
#: How long closing waits for the board to finish with a session.
BOARD_CLEANUP_TIMEOUT = 10.0
#: Seconds past its session timeout that a board has to end the session and say so: longer silence means it hangs.
SESSION_END_GRACE = 5.0


class RemotePathEscapeError(RemoteError, PathEscapeError):
    """The board refused a file name outside the session directory."""


class RemoteArgumentError(RemoteError, ArgumentError):
    """The board refused a call's arguments."""


class RemoteSkippedCallError(RemoteError, SkippedCallError):
    """A pipelined call the board did not run: an earlier call of its pipeline failed."""


class RemoteDataError(RemoteError, DataError):
    """A ``run()`` result on the board was not data (its type is named); the session goes on."""


#: The exception classes an ERROR reply may choose by its ``type`` text; any other text gives a RemoteError.
_REMOTE_ERRORS = {
    "PathEscapeError": RemotePathEscapeError,
    "ArgumentError": RemoteArgumentError,
    "DataError": RemoteDataError,
    "SkippedCallError": RemoteSkippedCallError,
}


def connect(
    host: str,
    port: int,
    key: str = "",
    session_timeout: Optional[float] = None,
    connect_timeout: float = 10.0,
    secret: Optional[bytes] = None,
    tls: Optional[TlsConfig] = None,
) -> RemoteSession:
    """Open a session on the board at ``host:port``.

    ``key`` must match the board's key unless either is empty.
    ``session_timeout`` (seconds) asks the board to end the session after
    that long, whatever it is doing; a board silent for longer than that
    plus ``SESSION_END_GRACE`` is taken for hung (:class:`SessionLostError`).
    ``secret`` is the farm secret (default:
    the one ``$REMOTEDEV_SECRET_FILE`` names, if any); ``tls`` the farm's TLS
    configuration (default: the one ``$REMOTEDEV_TLS_*`` name, if any). Raises
    :class:`BoardBusyError` when the board serves another session and
    :class:`HandshakeError` on a key mismatch, a failed proof of the secret or
    a peer that is not a board, and when TLS fails.
    """
    where = "%s:%d" % (host, port)
    tls = tls if tls is not None else TlsConfig.from_env()
    credentials = Credentials(secret if secret is not None else secret_from(), tls)
    sock = socket.create_connection((host, port), timeout=connect_timeout)
    try:
        tune(sock)
        keep_alive(sock)  # a board that vanished is noticed in about 90 s, even without a session timeout
        if tls.enabled:
            sock = tls.wrap_client(sock, host)
        opening = Connector(Kind.DATA, credentials.secret, encode_hello("client", key, session_timeout))
        event = open_socket(sock, opening, connect_timeout)
        if isinstance(event, Refused):
            if event.reply.code == CODE_BUSY:
                raise BoardBusyError(event.reply.text)
            if event.reply.code == CODE_MISMATCH:
                raise HandshakeError("the board at %s refused key %r (key mismatch)" % (where, key))
            raise HandshakeError("the board at %s %s" % (where, event.reason))
        assert isinstance(event, Opened) and event.reply is not None
        sock.settimeout(None)
        text = event.reply.text.split()
        board_key = text[0].partition(":")[2] if text else ""  # "server:KEY [-options]"
        return RemoteSession(sock, host, port, board_key, event.leftover, session_timeout)
    except (OpeningClosed, ConnectionResetError):  # reset: it closed without reading what we sent
        sock.close()
        hint = _closed_hint(credentials)
        raise HandshakeError("the board at %s closed the connection during the handshake%s" % (where, hint)) from None
    except socket.timeout as exc:
        sock.close()
        raise HandshakeError("the board at %s: %s" % (where, exc or "no handshake reply")) from None
    except (AuthError, TlsError) as exc:
        sock.close()
        raise HandshakeError("the board at %s: %s" % (where, exc)) from None
    except ProtocolError as exc:
        sock.close()
        raise HandshakeError("the peer at %s is not a board: %s" % (where, exc)) from None
    except BaseException:
        sock.close()
        raise


def _closed_hint(credentials: Credentials) -> str:
    """Why a board may close the connection in the handshake, from what this end did not use."""
    hints = []
    if credentials.secret is None:
        hints.append("a farm with a secret does so: set %s" % SECRET_ENV)
    if not credentials.tls_enabled:
        hints.append("a board with TLS does so: set %s" % TLS_ENV["ca"])
    return " (%s)" % "; ".join(hints) if hints else ""


def _text(value: Any) -> str:
    """A text field of a board's reply: as sent if it is a string, else its JSON (a hostile board's list, say)."""
    return value if isinstance(value, str) else json.dumps(value)


def _as_host_array(data: Any) -> np.ndarray:
    """A C-contiguous, native-byte-order ndarray of a supported dtype."""
    array = np.asarray(data)
    _dtype(array.dtype)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def _byte_view(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # ndarray exports its buffer


def _shape(shape: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(dim, (int, np.integer)) and dim >= 0 for dim in dims):
        raise ArgumentError("shape %r is not a sequence of non-negative integers" % (shape,))
    return tuple(int(dim) for dim in dims)


def _dtype(dtype: Any) -> np.dtype:
    resolved = np.dtype(dtype)
    if resolved.name not in DTYPE_SIZES:
        raise ArgumentError("dtype %s is not supported; supported: %s" % (resolved, ", ".join(SUPPORTED_DTYPES)))
    return resolved


class RemoteSession:
    """A session on one board; use :func:`connect` to open one. Closing it frees the board."""

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        port: int,
        key: str,
        leftover: bytes = b"",
        session_timeout: Optional[float] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.key = key
        self._conn = FramedSocket(sock, FrameReader(), initial=leftover)
        self._reply = bytearray(RESULT_FRAME_SIZE)  # a call's usual reply is received here
        self._next_id = 1
        self._release: List[int] = []
        self._closed = False
        self._lost: Optional[SessionLostError] = None
        self._info: Optional[Dict[str, Any]] = None
        self._pipeline = Pipeline(self)
        self._pipelining: Optional[List[CallFuture]] = None  # inside ``with session.pipeline()``: its calls
        #: When the session started and ended by the board's clock (``time.time()``), once it ended.
        self.board_interval: Optional[Tuple[float, float]] = None
        self.session_timeout = session_timeout
        #: Seconds a send or receive may wait: past the session timeout the board ends the session (0: no bound).
        bounded = session_timeout is not None and 0 < session_timeout < 1e9  # not NaN, not infinite
        self.silence_limit = math.ceil(session_timeout + SESSION_END_GRACE) if bounded else 0  # type: ignore[operator]
        if self.silence_limit and is_tls(sock):  # its reads retry what SO_RCVTIMEO cuts short: a socket timeout
            sock.settimeout(self.silence_limit)
        elif self.silence_limit:  # cost-free in the kernel, unlike a socket timeout's poll before each receive
            timeval = struct.pack("ll", self.silence_limit, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "lost" if self._lost else "open"
        return "<RemoteSession %r at %s:%d, %s>" % (self.key, self.host, self.port, state)

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- requests -------------------------------------------------------------

    def _request(
        self, op: int, meta: Optional[dict] = None, payload: Any = b"", into: Optional[memoryview] = None
    ) -> Frame:
        if self._pipeline.in_flight:  # the replies to pipelined calls come first
            self._pipeline.collect()
        return self._receive_reply(self._send_request(op, meta, payload), into)

    def _send_request(self, op: int, meta: Optional[dict], payload: Any) -> int:
        """Send one request; its request id."""
        if self._lost is not None:
            raise self._lost
        if self._closed:
            raise RemoteError("the session with %s:%d is closed" % (self.host, self.port))
        if self._release:
            meta = dict(meta or {}, release=self._release[:MAX_RELEASE])
            del self._release[:MAX_RELEASE]
        request_id = self._next_id
        self._next_id = request_id % 0xFFFFFFFF + 1
        try:
            self._conn.send(op, request_id, meta, payload)
        except (OSError, ProtocolError) as exc:
            raise self._connection_lost("sending a request", exc) from None
        except BaseException:
            self._abandon()
            raise
        return request_id

    def _receive_reply(self, request_id: int, into: Optional[memoryview] = None) -> Frame:
        """The reply to ``request_id``, the next frame on the connection (its payload received into ``into`` if the
        sizes match); a board's error or a lost connection raised as an exception."""
        try:
            frame = self._conn.recv() if into is None else self._recv_into(into)
        except (OSError, ProtocolError) as exc:
            raise self._connection_lost("waiting for a reply", exc) from None
        except BaseException:  # KeyboardInterrupt, a test timeout: the stream is mid-request, give it up
            self._abandon()
            raise
        if frame.op == _RESULT and frame.request_id == request_id:
            return frame
        return self._check_reply(frame, request_id)

    def _call(self, call: CallFrame, values: Sequence[Any]) -> Any:
        """The value a CALL of ``call`` filled with ``values`` returned (see :meth:`RemoteFunction.__call__`).

        The fast path sends the frame from its buffer and receives the usual reply with one receive into a
        buffer kept for it; a reply of any other kind goes on to the general reader and its checks. A session
        with anything else to do first (pipelined replies to collect, arrays to release, a receive buffer with
        bytes in it, a lost or closed session) takes the general path from the start.
        """
        conn = self._conn
        if (
            self._pipeline.in_flight
            or self._release
            or self._lost is not None
            or self._closed
            or not conn.reader.empty
        ):
            return self._call_result(self._request(_CALL, None, call.payload(values)))
        request_id = self._next_id
        self._next_id = request_id % 0xFFFFFFFF + 1
        try:
            conn.sock.sendall(call.fill(request_id, values))
        except (OSError, ProtocolError) as exc:
            raise self._connection_lost("sending a request", exc) from None
        except BaseException:
            self._abandon()
            raise
        reply = self._reply
        try:
            count = conn.sock.recv_into(reply, RESULT_FRAME_SIZE)
        except OSError as exc:
            raise self._connection_lost("waiting for a reply", exc) from None
        except BaseException:
            self._abandon()
            raise
        if count == RESULT_FRAME_SIZE:
            value = read_result_frame(reply, request_id)
            if value is not NOT_A_RESULT:
                return value
        return self._call_result(self._reply_after(request_id, memoryview(reply)[:count]))

    def _compiled_call(self, path: Any, args: Sequence[Any], decode: Callable[[Frame], Any]) -> Any:
        """The value of a call on its compiled path (:mod:`farm.client.callpath`), a reply other than its plain
        RESULT read by the general reader and ``decode``; :data:`~farm.client.callpath.BAIL` for the Python path
        to take the call (arguments the plan does not cover, or a session with anything else to do first)."""
        if (
            self._pipelining is not None
            or self._pipeline.in_flight
            or self._release
            or self._lost is not None
            or self._closed
            or not self._conn.reader.empty
        ):
            return BAIL
        request_id = self._next_id
        try:
            value = path.call(request_id, args)
        except OSError as exc:
            raise self._connection_lost("waiting for a reply" if path.sent else "sending a request", exc) from None
        except BaseException:
            self._abandon()
            raise
        if value is BAIL:
            return BAIL
        self._next_id = request_id % 0xFFFFFFFF + 1
        if value is NOT_A_RESULT:
            return decode(self._reply_after(request_id, path.received_bytes()))
        return value

    def _reply_after(self, request_id: int, received: Any) -> Frame:
        """The reply to call ``request_id`` of which ``received`` came first, read by the general reader."""
        conn = self._conn
        try:
            if not received:
                raise ConnectionClosed(False)
            conn.reader.push(received)
            frame = conn.recv()
        except (OSError, ProtocolError) as exc:
            raise self._connection_lost("waiting for a reply", exc) from None
        except BaseException:
            self._abandon()
            raise
        if frame.op != _RESULT or frame.request_id != request_id:
            frame = self._check_reply(frame, request_id)
        return frame

    def _call_result(self, frame: Frame) -> Any:
        """The value in the RESULT of a call; a result that makes no sense gives the session up."""
        try:
            return decode_result(frame.payload)
        except ProtocolError as exc:
            raise self._broken_reply("a call result that makes no sense (%s)" % exc) from None

    def _send_pipelined(self, op: int, payload: Any, decode: Callable[[Frame], Any], description: str) -> CallFuture:
        """Send a request without waiting for its reply: a future of ``decode(reply)``."""
        if len(self._pipeline) >= MAX_IN_FLIGHT:
            self._pipeline.collect(until=self._pipeline.in_flight[MAX_IN_FLIGHT // 2][1])
        if self._pipelining is None and (self._pipeline.number == 0 or self._pipeline.broken):
            self._start_pipeline()
        future = CallFuture(self, description)
        self._pipeline.add(self._send_request(op, None, payload), future, decode)
        if self._pipelining is not None:
            self._pipelining.append(future)
        return future

    def _start_pipeline(self) -> None:
        """Begin a pipeline on the board: a failure in an earlier one no longer stops the calls that follow."""
        self._pipeline.number += 1
        self._pipeline.broken = False
        marker = CallFuture(self, "the start of pipeline %d" % self._pipeline.number)
        self._pipeline.add(self._send_request(Op.PIPELINE, None, b""), marker, lambda frame: None)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """Calls made inside the block are sent without waiting for their replies and return futures.

        Replies keep their order. When a call fails, its future holds the error and the board runs none of the
        calls after it in the block (their futures hold :class:`SkippedCallError`). On leaving the block every
        reply has come back, and the first error is raised unless the block itself raised.
        """
        if self._pipelining is not None:
            raise RemoteError("pipelines do not nest: this session is in one already")
        self._start_pipeline()
        calls: List[CallFuture] = []
        self._pipelining = calls
        try:
            yield
        finally:
            self._pipelining = None
        self._pipeline.collect()
        for future in calls:
            error = future.exception()
            if error is not None:
                raise error

    def _recv_into(self, into: memoryview) -> Frame:
        """The next frame, its payload received straight into ``into`` if the sizes match."""
        reader = self._conn.reader
        default_allocate = reader.allocate
        reader.allocate = lambda _op, _meta, nbytes: into if nbytes == into.nbytes else None
        try:
            return self._conn.recv()
        finally:
            reader.allocate = default_allocate

    def _check_reply(self, frame: Frame, request_id: int) -> Frame:
        if frame.op == Op.SESSION_END:
            raise self._session_ended(frame.meta)
        if frame.op == Op.ERROR:
            remote_type, message, remote_traceback = (
                _text(frame.meta.get(field, "")) for field in ("type", "message", "traceback")
            )
            error_class = _REMOTE_ERRORS.get(remote_type, RemoteError)
            error = error_class("%s: %s" % (remote_type or "Error", message), remote_type, remote_traceback)
            if remote_type != "ProtocolError":
                raise error
            raise self._end(SessionLostError("the board ended the session: %s" % error))  # after protocol errors
        if frame.op != Op.RESULT or frame.request_id != request_id:
            raise self._connection_lost(
                "reading a reply", ProtocolError("unexpected frame %d for request %d" % (frame.op, frame.request_id))
            )
        return frame

    def _note_end(self, notice: dict) -> None:
        started, ended = notice.get("started"), notice.get("ended")
        if isinstance(started, (int, float)) and isinstance(ended, (int, float)):
            self.board_interval = (float(started), float(ended))

    def _session_ended(self, notice: dict) -> SessionLostError:
        self._note_end(notice)
        board = "%r (%s)" % (self.key, notice["board"]) if notice.get("board") else repr(self.key)
        message = "session on board %s at %s:%d ended: %s" % (board, self.host, self.port, notice.get("message", ""))
        return self._end(
            SessionLostError(
                message,
                signal=notice.get("signal"),
                exit_code=notice.get("exit_code"),
                timed_out=bool(notice.get("timed_out")),
            )
        )

    def _connection_lost(self, doing: str, exc: BaseException) -> SessionLostError:
        """Turn a broken connection into a :class:`SessionLostError`, with the board's notice if it sent one."""
        silent = isinstance(exc, socket.timeout) or (isinstance(exc, OSError) and would_block(exc))
        if silent and self.silence_limit:  # SO_RCVTIMEO or SO_SNDTIMEO ran out, or a TLS socket's timeout
            where = "board %r at %s:%d" % (self.key, self.host, self.port)
            self._lost = SessionLostError(
                "%s went silent while %s: nothing for %d s, past the session timeout of %g s it had to end the "
                "session by; the board hangs, or the network to it is down"
                % (where, doing, self.silence_limit, self.session_timeout)  # type: ignore[str-format]  # bounded
            )
            self._conn.close()  # no point waiting for it
            return self._lost
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionClosed):
            try:
                self._conn.sock.settimeout(1.0)
                frame = self._conn.recv()
                if frame.op == Op.SESSION_END:
                    return self._session_ended(frame.meta)
            except (OSError, ProtocolError):
                pass
        why = "connection closed" if isinstance(exc, ssl.SSLEOFError) else exc  # TLS's word for the same
        message = "connection to board %r at %s:%d lost while %s: %s" % (self.key, self.host, self.port, doing, why)
        return self._end(SessionLostError(message))

    def _abandon(self) -> None:
        """Leave a session interrupted mid-request: close at once; the board sees the hang-up and ends it."""
        self._lost = SessionLostError(
            "the session on board %r at %s:%d was abandoned in the middle of a request"
            % (self.key, self.host, self.port)
        )
        self._conn.close()

    def _broken_reply(self, what: str) -> SessionLostError:
        """The board answered nonsense: give up on the session at once (no point waiting for it)."""
        self._lost = SessionLostError("board %r at %s:%d sent %s" % (self.key, self.host, self.port, what))
        self._conn.close()
        return self._lost

    def _reply_field(self, frame: Frame, name: str, kind: type) -> Any:
        """A field of the board's reply, of type ``kind``; a board that sends anything else is given up."""
        value = frame.meta.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self._broken_reply("a reply whose field %r is not of type %s" % (name, kind.__name__))
        return value

    def _end(self, error: SessionLostError) -> SessionLostError:
        """Mark the session lost and let the board finish with it before closing."""
        self._lost = error
        self._drain(BOARD_CLEANUP_TIMEOUT)
        self._conn.close()
        return error

    def _drain(self, timeout: float) -> None:
        """Read until the board closes the connection, which it does once the session is gone and it is free."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                frame = self._conn.recv()
                if frame.op == Op.SESSION_END:
                    self._note_end(frame.meta)
        except (OSError, ProtocolError):
            pass

    def close(self) -> None:
        """End the session; returns once the board has cleaned up and is free for the next client."""
        if self._closed:
            return
        self._closed = True
        if self._lost is None:
            try:
                self._conn.send(Op.CLOSE, self._next_id)
            except OSError:
                pass
            self._drain(BOARD_CLEANUP_TIMEOUT)
        self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._lost is not None

    def ping(self) -> None:
        """One round trip to the board and back."""
        self._request(Op.PING)

    def system_info(self) -> Dict[str, Any]:
        """The board's architecture, OS, Python version, hostname, key and server version."""
        self._info = dict(self._request(Op.SYSTEM_INFO).meta)
        return dict(self._info)

    def _board_info(self) -> Dict[str, Any]:
        """``system_info()`` as first read in this session."""
        return self._info if self._info is not None else self.system_info()

    def _board(self) -> Dict[str, Any]:
        """Which board this is, as a benchmark result names it."""
        return {
            "key": self.key,
            "name": _text(self._board_info().get("name", "")),
            "address": "%s:%d" % (self.host, self.port),
        }

    def _c_type_sizes(self) -> Dict[str, int]:
        """The board's sizes of C types (``long``: 8), the integer ones it reported."""
        sizes = self._board_info().get("c_type_sizes")
        if not isinstance(sizes, dict):
            return {}
        return {str(name): size for name, size in sizes.items() if type(size) is int}

    def _check_device(self, device: Optional[RemoteDevice]) -> None:
        if device is not None and (device.session is not self or device.device_type != "cpu"):
            raise ArgumentError("%r is not a device of this session; use session.cpu()" % (device,))

    def _check_byteorder(self) -> None:
        board = self._board_info().get("byteorder", sys.byteorder)
        if board != sys.byteorder:
            raise FarmError(
                "board %r is %s-endian and this host is %s-endian; arrays would arrive byte-swapped"
                % (self.key, board, sys.byteorder)
            )

    # --- files -----------------------------------------------------------------

    def upload(self, data: Union[PathLike, bytes, bytearray, memoryview], target: Optional[str] = None) -> str:
        """Copy a host file (or bytes) into the session directory; returns its name there."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            if not target:
                raise ArgumentError("upload of bytes needs a target name")
            return self._reply_field(self._request(Op.UPLOAD, {"name": target}, data), "name", str)
        path = os.fspath(data)
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            contents = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            reply = self._request(Op.UPLOAD, {"name": target or os.path.basename(path)}, contents)
            return self._reply_field(reply, "name", str)
        finally:
            if size:
                try:
                    contents.close()  # type: ignore[union-attr]  # a file with bytes in it: a mapping
                except BufferError:
                    pass  # a failed send's traceback still holds a view; the map closes when that goes

    def download(self, name: str) -> bytes:
        """The contents of a file in the session directory."""
        return bytes(self._request(Op.DOWNLOAD, {"name": name}).payload)

    def remove(self, name: str) -> None:
        """Delete a file or directory in the session directory."""
        self._request(Op.REMOVE, {"name": name})

    def listdir(self, name: str = ".") -> List[str]:
        """Sorted names in a directory of the session (default: its top)."""
        payload = bytes(self._request(Op.LISTDIR, {"name": name}).payload)
        try:
            names = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self._broken_reply("a LISTDIR reply that is not JSON: %s" % str(exc)[:200]) from None
        if not isinstance(names, list) or not all(isinstance(entry, str) for entry in names):
            raise self._broken_reply("a LISTDIR reply that is not a list of names")
        return names

    # --- native code -----------------------------------------------------------

    def load_module(self, name: str) -> RemoteModule:
        """Load an uploaded shared library on the board."""
        return RemoteModule(self, self._reply_field(self._request(Op.LOAD_MODULE, {"name": name}), "id", int), name)

    # --- arrays ----------------------------------------------------------------

    def cpu(self, index: int = 0) -> RemoteDevice:
        """The board's CPU, for code written in TVM's style (``remote.cpu()``)."""
        return RemoteDevice(self, "cpu", index)

    def array(self, data: Any, device: Optional[RemoteDevice] = None) -> RemoteArray:
        """Copy a host array to the board (made contiguous on the way)."""
        self._check_device(device)
        host = _as_host_array(data)
        self._check_byteorder()
        meta = {"shape": list(host.shape), "dtype": host.dtype.name}
        array_id = self._reply_field(self._request(Op.ARRAY_NEW, meta, _byte_view(host)), "id", int)
        return RemoteArray(self, array_id, host.shape, host.dtype)

    def empty(
        self, shape: Union[int, Sequence[int]], dtype: Any = "float32", device: Optional[RemoteDevice] = None
    ) -> RemoteArray:
        """A zero-filled array on the board."""
        self._check_device(device)
        dims, resolved = _shape(shape), _dtype(dtype)
        self._check_byteorder()
        reply = self._request(Op.ARRAY_EMPTY, {"shape": list(dims), "dtype": resolved.name})
        array_id = self._reply_field(reply, "id", int)
        return RemoteArray(self, array_id, dims, resolved)

    def _release_later(self, array_id: int) -> None:
        if not self.closed:
            self._release.append(array_id)

    # --- Python ----------------------------------------------------------------

    def run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``function(*args, **kwargs)`` in the board's Python and return its result, which must be data.

        The function travels with cloudpickle, which the board needs too. The
        result comes back data only (:mod:`farm.protocol.values`): None, bool,
        int, float, complex, str, bytes, lists, tuples, dicts, sets and
        frozensets of them, numpy arrays and scalars of bool, integer, float or
        complex dtype. Anything else is a :class:`DataError` naming its type;
        nothing the board sends runs on this host.
        """
        frame = self._run_request(function, args, kwargs, None)
        try:
            return decode_value(frame.payload, self._conn.reader.max_payload)
        except DataError as exc:
            raise self._broken_reply("a run() result that is not data: %s" % exc) from None

    def run_trusted(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`run` for results of any type, pickled on the board and unpickled here.

        Unpickling runs whatever code the pickle names: use this only with a
        board you trust as much as this host. Anyone who can answer as the
        board (whoever registered a board under its key, code an earlier
        session left on it, a stolen TLS key) can then run code on this host.
        """
        frame = self._run_request(function, args, kwargs, {"result": RESULT_PICKLE})
        return pickle.loads(frame.payload)

    def _run_request(self, function: Any, args: tuple, kwargs: dict, meta: Optional[dict]) -> Frame:
        import cloudpickle

        payload = cloudpickle.dumps((function, args, kwargs), protocol=PICKLE_PROTOCOL)
        return self._request(Op.RUN, meta, payload)


class RemoteDevice:
    """A device of the board, as TVM's ``remote.cpu()`` returns."""

    def __init__(self, session: RemoteSession, device_type: str, index: int) -> None:
        self.session = session
        self.device_type = device_type
        self.index = index

    def __repr__(self) -> str:
        return "remote %s(%d) on %r" % (self.device_type, self.index, self.session)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteDevice) and (other.session, other.device_type, other.index) == (
            self.session,
            self.device_type,
            self.index,
        )

    def __hash__(self) -> int:
        return hash((id(self.session), self.device_type, self.index))

    def array(self, data: Any) -> RemoteArray:
        return self.session.array(data, self)

    def empty(self, shape: Union[int, Sequence[int]], dtype: Any = "float32") -> RemoteArray:
        return self.session.empty(shape, dtype, self)

    def sync(self) -> None:
        """Wait for work on the device to finish: calls are synchronous, so this is a round trip."""
        self.session.ping()


class RemoteArray:
    """An array in the board's memory; freed when dropped or when the session ends."""

    def __init__(self, session: RemoteSession, array_id: int, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self.session = session
        self.id = array_id
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.dtype_name = self.dtype.name
        self._finalizer = weakref.finalize(self, session._release_later, array_id)

    def __repr__(self) -> str:
        return "<RemoteArray %d shape=%s dtype=%s on %r>" % (self.id, self.shape, self.dtype, self.session.key)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def device(self) -> RemoteDevice:
        return self.session.cpu()

    def numpy(self) -> np.ndarray:
        """Copy the array back to the host."""
        out = np.empty(self.shape, self.dtype)
        view = _byte_view(out)
        frame = self.session._request(Op.ARRAY_READ, {"id": self.id}, into=view)
        if len(frame.payload) != out.nbytes:
            raise self.session._broken_reply("%d bytes for a %d-byte array" % (len(frame.payload), out.nbytes))
        return out

    asnumpy = numpy

    def copyfrom(self, data: Any) -> RemoteArray:
        """Overwrite the array's contents with a host array of the same shape and dtype."""
        host = _as_host_array(data)
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ArgumentError(
                "copyfrom needs shape %s %s, got %s %s" % (self.shape, self.dtype, host.shape, host.dtype)
            )
        self.session._request(Op.ARRAY_WRITE, {"id": self.id}, _byte_view(host))
        return self


class RemoteModule:
    """A shared library loaded on the board."""

    def __init__(self, session: RemoteSession, module_id: int, name: str) -> None:
        self.session = session
        self.id = module_id
        self.name = name
        self._functions: Dict[Tuple[str, Optional[str]], RemoteFunction] = {}

    def __repr__(self) -> str:
        return "<RemoteModule %s on %r>" % (self.name, self.session.key)

    def __getitem__(self, name: str) -> RemoteFunction:
        return self.get_function(name)

    def get_function(self, name: str, signature: Optional[str] = None) -> RemoteFunction:
        """Look up a function; a C-like ``signature`` fixes its argument and return types."""
        cached = self._functions.get((name, signature))
        if cached is not None:
            return cached
        parsed = parse_signature(signature, self.session._c_type_sizes()) if signature else None
        meta = {"module": self.id, "name": name, "signature": signature or ""}
        function_id = self.session._reply_field(self.session._request(Op.GET_FUNCTION, meta), "id", int)
        function = RemoteFunction(self.session, function_id, name, parsed)
        self._functions[(name, signature)] = function
        return function

    def time_evaluator(
        self,
        func_name: str,
        dev: Optional[RemoteDevice] = None,
        *args: Any,
        signature: Optional[str] = None,
        **kwargs: Any,
    ) -> Callable[..., BenchmarkResult]:
        """TVM's ``Module.time_evaluator``: see :meth:`RemoteFunction.time_evaluator` for the options;
        ``signature`` as in :meth:`get_function`."""
        return self.get_function(func_name, signature).time_evaluator(dev, *args, **kwargs)


class RemoteFunction:
    """A native function on the board; call it with remote arrays, ints and floats."""

    def __init__(self, session: RemoteSession, function_id: int, name: str, signature: Optional[Signature]) -> None:
        self.session = session
        self.id = function_id
        self.name = name
        self.signature = signature
        self._returns_bool = signature is not None and signature.restype.kind == "bool"
        self._frames: Dict[str, CallFrame] = {}  # by argument tags: the CALL frame, built once
        self._path = compiled_path(session._conn.sock, function_id, session, RemoteArray, signature,
                                   self._returns_bool)  # fmt: skip
        self._decode = self._result

    def _encode_argument(self, index: int, arg: Any) -> Tuple[str, Any]:
        """Tag and value of an argument of a less usual type (the common ones are inlined in ``__call__``)."""
        if isinstance(arg, RemoteArray):
            if arg.session is not self.session:
                raise ArgumentError("argument %d is an array of another session" % (index + 1))
            return "a", arg.id
        if arg is None:
            return "n", 0
        if isinstance(arg, (float, np.floating)):
            return "f", float(arg)
        if isinstance(arg, (int, np.integer, np.bool_)):
            value = int(arg)
            return tag_of(value), value
        if isinstance(arg, np.ndarray):
            raise ArgumentError(
                "argument %d is a host numpy array; copy it to the board first with session.array()" % (index + 1)
            )
        raise ArgumentError(
            "argument %d has type %s; pass remote arrays, ints or floats" % (index + 1, type(arg).__name__)
        )

    def __repr__(self) -> str:
        return "<RemoteFunction %s>" % (self.signature.text if self.signature else self.name)

    def __call__(self, *args: Any) -> Any:
        """Call the function on the board and return its result (inside ``session.pipeline()``: a future of it)."""
        session = self.session
        if self._path is not None:
            result = session._compiled_call(self._path, args, self._decode)
            if result is not BAIL:
                return result
        tags, values = self._arguments(args)
        if session._pipelining is not None:
            payload = encode_call(self.id, tags, values)
            return session._send_pipelined(_PIPELINED_CALL, payload, self._result, self.name + "()")
        call = self._frames.get(tags) or self._frame(tags)
        result = session._call(call, values)
        if self._returns_bool and result is not None:
            return bool(result)
        return result

    def _frame(self, tags: str) -> CallFrame:
        """The CALL frame for arguments tagged ``tags``, built and kept (a few shapes per function at most)."""
        if len(self._frames) >= _FRAMES_PER_FUNCTION:
            self._frames.clear()
        call = self._frames[tags] = CallFrame(_CALL, self.id, tags)
        return call

    def submit(self, *args: Any) -> CallFuture:
        """Send the call without waiting for its reply; a future of its result (see ``session.pipeline()``)."""
        return self.session._send_pipelined(_PIPELINED_CALL, self._payload(args), self._result, self.name + "()")

    def _result(self, frame: Frame) -> Any:
        result = self.session._call_result(frame)
        if self._returns_bool and result is not None:
            return bool(result)
        return result

    def _payload(self, args: Sequence[Any]) -> bytes:
        """The CALL payload of ``args``, checked against the signature; ArgumentError before anything is sent."""
        return encode_call(self.id, *self._arguments(args))

    def _arguments(self, args: Sequence[Any]) -> Tuple[str, List[Any]]:
        """The tags and values of ``args``, checked against the signature; ArgumentError before anything is sent."""
        tags: List[str] = []
        values: List[Any] = []
        dtypes: List[Optional[str]] = []
        for arg in args:
            kind = type(arg)
            if kind is RemoteArray and arg.session is self.session:
                tags.append("a")
                values.append(arg.id)
                dtypes.append(arg.dtype_name)
                continue
            if kind is int and -(1 << 63) <= arg < (1 << 63):
                tags.append("i")
                values.append(arg)
            elif kind is float:
                tags.append("f")
                values.append(arg)
            else:
                tag, value = self._encode_argument(len(tags), arg)
                tags.append(tag)
                values.append(value)
                if tag == "a":
                    dtypes.append(arg.dtype_name)
                    continue
            dtypes.append(None)
        tag_string = "".join(tags)
        if self.signature is not None:
            self.signature.check(tag_string, dtypes, values)
        if len(tag_string) > MAX_ARGS:
            raise ArgumentError("a call takes at most %d arguments, got %d" % (MAX_ARGS, len(tag_string)))
        return tag_string, values

    def time_evaluator(
        self,
        dev: Optional[RemoteDevice] = None,
        number: int = 10,
        repeat: int = 1,
        min_repeat_ms: int = 0,
        limit_zero_time_iterations: int = 100,
        cooldown_interval_ms: int = 0,
        repeats_to_cooldown: int = 1,
        cache_flush_bytes: int = 0,
        f_preproc: str = "",
        *,
        pin_cpu: Optional[int] = None,
    ) -> Callable[..., BenchmarkResult]:
        """A callable that times this function on the board, as TVM's ``time_evaluator`` does.

        Called with the function's arguments, it runs the function once to warm
        up, then ``repeat`` times ``number`` runs (``number`` grows until one
        repeat lasts ``min_repeat_ms``), all in a loop on the board, and returns
        a :class:`BenchmarkResult` of seconds per run with the board's state.
        ``pin_cpu`` runs the loop on that CPU. Bad options raise ArgumentError here.
        """
        self.session._check_device(dev)
        options = timing_options(
            dict(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                 limit_zero_time_iterations=limit_zero_time_iterations, cooldown_interval_ms=cooldown_interval_ms,
                 repeats_to_cooldown=repeats_to_cooldown, cache_flush_bytes=cache_flush_bytes, f_preproc=f_preproc,
                 pin_cpu=pin_cpu)
        )  # fmt: skip
        return lambda *args: self._time(options, args)

    def _time(self, options: TimingOptions, args: Sequence[Any]) -> BenchmarkResult:
        frame = self.session._request(Op.TIME, options.to_meta(), self._payload(args))
        try:
            return BenchmarkResult.from_reply(frame.meta, self.name, self.session._board(), options.repeat)
        except ValueError as exc:
            raise self.session._broken_reply("a timing reply that makes no sense (%s)" % exc) from None
