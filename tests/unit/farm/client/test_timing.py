"""farm.client.timing: BenchmarkResult's figures, its TVM layout, and a hostile board's reply checked."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest

from farm.client.timing import BenchmarkResult

FIGURES = [0.0031, 0.0029, 0.0030, 0.0042, 0.0030]
QUIET = {"machine": "aarch64", "cpu": 2, "cpu_count": 4, "governor": "performance", "throttled": False,
         "load_average": [0.1, 0.2, 0.3], "other_processes_running": 0, "emulator": None}  # fmt: skip


def reply(**changes: Any) -> Dict[str, Any]:
    meta = {"results": FIGURES, "number": 10, "overhead_s": 1.2e-7, "overhead_spread_s": 1e-8, "cpu": 2,
            "state": QUIET, "method": "board-python"}  # fmt: skip
    meta.update(changes)
    return meta


def test_the_figures_are_numpys() -> None:
    result = BenchmarkResult(FIGURES)
    assert result.results == tuple(FIGURES) and result.repeat == 5
    for name in ("mean", "median", "min", "max", "std"):
        assert getattr(result, name) == pytest.approx(float(getattr(np, name)(FIGURES)), rel=1e-12), name


def test_printed_as_tvm_prints_its_benchmark_result() -> None:
    tvm_module = pytest.importorskip("tvm.runtime.module", reason="TVM's own BenchmarkResult is the reference")
    ours, theirs = BenchmarkResult(FIGURES), tvm_module.BenchmarkResult(FIGURES)
    assert str(ours) == str(theirs)
    assert repr(ours).startswith("BenchmarkResult(min=0.0029, mean=")
    wrapped = BenchmarkResult.from_tvm(theirs, function="vadd", board={"key": "k"})
    assert wrapped.method == "tvm" and wrapped.results == tuple(FIGURES)
    assert wrapped.noise == ["the repeats vary by 14.9% (more than 5%)"]  # the spread alone tells
    steady = BenchmarkResult.from_tvm(tvm_module.BenchmarkResult([0.003, 0.003, 0.003]))
    assert not steady.noisy and steady.state is None


def test_a_quiet_board_with_steady_repeats_is_not_noisy() -> None:
    steady = BenchmarkResult.from_reply(reply(results=[0.0030, 0.0030, 0.0031]), "vadd", {"key": "k"}, 3)
    assert not steady.noisy and steady.noise == [] and steady.number == 10 and steady.cpu == 2
    assert steady.overhead_s == 1.2e-7 and steady.overhead_spread_s == 1e-8 and "noisy" not in str(steady)


def test_noise_is_flagged_with_its_reasons() -> None:
    state = dict(QUIET, governor="ondemand", throttled=True, other_processes_running=5)
    result = BenchmarkResult.from_reply(reply(state=state), "vadd", {}, 5)
    assert result.noise == [
        "the CPU governor is 'ondemand', not 'performance'",
        "the board has throttled",
        "5 other processes were running on 4 CPUs",
        "the repeats vary by 14.9% (more than 5%)",
    ]
    assert str(result).splitlines()[-1] == "noisy: " + "; ".join(result.noise)


def test_an_emulated_board_says_so() -> None:
    result = BenchmarkResult.from_reply(reply(state=dict(QUIET, emulator="qemu-aarch64")), "vadd", {}, 5)
    assert result.emulated == "qemu-aarch64"
    assert "emulated: measured under qemu-aarch64; its times are not the hardware's" in str(result)


def test_to_dict_and_back() -> None:
    result = BenchmarkResult.from_reply(reply(), "vadd", {"key": "k", "name": "b1", "address": "h:1"}, 5)
    data = result.to_dict()
    assert data["results"] == FIGURES and data["board"]["name"] == "b1" and data["function"] == "vadd"
    assert BenchmarkResult.from_dict(data).to_dict() == data


@pytest.mark.parametrize(
    "meta, says",
    [
        ("nonsense", "no metadata"),
        (reply(results=FIGURES[:2]), "does not hold 5 figures"),
        (reply(results=[1.0, -1.0, 1.0, 1.0, 1.0]), "not non-negative numbers"),
        (reply(results=[1.0, float("nan"), 1.0, 1.0, 1.0]), "not non-negative numbers"),
        (reply(results=["1", 1.0, 1.0, 1.0, 1.0]), "not non-negative numbers"),
        (reply(number=0), "number of runs or overhead"),
        (reply(overhead_s="x"), "number of runs or overhead"),
    ],
)
def test_a_reply_that_makes_no_sense_is_refused(meta: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        BenchmarkResult.from_reply(meta, "vadd", {}, 5)


def test_a_hostile_state_is_read_as_data() -> None:
    """A board that sends a state of the wrong shapes gets no noise reason out of it, and no exception."""
    state = {"governor": ["x"], "throttled": "yes", "load_average": "high", "cpu_count": "4", "emulator": 7,
             "other_processes_running": 1e9}  # fmt: skip
    result = BenchmarkResult.from_reply(reply(state=state, cpu="0", results=[1.0] * 5), "vadd", {}, 5)
    assert result.noise == [] and result.emulated is None and result.cpu is None


def test_the_spread_of_figures_below_the_methods_resolution_is_not_noise() -> None:
    tiny = reply(results=[0.0, 2e-9, 0.0, 1e-9, 0.0], overhead_spread_s=5e-9)
    assert BenchmarkResult.from_reply(tiny, "nothing", {}, 5).noise == []
    resolved = reply(results=[1e-6, 2e-6, 1e-6, 1e-6, 1e-6], overhead_spread_s=5e-9)
    assert BenchmarkResult.from_reply(resolved, "nothing", {}, 5).noise[0].startswith("the repeats vary by")


def test_a_loop_that_lost_its_cpu_is_noisy() -> None:
    shared = BenchmarkResult.from_reply(reply(results=[0.003] * 5, on_cpu=[0.99, 0.55, 1.0]), "vadd", {}, 5)
    assert shared.on_cpu == [0.99, 0.55, 1.0] and shared.to_dict()["on_cpu"] == [0.99, 0.55, 1.0]
    assert shared.noise == [
        "the loop ran only 55% of the time of a repeat (other processes took the CPU, or the function waits)"
    ]
    hostile = BenchmarkResult.from_reply(reply(results=[0.003] * 5, on_cpu=["x", None, float("inf")]), "f", {}, 5)
    assert hostile.on_cpu == [] and hostile.noise == []


def test_the_timing_loops_own_load_is_not_noise() -> None:
    """The loop itself adds one to the load average: a 2-CPU board at load 1.9 is not busy, at 2.1 it is."""
    assert BenchmarkResult.from_reply(reply(state=dict(QUIET, cpu_count=2, load_average=[1.9, 1, 1]),
                                            results=[0.003] * 5), "f", {}, 5).noise == []  # fmt: skip
    busy = BenchmarkResult.from_reply(reply(state=dict(QUIET, cpu_count=2, load_average=[2.1, 1, 1]),
                                            results=[0.003] * 5), "f", {}, 5)  # fmt: skip
    assert busy.noise == ["the load average is 2.10 on 2 CPUs"]
