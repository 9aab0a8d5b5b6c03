"""On-board timing: our time_evaluator against a plain C loop on the host and against TVM 0.27's time_evaluator.

Side by side in one run, each kernel and size taking turns between the sides in rotating order, ROUNDS rounds of
REPEAT repeats, NUMBER calls per repeat (the same for every side), one warm-up call:

* ``host``, the reference: ``benchmarks/host_loop.c``, built at run time with the host's C compiler, dlopens the
  library the board uses (``farm/ops/kernels/vadd.c``, ``examples/kernels/matmul.c`` and a no-op, built -O2 by
  ``farm.ops.toolchain.build_shared`` as ``build_for`` does) and times it with clock_gettime(CLOCK_MONOTONIC).
* ``ours``: the same library on the local board of a bundled farm, ``RemoteModule.time_evaluator``.
* ``tvm_rpc``: the same arithmetic built by TVM (te, target ``llvm``; the matrix product's loops in the order of
  ours: i, k, j), exported as a shared library and timed by TVM's time_evaluator through a TVM RPC server on
  127.0.0.1; ``tvm_local``: the same library loaded in this process; ``host_tvm``: the same library timed by the
  host loop (through TVM's C calling convention). TVM's timer against ``host_tvm`` is TVM's own accuracy;
  ``host_tvm`` against ``host`` is what the compilers make of the same loop, timed by one timer.
* ``host_O3_native``: our kernels built -O3 -march=native, timed by the host loop: the compiler's share alone.
* **instructions**: the float arithmetic of each library's kernel (objdump -d): packed against scalar.
* **noop**: a void function with no work, by the host loop and ours; our board's calibrated per-call overhead.
* **placement**: the host loop alone over vector add, with b and c shifted past page boundaries: how much the
  arrays' placement alone moves a scalar loop's figure.
* **cache_flush**: a vector add that fits in cache, and the no-op, one call per repeat, warm and with the cache
  flushed before each call: the host loop (a 64 MiB buffer copied over another), ours and TVM
  (``cache_flush_bytes``, and ``f_preproc="cache_flush_cpu_non_first_arg"``).

Vector add over 1K to 16M float32 (4 KiB to 64 MiB per array), matrix product 64, 256 and 512 square (float32).
Targets: ours within 10 % of the host loop at every size, a no-op at most 1 us (medians). A kernel computing a
wrong result on any side fails the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import harness
import numpy as np
from harness import Headline, Option, Scenario, Tool, spread, table
from timing_sides import SYMBOLS, Case, HostLoop, OurSide, Timer, TvmSide, instructions

from farm.ops.targets import host_target  # noqa: E402  (harness puts this checkout first on the path)
from farm.ops.toolchain import build_shared, toolchain_for  # noqa: E402

KERNELS = {"vadd": harness.PROJECT / "farm" / "ops" / "kernels" / "vadd.c",
           "matmul": harness.PROJECT / "examples" / "kernels" / "matmul.c"}  # fmt: skip
NOOP_SOURCE = "/* No work: what a call costs. */\nvoid noop(void)\n{\n}\n"
VADD_BUDGET = 1 << 24  # elements added per repeat: NUMBER = max(1, this / size)
MATMUL_BUDGET = 1 << 25  # multiply-adds per repeat
NOOP_NUMBER = 100_000
FLUSH_BYTES = 64 << 20  # more than the last-level cache of the machines measured
SHIFTS = (0, 64, 256, 1024, 2048, 3072)  # bytes past a page boundary of b (c: twice as many), for the placement
FLUSH_REPEATS = 4  # times --repeat, for the cache flush's single calls
FLUSH_CASE = Case("vadd", 16 << 10)  # 3 x 64 KiB: fits in L2
AGREEMENT = 0.10  # ours within this fraction of the host loop
NOOP_TARGET_US = 1.0
MIB = 1 << 20


def sizes(text: str) -> List[int]:
    """``1K,16K,4M`` -> [1024, 16384, 4194304]."""
    scale = {"K": 1 << 10, "M": 1 << 20}
    return [int(part[:-1]) * scale[part[-1]] if part[-1] in scale else int(part) for part in text.split(",") if part]


def number_for(case: Case) -> int:
    if case.kernel == "noop":
        return NOOP_NUMBER
    work = case.size if case.kernel == "vadd" else case.size**3
    return max(1, (VADD_BUDGET if case.kernel == "vadd" else MATMUL_BUDGET) // work)


def label(size: int) -> str:
    return "%dM" % (size >> 20) if size >= MIB and size % MIB == 0 else ("%dK" % (size >> 10) if size >= 1024
                                                                          else str(size))  # fmt: skip


# --- set-up ------------------------------------------------------------------------------------------------


class State:
    """The libraries (ours at -O2, and -O3 -march=native), the host loop, TVM's side and our board."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        source = Path(workdir, "noop.c")
        source.write_text(NOOP_SOURCE)
        sources = [KERNELS["vadd"], KERNELS["matmul"], source]
        toolchain, cache = toolchain_for(host_target()), os.path.join(workdir, "artifacts")
        self.library = build_shared(sources, toolchain, name="timing", cache_dir=cache)
        self.native = build_shared(sources, toolchain, name="timing", flags=["-O3", "-march=native"], cache_dir=cache)
        self.host = HostLoop(workdir)
        self.tvm: Optional[TvmSide] = None
        self.ours: Optional[OurSide] = None

    def timers(self, case: Case) -> Dict[str, Timer]:
        """Every side that can time ``case``."""
        symbol = SYMBOLS[case.kernel]
        timers = {"host": self.host.timer(self.library, symbol, "c", case),
                  "host_O3_native": self.host.timer(self.native, symbol, "c", case)}  # fmt: skip
        if self.ours is not None:
            timers["ours"] = self.ours.timer(case)
        if self.tvm is not None and case.kernel != "noop":
            timers["host_tvm"] = self.host.timer(self.tvm.library(case), "__tvm_ffi_" + case.kernel, "tvm-ffi", case)
            timers["tvm_local"] = self.tvm.timer(case, remote=False)
            timers["tvm_rpc"] = self.tvm.timer(case, remote=True)
        return timers


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    state = State(workdir)
    try:
        state.ours = OurSide(workdir, state.library)
        if args.tvm_rpc is not None:
            state.tvm = TvmSide(workdir)
        yield state
    finally:
        try:
            if state.tvm is not None:
                state.tvm.stop()
        finally:
            if state.ours is not None:
                state.ours.stop()


