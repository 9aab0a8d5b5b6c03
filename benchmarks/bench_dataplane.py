"""Data plane: sessions, calls and transfers on boards, against a raw socket, with TLS, and against older code.

Boards on loopback, side by side in one run, interleaved in rotating order so that noise hits all alike:

* ``farm``: a board of this checkout; ``tls`` (``--tls``): the same with TLS (certificates made for the run);
  ``before`` (``--before DIR``): a board of the checkout in DIR (older code; the client is this checkout's, the
  protocol is the same); ``--emulated ARCH``: each checkout's packed server under qemu-user too (sessions only).
* ``native`` (``--native``): the native board server (C) of this checkout, built for this machine, with the
  calls of ``farm`` (but the call without a signature and the bare ping).
* **footprint**: each board daemon's resident memory while idle, its processes together (the Python board's
  daemon, spawner and watchdog; the native board's one process), the native daemon's binary size, and the time
  each board took to start (to its ``bind to`` line; with ``--emulated ARCH --native`` the native server built for
  ARCH under qemu-user too).
* **sessions**: ``connect()`` to the first ``ping()`` answered (open), and to the end of ``close()`` (open+close).
* **calls**: the round trip of ``int noop(void)`` with a signature (and, on ``farm``, without one, a bare
  ``ping()``, ``vadd`` of three arrays of one element, and calls of eight scalars and of eight arrays), against an
  8-byte ping-pong over a raw TCP socket between two processes (the limit) and TVM 0.27's call of its own ``vadd``
  of three arrays of one element on a TVM RPC server (unless ``--no-tvm``).
* **transfers**: upload (``session.array(x)``) and download (``remote.numpy()``) of a float32 array, against
  ``sendall``/``recv_into`` of as many bytes between preallocated buffers (the limit); ``copyfrom`` for reference.

MB/s is 10**6 bytes per second. By default every process shares one CPU (``--pin same``): left to the scheduler,
one pair may share a CPU while another is split over two, and on virtual machines a wakeup across CPUs can cost
more than the whole round trip.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import harness
import numpy as np
from harness import Headline, Option, Scenario, Tool, interleaved, judged, spread, table
from timing_sides import Case, TvmSide

import farm  # noqa: E402  (harness puts this checkout first on the path)
from farm.net.tls import TlsConfig  # noqa: E402
from farm.ops.processes import DaemonProcess, board_command  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

HOST = "127.0.0.1"
KEY = "bench"
#: The calls' library: a no-op, TVM's measure of a call (``vadd`` of three arrays of one element), and the cost
#: per argument (eight scalars, eight arrays).
CALLS_SOURCE = """#include <stdint.h>
int noop(void) { return 0; }
void vadd(const float *a, const float *b, float *c, int64_t n) { for (int64_t i = 0; i < n; i++) c[i] = a[i] + b[i]; }
int64_t scalars8(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, int64_t f, int64_t g, int64_t h)
{ return a + b + c + d + e + f + g + h; }
int arrays8(float *a, float *b, float *c, float *d, float *e, float *f, float *g, float *h)
{ return a != b && c != d && e != f && g != h; }
"""
NOOP_SIGNATURE = "int noop(void)"
#: The calls each side's session makes besides the no-op: signature and the arguments' kinds (a: an array).
CALLS = {
    "vadd_n1": ("void vadd(const float *a, const float *b, float *c, int64_t n)", "aaa1"),
    "scalars8": ("int64_t scalars8(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, int64_t f, int64_t g, "
                 "int64_t h)", "12345678"),
    "arrays8": ("int arrays8(float *a, float *b, float *c, float *d, float *e, float *f, float *g, float *h)",
                "aaaaaaaa"),
}  # fmt: skip
MB = 1e6
THROUGHPUT_TARGET = 0.7  # farm throughput at least this fraction of the raw socket's ...
CALL_TARGET = 1.5  # ... and a no-op call at most this multiple of the raw ping-pong
_COMMAND = struct.Struct("<cQ")  # to the raw peer: one byte, then a count (ping-pongs) or a byte length
_PING = 8


# --- the raw socket peer (a separate process) --------------------------------------------------------


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False if the peer closed before the first byte."""
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if not count:
            if got:
                raise ConnectionError("connection closed mid-message")
            return False
        got += count
    return True


