"""Unit tests of the regression decision: the failure thresholds, the Mann-Whitney U test, the verdicts, and the
false-alarm rate on samples drawn from one distribution (fixed seeds, so every run of this file gives the same
figures)."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, List, Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.ops.benchruns import Entry, Run
from farm.ops.regression import (
    ALPHA,
    DEFAULT_SPEC,
    GONE,
    IMPROVEMENT,
    MIN_SAMPLES,
    NEW,
    NOISY,
    REGRESSION,
    SAME,
    TOO_FEW,
    Comparison,
    FailSpec,
    FailSpecError,
    compare,
    compare_entries,
    format_comparison,
    mann_whitney_greater,
    parse_fail,
    regressions,
)

TRIALS = 1000  # per false-alarm measurement: a bounded loop, about a second


def entry(
    samples: Sequence[float],
    test: str = "t.py::test_add",
    key: str = "local",
    noise: Sequence[str] = (),
    **result: Any,
) -> Entry:
    """An entry of ``samples``; ``result`` adds to its result (``on_cpu``, ``state``)."""
    data = {"results": [float(value) for value in samples], "noise": list(noise), **result}
    return Entry(test, key, key + "-0", data)


def timings(seed: int, n: int, scale: float = 1e-3, spread: float = 0.05) -> List[float]:
    """``n`` repeats of a kernel taking ``scale`` seconds with the coefficient of variation ``spread`` (lognormal:
    timings have a long right tail)."""
    return list(scale * np.random.default_rng(seed).lognormal(0.0, spread, n))


def false_alarms(spec: str, n: int, spread: float) -> float:
    """The share of TRIALS comparisons of two sample sets of one distribution flagged as a regression."""
    flagged = sum(
        compare_entries(entry(timings(2 * trial, n, spread=spread)), entry(timings(2 * trial + 1, n, spread=spread)),
                        spec).regression
        for trial in range(TRIALS)
    )  # fmt: skip
    return flagged / TRIALS


# --- the thresholds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, spec",
    [
        ("median:10%", FailSpec("median", 0.10, True)),
        ("mean:5%", FailSpec("mean", 0.05, True)),
        ("min:10%", FailSpec("min", 0.10, True)),
        ("median:0.002", FailSpec("median", 0.002, False)),
        (" Median : 2.5 % ", FailSpec("median", 0.025, True)),
        ("median:0%", FailSpec("median", 0.0, True)),
    ],
)
def test_failure_thresholds_parse(text: str, spec: FailSpec) -> None:
    assert parse_fail(text) == spec
    assert parse_fail(str(spec)) == spec


@pytest.mark.parametrize(
    "text, problem",
    [
        ("median", "not a benchmark failure threshold"),
        ("10%", "not a benchmark failure threshold"),
        ("p99:10%", "unknown statistic 'p99'"),
        ("median:-5%", "0 or more"),
        ("median:inf", "not a benchmark failure threshold"),
        ("median:1e999", "finite"),
        ("median:1.2.3", "not a number"),
        ("median:10%%", "not a benchmark failure threshold"),
    ],
)
def test_a_bad_threshold_is_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(FailSpecError, match=problem):
        parse_fail(text)


def test_worse_and_better_beyond_relative_and_absolute_thresholds() -> None:
    relative, absolute = parse_fail("median:10%"), parse_fail("median:0.002")
    assert relative.worse(1.0, 1.11) and not relative.worse(1.0, 1.09)
    assert relative.better(1.0, 0.89) and not relative.better(1.0, 0.91)
    assert absolute.worse(0.010, 0.0121) and not absolute.worse(0.010, 0.0119)
    assert parse_fail("min:1%").figure([3.0, 1.0, 2.0]) == 1.0
    assert parse_fail("mean:1%").figure([3.0, 1.0, 2.0]) == 2.0


# --- the Mann-Whitney U test ------------------------------------------------------------------------------------


def test_complete_separation_of_five_and_five_gives_the_smallest_p() -> None:
    assert mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1 / math.comb(10, 5))
    assert mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == 1.0
    assert mann_whitney_greater([1, 2, 3, 4], [5, 6, 7, 8]) > ALPHA  # why fewer than MIN_SAMPLES cannot decide


def test_the_exact_p_value_matches_a_count_of_every_ordering() -> None:
    x, y = [1.0, 4.0, 6.0], [2.0, 5.0, 7.0, 8.0]
    observed = sum(b > a for a in x for b in y)
    pooled = x + y
    us = [sum(pooled[j] > pooled[i] for i in chosen for j in range(7) if j not in chosen)
          for chosen in itertools.combinations(range(7), 3)]  # fmt: skip
    assert mann_whitney_greater(x, y) == pytest.approx(sum(u >= observed for u in us) / len(us))


def test_the_normal_approximation_agrees_with_the_exact_p_for_large_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = timings(1, 40), timings(2, 40, scale=1.02e-3)
    exact = mann_whitney_greater(x, y)
    monkeypatch.setattr("farm.ops.regression.EXACT_PAIRS", 0)
    assert mann_whitney_greater(x, y) == pytest.approx(exact, rel=0.05, abs=1e-4)


def test_ties_are_corrected_for_and_all_equal_samples_give_no_evidence() -> None:
    assert mann_whitney_greater([1.0] * 6, [1.0] * 6) == 1.0
    tied = mann_whitney_greater([1, 1, 1, 2, 2, 2], [2, 2, 3, 3, 3, 3])
    assert 0 < tied < 0.05


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
)
def test_p_values_are_probabilities_and_the_two_directions_cover_every_outcome(x: List[float], y: List[float]) -> None:
    greater, less = mann_whitney_greater(x, y), mann_whitney_greater(y, x)
    assert 0.0 <= greater <= 1.0 and 0.0 <= less <= 1.0
    assert greater + less >= 1.0 - 1e-9  # P(U >= u) + P(U <= u) counts P(U = u) twice


# --- the verdicts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [MIN_SAMPLES, 20])
def test_three_times_slower_is_a_regression(n: int) -> None:
    comparison = compare_entries(entry(timings(1, n, spread=0.1)), entry(timings(2, n, scale=3e-3, spread=0.1)),
                                 "median:10%")  # fmt: skip
    assert comparison.verdict == REGRESSION and comparison.regression
    assert comparison.p_value is not None and comparison.p_value < ALPHA
    assert comparison.change == pytest.approx(2.0, rel=0.2)
    assert comparison.message().endswith("a regression: worse beyond median:10% and p < 0.01")
    assert Comparison.from_dict(json.loads(json.dumps(comparison.to_dict()))) == comparison


def test_three_times_faster_is_an_improvement() -> None:
    comparison = compare_entries(entry(timings(1, 10, scale=3e-3)), entry(timings(2, 10)), "median:10%")
    assert comparison.verdict == IMPROVEMENT and not comparison.regression


def test_a_five_percent_slowdown_is_not_a_regression_at_ten_percent() -> None:
    for seed in range(100):
        before, after = timings(2 * seed, 20, spread=0.01), timings(2 * seed + 1, 20, scale=1.05e-3, spread=0.01)
        assert compare_entries(entry(before), entry(after), "median:10%").verdict == SAME
        # the same samples are a regression at 2%: the slowdown is detected, only the threshold spares it
        assert compare_entries(entry(before), entry(after), "median:2%").verdict == REGRESSION


def test_the_same_distribution_is_flagged_in_less_than_one_percent_of_trials() -> None:
    default = false_alarms(str(DEFAULT_SPEC), 10, 0.05)
    at_ten = false_alarms("median:10%", 10, 0.05)
    no_threshold = false_alarms("median:0%", 10, 0.05)
    u_test = sum(mann_whitney_greater(timings(2 * trial, 10), timings(2 * trial + 1, 10)) < ALPHA
                 for trial in range(TRIALS)) / TRIALS  # fmt: skip
    print("false alarms in %d trials of 10 against 10 repeats (CV 5%%): %s %.2f%%, median:10%% %.2f%%, "
          "median:0%% %.2f%%; the U test alone p < %g in %.2f%%" % (TRIALS, DEFAULT_SPEC, 100 * default,
          100 * at_ten, 100 * no_threshold, ALPHA, 100 * u_test))  # fmt: skip
    assert default < 0.01 and at_ten < 0.01
    assert 0 < u_test < 2 * ALPHA  # the test alone errs about as often as alpha says: neither never nor often
    assert at_ten <= default <= no_threshold <= u_test


def test_noisy_but_unchanged_is_not_flagged() -> None:
    assert false_alarms("median:10%", 10, 0.3) < 0.01
    # a preempted repeat now and then: the one slow outlier moves the mean, not the ranks
    before, after = timings(7, 10), timings(8, 10)
    after[3] *= 20
    comparison = compare_entries(entry(before), entry(after), "mean:10%")
    assert comparison.verdict == SAME and comparison.change is not None and comparison.change > 0.1
    assert comparison.message().endswith("the same: within mean:10%, or p >= 0.01")


def test_a_slowdown_of_some_repeats_only_is_noise_not_a_regression() -> None:
    before = timings(1, 20, spread=0.01)
    after = [value * (1.6 if index % 3 else 1.0) for index, value in enumerate(timings(2, 20, spread=0.01))]
    comparison = compare_entries(entry(before), entry(after), "median:10%")
    assert comparison.verdict == NOISY and not comparison.regression
    assert comparison.p_value is not None and comparison.p_value < ALPHA and comparison.change is not None
    assert comparison.change > 0.5
    assert comparison.message().endswith(
        "but not failed as noise: the fastest repeat is not slower beyond median:10%: only some repeats are"
    )


def test_on_a_noisy_run_a_slowdown_must_clear_the_baseline_spread() -> None:
    before = [1e-3 * (1 + 0.02 * index) for index in range(20)]  # 1.00 to 1.38 ms
    after = [value * 1.25 for value in before]  # every repeat 25 % slower, yet within the baseline's spread
    busy = ["the load average is 3.10 on 2 CPUs"]
    quiet = compare_entries(entry(before), entry(after), "median:10%")
    noisy = compare_entries(entry(before, noise=busy), entry(after), "median:10%")
    assert quiet.verdict == REGRESSION and noisy.verdict == NOISY
    assert "the baseline run is noisy and the fastest repeat is within median:10% of the baseline's 90% quantile" in (
        noisy.message()
    )
    much_slower = compare_entries(entry(before, noise=busy), entry([3 * v for v in before], noise=busy), "median:10%")
    assert much_slower.verdict == REGRESSION
    assert much_slower.message().endswith(
        "p < 0.01; the candidate run was noisy (the load average is 3.10 on 2 CPUs): time it again to confirm"
    )
    preempted = [*before[:9], 0.5]  # ten repeats, one of which took 500 ms
    assert compare_entries(entry(preempted, noise=busy), entry([3 * v for v in before[:10]]), "median:10%").regression


#: A board where other processes ran: its load average and its count of running processes both say so.
BUSY = {"load_average": [2.67, 1.9, 1.2], "cpu_count": 2, "other_processes_running": 3}
QUIET = {"load_average": [0.1, 0.1, 0.1], "cpu_count": 2, "other_processes_running": 0}


def test_a_busy_board_that_took_the_loops_cpu_is_noise_when_its_time_on_a_cpu_held() -> None:
    """Every repeat twice as slow in wall time, the loop on a CPU half the time on a busy board: the time on a
    CPU held, so other processes took the CPU. The same wall times with the time on a CPU doubled, on a quiet
    board, or for a function that waits in the baseline too, stay regressions."""
    before = timings(3, 20, scale=1e-4, spread=0.01)
    after = [2 * value for value in timings(4, 20, scale=1e-4, spread=0.01)]
    kept, halved = [1.0] * 20, [0.5] * 20
    baseline = entry(before, on_cpu=kept, state=QUIET)
    taken = compare_entries(baseline, entry(after, on_cpu=halved, state=BUSY), "median:10%")
    assert taken.verdict == NOISY and not taken.regression
    assert taken.message().endswith(
        "the candidate's loop was on a CPU 50% of the time (the median of its repeats; the baseline's 100%) while "
        "the load average is 2.67 on 2 CPUs, and its median time on a CPU, 100 us, is within median:10% of the "
        "baseline's 99.7 us: other processes took the CPU"
    ), taken.message()
    slower_code = compare_entries(baseline, entry(after, on_cpu=kept, state=BUSY), "median:10%")
    assert slower_code.regression  # the time on a CPU doubled too: the code got slower
    assert compare_entries(baseline, entry(after, on_cpu=halved, state=QUIET), "median:10%").regression
    waits = entry(before, on_cpu=[0.6] * 20, state=QUIET)  # never on a CPU 90% of a repeat: the function waits
    assert compare_entries(waits, entry(after, on_cpu=[0.3] * 20, state=BUSY), "median:10%").regression
    absolute = compare_entries(baseline, entry(after, on_cpu=halved, state=BUSY), "median:0.00001")
    assert absolute.verdict == NOISY


@pytest.mark.parametrize(
    "shares",
    [
        None,
        7,
        "0.5" * 20,
        {"0": 0.5},
        [],
        [0.5] * 19,
        *([0.5] * 19 + [bad] for bad in (None, 0.0, float("nan"), "0.5", True)),
    ],
)
def test_shares_that_are_not_one_positive_number_per_repeat_decide_nothing(shares: Any) -> None:
    before = timings(3, 20, scale=1e-4, spread=0.01)
    after = [2 * value for value in timings(4, 20, scale=1e-4, spread=0.01)]
    baseline = entry(before, on_cpu=[1.0] * 20, state=QUIET)
    assert compare_entries(baseline, entry(after, on_cpu=shares, state=BUSY), "median:10%").regression
    assert compare_entries(entry(before, on_cpu=shares), entry(after, on_cpu=[0.5] * 20, state=BUSY)).regression
    hostile_state = {"load_average": "high", "cpu_count": True, "other_processes_running": [9]}
    assert compare_entries(baseline, entry(after, on_cpu=[0.5] * 20, state=hostile_state)).regression


def test_too_few_repeats_are_not_decided() -> None:
    comparison = compare_entries(entry([1e-3] * 4), entry([3e-3] * 20), "median:10%")
    assert comparison.verdict == TOO_FEW and comparison.p_value is None and not comparison.regression
    assert comparison.change == pytest.approx(2.0)
    assert comparison.message().endswith("(+200.0%): not enough samples, 4 and 20 repeats where 5 a side are needed")


def test_new_and_gone_results_are_named() -> None:
    baseline = Run("main", "t", None, False, "m", [entry(timings(1, 10)), entry(timings(2, 10), key="rasp4")])
    candidate = [entry(timings(3, 10)), entry(timings(4, 10), test="t.py::test_new")]
    verdicts = [(c.test, c.key, c.verdict) for c in compare(baseline, candidate, include_gone=True)]
    assert verdicts == [
        ("t.py::test_add", "local", SAME),
        ("t.py::test_new", "local", NEW),
        ("t.py::test_add", "rasp4", GONE),
    ]
    assert [c.verdict for c in compare(baseline, candidate)] == [SAME, NEW]


def test_the_table_shows_both_figures_the_change_p_and_the_verdict() -> None:
    comparisons = compare([entry(timings(1, 10))], [entry(timings(2, 10, scale=3e-3))], "median:10%")
    assert regressions(comparisons) == comparisons
    header, rule, row, why = format_comparison(comparisons).splitlines()
    assert why == "t.py::test_add [local]: " + comparisons[0].message()
    assert header.split() == ["test", "key", "board", "baseline", "median", "median", "change", "p", "verdict"]
    cells = row.split()
    assert cells[:3] == ["t.py::test_add", "local", "local-0"] and cells[4] == "ms" and cells[6] == "ms"
    assert cells[7].startswith("+") and cells[7].endswith("%") and float(cells[8]) < ALPHA
    assert cells[9] == "REGRESSION"
