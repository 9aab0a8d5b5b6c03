"""Binary payloads of CALL requests and their results, sans-IO.

A native call is the hot path, so its arguments travel as a small binary
payload instead of JSON metadata::

    function id u32 | argument count u16 | one tag byte per argument | 8-byte values

Tags: ``a`` remote array (the value is the array id; the board passes its data
pointer), ``i`` signed int64, ``u`` unsigned int64, ``f`` float64, ``n`` NULL
pointer (value 0). The result is one tag (``v`` for no value, else as above)
and an 8-byte value. All little-endian.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from ..errors import ArgumentError, ProtocolError
from .framing import FRAME_MAGIC, HEADER, VERSION
from .ops import Op

TAGS = "aiufn"
_VALUE_FORMATS = {"a": "Q", "i": "q", "u": "Q", "f": "d", "n": "Q"}
_PREFIX_SIZE = 6  # function id u32, argument count u16
_RESULT = {tag: struct.Struct("<c" + fmt) for tag, fmt in _VALUE_FORMATS.items()}
_RESULT_BY_BYTE = {ord(tag): packer for tag, packer in _RESULT.items() if tag in "iuf"}
_VOID = b"v" + bytes(8)

#: Most arguments one call may carry.
MAX_ARGS = 256


class _Layout(NamedTuple):
    """How a CALL payload with given argument tags is laid out: one struct for all of it."""

    tags: str
    tag_bytes: bytes
    whole: struct.Struct  # function id, count, tag bytes, values
    frame: struct.Struct  # the whole CALL frame without metadata: the frame header's fields, then as ``whole``


_by_tags: Dict[str, _Layout] = {}
_by_tag_bytes: Dict[bytes, _Layout] = {}


def _layout(tags: str) -> _Layout:
    """The (cached) layout for ``tags``; ProtocolError for unknown tags."""
    layout = _by_tags.get(tags)
    if layout is None:
        if len(tags) > MAX_ARGS or any(tag not in _VALUE_FORMATS for tag in tags):
            raise ProtocolError("bad call argument tags %r" % tags[:MAX_ARGS])
        if len(_by_tags) > 1024:
            _by_tags.clear()
            _by_tag_bytes.clear()
        payload = "IH%ds%s" % (len(tags), "".join(_VALUE_FORMATS[tag] for tag in tags))
        tag_bytes = tags.encode("ascii")
        layout = _Layout(tags, tag_bytes, struct.Struct("<" + payload), struct.Struct("<IIIQ" + payload))
        _by_tags[tags] = _by_tag_bytes[tag_bytes] = layout
    return layout


def tag_of(value: Any) -> str:
    """The tag for an int or float argument (``i``, ``u`` or ``f``)."""
    if isinstance(value, float):
        return "f"
    if -(1 << 63) <= value < (1 << 63):
        return "i"
    if 0 <= value < (1 << 64):
        return "u"
    raise ArgumentError("integer %d does not fit in 64 bits" % value)


def encode_call(function_id: int, tags: str, values: Sequence[Any]) -> bytes:
    """The CALL payload for ``values`` tagged by ``tags`` (one character each)."""
    if len(tags) > MAX_ARGS:
        raise ArgumentError("a call takes at most %d arguments, got %d" % (MAX_ARGS, len(tags)))
    layout = _by_tags.get(tags) or _layout(tags)
    return layout.whole.pack(function_id, len(tags), layout.tag_bytes, *values)


def decode_call(payload: Any) -> Tuple[int, str, Tuple[Any, ...]]:
    """``(function id, tags, values)`` of a CALL payload, or :class:`ProtocolError`."""
    if len(payload) < _PREFIX_SIZE:
        raise ProtocolError("call payload of %d bytes is shorter than its prefix" % len(payload))
    count = payload[4] | payload[5] << 8
    tag_bytes = bytes(payload[_PREFIX_SIZE : _PREFIX_SIZE + count])
    layout = _by_tag_bytes.get(tag_bytes)
    if layout is None:
        if len(tag_bytes) != count:
            raise ProtocolError("call payload is too short for %d argument tags" % count)
        layout = _layout(tag_bytes.decode("ascii", "replace"))
    if len(payload) != layout.whole.size:
        raise ProtocolError("call payload is %d bytes, expected %d" % (len(payload), layout.whole.size))
    fields = layout.whole.unpack_from(payload)
    return fields[0], layout.tags, fields[3:]


def encode_result(value: Any) -> bytes:
    """The RESULT payload of a call that returned ``value`` (None, int or float)."""
    if value is None:
        return _VOID
    tag = "i" if type(value) is int and -(1 << 63) <= value < (1 << 63) else tag_of(value)
    return _RESULT[tag].pack(tag.encode("ascii"), value)


def decode_result(payload: Any) -> Any:
    """The value a call returned, from its RESULT payload."""
    if len(payload) != 9:
        raise ProtocolError("call result payload is %d bytes, expected 9" % len(payload))
    packer = _RESULT_BY_BYTE.get(payload[0])
    if packer is not None:
        return packer.unpack_from(payload)[1]
    if payload[0] == ord("v"):
        return None
    raise ProtocolError("call result has bad tag %r" % chr(payload[0]))


#: A RESULT frame's header fields as the client checks them, and the result's tag byte:
#: magic, version and op as one u32, request id, metadata length, payload length, tag.
_RESULT_HEAD = struct.Struct("<IIIQB")
#: The RESULT frame of a call: a 20-byte frame header without metadata, then the 9-byte result payload.
RESULT_FRAME_SIZE = _RESULT_HEAD.size + 8
_VALUE_AT = {ord(tag): struct.Struct("<" + _VALUE_FORMATS[tag]).unpack_from for tag in "iuf"}
_VOID_TAG = ord("v")
_REQUEST_ID = struct.Struct("<I")
#: A CALL frame's header fields and its payload's prefix, as the board reads them: magic, version and op as one
#: u32, request id, metadata length, payload length, function id, argument count.
_CALL_HEAD = struct.Struct("<IIIQIH")
#: A RESULT frame of an int from its request id on: request id, metadata length, payload length, tag, value.
_INT_RESULT_FROM_ID = struct.Struct("<IIQcq")
_FRAME_HEADER_SIZE = HEADER.size
_MAGIC_WORD = int.from_bytes(FRAME_MAGIC + bytes([VERSION]), "little")  # the header's first three bytes
_RESULT_WORD = _MAGIC_WORD | int(Op.RESULT) << 24
_CALL_WORD = _MAGIC_WORD | int(Op.CALL) << 24


class CallFrame:
    """The whole CALL frame (header and payload) of one function and one set of argument tags, built once.

    The bytes that stay the same from call to call (frame header, function id, argument count, tags) are
    written once into a buffer that every call reuses; a call writes only its request id and its values.
    The frame is the one :func:`~farm.protocol.framing.encode_frame` makes of :func:`encode_call`'s payload.
    """

    __slots__ = ("buffer", "_values", "_values_at")

    def __init__(self, op: int, function_id: int, tags: str) -> None:
        layout = _by_tags.get(tags) or _layout(tags)
        head = struct.Struct("<IIIQ")  # magic, version and op as one u32, request id, metadata length, payload length
        self.buffer = bytearray(head.size + layout.whole.size)
        head.pack_into(self.buffer, 0, _MAGIC_WORD | op << 24, 0, 0, layout.whole.size)
        layout.whole.pack_into(self.buffer, head.size, function_id, len(tags), layout.tag_bytes, *bytes(len(tags)))
        self._values = struct.Struct("<" + "".join(_VALUE_FORMATS[tag] for tag in tags)).pack_into
        self._values_at = head.size + _PREFIX_SIZE + len(tags)

    def fill(self, request_id: int, values: Sequence[Any]) -> bytearray:
        """The frame's buffer holding ``request_id`` and ``values`` (valid until the next ``fill``)."""
        _REQUEST_ID.pack_into(self.buffer, 4, request_id)
        self._values(self.buffer, self._values_at, *values)
        return self.buffer

    def payload(self, values: Sequence[Any]) -> bytes:
        """The frame's payload alone for ``values``: what :func:`encode_call` returns."""
        return bytes(memoryview(self.fill(0, values))[_FRAME_HEADER_SIZE:])