def _raw_peer(port: int, nbytes: int) -> None:
    """The far end of the raw socket: answers ping-pongs, receives and sends bulk data."""
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytearray(b"\x01") * max(nbytes, 1))  # touched now, so no page faults later
    command, ping = bytearray(_COMMAND.size), bytearray(_PING)
    with sock:
        while _recv_exact(sock, memoryview(command)):
            op, count = _COMMAND.unpack(command)
            if op == b"P":
                for _ in range(count):
                    _recv_exact(sock, memoryview(ping))
                    sock.sendall(ping)
            elif op == b"U":
                _recv_exact(sock, view[:count])
                sock.sendall(b"k")
            elif op == b"D":
                sock.sendall(view[:count])
            else:
                return


class RawPeer:
    """The host end of the raw socket, connected to a :func:`_raw_peer` process."""

    def __init__(self, nbytes: int) -> None:
        self.view = memoryview(bytearray(b"\x01") * max(nbytes, 1))
        listener = socket.create_server((HOST, 0))
        listener.settimeout(60)
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_raw_peer, args=(listener.getsockname()[1], nbytes), daemon=True)
        self.process.start()
        with listener:
            self.sock, _ = listener.accept()
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(_COMMAND.pack(b"Q", 0))
        self.sock.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def ping_pong(self, count: int) -> None:
        self.sock.sendall(_COMMAND.pack(b"P", count))
        pong = memoryview(bytearray(_PING))
        for _ in range(count):
            self.sock.sendall(b"p" * _PING)
            _recv_exact(self.sock, pong)

    def upload(self, data: memoryview) -> None:
        self.sock.sendall(_COMMAND.pack(b"U", len(data)))
        self.sock.sendall(data)
        if not _recv_exact(self.sock, memoryview(bytearray(1))):
            raise ConnectionError("raw peer closed the connection")

    def download(self, nbytes: int) -> memoryview:
        self.sock.sendall(_COMMAND.pack(b"D", nbytes))
        if not _recv_exact(self.sock, self.view[:nbytes]):
            raise ConnectionError("raw peer closed the connection")
        return self.view[:nbytes]


# --- boards ------------------------------------------------------------------------------------------


