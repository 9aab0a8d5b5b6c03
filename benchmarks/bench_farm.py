"""Farm benchmark: the emulated farm's bring-up, the example suite on local and emulated boards, the artifact cache.

Three measurements, in one run:

* **(1) bring-up**: ``FarmStack(load_inventory(BUILTIN_INVENTORIES[NAME]), log_dir).start()`` timed from the call
  to its return (tracker and proxy bound, every board registered and free), then ``stop()``, for ``emulated``
  (configs/farm.emulated.yaml: two local boards, an aarch64 board, an armhf board behind the proxy) and, as the
  baseline, ``local`` (the embedded default: two local boards, one behind the proxy); the two alternate, N starts
  each, every one a fresh stack with a fresh log directory. Ratio emulated / local per pair of starts. To explain
  the difference, once per interpreter: how long ``pack_server`` takes (every emulated start packs the board
  server), and how long each Python takes to start (``python_command(arch) + ["-c", "pass"]``) and to import
  ``farm.server`` from that archive (what an emulated board does before it can register), then that import with
  the standard library's bytecode cached (``PYTHONPYCACHEPREFIX``, a second import); the host's Python too.
* **(2) the example suite** (``examples/``, 12 tests per key, each building a C kernel for its board, uploading
  it and checking the board's result against numpy), run from the project directory as
  ``python -m pytest examples -n 4 -p no:cacheprovider -o junit_duration_report=call --junitxml J OPTIONS``
  with these OPTIONS, taking turns in rotating order, R runs each after W untimed warm-up runs of the whole
  emulated suite (which also fill the artifact cache, so that the timed runs build nothing):

  - ``--farm emulated --device-key KEY`` for KEY in local, aarch64, armhf: the same farm starts, only that
    key's 12 tests run;
  - ``--farm emulated``: the whole emulated suite, 36 tests;
  - nothing: the default farm (two local boards), 12 tests.

  The inner runs' environment has no ``REMOTEDEV_*`` (but ``REMOTEDEV_CACHE``, where the emulators are),
  ``TVM_TRACKER_*`` or ``PYTEST_ADDOPTS``. From each run's junit XML, per key: the tests, the sum of their call
  phases (``junit_duration_report=call``: the test body, where the kernel is built (a cache hit), uploaded, run
  and read back), the sum of the time each held its board, the sum of queue waits. Ratios aarch64 / local and
  armhf / local of the call-time sums (the part of a run that is emulation, apart from start-up), per repeat
  from the single-key runs, and per run inside the whole emulated suite.
* **(3) the artifact cache**: ``build_shared([source], toolchain_for(ARCH), cache_dir=DIR)`` for each of
  examples/kernels/*.c, one by one, for x86_64 (this machine's compiler), aarch64 and armhf: a miss (a fresh
  ``DIR`` each repeat, so every source compiles) and then a hit (the same calls again), K repeats, the
  architectures in rotating order. Each compiler's ``--version`` (run once per process) is asked before timing.

Then prints a markdown section::

    python benchmarks/bench_farm.py [--bringup-repeats 5] [--suite-repeats 3] [--warmup 1] [--cache-repeats 10]
                                    [--json out.json]

``--quick`` (the smoke test's mode): 1 start of each farm, each suite variant once without warm-up, 2 cache
repeats. Needs the emulators (``farm emulators install``): without them it exits with status 2. A run in which an
inner test does not pass makes the script exit with status 1 (its figures are still printed and written).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import glob
import importlib.metadata
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from common import (  # puts this checkout first on the path
    PROJECT,
    child_env,
    exit_on_signal,
    inner_env,
    machine_info,
    machine_line,
    publish,
    spread,
)

from farm.ops.emulators import EmulatorError, python_command
from farm.ops.emulators import status as emulator_status
from farm.ops.inventory import BUILTIN_INVENTORIES, load_inventory
from farm.ops.launcher import FarmStack
from farm.ops.pack import pack_server
from farm.ops.targets import EMULATED
from farm.ops.toolchain import Toolchain, build_shared, toolchain_for
from pytest_remotedev.report import holds_in

logger = logging.getLogger("bench_farm")

T = TypeVar("T")

#: The inventories of (1): the measured one first, then the baseline.
INVENTORIES = ("emulated", "local")
#: The keys of the emulated farm, and how many example tests each gets.
KEYS = ("local",) + EMULATED
TESTS_PER_KEY = 12
WORKERS = 4
#: What every inner run of (2) passes besides its variant's options (and ``--junitxml``).
SUITE_OPTIONS = ("-n", str(WORKERS), "-p", "no:cacheprovider", "-o", "junit_duration_report=call")
#: How long one inner pytest run may take before it is killed.
RUN_TIMEOUT = 600.0
#: The architectures of (3): this machine's first.
CACHE_ARCHES = ("x86_64",) + EMULATED
KERNELS = os.path.join(str(PROJECT), "examples", "kernels")
#: The counts a run takes: option -> (default, in --quick, help).
REPEATS = {
    "bringup_repeats": (5, 1, "(1) starts of each farm"),
    "suite_repeats": (3, 1, "(2) runs of each suite variant"),
    "warmup": (1, 0, "(2) untimed runs of the whole emulated suite before them"),
    "cache_repeats": (10, 2, "(3) misses and hits per architecture"),
}
#: The per-key sums read from each junit XML.
KEY_FIELDS = ("call_s", "held_s", "queue_wait_s")


@dataclass(frozen=True)
class Variant:
    """One way of running the example suite: its options and the keys it should run on."""

    name: str
    label: str
    options: Tuple[str, ...]
    keys: Tuple[str, ...]

    @property
    def tests(self) -> int:
        """How many tests a run of this variant should pass."""
        return TESTS_PER_KEY * len(self.keys)


VARIANTS = tuple(
    Variant(key, "`--farm emulated --device-key %s`" % key, ("--farm", "emulated", "--device-key", key), (key,))
    for key in KEYS
) + (
    Variant("emulated", "`--farm emulated` (every key)", ("--farm", "emulated"), KEYS),
    Variant("default", "no option: the default farm", (), ("local",)),
)
WHOLE = "emulated"  # the variant of the warm-up runs and of the in-run ratios


# --- helpers -----------------------------------------------------------------------------------


def timed(action: Callable[[], T]) -> Tuple[T, float]:
    """``action()``'s result and the seconds it took."""
    began = time.perf_counter()
    result = action()
    return result, time.perf_counter() - began


