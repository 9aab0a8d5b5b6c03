"""What every benchmark and reliability tool shares: flags, machine report, pinning, spread, tables, JSON, TVM.

A tool describes its measurements as :class:`Scenario` objects and hands them to :func:`main`, which parses the
common flags (``--quick``, ``--json``, ``--rounds``, ``--pin``/``--cpus``, ``--log-level``, ``--tvm``/``--no-tvm``)
and the tool's own (:class:`Option`), sets up logging, SIGTERM and pinning, runs the scenarios in one temporary
directory, prints a markdown report that opens with the tool's headline rows, and writes the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import logging
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))  # measure this checkout's farm, installed or not

import farm  # noqa: E402

logger = logging.getLogger("benchmarks")
_CPUS = sorted(os.sched_getaffinity(0))  # as started, before any pinning

Figures = Dict[str, Any]


@dataclass(frozen=True)
class Option:
    """A tool's own flag: its default, its value under ``--quick`` and its help."""

    default: Any
    quick: Any = None
    help: str = ""
    type: Callable[[str], Any] = int


@dataclass(frozen=True)
class Headline:
    """One row of a headline table: ours, the anchor (TVM) and the physical limit, the ratio and the target."""

    figure: str
    ours: str
    anchor: str = "-"
    limit: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: Optional[bool] = None


@dataclass
class Scenario:
    """One measurement: ``measure(state, args)`` returns its figures; ``report(figures, args)`` its markdown lines.

    ``state`` is what the tool's ``setup`` yields (its boards, trackers, sessions), shared by its scenarios.
    ``anchor``, ``limit`` and ``target`` say in words what the figures are compared with.
    """

    name: str
    measure: Callable[[Any, argparse.Namespace], Figures]
    report: Callable[[Figures, argparse.Namespace], List[str]] = lambda figures, args: []
    anchor: str = ""
    limit: str = ""
    target: str = ""
    enabled: Callable[[argparse.Namespace], bool] = lambda args: True


@dataclass
class Tool:
    """A benchmark or reliability tool: its scenarios, its set-up, its headline and its verdict."""

    name: str
    description: str
    scenarios: Sequence[Scenario]
    options: Dict[str, Option] = field(default_factory=dict)
    rounds: Optional[Option] = field(default_factory=lambda: Option(5, 1, "timed rounds of each scenario"))
    setup: Optional[Callable[[argparse.Namespace, str], Any]] = None  # a context manager yielding the state
    ratios: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda results: {}  # derived from the scenarios' figures
    headline: Callable[[Dict[str, Any]], List[Headline]] = lambda results: []
    passed: Callable[[Dict[str, Any]], bool] = lambda results: True
    check_args: Callable[[argparse.Namespace], Optional[str]] = lambda args: None
    machine_extra: Callable[[], Dict[str, Any]] = dict
    tvm: bool = False  # whether the tool has a TVM side (then --tvm/--no-tvm)
    pin: str = "same"  # the default of --pin: tools that run suites or farms leave placement to the scheduler


# --- measuring --------------------------------------------------------------------------------------


def timed(action: Callable[[], Any]) -> float:
    """Seconds ``action()`` took; what it returns is dropped after the clock stops."""
    began = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - began
    del result
    return elapsed


def rotated(items: Sequence[Any], shift: int) -> List[Any]:
    """``items`` starting at ``shift`` (modulo their number), so that no item always goes first."""
    return [items[(shift + index) % len(items)] for index in range(len(items))]


def interleaved(
    actions: Dict[str, Callable[[], Any]], rounds: int, before: Optional[Callable[[str], Any]] = None
) -> Dict[str, List[float]]:
    """Seconds each action took in each round, in rotating order; ``before(name)`` runs untimed ahead of each."""
    seconds: Dict[str, List[float]] = {name: [] for name in actions}
    for number in range(rounds):
        for name in rotated(list(actions), number):
            gc.collect()
            if before is not None:
                before(name)
            seconds[name].append(timed(actions[name]))
    return seconds


def spread(values: Sequence[float], scale: float = 1.0) -> Dict[str, Any]:
    """First, mean, median, p90, p99, min, max, the number of rounds and the values (each times ``scale``)."""
    scaled = [value * scale for value in values]
    ordered, count = sorted(scaled), len(scaled)
    p90, p99 = (ordered[min(count - 1, int(fraction * count))] for fraction in (0.9, 0.99))
    return {"first": scaled[0], "mean": statistics.fmean(scaled), "median": statistics.median(scaled), "p90": p90,
            "p99": p99, "min": ordered[0], "max": ordered[-1], "rounds": count, "values": scaled}  # fmt: skip


