"""The regression check (``--device-benchmark-fail``, ``farm bench compare --fail``): how often it cries wolf.

**vadd** (examples/kernels/vadd.c, memory-bound: ``-O2`` against ``-O0``, about 6 times slower) and **steps** (a
compute-bound loop of 10 steps per element against 12, about 20 % slower): R runs of each build taking turns on a
local board (``time_evaluator``, REPEAT repeats of NUMBER runs: one saved run's result each). Every ordered pair
of the base build's runs compared is a false alarm if a regression ("noisy", which does not fail, counted apart);
each slowed run against the base run timed next to it should be flagged. Decided at ``median:10%``, ``:5%`` and
``:0%``. Targets (shown, not checked: they depend on the machine's load): under 1 % false alarms at
``median:10%``, every slowed build flagged; checked: at least 75 % of the ``-O0`` builds flagged.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import harness
import numpy as np
from harness import Headline, Option, Scenario, Tool, table

import farm  # noqa: E402  (harness puts this checkout first on the path)
from farm.ops.benchruns import Entry  # noqa: E402
from farm.ops.processes import start_board  # noqa: E402
from farm.ops.regression import NOISY, REGRESSION, compare_entries  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

KEY = "bench"
#: A compute-bound kernel whose cost grows with STEPS: 12 steps is a slowdown of about 20 % over 10.
STEPS_SOURCE = """#include <stdint.h>
void steps(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        for (int s = 0; s < STEPS; s++)
            v = v * 0.999f + 0.001f;
        x[i] = v;
    }
}
"""
#: Per kernel: its source (None: STEPS_SOURCE), function, signature and the flags of its base and slowed builds.
VADD = "void vadd_f32(const float *a, const float *b, float *c, int64_t n)"
PAIRS = {
    "vadd": (str(harness.PROJECT / "examples" / "kernels" / "vadd.c"), "vadd_f32", VADD,
             {"base": ["-O2"], "slowed": ["-O0"]}),
    "steps": (None, "steps", "void steps(float *x, int64_t n)",
              {"base": ["-O2", "-DSTEPS=10"], "slowed": ["-O2", "-DSTEPS=12"]}),
}  # fmt: skip
SPECS = ("median:10%", "median:5%", "median:0%")
FALSE_ALARM_TARGET = 0.01
DETECTED_CHECK = 0.75  # of -O0 against -O2: a broken decision flags none


def local_board(stack: contextlib.ExitStack, workdir: str, name: str) -> Tuple[str, int]:
    """Start a board of key KEY running this checkout's server, stopped when ``stack`` closes; its address."""
    log = os.path.join(workdir, name + ".log")
    board = start_board(log, key=KEY, env=harness.child_env(), cwd=workdir, timeout=120)
    stack.callback(board.stop)
    return board.address  # type: ignore[return-value]


def load_function(session: farm.RemoteSession, library: str, source: str, function: str, signature: str,
                  flags: Sequence[str] = ()) -> farm.RemoteFunction:  # fmt: skip
    """``function`` of ``source`` built with ``flags`` into ``library``, uploaded to the board and loaded there."""
    compile_shared([source], library, extra_flags=flags)
    return session.load_module(session.upload(library)).get_function(function, signature)


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[Dict[str, Any]]:
    """Per kernel, the functions of its two builds on one board and their arguments."""
    steps = os.path.join(workdir, "steps.c")
    Path(steps).write_text(STEPS_SOURCE)
    with contextlib.ExitStack() as stack:
        session = stack.enter_context(farm.connect(*local_board(stack, workdir, "board"), key=KEY, connect_timeout=60))
        data = np.random.default_rng(0).random(args.elements, dtype=np.float32)
        vadd = [session.array(data), session.array(data), session.empty(data.shape, data.dtype), args.elements]
        state: Dict[str, Any] = {"arguments": {"vadd": vadd, "steps": [session.array(data), args.elements]}}
        for name, (source, function, signature, builds) in PAIRS.items():
            state[name] = {build: load_function(session, os.path.join(workdir, "lib%s_%s.so" % (name, build)),
                                                source or steps, function, signature, flags)
                           for build, flags in builds.items()}  # fmt: skip
        yield state


def rate(verdicts: List[str]) -> Dict[str, Any]:
    """How many of the verdicts are a regression, and how many say noisy."""
    flagged, pairs = verdicts.count(REGRESSION), len(verdicts)
    return {"flagged": flagged, "pairs": pairs, "rate": flagged / max(1, pairs), "noisy": verdicts.count(NOISY)}


