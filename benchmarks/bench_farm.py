"""Farm and pytest plugin: bring-up, a parallel suite, the example suite, the artifact cache.

* **ready**: ``FarmStack(...).start()`` to every board registered and free, then ``stop()``, for the ``local`` farm
  (the plugin's default) and, with ``--emulated``, the ``emulated`` one, taking turns.
* **suite**: T tests each holding a board H s (``device`` fixture) on B boards of one key, ``pytest -n W``, taking
  turns with the same tests holding 0 s (``hold0``: its wall time is the start-up). Hold phase (first hold to last
  release) and wall - start-up, each against the ideal T * H / min(B, W); utilisation; queue waits.
* **examples** (``--emulated``): ``pytest examples -n 4 --farm emulated --device-key KEY`` for each key, after
  warm-ups on every key (filling the artifact cache); per key, the tests' call phases, holds and queue waits summed.
* **cache** (``--emulated``): ``build_shared`` of each examples/kernels/*.c per architecture, a miss then a hit.

Each inner run must pass every test, else the exit status is 1.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import glob
import importlib.metadata
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import harness
from harness import Headline, Option, Scenario, Tool, judged, ratio_spread, spread, table

from farm.ops.emulators import python_command  # noqa: E402
from farm.ops.inventory import BUILTIN_INVENTORIES, load_inventory  # noqa: E402
from farm.ops.launcher import FarmStack  # noqa: E402
from farm.ops.targets import EMULATED  # noqa: E402
from farm.ops.toolchain import build_shared, toolchain_for  # noqa: E402
from pytest_remotedev.report import KeyUsage, holds_in  # noqa: E402

logger = logging.getLogger("bench_farm")

READY_TARGET = 1.5  # the default farm ready in under this many seconds (median)
SUITE_TARGET = 1.2  # (wall - start-up) / ideal and hold phase / ideal at most this (medians)
RUN_TIMEOUT = 600.0  # one inner pytest run at most
KEY = "bench"
KEYS = ("local",) + EMULATED
TESTS_PER_KEY = 15  # example tests per key: 12 of kernels (examples/test_kernels.py), 3 benchmarks
TEST_MODULE = """import time
import pytest

@pytest.mark.parametrize("index", range({tests}))
def test_hold(device, index):
    time.sleep({hold!r})  # host-side, while the board is held