def ratio_spread(tops: Sequence[Optional[float]], bottoms: Sequence[Optional[float]]) -> Optional[Dict[str, Any]]:
    """The spread of the pairwise ratios, leaving out pairs with a None or a denominator <= 0."""
    values = [top / bottom for top, bottom in zip(tops, bottoms) if top is not None and (bottom or 0) > 0]
    return spread(values) if values else None


def judged(value: float, target: float, kind: str) -> Dict[str, Any]:
    """A ratio against its target (``kind``: ``>=`` or ``<=``)."""
    met = value >= target if kind == ">=" else value <= target
    return {"ratio": value, "target": target, "target_kind": kind, "pass": met}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.001) -> Any:
    """Poll ``condition`` until it returns something true; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise RuntimeError("timed out after %g s waiting until %s" % (timeout, what))
        time.sleep(interval)


def _kb_fields(path: str) -> Dict[str, int]:
    """The ``Name:  123 kB`` lines of a /proc file, as numbers of kB."""
    sizes = {}
    with open(path, encoding="ascii", errors="replace") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if value.strip().endswith(" kB"):
                sizes[name] = int(value.split()[0])
    return sizes


def proc_status(pid: int) -> Dict[str, int]:
    """The sizes (kB) of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ...) of a live process."""
    return _kb_fields("/proc/%d/status" % pid)


def private_kb(pid: int) -> Dict[str, int]:
    """``Pss`` and the private (``Private_Clean`` + ``Private_Dirty``) kB of a process, from ``smaps_rollup``."""
    fields = _kb_fields("/proc/%d/smaps_rollup" % pid)
    return {"pss": fields["Pss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a live process has used so far (``/proc/PID/stat``)."""
    with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


# --- the machine -----------------------------------------------------------------------------------


