"""Farm and pytest plugin: bring-up, an idle session, a parallel suite, the example suite, the artifact cache.

* **ready**: ``FarmStack(load_inventory(BUILTIN_INVENTORIES[NAME]), log_dir).start()`` timed to its return (tracker
  and proxy bound, every board registered and free), then ``stop()``, for ``local`` (the plugin's default farm: two
  boards, one behind the proxy) and, with ``--emulated``, ``emulated`` (two local boards, an aarch64 and an armhf
  one), taking turns, every start a fresh stack. Target: the default farm ready in under 1.5 s (median).
* **probes** (``--emulated``): once each, ``pack_server``, and each Python's start and its import of ``farm.server``
  from the pack (what an emulated board does before it registers), also with the stdlib's bytecode cached.
* **idle**: the CPU each board's daemon (and session process) uses while a session on it is held and idle.
* **suite**: T tests each holding a board H s (``device`` fixture) on B boards of one key, ``pytest -n W``; variants
  take turns: ``hold``, ``hold0`` (its wall time is the start-up), ``xdist_only`` (no plugin, no device), and the
  three again without the other installed pytest plugins (``_minimal``). From the junit XML's holds and the
  controller's hooks: hold phase against the ideal T * H / min(B, W), utilisation, queue waits, hand-over gaps,
  lead-in, tail, CPU and where the wall time goes. Target: (wall - start-up) / ideal and hold phase / ideal <= 1.2.
* **examples** (``--emulated``): ``pytest examples -n 4`` with ``--farm emulated --device-key KEY`` for each key,
  ``--farm emulated`` and the default farm, after warm-up runs that fill the artifact cache; per key, the sums of
  the tests' call phases, of their holds and of their queue waits; emulated keys against local.
* **cache** (``--emulated``): ``build_shared`` of each examples/kernels/*.c for x86_64, aarch64 and armhf, a miss
  (fresh cache) then a hit.

An inner run that does not pass every test makes the exit status 1.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import importlib.metadata
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import harness
from harness import Headline, Option, Scenario, Tool, judged, mmm, ratio_spread, spread, table

from farm.client.tracker import TrackerClient  # noqa: E402
from farm.ops.emulators import python_command  # noqa: E402
from farm.ops.emulators import status as emulator_status  # noqa: E402
from farm.ops.inventory import BUILTIN_INVENTORIES, load_inventory  # noqa: E402
from farm.ops.launcher import FarmStack  # noqa: E402
from farm.ops.pack import pack_server  # noqa: E402
from farm.ops.targets import EMULATED  # noqa: E402
from farm.ops.toolchain import build_shared, toolchain_for  # noqa: E402
from pytest_remotedev.report import holds_in  # noqa: E402

logger = logging.getLogger("bench_farm")

READY_TARGET = 1.5  # the default farm ready in under this many seconds (median)
SUITE_TARGET = 1.2  # (wall - start-up) / ideal and hold phase / ideal at most this (medians)
RUN_TIMEOUT = 600.0  # one inner pytest run at most
KEY = "bench"
KEYS = ("local",) + EMULATED
TESTS_PER_KEY = 15  # example tests per key: 12 of kernels (examples/test_kernels.py), 3 benchmarks
HOLD_VARIANTS = ("hold", "hold0", "xdist_only", "hold_minimal", "hold0_minimal", "xdist_only_minimal")
EXAMPLE_VARIANTS = {  # name: (options, keys)
    **{key: (("--farm", "emulated", "--device-key", key), (key,)) for key in KEYS},
    "emulated": (("--farm", "emulated"), KEYS),
    "default": ((), ("local",)),
}
PHASES = (  # where an inner run's wall time goes, from the controller's stages (_CONFTEST); they add up to it
    ("pytest_up", "process start to pytest configured (interpreter, imports, plugins)"),
    ("farm_start", "the plugin's pytest_xdist_setupnodes (the bundled farm's start)"),
    ("workers_up", "W workers spawned, started and each done collecting"),
    ("to_first_test", "to the first test's report"),
    ("tests", "first to last test report"),
    ("workers_down", "last report to the end of pytest_sessionfinish (xdist waits for its workers to exit)"),
    ("finish", "then to process exit (terminal summary, junit XML, unconfigure, the farm's stop, exit)"),
)
_TEST_MODULE = """import time

import pytest


