"""Compare a result from a board with a reference computed on the host by numpy.

    from pytest_remotedev import assert_close
    assert_close(c.numpy(), a_host + b_host)              # tolerances chosen by dtype
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
    default_rtol, default_atol = tolerances_for(np.result_type(actual.dtype, expected.dtype))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if actual.dtype.kind in "biu" and expected.dtype.kind in "biu":
        close = actual == expected
    else:
        close = np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan)
    bad = np.flatnonzero(~close)
    if not bad.size:
        return
    flat_actual, flat_expected = actual.reshape(-1), expected.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(flat_actual[bad].astype(np.complex128) - flat_expected[bad].astype(np.complex128))
    error = np.where(np.isnan(error), np.inf, error)
    worst = bad[np.argsort(-error, kind="stable")[:WORST_SHOWN]]
    lines = [
        "%s differs from the reference in %d of %d elements (dtype %s, rtol=%g, atol=%g)"
        % (name, bad.size, actual.size, actual.dtype, rtol, atol),
        "worst %d:" % len(worst),
    ]
    for flat_index in worst:
        index = np.unravel_index(flat_index, actual.shape) if actual.ndim else ()
        got, want = flat_actual[flat_index], flat_expected[flat_index]
        with np.errstate(invalid="ignore", over="ignore"):
            difference = abs(complex(got) - complex(want))
        lines.append("  at %s: got %r, expected %r (difference %.6g)" % (tuple(int(i) for i in index), got.item(),
                                                                         want.item(), difference))  # fmt: skip
    raise AssertionError("\n".join(lines))