def rotated(items: Sequence[T], shift: int) -> List[T]:
    """``items`` starting at ``shift`` (modulo their number), so that no item always goes first."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def ratios(numerators: Sequence[Optional[float]], denominators: Sequence[Optional[float]]) -> Optional[Dict[str, Any]]:
    """The spread of the pairwise ratios, but of pairs with a None or a denominator <= 0 (None if no pair is left)."""
    values = [top / bottom for top, bottom in zip(numerators, denominators) if top is not None and (bottom or 0) > 0]
    return spread(values) if values else None


def board_env() -> Dict[str, str]:
    """The environment an emulated board gets from FarmStack: this one without PYTHONPATH and PYTHONHOME."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}


# --- (1) bring-up ------------------------------------------------------------------------------


def bring_up(name: str, log_dir: str) -> Dict[str, Any]:
    """Start the built-in inventory ``name`` and stop it: seconds to ready and to stopped, and its boards."""
    stack = FarmStack(load_inventory(BUILTIN_INVENTORIES[name]), log_dir)
    gc.collect()
    try:
        _, ready = timed(stack.start)  # returns once every board has registered and is free
        boards = stack.describe()["boards"]
    finally:
        _, stopped = timed(stack.stop)
    return {"start_s": ready, "stop_s": stopped, "boards": len(boards), "keys": sorted({b["key"] for b in boards})}


