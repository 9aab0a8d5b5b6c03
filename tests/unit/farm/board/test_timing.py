"""farm.board.timing in this process: the loop's calibration, TVM's growth of ``number``, the CPUs put back."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from farm.board.timing import FirstArray, calibrate, last_level_cache_bytes, time_function
from farm.errors import ArgumentError
from farm.protocol.timing import FLUSH_NON_FIRST_ARG, TimingOptions

LIBC = ctypes.CDLL(None)


def usleep() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    function = LIBC.usleep
    function.argtypes, function.restype = [ctypes.c_uint], ctypes.c_int
    return function


def test_the_calibration_measures_a_call_and_a_batch() -> None:
    overhead = calibrate(usleep(), (0,))
    assert 0 < overhead.per_call_ns < 1e6 and overhead.batch_ns >= 0 and overhead.spread_ns >= 0
    elapsed = int(overhead.batch_ns + 10 * (overhead.per_call_ns + 500))
    assert overhead.per_run(elapsed, 10) == pytest.approx(500, abs=1)


def test_number_grows_until_a_repeat_lasts_min_repeat_ms() -> None:
    reply = time_function(usleep(), (200,), TimingOptions(number=1, repeat=2, min_repeat_ms=10))
    assert reply["number"] >= 10_000 / 200 / 2 and len(reply["results"]) == 2  # sleeps overshoot: at least half
    assert all(figure >= 200e-6 for figure in reply["results"]), reply["results"]
    assert reply["method"] == "board-python" and reply["state"]["cpu"] == reply["cpu"]


def test_flushing_and_cooldown_run_and_the_cpus_are_put_back() -> None:
    before = os.sched_getaffinity(0)
    buffer = ctypes.create_string_buffer(4096)
    options = TimingOptions(number=2, repeat=3, cooldown_interval_ms=1, cache_flush_bytes=4096,
                            f_preproc=FLUSH_NON_FIRST_ARG, pin_cpu=min(before))  # fmt: skip
    reply = time_function(usleep(), (1,), options, FirstArray(ctypes.addressof(buffer), 4096))
    assert reply["cpu"] == min(before) and len(reply["results"]) == 3
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ArgumentError, match="pin_cpu=9999 is not among the CPUs"):
        time_function(usleep(), (1,), TimingOptions(pin_cpu=9999))
    assert os.sched_getaffinity(0) == before


def test_the_last_level_cache_from_sysfs(tmp_path: Path) -> None:
    for index, size in enumerate(["32K", "1024K", "32768K"]):
        (tmp_path / ("sys/devices/system/cpu/cpu0/cache/index%d" % index)).mkdir(parents=True)
        (tmp_path / ("sys/devices/system/cpu/cpu0/cache/index%d/size" % index)).write_text(size + "\n")
    assert last_level_cache_bytes(str(tmp_path)) == 32 << 20
    assert last_level_cache_bytes(str(tmp_path / "nothing")) == 32 << 20  # the default: half of 64 MiB