@pytest.mark.parametrize("index", range({tests}))
def test_hold({fixture}index):
    time.sleep({hold!r})  # host-side, while the board is held
"""
_CONFTEST = """import json
import time

import pytest

EVENTS = {}
CONTROLLER = []


def _mark(name):
    if CONTROLLER:
        EVENTS.setdefault(name, []).append(time.time())


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        CONTROLLER.append(config)
    _mark("configured")


@pytest.hookimpl(hookwrapper=True, optionalhook=True)
def pytest_xdist_setupnodes(config, specs):
    _mark("setupnodes_begin")
    yield
    _mark("setupnodes_end")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _mark("node_collected")


def pytest_runtest_logreport(report):
    _mark("report")


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session):
    yield
    _mark("sessionfinish_end")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if CONTROLLER:
        with open("timeline.json", "w") as handle:
            json.dump(EVENTS, handle)
"""


# --- shared by the scenarios --------------------------------------------------------------------------


def children_cpu() -> float:
    """User + system CPU seconds of this process's reaped descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_pytest(argv: Sequence[str], cwd: str, env: Dict[str, str], output: str) -> Dict[str, Any]:
    """``python -m pytest ARGV`` in ``cwd`` and a process group of its own; whatever is left of it is killed after."""
    with open(output, "wb") as sink:
        gc.collect()
        cpu, began_epoch, began = children_cpu(), time.time(), time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "pytest", *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=RUN_TIMEOUT)
        finally:
            wall = time.perf_counter() - began
            with contextlib.suppress(ProcessLookupError):  # the whole group: the inner farm goes with it
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    run = {"returncode": code, "wall_s": wall, "cpu_s": children_cpu() - cpu, "began": began_epoch}
    run["ended"] = began_epoch + wall
    if code != 0:
        with open(output, encoding="utf-8", errors="replace") as handle:
            run["output_tail"] = handle.read()[-3000:]
    return run


def read_junit(path: str) -> Dict[str, Any]:
    """Outcome counts and the board holds of each test (``pytest_remotedev.report.Hold``), with its call time."""
    outcomes: Dict[str, int] = {}
    cases = []
    for case in ET.parse(path).getroot().iter("testcase") if os.path.exists(path) else ():
        verdict = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
        outcomes[verdict] = outcomes.get(verdict, 0) + 1
        holds = holds_in((prop.get("name", ""), prop.get("value", "")) for prop in case.iter("property"))
        cases.append((verdict, float(case.get("time", "0")), holds))
    return {"tests": len(cases), "outcomes": outcomes, "cases": cases}


def take_turns(run_one: Callable[[str, str], Dict[str, Any]], names: Sequence[str], repeats: int,
               warmups: Sequence[str]) -> Tuple[Dict[str, List[Dict[str, Any]]], List[Dict[str, Any]]]:  # fmt: skip
    """Untimed ``warmups`` first, then ``repeats`` rounds of ``names`` in rotating order: the runs of each."""
    warm = [run_one(name, "warmup%d" % index) for index, name in enumerate(warmups)]
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in harness.rotated(names, repeat):
            runs[name].append(run_one(name, "run%d" % repeat))
            logger.info("  %-18s #%d: wall %.2f s, passed: %s", name, repeat, runs[name][-1]["wall_s"],
                        runs[name][-1]["passed"])  # fmt: skip
    return runs, warm


def failures(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """The runs that did not pass, in a few words each."""
    return ["%s %s: exit code %d, %s" % (run["variant"], run["run"], run["returncode"], run["outcomes"])
            for run in runs if not run["passed"]]  # fmt: skip


# --- ready, probes, idle ------------------------------------------------------------------------------------


def measure_ready(workdir: str, args: Any) -> Dict[str, Any]:
    names = ["local"] + (["emulated"] if args.emulated else [])
    samples: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names}
    described: Dict[str, Any] = {}
    for repeat in range(args.rounds):
        for name in harness.rotated(names, repeat):
            stack = FarmStack(
                load_inventory(BUILTIN_INVENTORIES[name]), os.path.join(workdir, "%s-%d" % (name, repeat))
            )
            gc.collect()
            try:
                ready = harness.timed(stack.start)  # returns once every board has registered and is free
                described[name] = stack.describe()
            finally:
                samples[name].append((ready, harness.timed(stack.stop)))
    result: Dict[str, Any] = {}
    for name, pairs in samples.items():
        boards = described[name]["boards"]
        result[name] = {"start_s": spread([p[0] for p in pairs]), "stop_s": spread([p[1] for p in pairs]),
                        "boards": len(boards), "proxied_boards": sum(1 for board in boards if board["proxy"]),
                        "keys": sorted({board["key"] for board in boards})}  # fmt: skip
    if args.emulated:
        starts = {name: [p[0] for p in pairs] for name, pairs in samples.items()}
        result["emulated_over_local"] = ratio_spread(starts["emulated"], starts["local"])
    result["target"] = judged(result["local"]["start_s"]["median"], READY_TARGET, "<=")
    return result