def board_env(checkout: Optional[str], tls_env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """A board's environment: ``checkout`` alone on its path (None: nothing, for a packed server)."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    if checkout is not None:
        env["PYTHONPATH"] = checkout
    return dict(env, **(tls_env or {}))


def pack(checkout: str, output: str) -> str:
    """``checkout``'s packed server, made by that checkout's own code (farm.ops.pack, or farm.pack before it)."""
    code = "import sys\ntry:\n from farm.ops.pack import pack_server\nexcept ImportError:\n"
    code += " from farm.pack import pack_server\npack_server(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, output], env=board_env(checkout), check=True, timeout=300)
    return output


class Side:
    """A board, how to reach it, and, once :meth:`open` ran, a session with a loaded no-op."""

    def __init__(self, name: str, server: List[str], env: Dict[str, str], workdir: str, tls: TlsConfig) -> None:
        self.name, self.tls = name, tls
        argv = board_command(KEY, HOST, 0, extra=["--name", name], server=server)
        self.board = DaemonProcess(argv, os.path.join(workdir, name + ".log"), env, cwd=workdir)
        self.session: Any = None
        self.noop: Any = None
        self.noop_plain: Any = None
        self.calls: Dict[str, Any] = {}  # name: (function, arguments)
        began = time.perf_counter()
        try:
            self.board.wait_for_bind(timeout=120)
        except BaseException:
            self.board.stop()
            raise
        self.start_s = time.perf_counter() - began  # to its "bind to" line (the log is read every 20 ms)

    def connect(self) -> farm.RemoteSession:
        host, port = self.board.address  # type: ignore[misc]
        return farm.connect(host, port, key=KEY, tls=self.tls, connect_timeout=60)

    def open_and_close(self, count: int) -> List[Tuple[float, float]]:
        """Seconds to the first answer, and to the end of close(), of ``count`` sessions in a row."""
        times = []
        for _ in range(count):
            began = time.perf_counter()
            session = self.connect()
            session.ping()
            answered = time.perf_counter() - began
            session.close()
            times.append((answered, time.perf_counter() - began))
        return times

    def open(self, library: str) -> None:
        self.session = self.connect()
        module = self.session.load_module(self.session.upload(library))
        self.noop = module.get_function("noop", signature=NOOP_SIGNATURE)
        self.noop_plain = module.get_function("noop")
        for name, (signature, kinds) in CALLS.items():
            arguments = [self.session.empty(1, "float32") if kind == "a" else int(kind) for kind in kinds]
            self.calls[name] = (module.get_function(name.split("_")[0], signature=signature), arguments)
        if self.noop() != 0 or self.noop_plain() != 0:
            raise RuntimeError("noop() did not return 0 on the %s board" % self.name)

    def stop(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
        finally:
            self.board.stop()


class State:
    """The run's boards (data-plane sides and session-only emulated ones), the raw peer and the data."""

    def __init__(self) -> None:
        self.sides: Dict[str, Side] = {}
        self.emulated: Dict[str, Side] = {}
        self.raw: Optional[RawPeer] = None
        self.data: Any = None
        self.resident: Dict[str, Any] = {}
        self.library = ""
        self.native_server = ""  # the native board server's executable, with --native
        self.tvm: Any = None  # a TVM board (timing_sides.TvmSide) when TVM imports
        self.tvm_call: Any = None  # TVM's vadd of three arrays of one element on it, with its arguments

    def tvm_vadd(self, count: int) -> None:
        function, arguments = self.tvm_call
        for _ in range(count):
            function(*arguments)


def start_tvm(state: State, workdir: str) -> None:
    """A TVM RPC server with TVM's own vadd of three arrays of one element loaded, ready to call."""
    state.tvm = TvmSide(workdir)
    case = Case("vadd", 1)
    module, device = state.tvm.module(case, remote=True), state.tvm.remote.cpu()
    arrays = (*case.inputs(), np.zeros(1, np.float32))
    state.tvm_call = (module["vadd"], [state.tvm.tvm.runtime.tensor(array, device) for array in arrays])


def start_native(state: State, workdir: str) -> None:
    """A board of the native board server, built for this machine (cached)."""
    from farm.ops.native import host_server

    state.native_server = host_server()
    state.sides["native"] = Side("native", [state.native_server], board_env(None), workdir, TlsConfig())


def start_emulated(state: State, args: Any, workdir: str, checkouts: Dict[str, str]) -> None:
    """For each ``--emulated`` architecture: each checkout's packed server, and the native one, under qemu-user."""
    from farm.ops.emulators import python_command

    for arch in args.emulated or []:
        for name, checkout in checkouts.items():
            archive = pack(checkout, os.path.join(workdir, "%s-server.pyz" % name))
            side = "%s %s" % (name, arch)
            state.emulated[side] = Side(side.replace(" ", "-"), [*python_command(arch), archive],
                                        board_env(None), workdir, TlsConfig())  # fmt: skip
        if args.native:
            state.emulated["native " + arch] = Side("native-" + arch, native_under_qemu(arch), board_env(None),
                                                    workdir, TlsConfig())  # fmt: skip


def native_under_qemu(arch: str) -> List[str]:
    """The native board server built for ``arch``, run under qemu-user with the target's userland."""
    from farm.ops.emulators import sysroot
    from farm.ops.native import build_server
    from farm.ops.targets import TARGETS
    from farm.ops.toolchain import toolchain_for

    return [TARGETS[arch].qemu, "-L", sysroot(arch), build_server(toolchain_for(arch))]


def pin_far(state: State, cpus: set) -> None:
    """Every board, the raw peer and TVM's server on ``cpus``."""
    for side in state.sides.values():
        os.sched_setaffinity(side.board.pid, cpus)
    os.sched_setaffinity(state.raw.process.pid, cpus)  # type: ignore[union-attr,arg-type]
    if state.tvm is not None:  # TVM's server runs in a worker process of its own
        os.sched_setaffinity(state.tvm.server.proc._proc.pid, cpus)


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    state = State()
    nbytes = int(args.size_mib * (1 << 20)) // 4 * 4
    state.data = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    source = Path(workdir, "calls.c")
    source.write_text(CALLS_SOURCE)
    state.library = compile_shared([str(source)], os.path.join(workdir, "libcalls.so"))
    files = harness.tls_files(workdir) if args.tls else None
    checkouts = {"farm": str(harness.PROJECT)}
    if args.before:
        checkouts["before"] = os.path.abspath(args.before)
    plan = [(name, checkout, None) for name, checkout in checkouts.items()]
    if files is not None:
        plan.insert(1, ("tls", str(harness.PROJECT), files))
    try:
        for name, checkout, tls_files in plan:
            env = board_env(checkout, tls_files.daemon().as_env() if tls_files else None)
            client_tls = tls_files.client() if tls_files else TlsConfig()
            state.sides[name] = Side(name, [sys.executable, "-m", "farm.server"], env, workdir, client_tls)
        if args.native:
            start_native(state, workdir)
        start_emulated(state, args, workdir, checkouts)
        state.raw = RawPeer(nbytes)
        if args.tvm_rpc is not None and "calls" in args.only:
            start_tvm(state, workdir)
        if args.cpus_far:  # before any session: the board forks it, and it inherits the daemon's CPUs
            pin_far(state, args.cpus_far)
        yield state
    finally:
        if state.raw is not None:
            state.raw.stop()
        if state.tvm is not None:
            state.tvm_call = None
            state.tvm.stop()
        for side in [*state.sides.values(), *state.emulated.values()]:
            side.stop()


# --- the scenarios ---------------------------------------------------------------------------------------


def group_rss_kib(pgid: int) -> int:
    """The resident memory of every process in process group ``pgid``, in KiB."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            with open("/proc/%s/status" % entry) as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration, IndexError, ValueError):
            continue  # gone, or a kernel thread
    return total


def measure_footprint(state: State, args: Any) -> Dict[str, Any]:
    """Idle daemons: before any session of this run, each board's processes together (each in its own group)."""
    figures: Dict[str, Any] = {
        name + "_idle_rss_kib": group_rss_kib(side.board.pid) for name, side in state.sides.items()
    }
    for name, side in dict(state.sides, **state.emulated).items():
        figures[name.replace(" ", "_") + "_start_s"] = round(side.start_s, 3)
    if state.native_server:
        figures["native_binary_bytes"] = os.path.getsize(state.native_server)
    return figures


def measure_sessions(state: State, args: Any) -> Dict[str, Any]:
    boards = dict(state.sides, **state.emulated)
    for board in boards.values():
        board.open_and_close(2)  # warm-up
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in boards}
    for number in range(args.rounds):
        for name in harness.rotated(list(boards), number):
            times[name] += boards[name].open_and_close(args.sessions)
    return {
        name: {"open_ms": spread([t[0] for t in values], 1e3), "open_close_ms": spread([t[1] for t in values], 1e3)}
        for name, values in times.items()
    }


