"""On-board timing: our time_evaluator against a plain C loop on the host and against TVM 0.27's time_evaluator.

Side by side in one run, each kernel and size taking turns between the sides in rotating order, ROUNDS rounds of
REPEAT repeats of NUMBER calls (the same for every side) after one warm-up call: ``host`` (``host_loop.c`` over the
library the board uses; the reference), ``host_O3_native`` (the same kernels built -O3 -march=native), ``ours``
(that library on a local board of the bundled farm), ``tvm_rpc`` and ``tvm_local`` (the same arithmetic built by
TVM and timed by TVM's time_evaluator through its RPC server, and in this process) and ``host_tvm`` (TVM's library
timed by the host loop). Scenarios: the kernels (vector add, matrix product), a no-op, and a cache flush (warm
against flushed); BENCHMARKS.md ("On-board timing") says what each measures. Targets: ours within 10 % of the host
loop at every size, a no-op at most 1 us (medians). A kernel computing a wrong result on any side fails the run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import harness
import numpy as np
from harness import Headline, Option, Scenario, Tool, figures_report, spread, table

from farm.client.tracker import TrackerClient  # noqa: E402  (harness puts this checkout first on the path)
from farm.ops.inventory import BUILTIN_INVENTORIES, load_inventory  # noqa: E402
from farm.ops.launcher import FarmStack  # noqa: E402
from farm.ops.targets import host_target  # noqa: E402
from farm.ops.toolchain import build_shared, default_compiler, toolchain_for  # noqa: E402

KERNELS = [harness.PROJECT / "farm/ops/kernels/vadd.c", harness.PROJECT / "examples/kernels/matmul.c"]
HOST_LOOP = Path(__file__).resolve().parent / "host_loop.c"
SYMBOLS = {"noop": "noop", "vadd": "vadd", "matmul": "matmul_f32"}
SIGNATURES = {
    "noop": "void noop(void)",
    "vadd": "void vadd(const float *a, const float *b, float *c, int64_t n)",
    "matmul": "void matmul_f32(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n)",
}
BUDGET = {"vadd": 1 << 24, "matmul": 1 << 25}  # elements added, multiply-adds per repeat: NUMBER = this / work
NOOP_NUMBER = 100_000
FLUSH_BYTES = 64 << 20  # more than the last-level cache of the machines measured
FLUSH_REPEATS = 4  # times --repeat, for the cache flush's single calls
AGREEMENT = 0.10  # ours within this fraction of the host loop
NOOP_TARGET_US = 1.0
MIB = 1 << 20
Seconds = List[float]


def sizes(text: str) -> List[int]:
    """``1K,16K,4M`` -> [1024, 16384, 4194304]."""
    scale = {"K": 1 << 10, "M": 1 << 20}
    return [int(part[:-1]) * scale[part[-1]] if part[-1] in scale else int(part) for part in text.split(",") if part]


def label(size: int) -> str:
    return "%dM" % (size >> 20) if size >= MIB and size % MIB == 0 else ("%dK" % (size >> 10) if size >= 1024
                                                                          else str(size))  # fmt: skip


@dataclass(frozen=True)
class Case:
    """A kernel (``vadd``, ``matmul`` or ``noop``) at one size: elements, or the side of a square matrix."""

    kernel: str
    size: int

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self.size, self.size) if self.kernel == "matmul" else (self.size,)

    @property
    def number(self) -> int:
        if self.kernel == "noop":
            return NOOP_NUMBER
        return max(1, BUDGET[self.kernel] // (self.size if self.kernel == "vadd" else self.size**3))

    def inputs(self) -> Tuple[np.ndarray, np.ndarray]:
        """``a`` and ``b`` as the host loop fills them (small exact values, no denormals)."""
        index = np.arange(int(np.prod(self.shape)), dtype=np.int64).reshape(self.shape)
        return ((index % 97) * 0.25).astype(np.float32), ((index % 89) * 0.5).astype(np.float32)

    def check(self, a: np.ndarray, b: np.ndarray, c: np.ndarray, side: str) -> None:
        """Raise unless ``c`` is what the kernel should have computed from ``a`` and ``b``."""
        if not np.allclose(c, a @ b if self.kernel == "matmul" else a + b, rtol=1e-4, atol=1e-3):
            raise RuntimeError("%s: %s of size %d computed a wrong result" % (side, self.kernel, self.size))


@dataclass
class Timer:
    """``time(number, repeat, flush_bytes)`` -> seconds per call of each repeat; ``check()`` raises on a wrong
    output; ``notes``: what the last timing said besides its figures (our board's overhead, noise, CPU)."""

    time: Callable[[int, int, int], Seconds]
    check: Callable[[], None] = lambda: None
    notes: Dict[str, Any] = field(default_factory=dict)


# --- the sides ---------------------------------------------------------------------------------------------


class TvmSide:
    """TVM 0.27: kernels built with te (target llvm) and exported; its time_evaluator here and over RPC."""

    def __init__(self, workdir: str) -> None:
        import tvm
        from tvm import rpc

        self.tvm, self.workdir = tvm, workdir
        self.libraries: Dict[Case, str] = {}
        self.modules: Dict[Tuple[Case, bool], Any] = {}
        self.server = rpc.Server(host="127.0.0.1", port=9190, port_end=9390)  # its own process, on a free port
        try:
            self.remote = rpc.connect("127.0.0.1", self.server.port, session_timeout=0)
        except BaseException:
            self.server.terminate()
            raise

    def stop(self) -> None:
        self.remote = None
        self.modules.clear()
        self.server.terminate()

    def library(self, case: Case) -> str:
        """The exported library of ``case`` (function ``vadd`` or ``matmul``), built once."""
        from tvm import s_tir, te

        if case not in self.libraries:
            a, b = te.placeholder(case.shape, name="a"), te.placeholder(case.shape, name="b")
            if case.kernel == "vadd":
                c = te.compute(case.shape, lambda i: a[i] + b[i], name="c")
                function = te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")
            else:
                k = te.reduce_axis((0, case.size), name="k")
                c = te.compute(case.shape, lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
                schedule = s_tir.Schedule(te.create_prim_func([a, b, c]).with_attr("global_symbol", "matmul"))
                _, j, k_loop = schedule.get_loops(schedule.get_sblock("c"))
                schedule.reorder(k_loop, j)  # the loop order of examples/kernels/matmul.c: i, k, j
                function = schedule.mod
            self.libraries[case] = os.path.join(self.workdir, "tvm-%s-%d.so" % (case.kernel, case.size))
            self.tvm.compile(function, target="llvm").export_library(self.libraries[case])
        return self.libraries[case]

    def module(self, case: Case, remote: bool) -> Any:
        """``case``'s library loaded by the RPC server or here, once (TVM's server may crash on a second load)."""
        if (case, remote) not in self.modules:
            path = self.library(case)
            if remote:
                self.remote.upload(path)
                self.modules[case, remote] = self.remote.load_module(os.path.basename(path))
            else:
                self.modules[case, remote] = self.tvm.runtime.load_module(path)
        return self.modules[case, remote]

    def timer(self, case: Case, remote: bool, f_preproc: str = "") -> Timer:
        """TVM's time_evaluator of ``case``'s library, through the RPC server or in this process."""
        module, device = self.module(case, remote), self.remote.cpu() if remote else self.tvm.cpu()
        a, b = case.inputs()
        tensors = [self.tvm.runtime.tensor(array, device) for array in (a, b, np.zeros_like(a))]

        def time(number: int, repeat: int, flush_bytes: int) -> Seconds:
            evaluator = module.time_evaluator(case.kernel, device, number=number, repeat=repeat,
                                              cache_flush_bytes=flush_bytes, f_preproc=f_preproc)  # fmt: skip
            return list(evaluator(*tensors).results)

        return Timer(time, lambda: case.check(a, b, tensors[2].numpy(), "TVM"))


class State:
    """The libraries (ours at -O2, and -O3 -march=native), the host loop, our board (a local board of the bundled
    farm, the plugin's default) with the library loaded, and TVM's side."""

    def __init__(self, workdir: str) -> None:
        Path(workdir, "noop.c").write_text("/* No work: what a call costs. */\nvoid noop(void)\n{\n}\n")
        sources, toolchain = [*KERNELS, Path(workdir, "noop.c")], toolchain_for(host_target())
        cache = os.path.join(workdir, "artifacts")
        self.library = build_shared(sources, toolchain, name="timing", cache_dir=cache)
        self.native = build_shared(sources, toolchain, name="timing", flags=["-O3", "-march=native"], cache_dir=cache)
        self.host_loop = os.path.join(workdir, "host_loop")
        command = [*default_compiler().split(), "-O2", "-rdynamic", "-o", self.host_loop, str(HOST_LOOP)]
        subprocess.run([*command, "-ldl", "-lm"], check=True, timeout=120, capture_output=True)
        self.inventory = load_inventory(BUILTIN_INVENTORIES["local"])
        self.stack = FarmStack(self.inventory, os.path.join(workdir, "farm"))
        self.client: Optional[TrackerClient] = None
        self.session: Any = None
        self.tvm: Optional[TvmSide] = None

    def start(self, workdir: str, tvm: bool) -> None:
        self.stack.start()
        self.client = TrackerClient(*self.stack.tracker_address)
        self.session = self.client.request(self.inventory.default_key, session_timeout=3600, wait=60)
        self.module = self.session.load_module(self.session.upload(self.library))
        self.tvm = TvmSide(workdir) if tvm else None

    def stop(self) -> None:
        try:
            if self.tvm is not None:
                self.tvm.stop()
            for closable in (self.session, self.client):
                if closable is not None:
                    closable.close()
        finally:
            self.stack.stop()

    def host(self, library: str, symbol: str, abi: str, case: Case) -> Timer:
        """The host loop over ``library``'s ``symbol`` in a fresh process; it checks the result itself."""

        def time(number: int, repeat: int, flush_bytes: int) -> Seconds:
            argv = [self.host_loop, library, symbol, abi, case.kernel, case.size, number, repeat, flush_bytes]
            done = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, timeout=300)
            if done.returncode or "check ok" not in done.stdout.splitlines():
                raise RuntimeError("host loop on %s: exit %d: %s" % (symbol, done.returncode, done.stderr.strip()))
            return [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("repeat ")]

        return Timer(time)

    def ours(self, case: Case, f_preproc: str = "") -> Timer:
        """Our board's time_evaluator, and what each timing said besides its figures (overhead, noise, CPU)."""
        a, b = case.inputs()
        arrays = [self.session.array(array) for array in (a, b, np.zeros_like(a))] if case.kernel != "noop" else []
        args = [*arrays, *{"noop": [], "vadd": [case.size], "matmul": [case.size] * 3}[case.kernel]]

        def time(number: int, repeat: int, flush_bytes: int) -> Seconds:
            # ping() sends the releases of arrays dropped since the last request: a timing request refuses them
            self.session.ping()
            evaluator = self.module.time_evaluator(SYMBOLS[case.kernel], number=number, repeat=repeat,
                                                   cache_flush_bytes=flush_bytes, f_preproc=f_preproc,
                                                   signature=SIGNATURES[case.kernel])  # fmt: skip
            result = evaluator(*args)
            timer.notes.update(overhead_us=result.overhead_s * 1e6, overhead_spread_us=result.overhead_spread_s * 1e6,
                               noise=list(result.noise), cpu=result.cpu, method=result.method,
                               state=result.state)  # fmt: skip
            return list(result.results)

        timer = Timer(time, lambda: case.check(a, b, arrays[2].numpy(), "our board") if arrays else None)
        return timer

    def timers(self, case: Case) -> Dict[str, Timer]:
        """Every side that can time ``case``."""
        symbol = SYMBOLS[case.kernel]
        timers = {"host": self.host(self.library, symbol, "c", case), "ours": self.ours(case),
                  "host_O3_native": self.host(self.native, symbol, "c", case)}  # fmt: skip
        if self.tvm is not None and case.kernel != "noop":
            timers["host_tvm"] = self.host(self.tvm.library(case), "__tvm_ffi_" + case.kernel, "tvm-ffi", case)
            timers["tvm_local"] = self.tvm.timer(case, remote=False)
            timers["tvm_rpc"] = self.tvm.timer(case, remote=True)
        return timers


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    state = State(workdir)
    try:
        state.start(workdir, args.tvm_rpc is not None)
        yield state
    finally:
        state.stop()


# --- measuring ---------------------------------------------------------------------------------------------


def side_by_side(entries: Dict[str, Tuple[Timer, int]], number: int, repeat: int, args: Any) -> Dict[str, Any]:
    """Microseconds per call of each entry (a timer and its flush bytes), in rounds taking turns, checked after;
    and what each timer's last timing said besides its figures."""
    seconds: Dict[str, List[float]] = {name: [] for name in entries}
    for round_number in range(args.rounds):
        for name in harness.rotated(list(entries), round_number):
            timer, flush_bytes = entries[name]
            seconds[name] += timer.time(number, repeat, flush_bytes)
    for timer, _ in entries.values():
        timer.check()
    notes = {name: {key: value for key, value in timer.notes.items() if key != "state"}
             for name, (timer, _) in entries.items() if timer.notes}  # fmt: skip
    return {"number": number, "repeat": repeat, "rounds": args.rounds, "notes": notes,
            "us": {name: spread(values, 1e6) for name, values in seconds.items()}}  # fmt: skip


def measure_kernels(state: State, args: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"vadd": {}, "matmul": {}}
    for kernel, kernel_sizes in (("vadd", args.vadd_sizes), ("matmul", args.matmul_sizes)):
        for size in kernel_sizes:
            case = Case(kernel, size)
            entries = {name: (timer, 0) for name, timer in state.timers(case).items()}
            out[kernel][str(size)] = dict(side_by_side(entries, case.number, args.repeat, args),
                                          bytes_per_array=4 * int(np.prod(case.shape)))  # fmt: skip
    return out


def measure_noop(state: State, args: Any) -> Dict[str, Any]:
    case = Case("noop", 1)
    entries = {"host": (state.host(state.library, "noop", "c", case), 0), "ours": (state.ours(case), 0)}
    figures = side_by_side(entries, case.number, args.repeat, args)
    notes = entries["ours"][0].notes
    return dict(figures, overhead_us=notes["overhead_us"], overhead_spread_us=notes["overhead_spread_us"],
                board_state=notes["state"])  # fmt: skip


def measure_cache_flush(state: State, args: Any) -> Dict[str, Any]:
    """A 16K vector add (3 x 64 KiB: in L2) and a no-op (what a flush costs the timing loop itself), warm and flushed,
    and with the arguments flushed by ``f_preproc`` instead."""
    case, noop, preproc = Case("vadd", 16 << 10), Case("noop", 1), "cache_flush_cpu_non_first_arg"
    timers = state.timers(case)
    sides = {"host": timers["host"], "host_noop": state.host(state.library, "noop", "c", noop), "ours": timers["ours"],
             "ours_noop": state.ours(noop), **({"tvm_rpc": timers["tvm_rpc"]} if state.tvm else {})}  # fmt: skip
    entries = {"ours_preproc": (state.ours(case, preproc), 0)}
    if state.tvm is not None:
        entries["tvm_rpc_preproc"] = (state.tvm.timer(case, remote=True, f_preproc=preproc), 0)
    for name, timer in sides.items():
        entries.update({name + "_warm": (timer, 0), name + "_flushed": (timer, FLUSH_BYTES)})
    figures = side_by_side(entries, 1, FLUSH_REPEATS * args.repeat, args)  # one call each: more of them
    return dict(figures, kernel=case.kernel, size=case.size, flush_bytes=FLUSH_BYTES)


# --- ratios and the report ------------------------------------------------------------------------------------


def ratio(figures: Dict[str, Any], top: str, bottom: str, statistic: str = "median") -> Optional[float]:
    if top in figures and bottom in figures:
        return float(figures[top][statistic] / figures[bottom][statistic])
    return None


#: Ours against the host loop over the same library: held to AGREEMENT. Reported besides: TVM's timer against the
#: same loop over TVM's library, the compilers (by one timer), TVM against ours.
JUDGED = ("ours", "host")
COMPARED = (JUDGED, ("tvm_rpc", "host_tvm"), ("tvm_local", "host_tvm"), ("host_tvm", "host"),
            ("host_O3_native", "host"), ("tvm_rpc", "ours"))  # fmt: skip


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for kernel, rows in results["scenarios"].get("kernels", {}).items():
        for size, row in rows.items():
            for top, bottom in COMPARED:
                value = ratio(row["us"], top, bottom)
                name = "%s_%s_%s_over_%s" % (kernel, size, top, bottom)
                if value is not None and (top, bottom) == JUDGED:
                    out[name] = {"ratio": value, "target": AGREEMENT, "target_kind": "|ratio - 1| <=",
                                 "pass": abs(value - 1) <= AGREEMENT}  # fmt: skip
                elif value is not None:
                    out[name] = {"ratio": value}
    return out


def fmt(us: float) -> str:
    return "%.2f ms" % (us / 1e3) if us >= 1e3 else ("%.3g us" % us if us >= 1 else "%.3g ns" % (us * 1e3))


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
            ending = "_%s_over_%s" % (top, bottom)
            found = [row for name, row in results["ratios"].items() if name.startswith(kernel + "_") and
                     name.endswith(ending)]  # fmt: skip
            if found:
                values, met = [row["ratio"] for row in found], [row["pass"] for row in found if "pass" in row]
                rows.append(Headline("%s: %s" % (what, text), "-", ratio="%.2f-%.2f" % (min(values), max(values)),
                                     target="within %d %%" % (100 * AGREEMENT) if met else "-",
                                     met=all(met) if met else None))  # fmt: skip
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


def spread_us(row: Dict[str, Any]) -> str:
    return "%s (%s-%s)" % tuple(fmt(row[name]) for name in ("median", "min", "max"))


NOOP_TITLE = "### No-op, %(number)d calls per repeat; our board subtracted %(overhead_us).3g us a call"
FLUSH_TITLE = "### Cache flush: %(kernel)s of %(size)d float32, one call per repeat, %(flush_bytes)d bytes flushed"

# fmt: off
TOOL = Tool(
    name="bench_timing",
    description=__doc__.split("\n\n")[0],
    rounds=Option(11, 1, "rounds, taking turns between the sides"),
    options={
        "repeat": Option(2, 3, "repeats per side and round"),
        "vadd_sizes": Option(sizes("1K,16K,256K,1M,4M,16M"), sizes("16K,1M"), "vector add sizes (elements)", sizes),
        "matmul_sizes": Option([64, 256, 512], [64], "matrix product sizes (side)", sizes),
    },
    setup=setup,
    scenarios=[
        Scenario("noop", measure_noop, figures_report(NOOP_TITLE, "side", "median (min-max) per call", "repeats",
                 key="us", form=spread_us), limit="host C loop", target="<= %g us" % NOOP_TARGET_US),
        Scenario("kernels", measure_kernels, report_kernels, anchor="TVM 0.27 time_evaluator over RPC",
                 limit="host C loop over the same library", target="within %d %%" % (100 * AGREEMENT)),
        Scenario("cache_flush", measure_cache_flush, figures_report(FLUSH_TITLE, "side", "median (min-max) per call",
                 "repeats", key="us", form=spread_us)),
    ],
    ratios=ratios,
    headline=headline,
    machine_extra=lambda: {"numpy": np.__version__, "compiler": toolchain_for(host_target()).version()},
    tvm=True,
)
# fmt: on

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