def report_ready(ready: Dict[str, Any], args: Any) -> List[str]:
    rows = []
    for name in ("local", "emulated"):
        if name in ready:
            row = ready[name]
            start, stop = mmm(row["start_s"], digits=3), mmm(row["stop_s"], digits=3)
            p90 = "%.3f" % row["start_s"]["p90"]
            rows.append((name, row["boards"], row["proxied_boards"], ", ".join(row["keys"]), start, p90, stop))
    header = ("inventory", "boards", "behind the proxy", "keys", "start() to ready", "p90", "stop()")
    lines = ["### Bring-up, %d start(s) each, seconds" % args.rounds, ""] + table(header, rows)
    if "emulated_over_local" in ready:
        lines += ["", "emulated / local, per pair of starts: %s" % mmm(ready["emulated_over_local"])]
    return lines + [""]


def board_env() -> Dict[str, str]:
    """The environment an emulated board gets from FarmStack: this one without PYTHONPATH and PYTHONHOME."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}


def measure_probes(workdir: str, args: Any) -> Dict[str, Any]:
    """Once each: packing the board server; each Python's start, its import of ``farm.server`` from the pack as a
    board does it, and with the standard library's bytecode cached (a second import, the first untimed)."""
    archive = os.path.join(workdir, "farm-server.pyz")
    pack_s = harness.timed(lambda: pack_server(archive))
    load = ["-c", "import sys; sys.path.insert(0, %r); import farm.server" % archive]
    pythons = {"host": [sys.executable], **{arch: python_command(arch) for arch in EMULATED}}

    def probe(argv: List[str], env: Dict[str, str]) -> float:
        return harness.timed(lambda: subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=True))

    rows = {}
    for name, python in pythons.items():
        cached = dict(board_env(), PYTHONPYCACHEPREFIX=tempfile.mkdtemp(prefix="pycache-", dir=workdir))
        cached.pop("PYTHONDONTWRITEBYTECODE", None)
        probe([*python, *load], cached)  # fills the bytecode cache
        rows[name] = {"start_s": probe([*python, "-c", "pass"], board_env()),
                      "import_server_s": probe([*python, *load], board_env()),
                      "import_server_cached_s": probe([*python, *load], cached)}  # fmt: skip
    return {"pack_server_s": pack_s, "pythons": rows}


def report_probes(probes: Dict[str, Any], args: Any) -> List[str]:
    rows = [(name, "%.3f" % row["start_s"], "%.3f" % row["import_server_s"], "%.3f" % row["import_server_cached_s"])
            for name, row in probes["pythons"].items()]  # fmt: skip
    header = (
        "Python",
        "start (-c pass)",
        "start, import farm.server from the pack",
        "the same, stdlib bytecode cached",
    )
    title = "What an emulated board does before it registers, seconds (pack_server: %.3f)" % probes["pack_server_s"]
    return [title, ""] + table(header, rows) + [""]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children, from /proc (0 for one that is gone)."""
    total = 0.0
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open("/proc/%d/task/%d/children" % (pid, pid), encoding="ascii") as handle:
            children = [int(child) for child in handle.read().split()]
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(process_cpu(child) for child in children)


def measure_idle(workdir: str, args: Any) -> Dict[str, Any]:
    """The CPU share of each board's daemon (and session process) while its session is held and idle."""
    inventory = load_inventory(BUILTIN_INVENTORIES["local"])
    stack = FarmStack(inventory, os.path.join(workdir, "idle-session"))
    closing: List[Any] = []
    try:
        stack.start()
        for _ in stack.boards:  # every board of the key, so that each holds a session
            client = TrackerClient(*stack.tracker_address)
            session = client.request(inventory.default_key, session_timeout=60 + args.idle_seconds, wait=30)
            closing += [session, client]
            session.ping()
        before = {board.name: process_cpu(board.process.pid) for board in stack.boards}
        elapsed = harness.timed(lambda: time.sleep(args.idle_seconds))
        boards = [{"name": board.name, "through_proxy": board.group.proxy,
                   "cpu_share": (process_cpu(board.process.pid) - before[board.name]) / elapsed}
                  for board in stack.boards]  # fmt: skip
        for session in closing[::2]:
            session.ping()  # still there
    finally:
        try:
            for closable in closing:
                with contextlib.suppress(Exception):  # a lost session or tracker: the farm stops below anyway
                    closable.close()
        finally:
            stack.stop()
    return {"seconds": elapsed, "boards": boards}