#: What :func:`read_result_frame` returns for a frame that is not the plain RESULT of the call.
NOT_A_RESULT = object()


def read_result_frame(frame: Any, request_id: int) -> Any:
    """The value in ``frame`` (:data:`RESULT_FRAME_SIZE` bytes) if it is the RESULT of call ``request_id`` without
    metadata and a known tag, else :data:`NOT_A_RESULT`: an error, a notice, another request's reply or a bad result
    are the general path's to read (:class:`~farm.protocol.framing.FrameReader`, :func:`decode_result`).
    """
    word, reply_id, meta_len, size, tag = _RESULT_HEAD.unpack_from(frame)
    if word != _RESULT_WORD or reply_id != request_id or meta_len or size != 9:
        return NOT_A_RESULT
    unpack = _VALUE_AT.get(tag)
    if unpack is not None:
        return unpack(frame, _RESULT_HEAD.size)[0]
    return None if tag == _VOID_TAG else NOT_A_RESULT


#: The layout of the CALL frame last read of each size: the next one of that size most likely has it too.
_by_frame_size: Dict[int, _Layout] = {}


def read_call_frame(frame: Any, count: int) -> Optional[Tuple[int, int, str, Tuple[Any, ...]]]:
    """``(request id, function id, tags, values)`` if the first ``count`` bytes of ``frame`` are exactly one CALL
    frame without metadata, with argument tags seen before (what a client's call sends); else None, for the general
    reader (:class:`~farm.protocol.framing.FrameReader`, :func:`decode_call`) to read and check.

    The frame is read in one unpack with the layout of the last call frame of its size, and every field checked;
    a frame with other tags is read with the layout of its own.
    """
    layout = _by_frame_size.get(count)
    fields = layout.frame.unpack_from(frame) if layout is not None else None
    if layout is None or fields is None or fields[6] != layout.tag_bytes:
        layout = _layout_of_frame(frame, count)
        if layout is None:
            return None
        fields = layout.frame.unpack_from(frame)
    if fields[0] != _CALL_WORD or fields[2] or fields[3] != count - _FRAME_HEADER_SIZE or fields[5] != len(fields[6]):
        return None
    return fields[1], fields[4], layout.tags, fields[7:]


