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
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

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


def _sized(kind: str, ctype: Any) -> Tuple[str, Any]:
    size = ctypes.sizeof(ctype)
    return "%s%d" % (kind, size * 8), _INT_CTYPES[(kind, size)]


# C scalar type spelling -> (dtype name of the type, ctypes type). Platform
# dependent sizes (long, size_t) are resolved on the side that parses.
_SCALARS = {
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
    "short": _sized("int", ctypes.c_short),
    "unsigned short": _sized("uint", ctypes.c_ushort),
    "int": _sized("int", ctypes.c_int),
    "signed": _sized("int", ctypes.c_int),
    "unsigned": _sized("uint", ctypes.c_uint),
    "unsigned int": _sized("uint", ctypes.c_uint),
    "long": _sized("int", ctypes.c_long),
    "unsigned long": _sized("uint", ctypes.c_ulong),
    "long long": _sized("int", ctypes.c_longlong),
    "unsigned long long": _sized("uint", ctypes.c_ulonglong),
    "size_t": _sized("uint", ctypes.c_size_t),
    "ssize_t": _sized("int", ctypes.c_ssize_t),
    "intptr_t": _sized("int", ctypes.c_ssize_t),
    "uintptr_t": _sized("uint", ctypes.c_size_t),
    "ptrdiff_t": _sized("int", ctypes.c_ssize_t),
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


def _parse_type(text: str, where: str) -> CType:
    stars = text.count("*")
    words = [w for w in re.split(r"[\s*]+", text) if w and w not in _QUALIFIERS]
    base = _ALIASES.get(" ".join(words), " ".join(words))
    spelling = base + " *" * stars
    if stars:
        if base in _RAW_MEMORY or stars > 1:
            return CType(spelling, "pointer", ctypes.c_void_p, None)  # raw memory: any array
        if base not in _SCALARS:
            raise ArgumentError("unknown type %r in %s" % (text.strip(), where))
        return CType(spelling, "pointer", ctypes.c_void_p, _SCALARS[base][0])
    if base == "void":
        return CType("void", "void", None)
    if base == "char":
        return CType("char", "int", ctypes.c_int8, "int8")
    if base not in _SCALARS:
        raise ArgumentError("unknown type %r in %s" % (text.strip(), where))
    dtype, ctype = _SCALARS[base]
    if ctype is None:
        raise ArgumentError("%s cannot be passed by value (%s); pass it through an array" % (base, where))
    kind = "float" if dtype.startswith("float") else "bool" if dtype == "bool" else "int"
    return CType(spelling, kind, ctype, dtype)


_TYPE_WORDS = {"void", "char", "short", "int", "long", "signed", "unsigned", "float", "double"}


def _split_declarator(text: str) -> Tuple[str, str]:
    """``const float *a`` -> (``const float *``, ``a``); ``unsigned int`` -> (``unsigned int``, "")."""
    text = re.sub(r"([A-Za-z_]\w*)\s*\[[^\]]*\]\s*$", r"*\1", text.strip())  # float a[] -> float *a
    text = re.sub(r"\[[^\]]*\]", "*", text)
    match = re.match(r"^(.*?[\s*])([A-Za-z_]\w*)$", text)
    if match:
        type_text, name = match.groups()
        if name not in _TYPE_WORDS and name not in _SCALARS and name not in _QUALIFIERS and type_text.strip():
            return type_text, name
    return text, ""


_ACCEPTED_TAGS = {"pointer": "an", "float": "iuf", "int": "iu", "bool": "iu"}
_TAG_NAMES = {"a": "an array", "i": "an integer", "u": "an integer", "f": "a float", "n": "None"}


class Signature(NamedTuple):
    """A parsed C-like signature."""

    restype: CType
    name: str
    params: Tuple[Param, ...]
    text: str
    pattern: Any  # compiled regex over argument tags, for the fast path of check()

    def describe(self, index: int) -> str:
        param = self.params[index]
        label = " '%s'" % param.name if param.name else ""
        return "argument %d%s of %s" % (index + 1, label, self.name or "the function")

    def check(self, tags: str, array_dtypes: Sequence[Optional[str]]) -> None:
        """Raise :class:`ArgumentError` unless arguments tagged ``tags`` fit (see :mod:`farm.protocol.calls`).

        ``array_dtypes[i]`` is the dtype of argument i when it is an array.
        """
        if self.pattern.fullmatch(tags) and all(
            tag != "a" or param.type.dtype in (None, dtype)
            for tag, param, dtype in zip(tags, self.params, array_dtypes)
        ):
            return
        if len(tags) != len(self.params):
            count = len(self.params)
            raise ArgumentError(
                "%s takes %d argument%s (%s), got %d"
                % (self.name or "the function", count, "" if count == 1 else "s", self.text, len(tags))
            )
        for index, (tag, param) in enumerate(zip(tags, self.params)):
            kind, spelling = param.type.kind, param.type.spelling
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


def parse_signature(text: str) -> Signature:
    """Parse ``RET [NAME](TYPE [NAME], ...)``; raise :class:`ArgumentError` if it is not one."""
    match = re.match(r"^\s*(.+?)\s*\(\s*(.*?)\s*\)\s*;?\s*$", text, re.S)
    if not match:
        raise ArgumentError("signature %r is not of the form 'RET NAME(TYPE NAME, ...)'" % text)
    head, body = match.groups()
    ret_text, name = _split_declarator(head)
    where = "signature %r" % text
    restype = _parse_type(ret_text, where)
    params: List[Param] = []
    if body and body != "void":
        for part in body.split(","):
            type_text, pname = _split_declarator(part)
            if not type_text:
                raise ArgumentError("empty parameter in %s" % where)
            ptype = _parse_type(type_text, where)
            if ptype.kind == "void":
                raise ArgumentError("a parameter cannot be void in %s" % where)
            params.append(Param(pname, ptype))
    pattern = re.compile("".join("[%s]" % _ACCEPTED_TAGS[param.type.kind] for param in params))
    return Signature(restype, name, tuple(params), " ".join(text.split()), pattern)