def report_idle(idle: Dict[str, Any], args: Any) -> List[str]:
    cells = ["%s (%s) %.0f%% of a core" % (b["name"], "behind the proxy" if b["through_proxy"] else "listening",
                                           100 * b["cpu_share"]) for b in idle["boards"]]  # fmt: skip
    return ["CPU of each board's daemon, a session held idle %.1f s: %s." % (idle["seconds"], "; ".join(cells)), ""]


# --- the synthetic suite ------------------------------------------------------------------------------------


def other_plugins() -> List[str]:
    """The installed pytest plugins (``pytest11`` entry points) other than remotedev and xdist."""
    points: Any = importlib.metadata.entry_points()
    group = points.select(group="pytest11") if hasattr(points, "select") else points.get("pytest11", [])
    return sorted({point.name for point in group if point.name not in ("remotedev", "xdist")})


def timeline(path: str, run: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """Seconds of each of PHASES, from the controller's timeline and the run's start and exit (epoch)."""
    try:
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)
        configured, begin, end = events["configured"][0], events["setupnodes_begin"][0], events["setupnodes_end"][0]
        collected, first, last = max(events["node_collected"]), min(events["report"]), max(events["report"])
        finished = events["sessionfinish_end"][-1]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return {"pytest_up": configured - run["began"], "farm_start": end - begin,
            "workers_up": collected - end + (begin - configured), "to_first_test": first - collected,
            "tests": last - first, "workers_down": finished - last, "finish": run["ended"] - finished}  # fmt: skip


def hold_figures(holds: Sequence[Any], run: Dict[str, Any], boards: int) -> Dict[str, Any]:
    """Hold phase, utilisation, queue waits, lead-in, tail and hand-over gaps of one run's holds."""
    first, last = min(h.held_from for h in holds), max(h.held_until for h in holds)
    busy, waits = sum(h.held for h in holds), [h.queue_wait for h in holds]
    by_board: Dict[str, List[Tuple[float, float]]] = {}
    for hold in holds:
        by_board.setdefault(hold.board_id, []).append((hold.held_from, hold.held_until))
    gaps = [
        begin - end for spans in by_board.values() for (_, end), (begin, _) in zip(sorted(spans), sorted(spans)[1:])
    ]
    return {"holds": len(holds), "boards_used": len(by_board), "hold_span_s": last - first, "busy_s": busy,
            "utilisation": busy / (boards * (last - first)) if last > first else None,
            "queue_wait_total_s": sum(waits), "queue_wait_max_s": max(waits), "lead_in_s": first - run["began"],
            "tail_s": run["ended"] - last, "handover_gap_median_s": statistics.median(gaps) if gaps else None,
            "hold_overlaps": sum(1 for gap in gaps if gap < -1e-3)}  # fmt: skip


