"""Data-only values: what ``run()`` results travel as from the board to the host, sans-IO.

Unlike a pickle, decoding these bytes never runs code and never builds an
object of a type the bytes choose: only the types below come out, and
anything else is a :class:`DataError` naming the type or tag.

- None, bool, int (at most :data:`MAX_INT_BYTES` bytes), float, complex, str, bytes;
- list, tuple, dict, set, frozenset (of the above, nested at most :data:`MAX_DEPTH` deep);
- numpy arrays and numpy scalars of the dtypes in :data:`DTYPES` (bool, signed and
  unsigned integers, IEEE floats and complex of 2 to 16 bytes, either byte order);
  no object, string, structured, datetime or extended-precision dtypes.

Types are matched exactly: a subclass (an ``IntEnum``, a named tuple) is not data.
At most :data:`MAX_ITEMS` values in all, and the whole encoding at most
``max_bytes``. Standard library only: numpy is imported on the board only if
it is loaded already (a result holding numpy objects), and on the host only to
decode them. docs/protocol.md gives the wire format.
"""

from __future__ import annotations

import struct
import sys
from typing import Any, Callable, Dict, List

from ..errors import DataError

MAGIC = b"RV"
VERSION = 1
#: Most containers nested in one another.
MAX_DEPTH = 64
#: Most values in one encoding, counting every container, element, key and array as one.
MAX_ITEMS = 1 << 20
#: Longest int, in bytes of two's complement (32,768 bits).
MAX_INT_BYTES = 4096
#: Default bound on the whole encoding, in bytes (the data plane's frame payload limit).
MAX_BYTES = 4 << 30
#: Most dimensions of an array (numpy's own limit).
MAX_DIMS = 64
#: numpy dtypes admitted, by ``dtype.str`` without its byte-order character.
DTYPES = frozenset(["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"])
_BYTE_ORDERS = "<>|"
#: The types carried, for messages.
ADMITTED = (
    "None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, "
    "and numpy arrays and scalars of bool, int, uint, float or complex dtype"
)

# Tags: one byte before each value.
NONE, TRUE, FALSE, INT, FLOAT, COMPLEX, STR, BYTES = b"N", b"T", b"F", b"i", b"f", b"c", b"s", b"b"
LIST, TUPLE, DICT, SET, FROZENSET, ARRAY, SCALAR = b"l", b"t", b"d", b"S", b"z", b"a", b"g"

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")
_PICKLE_PROTO = 0x80  # a pickle's first byte (protocol 2 and later)


def _type_name(value: Any) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "")
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module in ("builtins", "") else "%s.%s" % (module, name)