def ensure_open(state: State, args: Any) -> None:
    """Open the session the calls and transfers use on each board (after the sessions scenario: one at a time)."""
    for side in state.sides.values():
        if side.session is None:
            side.open(state.library)


def measure_calls(state: State, args: Any) -> Dict[str, Any]:
    ensure_open(state, args)
    farm_side = state.sides["farm"]
    variants: Dict[str, Any] = {"raw_pingpong": state.raw.ping_pong}  # type: ignore[union-attr]
    for name, side in state.sides.items():
        variants["%s_noop_signature" % name] = lambda count, f=side.noop: [f() for _ in range(count)]
    variants["farm_noop_no_signature"] = lambda count: [farm_side.noop_plain() for _ in range(count)]
    for side_name in ("farm", "native"):
        for name, (function, arguments) in getattr(state.sides.get(side_name), "calls", {}).items():
            variants[side_name + "_" + name] = lambda count, f=function, a=arguments: [f(*a) for _ in range(count)]
    if state.tvm is not None:
        variants["tvm_vadd_n1"] = state.tvm_vadd
    variants["farm_ping"] = lambda count: [farm_side.session.ping() for _ in range(count)]
    size = max(1, args.calls // args.batches)
    for action in variants.values():
        action(min(size, 1000))  # warm-up
    seconds = interleaved({name: (lambda action=action: action(size)) for name, action in variants.items()},
                          args.batches)  # fmt: skip
    result = {name: spread([value / size for value in values], 1e6) for name, values in seconds.items()}
    if args.profile:  # the client side of N no-op calls with a signature
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [farm_side.noop() for _ in range(args.profile)])
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        result["client_profile"] = out.getvalue()
    return result