def run_hold(variant: str, label: str, args: Any, workdir: str, disabled: Sequence[str]) -> Dict[str, Any]:
    """One inner run of the synthetic suite's ``variant`` in a fresh directory."""
    directory = os.path.join(workdir, "%s-%s" % (variant, label))
    os.makedirs(directory)
    hold = args.hold if variant in ("hold", "hold_minimal") else 0.0
    bare = variant.startswith("xdist_only")
    module = _TEST_MODULE.format(tests=args.tests, hold=hold, fixture="" if bare else "device, ")
    inventory = ["tracker: {host: 127.0.0.1, port: 0}", "proxy: {host: 127.0.0.1, port: 0}", "default_key: " + KEY,
                 "boards:", "  - {key: %s, count: %d}" % (KEY, args.boards - args.proxied),
                 "  - {key: %s, count: %d, proxy: true}" % (KEY, args.proxied)]  # fmt: skip
    for name, text in (("test_hold.py", module), ("conftest.py", _CONFTEST), ("farm.yaml", "\n".join(inventory))):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    argv = ["-n", str(args.workers), *(["-p", "no:remotedev"] if bare else ["--farm", "farm.yaml"])]
    for name in disabled if variant.endswith("_minimal") else ():
        argv += ["-p", "no:" + name]
    argv += ["--junitxml", "junit.xml", "-p", "no:cacheprovider", "-q", "test_hold.py"]
    run = run_pytest(argv, directory, harness.inner_env(), os.path.join(directory, "output.txt"))
    junit = read_junit(os.path.join(directory, "junit.xml"))
    run.update(variant=variant, run=label, tests=junit["tests"], outcomes=junit["outcomes"])
    run["passed"] = run["returncode"] == 0 and junit["outcomes"] == {"passed": args.tests}
    run["phases"] = timeline(os.path.join(directory, "timeline.json"), run)
    holds = [hold for _, _, holds in junit["cases"] for hold in holds]
    if holds:
        run.update(hold_figures(holds, run, args.boards))
    return run


HOLD_FIELDS = ("wall_s", "cpu_s", "hold_span_s", "utilisation", "queue_wait_total_s", "queue_wait_max_s",
               "lead_in_s", "tail_s", "handover_gap_median_s")  # fmt: skip


def measure_suite(workdir: str, args: Any) -> Dict[str, Any]:
    disabled = other_plugins()
    names = [name for name in HOLD_VARIANTS if disabled or not name.endswith("_minimal")]
    runs, warm = take_turns(lambda name, label: run_hold(name, label, args, workdir, disabled), names, args.repeats,
                            ["hold0"] * args.warmup)  # fmt: skip
    variants: Dict[str, Any] = {}
    for name, mine in runs.items():
        entry: Dict[str, Any] = {"runs": len(mine)}
        for field in HOLD_FIELDS:
            values = [run[field] for run in mine if run.get(field) is not None]
            if values:
                entry[field] = spread(values)
        timed = [run["phases"] for run in mine if run["phases"]]
        if timed:
            entry["phases"] = {phase: spread([row[phase] for row in timed]) for phase, _ in PHASES}
        variants[name] = entry
    ideal = args.tests * args.hold / min(args.boards, args.workers)

    def over_ideal(hold: str, base: str) -> Optional[Dict[str, Any]]:
        if hold not in variants:
            return None
        start = variants[base]["wall_s"]["median"]
        values = [(wall - start) / ideal for wall in variants[hold]["wall_s"]["values"]]
        return dict(judged(statistics.median(values), SUITE_TARGET, "<="), values=values)

    def difference(one: str, other: str) -> Optional[float]:
        both = one in variants and other in variants
        return variants[one]["wall_s"]["median"] - variants[other]["wall_s"]["median"] if both else None

    spans = variants["hold"]["hold_span_s"]["values"]
    every = [run for mine in runs.values() for run in mine] + warm
    return {"ideal_hold_span_s": ideal, "startup_s": variants["hold0"]["wall_s"]["median"], "variants": variants,
            "other_plugins": disabled, "runs": runs, "warmup_runs": warm, "failures": failures(every),
            "hold_overlaps": sum(run.get("hold_overlaps", 0) for run in every),
            "startup_differences_s": {"plugin_and_farm": difference("hold0", "xdist_only"),
                                      "plugin_and_farm_minimal": difference("hold0_minimal", "xdist_only_minimal"),
                                      "other_plugins": difference("hold0", "hold0_minimal")},
            "ratios": {"wall_minus_startup_over_ideal": over_ideal("hold", "hold0"),
                       "hold_span_over_ideal": dict(judged(statistics.median(spans) / ideal, SUITE_TARGET,
                                                           "<="), values=[span / ideal for span in spans]),
                       "wall_minus_startup_over_ideal_minimal": over_ideal("hold_minimal",
                                                                           "hold0_minimal")}}  # fmt: skip


