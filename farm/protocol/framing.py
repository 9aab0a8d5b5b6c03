"""Data-plane framing after the handshake, sans-IO.

A frame is a fixed 20-byte little-endian header, a JSON metadata object and
a raw payload::

    magic "RD" | version u8 | op u8 | request id u32 | meta length u32 | payload length u64
    meta (UTF-8 JSON object, may be empty)
    payload (raw bytes: array contents, file contents, pickles)

:func:`encode_frame` returns the pieces to hand to ``sendmsg`` without joining
them, so array bytes are never copied on the way out. :class:`FrameReader`
tells the I/O layer where the next bytes should go (:meth:`FrameReader.writable`)
so that payloads land with ``recv_into`` directly in the buffer that keeps
them: a numpy array on the host, the array's storage on the board.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from typing import Callable, Deque, List, NamedTuple, Optional, Union

from ..errors import ProtocolError

FRAME_MAGIC = b"RD"
VERSION = 1
HEADER = struct.Struct("<2sBBIIQ")

DEFAULT_MAX_META = 1 << 20
DEFAULT_MAX_PAYLOAD = 4 << 30
_CHUNK = 1 << 16

Buffer = Union[bytes, bytearray, memoryview]
#: ``allocate(op, meta, nbytes)`` returns a writable buffer of exactly ``nbytes``.
Allocator = Callable[[int, dict, int], Buffer]


class Frame(NamedTuple):
    op: int
    request_id: int
    meta: dict
    payload: Buffer


def encode_frame(op: int, request_id: int, meta: Optional[dict] = None, payload: Buffer = b"") -> List[Buffer]:
    """Header and metadata as one ``bytes``, followed by the payload if there is one."""
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8") if meta else b""
    size = memoryview(payload).nbytes
    head = HEADER.pack(FRAME_MAGIC, VERSION, op, request_id, len(meta_bytes), size) + meta_bytes
    return [head, payload] if size else [head]


def _allocate_bytearray(op: int, meta: dict, nbytes: int) -> bytearray:
    return bytearray(nbytes)


class FrameReader:
    """Turns received bytes into :class:`Frame` events.

    Two ways to give it bytes: ``push(data)`` or ``feed(data)`` copy them in; or receive
    straight into ``writable()`` and report the count with ``advance(n)``.
    Either way, completed frames come out of ``next_frame()``.
    Anything malformed raises :class:`ProtocolError`, after which the
    reader must be dropped with its connection.
    """

    def __init__(
        self,
        max_meta: int = DEFAULT_MAX_META,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        allocate: Allocator = _allocate_bytearray,
    ) -> None:
        self.max_meta = max_meta
        self.max_payload = max_payload
        self.allocate = allocate
        self._buf = bytearray(_CHUNK)
        self._start = 0
        self._end = 0
        self._header: Optional[tuple] = None
        self._meta: Optional[dict] = None
        self._payload: Optional[memoryview] = None
        self._filled = 0
        self._frames: Deque[Frame] = deque()

    @property
    def request_id(self) -> int:
        """The request id of the frame being read, or 0 before its header arrived."""
        return self._header[3] if self._header else 0

    @property
    def pending(self) -> bool:
        """True while part of a frame has been received but not all of it."""
        return self._header is not None or self._end > self._start

    def writable(self) -> memoryview:
        """The buffer the next received bytes should be written into.

        The view is valid until the next call to ``advance``; drop it by then.
        """
        if self._payload is not None:
            return self._payload[self._filled :]
        need = HEADER.size if self._header is None else self._header[4]
        if self._start and len(self._buf) - self._start < max(need, _CHUNK // 2):
            self._buf[: self._end - self._start] = self._buf[self._start : self._end]
            self._end -= self._start
            self._start = 0
        if len(self._buf) < need:
            self._buf.extend(bytes(need - len(self._buf)))
        return memoryview(self._buf)[self._end :]

    def advance(self, count: int) -> None:
        """Record that ``count`` bytes were written into ``writable()``."""
        if self._payload is not None:
            self._filled += count
        else:
            self._end += count
        self._parse()

    def push(self, data: Buffer) -> None:
        """Copy ``data`` in; completed frames wait in ``next_frame()``."""
        view = memoryview(data).cast("B")
        while view:
            target = self.writable()
            count = min(len(target), len(view))
            target[:count] = view[:count]
            view = view[count:]
            del target  # a live view would stop the buffer from growing
            self.advance(count)

    def feed(self, data: Buffer) -> List[Frame]:
        """Copy ``data`` in and return every frame completed so far."""
        self.push(data)
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def next_frame(self) -> Optional[Frame]:
        """The oldest completed frame, or None."""
        return self._frames.popleft() if self._frames else None

    def _parse(self) -> None:
        while True:
            available = self._end - self._start
            if self._header is None:
                if available < HEADER.size:
                    return
                self._header = self._read_header()
            elif self._meta is None:
                meta_len = self._header[4]
                if available < meta_len:
                    return
                self._meta = self._read_meta(meta_len)
                self._start_payload()
            elif self._filled < len(self._payload):
                return
            else:
                header = self._header
                self._frames.append(Frame(header[2], header[3], self._meta, self._payload))
                self._header = self._meta = self._payload = None
                self._filled = 0

    def _read_header(self) -> tuple:
        header = HEADER.unpack_from(self._buf, self._start)
        magic, version, _op, _rid, meta_len, payload_len = header
        if magic != FRAME_MAGIC:
            raise ProtocolError("bad frame magic %r (expected %r)" % (magic, FRAME_MAGIC))
        if version != VERSION:
            raise ProtocolError("unsupported frame version %d (this side speaks %d)" % (version, VERSION))
        if meta_len > self.max_meta:
            raise ProtocolError("frame metadata of %d bytes exceeds the limit of %d" % (meta_len, self.max_meta))
        if payload_len > self.max_payload:
            raise ProtocolError(
                "frame payload of %d bytes exceeds the limit of %d bytes (max message size)"
                % (payload_len, self.max_payload)
            )
        self._start += HEADER.size
        return header

    def _read_meta(self, meta_len: int) -> dict:
        raw = self._buf[self._start : self._start + meta_len]
        self._start += meta_len
        if not raw:
            return {}
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError("frame metadata is not valid JSON: %s" % str(exc)[:200]) from None
        if not isinstance(meta, dict):
            raise ProtocolError("frame metadata is a JSON %s, not an object" % type(meta).__name__)
        return meta

    def _start_payload(self) -> None:
        op, size = self._header[2], self._header[5]
        self._filled = 0
        if not size:
            self._payload = memoryview(b"")
            return
        payload = memoryview(self.allocate(op, self._meta, size)).cast("B")
        if len(payload) != size:
            raise ValueError("allocator returned %d bytes for a %d-byte payload" % (len(payload), size))
        count = min(size, self._end - self._start)
        payload[:count] = self._buf[self._start : self._start + count]
        self._start += count
        self._filled = count
        self._payload = payload
        if self._start == self._end:
            self._start = self._end = 0