def measure_bringup(repeats: int, workdir: str) -> Dict[str, Any]:
    """(1): ``repeats`` starts of each inventory, alternating which goes first; then the interpreters' probes."""
    logger.info("(1) bring-up: %d start(s) each of %s, alternating", repeats, " and ".join(INVENTORIES))
    samples: Dict[str, List[Dict[str, Any]]] = {name: [] for name in INVENTORIES}
    for repeat in range(repeats):
        for name in rotated(INVENTORIES, repeat):
            sample = bring_up(name, os.path.join(workdir, "bringup-%s-%02d" % (name, repeat)))
            samples[name].append(sample)
            logger.info(
                "  %-8s #%d: ready in %.3f s, stopped in %.3f s", name, repeat, sample["start_s"], sample["stop_s"]
            )
    inventories = {
        name: {
            "inventory": os.path.relpath(BUILTIN_INVENTORIES[name], str(PROJECT)),
            "boards": runs[-1]["boards"],
            "keys": runs[-1]["keys"],
            "start_s": spread([run["start_s"] for run in runs]),
            "stop_s": spread([run["stop_s"] for run in runs]),
        }
        for name, runs in samples.items()
    }
    starts = {name: [run["start_s"] for run in runs] for name, runs in samples.items()}
    return {
        "inventories": inventories,
        "ratio_emulated_over_local": ratios(starts["emulated"], starts["local"]),
        "probes": probe_interpreters(workdir),
    }


def run_probe(argv: Sequence[str], env: Dict[str, str]) -> float:
    """Seconds ``argv`` takes to run and exit (it must succeed)."""
    _, seconds = timed(lambda: subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=True))
    return seconds


def cached_bytecode_env(workdir: str, name: str) -> Dict[str, str]:
    """board_env, but writing and reading bytecode in a directory of its own (the sysroot stays untouched)."""
    env = board_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="pycache-%s-" % name, dir=workdir)
    return env


def probe_interpreters(workdir: str) -> Dict[str, Any]:
    """Once each: packing the board server; each Python's start, and its import of ``farm.server`` from the pack,
    as a board does it and with the standard library's bytecode cached (a second import, the first untimed)."""
    archive, pack_s = timed(lambda: pack_server(os.path.join(workdir, "farm-server.pyz")))
    load = ["-c", "import sys; sys.path.insert(0, %r); import farm.server" % archive]
    pythons = {"host": [sys.executable]}
    pythons.update((arch, python_command(arch)) for arch in EMULATED)
    rows = {}
    for name, python in pythons.items():
        cached = cached_bytecode_env(workdir, name)
        run_probe([*python, *load], cached)  # fills the bytecode cache
        rows[name] = {
            "start_s": run_probe([*python, "-c", "pass"], board_env()),
            "import_server_s": run_probe([*python, *load], board_env()),
            "import_server_cached_s": run_probe([*python, *load], cached),
        }
        logger.info("  %-8s Python: %s", name, ", ".join("%s %.3f s" % item for item in rows[name].items()))
    return {"pack_server_s": pack_s, "pythons": rows}


# --- (2) the example suite -----------------------------------------------------------------------


def run_in_group(argv: Sequence[str], env: Dict[str, str], output_path: str) -> Tuple[int, float]:
    """Run ``argv`` in the project directory and a process group of its own: exit code and wall seconds.

    Its output goes to ``output_path``. Whatever is left of the group afterwards is killed, and so is
    the whole group on a timeout or an interrupt (the inner farm goes with it).
    """
    with open(output_path, "wb") as output:
        gc.collect()
        began = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=str(PROJECT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=RUN_TIMEOUT)
            return code, time.perf_counter() - began
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone: nothing of the run is left
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def outcome(case: ET.Element) -> str:
    """passed, failure, error or skipped: what a junit testcase says of its test."""
    return next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")


