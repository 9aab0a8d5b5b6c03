"""Pytest-plugin benchmark: how fast the bundled farm comes up, and how a parallel suite uses its boards.

Two measurements, on loopback, in one run:

* **(1) bundled farm ready time**: ``FarmStack(load_inventory(DEFAULT_INVENTORY), log_dir).start()``
  timed from the call to its return (tracker and proxy bound, both boards of key ``local``
  registered and free; one board listens, the other dials out to the proxy), then the time
  ``stop()`` takes. N repetitions, each with a fresh stack. Target: ready in under 1.5 s (median).
  Then, on one more such farm, the CPU each board's daemon (with its session process) uses while
  a test holds the board and does nothing: both boards taken with ``TrackerClient.request``, CPU
  time read from ``/proc`` over ``--idle-seconds``. It should be close to nothing.
* **(2) a synthetic suite under pytest-xdist**: T tests, each taking a board through the
  ``device`` fixture and holding it H seconds (a host-side ``time.sleep`` while the session
  is open), on an inventory of B boards of one key (all but ``--proxied`` of them listening,
  the rest behind the proxy), run as
  ``python -m pytest -n W --farm INV --junitxml X -p no:cacheprovider -q test_hold.py`` in a
  fresh temporary directory. These variants take turns, in rotating order:

  - ``hold``: the suite as described;
  - ``hold0``: the same suite holding each board 0 s: its wall time is the start-up (pytest,
    W workers, the farm, the T trivial tests and the teardown);
  - ``xdist_only``: T trivial tests without the ``device`` fixture, with the plugin disabled
    (``-p no:remotedev``): what pytest and W workers cost without any farm;
  - ``hold_minimal``, ``hold0_minimal`` and ``xdist_only_minimal``: the same three with every
    other installed pytest plugin disabled too (``-p no:NAME``; in this project's venv
    pytest-timeout and Hypothesis's, from the ``test`` extra): what those plugins add, and the
    ratios without them (only when there are any).

  From the junit XML (the holds each test records: ``device_held_from`` / ``device_held_until``
  on the board's clock, the same machine's here): the hold phase (first hold to last release),
  against the ideal T * H / min(B, W); the boards' utilisation (time held over B times the hold
  phase); the queue waits; a board's idle time between two holds. Against the host clock: the
  lead-in (process start to the first hold) and the tail (last release to exit). The CPU time of
  the whole run (pytest, its workers and the farm's daemons: every descendant reaped by the time
  it exits). And, from a generated ``conftest.py`` that notes when pytest's controller reaches each
  stage, where the wall time goes (see ``PHASES``). Ratios: (wall - start-up) / ideal and
  hold phase / ideal, target at most 1.2 each (on medians; start-up = median wall of ``hold0``;
  the first ratio also for the ``_minimal`` variants).

Then prints a markdown section::

    python benchmarks/bench_plugin.py [--ready-repeats 20] [--idle-seconds 3] [--tests 24] [--hold 0.5]
                                      [--workers 8] [--boards 4] [--proxied 1] [--repeats 3] [--warmup 1]
                                      [--json out.json]

``--quick`` (the smoke test's mode): 2 ready repetitions; one run of each variant, no warm-up, with
8 tests holding 0.2 s on 2 workers. A run in which an inner test does not pass makes the script exit
with status 1 (its figures are still printed and written).
"""

from __future__ import annotations

import argparse
import gc
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from common import PROJECT, child_env, exit_on_signal, inner_env, machine_info, machine_line, publish, spread  # noqa: E402  (puts this checkout's farm on the path)

from farm.client.tracker import TrackerClient  # noqa: E402
from farm.ops.inventory import DEFAULT_INVENTORY, load_inventory  # noqa: E402
from farm.ops.launcher import FarmStack  # noqa: E402

logger = logging.getLogger("bench_plugin")

