"""Unit tests of pytest_remotedev.assert_close and its per-dtype tolerances."""

from __future__ import annotations

import re
from typing import List

import numpy as np
import pytest

from pytest_remotedev import assert_close, tolerances_for
from pytest_remotedev.compare import DEFAULT_TOLERANCES, WORST_SHOWN


def failure(actual: object, expected: object, **kwargs: object) -> List[str]:
    """The lines of the AssertionError that ``assert_close`` raises (fails the test if it passes)."""
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, **kwargs)  # type: ignore[arg-type]
    return str(info.value).splitlines()


# --- passing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "int16", "int32", "int64", "uint8", "uint64", "float16", "float32", "float64"]
)
def test_equal_arrays_pass(dtype: str) -> None:
    data = (np.arange(24) % 7).reshape(2, 3, 4).astype(dtype)
    assert_close(data, data.copy())


def test_lists_scalars_and_empty_arrays_pass() -> None:
    assert_close([1, 2, 3], np.array([1, 2, 3]))
    assert_close(2.5, np.float64(2.5))
    assert_close(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex64", "complex128"])
def test_within_the_default_tolerance_passes(dtype: str) -> None:
    rtol, atol = tolerances_for(dtype)
    expected = np.linspace(1, 100, 50).astype(dtype)
    assert_close((expected * (1 + rtol / 4)).astype(dtype), expected)  # relative error inside rtol
    assert_close(np.full(3, atol / 2, dtype), np.zeros(3, dtype))  # absolute error inside atol near zero


def test_outside_the_default_tolerance_fails() -> None:
    expected = np.ones(4, np.float32)
    actual = expected.copy()
    actual[2] = 1 + 1e-3  # well past rtol 1e-5 of float32
    lines = failure(actual, expected)
    assert lines[0].startswith("result differs from the reference in 1 of 4 elements")


def test_explicit_tolerances_are_used() -> None:
    expected = np.array([100.0, 200.0])
    actual = np.array([101.0, 200.0])
    assert_close(actual, expected, rtol=0.02)
    assert_close(actual, expected, atol=1.5)
    assert_close(actual, expected, rtol=0.0, atol=1.0)  # the boundary counts as close
    lines = failure(actual, expected, rtol=0.001, atol=0.5)
    assert "rtol=0.001, atol=0.5" in lines[0]


def test_tolerance_is_relative_to_the_expected_value() -> None:
    assert_close(np.array([1.0]), np.array([1.5]), rtol=0.34, atol=0.0)  # 0.5 <= 0.34 * |1.5|
    failure(np.array([1.5]), np.array([1.0]), rtol=0.34, atol=0.0)  # 0.5 > 0.34 * |1.0|


# --- NaN and infinities -------------------------------------------------------------------------------------


def test_nan_equals_nan_by_default() -> None:
    data = np.array([np.nan, 1.0, np.inf, -np.inf])
    assert_close(data, data.copy())
    assert_close(data.astype(np.float32), data.astype(np.float32))
    assert_close(np.array([complex(np.nan, 0)]), np.array([complex(np.nan, 0)]))


def test_nan_against_nan_fails_without_equal_nan() -> None:
    lines = failure(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), equal_nan=False)
    assert lines[0].startswith("result differs from the reference in 1 of 2 elements")
    assert lines[2].startswith("  at (0,): got nan, expected nan")


def test_nan_against_a_number_fails_and_is_listed_first() -> None:
    actual = np.array([1.0, np.nan, 3.5, 4.0])
    expected = np.array([1.0, 2.0, 3.0, 4.0])
    lines = failure(actual, expected)
    assert lines[0].startswith("result differs from the reference in 2 of 4 elements")
    assert lines[2].startswith("  at (1,): got nan, expected 2.0")  # a NaN counts as the worst error
    assert lines[3] == "  at (2,): got 3.5, expected 3.0 (difference 0.5)"


def test_infinity_against_a_number_fails() -> None:
    lines = failure(np.array([np.inf, 1.0]), np.array([1.0, 1.0]))
    assert lines[2] == "  at (0,): got inf, expected 1.0 (difference inf)"


# --- integers and booleans are exact ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "uint32", "uint64"])
def test_integers_are_exact(dtype: str) -> None:
    expected = np.arange(1, 101).astype(dtype)
    actual = expected.copy()
    actual[-1] += 1  # a relative error of 1% (1e-2 of 101), inside any float tolerance but not equal
    lines = failure(actual, expected)
    assert lines[0] == "result differs from the reference in 1 of 100 elements (dtype %s, rtol=0, atol=0)" % dtype
    assert lines[2] == "  at (99,): got 101, expected 100 (difference 1)"


def test_large_integers_differing_by_one() -> None:
    big = 2**62
    lines = failure(np.array([big + 1], np.int64), np.array([big], np.int64))
    assert lines[0].startswith("result differs from the reference in 1 of 1 elements (dtype int64, rtol=0, atol=0)")
    assert lines[2].startswith("  at (0,): got %d, expected %d" % (big + 1, big))