def read_junit(path: str) -> Dict[str, Any]:
    """Outcome counts, and per key of the boards held: tests, passed, and the sums of KEY_FIELDS."""
    outcomes: Dict[str, int] = collections.Counter()
    keys: Dict[str, Dict[str, Any]] = {}
    cases = ET.parse(path).getroot().iter("testcase") if os.path.exists(path) else iter(())
    for case in cases:
        verdict = outcome(case)
        outcomes[verdict] += 1
        holds = holds_in((prop.get("name", ""), prop.get("value", "")) for prop in case.iter("property"))
        key = holds[0].key if holds else "(no board)"
        entry = keys.setdefault(key, {"tests": 0, "passed": 0, **dict.fromkeys(KEY_FIELDS, 0.0)})
        entry["tests"] += 1
        entry["passed"] += verdict == "passed"
        entry["call_s"] += float(case.get("time", "0"))
        entry["held_s"] += sum(hold.held for hold in holds)
        entry["queue_wait_s"] += sum(hold.queue_wait for hold in holds)
    return {"tests": sum(outcomes.values()), "outcomes": dict(outcomes), "keys": keys}


def passed(run: Dict[str, Any], variant: Variant) -> bool:
    """Whether the run exited 0 having passed each of its keys' 12 tests, and run nothing else."""
    per_key = {key: (entry["tests"], entry["passed"]) for key, entry in run["keys"].items()}
    wanted = {key: (TESTS_PER_KEY, TESTS_PER_KEY) for key in variant.keys}
    return run["returncode"] == 0 and run["tests"] == variant.tests and per_key == wanted


def run_variant(variant: Variant, label: str, workdir: str, env: Dict[str, str]) -> Dict[str, Any]:
    """One inner pytest run of ``variant``: its wall time and what its junit XML says."""
    directory = os.path.join(workdir, "suite-%s-%s" % (variant.name, label))
    os.makedirs(directory)
    junit = os.path.join(directory, "junit.xml")
    argv = [sys.executable, "-m", "pytest", "examples", *SUITE_OPTIONS, "--junitxml", junit, *variant.options]
    output = os.path.join(directory, "output.txt")
    code, wall = run_in_group(argv, env, output)
    run: Dict[str, Any] = {"variant": variant.name, "run": label, "wall_s": wall, "returncode": code}
    run.update(read_junit(junit))
    run["passed"] = passed(run, variant)
    if not run["passed"]:
        with open(output, encoding="utf-8", errors="replace") as handle:
            run["output_tail"] = handle.read()[-3000:]
        logger.error(
            "%s %s: exit code %s, %d test(s); its output (end):\n%s",
            variant.name,
            label,
            code,
            run["tests"],
            run["output_tail"],
        )
    logger.info(
        "  %-8s %-7s wall %6.2f s, %d test(s), %s",
        variant.name,
        label,
        wall,
        run["tests"],
        "passed" if run["passed"] else "NOT PASSED",
    )
    return run


