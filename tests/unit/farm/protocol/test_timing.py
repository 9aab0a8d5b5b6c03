"""farm.protocol.timing: the options of a TIME request, checked alike on the host and the board."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from farm.errors import ArgumentError
from farm.protocol.timing import FLUSH_NON_FIRST_ARG, MAX_REPEAT, TimingOptions, timing_options


def test_missing_options_take_tvms_defaults() -> None:
    assert timing_options({}) == TimingOptions(number=10, repeat=1, min_repeat_ms=0, limit_zero_time_iterations=100,
                                               cooldown_interval_ms=0, repeats_to_cooldown=1, cache_flush_bytes=0,
                                               f_preproc="", pin_cpu=None)  # fmt: skip


def test_options_round_trip_through_their_metadata() -> None:
    options = TimingOptions(number=3, repeat=7, min_repeat_ms=5, f_preproc=FLUSH_NON_FIRST_ARG, pin_cpu=1)
    assert timing_options(options.to_meta()) == options


@pytest.mark.parametrize(
    "meta, says",
    [
        ({"number": 0}, "number is 0; it must be between 1 and 2147483647"),
        ({"repeat": MAX_REPEAT + 1}, "repeat is %d; it must be between 1 and %d" % (MAX_REPEAT + 1, MAX_REPEAT)),
        ({"repeats_to_cooldown": 0}, "repeats_to_cooldown is 0"),
        ({"min_repeat_ms": -1}, "min_repeat_ms is -1"),
        ({"cache_flush_bytes": 2048}, "cache_flush_bytes is 2048; it must be between 0 and 1024"),
        ({"number": "10"}, "number must be an integer, not '10'"),
        ({"repeat": False}, "repeat must be an integer, not False"),
        ({"f_preproc": 3}, "f_preproc 3 is not one this board offers"),
        ({"pin_cpu": True}, "pin_cpu must be a CPU number"),
        ({"pin_cpu": "0"}, "pin_cpu must be a CPU number"),
        ({"numbr": 10}, "unknown option 'numbr'"),
    ],
)
def test_bad_options_are_named(meta: Dict[str, Any], says: str) -> None:
    with pytest.raises(ArgumentError, match="^time_evaluator: " + says.replace("(", r"\(")):
        timing_options(meta, max_flush_bytes=1024)