def report_suite(suite: Dict[str, Any], args: Any) -> List[str]:
    title = "### %d tests holding a board %g s, %d boards of one key (%d behind the proxy), -n %d, %d repeat(s)"
    lines = [title % (args.tests, args.hold, args.boards, args.proxied, args.workers, args.repeats), "",
             "median (min-max), seconds; utilisation in %; hand-over gap in ms", ""]  # fmt: skip
    scales = {"utilisation": 100, "handover_gap_median_s": 1000}
    rows = [[name] + [mmm(entry.get(field), scales.get(field, 1)) for field in HOLD_FIELDS]
            for name, entry in suite["variants"].items()]  # fmt: skip
    lines += table(("variant", *HOLD_FIELDS), rows) + ["", "where the wall time goes, medians, seconds:", ""]
    rows = [[name] + ["%.2f" % entry["phases"][phase]["median"] for phase, _ in PHASES]
            for name, entry in suite["variants"].items() if "phases" in entry]  # fmt: skip
    lines += table(("variant", *(phase for phase, _ in PHASES)), rows) + [""]
    lines += ["* %s: %s" % phase for phase in PHASES] + [""]
    differences = ", ".join("%s %s s" % (name, "-" if value is None else "%.2f" % value)
                            for name, value in suite["startup_differences_s"].items())  # fmt: skip
    lines += ["ideal hold phase %.2f s; start-up (median wall, hold 0 s) %.2f s; start-up differences: %s; other "
              "plugins: %s" % (suite["ideal_hold_span_s"], suite["startup_s"], differences,
                               ", ".join(suite["other_plugins"]) or "none"), ""]  # fmt: skip
    rows = [(name, "%.2f" % row["ratio"], ", ".join("%.2f" % v for v in row["values"]), "<= %g" % row["target"],
             harness.verdict(row["pass"])) for name, row in suite["ratios"].items() if row]  # fmt: skip
    lines += table(("ratio (median)", "value", "per repeat", "target", ""), rows)
    return lines + ["", "failed runs: %s; holds of one board overlapping: %d"
                    % ("; ".join(suite["failures"]) or "none", suite["hold_overlaps"]), ""]  # fmt: skip


# --- the example suite and the artifact cache ------------------------------------------------------------


def run_examples(variant: str, label: str, workdir: str) -> Dict[str, Any]:
    """One inner run of the example suite with ``variant``'s options: wall time and per-key sums."""
    options, keys = EXAMPLE_VARIANTS[variant]
    directory = tempfile.mkdtemp(prefix="examples-%s-%s-" % (variant, label), dir=workdir)
    junit = os.path.join(directory, "junit.xml")
    argv = ["examples", "-n", "4", "-p", "no:cacheprovider", "-o", "junit_duration_report=call", "--junitxml", junit]
    run = run_pytest([*argv, *options], str(harness.PROJECT), harness.inner_env(), junit + ".out")
    parsed = read_junit(junit)
    per_key: Dict[str, Dict[str, Any]] = {}
    for verdict, call, holds in parsed["cases"]:
        entry = per_key.setdefault(
            holds[0].key if holds else "(no board)",
            {"tests": 0, "passed": 0, "call_s": 0.0, "held_s": 0.0, "queue_wait_s": 0.0},
        )
        entry["tests"] += 1
        entry["passed"] += verdict == "passed"
        entry["call_s"] += call
        entry["held_s"] += sum(hold.held for hold in holds)
        entry["queue_wait_s"] += sum(hold.queue_wait for hold in holds)
    run.update(variant=variant, run=label, tests=parsed["tests"], outcomes=parsed["outcomes"], keys=per_key)
    wanted = {key: (TESTS_PER_KEY, TESTS_PER_KEY) for key in keys}
    run["passed"] = run["returncode"] == 0 and {k: (e["tests"], e["passed"]) for k, e in per_key.items()} == wanted
    return run