def measure_transfers(state: State, args: Any) -> Dict[str, Any]:
    ensure_open(state, args)
    data, raw = state.data, state.raw
    view = memoryview(data).cast("B")
    for name, side in state.sides.items():  # warm-up, checking the bytes
        state.resident[name] = side.session.array(data)
        if not np.array_equal(state.resident[name].numpy(), data):
            raise RuntimeError("the array read back from the %s board differs from the one sent" % name)
    raw.upload(view)  # type: ignore[union-attr]
    if not np.array_equal(np.frombuffer(raw.download(len(view)), np.float32), data):  # type: ignore[union-attr]
        raise RuntimeError("the raw peer sent back different bytes")
    actions: Dict[str, Any] = {"raw_upload": lambda: raw.upload(view), "raw_download": lambda: raw.download(len(view))}
    for name, side in state.sides.items():
        actions[name + "_upload"] = lambda s=side.session: s.array(data)
        actions[name + "_download"] = lambda n=name: state.resident[n].numpy()
    actions["farm_copyfrom"] = lambda: state.resident["farm"].copyfrom(data)
    # ping() sends pending releases, so that the board frees the last upload before the clock starts
    seconds = interleaved(actions, args.repeats, lambda name: [s.session.ping() for s in state.sides.values()])
    return {name: spread([len(view) / value / MB for value in values]) for name, values in seconds.items()}


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    calls = results["scenarios"].get("calls", {})
    transfers = results["scenarios"].get("transfers", {})
    out: Dict[str, Any] = {}
    for direction in ("upload", "download"):
        if "farm_" + direction in transfers:
            value = transfers["farm_" + direction]["median"] / transfers["raw_" + direction]["median"]
            out[direction + "_vs_raw"] = judged(value, THROUGHPUT_TARGET, ">=")
    for name in ("farm_noop_signature", "farm_noop_no_signature"):
        if name in calls:
            out[name + "_vs_raw_pingpong"] = judged(calls[name]["median"] / calls["raw_pingpong"]["median"],
                                                    CALL_TARGET, "<=")  # fmt: skip
    return out