KEY = "bench"
#: Target: the bundled farm ready in under this many seconds (median).
READY_TARGET = 1.5
#: Target: (wall - start-up) / ideal and hold phase / ideal at most this (medians).
SUITE_TARGET = 1.2
#: How long one inner pytest run may take before it is killed.
RUN_TIMEOUT = 600.0
#: How long the idle-session probe waits for a board.
DEADLINE = 30.0
#: Two holds of one board overlapping by more than this count as an overlap (clock rounding is 1 us).
OVERLAP_TOLERANCE = 1e-3
VARIANTS = ("hold", "hold0", "xdist_only", "hold_minimal", "hold0_minimal", "xdist_only_minimal")
#: The plugins a run needs; the ``_minimal`` variants disable every other one installed.
_NEEDED_PLUGINS = ("remotedev", "xdist")
#: Environment variables that would point the inner pytest elsewhere (a tracker, options, an outer xdist).

#: Where an inner run's wall time goes, from the controller's stages (``_CONFTEST``); they add up to the wall time.
PHASES = (
    ("pytest_up", "process start to pytest configured (interpreter, imports, plugins)"),
    ("farm_start", "the plugin's pytest_xdist_setupnodes (the bundled farm's start)"),
    ("workers_up", "W workers spawned, started and each done collecting"),
    ("to_first_test", "to the first test's report"),
    ("tests", "first to last test report"),
    ("workers_down", "last report to the end of pytest_sessionfinish (xdist waits for its workers to exit)"),
    ("finish", "then to process exit (terminal summary, junit XML, unconfigure, the farm's stop, exit)"),
)

_TEST_MODULE = '''"""Generated by benchmarks/bench_plugin.py: {tests} tests, each holding a board {hold:g} s."""

import time

import pytest

HOLD = {hold!r}


@pytest.mark.parametrize("index", range({tests}))
def test_hold({fixture}index):
    time.sleep(HOLD)  # host-side, while the board is held
'''

_CONFTEST = '''"""Generated by benchmarks/bench_plugin.py: when the controller reaches each stage, in timeline.json."""

import json
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
'''


# --- helpers -----------------------------------------------------------------------


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def stats(values: Sequence[float]) -> Dict[str, Any]:
    """first / median / p90 / min / max (seconds) of ``values``."""
    return {
        "first_s": values[0],
        "median_s": statistics.median(values),
        "p90_s": p90(values),
        "min_s": min(values),
        "max_s": max(values),
        "repeats": len(values),
    }


def inventory_text(boards: int, proxied: int) -> str:
    """An inventory of ``boards`` boards of KEY, the last ``proxied`` of them behind the proxy."""
    lines = ["tracker: {host: 127.0.0.1, port: 0}"]
    if proxied:
        lines.append("proxy: {host: 127.0.0.1, port: 0}")
    lines += ["default_key: %s" % KEY, "boards:"]
    if boards - proxied:
        lines.append("  - {key: %s, count: %d}" % (KEY, boards - proxied))
    if proxied:
        lines.append("  - {key: %s, count: %d, proxy: true}" % (KEY, proxied))
    return "\n".join(lines) + "\n"


def other_plugins() -> List[str]:
    """The names of the installed pytest plugins (``pytest11`` entry points) other than remotedev and xdist."""
    points: Any = importlib.metadata.entry_points()
    group = points.select(group="pytest11") if hasattr(points, "select") else points.get("pytest11", [])
    return sorted({point.name for point in group if point.name not in _NEEDED_PLUGINS})