def test_booleans_are_exact() -> None:
    lines = failure(np.array([True, False, True]), np.array([True, True, True]))
    assert lines[0] == "result differs from the reference in 1 of 3 elements (dtype bool, rtol=0, atol=0)"
    assert lines[2] == "  at (1,): got False, expected True (difference 1)"


def test_signed_against_unsigned_compares_values() -> None:
    assert_close(np.array([1, 2], np.uint8), np.array([1, 2], np.int64))
    lines = failure(np.array([255], np.uint8), np.array([-1], np.int8))
    assert lines[2] == "  at (0,): got 255, expected -1 (difference 256)"


# --- the failure message ---------------------------------------------------------------------------------


def test_message_counts_and_lists_the_worst_with_indices() -> None:
    expected = np.zeros((3, 4), np.float64)
    actual = expected.copy()
    errors = {(0, 1): 0.5, (1, 3): -4.0, (2, 0): 2.0, (2, 2): 1.0, (0, 0): 3.0, (1, 1): 0.25, (2, 3): 0.125}
    for index, error in errors.items():
        actual[index] = error
    lines = failure(actual, expected)
    assert lines[0] == "result differs from the reference in 7 of 12 elements (dtype float64, rtol=1e-12, atol=1e-15)"
    assert lines[1] == "worst %d:" % WORST_SHOWN
    shown = [tuple(int(i) for i in re.findall(r"\d+", line.split(":")[0])) for line in lines[2:]]
    assert shown == [(1, 3), (0, 0), (2, 0), (2, 2), (0, 1)]  # largest differences first, at most WORST_SHOWN
    assert lines[2] == "  at (1, 3): got -4.0, expected 0.0 (difference 4)"
    assert len(lines) == 2 + WORST_SHOWN


def test_message_with_few_differences_lists_them_all() -> None:
    lines = failure(np.array([1.0, 2.0, 3.0], np.float32), np.array([1.0, 2.5, 3.0], np.float32))
    assert lines == [
        "result differs from the reference in 1 of 3 elements (dtype float32, rtol=1e-05, atol=1e-06)",
        "worst 1:",
        "  at (1,): got 2.0, expected 2.5 (difference 0.5)",
    ]


def test_message_of_a_scalar_and_a_name() -> None:
    lines = failure(np.float32(1.0), np.float32(1.5), name="c")
    assert lines[0].startswith("c differs from the reference in 1 of 1 elements")
    assert lines[2] == "  at (): got 1.0, expected 1.5 (difference 0.5)"


def test_message_of_complex_values() -> None:
    lines = failure(np.array([1 + 1j, 2 + 0j]), np.array([1 + 2j, 2 + 0j]))
    assert lines[0].startswith("result differs from the reference in 1 of 2 elements (dtype complex128")
    assert lines[2] == "  at (0,): got (1+1j), expected (1+2j) (difference 1)"


@pytest.mark.parametrize(
    "actual, expected, message",
    [
        (np.zeros(3), np.zeros(4), "result has shape (3,), the reference (4,)"),
        (np.zeros((2, 3)), np.zeros((3, 2)), "result has shape (2, 3), the reference (3, 2)"),
        (np.zeros((1, 3)), np.zeros(3), "result has shape (1, 3), the reference (3,)"),  # no broadcasting
        (np.float64(1.0), np.ones(1), "result has shape (), the reference (1,)"),
    ],
)
def test_shape_mismatch(actual: np.ndarray, expected: np.ndarray, message: str) -> None:
    assert failure(actual, expected) == [message]


# --- tolerances by dtype ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float16", (1e-3, 1e-3)),
        (np.float32, (1e-5, 1e-6)),
        (np.dtype("float64"), (1e-12, 1e-15)),
        ("complex64", (1e-5, 1e-6)),
        ("complex128", (1e-12, 1e-15)),
        ("int8", (0.0, 0.0)),
        ("uint64", (0.0, 0.0)),
        (bool, (0.0, 0.0)),
        ("longdouble", DEFAULT_TOLERANCES["float64"]),  # floats without an entry: float64's
    ],
)
def test_tolerances_for(dtype: object, expected: tuple) -> None:
    assert tolerances_for(dtype) == expected


def test_defaults_follow_the_coarser_of_the_two_dtypes() -> None:
    half = np.array([1.0], np.float16)
    single = np.array([1.0 + 5e-4], np.float32)
    assert_close(single, half)  # float16's tolerances: a float32 result cannot be held to more than its reference
    reference = np.array([1.0], np.float64)
    lines = failure(single, reference)  # a float32 result against a float64 reference: float32's tolerances
    assert "dtype float32, rtol=1e-05, atol=1e-06" in lines[0]
    assert_close(np.float32([1 / 3]), np.float64([1 / 3]))  # float32 rounding is within float32's tolerances
