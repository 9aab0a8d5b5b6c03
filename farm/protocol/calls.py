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
from typing import Any, Dict, Sequence, Tuple

from ..errors import ArgumentError, ProtocolError

TAGS = "aiufn"
_VALUE_FORMATS = {"a": "Q", "i": "q", "u": "Q", "f": "d", "n": "Q"}
_PREFIX = struct.Struct("<IH")
_RESULT = {tag: struct.Struct("<c" + fmt) for tag, fmt in _VALUE_FORMATS.items()}
_VOID = b"v" + bytes(8)
_formats: Dict[str, struct.Struct] = {}

#: Most arguments one call may carry.
MAX_ARGS = 256


def _values_struct(tags: str) -> struct.Struct:
    """The struct of the values of arguments tagged ``tags``; ProtocolError for unknown tags."""
    packer = _formats.get(tags)
    if packer is None:
        if len(tags) > MAX_ARGS or any(tag not in _VALUE_FORMATS for tag in tags):
            raise ProtocolError("bad call argument tags %r" % tags[:MAX_ARGS])
        if len(_formats) > 1024:
            _formats.clear()
        packer = _formats[tags] = struct.Struct("<" + "".join(_VALUE_FORMATS[tag] for tag in tags))
    return packer


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
    return _PREFIX.pack(function_id, len(tags)) + tags.encode("ascii") + _values_struct(tags).pack(*values)


def decode_call(payload: Any) -> Tuple[int, str, Tuple[Any, ...]]:
    """``(function id, tags, values)`` of a CALL payload, or :class:`ProtocolError`."""
    if len(payload) < _PREFIX.size:
        raise ProtocolError("call payload of %d bytes is shorter than its prefix" % len(payload))
    function_id, count = _PREFIX.unpack_from(payload)
    end = _PREFIX.size + count
    tags = str(payload[_PREFIX.size : end], "ascii", "replace")
    if len(tags) != count:
        raise ProtocolError("call payload is too short for %d argument tags" % count)
    values = _values_struct(tags)
    if len(payload) != end + values.size:
        raise ProtocolError("call payload is %d bytes, expected %d" % (len(payload), end + values.size))
    return function_id, tags, values.unpack_from(payload, end)


def encode_result(value: Any) -> bytes:
    """The RESULT payload of a call that returned ``value`` (None, int or float)."""
    if value is None:
        return _VOID
    tag = tag_of(value)
    return _RESULT[tag].pack(tag.encode("ascii"), value)


def decode_result(payload: Any) -> Any:
    """The value a call returned, from its RESULT payload."""
    if len(payload) != 9:
        raise ProtocolError("call result payload is %d bytes, expected 9" % len(payload))
    tag = chr(payload[0])
    if tag == "v":
        return None
    packer = _RESULT.get(tag)
    if packer is None or tag in "an":
        raise ProtocolError("call result has bad tag %r" % tag)
    return packer.unpack_from(payload)[1]