def children_cpu() -> float:
    """User + system CPU seconds of this process's reaped descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- (1) bundled farm ready time ---------------------------------------------------------


def measure_ready(repeats: int, workdir: str) -> Dict[str, Any]:
    """Start and stop the default inventory's farm ``repeats`` times; seconds to ready and to stopped."""
    inventory = load_inventory(DEFAULT_INVENTORY)
    ready: List[float] = []
    stopped: List[float] = []
    described: Dict[str, Any] = {}
    logger.info("(1) ready time: %d starts of %s", repeats, DEFAULT_INVENTORY)
    for repeat in range(repeats):
        stack = FarmStack(inventory, os.path.join(workdir, "ready-%02d" % repeat))
        gc.collect()
        try:
            start = time.perf_counter()
            stack.start()
            ready.append(time.perf_counter() - start)
            described = stack.describe()
        finally:
            start = time.perf_counter()
            stack.stop()  # after a failed start too (start() stopped it already; stopping again does nothing)
            stopped.append(time.perf_counter() - start)
    ready_stats, stop_stats = stats(ready), stats(stopped)
    return {
        "inventory": os.path.relpath(DEFAULT_INVENTORY, str(PROJECT)),
        "boards": len(described.get("boards", [])),
        "proxied_boards": sum(1 for board in described.get("boards", []) if board["proxy"]),
        "proxy": described.get("proxy") is not None,
        "ready": ready_stats,
        "stop": stop_stats,
        "ready_s": ready,
        "stop_s": stopped,
        "target_s": READY_TARGET,
        "target_kind": "<",
        "pass": ready_stats["median_s"] < READY_TARGET,
        "max_under_target": ready_stats["max_s"] < READY_TARGET,
    }


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


def measure_idle_session(seconds: float, workdir: str) -> Dict[str, Any]:
    """CPU share of each board's daemon (and session process) while its session is held and idle."""
    inventory = load_inventory(DEFAULT_INVENTORY)
    stack = FarmStack(inventory, os.path.join(workdir, "idle-session"))
    clients: List[TrackerClient] = []
    sessions: List[Any] = []
    try:
        stack.start()
        for _ in stack.boards:  # every board of the key, so that each holds a session
            client = TrackerClient(*stack.tracker_address)
            clients.append(client)
            sessions.append(client.request(inventory.default_key, session_timeout=60 + seconds, wait=DEADLINE))
        for session in sessions:
            session.ping()
        before = {board.name: process_cpu(board.process.pid) for board in stack.boards}
        start = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - start
        after = {board.name: process_cpu(board.process.pid) for board in stack.boards}
        for session in sessions:
            session.ping()  # still there
        boards = [
            {
                "name": board.name,
                "through_proxy": board.group.proxy,
                "cpu_s": after[board.name] - before[board.name],
                "cpu_share": (after[board.name] - before[board.name]) / elapsed,
            }
            for board in stack.boards
        ]
    finally:
        try:
            for closable in sessions + clients:
                try:
                    closable.close()
                except Exception:  # a lost session or tracker: the farm stops below anyway
                    logger.exception("could not close %r", closable)
        finally:
            stack.stop()
    logger.info("idle session: %s", ", ".join("%s %.0f%% CPU" % (b["name"], 100 * b["cpu_share"]) for b in boards))
    return {"seconds": elapsed, "boards": boards}


# --- (2) the synthetic suite ----------------------------------------------------------------