# --- measuring ---------------------------------------------------------------------------------------------


def side_by_side(entries: Dict[str, Tuple[Timer, int]], number: int, args: Any, repeat: int = 0) -> Dict[str, Any]:
    """Microseconds per call of each entry (a timer and its flush bytes), rounds of ``repeat`` (default:
    ``--repeat``) repeats taking turns; the outputs checked after."""
    seconds: Dict[str, List[float]] = {name: [] for name in entries}
    for round_number in range(args.rounds):
        for name in harness.rotated(list(entries), round_number):
            timer, flush_bytes = entries[name]
            seconds[name] += timer.time(number, repeat or args.repeat, flush_bytes)
    for timer, _ in entries.values():
        timer.check()
    return {name: spread(values, 1e6) for name, values in seconds.items()}


def noted(entries: Dict[str, Tuple[Timer, int]]) -> Dict[str, Any]:
    """What each entry's last timing said besides its figures (our board's overhead, noise and CPU)."""
    return {name: {key: value for key, value in timer.notes.items() if key != "state"}
            for name, (timer, _) in entries.items() if timer.notes}  # fmt: skip


def measure_kernels(state: State, args: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for kernel, kernel_sizes in (("vadd", args.vadd_sizes), ("matmul", args.matmul_sizes)):
        out[kernel] = {}
        for size in kernel_sizes:
            case = Case(kernel, size)
            number = number_for(case)
            entries = {name: (timer, 0) for name, timer in state.timers(case).items()}
            out[kernel][str(size)] = {"number": number, "repeat": args.repeat, "rounds": args.rounds,
                                      "bytes_per_array": 4 * int(np.prod(case.shape)),
                                      "us": side_by_side(entries, number, args), "notes": noted(entries)}  # fmt: skip
    return out


def measure_instructions(state: State, args: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for kernel, size in (("vadd", args.vadd_sizes[0]), ("matmul", args.matmul_sizes[0])):
        row = {"gcc_O2": instructions(state.library, SYMBOLS[kernel]),
               "gcc_O3_native": instructions(state.native, SYMBOLS[kernel])}  # fmt: skip
        if state.tvm is not None:
            row["tvm_llvm"] = instructions(state.tvm.library(Case(kernel, size)), kernel + "_compute_")
        out[kernel] = row
    return out


def measure_noop(state: State, args: Any) -> Dict[str, Any]:
    case = Case("noop", 1)
    entries = {"host": (state.host.timer(state.library, "noop", "c", case), 0)}
    if state.ours is not None:
        entries["ours"] = (state.ours.timer(case), 0)
    figures = {"number": NOOP_NUMBER, "us": side_by_side(entries, NOOP_NUMBER, args), "notes": noted(entries)}
    if state.ours is not None:
        notes = entries["ours"][0].notes
        figures.update(overhead_us=notes["overhead_us"], overhead_spread_us=notes["overhead_spread_us"],
                       board_state=notes["state"])  # fmt: skip
    return figures


def measure_cache_flush(state: State, args: Any) -> Dict[str, Any]:
    case = FLUSH_CASE
    timers = state.timers(case)
    noop = Case("noop", 1)  # what a flush costs the timing loop itself: a call that does nothing
    host_noop = state.host.timer(state.library, "noop", "c", noop)
    entries = {"host_warm": (timers["host"], 0), "host_flushed": (timers["host"], FLUSH_BYTES),
               "host_noop_warm": (host_noop, 0), "host_noop_flushed": (host_noop, FLUSH_BYTES)}  # fmt: skip
    if state.ours is not None:
        preproc, ours_noop = state.ours.timer(case, f_preproc="cache_flush_cpu_non_first_arg"), state.ours.timer(noop)
        entries.update({"ours_warm": (timers["ours"], 0), "ours_flushed": (timers["ours"], FLUSH_BYTES),
                        "ours_preproc": (preproc, 0), "ours_noop_warm": (ours_noop, 0),
                        "ours_noop_flushed": (ours_noop, FLUSH_BYTES)})  # fmt: skip
    if state.tvm is not None:
        preproc = state.tvm.timer(case, remote=True, f_preproc="cache_flush_cpu_non_first_arg")
        entries.update({"tvm_rpc_warm": (timers["tvm_rpc"], 0), "tvm_rpc_flushed": (timers["tvm_rpc"], FLUSH_BYTES),
                        "tvm_rpc_preproc": (preproc, 0)})  # fmt: skip
    repeat = FLUSH_REPEATS * args.repeat  # one call each: more of them
    return {"kernel": case.kernel, "size": case.size, "flush_bytes": FLUSH_BYTES, "number": 1, "repeat": repeat,
            "us": side_by_side(entries, 1, args, repeat), "notes": noted(entries)}  # fmt: skip


def measure_placement(state: State, args: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for size in args.placement_sizes:
        case = Case("vadd", size)
        entries = {str(shift): (state.host.timer(state.library, "vadd", "c", case, shift), 0) for shift in SHIFTS}
        out[str(size)] = {"number": number_for(case), "us": side_by_side(entries, number_for(case), args)}
    return out


# --- ratios and the report ------------------------------------------------------------------------------------


def ratio(figures: Dict[str, Any], top: str, bottom: str, statistic: str = "median") -> Optional[float]:
    if top in figures and bottom in figures:
        return float(figures[top][statistic] / figures[bottom][statistic])
    return None


def agreement(value: float) -> Dict[str, Any]:
    """A ratio judged against ``1 +- AGREEMENT``."""
    return {"ratio": value, "target": AGREEMENT, "target_kind": "|ratio - 1| <=", "pass": abs(value - 1) <= AGREEMENT}


#: Ours against the host loop over the same library: held to AGREEMENT.
JUDGED = (("ours", "host"),)
#: Reported: TVM's timer against the same loop over TVM's library, the compilers (by one timer), TVM against ours.
COMPARED = (("tvm_rpc", "host_tvm"), ("tvm_local", "host_tvm"), ("host_tvm", "host"), ("host_O3_native", "host"),
            ("tvm_rpc", "ours"))  # fmt: skip


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for kernel, rows in results["scenarios"].get("kernels", {}).items():
        for size, row in rows.items():
            for top, bottom in (*JUDGED, *COMPARED):
                value = ratio(row["us"], top, bottom)
                if value is not None:
                    judge = agreement if (top, bottom) in JUDGED else (lambda value: {"ratio": value})
                    out["%s_%s_%s_over_%s" % (kernel, size, top, bottom)] = judge(value)
    return out


def fmt(us: float) -> str:
    return "%.2f ms" % (us / 1e3) if us >= 1e3 else ("%.3g us" % us if us >= 1 else "%.3g ns" % (us * 1e3))


def worst(results: Dict[str, Any], kernel: str, top: str, bottom: str) -> Optional[Tuple[float, float, bool]]:
    """The lowest and highest of ``top / bottom`` over ``kernel``'s sizes, and whether every one met its target."""
    rows = [row for name, row in results["ratios"].items()
            if name.startswith(kernel + "_") and name.endswith("_%s_over_%s" % (top, bottom))]  # fmt: skip
    if not rows:
        return None
    values = [row["ratio"] for row in rows]
    return min(values), max(values), all(row.get("pass", True) for row in rows)


def headline(results: Dict[str, Any]) -> List[Headline]:
    rows = []
    noop = results["scenarios"].get("noop")
    if noop and "ours" in noop["us"]:
        median = noop["us"]["ours"]["median"]
        rows.append(Headline("no-op, timed on the board", fmt(median), limit="%s (host C loop)" %
                             fmt(noop["us"]["host"]["median"]), target="<= %g us" % NOOP_TARGET_US,
                             met=median <= NOOP_TARGET_US))  # fmt: skip
    for kernel, what in (("vadd", "vector add 4 KiB-64 MiB"), ("matmul", "matrix product")):
        for top, bottom, text in (("ours", "host", "ours / host C loop"),
                                  ("tvm_rpc", "host_tvm", "TVM's time_evaluator / host C loop, TVM's library"),
                                  ("host_tvm", "host", "TVM's library / ours, both by the host C loop")):  # fmt: skip
            found = worst(results, kernel, top, bottom)
            if found is not None:
                met = found[2] if (top, bottom) in JUDGED else None
                target = "within %d %%" % (100 * AGREEMENT) if met is not None else "-"
                rows.append(Headline("%s: %s" % (what, text), "-", ratio="%.2f-%.2f" % found[:2], target=target,
                                     met=met))  # fmt: skip
    row = results["scenarios"].get("kernels", {}).get("vadd", {}).get(str(4 << 20))
    if row:
        us = row["us"]
        rows.append(Headline("vector add, 4M float32", fmt(us["ours"]["median"]) if "ours" in us else "-",
                             anchor=fmt(us["tvm_rpc"]["median"]) if "tvm_rpc" in us else "-",
                             limit="%s (host C loop)" % fmt(us["host"]["median"])))  # fmt: skip
    return rows


SIDES = ("host", "ours", "tvm_rpc", "tvm_local", "host_tvm", "host_O3_native")


def report_kernels(figures: Dict[str, Any], args: Any) -> List[str]:
    lines = []
    for kernel, rows in figures.items():
        present = [side for side in SIDES if any(side in row["us"] for row in rows.values())]
        header = ["size", "MiB per array", "number", *present, "ours / host", "the same, of the minimums",
                  "tvm_rpc / host_tvm", "host_tvm / host"]  # fmt: skip
        cells = []
        for size, row in rows.items():
            us = row["us"]
            found = [ratio(us, top, bottom, statistic) for top, bottom, statistic in (
                ("ours", "host", "median"), ("ours", "host", "min"), ("tvm_rpc", "host_tvm", "median"),
                ("host_tvm", "host", "median"))]  # fmt: skip
            cells.append([label(int(size)), "%g" % (row["bytes_per_array"] / MIB), row["number"],
                          *[harness.mmm(us.get(side), 1.0, 3) for side in present],
                          *["-" if value is None else "%.2f" % value for value in found]])  # fmt: skip
        title = "vector add (float32)" if kernel == "vadd" else "matrix product (float32, square)"
        lines += ["### %s, us per call: median (min-max)" % title, ""] + table(header, cells) + [""]
    return lines


def report_instructions(figures: Dict[str, Any], args: Any) -> List[str]:
    cells = [(kernel, library, row["function"], row["packed_float"], row["scalar_float"], row["widest_register"],
              row["instructions"]) for kernel, libraries in figures.items()
             for library, row in libraries.items() if row]  # fmt: skip
    header = (
        "kernel",
        "library",
        "function",
        "packed float ops",
        "scalar float ops",
        "widest register",
        "instructions",
    )
    return ["### Instructions of each kernel (objdump -d)", ""] + table(header, cells) + [""]


def spread_table(sides: Dict[str, Any]) -> List[str]:
    """Median, min and max per call of each side."""
    cells = [(side, fmt(row["median"]), fmt(row["min"]), fmt(row["max"])) for side, row in sides.items()]
    return table(("side", "median", "min", "max"), cells)


def report_noop(figures: Dict[str, Any], args: Any) -> List[str]:
    lines = ["### No-op, %d calls per repeat" % figures["number"], ""] + spread_table(figures["us"])
    if figures.get("overhead_us") is not None:
        lines += ["", "per-call overhead our board subtracted: %s (interquartile range of its calibration: %s)"
                  % (fmt(figures["overhead_us"]), fmt(figures["overhead_spread_us"]))]  # fmt: skip
    return lines + [""]


def report_placement(figures: Dict[str, Any], args: Any) -> List[str]:
    shifts = list(next(iter(figures.values()))["us"]) if figures else []
    cells = []
    for size, row in figures.items():
        medians = [row["us"][shift]["median"] for shift in shifts]
        cells.append([label(int(size)), *[fmt(value) for value in medians], "%.2f" % (max(medians) / min(medians))])
    header = ["size", *["shift %s B" % shift for shift in shifts], "slowest / fastest"]
    title = "### Placement: the host loop over vector add with b and c shifted past page boundaries, median per call"
    return [title, ""] + table(header, cells) + [""]


def report_cache_flush(figures: Dict[str, Any], args: Any) -> List[str]:
    title = "### Cache flush: %s of %s float32, one call per repeat, %d MiB flushed" % (
        figures["kernel"],
        label(figures["size"]),
        figures["flush_bytes"] // MIB,
    )
    return [title, ""] + spread_table(figures["us"]) + [""]


TOOL = Tool(
    name="bench_timing",
    description=__doc__.split("\n\n")[0],
    rounds=Option(11, 1, "rounds, taking turns between the sides"),
    options={
        "repeat": Option(2, 3, "repeats per side and round"),
        "vadd_sizes": Option(sizes("1K,16K,256K,1M,4M,16M"), sizes("16K,1M"), "vector add sizes (elements)", sizes),
        "matmul_sizes": Option([64, 256, 512], [64], "matrix product sizes (side)", sizes),
        "placement_sizes": Option(sizes("16K,256K,1M"), sizes("16K"), "vector add sizes of the placement", sizes),
    },
    setup=setup,
    scenarios=[
        Scenario("noop", measure_noop, report_noop, limit="host C loop", target="<= %g us" % NOOP_TARGET_US),
        Scenario(
            "kernels",
            measure_kernels,
            report_kernels,
            anchor="TVM 0.27 time_evaluator over RPC",
            limit="host C loop over the same library",
            target="within %d %%" % (100 * AGREEMENT),
        ),
        Scenario("instructions", measure_instructions, report_instructions),
        Scenario("placement", measure_placement, report_placement),
        Scenario("cache_flush", measure_cache_flush, report_cache_flush),
    ],  # fmt: skip
    ratios=ratios,
    headline=headline,
    machine_extra=lambda: {"numpy": np.__version__, "compiler": toolchain_for(host_target()).version()},
    tvm=True,
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
