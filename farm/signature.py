"""Array dtypes and C-like function signatures, shared by the board and the host.

A signature fixes the argument and return types of a native function::

    parse_signature("void vadd(const float *a, const float *b, float *c, int64_t n)")
    parse_signature("double(double*, size_t)")

Arguments are described by one tag each (see :mod:`farm.protocol.calls`):
``a`` a remote array (passed as its data pointer), ``i``/``u`` an integer,
``f`` a float, ``n`` a NULL pointer. :meth:`Signature.check` validates them
the same way on both sides, so a bad call fails on the host before anything
is sent. Standard library only.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .errors import ArgumentError

#: Every dtype the data plane carries, with its item size in bytes.
DTYPE_SIZES = {
    "bool": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "float16": 2,
    "float32": 4,
    "float64": 8,
}

_INT_CTYPES = {
    ("int", 1): ctypes.c_int8,
    ("int", 2): ctypes.c_int16,
    ("int", 4): ctypes.c_int32,
    ("int", 8): ctypes.c_int64,
    ("uint", 1): ctypes.c_uint8,
    ("uint", 2): ctypes.c_uint16,
    ("uint", 4): ctypes.c_uint32,
    ("uint", 8): ctypes.c_uint64,
}


# C integer types whose size depends on the platform: kind and local ctypes type.
_PLATFORM_TYPES = {
    "short": ("int", ctypes.c_short),
    "unsigned short": ("uint", ctypes.c_ushort),
    "int": ("int", ctypes.c_int),
    "signed": ("int", ctypes.c_int),
    "unsigned": ("uint", ctypes.c_uint),
    "unsigned int": ("uint", ctypes.c_uint),
    "long": ("int", ctypes.c_long),
    "unsigned long": ("uint", ctypes.c_ulong),
    "long long": ("int", ctypes.c_longlong),
    "unsigned long long": ("uint", ctypes.c_ulonglong),
    "size_t": ("uint", ctypes.c_size_t),
    "ssize_t": ("int", ctypes.c_ssize_t),
    "intptr_t": ("int", ctypes.c_ssize_t),
    "uintptr_t": ("uint", ctypes.c_size_t),
    "ptrdiff_t": ("int", ctypes.c_ssize_t),
}


def c_type_sizes() -> Dict[str, int]:
    """Sizes in bytes of the platform-dependent C integer types here (a board reports its own)."""
    return {name: ctypes.sizeof(ctype) for name, (_kind, ctype) in _PLATFORM_TYPES.items()}


# C scalar type spelling -> (dtype name of the type, ctypes type), for fixed-size types.
_SCALARS: Dict[str, Tuple[str, Any]] = {
    "bool": ("bool", ctypes.c_bool),
    "_Bool": ("bool", ctypes.c_bool),
    "float": ("float32", ctypes.c_float),
    "double": ("float64", ctypes.c_double),
    "_Float16": ("float16", None),
    "__fp16": ("float16", None),
    "half": ("float16", None),
    "float16_t": ("float16", None),
    "signed char": ("int8", ctypes.c_int8),
    "unsigned char": ("uint8", ctypes.c_uint8),
}
for _bits in (8, 16, 32, 64):
    _SCALARS["int%d_t" % _bits] = ("int%d" % _bits, _INT_CTYPES[("int", _bits // 8)])
    _SCALARS["uint%d_t" % _bits] = ("uint%d" % _bits, _INT_CTYPES[("uint", _bits // 8)])
_ALIASES = {
    "short int": "short",
    "signed short": "short",
    "unsigned short int": "unsigned short",
    "signed int": "int",
    "long int": "long",
    "signed long": "long",
    "unsigned long int": "unsigned long",
    "long long int": "long long",
    "signed long long": "long long",
    "unsigned long long int": "unsigned long long",
}
_QUALIFIERS = {"const", "volatile", "restrict", "__restrict", "__restrict__", "struct", "enum"}


class CType(NamedTuple):
    """One parameter or return type: ``kind`` is void, int, float, bool or pointer."""

    spelling: str
    kind: str
    ctype: Any
    dtype: Optional[str] = None  # for pointers: the array dtype they accept (None: any)


class Param(NamedTuple):
    name: str
    type: CType


_RAW_MEMORY = ("void", "char", "signed char", "unsigned char")


def _scalar(base: str, sizes: Mapping[str, int]) -> Optional[Tuple[str, Any]]:
    """(dtype, ctypes type) of a scalar C type, platform types sized by ``sizes``; None if unknown."""
    if base in _PLATFORM_TYPES:
        kind, local = _PLATFORM_TYPES[base]
        size = sizes.get(base) or ctypes.sizeof(local)
        if (kind, size) not in _INT_CTYPES:
            raise ArgumentError("the board reports %s as %r bytes, not a supported integer size" % (base, size))
        return "%s%d" % (kind, size * 8), _INT_CTYPES[(kind, size)]
    return _SCALARS.get(base)


def _parse_type(text: str, where: str, sizes: Mapping[str, int]) -> CType:
    stars = text.count("*")
    words = [w for w in re.split(r"[\s*]+", text) if w and w not in _QUALIFIERS]
    base = _ALIASES.get(" ".join(words), " ".join(words))
    spelling = base + " *" * stars
    if stars and (base in _RAW_MEMORY or stars > 1):
        return CType(spelling, "pointer", ctypes.c_void_p, None)  # raw memory: any array
    if base == "void":
        return CType("void", "void", None)
    if base == "char":
        return CType("char", "int", ctypes.c_int8, "int8")
    scalar = _scalar(base, sizes)
    if scalar is None:
        raise ArgumentError("unknown type %r in %s" % (text.strip(), where))
    dtype, ctype = scalar
    if stars:
        return CType(spelling, "pointer", ctypes.c_void_p, dtype)
    if ctype is None:
        raise ArgumentError("%s cannot be passed by value (%s); pass it through an array" % (base, where))
    kind = "float" if dtype.startswith("float") else "bool" if dtype == "bool" else "int"
    return CType(spelling, kind, ctype, dtype)


_TYPE_WORDS = {"void", "char", "short", "int", "long", "signed", "unsigned", "float", "double"}


def _split_declarator(text: str) -> Tuple[str, str]:
    """``const float *a`` -> (``const float *``, ``a``); ``unsigned int`` -> (``unsigned int``, "").

    An array parameter is a pointer: ``float a[4][4]`` -> (``float *``, ``a``).
    """
    is_array = "[" in text
    text = re.sub(r"\s*\[[^\]]*\]", "", text).strip()
    type_text, name = text, ""
    match = re.match(r"^(.*?[\s*])([A-Za-z_]\w*)$", text)
    if match:
        words = [word for word in re.split(r"[\s*]+", match.group(1)) if word and word not in _QUALIFIERS]
        candidate = match.group(2)
        if candidate not in _TYPE_WORDS and candidate not in _QUALIFIERS and (words or "*" in match.group(1)):
            type_text, name = match.group(1), candidate
    return (type_text + " *" if is_array else type_text), name


_ACCEPTED_TAGS = {"pointer": "an", "float": "iuf", "int": "iu", "bool": "iu"}
_TAG_NAMES = {"a": "an array", "i": "an integer", "u": "an integer", "f": "a float", "n": "None"}


class Signature(NamedTuple):
    """A parsed C-like signature."""

    restype: CType
    name: str
    params: Tuple[Param, ...]
    text: str
    pattern: Any  # compiled regex over the argument tags each parameter accepts
    int_ranges: Tuple[Tuple[int, int, int], ...]  # (index, lowest, highest + 1) of each integer parameter
    usual_tags: str  # the tags of the usual call: arrays for pointers, ints, floats
    usual_dtypes: Tuple[Optional[str], ...]  # the array dtypes of the usual call

    def describe(self, index: int) -> str:
        param = self.params[index]
        label = " '%s'" % param.name if param.name else ""
        return "argument %d%s of %s" % (index + 1, label, self.name or "the function")

    def check(self, tags: str, array_dtypes: Sequence[Optional[str]], values: Optional[Sequence[Any]] = None) -> None:
        """Raise :class:`ArgumentError` unless the arguments fit the signature.

        ``tags`` has one tag per argument (see :mod:`farm.protocol.calls`),
        ``array_dtypes[i]`` is the dtype of argument i when it is an array,
        and integer ``values``, when given, must fit their C types.
        """
        usual = tags == self.usual_tags and tuple(array_dtypes) == self.usual_dtypes
        if usual or (
            self.pattern.fullmatch(tags)
            and all(
                tag != "a" or param.type.dtype in (None, dtype)
                for tag, param, dtype in zip(tags, self.params, array_dtypes)
            )
        ):
            if values is None:
                return
            for index, low, high in self.int_ranges:
                if not low <= values[index] < high:
                    break
            else:
                return
        if len(tags) != len(self.params):
            count = len(self.params)
            raise ArgumentError(
                "%s takes %d argument%s (%s), got %d"
                % (self.name or "the function", count, "" if count == 1 else "s", self.text, len(tags))
            )
        for index, (tag, param) in enumerate(zip(tags, self.params)):
            kind, spelling = param.type.kind, param.type.spelling
            if tag not in _TAG_NAMES:
                raise ArgumentError("%s has the unknown argument tag %r" % (self.describe(index), tag))
            if tag not in _ACCEPTED_TAGS[kind]:
                wanted = {"pointer": "an array", "float": "a number"}.get(kind, "an integer")
                raise ArgumentError(
                    "%s expects %s (%s), got %s" % (self.describe(index), wanted, spelling, _TAG_NAMES[tag])
                )
            if tag == "a" and param.type.dtype not in (None, array_dtypes[index]):
                raise ArgumentError(
                    "%s expects a %s array (%s), got a %s array"
                    % (self.describe(index), param.type.dtype, spelling, array_dtypes[index])
                )
        if values is not None:
            self._check_int_ranges(values)

    def _check_int_ranges(self, values: Sequence[Any]) -> None:
        for index, low, high in self.int_ranges:
            if not low <= values[index] < high:
                raise ArgumentError(
                    "%s is %d, outside the range of %s (%d to %d)"
                    % (self.describe(index), values[index], self.params[index].type.spelling, low, high - 1)
                )


def _int_range(dtype: str) -> Tuple[int, int]:
    bits = int(dtype.lstrip("uint"))
    return (0, 1 << bits) if dtype.startswith("u") else (-(1 << (bits - 1)), 1 << (bits - 1))


def parse_signature(text: str, sizes: Optional[Mapping[str, int]] = None) -> Signature:
    """Parse ``RET [NAME](TYPE [NAME], ...)``; raise :class:`ArgumentError` if it is not one.

    ``sizes`` gives the board's sizes of ``long``, ``size_t`` and the like
    (:func:`c_type_sizes` there); by default this platform's.
    """
    sizes = sizes or {}
    compact = " ".join(text.split())
    match = re.match(r"^(.+?)\s*\(\s*(.*?)\s*\)\s*;?$", compact)
    if not match:
        raise ArgumentError("signature %r is not of the form 'RET NAME(TYPE NAME, ...)'" % text)
    head, body = match.groups()
    ret_text, name = _split_declarator(head)
    where = "signature %r" % text
    restype = _parse_type(ret_text, where, sizes)
    params: List[Param] = []
    if body and body != "void":
        for part in body.split(","):
            type_text, pname = _split_declarator(part)
            if not type_text:
                raise ArgumentError("empty parameter in %s" % where)
            ptype = _parse_type(type_text, where, sizes)
            if ptype.kind == "void":
                raise ArgumentError("a parameter cannot be void in %s" % where)
            params.append(Param(pname, ptype))
    pattern = re.compile("".join("[%s]" % _ACCEPTED_TAGS[param.type.kind] for param in params))
    int_ranges = tuple(
        (index, *_int_range(param.type.dtype))  # type: ignore[arg-type]  # an int's dtype is always known
        for index, param in enumerate(params)
        if param.type.kind == "int"
    )
    usual_tags = "".join({"pointer": "a", "float": "f"}.get(param.type.kind, "i") for param in params)
    usual_dtypes = tuple(param.type.dtype if param.type.kind == "pointer" else None for param in params)
    return Signature(restype, name, tuple(params), compact, pattern, int_ranges, usual_tags, usual_dtypes)
