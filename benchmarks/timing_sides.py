"""The sides bench_timing.py measures: the host C loop, our board, TVM's time_evaluator; a library's instructions.

Each side's ``timer(case, ...)`` prepares one :class:`Case` (a kernel at one size) and returns a :class:`Timer`,
whose ``time(number, repeat, flush_bytes)`` gives the seconds of each repeat (the mean of ``number`` calls) and
whose ``check()`` raises if the kernel's output is wrong.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import harness  # noqa: F401  (puts this checkout first on the path)
import numpy as np

from farm.client.tracker import TrackerClient  # noqa: E402
from farm.ops.inventory import BUILTIN_INVENTORIES, load_inventory  # noqa: E402
from farm.ops.launcher import FarmStack  # noqa: E402
from farm.ops.toolchain import default_compiler  # noqa: E402

HOST = "127.0.0.1"
HOST_LOOP = Path(__file__).resolve().parent / "host_loop.c"
Seconds = List[float]


@dataclass(frozen=True)
class Case:
    """A kernel (``vadd``, ``matmul`` or ``noop``) at one size: elements, or the side of a square matrix."""

    kernel: str
    size: int

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self.size, self.size) if self.kernel == "matmul" else (self.size,)

    def inputs(self) -> Tuple[np.ndarray, np.ndarray]:
        """``a`` and ``b`` as the host loop fills them (small exact values, no denormals)."""
        index = np.arange(int(np.prod(self.shape)), dtype=np.int64)
        a = ((index % 97) * 0.25).astype(np.float32).reshape(self.shape)
        b = ((index % 89) * 0.5).astype(np.float32).reshape(self.shape)
        return a, b

    def expected(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b if self.kernel == "matmul" else a + b


def check_output(case: Case, a: np.ndarray, b: np.ndarray, c: np.ndarray, side: str) -> None:
    """Raise unless ``c`` is what the kernel should have computed from ``a`` and ``b``."""
    if case.kernel == "noop":
        return
    if not np.allclose(c, case.expected(a, b), rtol=1e-4, atol=1e-3):
        raise RuntimeError("%s: %s of size %d computed a wrong result" % (side, case.kernel, case.size))


@dataclass
class Timer:
    """Times a prepared kernel: ``time(number, repeat, flush_bytes)`` -> seconds per repeat; ``check()``;
    ``notes``: what the last timing said besides its figures (our board's overhead, noise, CPU)."""

    time: Callable[[int, int, int], Seconds]
    check: Callable[[], None] = lambda: None
    notes: Dict[str, Any] = field(default_factory=dict)


# --- the host C loop --------------------------------------------------------------------------------


class HostLoop:
    """``host_loop.c`` built with the host's C compiler, timing a library's function in a fresh process."""

    def __init__(self, workdir: str) -> None:
        self.binary = os.path.join(workdir, "host_loop")
        command = [*default_compiler().split(), "-O2", "-rdynamic", "-o", self.binary, str(HOST_LOOP), "-ldl", "-lm"]
        subprocess.run(command, check=True, timeout=120, capture_output=True)

    def timer(self, library: str, symbol: str, abi: str, case: Case, shift: int = -1) -> Timer:
        """``shift``: place b and c that many bytes (and twice as many) past page boundaries; -1: as the board."""

        def time(number: int, repeat: int, flush_bytes: int) -> Seconds:
            argv = [self.binary, library, symbol, abi, case.kernel, str(case.size), str(number), str(repeat)]
            done = subprocess.run(argv + [str(flush_bytes), str(shift)], capture_output=True, text=True, timeout=300)
            if done.returncode or "check ok" not in done.stdout.splitlines():
                raise RuntimeError("host loop on %s: exit %d: %s" % (symbol, done.returncode, done.stderr.strip()))
            return [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("repeat ")]

        return Timer(time)  # the loop checks the result itself


# --- ours ------------------------------------------------------------------------------------------------

SYMBOLS = {"noop": "noop", "vadd": "vadd", "matmul": "matmul_f32"}
SIGNATURES = {
    "noop": "void noop(void)",
    "vadd": "void vadd(const float *a, const float *b, float *c, int64_t n)",
    "matmul": "void matmul_f32(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n)",
}


class OurSide:
    """The library on a local board of the bundled farm (the plugin's default farm), timed by time_evaluator."""

    def __init__(self, workdir: str, library: str) -> None:
        inventory = load_inventory(BUILTIN_INVENTORIES["local"])
        self.stack = FarmStack(inventory, os.path.join(workdir, "farm"))
        self.client: Optional[TrackerClient] = None
        self.session: Any = None
        try:
            self.stack.start()
            self.client = TrackerClient(*self.stack.tracker_address)
            self.session = self.client.request(inventory.default_key, session_timeout=3600, wait=60)
            self.module = self.session.load_module(self.session.upload(library))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            for closable in (self.session, self.client):
                if closable is not None:
                    closable.close()
        finally:
            self.stack.stop()

    def timer(self, case: Case, f_preproc: str = "") -> Timer:
        a, b = case.inputs()
        arrays = [self.session.array(array) for array in (a, b, np.zeros_like(a))] if case.kernel != "noop" else []
        args = [*arrays, *{"noop": [], "vadd": [case.size], "matmul": [case.size] * 3}[case.kernel]]
        name = SYMBOLS[case.kernel]

        def time(number: int, repeat: int, flush_bytes: int) -> Seconds:
            # ping() sends the releases of arrays dropped since the last request: a timing request refuses them
            self.session.ping()
            evaluator = self.module.time_evaluator(name, number=number, repeat=repeat, cache_flush_bytes=flush_bytes,
                                                   f_preproc=f_preproc, signature=SIGNATURES[case.kernel])  # fmt: skip
            result = evaluator(*args)
            timer.notes.update(overhead_us=result.overhead_s * 1e6, overhead_spread_us=result.overhead_spread_s * 1e6,
                               noise=list(result.noise), cpu=result.cpu, method=result.method,
                               state=result.state)  # fmt: skip
            return list(result.results)

        def check() -> None:
            if arrays:
                check_output(case, a, b, arrays[2].numpy(), "our board")

        timer = Timer(time, check)
        return timer


# --- TVM ------------------------------------------------------------------------------------------------


class TvmSide:
    """TVM 0.27: kernels built with te (target llvm) and exported; its time_evaluator here and over RPC."""

    def __init__(self, workdir: str) -> None:
        import tvm

        self.tvm, self.workdir = tvm, workdir
        self.libraries: Dict[Case, str] = {}
        self.modules: Dict[Tuple[Case, bool], Any] = {}
        from tvm import rpc

        self.server = rpc.Server(host=HOST, port=9190, port_end=9390)  # its own process, on a free port of these
        try:
            self.remote = rpc.connect(HOST, self.server.port, session_timeout=0)
        except BaseException:
            self.server.terminate()
            raise

    def stop(self) -> None:
        self.remote = None
        self.modules.clear()
        self.server.terminate()

    def library(self, case: Case) -> str:
        """The exported library of ``case`` (function ``vadd`` or ``matmul``), built once."""
        if case not in self.libraries:
            path = os.path.join(self.workdir, "tvm-%s-%d.so" % (case.kernel, case.size))
            self.tvm.compile(self._prim_func(case), target="llvm").export_library(path)
            self.libraries[case] = path
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

    def _prim_func(self, case: Case) -> Any:
        from tvm import s_tir, te

        shape = case.shape
        a, b = te.placeholder(shape, name="a"), te.placeholder(shape, name="b")
        if case.kernel == "vadd":
            c = te.compute(shape, lambda i: a[i] + b[i], name="c")
            return te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")
        k = te.reduce_axis((0, case.size), name="k")
        c = te.compute(shape, lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
        schedule = s_tir.Schedule(te.create_prim_func([a, b, c]).with_attr("global_symbol", "matmul"))
        _, j, k_loop = schedule.get_loops(schedule.get_sblock("c"))
        schedule.reorder(k_loop, j)  # the loop order of examples/kernels/matmul.c: i, k, j
        return schedule.mod

    def timer(self, case: Case, remote: bool, f_preproc: str = "") -> Timer:
        """TVM's time_evaluator of ``case``'s library, through the RPC server or in this process."""
        module, device = self.module(case, remote), self.remote.cpu() if remote else self.tvm.cpu()
        a, b = case.inputs()
        tensors = [self.tvm.runtime.tensor(array, device) for array in (a, b, np.zeros_like(a))]

        def time(number: int, repeat: int, flush_bytes: int) -> Seconds:
            evaluator = module.time_evaluator(case.kernel, device, number=number, repeat=repeat,
                                              cache_flush_bytes=flush_bytes, f_preproc=f_preproc)  # fmt: skip
            return list(evaluator(*tensors).results)

        return Timer(time, lambda: check_output(case, a, b, tensors[2].numpy(), "TVM"))


# --- instructions ----------------------------------------------------------------------------------------

_PACKED = re.compile(r"^v?(add|sub|mul|div|fn?m(add|sub)\d*)ps\b")
_SCALAR = re.compile(r"^v?(add|sub|mul|div|fn?m(add|sub)\d*)ss\b")


def instructions(library: str, function: str) -> Optional[Dict[str, Any]]:
    """The float arithmetic of ``function`` in ``library`` (objdump -d): packed and scalar instructions, and the
    widest vector register it uses; None without objdump or the function."""
    try:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], capture_output=True, text=True,
                              timeout=60, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"<%s>:\n(.*?)(?:\n\n|\Z)" % re.escape(function), text, re.DOTALL)
    if match is None:
        return None
    body = [line.split("\t", 1)[1].strip() for line in match.group(1).splitlines() if "\t" in line]
    widest = next((name for name in ("zmm", "ymm", "xmm") if any("%" + name in line for line in body)), "none")
    return {"function": function, "instructions": len(body), "packed_float": sum(bool(_PACKED.match(line))
            for line in body), "scalar_float": sum(bool(_SCALAR.match(line)) for line in body),
            "widest_register": widest}  # fmt: skip