def junit_holds(path: str) -> Dict[str, Any]:
    """Outcome counts and the board holds each testcase of a junit XML file records."""
    root = ET.parse(path).getroot()
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    groups: List[Dict[str, str]] = []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        tags = {child.tag for child in case}
        if "failure" in tags:
            counts["failed"] += 1
        elif "error" in tags:
            counts["errors"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
        for prop in case.iter("property"):
            name = prop.get("name", "")
            if name == "device_key":  # each board held starts a group
                groups.append({})
            if name.startswith("device_") and groups:
                groups[-1][name] = prop.get("value", "")
    holds = [
        {
            "board": group.get("device_id", ""),
            "queue_wait": float(group["device_queue_wait"]),
            "held": float(group["device_held"]),
            "from": float(group["device_held_from"]),
            "until": float(group["device_held_until"]),
        }
        for group in groups
    ]
    return {"counts": counts, "holds": holds}


def handovers(holds: Sequence[Dict[str, Any]]) -> Tuple[List[float], int, float]:
    """Between consecutive holds of each board: the idle gaps; how many holds overlapped the one before; the worst.

    A gap is the time from one test's release of a board to the next test's session on it, as the board saw it.
    """
    by_board: Dict[str, List[Tuple[float, float]]] = {}
    for hold in holds:
        by_board.setdefault(hold["board"], []).append((hold["from"], hold["until"]))
    gaps: List[float] = []
    count, worst = 0, 0.0
    for spans in by_board.values():
        spans.sort()
        for (_, previous_end), (begin, _) in zip(spans, spans[1:]):
            gaps.append(begin - previous_end)
            worst = max(worst, previous_end - begin)
            if previous_end - begin > OVERLAP_TOLERANCE:
                count += 1
    return gaps, count, worst


def phases(path: str, began: float, ended: float) -> Optional[Dict[str, float]]:
    """Seconds of each of PHASES, from the controller's timeline and the run's start and exit (epoch)."""
    try:
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)
        configured = events["configured"][0]
        setup_begin, setup_end = events["setupnodes_begin"][0], events["setupnodes_end"][0]
        collected = max(events["node_collected"])
        first, last = min(events["report"]), max(events["report"])
        finished = events["sessionfinish_end"][-1]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return {
        "pytest_up": configured - began,
        "farm_start": setup_end - setup_begin,
        "workers_up": collected - setup_end + (setup_begin - configured),  # (xdist's own set-up before the hook)
        "to_first_test": first - collected,
        "tests": last - first,
        "workers_down": finished - last,
        "finish": ended - finished,
    }


