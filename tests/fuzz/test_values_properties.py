"""Property-based tests of the data-only value codec (farm/protocol/values.py), as ``run()`` results use it.

Every value of the admitted types comes back exactly: same types, same bits
(NaNs, signed zeros, lone surrogates, byte orders). Arbitrary and mutated bytes
into the decoder end in :class:`~farm.errors.DataError`, never another
exception. Anything that is not data, anywhere inside a value, is a DataError
on the encoding side.
"""

from __future__ import annotations

import math
import struct
from typing import Any, List

import numpy as np
from fuzz_settings import FUZZ
from fuzz_streams import HUGE_LENGTHS
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from farm.errors import DataError
from farm.protocol import values
from farm.protocol.values import DTYPES, MAX_DEPTH, MAX_INT_BYTES, decode_value, encode_value

_DTYPES = [np.dtype(order + code) for code in sorted(DTYPES) for order in "<>" if np.dtype(order + code).itemsize > 1]
_DTYPES += [np.dtype(code) for code in ("b1", "i1", "u1")]

FLOATS = st.floats(allow_nan=True, allow_infinity=True)
TEXT = st.text(st.characters(blacklist_categories=()), max_size=20)  # lone surrogates too
SCALARS = st.sampled_from(_DTYPES).flatmap(lambda dtype: hnp.from_dtype(dtype).map(lambda x: np.array(x, dtype)[()]))
ARRAYS = st.sampled_from(_DTYPES).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
#: Values usable as set elements and dict keys (no NaN: equal-looking NaNs are distinct keys).
HASHABLE_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 300), 1 << 300)
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | TEXT
    | st.binary(max_size=20)
)
HASHABLE = st.recursive(
    HASHABLE_LEAVES,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
LEAVES = HASHABLE_LEAVES | FLOATS | st.complex_numbers() | SCALARS | ARRAYS
DATA = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(HASHABLE, inner, max_size=4)
        | st.sets(HASHABLE, max_size=4)
        | st.frozensets(HASHABLE, max_size=4)
    ),
    max_leaves=20,
)


def same(sent: Any, got: Any) -> bool:
    """Whether ``got`` is ``sent`` exactly: types, bits of floats, dtypes and byte orders of numpy objects."""
    if type(sent) is not type(got):
        return False
    if isinstance(sent, np.ndarray):
        return (sent.dtype.str, sent.shape, sent.tobytes()) == (got.dtype.str, got.shape, got.tobytes())
    if isinstance(sent, np.generic):
        return (sent.dtype.str, sent.tobytes()) == (got.dtype.str, got.tobytes())
    if type(sent) is float:
        return struct.pack("<d", sent) == struct.pack("<d", got)
    if type(sent) is complex:
        return same(sent.real, got.real) and same(sent.imag, got.imag)
    if type(sent) in (list, tuple):
        return len(sent) == len(got) and all(same(a, b) for a, b in zip(sent, got))
    if type(sent) is dict:
        return len(sent) == len(got) and all(same(a, b) for a, b in zip(sent.items(), got.items()))
    if type(sent) in (set, frozenset):
        return len(sent) == len(got) and all(any(same(a, b) for b in got) for a in sent)
    return bool(sent == got)


@FUZZ
@given(DATA)
def test_every_data_value_comes_back_exactly(value: Any) -> None:
    assert same(value, decode_value(encode_value(value)))


@FUZZ
@given(st.integers(-(1 << (8 * MAX_INT_BYTES - 1)), (1 << (8 * MAX_INT_BYTES - 1)) - 1))
def test_ints_up_to_the_bound_come_back(value: int) -> None:
    assert decode_value(encode_value(value)) == value


def _refused(data: bytes) -> None:
    try:
        decode_value(data)
    except DataError as exc:
        assert str(exc)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_data_error(data: bytes) -> None:
    _refused(data)
    _refused(values.MAGIC + bytes([values.VERSION]) + data)  # past the header: the tags themselves


@FUZZ
@given(
    DATA,
    st.lists(
        st.tuples(st.integers(0), st.sampled_from(["flip", "truncate", "insert", "length"]), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_encodings_decode_or_raise_data_error(value: Any, mutations: List[tuple]) -> None:
    data = bytearray(encode_value(value))
    for position, kind, argument in mutations:
        at = position % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << (argument % 8)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([argument])
        elif kind == "length":  # a huge count or length wherever it lands
            data[at : at + 4] = (HUGE_LENGTHS[argument % len(HUGE_LENGTHS)] % (1 << 32)).to_bytes(4, "little")
    _refused(bytes(data))


@FUZZ
@given(
    st.sampled_from(sorted(DTYPES)),
    st.lists(st.integers(0, 2**64 - 1) | st.just(0), max_size=70),
    st.binary(max_size=64),
)
def test_arrays_of_any_dimensions_decode_or_raise_data_error(dtype: str, dims: List[int], contents: bytes) -> None:
    head = b"RV\x01a" + bytes([len(dtype) + 1]) + b"<" + dtype.encode() + bytes([len(dims)])
    _refused(head + b"".join(struct.pack("<Q", dim) for dim in dims) + contents)


class NotData:
    pass


@FUZZ
@given(DATA, st.sampled_from([NotData(), bytearray(b"x"), np.array([1], dtype=object), range(3), True.__class__]))
def test_anything_that_is_not_data_inside_a_value_is_refused_by_name(value: Any, stranger: Any) -> None:
    for wrapped in ([value, stranger], {"k": (stranger,)}, (value, [stranger])):
        try:
            encode_value(wrapped)
        except DataError as exc:
            assert "is not data" in str(exc)
        else:
            raise AssertionError("%r was encoded" % (stranger,))


def test_bounds_are_enforced_on_both_sides() -> None:
    nested: Any = None
    for _ in range(MAX_DEPTH):
        nested = [nested]
    assert same(nested, decode_value(encode_value(nested)))
    too_deep = [nested]
    for attempt in (
        lambda: encode_value(too_deep),
        lambda: decode_value(b"RV\x01" + b"l\x01\x00\x00\x00" * 65 + b"N"),
    ):
        try:
            attempt()
        except DataError as exc:
            assert "containers nested more than 64 deep" in str(exc)
        else:
            raise AssertionError("nesting past the bound went through")
    big = bytes(1000)
    for attempt in (lambda: encode_value(big, max_bytes=999), lambda: decode_value(encode_value(big), max_bytes=999)):
        try:
            attempt()
        except DataError as exc:
            assert "exceeds the limit of 999" in str(exc)
        else:
            raise AssertionError("a value past max_bytes went through")
    assert math.isnan(decode_value(encode_value(float("nan"))))
