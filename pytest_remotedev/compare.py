"""Compare a result from a board with a reference computed on the host by numpy.

    from pytest_remotedev import assert_close
    assert_close(c.numpy(), a_host + b_host)              # tolerances of the coarser float dtype
    assert_close(out, ref, rtol=1e-3, atol=1e-4)

On a mismatch the AssertionError says how many elements differ, shows the
worst ones with their indices, and names the tolerances used.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

#: Default (rtol, atol) by dtype kind and size: exact for integers and booleans.
DEFAULT_TOLERANCES = {
    "float16": (1e-3, 1e-3),
    "float32": (1e-5, 1e-6),
    "float64": (1e-12, 1e-15),
    "complex64": (1e-5, 1e-6),
    "complex128": (1e-12, 1e-15),
}
#: How many of the worst elements a failure message lists.
WORST_SHOWN = 5


def tolerances_for(dtype: Any) -> Tuple[float, float]:
    """The default ``(rtol, atol)`` for results of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return DEFAULT_TOLERANCES.get(dtype.name, DEFAULT_TOLERANCES["float64"])
    return (0.0, 0.0)


def assert_close(
    actual: Any,
    expected: Any,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    equal_nan: bool = True,
    name: str = "result",
) -> None:
    """Fail unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere (numpy's rule)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError("%s has shape %s, the reference %s" % (name, actual.shape, expected.shape))
    dtype = _coarser(actual.dtype, expected.dtype)
    default_rtol, default_atol = tolerances_for(dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    exact = dtype.kind in "biu"
    if exact and rtol == 0 and atol == 0:
        close = actual == expected
    else:
        close = np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan)
    bad = np.flatnonzero(~close)
    if not bad.size:
        return
    got, want = actual.reshape(-1)[bad], expected.reshape(-1)[bad]
    if exact:  # Python ints: no rounding of large 64-bit values
        difference = np.abs(got.astype(object) - want.astype(object))
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            difference = np.abs(got.astype(np.complex128) - want.astype(np.complex128))
        difference = np.where(np.isnan(difference), np.inf, difference)  # a NaN where a number belongs is worst
    order = sorted(range(bad.size), key=lambda i: difference[i], reverse=True)[:WORST_SHOWN]
    lines = [
        "%s differs from the reference in %d of %d elements (dtype %s, rtol=%g, atol=%g)"
        % (name, bad.size, actual.size, dtype, rtol, atol),
        "worst %d:" % len(order),
    ]
    for i in order:
        index = tuple(int(n) for n in np.unravel_index(bad[i], actual.shape)) if actual.ndim else ()
        values = (index, got[i].item(), want[i].item(), _number(difference[i]))
        lines.append("  at %s: got %r, expected %r (difference %s)" % values)
    raise AssertionError("\n".join(lines))


def _coarser(first: np.dtype, second: np.dtype) -> np.dtype:
    """The dtype whose precision limits the comparison: a float32 result against a float64 reference is float32's."""
    floats = [dtype for dtype in (first, second) if dtype.kind in "fc"]
    if not floats:
        return np.result_type(first, second)
    return max(floats, key=lambda dtype: np.finfo(dtype).resolution)


def _number(value: Any) -> str:
    return str(value) if isinstance(value, int) else "%.6g" % value