def _numpy_kind(value: Any) -> bytes:
    """ARRAY or SCALAR if ``value`` is a numpy array or scalar, else b"" (numpy is never imported for this)."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return b""
    if type(value) is numpy.ndarray:
        return ARRAY
    return SCALAR if isinstance(value, numpy.generic) else b""


def _dtype_text(dtype: Any, what: str) -> bytes:
    text = str(dtype.str)
    if text[:1] not in _BYTE_ORDERS or text[1:] not in DTYPES:
        raise DataError(
            "%s of dtype %s is not data: admitted are bool, int8-64, uint8-64, float16-64, complex64-128"
            % (what, dtype)
        )
    return text.encode("ascii")


def _length(data: bytes) -> bytes:
    if len(data) > 0xFFFFFFFF:
        raise DataError("a str or bytes of %d bytes exceeds the limit of 4 GiB" % len(data))
    return _U32.pack(len(data))


class _Encoder:
    def __init__(self, max_bytes: int) -> None:
        self.parts: List[Any] = []
        self.size = len(MAGIC) + 1
        self.items = 0
        self.max_bytes = max_bytes

    def add(self, *parts: Any) -> None:
        for part in parts:
            self.size += len(part) if type(part) is bytes else memoryview(part).nbytes
            self.parts.append(part)
        if self.size > self.max_bytes:
            raise DataError("the value's encoding exceeds the limit of %d bytes" % self.max_bytes)

    def value(self, value: Any, depth: int) -> None:  # noqa: C901 - a flat dispatch: one branch per wire tag
        """Add ``value``, which ``depth`` containers hold."""
        self.items += 1
        if self.items > MAX_ITEMS:
            raise DataError("the value holds more than %d items" % MAX_ITEMS)
        kind = type(value)
        if value is None:
            self.add(NONE)
        elif kind is bool:
            self.add(TRUE if value else FALSE)
        elif kind is int:
            self._int(value)
        elif kind is float:
            self.add(FLOAT, _F64.pack(value))
        elif kind is complex:
            self.add(COMPLEX, _C128.pack(value.real, value.imag))
        elif kind is str:
            data = value.encode("utf-8", "surrogatepass")
            self.add(STR, _length(data), data)
        elif kind is bytes:
            self.add(BYTES, _length(value), value)
        elif kind in _SEQUENCE_TAGS:
            self._nest(depth)
            self.add(_SEQUENCE_TAGS[kind], _U32.pack(len(value)))
            for item in value:
                self.value(item, depth + 1)
        elif kind is dict:
            self._nest(depth)
            self.add(DICT, _U32.pack(len(value)))
            for key, item in value.items():
                self.value(key, depth + 1)
                self.value(item, depth + 1)
        else:
            numpy_kind = _numpy_kind(value)
            if numpy_kind == ARRAY:
                self._array(value)
            elif numpy_kind == SCALAR:
                self.add(SCALAR, self._dtype(value.dtype, "a numpy scalar"), value.tobytes())
            else:
                raise DataError("an object of type %s is not data" % _type_name(value))

    @staticmethod
    def _nest(depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise DataError("containers nested more than %d deep (or a container that holds itself)" % MAX_DEPTH)

    def _int(self, value: int) -> None:
        size = ((value if value >= 0 else ~value).bit_length() + 8) // 8  # room for the sign bit
        if size > MAX_INT_BYTES:
            raise DataError("an int of %d bits exceeds the limit of %d bytes" % (value.bit_length(), MAX_INT_BYTES))
        self.add(INT, _U32.pack(size), value.to_bytes(size, "little", signed=True))

    @staticmethod
    def _dtype(dtype: Any, what: str) -> bytes:
        text = _dtype_text(dtype, what)
        return _U8.pack(len(text)) + text

    def _array(self, array: Any) -> None:
        dtype = self._dtype(array.dtype, "a numpy array")
        dims = b"".join(_U64.pack(dim) for dim in array.shape)
        contents = memoryview(array.reshape(-1).view("u1")) if array.flags.c_contiguous else array.tobytes()
        self.add(ARRAY, dtype, _U8.pack(array.ndim), dims, contents)


_SEQUENCE_TAGS: Dict[type, bytes] = {list: LIST, tuple: TUPLE, set: SET, frozenset: FROZENSET}


def encode_value(value: Any, max_bytes: int = MAX_BYTES) -> bytes:
    """``value`` as data-only bytes, or :class:`DataError` naming the first part that is not data."""
    encoder = _Encoder(max_bytes)
    encoder.value(value, 0)
    return b"".join([MAGIC, _U8.pack(VERSION)] + encoder.parts)


class _Decoder:
    def __init__(self, data: Any) -> None:
        self.data = memoryview(data).cast("B")
        self.offset = 0
        self.items = 0
        self.numpy: Any = None
        self._readers: Dict[int, Callable[[int], Any]] = {
            NONE[0]: lambda depth: None,
            TRUE[0]: lambda depth: True,
            FALSE[0]: lambda depth: False,
            INT[0]: lambda depth: self.integer(),
            FLOAT[0]: lambda depth: _F64.unpack(self.take(8))[0],
            COMPLEX[0]: lambda depth: complex(*_C128.unpack(self.take(16))),
            STR[0]: lambda depth: self.text(),
            BYTES[0]: lambda depth: bytes(self.take(self.length(len(self.data), "bytes"))),
            LIST[0]: lambda depth: list(self.elements(depth)),
            TUPLE[0]: lambda depth: tuple(self.elements(depth)),
            SET[0]: lambda depth: self.set(set, depth),
            FROZENSET[0]: lambda depth: self.set(frozenset, depth),
            DICT[0]: self.dict,
            ARRAY[0]: lambda depth: self.array(),
            SCALAR[0]: lambda depth: self.scalar(),
        }

    def fail(self, message: str) -> DataError:
        return DataError("%s (at byte %d of %d)" % (message, self.offset, len(self.data)))

    def take(self, count: int) -> memoryview:
        end = self.offset + count
        if end > len(self.data):
            raise self.fail("the encoding ends in the middle of a value (%d more bytes announced)" % count)
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def length(self, limit: int, what: str) -> int:
        count: int = _U32.unpack(self.take(4))[0]
        if count > limit:
            raise self.fail("%s of %d bytes exceeds the limit of %d" % (what, count, limit))
        return count

    def value(self, depth: int) -> Any:
        """The next value, which ``depth`` containers hold."""
        self.items += 1
        if self.items > MAX_ITEMS:
            raise self.fail("more than %d items" % MAX_ITEMS)
        tag = self.take(1)[0]
        reader = self._readers.get(tag)
        if reader is None:
            raise self.fail("unknown value tag 0x%02X (%r)" % (tag, bytes([tag])))
        return reader(depth)

    def integer(self) -> int:
        return int.from_bytes(self.take(self.length(MAX_INT_BYTES, "an int")), "little", signed=True)

    def text(self) -> str:
        data = self.take(self.length(len(self.data), "a str"))
        try:
            return str(data, "utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise self.fail("a str is not UTF-8: %s" % exc) from None

    def nest(self, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise self.fail("containers nested more than %d deep" % MAX_DEPTH)

    def elements(self, depth: int) -> List[Any]:
        self.nest(depth)
        count = _U32.unpack(self.take(4))[0]
        if count > len(self.data) - self.offset:  # every element takes a byte at least
            raise self.fail("a container announces %d elements, more than the bytes left" % count)
        return [self.value(depth + 1) for _ in range(count)]

    def hashable(self, value: Any, where: str) -> Any:
        try:
            hash(value)
        except TypeError:
            raise self.fail("%s is a %s, which is unhashable" % (where, _type_name(value))) from None
        return value

    def set(self, kind: type, depth: int) -> Any:
        elements = [self.hashable(item, "a set element") for item in self.elements(depth)]
        result = kind(elements)
        if len(result) != len(elements):
            raise self.fail("a set holds an element twice")
        return result

    def dict(self, depth: int) -> Dict[Any, Any]:
        self.nest(depth)
        count = _U32.unpack(self.take(4))[0]
        if count > (len(self.data) - self.offset) // 2:  # a key and a value take a byte each at least
            raise self.fail("a dict announces %d entries, more than the bytes left" % count)
        result = {}
        for _ in range(count):
            key = self.hashable(self.value(depth + 1), "a dict key")
            result[key] = self.value(depth + 1)
        if len(result) != count:
            raise self.fail("a dict holds a key twice")
        return result

    def dtype(self) -> Any:
        text = bytes(self.take(self.take(1)[0]))
        try:
            name = text.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if name[:1] not in _BYTE_ORDERS or name[1:] not in DTYPES:
            raise self.fail("dtype %r is not admitted (admitted: %s)" % (text, ", ".join(sorted(DTYPES))))
        if self.numpy is None:
            try:
                import numpy
            except ImportError:
                raise self.fail("the value holds numpy objects, and numpy is not installed here") from None
            self.numpy = numpy
        return self.numpy.dtype(name)

    def array(self) -> Any:
        dtype = self.dtype()
        ndim = self.take(1)[0]
        if ndim > MAX_DIMS:
            raise self.fail("an array of %d dimensions exceeds the limit of %d" % (ndim, MAX_DIMS))
        shape = tuple(_U64.unpack(self.take(8))[0] for _ in range(ndim))
        nbytes = dtype.itemsize
        for dim in shape:
            nbytes *= dim
        if nbytes > len(self.data) - self.offset:
            raise self.fail(
                "an array of shape %s %s needs %d bytes, more than the bytes left" % (shape, dtype, nbytes)
            )
        contents = self.contents(nbytes, dtype)
        try:
            return self.numpy.frombuffer(contents, dtype).reshape(shape).copy()
        except (ValueError, OverflowError, MemoryError) as exc:  # an empty array of absurd dimensions
            raise self.fail("an array of shape %s %s cannot be made: %s" % (shape, dtype, exc)) from None

    def scalar(self) -> Any:
        dtype = self.dtype()
        return self.numpy.frombuffer(self.contents(dtype.itemsize, dtype), dtype)[0]

    def contents(self, nbytes: int, dtype: Any) -> memoryview:
        """The next ``nbytes``, each a 0 or a 1 for a bool dtype."""
        contents = self.take(nbytes)
        if dtype.kind == "b" and contents.tobytes().translate(None, b"\x00\x01"):
            raise self.fail("a bool array holds a byte other than 0 and 1")
        return contents


def decode_value(data: Any, max_bytes: int = MAX_BYTES) -> Any:
    """The value ``data`` encodes; :class:`DataError` for anything else, whatever the bytes."""
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise DataError("an encoding of %d bytes exceeds the limit of %d" % (len(view), max_bytes))
    if view[:1] == bytes([_PICKLE_PROTO]):
        raise DataError("a pickle where data was expected (a pickle is not decoded: it could run code)")
    if view[: len(MAGIC)] != MAGIC or len(view) < len(MAGIC) + 1:
        raise DataError("not a data-only encoding: it starts with %r, not %r" % (bytes(view[:8]), MAGIC))
    if view[len(MAGIC)] != VERSION:
        raise DataError("data-only encoding version %d (this side reads %d)" % (view[len(MAGIC)], VERSION))
    decoder = _Decoder(view)
    decoder.offset = len(MAGIC) + 1
    value = decoder.value(0)
    if decoder.offset != len(view):
        raise decoder.fail("%d bytes follow the value" % (len(view) - decoder.offset))
    return value
