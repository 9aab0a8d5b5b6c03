"""The regression check (``--device-benchmark-fail``, ``farm bench compare --fail``): how often it cries wolf.

* **unchanged**: a vector add built with ``-O2`` is timed R times on a local board (``time_evaluator``, REPEAT
  repeats of NUMBER runs each; each timing is one saved run's result), taking turns with a slowed build of the
  same source (``-O0``). Every ordered pair of the ``-O2`` runs is compared as baseline and candidate: a
  regression is a false alarm (the verdict "noisy", which does not fail, is counted apart). The ``-O0`` run
  timed next to each ``-O2`` run, compared with it, should be flagged. Decided at ``median:10%``, ``median:5%``
  and with no threshold (``median:0%``). Targets, shown and not checked as they depend on what else the machine runs:
  under 1 % false alarms at ``median:10%``, and every slowed build flagged (the check: at least 75 %).
* **model**: two sample sets of one lognormal distribution (the shape of timings) compared TRIALS times with
  fixed seeds, for 5, 10 and 20 repeats and a spread (coefficient of variation) of 1, 5 and 20 %: the false
  alarms of the decision at ``median:10%`` and ``median:0%``, and how often the U test alone gives p < alpha
  (about alpha, 0.01, if it is right).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

import harness
import numpy as np
from harness import Headline, Option, Scenario, Tool, table

import farm  # noqa: E402  (harness puts this checkout first on the path)
from farm.client.timing import BenchmarkResult  # noqa: E402
from farm.ops.benchruns import Entry  # noqa: E402
from farm.ops.processes import start_board  # noqa: E402
from farm.ops.regression import ALPHA, NOISY, REGRESSION, compare_entries, mann_whitney_greater  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

KEY = "bench"
SOURCE = harness.PROJECT / "examples" / "kernels" / "vadd.c"
SIGNATURE = "void vadd_f32(const float *a, const float *b, float *c, int64_t n)"
BUILDS = {"O2": ["-O2"], "O0": ["-O0"]}
SPECS = ("median:10%", "median:5%", "median:0%")
FALSE_ALARM_TARGET = 0.01
DETECTED_CHECK = 0.75  # a broken decision flags none


@dataclass
class State:
    """The board's session, the two builds' vadd functions and their arguments."""

    functions: Dict[str, Any]
    arguments: List[Any]


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    libraries = {name: compile_shared([SOURCE], os.path.join(workdir, "libvadd_%s.so" % name), extra_flags=flags)
                 for name, flags in BUILDS.items()}  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(harness.PROJECT))
    board = start_board(os.path.join(workdir, "board.log"), key=KEY, env=env, cwd=workdir, timeout=120)
    try:
        host, port = board.address  # type: ignore[misc]
        with farm.connect(host, port, key=KEY, connect_timeout=60) as session:
            functions = {name: session.load_module(session.upload(path)).get_function("vadd_f32", SIGNATURE)
                         for name, path in libraries.items()}  # fmt: skip
            data = np.random.default_rng(0).random(args.elements, dtype=np.float32)
            arguments = [session.array(data), session.array(data), session.empty(data.shape, data.dtype)]
            yield State(functions, [*arguments, args.elements])
    finally:
        board.stop()


def _entry(result: BenchmarkResult) -> Entry:
    return Entry.from_result("vadd_f32", result, key=KEY, board="local")


def _rate(flagged: int, pairs: int) -> Dict[str, Any]:
    return {"flagged": flagged, "pairs": pairs, "rate": flagged / pairs if pairs else 0.0}


def measure_unchanged(state: State, args: Any) -> Dict[str, Any]:
    runs: Dict[str, List[BenchmarkResult]] = {name: [] for name in BUILDS}
    for number in range(args.runs):
        for name in harness.rotated(list(BUILDS), number):
            timer = state.functions[name].time_evaluator(number=args.number, repeat=args.repeat)
            runs[name].append(timer(*state.arguments))
    same, slowed = [_entry(r) for r in runs["O2"]], [_entry(r) for r in runs["O0"]]
    false_alarms, detected = {}, {}
    for spec in SPECS:
        verdicts = [compare_entries(a, b, spec).verdict for a, b in itertools.permutations(same, 2)]
        false_alarms[spec] = dict(_rate(verdicts.count(REGRESSION), len(verdicts)), noisy=verdicts.count(NOISY))
        detected[spec] = _rate(sum(compare_entries(a, b, spec).regression for a, b in zip(same, slowed)), len(same))
    medians = {name: [result.median for result in results] for name, results in runs.items()}
    return {
        "false_alarms": false_alarms,
        "detected": detected,
        "medians_us": {name: harness.spread(values, 1e6) for name, values in medians.items()},
        "spread_median": {name: statistics.median(r.spread or 0.0 for r in results) for name, results in runs.items()},
        "noisy_runs": {name: sum(result.noisy for result in results) for name, results in runs.items()},
    }


def report_unchanged(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [
        (spec, "%d of %d (%.2f%%)" % (fa["flagged"], fa["pairs"], 100 * fa["rate"]), fa["noisy"],
         "%d of %d" % (figures["detected"][spec]["flagged"], figures["detected"][spec]["pairs"]))
        for spec, fa in figures["false_alarms"].items()
    ]  # fmt: skip
    medians = figures["medians_us"]
    return [
        "### unchanged build: %d runs of %d repeats of %d runs, %d float32" % (
            args.runs, args.repeat, args.number, args.elements),  # fmt: skip
        "",
        *table(("decided at", "false alarms (-O2 against -O2)", "verdict noisy", "-O0 flagged against -O2"), rows),
        "",
        "medians of the runs (us): -O2 %s, -O0 %s; the repeats' spread (median CV) -O2 %.1f%%, -O0 %.1f%%; "
        "runs flagged noisy: -O2 %d, -O0 %d"
        % (harness.mmm(medians["O2"]), harness.mmm(medians["O0"]), 100 * figures["spread_median"]["O2"],
           100 * figures["spread_median"]["O0"], figures["noisy_runs"]["O2"], figures["noisy_runs"]["O0"]),
        "",
    ]  # fmt: skip


def measure_model(state: State, args: Any) -> Dict[str, Any]:
    rows = []
    for repeats, spread in itertools.product((5, 10, 20), (0.01, 0.05, 0.2)):
        flagged = {"median:10%": 0, "median:0%": 0, "u_test": 0}
        for trial in range(args.trials):
            generator = np.random.default_rng([repeats, int(spread * 100), trial])
            before, after = (list(generator.lognormal(0.0, spread, repeats)) for _ in range(2))
            flagged["u_test"] += mann_whitney_greater(before, after) < ALPHA
            for spec in ("median:10%", "median:0%"):
                flagged[spec] += compare_entries(_model(before), _model(after), spec).regression
        rows.append({"repeats": repeats, "spread": spread, "trials": args.trials,
                     **{name: count / args.trials for name, count in flagged.items()}})  # fmt: skip
    return {"rows": rows}


def _model(samples: List[float]) -> Entry:
    return Entry("model", KEY, "model", {"results": samples})


def report_model(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [(row["repeats"], "%.0f%%" % (100 * row["spread"]),
             *("%.2f%%" % (100 * row[name]) for name in ("median:10%", "median:0%", "u_test")))
            for row in figures["rows"]]  # fmt: skip
    header = ("repeats a side", "spread (CV)", "flagged at median:10%", "at median:0%", "U test p < %g" % ALPHA)
    return ["### one distribution compared with itself, %d trials each (fixed seeds)" % args.trials, "",
            *table(header, rows), ""]  # fmt: skip


def headline(results: Dict[str, Any]) -> List[Headline]:
    unchanged = results["scenarios"].get("unchanged")
    if unchanged is None:
        return []
    alarms, detected = unchanged["false_alarms"]["median:10%"], unchanged["detected"]["median:10%"]
    return [
        Headline("regression check: false alarms, unchanged build (median:10%)",
                 "%.2f%% (%d of %d pairs)" % (100 * alarms["rate"], alarms["flagged"], alarms["pairs"]),
                 target="< 1%", met=alarms["rate"] < FALSE_ALARM_TARGET),
        Headline("regression check: -O0 build flagged against -O2 (median:10%)",
                 "%d of %d" % (detected["flagged"], detected["pairs"]), target="all",
                 met=detected["flagged"] == detected["pairs"]),
    ]  # fmt: skip


def passed(results: Dict[str, Any]) -> bool:
    """Most slowed builds flagged at every threshold. Not all, and not the false alarms: on a busy machine a
    whole run of the fast build can be slowed past the slow one, which the headline then shows."""
    unchanged = results["scenarios"].get("unchanged")
    return unchanged is None or all(row["rate"] >= DETECTED_CHECK for row in unchanged["detected"].values())


TOOL = Tool(
    name="bench_regression",
    description="Regression check: false alarms on an unchanged build, a slowed build flagged",
    scenarios=[
        Scenario(
            "unchanged",
            measure_unchanged,
            report_unchanged,
            anchor="the same build timed again",
            target="< 1% false alarms at median:10%, every -O0 build flagged",
        ),
        Scenario(
            "model",
            measure_model,
            report_model,
            anchor="two sample sets of one distribution",
            target="the U test alone under alpha",
        ),
    ],  # fmt: skip
    options={
        "runs": Option(30, 4, "runs of each build (timings of REPEAT repeats)"),
        "repeat": Option(20, 10, "repeats in each run"),
        "number": Option(10, 5, "runs of the kernel in each repeat"),
        "elements": Option(1 << 18, 1 << 12, "float32 elements of the vector add"),
        "trials": Option(2000, 50, "comparisons of each model row"),
    },
    rounds=None,
    setup=setup,
    headline=headline,
    passed=passed,
    pin="none",
)


if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
