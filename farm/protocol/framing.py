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
import mmap
import struct
from collections import deque
from typing import Any, Callable, Container, Deque, Dict, List, NamedTuple, Optional, Tuple, Union

from ..errors import ProtocolError

FRAME_MAGIC = b"RD"
VERSION = 1
HEADER = struct.Struct("<2sBBIIQ")

DEFAULT_MAX_META = 1 << 20
DEFAULT_MAX_PAYLOAD = 4 << 30
_CHUNK = 1 << 16
#: A payload the reader places itself from this size up goes into an anonymous mapping, whose pages the system
#: provides as bytes arrive: a header announcing a large payload commits no memory before the payload comes.
LAZY_PAYLOAD = 1 << 20

Buffer = Union[bytes, bytearray, memoryview]
#: A frame's metadata: the JSON object between its header and its payload.
Meta = Dict[str, Any]
#: magic, version, op, request id, metadata length, payload size
Header = Tuple[bytes, int, int, int, int, int]
#: ``allocate(op, meta, nbytes)`` returns a writable buffer of exactly ``nbytes`` for a
#: payload to land in, or None to leave it to the reader (a new buffer of its own).
#: A reader without one always uses its own buffers.
Allocator = Callable[[int, Meta, int], Optional[Buffer]]


class Frame(NamedTuple):
    op: int
    request_id: int
    meta: Meta
    payload: Buffer


_ENCODE_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_DECODE_JSON = json.JSONDecoder().decode
_RAW_DECODE_JSON = json.JSONDecoder().raw_decode
_unpack_header: Callable[[Buffer, int], Header] = HEADER.unpack_from
_pack_header = HEADER.pack
INLINE_PAYLOAD = 4096
_EMPTY = b""


def encode_frame(op: int, request_id: int, meta: Optional[Meta] = None, payload: Buffer = b"") -> List[Buffer]:
    """The frame as buffers to send in order: header and metadata, then the payload.

    A small payload is joined to the header (one buffer); a large one stays
    a separate buffer so it is sent from where it lies, without a copy.
    """
    if not meta and type(payload) is bytes and len(payload) <= INLINE_PAYLOAD:  # the call path: one join
        return [_pack_header(FRAME_MAGIC, VERSION, op, request_id, 0, len(payload)) + payload]
    meta_bytes = _ENCODE_JSON(meta).encode("utf-8") if meta else b""
    if len(meta_bytes) > DEFAULT_MAX_META:
        raise ProtocolError("frame metadata of %d bytes exceeds the limit of %d" % (len(meta_bytes), DEFAULT_MAX_META))
    size = len(payload) if type(payload) is bytes else memoryview(payload).nbytes
    head = _pack_header(FRAME_MAGIC, VERSION, op, request_id, len(meta_bytes), size) + meta_bytes
    if size > INLINE_PAYLOAD:
        return [head, payload]
    return [head + bytes(payload)] if size else [head]