def summarise_variant(variant: Variant, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median (min-max) of a variant's wall time and of its per-key sums."""
    keys = {}
    for key in variant.keys:
        entries = [run["keys"][key] for run in runs if key in run["keys"]]
        if entries:
            keys[key] = {name: spread([entry[name] for entry in entries]) for name in KEY_FIELDS}
    return {
        "label": variant.label,
        "options": list(variant.options),
        "tests": variant.tests,
        "runs": len(runs),
        "wall_s": spread([run["wall_s"] for run in runs]),
        "keys": keys,
    }


def key_sums(runs: List[Dict[str, Any]], key: str, field: str) -> List[Optional[float]]:
    """``field`` of ``key`` in each run, in the runs' order (None where a run has no test of that key)."""
    return [run["keys"][key][field] if key in run["keys"] else None for run in runs]


def emulation_ratios(by_variant: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Per emulated key, against local: call and held sums of the single-key runs (pairs of one repeat), the
    call sums inside each whole emulated run, and the extra wall time of a single-key run."""
    local = by_variant["local"]
    result = {}
    for key in EMULATED:
        mine = by_variant[key]
        walls = [run["wall_s"] - base["wall_s"] for run, base in zip(mine, local)]
        result["%s_over_local" % key] = {
            "call": ratios(key_sums(mine, key, "call_s"), key_sums(local, "local", "call_s")),
            "held": ratios(key_sums(mine, key, "held_s"), key_sums(local, "local", "held_s")),
            "call_in_whole_suite": ratios(
                key_sums(by_variant[WHOLE], key, "call_s"), key_sums(by_variant[WHOLE], "local", "call_s")
            ),
            "wall_extra_s": spread(walls) if walls else None,
        }
    return result


def measure_suite(repeats: int, warmups: int, workdir: str) -> Dict[str, Any]:
    """(2): ``warmups`` untimed whole emulated runs, then ``repeats`` rounds of every variant in rotating order."""
    env = inner_env()
    variants = {variant.name: variant for variant in VARIANTS}
    logger.info("(2) example suite: %d warm-up run(s), then %d round(s) of %s", warmups, repeats, ", ".join(variants))
    warmup_runs = [run_variant(variants[WHOLE], "warmup%d" % index, workdir, env) for index in range(warmups)]
    by_variant: Dict[str, List[Dict[str, Any]]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name in rotated(list(variants), repeat):
            by_variant[name].append(run_variant(variants[name], "run%d" % repeat, workdir, env))
    runs = [run for name in variants for run in by_variant[name]]
    return {
        "command": "python -m pytest examples %s --junitxml J OPTIONS" % " ".join(SUITE_OPTIONS),
        "variants": {name: summarise_variant(variants[name], by_variant[name]) for name in variants},
        "ratios": emulation_ratios(by_variant),
        "all_passed": all(run["passed"] for run in runs + warmup_runs),
        "runs": runs,
        "warmup_runs": warmup_runs,
    }


# --- (3) the artifact cache ------------------------------------------------------------------------


def build_each(sources: Sequence[str], toolchain: Toolchain, cache: str) -> float:
    """Seconds to ``build_shared`` each source on its own into ``cache``."""
    _, seconds = timed(lambda: [build_shared([source], toolchain, cache_dir=cache) for source in sources])
    return seconds


def measure_cache(repeats: int, workdir: str) -> Dict[str, Any]:
    """(3): per architecture, a miss (fresh cache) then a hit (same calls), ``repeats`` times, rotating."""
    sources = sorted(glob.glob(os.path.join(KERNELS, "*.c")))
    toolchains = {arch: toolchain_for(arch) for arch in CACHE_ARCHES}
    compilers = {arch: toolchain.version() for arch, toolchain in toolchains.items()}  # untimed: once per process
    logger.info(
        "(3) artifact cache: %d source(s) for %s, %d repeat(s)", len(sources), ", ".join(CACHE_ARCHES), repeats
    )
    misses: Dict[str, List[float]] = {arch: [] for arch in CACHE_ARCHES}
    hits: Dict[str, List[float]] = {arch: [] for arch in CACHE_ARCHES}
    for repeat in range(repeats):
        for arch in rotated(CACHE_ARCHES, repeat):
            cache = tempfile.mkdtemp(prefix="cache-%s-" % arch, dir=workdir)
            misses[arch].append(build_each(sources, toolchains[arch], cache))
            hits[arch].append(build_each(sources, toolchains[arch], cache))
    arches = {
        arch: {
            "compiler": toolchains[arch].compiler,
            "compiler_version": compilers[arch],
            "miss_s": spread(misses[arch]),
            "hit_s": spread(hits[arch]),
            "miss_over_hit": ratios(misses[arch], hits[arch]),
        }
        for arch in CACHE_ARCHES
    }
    return {"sources": [os.path.relpath(source, str(PROJECT)) for source in sources], "arches": arches}


# --- the report ----------------------------------------------------------------------------------


def mmm(row: Optional[Dict[str, Any]], scale: float = 1.0, digits: int = 2) -> str:
    """A spread as ``median (min-max)``, scaled; ``-`` for None."""
    if row is None:
        return "-"
    form = "%%.%df" % digits
    between = " to " if row["min"] < 0 else "-"  # -0.52 (-0.61 to 0.10), not (-0.61-0.10)
    return (form + " (" + form + between + form + ")") % tuple(row[name] * scale for name in ("median", "min", "max"))


def report_bringup(bringup: Dict[str, Any], repeats: int) -> List[str]:
    """The lines of (1): both farms' start and stop, their ratio, and the interpreters' probes."""
    lines = [
        "### (1) Bring-up: `FarmStack(...).start()` until every board is registered and free, %d start(s) each"
        % repeats,
        "",
        "median (min-max), seconds",
        "",
        "| inventory | file | boards | keys | `start()` | `stop()` |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in bringup["inventories"].items():
        cells = [name, "`%s`" % entry["inventory"], str(entry["boards"]), ", ".join(entry["keys"])]
        cells += [mmm(entry["start_s"], digits=3), mmm(entry["stop_s"], digits=3)]
        lines.append("| %s |" % " | ".join(cells))
    probes = bringup["probes"]
    lines += [
        "",
        "ratio emulated / local (`start()`, per pair of starts): %s" % mmm(bringup["ratio_emulated_over_local"]),
        "",
        "What an emulated board does before it registers, once each, seconds (`pack_server`, on the host, "
        "before any board starts: %.3f):" % probes["pack_server_s"],
        "",
        "| Python | start (`-c pass`) | start and `import farm.server` from the packed server "
        "| the same, the standard library's bytecode cached |",
        "|---|---|---|---|",
    ]
    for name, row in probes["pythons"].items():
        lines.append(
            "| %s | %.3f | %.3f | %.3f |"
            % (name, row["start_s"], row["import_server_s"], row["import_server_cached_s"])
        )
    return lines


def failure(run: Dict[str, Any]) -> str:
    """A run that did not pass, in a few words: ``emulated run1: exit code 1, 1 failure, 35 passed``."""
    outcomes = ", ".join("%d %s" % (count, name) for name, count in sorted(run["outcomes"].items()))
    return "%s %s: exit code %d, %s" % (run["variant"], run["run"], run["returncode"], outcomes or "no junit XML")


def report_suite(suite: Dict[str, Any], config: Dict[str, Any]) -> List[str]:
    """The lines of (2): each variant's wall time and per-key sums, the ratios against local, the verdict."""
    lines = [
        "",
        "### (2) Example suite: `%s`, %d run(s) each after %d warm-up(s)"
        % (suite["command"], config["suite_repeats"], config["warmup"]),
        "",
        "median (min-max), seconds; call: the tests' call phases, summed; held: the time each test held its "
        "board, summed",
        "",
        "| OPTIONS | tests | wall | key | call | held | queue wait |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in suite["variants"].values():
        first = "| %s | %d | %s" % (entry["label"], entry["tests"], mmm(entry["wall_s"]))
        for key, sums in entry["keys"].items():
            cells = [mmm(sums[name]) for name in KEY_FIELDS]
            lines.append("%s | %s | %s |" % (first, key, " | ".join(cells)))
            first = "| | |"
    lines += [
        "",
        "| against local | call (single-key runs) | held (single-key runs) | call (whole emulated suite) "
        "| extra wall of a single-key run |",
        "|---|---|---|---|---|",
    ]
    for name, row in suite["ratios"].items():
        cells = [mmm(row["call"]), mmm(row["held"]), mmm(row["call_in_whole_suite"]), mmm(row["wall_extra_s"])]
        lines.append("| %s | %s |" % (name.replace("_over_", " / "), " | ".join(cells)))
    failed = [run for run in suite["warmup_runs"] + suite["runs"] if not run["passed"]]
    verdict = "NO (%s)" % "; ".join(map(failure, failed)) if failed else "yes"
    lines += ["", "every inner run passed all its tests: %s" % verdict]
    return lines


def report_cache(cache: Dict[str, Any], repeats: int) -> List[str]:
    """The lines of (3): per architecture, a miss, a hit and their ratio."""
    lines = [
        "",
        "### (3) Artifact cache: `build_shared` of %s one by one, %d repeat(s)"
        % (", ".join("`%s`" % os.path.basename(source) for source in cache["sources"]), repeats),
        "",
        "median (min-max); miss: a fresh cache directory; hit: the same calls again",
        "",
        "| arch | compiler | miss, s | hit, ms | miss / hit |",
        "|---|---|---|---|---|",
    ]
    for arch, row in cache["arches"].items():
        lines.append(
            "| %s | `%s` (%s) | %s | %s | %s |"
            % (
                arch,
                row["compiler"],
                row["compiler_version"],
                mmm(row["miss_s"]),
                mmm(row["hit_s"], 1000, 2),
                mmm(row["miss_over_hit"], digits=0),
            )
        )
    return lines


def report(results: Dict[str, Any]) -> str:
    """The results as a markdown section."""
    machine, config, load = results["machine"], results["config"], results["load_average"]
    emulators = ", ".join("%s %s" % (arch, version) for arch, version in machine["emulated_pythons"].items())
    lines = [
        "",
        "## Farm: bring-up, example suite, artifact cache",
        "",
        "machine: %s; pytest %s, pytest-xdist %s; emulated Pythons: %s; PYTHONDONTWRITEBYTECODE %s; farm sources %s"
        % (
            machine_line(machine),
            machine["pytest"],
            machine["pytest_xdist"],
            emulators,
            "set" if machine["pythondontwritebytecode"] else "not set",
            machine["farm_sources_sha256"],
        ),
        "",
    ]
    lines += report_bringup(results["bringup"], config["bringup_repeats"])
    lines += report_suite(results["suite"], config)
    lines += report_cache(results["cache"], config["cache_repeats"])
    lines += [
        "",
        "load average (1, 5, 15 min) before: %s; after: %s; %.0f s in all"
        % (
            ", ".join("%.2f" % v for v in load["before"]),
            ", ".join("%.2f" % v for v in load["after"]),
            results["elapsed_s"],
        ),
    ]
    return "\n".join(lines) + "\n"


# --- the run -----------------------------------------------------------------------------------------


def describe_machine() -> Dict[str, Any]:
    """machine_info with the pytest versions, the emulated Pythons and whether bytecode may be written."""
    versions = {arch: row["python_version"] for arch, row in emulator_status().items()}
    return machine_info(
        pytest=importlib.metadata.version("pytest"),
        pytest_xdist=importlib.metadata.version("pytest-xdist"),
        emulated_pythons=versions,
        # set, no Python here (host or emulated) can cache the bytecode of what it imports: it compiles it each start
        pythondontwritebytecode=bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
    )


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """(1), (2) and (3) in a temporary directory, with the machine, the configuration and the load average."""
    started = time.monotonic()
    load_before = os.getloadavg()
    for arch in EMULATED:
        python_command(arch)  # EmulatorError now, naming what to install, rather than halfway through
    os.environ.update(child_env())  # the daemons FarmStack starts import this checkout's farm
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as workdir:
        bringup = measure_bringup(args.bringup_repeats, workdir)
        suite = measure_suite(args.suite_repeats, args.warmup, workdir)
        cache = measure_cache(args.cache_repeats, workdir)
    return {
        "machine": describe_machine(),
        "config": {name: getattr(args, name) for name in ("quick", *REPEATS)},
        "bringup": bringup,
        "suite": suite,
        "cache": cache,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "elapsed_s": time.monotonic() - started,
    }


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The options, with REPEATS' defaults (or their ``--quick`` values) filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, (default, quick, text) in REPEATS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, help="%s (default: %d; quick: %d)" % (text, default, quick))
    parser.add_argument("--quick", action="store_true", help="a short run, for the smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    for name, (default, quick, _) in REPEATS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error("--warmup must be >= 0, the other counts >= 1")
    return args


def quiet_and_interruptible(level: str) -> None:
    """Log at ``level`` (but not each build of (3)); on SIGTERM, unwind so that every farm and inner run stops."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("farm.toolchain").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, exit_on_signal)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run, print the report, write the JSON; 1 if an inner run failed a test, 2 without the emulators."""
    args = parse_args(argv)
    quiet_and_interruptible(args.log_level)
    try:
        results = run(args)
    except EmulatorError as exc:
        logger.error("%s", exc)
        return 2
    publish(results, report(results), args.json)
    if results["suite"]["all_passed"]:
        return 0
    logger.error("an inner run of the example suite did not pass all its tests (see above)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