def _layout_of_frame(frame: Any, count: int) -> Optional[_Layout]:
    """The layout of the argument tags of the CALL frame of ``count`` bytes in ``frame`` if they were seen before
    and it has that size (else None), kept as the likely layout of the next frame of that size."""
    if count < _CALL_HEAD.size:
        return None
    argc = _CALL_HEAD.unpack_from(frame)[5]
    layout = _by_tag_bytes.get(bytes(frame[_CALL_HEAD.size : _CALL_HEAD.size + argc]))
    if layout is None or layout.frame.size != count:
        return None
    if len(_by_frame_size) > 1024:
        _by_frame_size.clear()
    _by_frame_size[count] = layout
    return layout


class ResultFrame:
    """The RESULT frame of a call, in one buffer that each call fills with its request id and value: the frame
    :func:`~farm.protocol.framing.encode_frame` makes of :func:`encode_result`'s payload."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray(RESULT_FRAME_SIZE)
        _RESULT_HEAD.pack_into(self.buffer, 0, _RESULT_WORD, 0, 0, 9, _VOID_TAG)

    def fill(self, request_id: int, value: Any) -> bytearray:
        """The frame's buffer holding ``request_id`` and ``value`` (valid until the next ``fill``)."""
        if type(value) is int and -(1 << 63) <= value < (1 << 63):
            _INT_RESULT_FROM_ID.pack_into(self.buffer, 4, request_id, 0, 9, b"i", value)
        else:
            _REQUEST_ID.pack_into(self.buffer, 4, request_id)
            self.buffer[_FRAME_HEADER_SIZE:] = encode_result(value)
        return self.buffer