def measure_pair(name: str, state: Dict[str, Any], args: Any) -> Dict[str, Any]:
    """R runs of each build of kernel ``name`` in turns; every ordered pair of base runs, and each slowed run
    against the base run timed next to it, compared."""
    runs: Dict[str, List[Any]] = {"base": [], "slowed": []}
    for number in range(args.runs):
        for build in harness.rotated(list(runs), number):
            timer = state[name][build].time_evaluator(number=args.number, repeat=args.repeat)
            runs[build].append(timer(*state["arguments"][name]))
    base, slowed = ([Entry.from_result(name, r, key=KEY, board="local") for r in runs[b]] for b in runs)

    def verdicts(pairs: Any, spec: str) -> Dict[str, Any]:
        return rate([compare_entries(before, after, spec).verdict for before, after in pairs])

    return {
        "false_alarms": {spec: verdicts(itertools.permutations(base, 2), spec) for spec in SPECS},
        "detected": {spec: verdicts(zip(base, slowed), spec) for spec in SPECS},
        "medians_us": {build: harness.spread([r.median for r in mine], 1e6) for build, mine in runs.items()},
        "spread_median": {build: statistics.median(r.spread or 0.0 for r in mine) for build, mine in runs.items()},
        "noisy_runs": {build: sum(r.noisy for r in mine) for build, mine in runs.items()},
    }


def report_pair(name: str, figures: Dict[str, Any], args: Any) -> List[str]:
    base, slowed = (" ".join(flags) for flags in PAIRS[name][3].values())
    rows = [(spec, "%d of %d (%.2f%%)" % (row["flagged"], row["pairs"], 100 * row["rate"]), row["noisy"],
             "%d of %d" % (figures["detected"][spec]["flagged"], figures["detected"][spec]["pairs"]),
             figures["detected"][spec]["noisy"]) for spec, row in figures["false_alarms"].items()]  # fmt: skip
    header = ("decided at", "false alarms (%s against itself)" % base, "verdict noisy",
              "%s flagged against %s" % (slowed, base), "verdict noisy")  # fmt: skip
    title = "### %s: %d runs of each build, %d repeats of %d runs, %d float32"
    summary = ["%s: runs' medians %s us, repeats' spread (median CV) %.1f%%, runs flagged noisy %d of %d"
               % (flags, harness.mmm(figures["medians_us"][build]), 100 * figures["spread_median"][build],
                  figures["noisy_runs"][build], args.runs)
               for build, flags in (("base", base), ("slowed", slowed))]  # fmt: skip
    return [title % (name, args.runs, args.repeat, args.number, args.elements), "", *table(header, rows), "",
            "; ".join(summary), ""]  # fmt: skip


def headline(results: Dict[str, Any]) -> List[Headline]:
    rows = []
    for name, figures in results["scenarios"].items():
        if name in PAIRS:
            alarms, detected = figures["false_alarms"]["median:10%"], figures["detected"]["median:10%"]
            base, slowed = (" ".join(flags) for flags in PAIRS[name][3].values())
            rows += [
                Headline("regression check: false alarms, unchanged %s %s (median:10%%)" % (name, base),
                         "%.2f%% (%d of %d pairs)" % (100 * alarms["rate"], alarms["flagged"], alarms["pairs"]),
                         target="< 1%", met=alarms["rate"] < FALSE_ALARM_TARGET),
                Headline("regression check: %s %s flagged against %s (median:10%%)" % (name, slowed, base),
                         "%d of %d" % (detected["flagged"], detected["pairs"]), target="all",
                         met=detected["flagged"] == detected["pairs"]),
            ]  # fmt: skip
    return rows


def passed(results: Dict[str, Any]) -> bool:
    """Most -O0 builds flagged at every threshold. Not all, and not the false alarms nor the +20 % build: on a
    busy machine a whole run of the fast build can be slowed past the slow one, which the headline then shows."""
    vadd = results["scenarios"].get("vadd")
    return vadd is None or all(row["rate"] >= DETECTED_CHECK for row in vadd["detected"].values())


TOOL = Tool(
    name="bench_regression",
    description="Regression check: false alarms on an unchanged build, slowed builds flagged",
    scenarios=[Scenario(name, functools.partial(measure_pair, name), functools.partial(report_pair, name),
                        anchor="the same build timed again",
                        target="< 1% false alarms at median:10%, every slowed build flagged") for name in PAIRS],
    options={
        "runs": Option(30, 4, "runs of each build (timings of REPEAT repeats)"),
        "repeat": Option(20, 10, "repeats in each run"),
        "number": Option(10, 5, "runs of the kernel in each repeat"),
        "elements": Option(1 << 18, 1 << 12, "float32 elements of the vector add and of the steps kernel"),
    },
    rounds=None,
    setup=setup,
    headline=headline,
    passed=passed,
    pin="none",
)  # fmt: skip


if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