def _first_line(path: str, prefix: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.partition(":")[2].strip() if prefix else line.strip()
    except OSError:
        pass
    return ""


def machine_info(**extra: Any) -> Dict[str, Any]:
    """Cores, CPU model, governor, load, Python and kernel (and ``extra``); nothing that names this machine."""
    info = {
        "cores": os.cpu_count() or 0,
        "cpu_model": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "governor": _first_line("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or "n/a",
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "farm": farm.__version__,
        "farm_sources_sha256": farm_fingerprint(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    info.update(extra)
    return info


def machine_line(machine: Dict[str, Any]) -> str:
    """The machine of :func:`machine_info` in one line of a report."""
    return "%d cores, %s, governor %s, load %.2f, %s %s, kernel %s, farm sources %s, %s" % (
        machine["cores"], machine["cpu_model"], machine["governor"], machine["load_average"][0],
        machine["python_implementation"], machine["python"], machine["kernel"], machine["farm_sources_sha256"],
        machine["date"],
    )  # fmt: skip


def farm_fingerprint(root: Optional[Any] = None) -> str:
    """A short hash of a farm package's sources (default: the one imported), to tell which code a result is of."""
    root = Path(root or Path(farm.__file__).resolve().parent)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def pin(args: argparse.Namespace) -> Tuple[Optional[set], Optional[set]]:
    """Pin this process (children inherit it) as ``--pin``/``--cpus`` say; the CPUs for the far side, if split."""
    cpus = sorted(args.cpus or _CPUS)
    if args.pin == "none":
        os.sched_setaffinity(0, cpus)
        return None, None
    if args.pin == "split" and len(cpus) < 2:
        raise SystemExit("--pin split needs two CPUs; this process may use only %s" % cpus)
    os.sched_setaffinity(0, {cpus[0]})
    return {cpus[0]}, ({cpus[1]} if args.pin == "split" else None)


def port_range(host: str, span: int = 200) -> Tuple[int, int]:
    """A port the system calls free now and the end of a range after it (TVM's daemons take no port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return port, min(port + span, 65536)


def load_tvm(wanted: bool) -> Tuple[Any, str]:
    """``tvm.rpc`` and TVM's version if the ``tvm`` extra imports, else None and why the TVM side is left out."""
    if not wanted:
        return None, "--no-tvm was given"
    try:
        import tvm
        from tvm import rpc
    except Exception as exc:  # ImportError, or a broken install failing in its own way
        return None, "import tvm failed: %s: %s" % (type(exc).__name__, exc)
    return rpc, str(getattr(tvm, "__version__", "?"))


# --- children ----------------------------------------------------------------------------------------


def child_env(checkout: Optional[Path] = None) -> Dict[str, str]:
    """The environment for child Pythons (boards, trackers): ``checkout``'s (default: this one's) farm first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout or PROJECT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


_INNER_ENV_DROP = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_CURRENT_TEST", "TVM_TRACKER_HOST", "TVM_TRACKER_PORT")


def inner_env() -> Dict[str, str]:
    """An inner pytest's environment: this checkout first on the path, nothing pointing it at another farm
    (``REMOTEDEV_CACHE`` stays: it says where the emulators and artifacts are, not which farm to use)."""
    env = child_env()
    for name in list(env):
        dropped = name.startswith(("REMOTEDEV_", "PYTEST_XDIST_")) and name != "REMOTEDEV_CACHE"
        if name in _INNER_ENV_DROP or dropped:
            del env[name]
    return env


def tls_files(directory: str) -> Any:
    """A CA and the farm's certificate and key in ``directory``, made with the test suite's helper
    (``tests/farm_certs.py``, which needs ``pip install -e .[test]``)."""
    tests = str(PROJECT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from farm_certs import make_tls_files

    return make_tls_files(Path(directory))


def publish(results: Dict[str, Any], text: str, json_path: Optional[str]) -> None:
    """Print a report and write the results to ``json_path`` when given."""
    sys.stdout.write(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
            handle.write("\n")
        logger.info("wrote %s", json_path)


# --- reporting -----------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A markdown table."""
    lines = ["| %s |" % " | ".join(header), "|%s" % ("---|" * len(header))]
    return lines + ["| %s |" % " | ".join(str(cell) for cell in row) for row in rows]


def mmm(row: Optional[Dict[str, Any]], scale: float = 1.0, digits: int = 2) -> str:
    """A spread as ``median (min-max)``, scaled; ``-`` for None."""
    if row is None:
        return "-"
    form = "%%.%df" % digits
    between = " to " if row["min"] < 0 else "-"
    return (form + " (" + form + between + form + ")") % tuple(row[name] * scale for name in ("median", "min", "max"))


def figures_report(title: str, *header: str, key: str = "", form: Callable[[Dict[str, Any]], str] = mmm) -> Callable:
    """A scenario's report as one table of its figures (or of ``figures[key]``), a row each: a number as it is, a
    spread as ``form(spread)`` (``median (min-max)``) and its rounds, a dict of spreads a cell each. ``title`` may
    name flags and figures: ``%(size_mib)g``."""

    def report(figures: Figures, args: argparse.Namespace) -> List[str]:
        rows = []
        for name, value in (figures[key] if key else figures).items():
            cells = list(value.values()) if isinstance(value, dict) and "median" not in value else [value]
            rounds = [cells[0]["rounds"]] if isinstance(cells[0], dict) else []
            rows.append([name, *(form(cell) if isinstance(cell, dict) else cell for cell in cells), *rounds])
        return [title % dict(vars(args), **figures), ""] + table(header, rows) + [""]

    return report


def verdict(met: Optional[bool]) -> str:
    return "" if met is None else ("met" if met else "MISSED")


def command_line() -> str:
    """How this run was started, as a reader would type it."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), str(PROJECT))
    return " ".join(["python", script, *sys.argv[1:]])


def report(tool: Tool, results: Dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown report: the headline, then each scenario's section."""
    lines = ["", "## %s" % tool.description, "", "machine: " + machine_line(results["machine"])]
    if tool.tvm:
        lines.append("TVM: %s" % (results["machine"]["tvm"] or "not measured (%s)" % results["tvm_skipped"]))
    lines += ["command: `%s`" % results["command"], ""]
    rows = [(r.figure, r.ours, r.anchor, r.limit, r.ratio, r.target, verdict(r.met)) for r in tool.headline(results)]
    if rows:
        lines += table(("figure", "ours", "anchor", "limit", "ratio", "target", ""), rows) + [""]
    for scenario in tool.scenarios:
        if scenario.name in results["scenarios"]:
            lines += scenario.report(results["scenarios"][scenario.name], args)
    lines += ["", "%s in %.0f s; every check passed: %s" % (tool.name, results["elapsed_s"],
                                                             "yes" if results["passed"] else "NO")]  # fmt: skip
    return "\n".join(lines) + "\n"


# --- the run ---------------------------------------------------------------------------------------------


def parse_args(tool: Tool, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The common flags and the tool's own, with their defaults (or ``--quick`` values) filled in."""
    parser = argparse.ArgumentParser(description=tool.description)
    options = dict(tool.options, **({"rounds": tool.rounds} if tool.rounds else {}))
    for name, option in options.items():
        quick = option.default if option.quick is None else option.quick
        flag = "--" + name.replace("_", "-")
        if option.type is bool:
            parser.add_argument(flag, action="store_true", default=None, help=option.help)
            continue
        text = "%s (default: %s; quick: %s)" % (option.help, option.default, quick)
        parser.add_argument(flag, type=option.type, help=text)
    parser.add_argument("--quick", action="store_true", help="a short run, for the smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--pin", choices=["same", "split", "none"], default=tool.pin,
                        help="CPU placement: same (the tool and the processes it starts share one CPU), split (the "
                        "far side on a second CPU), none (left to the scheduler); default: %s" % tool.pin)  # fmt: skip
    parser.add_argument("--cpus", type=lambda text: {int(cpu) for cpu in text.split(",")}, help="CPUs to pin to")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    names = [scenario.name for scenario in tool.scenarios]
    parser.add_argument("--only", type=lambda text: text.split(","), default=names,
                        help="run only these scenarios, comma-separated: %s" % ",".join(names))  # fmt: skip
    if tool.tvm:
        parser.add_argument("--tvm", action="store_true", default=True,
                            help="measure TVM side by side when the tvm extra imports (the default)")  # fmt: skip
        parser.add_argument("--no-tvm", dest="tvm", action="store_false", help="measure our side only")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]  # after --: passed through to the daemons the tool starts
    for name, option in options.items():
        if getattr(args, name) is None:
            setattr(args, name, option.quick if args.quick and option.quick is not None else option.default)
    problem = tool.check_args(args) or (None if getattr(args, "rounds", 1) >= 1 else "--rounds must be >= 1")
    unknown = set(args.only) - set(names)
    problem = problem or ("unknown scenario(s): %s" % ", ".join(sorted(unknown)) if unknown else None)
    if problem:
        parser.error(problem)
    return args


def run(tool: Tool, args: argparse.Namespace) -> Dict[str, Any]:
    """Every enabled scenario in one temporary directory, with the tool's set-up around them."""
    began = time.monotonic()
    tvm_rpc, text = load_tvm(getattr(args, "tvm", False)) if tool.tvm else (None, "")
    args.tvm_rpc = tvm_rpc
    if tool.tvm and tvm_rpc is None:
        logger.warning("the TVM side is left out: %s", text)
    scenarios: Dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="%s-" % tool.name) as workdir:
        setup = tool.setup(args, workdir) if tool.setup else contextlib.nullcontext(workdir)
        with setup as state:
            for scenario in tool.scenarios:
                if scenario.name in args.only and scenario.enabled(args):
                    logger.info("%s: %s", tool.name, scenario.name)
                    scenarios[scenario.name] = scenario.measure(state, args)
    config = {name: value for name, value in vars(args).items() if name not in ("tvm_rpc", "json", "log_level")}
    machine = machine_info(**tool.machine_extra(), **({"tvm": text if tvm_rpc else None} if tool.tvm else {}))
    compared = {sc.name: {"anchor": sc.anchor, "limit": sc.limit, "target": sc.target} for sc in tool.scenarios}
    results = {"tool": tool.name, "command": command_line(), "machine": machine, "config": config,
               "compared_with": {name: compared[name] for name in scenarios},
               "tvm_skipped": "" if tvm_rpc else text, "scenarios": scenarios}  # fmt: skip
    results["elapsed_s"] = time.monotonic() - began
    results["ratios"] = tool.ratios(results)
    results["passed"] = tool.passed(results)
    results["headline"] = [vars(row) for row in tool.headline(results)]
    return results


def main(tool: Tool, argv: Optional[Sequence[str]] = None) -> int:
    """Parse, run, print the report, write the JSON; 0, or 1 when a check of the run failed."""
    args = parse_args(tool, argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # on SIGTERM too, the tool unwinds, so that its finally blocks stop every process it started
    signal.signal(signal.SIGTERM, lambda number, _frame: sys.exit(128 + number))
    args.cpus_far = pin(args)[1]
    results = run(tool, args)
    publish(results, report(tool, results, args), args.json)
    if not results["passed"]:
        logger.error("%s: a check failed (see the report)", tool.name)
    return 0 if results["passed"] else 1