def passed(run: Dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether the inner run exited 0 with every one of its tests passed."""
    return run["returncode"] == 0 and run["tests"] == args.tests and run["passed"] == args.tests


def run_suite(
    variant: str, label: str, args: argparse.Namespace, workdir: str, env: Dict[str, str], disabled: Sequence[str]
) -> Dict[str, Any]:
    """One inner pytest run of ``variant`` in a fresh directory; its wall time and what its junit XML says.

    ``disabled``: the plugins the ``_minimal`` variants turn off.
    """
    directory = os.path.join(workdir, "%s-%s" % (variant, label))
    os.makedirs(directory)
    hold = args.hold if variant in ("hold", "hold_minimal") else 0.0
    fixture = "" if variant.startswith("xdist_only") else "device, "
    with open(os.path.join(directory, "test_hold.py"), "w", encoding="utf-8") as handle:
        handle.write(_TEST_MODULE.format(tests=args.tests, hold=hold, fixture=fixture))
    with open(os.path.join(directory, "conftest.py"), "w", encoding="utf-8") as handle:
        handle.write(_CONFTEST)
    inventory = os.path.join(directory, "inventory.yaml")
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write(inventory_text(args.boards, args.proxied))
    junit = os.path.join(directory, "junit.xml")
    argv = [sys.executable, "-m", "pytest", "-n", str(args.workers)]
    argv += ["-p", "no:remotedev"] if variant.startswith("xdist_only") else ["--farm", inventory]
    if variant.endswith("_minimal"):
        for name in disabled:
            argv += ["-p", "no:" + name]
    argv += ["--junitxml", junit, "-p", "no:cacheprovider", "-q", "test_hold.py"]
    output_path = os.path.join(directory, "output.txt")
    with open(output_path, "wb") as output:
        gc.collect()
        cpu_before = children_cpu()
        began_epoch = time.time()
        began = time.perf_counter()
        process = subprocess.Popen(
            argv, cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT)
        except BaseException:  # a timeout or an interrupt: the whole group goes (the farm dies with pytest)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            raise
        finally:
            wall = time.perf_counter() - began
            ended_epoch = time.time()
            cpu = children_cpu() - cpu_before
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything of the run still in its group
        except ProcessLookupError:
            pass
    with open(output_path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    result: Dict[str, Any] = {"variant": variant, "run": label, "hold_s": hold, "wall_s": wall, "cpu_s": cpu}
    result.update({"returncode": returncode, "argv": argv[1:]})
    result["phases"] = phases(os.path.join(directory, "timeline.json"), began_epoch, ended_epoch)
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    holds: List[Dict[str, Any]] = []
    if os.path.exists(junit):
        parsed = junit_holds(junit)
        counts, holds = parsed["counts"], parsed["holds"]
    result.update(counts)
    result["holds"] = len(holds)
    if not passed(result, args):
        result["output_tail"] = text[-3000:]
    if holds:
        first = min(hold["from"] for hold in holds)
        last = max(hold["until"] for hold in holds)
        span = last - first
        busy = sum(hold["held"] for hold in holds)
        waits = [hold["queue_wait"] for hold in holds]
        gaps, count, worst = handovers(holds)
        result.update(
            {
                "boards_used": len({hold["board"] for hold in holds}),
                "hold_span_s": span,
                "busy_s": busy,
                "utilisation": busy / (args.boards * span) if span > 0 else None,
                "queue_wait_total_s": sum(waits),
                "queue_wait_max_s": max(waits),
                "lead_in_s": first - began_epoch,
                "tail_s": ended_epoch - last,
                "handover_gap_median_s": statistics.median(gaps) if gaps else None,
                "handover_gap_max_s": max(gaps) if gaps else None,
                "hold_overlaps": count,
                "worst_overlap_s": worst,
            }
        )
    return result


def summarise(runs: List[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Per-variant medians and the ratios against the ideal hold phase."""
    ideal = args.tests * args.hold / min(args.boards, args.workers)
    variants: Dict[str, Any] = {}
    fields = ("wall_s", "cpu_s", "hold_span_s", "utilisation", "queue_wait_total_s", "queue_wait_max_s")
    fields += ("lead_in_s", "tail_s", "handover_gap_median_s")
    for variant in VARIANTS:
        mine = [run for run in runs if run["variant"] == variant]
        if not mine:
            continue
        entry: Dict[str, Any] = {"runs": len(mine)}
        for name in fields:
            values = [run[name] for run in mine if run.get(name) is not None]
            if values:
                entry[name] = spread(values)
        timed = [run["phases"] for run in mine if run["phases"] is not None]
        if timed:
            entry["phases"] = {name: spread([phase[name] for phase in timed]) for name, _ in PHASES}
        variants[variant] = entry
    startup = variants["hold0"]["wall_s"]["median"]
    spans = variants["hold"].get("hold_span_s", {}).get("values", [])

    def judged(values: List[float]) -> Dict[str, Any]:
        value = statistics.median(values)
        return {"ratio": value, "values": values, "target": SUITE_TARGET, "target_kind": "<=",
                "pass": value <= SUITE_TARGET}  # fmt: skip

    def wall_difference(one: str, other: str) -> Optional[float]:
        if one not in variants or other not in variants:
            return None
        return variants[one]["wall_s"]["median"] - variants[other]["wall_s"]["median"]

    def wall_ratio(hold: str, baseline: str) -> Optional[Dict[str, Any]]:
        if hold not in variants or baseline not in variants:
            return None
        start = variants[baseline]["wall_s"]["median"]
        return judged([(wall - start) / ideal for wall in variants[hold]["wall_s"]["values"]])

    return {
        "ideal_hold_span_s": ideal,
        "startup_baseline_s": startup,
        "startup_baseline_without_other_plugins_s": (
            variants["hold0_minimal"]["wall_s"]["median"] if "hold0_minimal" in variants else None
        ),
        "startup_differences_s": {
            "plugin_and_farm": wall_difference("hold0", "xdist_only"),
            "plugin_and_farm_without_other_plugins": wall_difference("hold0_minimal", "xdist_only_minimal"),
            "other_plugins": wall_difference("hold0", "hold0_minimal"),
        },
        "variants": variants,
        "ratios": {
            "wall_minus_startup_over_ideal": wall_ratio("hold", "hold0"),
            "hold_span_over_ideal": judged([span / ideal for span in spans]) if spans else None,
            "wall_minus_startup_over_ideal_without_other_plugins": wall_ratio("hold_minimal", "hold0_minimal"),
        },
        "all_passed": all(passed(run, args) for run in runs),
        "hold_overlaps": sum(run.get("hold_overlaps", 0) for run in runs),
    }


def measure_suite(args: argparse.Namespace, workdir: str) -> Dict[str, Any]:
    env = inner_env()
    disabled = other_plugins()
    order = [variant for variant in VARIANTS if disabled or not variant.endswith("_minimal")]
    logger.info(
        "(2) suite: %d tests x %g s on %d boards (%d behind the proxy), -n %d; %d repeat(s) of %s",
        args.tests, args.hold, args.boards, args.proxied, args.workers, args.repeats, ", ".join(order),
    )  # fmt: skip
    warmups: List[Dict[str, Any]] = []
    runs: List[Dict[str, Any]] = []
    for warmup in range(args.warmup):
        run = run_suite("hold0", "warmup%d" % warmup, args, workdir, env, disabled)
        warmups.append(run)
        logger.info("  warm-up (hold0, not counted): wall %.2f s, %d/%d passed", run["wall_s"], run["passed"],
                    args.tests)  # fmt: skip
        if not passed(run, args):
            logger.error("warm-up: exit code %s; its output (end):\n%s", run["returncode"], run.get("output_tail", ""))
    for repeat in range(args.repeats):
        shift = repeat % len(order)  # rotate, so that no variant always runs first
        for variant in order[shift:] + order[:shift]:
            run = run_suite(variant, str(repeat), args, workdir, env, disabled)
            runs.append(run)
            logger.info(
                "  %-18s #%d: wall %.2f s, %d/%d passed, hold phase %s",
                variant, repeat, run["wall_s"], run["passed"], args.tests,
                "%.2f s" % run["hold_span_s"] if "hold_span_s" in run else "-",
            )  # fmt: skip
            if not passed(run, args):
                logger.error("%s #%d: exit code %s; its output (end):\n%s", variant, repeat, run["returncode"],
                             run.get("output_tail", ""))  # fmt: skip
    result = summarise(runs, args)
    result["all_passed"] = result["all_passed"] and all(passed(run, args) for run in warmups)
    result["other_plugins"] = disabled
    result["runs"] = runs
    result["warmup_runs"] = warmups
    return result


# --- the run ------------------------------------------------------------------------------------


def _cell(entry: Dict[str, Any], name: str, scale: float = 1.0, digits: int = 2) -> str:
    if name not in entry:
        return "-"
    row = entry[name]
    form = "%%.%df" % digits
    return (form + " (" + form + "-" + form + ")") % (row["median"] * scale, row["min"] * scale, row["max"] * scale)


def _idle_board(board: Dict[str, Any]) -> str:
    where = "behind the proxy" if board["through_proxy"] else "listening"
    return "%s (%s) %.0f%% of a core" % (board["name"], where, 100 * board["cpu_share"])


def _variant_labels(config: Dict[str, Any], suite: Dict[str, Any]) -> Dict[str, str]:
    others = ", ".join("`%s`" % name for name in suite["other_plugins"])
    return {
        "hold": "hold %g s" % config["hold_s"],
        "hold0": "hold 0 s (start-up)",
        "xdist_only": "no plugin, no device",
        "hold_minimal": "hold %g s, without %s" % (config["hold_s"], others),
        "hold0_minimal": "hold 0 s, without %s" % others,
        "xdist_only_minimal": "no plugin, no device, without %s" % others,
    }


def report(results: Dict[str, Any]) -> str:
    machine, config, ready, suite = results["machine"], results["config"], results["ready"], results["suite"]
    lines = [
        "",
        "## Pytest plugin",
        "",
        "machine: %s; pytest %s, pytest-xdist %s; PYTHONDONTWRITEBYTECODE %s; farm sources %s"
        % (
            machine_line(machine),
            machine["pytest"],
            machine["xdist"],
            "set" if machine["pythondontwritebytecode"] else "not set",
            machine["farm_sources_sha256"],
        ),
        "",
        "### (1) Bundled farm ready (%s: tracker, proxy, %d boards, %d behind the proxy), %d starts"
        % (ready["inventory"], ready["boards"], ready["proxied_boards"], ready["ready"]["repeats"]),
        "",
        "| seconds | first | median | p90 | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("ready", "`start()` to ready"), ("stop", "`stop()`")):
        row = ready[name]
        lines.append(
            "| %s | %.3f | %.3f | %.3f | %.3f | %.3f |"
            % (label, row["first_s"], row["median_s"], row["p90_s"], row["min_s"], row["max_s"])
        )
    lines += [
        "",
        "Target: ready in < %g s (median): %s; max %s."
        % (READY_TARGET, "PASS" if ready["pass"] else "MISS", "under it" if ready["max_under_target"] else "over it"),
        "",
        "CPU of each board's daemon while a session on it is held and idle for %.1f s: %s."
        % (ready["idle_session"]["seconds"], "; ".join(_idle_board(b) for b in ready["idle_session"]["boards"])),
        "",
        "### (2) %d tests x %g s hold, %d boards of one key (%d behind the proxy), `-n %d`, %d repeat(s)"
        % (
            config["tests"],
            config["hold_s"],
            config["boards"],
            config["proxied"],
            config["workers"],
            config["repeats"],
        ),  # fmt: skip
        "",
        "median (min-max) over the repeats, seconds unless said. CPU: user + system of the whole run; lead-in: "
        "process start to the first hold; tail: last release to exit; hand-over gap: a board's idle time between "
        "two holds (median of the run).",
        "",
        "| variant | wall | CPU | hold phase | utilisation % | queue wait total | queue wait max | lead-in | tail "
        "| hand-over gap, ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = _variant_labels(config, suite)
    for variant, label in labels.items():
        if variant not in suite["variants"]:
            continue
        entry = suite["variants"][variant]
        cells = [_cell(entry, "wall_s"), _cell(entry, "cpu_s", digits=1), _cell(entry, "hold_span_s")]
        cells += [_cell(entry, "utilisation", 100, 0), _cell(entry, "queue_wait_total_s", digits=1)]
        cells += [_cell(entry, "queue_wait_max_s"), _cell(entry, "lead_in_s"), _cell(entry, "tail_s")]
        cells.append(_cell(entry, "handover_gap_median_s", 1000, 1))
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
    differences = suite["startup_differences_s"]
    startup = "ideal hold phase %d x %g / %d = %.2f s; start-up baseline (median wall, hold 0 s): %.2f s" % (
        config["tests"],
        config["hold_s"],
        min(config["boards"], config["workers"]),
        suite["ideal_hold_span_s"],
        suite["startup_baseline_s"],
    )
    startup += "; of it, plugin and farm (hold 0 s minus no plugin): %.2f s" % differences["plugin_and_farm"]
    if differences["other_plugins"] is not None:
        startup += "; the other plugins (hold 0 s minus the same without them): %.2f s" % differences["other_plugins"]
        startup += (
            "; plugin and farm without the other plugins: %.2f s"
            % (differences["plugin_and_farm_without_other_plugins"])
        )
    lines += [
        "",
        startup + ".",
        "",
        "Where the wall time goes (median seconds; from the controller's hooks):",
        "",
        "| variant | %s |" % " | ".join(name for name, _ in PHASES),
        "|---|%s" % ("---|" * len(PHASES)),
    ]
    for variant, label in labels.items():
        entry = suite["variants"].get(variant, {})
        if "phases" in entry:
            cells = ["%.2f" % entry["phases"][name]["median"] for name, _ in PHASES]
            lines.append("| %s | %s |" % (label, " | ".join(cells)))
    lines += [""] + ["* %s: %s" % (name, text) for name, text in PHASES]
    lines += [
        "",
        "| ratio (median) | value | per repeat | target | |",
        "|---|---|---|---|---|",
    ]
    names = {
        "wall_minus_startup_over_ideal": "(wall - start-up) / ideal",
        "hold_span_over_ideal": "hold phase / ideal",
        "wall_minus_startup_over_ideal_without_other_plugins": "(wall - start-up) / ideal, without the other plugins",
    }
    for name, label in names.items():
        row = suite["ratios"][name]
        if row is not None:
            values = ", ".join("%.2f" % value for value in row["values"])
            verdict = "PASS" if row["pass"] else "MISS"
            lines.append(
                "| %s | %.2f | %s | %s %g | %s |"
                % (label, row["ratio"], values, row["target_kind"], row["target"], verdict)  # fmt: skip
            )
    load = results["load_average"]
    lines += [
        "",
        "every inner test passed: %s; holds of one board overlapping: %d"
        % ("yes" if suite["all_passed"] else "NO", suite["hold_overlaps"]),
        "",
        "load average (1, 5, 15 min) before: %s; after: %s"
        % (", ".join("%.2f" % v for v in load["before"]), ", ".join("%.2f" % v for v in load["after"])),
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    os.environ.update(child_env())  # the daemons FarmStack starts import this checkout's farm
    with tempfile.TemporaryDirectory(prefix="bench-plugin-") as workdir:
        ready = measure_ready(args.ready_repeats, workdir)
        ready["idle_session"] = measure_idle_session(args.idle_seconds, workdir)
        suite = measure_suite(args, workdir)
    return {
        "machine": machine_info(
            pytest=_version("pytest"),
            xdist=_version("xdist"),
            # set, pytest cannot cache its rewritten plugin modules: every process rewrites them again
            pythondontwritebytecode=bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        ),
        "config": {
            "quick": args.quick,
            "ready_repeats": args.ready_repeats,
            "idle_seconds": args.idle_seconds,
            "tests": args.tests,
            "hold_s": args.hold,
            "workers": args.workers,
            "boards": args.boards,
            "proxied": args.proxied,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "command": "python -m pytest -n %d --farm INV --junitxml X -p no:cacheprovider -q test_hold.py"
            % args.workers,
        },
        "ready": ready,
        "suite": suite,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "elapsed_s": time.monotonic() - started,
    }


def _version(module: str) -> Optional[str]:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ready-repeats", type=int, help="(1) starts of the default farm (default: 20; quick: 2)")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        help="(1) seconds a session is held idle to read the boards' CPU (default: 3; quick: 0.5)",
    )
    parser.add_argument("--tests", type=int, help="(2) tests in the suite (default: 24; quick: 8)")
    parser.add_argument("--hold", type=float, help="(2) seconds each test holds its board (default: 0.5; quick: 0.2)")
    parser.add_argument("--workers", type=int, help="(2) pytest-xdist workers, -n (default: 8; quick: 2)")
    parser.add_argument("--boards", type=int, default=4, help="(2) boards of the one key (default: 4)")
    parser.add_argument("--proxied", type=int, default=1, help="(2) of them behind the proxy (default: 1)")
    parser.add_argument("--repeats", type=int, help="(2) runs of each variant (default: 3; quick: 1)")
    parser.add_argument("--warmup", type=int, help="(2) untimed runs of hold0 before the rest (default: 1; quick: 0)")
    parser.add_argument("--quick", action="store_true", help="a short run, for the smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    defaults = dict(ready_repeats=20, idle_seconds=3.0, tests=24, hold=0.5, workers=8, repeats=3, warmup=1)
    quick = dict(ready_repeats=2, idle_seconds=0.5, tests=8, hold=0.2, workers=2, repeats=1, warmup=0)
    for name, value in (quick if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.ready_repeats, args.tests, args.workers, args.boards, args.repeats) < 1 or args.warmup < 0:
        parser.error("--ready-repeats, --tests, --workers, --boards and --repeats must be >= 1, --warmup >= 0")
    if args.hold <= 0 or args.idle_seconds <= 0:
        parser.error("--hold and --idle-seconds must be positive")
    if not 0 <= args.proxied <= args.boards:
        parser.error("--proxied must be between 0 and --boards")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that the farms and the inner runs are stopped on SIGTERM too
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(args)
    publish(results, report(results), args.json)
    if not results["suite"]["all_passed"]:
        logger.error("an inner test run did not pass every test (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