"""


def report(title: str) -> Callable[[Dict[str, Any], Any], List[str]]:
    """A scenario's report: ``title`` (formatted with the options), then a row for each figure, a spread as its
    median (min-max) and number of values (the runs themselves are in the JSON only)."""

    def rows(path: str, value: Any) -> List[Tuple[str, str, str]]:
        if isinstance(value, dict) and "median" in value:
            return [(path, "%.4g (%.4g-%.4g)" % (value["median"], value["min"], value["max"]), str(value["rounds"]))]
        if isinstance(value, dict):
            named = [(("%s %s" % (path, name)).strip(), inner) for name, inner in value.items() if "runs" not in name]
            return [row for path, inner in named for row in rows(path, inner)]
        return [(path, "%.4g" % value if isinstance(value, float) else str(value), "")]

    def lines(figures: Dict[str, Any], args: Any) -> List[str]:
        return ["### " + title.format(**vars(args)), ""] + table(("figure", "value", "n"), rows("", figures)) + [""]

    return lines


# --- inner pytest runs --------------------------------------------------------------------------------------


def run_pytest(argv: Sequence[str], cwd: str, junit: str) -> Dict[str, Any]:
    """``python -m pytest ARGV`` in ``cwd`` and a process group of its own (whatever is left of it is killed after),
    writing ``junit``: its wall time, exit code, outcomes and, per key, its tests' call time and holds."""
    with open(junit + ".out", "wb") as sink:
        gc.collect()
        began = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--junitxml", junit, *argv]
        process = subprocess.Popen(command, cwd=cwd, env=harness.inner_env(), stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=RUN_TIMEOUT)
        finally:
            wall = time.perf_counter() - began
            with contextlib.suppress(ProcessLookupError):  # the whole group: the inner farm goes with it
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    outcomes: Dict[str, int] = collections.Counter()
    calls: Dict[str, float] = collections.defaultdict(float)
    usage: Dict[str, KeyUsage] = collections.defaultdict(KeyUsage)
    for case in ET.parse(junit).getroot().iter("testcase") if os.path.exists(junit) else ():
        outcomes[next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")] += 1
        for hold in holds_in((prop.get("name", ""), prop.get("value", "")) for prop in case.iter("property")):
            calls[hold.key] += float(case.get("time", "0"))
            usage[hold.key].add(case.get("classname", "") + "::" + case.get("name", ""), hold)
    keys = {key: {"tests": len(u.tests), "boards_used": len(u.boards), "call_s": calls[key], "held_s": u.busy,
                  "queue_wait_s": u.total_wait, "queue_wait_max_s": u.longest_wait, "hold_span_s": u.last - u.first,
                  "utilisation": u.utilisation} for key, u in usage.items()}  # fmt: skip
    run = {"returncode": code, "wall_s": wall, "outcomes": dict(outcomes), "keys": keys}
    if code != 0:
        with open(junit + ".out", encoding="utf-8", errors="replace") as handle:
            run["output_tail"] = handle.read()[-3000:]
    return run


def take_turns(workdir: str, prepare: Callable[[str, str], Tuple[List[str], str, Dict[str, int]]],
               names: Sequence[str], repeats: int, warmups: Sequence[str]) -> Dict[str, Any]:  # fmt: skip
    """Inner runs: untimed ``warmups`` first, then ``repeats`` rounds of ``names`` in rotating order, each run as
    ``prepare(name, label)`` says (its pytest arguments, directory, and number of tests of each key). Per name, the
    spread of the runs' wall time and of each figure of their key (one each); every run that did not pass."""

    def inner(name: str, label: str) -> Dict[str, Any]:
        argv, cwd, tests = prepare(name, label)
        run = run_pytest(argv, cwd, os.path.join(tempfile.mkdtemp(prefix=name + "-", dir=workdir), "junit.xml"))
        counted = {key: row["tests"] for key, row in run["keys"].items()} == tests
        passed = run["returncode"] == 0 and counted and run["outcomes"] == {"passed": sum(tests.values())}
        logger.info("  %-8s %s: wall %.2f s, passed: %s", name, label, run["wall_s"], passed)
        return dict(run, variant=name, run=label, passed=passed)

    warm = [inner(name, "warmup%d" % index) for index, name in enumerate(warmups)]
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in harness.rotated(names, repeat):
            runs[name].append(inner(name, "run%d" % repeat))
    variants = {}
    for name, mine in runs.items():
        rows = [dict(next(iter(run["keys"].values()), {}), wall_s=run["wall_s"]) for run in mine]
        fields = dict.fromkeys(field for row in rows for field in row)
        variants[name] = {field: spread([row[field] for row in rows if field in row]) for field in fields}
    every = [run for mine in runs.values() for run in mine] + warm
    failed = ["%s %s: exit code %d, %s" % (run["variant"], run["run"], run["returncode"], run["outcomes"])
              for run in every if not run["passed"]]  # fmt: skip
    return {"variants": variants, "runs": runs, "warmup_runs": warm, "failures": failed}


# --- the scenarios ------------------------------------------------------------------------------------------


def measure_ready(workdir: str, args: Any) -> Dict[str, Any]:
    names = ["local"] + (["emulated"] if args.emulated else [])
    result: Dict[str, Any] = {name: {"start_s": [], "stop_s": []} for name in names}
    for repeat in range(args.rounds):
        for name in harness.rotated(names, repeat):
            row, log_dir = result[name], os.path.join(workdir, "%s-%d" % (name, repeat))
            stack = FarmStack(load_inventory(BUILTIN_INVENTORIES[name]), log_dir)
            gc.collect()
            try:
                row["start_s"].append(harness.timed(stack.start))  # every board registered and free
                boards = stack.describe()["boards"]
            finally:
                row["stop_s"].append(harness.timed(stack.stop))
            row.update(boards=len(boards), proxied_boards=sum(board["proxy"] for board in boards),
                       keys=sorted({board["key"] for board in boards}))  # fmt: skip
    if args.emulated:
        result["emulated_over_local"] = ratio_spread(result["emulated"]["start_s"], result["local"]["start_s"])
    for name in names:
        result[name].update(start_s=spread(result[name]["start_s"]), stop_s=spread(result[name]["stop_s"]))
    return dict(result, target=judged(result["local"]["start_s"]["median"], READY_TARGET, "<="))


def measure_suite(workdir: str, args: Any) -> Dict[str, Any]:
    inventory = ["tracker: {host: 127.0.0.1, port: 0}", "proxy: {host: 127.0.0.1, port: 0}", "default_key: " + KEY,
                 "boards:", "  - {key: %s, count: %d}" % (KEY, args.boards - args.proxied),
                 "  - {key: %s, count: %d, proxy: true}" % (KEY, args.proxied)]  # fmt: skip

    def prepare(variant: str, label: str) -> Tuple[List[str], str, Dict[str, int]]:
        """A fresh directory with the suite, whose tests hold their board H s (``hold``) or 0 s (``hold0``)."""
        directory = tempfile.mkdtemp(prefix="suite-%s-%s-" % (variant, label), dir=workdir)
        module = TEST_MODULE.format(tests=args.tests, hold=args.hold if variant == "hold" else 0.0)
        for name, text in (("test_hold.py", module), ("farm.yaml", "\n".join(inventory))):
            with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return ["-n", str(args.workers), "--farm", "farm.yaml", "-q", "test_hold.py"], directory, {KEY: args.tests}

    result = take_turns(workdir, prepare, ["hold", "hold0"], args.repeats, ["hold0"] * args.warmup)
    ideal, startup = args.tests * args.hold / min(args.boards, args.workers), result["variants"]["hold0"]["wall_s"]
    held = [run["keys"][KEY] for run in result["runs"]["hold"] if KEY in run["keys"]]
    values = {"hold_span_over_ideal": [figures["hold_span_s"] / ideal for figures in held],
              "wall_minus_startup_over_ideal": [(run["wall_s"] - startup["median"]) / ideal
                                                for run in result["runs"]["hold"]]}  # fmt: skip
    ratios = {name: dict(spread(mine), **judged(statistics.median(mine), SUITE_TARGET, "<="))
              for name, mine in values.items()}  # fmt: skip
    return dict(result, ideal_hold_span_s=ideal, startup_s=startup["median"], ratios=ratios)


def measure_examples(workdir: str, args: Any) -> Dict[str, Any]:
    def prepare(variant: str, label: str) -> Tuple[List[str], str, Dict[str, int]]:
        """The example suite on one key, or (``emulated``) on every key."""
        argv = ["examples", "-n", "4", "-o", "junit_duration_report=call", "--farm", "emulated"]
        keys = KEYS if variant == "emulated" else (variant,)
        argv += ["--device-key", variant] if variant in KEYS else []
        return argv, str(harness.PROJECT), dict.fromkeys(keys, TESTS_PER_KEY)

    keys = args.example_keys.split(",")
    result = take_turns(workdir, prepare, keys, args.example_repeats, ["emulated"] * args.example_warmup)

    def sums(key: str, field: str) -> List[Optional[float]]:
        return [run["keys"].get(key, {}).get(field) for run in result["runs"][key]]

    ratios = {"%s_over_local" % key: {"call": ratio_spread(sums(key, "call_s"), sums("local", "call_s")),
                                      "held": ratio_spread(sums(key, "held_s"), sums("local", "held_s"))}
              for key in keys if key != "local"}  # fmt: skip
    return dict(result, ratios=ratios)


def measure_cache(workdir: str, args: Any) -> Dict[str, Any]:
    """Per architecture, a miss (fresh cache) then a hit (same calls), rotating."""
    sources = sorted(glob.glob(os.path.join(str(harness.PROJECT), "examples", "kernels", "*.c")))
    toolchains = {arch: toolchain_for(arch) for arch in ("x86_64",) + EMULATED}
    rows: Dict[str, Dict[str, Any]] = {}
    for arch, tool in toolchains.items():  # the compiler's version, asked once per process: here, untimed
        rows[arch] = {"compiler": "%s (%s)" % (tool.compiler, tool.version()), "miss_s": [], "hit_s": []}

    def build_each(arch: str, cache: str) -> float:
        return harness.timed(lambda: [build_shared([s], toolchains[arch], cache_dir=cache) for s in sources])

    for repeat in range(args.cache_repeats):
        for arch in harness.rotated(list(rows), repeat):
            cache = tempfile.mkdtemp(prefix="cache-%s-" % arch, dir=workdir)
            for field in ("miss_s", "hit_s"):  # a fresh cache, then the same calls again
                rows[arch][field].append(build_each(arch, cache))
    for row in rows.values():
        row.update(miss_over_hit=ratio_spread(row["miss_s"], row["hit_s"]), miss_s=spread(row["miss_s"]),
                   hit_s=spread(row["hit_s"]))  # fmt: skip
    return {"sources": [os.path.basename(source) for source in sources], "arches": rows}


# --- the tool -----------------------------------------------------------------------------------------------


def headline(results: Dict[str, Any]) -> List[Headline]:
    figures, rows = results["scenarios"], []
    if "ready" in figures:
        ready = figures["ready"]
        rows.append(Headline("default farm ready (tracker, proxy, 2 boards)", "%.3f s" % ready["target"]["ratio"],
                             target="< %g s" % READY_TARGET, met=ready["target"]["pass"]))  # fmt: skip
        if "emulated" in ready:
            median = ready["emulated"]["start_s"]["median"]
            rows.append(Headline("emulated farm ready (4 boards, 2 under qemu)", "%.3f s" % median,
                                 ratio="%.1f x local" % ready["emulated_over_local"]["median"]))  # fmt: skip
    for name, row in figures.get("suite", {}).get("ratios", {}).items():
        label = "parallel suite: %s" % name.replace("_over_", " / ").replace("_", " ")
        rows.append(Headline(label, "%.2f" % row["ratio"], target="<= %g" % SUITE_TARGET, met=row["pass"]))
    for name, row in figures.get("examples", {}).get("ratios", {}).items():
        ours = "%.1f x" % row["call"]["median"] if row["call"] else "-"
        rows.append(Headline("example suite, call time %s" % name.replace("_over_", " / "), ours))
    if "cache" in figures:
        kernels, row = len(figures["cache"]["sources"]), figures["cache"]["arches"]["x86_64"]
        rows.append(Headline("artifact cache, %d kernels: hit" % kernels, "%.2f ms" % (1e3 * row["hit_s"]["median"]),
                             limit="%.2f s, a miss" % row["miss_s"]["median"],
                             ratio="1 / %.0f" % row["miss_over_hit"]["median"]))  # fmt: skip
    return rows


def passed(results: Dict[str, Any]) -> bool:
    return not any(results["scenarios"].get(name, {}).get("failures") for name in ("suite", "examples"))


def check_args(args: Any) -> Optional[str]:
    counts = (args.tests, args.workers, args.boards, args.repeats, args.example_repeats, args.cache_repeats)
    valid = min(counts) >= 1 and args.hold > 0 and 0 <= args.proxied <= args.boards
    if not valid:
        return "the counts must be >= 1, --hold positive, --proxied between 0 and --boards"
    keys = args.example_keys.split(",")
    if "local" not in keys or not set(keys) <= set(KEYS):
        return "--example-keys: local and any of %s, comma-separated" % ", ".join(EMULATED)
    return None


def machine_extra() -> Dict[str, Any]:
    """pytest's versions and whether bytecode may be written (if not, every start compiles)."""
    versions = {name: importlib.metadata.version(name) for name in ("pytest", "pytest-xdist")}
    return dict(versions, pythondontwritebytecode=bool(os.environ.get("PYTHONDONTWRITEBYTECODE")))


def setup(args: Any, workdir: str) -> Any:
    """Check the emulators first (naming what to install, rather than failing halfway); children import this farm."""
    for arch in EMULATED if args.emulated else ():
        python_command(arch)
    logging.getLogger("farm.toolchain").setLevel(logging.WARNING)
    os.environ.update(harness.child_env())
    return contextlib.nullcontext(workdir)


TOOL = Tool(
    name="bench_farm",
    description=__doc__.split("\n\n")[0],
    pin="none",
    rounds=Option(20, 2, "starts of each farm"),
    options={
        "emulated": Option(False, help="also the emulated farm, the example suite and the cache", type=bool),
        "tests": Option(24, 8, "tests of the synthetic suite"),
        "hold": Option(0.5, 0.2, "seconds each of them holds its board", float),
        "workers": Option(8, 2, "pytest-xdist workers of the synthetic suite (-n)"),
        "boards": Option(4, 4, "boards of the synthetic suite's key"),
        "proxied": Option(1, 1, "of them behind the proxy"),
        "repeats": Option(3, 1, "runs of each synthetic-suite variant"),
        "warmup": Option(1, 0, "untimed runs of hold0 before them"),
        "example_repeats": Option(3, 1, "runs of each key's example suite"),
        "example_keys": Option(",".join(KEYS), "local,aarch64", "the keys whose example suite runs", str),
        "example_warmup": Option(1, 0, "untimed runs of the whole emulated example suite before them"),
        "cache_repeats": Option(10, 2, "misses and hits per architecture"),
    },
    setup=setup,
    scenarios=[
        Scenario("ready", measure_ready, report("Bring-up, {rounds} starts each, s"), target="< %g s" % READY_TARGET),
        Scenario("suite", measure_suite, report("{tests} tests holding a board {hold} s on {boards} boards ({proxied} "
                 "behind the proxy), -n {workers}, s"), limit="T * H / min(B, W)", target="<= %g x" % SUITE_TARGET),
        Scenario("examples", measure_examples, report("Example suite on each KEY, s (summed over its tests)"),
                 limit="local board", enabled=lambda args: args.emulated),
        Scenario("cache", measure_cache, report("Artifact cache: build_shared of examples/kernels/*.c, s"),
                 enabled=lambda args: args.emulated),
    ],
    headline=headline,
    passed=passed,
    check_args=check_args,
    machine_extra=machine_extra,
)  # fmt: skip

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
