"""time_evaluator on a real board: TVM's options and semantics, the loop's own cost removed, the board's state
reported, bad options refused before anything runs, and a hostile client's TIME request refused by the board."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import farm
from conftest import BoardServer, every_board_server, wait_for
from farm.protocol.ops import Op
from farm.protocol.timing import FLUSH_NON_FIRST_ARG

SPIN = "void spin_ns(int64_t ns)"
NOTHING = "void nothing(const float *a, const float *b, float *c, int64_t n)"
VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"

pytestmark = every_board_server


@pytest.fixture
def timing(remote: farm.RemoteSession, kernels: Dict[str, Path]) -> farm.RemoteModule:
    remote.upload(kernels["libtimed.so"])
    return remote.load_module("libtimed.so")


@pytest.fixture
def vectors(remote: farm.RemoteSession) -> Dict[str, farm.RemoteArray]:
    return {name: remote.array(np.ones(4096, np.float32)) for name in "abc"}


def test_a_kernel_of_known_cost_reads_within_its_bounds(
    remote: farm.RemoteSession, timing: farm.RemoteModule, board_server: BoardServer
) -> None:
    """spin_ns(50 µs) spins at least 50 µs; what the loop costs is not counted (a loose upper bound, on the
    fastest repeat: a busy machine preempts the spin, which only lengthens it, and can do so in most repeats)."""
    result = timing.time_evaluator("spin_ns", remote.cpu(), number=20, repeat=5, signature=SPIN)(50_000)
    assert isinstance(result, farm.BenchmarkResult) and len(result.results) == 5 and result.number == 20
    assert 50e-6 - result.overhead_spread_s <= result.median, result
    assert result.min < 50e-6 * 3 + 1e-3, result
    method = "board-native" if board_server.native else "board-python"
    assert result.min <= result.median <= result.max and result.method == method
    assert result.overhead_s > 0 and result.function == "spin_ns"
    assert result.board == {
        "key": "test",
        "name": remote.system_info()["name"],
        "address": "127.0.0.1:%d" % remote.port,
    }


def test_a_time_request_may_carry_the_release_of_arrays(remote: farm.RemoteSession, timing: farm.RemoteModule) -> None:
    """Arrays dropped on the host are released with the next request, whatever it is: a TIME request too."""
    evaluator = timing.get_function("spin_ns", SPIN).time_evaluator(number=2, repeat=1)
    baseline = remote.system_info()["live_arrays"]
    dropped = [remote.empty(16, "uint8") for _ in range(3)]
    assert remote.system_info()["live_arrays"] == baseline + 3
    del dropped  # their ids go with the next request: the TIME request
    assert len(evaluator(1000).results) == 1
    assert remote.system_info()["live_arrays"] == baseline


def test_the_loops_own_cost_is_subtracted(timing: farm.RemoteModule, vectors: Dict[str, farm.RemoteArray]) -> None:
    """A function that does nothing measures at most 1 µs, though the loop's call costs more than that, unless
    the board says why its figure is noisy (a busy machine slows the loop more than the calibration)."""
    nothing = timing.get_function("nothing", NOTHING)
    result = nothing.time_evaluator(number=10_000, repeat=10)(vectors["a"], vectors["b"], vectors["c"], 4096)
    assert result.median <= 1e-6 or result.noisy, result
    assert 0 < result.overhead_s and result.overhead_spread_s >= 0


def test_arrays_freed_before_the_timing_are_released_on_the_way(
    remote: farm.RemoteSession, timing: farm.RemoteModule
) -> None:
    """A request carries the ids of arrays the client dropped (``release``); TIME takes them as any request does."""
    dropped = remote.array(np.ones(4, np.float32))
    del dropped
    gc.collect()
    assert remote._release  # the next request carries it
    result = timing.time_evaluator("spin_ns", number=2, signature=SPIN)(1000)
    assert len(result.results) == 1 and not remote._release
    assert remote.system_info()["live_arrays"] == 0


def test_min_repeat_ms_grows_number_as_tvm_does(timing: farm.RemoteModule) -> None:
    spin = timing.get_function("spin_ns", SPIN)
    result = spin.time_evaluator(number=1, repeat=2, min_repeat_ms=20)(100_000)
    assert result.number > 100, result.number  # 100 µs or more each, grown from 1 until a repeat lasts 20 ms
    assert result.number * (result.results[-1] + result.overhead_s) >= 0.0195, result
    assert len(result.results) == 2


def test_str_is_tvms_and_the_state_comes_with_the_figures(
    remote: farm.RemoteSession, timing: farm.RemoteModule
) -> None:
    result = timing.time_evaluator("spin_ns", number=5, repeat=3, signature=SPIN)(10_000)
    lines = str(result).splitlines()
    titles = ["mean", "(ms)", "median", "(ms)", "max", "(ms)", "min", "(ms)", "std", "(ms)"]
    assert lines[0] == "Execution time summary:" and lines[1].split() == titles
    assert float(lines[2].split()[1]) == pytest.approx(result.median * 1000, abs=1e-4)
    state = result.state
    assert state is not None and state["machine"] == os.uname().machine and state["cpu_count"] == os.cpu_count()
    assert state["emulator"] is None and result.emulated is None
    assert set(state) >= {"governor", "current_khz", "temperatures_c", "throttled", "load_average"}
    assert result.cpu in os.sched_getaffinity(0) and result.to_dict()["cpu"] == result.cpu
    assert farm.BenchmarkResult.from_dict(result.to_dict()).to_dict() == result.to_dict()


def test_pin_cpu_runs_the_loop_on_that_cpu(timing: farm.RemoteModule) -> None:
    spin = timing.get_function("spin_ns", SPIN)
    last = max(os.sched_getaffinity(0))
    assert spin.time_evaluator(number=2, pin_cpu=last)(1000).cpu == last
    with pytest.raises(farm.RemoteError, match=r"pin_cpu=4096 is not among the CPUs this session may run on"):
        spin.time_evaluator(pin_cpu=4096)(1000)
    assert spin(0) is None  # the session goes on, its CPUs as before
    assert spin.time_evaluator(number=2)(1000).cpu in os.sched_getaffinity(0)


def test_cache_flushing_options_run(remote: farm.RemoteSession, kernels: Dict[str, Path],
                                    vectors: Dict[str, farm.RemoteArray]) -> None:  # fmt: skip
    remote.upload(kernels["libvadd.so"])
    vadd = remote.load_module("libvadd.so").get_function("vadd", VADD)
    arguments = (vectors["a"], vectors["b"], vectors["c"], 4096)
    flushed = vadd.time_evaluator(number=1, repeat=3, f_preproc=FLUSH_NON_FIRST_ARG)(*arguments)
    copied = vadd.time_evaluator(number=1, repeat=3, cache_flush_bytes=1 << 20)(*arguments)
    assert len(flushed.results) == len(copied.results) == 3
    np.testing.assert_array_equal(vectors["c"].numpy(), np.full(4096, 2, np.float32))  # it ran, on these arrays


@pytest.mark.parametrize(
    "options, says",
    [
        ({"number": -1}, r"number is -1; it must be between 1 and"),
        ({"repeat": 0}, r"repeat is 0; it must be between 1 and"),
        ({"min_repeat_ms": 1.5}, r"min_repeat_ms must be an integer"),
        ({"f_preproc": "flush_everything"}, r"f_preproc 'flush_everything' is not one this board offers"),
        ({"pin_cpu": -2}, r"pin_cpu must be a CPU number"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(
    remote: farm.RemoteSession, timing: farm.RemoteModule, options: Dict[str, object], says: str
) -> None:
    spin = timing.get_function("spin_ns", SPIN)
    requests = remote._next_id
    with pytest.raises(farm.ArgumentError, match=says):
        spin.time_evaluator(**options)  # type: ignore[arg-type]
    assert remote._next_id == requests  # nothing was sent


def test_a_wrong_signature_is_refused_before_anything_runs(
    remote: farm.RemoteSession, timing: farm.RemoteModule, vectors: Dict[str, farm.RemoteArray]
) -> None:
    evaluator = timing.get_function("nothing", NOTHING).time_evaluator(number=1)
    requests = remote._next_id
    with pytest.raises(farm.ArgumentError, match=r"nothing takes 4 arguments"):
        evaluator(vectors["a"], vectors["b"])
    with pytest.raises(farm.ArgumentError, match=r"argument 4"):
        evaluator(vectors["a"], vectors["b"], vectors["c"], vectors["a"])
    assert remote._next_id == requests


@pytest.mark.parametrize(
    "meta, says",
    [
        ({"number": 0}, r"number is 0"),
        ({"repeat": 10**9}, r"repeat is 1000000000"),
        ({"cache_flush_bytes": 1 << 40}, r"cache_flush_bytes is \d+; it must be between 0 and"),
        ({"number": True}, r"number must be an integer"),
        ({"evil": 1}, r"unknown option 'evil'"),
    ],
)
def test_the_board_checks_a_hostile_clients_options(
    remote: farm.RemoteSession, timing: farm.RemoteModule, meta: Dict[str, object], says: str
) -> None:
    """A client that skips the host's checks and writes the TIME request itself gets an error; the session goes on."""
    spin = timing.get_function("spin_ns", SPIN)
    with pytest.raises(farm.RemoteError, match=says):
        remote._request(Op.TIME, meta, spin._payload([1000]))
    assert spin(0) is None


def test_a_busy_board_is_flagged_noisy(timing: farm.RemoteModule) -> None:
    """Busy loops beside the board (one more than its CPUs) make each figure noisy, saying why."""
    spin = timing.get_function("spin_ns", SPIN)
    count = len(os.sched_getaffinity(0)) + 1
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        wait_for(lambda: _running() > count, 10, "the busy loops run")
        result = spin.time_evaluator(number=10, repeat=5)(20_000)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert result.noisy and any("other processes were running" in reason for reason in result.noise), result.noise
    assert "noisy: " in str(result)


def _running() -> int:
    with open("/proc/stat") as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("procs_running "))