def measure_examples(workdir: str, args: Any) -> Dict[str, Any]:
    runs, warm = take_turns(lambda name, label: run_examples(name, label, workdir), list(EXAMPLE_VARIANTS),
                            args.example_repeats, ["emulated"] * args.example_warmup)  # fmt: skip

    def sums(variant: str, key: str, field: str) -> List[Optional[float]]:
        return [run["keys"][key][field] if key in run["keys"] else None for run in runs[variant]]

    fields = ("call_s", "held_s", "queue_wait_s")
    variants = {name: {"wall_s": spread([run["wall_s"] for run in mine]), "keys": {
        key: {field: spread([v or 0.0 for v in sums(name, key, field)]) for field in fields}
        for key in EXAMPLE_VARIANTS[name][1]}} for name, mine in runs.items()}  # fmt: skip
    ratios = {"%s_over_local" % key: {
        "call": ratio_spread(sums(key, key, "call_s"), sums("local", "local", "call_s")),
        "held": ratio_spread(sums(key, key, "held_s"), sums("local", "local", "held_s")),
        "call_in_whole_suite": ratio_spread(sums("emulated", key, "call_s"), sums("emulated", "local", "call_s")),
        "wall_extra_s": spread([a["wall_s"] - b["wall_s"] for a, b in zip(runs[key], runs["local"])]),
    } for key in EMULATED}  # fmt: skip
    every = [run for mine in runs.values() for run in mine] + warm
    return {"variants": variants, "ratios": ratios, "runs": runs, "warmup_runs": warm, "failures": failures(every)}


def report_examples(examples: Dict[str, Any], args: Any) -> List[str]:
    title = "### Example suite: `python -m pytest examples -n 4 OPTIONS`, %d run(s) each after %d warm-up(s)"
    lines = [title % (args.example_repeats, args.example_warmup), "",
             "median (min-max), seconds; call, held and queue wait summed over the key's tests", ""]  # fmt: skip
    rows = []
    for name, entry in examples["variants"].items():
        options = "`%s`" % " ".join(EXAMPLE_VARIANTS[name][0]) if EXAMPLE_VARIANTS[name][0] else "the default farm"
        for index, (key, sums) in enumerate(entry["keys"].items()):
            first = (options, mmm(entry["wall_s"])) if index == 0 else ("", "")
            rows.append((*first, key, mmm(sums["call_s"]), mmm(sums["held_s"]), mmm(sums["queue_wait_s"])))
    lines += table(("OPTIONS", "wall", "key", "call", "held", "queue wait"), rows) + [""]
    rows = [(name.replace("_over_", " / "), mmm(row["call"]), mmm(row["held"]), mmm(row["call_in_whole_suite"]),
             mmm(row["wall_extra_s"])) for name, row in examples["ratios"].items()]  # fmt: skip
    header = ("against local", "call (single-key runs)", "held", "call (whole suite)", "extra wall, s")
    lines += table(header, rows)
    return lines + ["", "failed runs: %s" % ("; ".join(examples["failures"]) or "none"), ""]


def measure_cache(workdir: str, args: Any) -> Dict[str, Any]:
    """Per architecture, a miss (fresh cache) then a hit (same calls), rotating."""
    sources = sorted(glob.glob(os.path.join(str(harness.PROJECT), "examples", "kernels", "*.c")))
    arches = ("x86_64",) + EMULATED
    toolchains = {arch: toolchain_for(arch) for arch in arches}
    versions = {arch: toolchain.version() for arch, toolchain in toolchains.items()}  # untimed: once per process
    misses: Dict[str, List[float]] = {arch: [] for arch in arches}
    hits: Dict[str, List[float]] = {arch: [] for arch in arches}

    def build_each(arch: str, cache: str) -> float:
        return harness.timed(lambda: [build_shared([s], toolchains[arch], cache_dir=cache) for s in sources])

    for repeat in range(args.cache_repeats):
        for arch in harness.rotated(arches, repeat):
            cache = tempfile.mkdtemp(prefix="cache-%s-" % arch, dir=workdir)
            misses[arch].append(build_each(arch, cache))
            hits[arch].append(build_each(arch, cache))
    rows = {arch: {"compiler": toolchains[arch].compiler, "compiler_version": versions[arch],
                   "miss_s": spread(misses[arch]), "hit_s": spread(hits[arch]),
                   "miss_over_hit": ratio_spread(misses[arch], hits[arch])} for arch in arches}  # fmt: skip
    return {"sources": [os.path.basename(source) for source in sources], "arches": rows}


def report_cache(cache: Dict[str, Any], args: Any) -> List[str]:
    rows = [(arch, "`%s` (%s)" % (row["compiler"], row["compiler_version"]), mmm(row["miss_s"]),
             mmm(row["hit_s"], 1000), mmm(row["miss_over_hit"], digits=0))
            for arch, row in cache["arches"].items()]  # fmt: skip
    title = "### Artifact cache: `build_shared` of %s one by one, %d repeat(s)" % (", ".join(cache["sources"]),
                                                                                  args.cache_repeats)  # fmt: skip
    return [title, ""] + table(("arch", "compiler", "miss, s", "hit, ms", "miss / hit"), rows) + [""]