def headline(results: Dict[str, Any]) -> List[Headline]:
    rows, judged_ratios = [], results["ratios"]
    calls = results["scenarios"].get("calls", {})
    transfers = results["scenarios"].get("transfers", {})
    sessions = results["scenarios"].get("sessions", {})
    if "farm_noop_signature" in calls:
        row = judged_ratios["farm_noop_signature_vs_raw_pingpong"]
        rows.append(
            Headline(
                "no-op call round trip",
                "%.1f us" % calls["farm_noop_signature"]["median"],
                limit="%.1f us (raw ping-pong)" % calls["raw_pingpong"]["median"],
                ratio="%.2f" % row["ratio"],
                target="<= %.1f x limit" % CALL_TARGET,
                met=row["pass"],
            )
        )
    for side, board in (("farm", ""), ("native", ", native board")):
        if side + "_vadd_n1" in calls:
            tvm, ours = calls.get("tvm_vadd_n1"), calls[side + "_vadd_n1"]["median"]
            rows.append(
                Headline(
                    "call of vadd (3 arrays, n=1) round trip" + board,
                    "%.1f us" % ours,
                    anchor="%.1f us (TVM)" % tvm["median"] if tvm else "-",
                    limit="%.1f us (raw ping-pong)" % calls["raw_pingpong"]["median"],
                    ratio="%.2f x TVM" % (ours / tvm["median"]) if tvm else "-",
                    target="<= 1.0 x TVM" if tvm and side == "native" else "-",
                    met=ours <= tvm["median"] if tvm and side == "native" else None,
                )
            )
    footprint = results["scenarios"].get("footprint", {})
    if "native_idle_rss_kib" in footprint:
        native, python = footprint["native_idle_rss_kib"], footprint["farm_idle_rss_kib"]
        rows.append(Headline("idle daemon, resident memory", "%d KiB (native)" % native,
                             limit="%d KiB (Python board)" % python, target="< 2048 KiB", met=native < 2048,
                             ratio="%.3f (native / Python)" % (native / python)))  # fmt: skip
        rows.append(Headline("native daemon, binary size", "%d KiB" % (footprint["native_binary_bytes"] // 1024)))
    for direction in ("upload", "download"):
        if "farm_" + direction in transfers:
            row = judged_ratios[direction + "_vs_raw"]
            rows.append(Headline("%s, %g MiB" % (direction, args_size(results)),
                                 "%.0f MB/s" % transfers["farm_" + direction]["median"],
                                 limit="%.0f MB/s (raw socket)" % transfers["raw_" + direction]["median"],
                                 ratio="%.2f" % row["ratio"], target=">= %.1f x limit" % THROUGHPUT_TARGET,
                                 met=row["pass"]))  # fmt: skip
    if "farm" in sessions:
        rows.append(Headline("open + close a session", "%.2f ms" % sessions["farm"]["open_close_ms"]["median"]))
    comparisons = (("sessions", "", "open_close_ms", "ms", "open + close"), ("calls", "_noop_signature", "", "us",
                   "no-op call"), ("transfers", "_upload", "", "MB/s", "upload"),
                   ("transfers", "_download", "", "MB/s", "download"))  # fmt: skip
    for other, label in (("tls", "TLS"), ("before", "code before"), ("native", "native board")):
        for scenario, suffix, field, unit, what in comparisons:
            figures = results["scenarios"].get(scenario, {})
            if other + suffix in figures:
                mine, ours = figures[other + suffix], figures["farm" + suffix]
                mine, ours = (mine[field], ours[field]) if field else (mine, ours)
                rows.append(Headline("%s: %s" % (what, label), "%.2f %s" % (ours["median"], unit),
                                     anchor="%.2f %s (%s)" % (mine["median"], unit, label),
                                     ratio="%.2f (%s / ours)" % (mine["median"] / ours["median"], label)))  # fmt: skip
    return rows


def args_size(results: Dict[str, Any]) -> float:
    return results["config"]["size_mib"]


def report_footprint(figures: Dict[str, Any], args: Any) -> List[str]:
    return ["### Footprint", ""] + table(("figure", "value"), list(figures.items())) + [""]


def report_sessions(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [(name, harness.mmm(row["open_ms"]), harness.mmm(row["open_close_ms"]), row["open_ms"]["rounds"])
            for name, row in figures.items()]  # fmt: skip
    return ["### Sessions, ms", ""] + table(("board", "open", "open + close", "sessions"), rows) + [""]


def report_calls(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [(name, "%.1f" % row["mean"], "%.1f" % row["median"], "%.1f" % row["p99"], "%.1f" % row["min"],
             row["rounds"]) for name, row in figures.items() if isinstance(row, dict)]  # fmt: skip
    header = ("variant", "mean", "median", "p99", "best", "batches")
    profile = ["", "client-side profile:", "", "```", figures["client_profile"], "```"] if args.profile else []
    return ["### Calls, us per round trip", ""] + table(header, rows) + profile + [""]


def report_transfers(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [(name, "%.0f" % row["median"], "%.0f" % row["max"], row["rounds"])
            for name, row in figures.items()]  # fmt: skip
    title = "### Transfers of %g MiB, MB/s" % args.size_mib
    return [title, ""] + table(("variant", "median", "best", "repeats"), rows) + [""]


TOOL = Tool(
    name="bench_dataplane",
    description=__doc__.split("\n\n")[0],
    rounds=Option(20, 2, "rounds of sessions, taking turns between boards"),
    options={
        "size_mib": Option(64.0, 1.0, "array size of the transfers", float),
        "calls": Option(20000, 200, "no-op calls per variant"),
        "batches": Option(100, 4, "timed batches the calls are split into"),
        "repeats": Option(5, 1, "timed transfers per direction and side"),
        "sessions": Option(10, 2, "sessions per board and round"),
        "profile": Option(0, 0, "also cProfile N no-op calls on the client"),
        "tls": Option(False, help="add a board with TLS", type=bool),
        "native": Option(False, help="add a board of the native board server (C)", type=bool),
        "before": Option("", "", "a checkout (a directory holding farm/) whose board is measured too", str),
        "emulated": Option(
            "",
            "",
            "comma-separated architectures of emulated boards (sessions only)",
            lambda text: [arch for arch in text.split(",") if arch],
        ),  # fmt: skip
    },
    setup=setup,
    scenarios=[
        Scenario("footprint", measure_footprint, report_footprint),
        Scenario("sessions", measure_sessions, report_sessions),
        Scenario("calls", measure_calls, report_calls, limit="raw TCP ping-pong", target="<= %g x" % CALL_TARGET),
        Scenario(
            "transfers",
            measure_transfers,
            report_transfers,
            limit="raw TCP socket",
            target=">= %g x" % THROUGHPUT_TARGET,
        ),  # fmt: skip
    ],
    ratios=ratios,
    headline=headline,
    machine_extra=lambda: {"numpy": np.__version__},
    tvm=True,
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