class FrameReader:
    """Turns received bytes into :class:`Frame` events.

    Two ways to give it bytes: ``push(data)`` or ``feed(data)`` copy them in; or receive
    straight into ``writable()`` and report the count with ``advance(n)``.
    Either way, completed frames come out of ``next_frame()``.
    Anything malformed raises :class:`ProtocolError`, after which the
    reader must be dropped with its connection.

    Headers and metadata collect in an internal buffer; a payload goes to the
    buffer ``allocate`` returned for it, and while it arrives ``writable()``
    names the rest of that buffer, so large payloads are received in place.
    """

    def __init__(
        self,
        max_meta: int = DEFAULT_MAX_META,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        allocate: Optional[Allocator] = None,
        allocate_for: Optional[Container[int]] = None,
    ) -> None:
        self.max_meta = max_meta
        self.max_payload = max_payload
        self.allocate = allocate
        self.allocate_for = allocate_for  # the ops whose payloads ``allocate`` places (None: all)
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._start = 0  # unparsed bytes are _buf[_start:_end]
        self._end = 0
        self._need = HEADER.size  # bytes from _start the next step needs
        self._frame: Optional[Tuple[int, int, Meta]] = None  # op, request id, meta of the payload arriving
        self._payload: Optional[memoryview] = None
        self._filled = 0
        self._frames: Deque[Frame] = deque()

    @property
    def request_id(self) -> int:
        """The request id of the frame being read, or 0 before its header arrived."""
        if self._frame is not None:
            return self._frame[1]
        if self._end - self._start >= HEADER.size:
            return _unpack_header(self._buf, self._start)[3]
        return 0

    @property
    def pending(self) -> bool:
        """True while part of a frame has been received but not all of it."""
        return self._payload is not None or self._end > self._start

    @property
    def empty(self) -> bool:
        """True when every byte received has been read out as frames: the next frame is all still to come."""
        return not self._frames and self._payload is None and self._end == self._start

    def writable(self) -> memoryview:
        """The buffer the next received bytes should be written into.

        The view is valid until the next call to ``advance``; drop it by then.
        """
        if self._payload is not None:
            return self._payload[self._filled :]
        if not self._end:
            if len(self._buf) < self._need:
                self._make_room()
            return self._view
        if self._end == len(self._buf) or len(self._buf) - self._start < self._need:
            self._make_room()
        return self._view[self._end :]

    def read_frame(self, recv_into: Callable[[memoryview], int]) -> Optional[Frame]:
        """The next whole frame, receiving with ``recv_into(buffer) -> count`` as needed; None at end of stream.

        The I/O stays the caller's (a socket's ``recv_into``, or anything
        alike). When the reader is empty and one read brings exactly one frame
        with a small payload, as calls and their replies do, the frame is
        built directly, without the general parsing path.
        """
        while not self._frames:
            if self._end or self._payload is not None or len(self._buf) < self._need:
                count = recv_into(self.writable())
                if not count:
                    return None
                self.advance(count)
                continue
            count = recv_into(self._view)
            if not count:
                return None
            frame = self.received(count)
            if frame is not None:
                return frame
        return self._frames.popleft()

    def received(self, count: int) -> Optional[Frame]:
        """Take ``count`` bytes that one read put into an empty reader's ``writable()``: the frame, when they are
        exactly one with a small payload (built directly, without the general parsing path); else None, and the
        frames they completed wait in ``next_frame()``."""
        self._end = count  # the general path takes over from here, and request_id reads this frame
        if count < HEADER.size:
            self._parse()
            return None
        _magic, _version, op, request_id, meta_len, size = self._header_at(0)
        head_end = HEADER.size + meta_len
        if count != head_end + size or size > INLINE_PAYLOAD:
            self._parse()
            return None
        meta = self._decode_meta(HEADER.size, head_end) if meta_len else {}
        payload = self._place_payload(op, meta, size, self._view[head_end:count]) if size else _EMPTY
        self._end = 0
        return Frame(op, request_id, meta, payload)  # type: ignore[arg-type]  # all of it arrived: not None

    def advance(self, count: int) -> None:
        """Record that ``count`` bytes were written into ``writable()``."""
        if self._payload is None:
            self._end += count
            self._parse()
            return
        self._filled += count
        if self._filled == len(self._payload):
            op, request_id, meta = self._frame  # type: ignore[misc]
            self._frames.append(Frame(op, request_id, meta, self._payload))
            self._frame = self._payload = None

    def push(self, data: Buffer) -> None:
        """Copy ``data`` in; completed frames wait in ``next_frame()``."""
        view = memoryview(data).cast("B")
        while view:
            target = self.writable()
            count = min(len(target), len(view))
            target[:count] = view[:count]
            view = view[count:]
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

    def _make_room(self) -> None:
        """Move the unparsed bytes to the front of a buffer big enough for the next step."""
        unparsed = self._buf[self._start : self._end]
        if len(self._buf) < self._need:
            self._buf = bytearray(self._need)
            self._view = memoryview(self._buf)
        self._buf[: len(unparsed)] = unparsed
        self._start, self._end = 0, len(unparsed)

    def _parse(self) -> None:
        start, end = self._start, self._end
        while end - start >= HEADER.size:
            self._start = start  # request_id names the frame being parsed if it is refused
            _magic, _version, op, request_id, meta_len, size = self._header_at(start)
            head_end = start + HEADER.size + meta_len
            if head_end > end:
                self._need = HEADER.size + meta_len
                break
            meta = self._decode_meta(start + HEADER.size, head_end) if meta_len else {}
            start = head_end
            arrived = min(size, end - start)
            payload = self._place_payload(op, meta, size, self._view[start : start + arrived]) if size else _EMPTY
            start += arrived
            if payload is None:  # the rest goes straight into the payload's buffer
                self._frame = (op, request_id, meta)
                break
            self._frames.append(Frame(op, request_id, meta, payload))
        else:
            self._need = HEADER.size
        if start == end:
            start = end = 0
        self._start, self._end = start, end

    def _header_at(self, offset: int) -> Header:
        """The header at ``offset`` of the buffer, or :class:`ProtocolError` naming what is wrong with it."""
        header = _unpack_header(self._buf, offset)
        magic, version, _op, _request_id, meta_len, size = header
        if magic != FRAME_MAGIC or version != VERSION or meta_len > self.max_meta or size > self.max_payload:
            self._reject_header(magic, version, meta_len, size)
        return header

    def _place_payload(self, op: int, meta: Meta, size: int, arrived: memoryview) -> Optional[Buffer]:
        """Put a payload's first bytes (``arrived``) where it belongs.

        Returns the payload when ``arrived`` is all of it. Otherwise its buffer
        becomes the one ``writable()`` names until the rest comes, and the
        result is None.
        """
        placed = self.allocate is not None and (self.allocate_for is None or op in self.allocate_for)
        buffer = self.allocate(op, meta, size) if placed else None  # type: ignore[misc]
        if buffer is None:
            if len(arrived) == size:
                return bytes(arrived)  # one copy out of the receive buffer
            try:
                buffer = mmap.mmap(-1, size) if size >= LAZY_PAYLOAD else bytearray(size)
            except (MemoryError, OSError):
                raise ProtocolError("no memory for a payload of %d bytes" % size) from None
        payload = memoryview(buffer).cast("B")
        if len(payload) != size:
            raise ValueError("allocator returned %d bytes for a %d-byte payload" % (len(payload), size))
        payload[: len(arrived)] = arrived
        if len(arrived) == size:
            return payload
        self._payload, self._filled = payload, len(arrived)
        return None

    def _reject_header(self, magic: bytes, version: int, meta_len: int, size: int) -> None:
        if magic != FRAME_MAGIC:
            raise ProtocolError("bad frame magic %r (expected %r)" % (magic, FRAME_MAGIC))
        if version != VERSION:
            raise ProtocolError("unsupported frame version %d (this side speaks %d)" % (version, VERSION))
        if meta_len > self.max_meta:
            raise ProtocolError("frame metadata of %d bytes exceeds the limit of %d" % (meta_len, self.max_meta))
        raise ProtocolError(
            "frame payload of %d bytes exceeds the limit of %d bytes (max message size)" % (size, self.max_payload)
        )

    def _decode_meta(self, begin: int, end: int) -> Meta:
        try:
            text = str(self._view[begin:end], "utf-8")
            try:
                meta, stop = _RAW_DECODE_JSON(text)  # the fast path: no whitespace around the object
            except ValueError:
                stop = -1
            if stop != len(text):
                meta = _DECODE_JSON(text)  # accepts surrounding whitespace, raises on anything else
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError("frame metadata is not valid JSON: %s" % str(exc)[:200]) from None
        if not isinstance(meta, dict):
            raise ProtocolError("frame metadata is a JSON %s, not an object" % type(meta).__name__)
        return meta