# --- the tool -----------------------------------------------------------------------------------------------


def headline(results: Dict[str, Any]) -> List[Headline]:
    figures, rows = results["scenarios"], []
    if "ready" in figures:
        ready = figures["ready"]
        ours = "%.3f s" % ready["local"]["start_s"]["median"]
        rows.append(Headline("default farm ready (tracker, proxy, 2 boards)", ours, target="< %g s" % READY_TARGET,
                             met=ready["target"]["pass"]))  # fmt: skip
        if "emulated" in ready:
            rows.append(Headline("emulated farm ready (4 boards, 2 under qemu)",
                                 "%.3f s" % ready["emulated"]["start_s"]["median"],
                                 ratio="%.1f x local" % ready["emulated_over_local"]["median"]))  # fmt: skip
    if "suite" in figures:
        for name, row in figures["suite"]["ratios"].items():
            if row and not name.endswith("_minimal"):
                label = "parallel suite: %s" % name.replace("_over_", " / ").replace("_", " ")
                rows.append(Headline(label, "%.2f" % row["ratio"], target="<= %g" % SUITE_TARGET, met=row["pass"]))
    for key, row in figures.get("examples", {}).get("ratios", {}).items():
        rows.append(
            Headline("example suite, call time %s" % key.replace("_over_", " / "), "%.1f x" % row["call"]["median"])
        )
    return rows


def passed(results: Dict[str, Any]) -> bool:
    figures = results["scenarios"]
    return not figures.get("suite", {}).get("failures") and not figures.get("examples", {}).get("failures")


def check_args(args: Any) -> Optional[str]:
    if min(args.tests, args.workers, args.boards, args.repeats, args.example_repeats, args.cache_repeats) < 1:
        return "--tests, --workers, --boards and the repeats must be >= 1"
    if args.hold <= 0 or args.idle_seconds <= 0 or not 0 <= args.proxied <= args.boards:
        return "--hold and --idle-seconds must be positive, --proxied between 0 and --boards"
    return None


def machine_extra() -> Dict[str, Any]:
    """pytest's versions, the emulated Pythons and whether bytecode may be written (if not, every start compiles)."""
    extra: Dict[str, Any] = {name: importlib.metadata.version(name) for name in ("pytest", "pytest-xdist")}
    extra["pythondontwritebytecode"] = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    with contextlib.suppress(Exception):
        extra["emulated_pythons"] = {arch: row["python_version"] for arch, row in emulator_status().items()}
    return extra


def emulated(args: Any) -> bool:
    return bool(args.emulated)


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
        "idle_seconds": Option(3.0, 0.5, "seconds a session is held idle", float),
        "tests": Option(24, 8, "tests of the synthetic suite"),
        "hold": Option(0.5, 0.2, "seconds each of them holds its board", float),
        "workers": Option(8, 2, "pytest-xdist workers of the synthetic suite (-n)"),
        "boards": Option(4, 4, "boards of the synthetic suite's key"),
        "proxied": Option(1, 1, "of them behind the proxy"),
        "repeats": Option(3, 1, "runs of each synthetic-suite variant"),
        "warmup": Option(1, 0, "untimed runs of hold0 before them"),
        "example_repeats": Option(3, 1, "runs of each example-suite variant"),
        "example_warmup": Option(1, 0, "untimed runs of the whole emulated example suite before them"),
        "cache_repeats": Option(10, 2, "misses and hits per architecture"),
    },
    setup=setup,
    scenarios=[
        Scenario("ready", measure_ready, report_ready, target="< %g s" % READY_TARGET),
        Scenario("probes", measure_probes, report_probes, enabled=emulated),
        Scenario("idle", measure_idle, report_idle),
        Scenario("suite", measure_suite, report_suite, limit="T * H / min(B, W)", target="<= %g x" % SUITE_TARGET),
        Scenario("examples", measure_examples, report_examples, limit="local board", enabled=emulated),
        Scenario("cache", measure_cache, report_cache, enabled=emulated),
    ],
    headline=headline,
    passed=passed,
    check_args=check_args,
    machine_extra=machine_extra,
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
