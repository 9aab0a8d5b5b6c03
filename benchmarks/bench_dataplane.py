"""Data plane: sessions, calls and transfers on boards, against a raw socket, with TLS, and against older code.

Boards on loopback, side by side in one run, interleaved in rotating order so that noise hits all alike: ``farm``
(this checkout's), ``tls`` (``--tls``), ``before`` (``--before DIR``: the checkout in DIR's board, this checkout's
client), ``native`` (``--native``: the native board server) and, for ``--emulated ARCH,...``, each checkout's packed
server (and the native one) under qemu-user, for start-up and sessions only. Scenarios: the idle daemons' footprint
and start-up, sessions opened and closed, calls (against a raw TCP ping-pong between two processes, the limit, and
TVM 0.27's ``vadd`` of three arrays of one element on its RPC server, the anchor) and transfers (against a raw
socket's ``sendall``/``recv_into``); BENCHMARKS.md ("Data plane") says what each measures. MB/s is 10**6 bytes
per second. Every process shares one CPU by default (``--pin same``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import harness
import numpy as np
from bench_timing import Case, TvmSide
from harness import Headline, Option, Scenario, Tool, figures_report, interleaved, judged, spread

import farm  # noqa: E402  (harness puts this checkout first on the path)
from farm.board.spawner import STANDBY_NAME  # noqa: E402
from farm.client.callpath import ENV as COMPILED_CALLS_ENV  # noqa: E402
from farm.client.session import RemoteFunction  # noqa: E402
from farm.net.tls import TlsConfig  # noqa: E402
from farm.ops.native import host_server  # noqa: E402
from farm.ops.processes import DaemonProcess, board_command  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

HOST = "127.0.0.1"
KEY = "bench"
#: A no-op, TVM's measure of a call (``vadd`` of three arrays of one element), the cost of arguments.
CALLS_SOURCE = """#include <stdint.h>
int noop(void) { return 0; }
void vadd(const float *a, const float *b, float *c, int64_t n) { for (int64_t i = 0; i < n; i++) c[i] = a[i] + b[i]; }
int64_t scalars8(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, int64_t f, int64_t g, int64_t h)
{ return a + b + c + d + e + f + g + h; }
int arrays8(float *a, float *b, float *c, float *d, float *e, float *f, float *g, float *h)
{ return a != b && c != d && e != f && g != h; }
"""
#: The calls each session makes besides the no-op: signature and the arguments' kinds (a: an array).
CALLS = {
    "vadd_n1": ("void vadd(const float *a, const float *b, float *c, int64_t n)", "aaa1"),
    "scalars8": ("int64_t scalars8(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, int64_t f, int64_t g, "
                 "int64_t h)", "12345678"),
    "arrays8": ("int arrays8(float *a, float *b, float *c, float *d, float *e, float *f, float *g, float *h)",
                "aaaaaaaa"),
}  # fmt: skip
#: Calls measured on the client's Python path too (``REMOTEDEV_COMPILED_CALLS=0``), beside the compiled one.
PYTHON_CLIENT_CALLS = ("noop_signature", "vadd_n1")
MB = 1e6
THROUGHPUT_TARGET = 0.7  # farm throughput at least this fraction of the raw socket's ...
CALL_TARGET = 1.3  # ... and a no-op call at most this multiple of the raw ping-pong
_COMMAND = struct.Struct("<cQ")  # to the raw peer: P(ing-pongs), U(pload), D(ownload) or Q(uit), and a count
_PING = 8
PAGE = os.sysconf("SC_PAGE_SIZE")


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

    def transfer(self, op: bytes, data: memoryview) -> memoryview:
        """``U``: send ``data`` and wait for the peer's byte; ``D``: receive as many bytes into preallocated memory."""
        self.sock.sendall(_COMMAND.pack(op, len(data)))
        if op == b"U":
            self.sock.sendall(data)
        received = self.view[: 1 if op == b"U" else len(data)]
        if not _recv_exact(self.sock, received):
            raise ConnectionError("raw peer closed the connection")
        return received


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
    """A board, how to reach it, and, once :meth:`open` ran, a session with the calls loaded."""

    def __init__(self, name: str, server: List[str], env: Dict[str, str], workdir: str, tls: TlsConfig) -> None:
        self.name, self.tls = name, tls
        argv = board_command(KEY, HOST, 0, extra=["--name", name.replace(" ", "-")], server=server)
        self.board = DaemonProcess(argv, os.path.join(workdir, name.replace(" ", "-") + ".log"), env, cwd=workdir)
        self.session: Any = None
        self.calls: Dict[str, Tuple[Callable[..., Any], List[Any]]] = {}  # name: (function, arguments)
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
        self.calls["noop_signature"] = (module.get_function("noop", signature="int noop(void)"), [])
        self.calls["noop_no_signature"] = (module.get_function("noop"), [])
        for name, (signature, kinds) in CALLS.items():
            arguments = [self.session.empty(1, "float32") if kind == "a" else int(kind) for kind in kinds]
            self.calls[name] = (module.get_function(name.split("_")[0], signature=signature), arguments)
        os.environ[COMPILED_CALLS_ENV] = "0"  # the same functions again, called on the client's Python path
        try:
            for call in PYTHON_CLIENT_CALLS:
                function, arguments = self.calls[call]
                again = RemoteFunction(self.session, function.id, function.name, function.signature)
                self.calls[call + "_python_client"] = (again, arguments)
        finally:
            del os.environ[COMPILED_CALLS_ENV]
        noops = ("noop_signature", "noop_no_signature", "noop_signature_python_client")
        if any(self.calls[call][0]() != 0 for call in noops):
            raise RuntimeError("noop() did not return 0 on the %s board" % self.name)

    def stop(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
        finally:
            self.board.stop()


def native_under_qemu(arch: str) -> List[str]:
    """The native board server built for ``arch``, run under qemu-user with the target's userland."""
    from farm.ops.emulators import sysroot
    from farm.ops.native import build_server
    from farm.ops.targets import TARGETS
    from farm.ops.toolchain import toolchain_for

    return [TARGETS[arch].qemu, "-L", sysroot(arch), build_server(toolchain_for(arch))]


def plan(args: Any, workdir: str, native_server: str) -> List[Tuple[str, List[str], Dict[str, str], TlsConfig]]:
    """The boards to start, in order: name, the server's command, its environment, and the client's TLS."""
    from farm.ops.emulators import python_command

    python = [sys.executable, "-m", "farm.server"]
    checkouts = {"farm": str(harness.PROJECT), **({"before": os.path.abspath(args.before)} if args.before else {})}
    boards = [(name, python, board_env(checkout), TlsConfig()) for name, checkout in checkouts.items()]
    if args.tls:
        files = harness.tls_files(workdir)
        boards.insert(1, ("tls", python, board_env(checkouts["farm"], files.daemon().as_env()), files.client()))
    boards += [("native", [native_server], board_env(None), TlsConfig())] if native_server else []
    for arch in args.emulated:  # each checkout's packed server, and the native one, under qemu-user
        for name, checkout in checkouts.items():
            archive = pack(checkout, os.path.join(workdir, "%s-server.pyz" % name))
            boards.append(("%s %s" % (name, arch), [*python_command(arch), archive], board_env(None), TlsConfig()))
        boards += [("native " + arch, native_under_qemu(arch), board_env(None), TlsConfig())] if native_server else []
    return boards


class State:
    """The run's boards (``sides``; emulated ones, named ``SIDE ARCH``, for sessions only), the raw peer, the data."""

    def __init__(self) -> None:
        self.boards: Dict[str, Side] = {}
        self.raw: Any = None  # the RawPeer
        self.data: Any = None
        self.resident: Dict[str, Any] = {}
        self.library = ""
        self.native_server = ""  # the native board server's executable, with --native
        self.tvm: Optional[TvmSide] = None
        self.tvm_call: Any = None  # TVM's vadd of three arrays of one element on its server, and its arguments
        self.with_standby: Set[str] = set()  # the sides whose idle board had a standby session process (footprint)

    @property
    def sides(self) -> Dict[str, Side]:
        return {name: side for name, side in self.boards.items() if " " not in name}


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    state = State()
    nbytes = int(args.size_mib * (1 << 20)) // 4 * 4
    state.data = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    Path(workdir, "calls.c").write_text(CALLS_SOURCE)
    state.library = compile_shared([os.path.join(workdir, "calls.c")], os.path.join(workdir, "libcalls.so"))
    try:
        state.native_server = host_server() if args.native else ""
        for name, server, env, tls in plan(args, workdir, state.native_server):
            state.boards[name] = Side(name, server, env, workdir, tls)
        state.raw = RawPeer(nbytes)
        if args.tvm_rpc is not None and "calls" in args.only:
            state.tvm, case = TvmSide(workdir), Case("vadd", 1)
            device, arrays = state.tvm.remote.cpu(), (*case.inputs(), np.zeros(1, np.float32))
            tensors = [state.tvm.tvm.runtime.tensor(array, device) for array in arrays]
            state.tvm_call = (state.tvm.module(case, remote=True)["vadd"], tensors)
        if args.cpus_far:  # each board's every process (its sessions come from its spawner or standby), the peer
            for pid in [pid for side in state.sides.values() for pid in process_tree(side.board.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(pid, args.cpus_far)
            os.sched_setaffinity(state.raw.process.pid, args.cpus_far)
            if state.tvm is not None:  # TVM's server: a worker process, which forks one for each session
                for pid in process_tree(state.tvm.server.proc._proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setaffinity(pid, args.cpus_far)
        yield state
    finally:
        if state.raw is not None:
            state.raw.stop()
        if state.tvm is not None:
            state.tvm_call = None
            state.tvm.stop()
        for side in state.boards.values():
            side.stop()


# --- the scenarios ---------------------------------------------------------------------------------------


def process_tree(root: int) -> List[int]:
    """Process ``root`` and all its descendants."""
    parents: Dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # gone meanwhile
            with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as handle:
                parents[int(entry)] = int(handle.read().rpartition(")")[2].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | more, bool(more)
    return sorted(tree)


def resident_frames(pid: int) -> Optional[set]:
    """The physical pages process ``pid`` has mapped in (``/proc/PID/pagemap``); None where their numbers are hidden
    (they are from all but root)."""
    frames, hidden = set(), True
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/pagemap" % pid, "rb") as pagemap:
        for line in maps:
            low, high = (int(bound, 16) for bound in line.split()[0].split("-"))
            if line.rstrip().endswith("[vsyscall]"):  # not readable through pagemap
                continue
            pagemap.seek(low // PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", pagemap.read((high - low) // PAGE * 8)):
                if entry >> 63:  # present
                    frames.add(entry & ((1 << 55) - 1))
                    hidden = hidden and not entry & ((1 << 55) - 1)
    return None if hidden else frames


def process_name(pid: int) -> str:
    """A live process's name (``/proc/PID/comm``); "" once it is gone."""
    with contextlib.suppress(OSError):
        with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    return ""


def has_standby(root: int) -> bool:
    """Whether process ``root`` or one of its descendants is a standby session process, waiting for its session."""
    return STANDBY_NAME in (process_name(pid) for pid in process_tree(root))


def idle_footprint(root: int) -> Dict[str, Any]:
    """Process ``root`` and all its descendants, in KiB: the root's resident memory (``daemon_rss``), the pages they
    hold together, each counted once (``resident``: None unless root), and the sums of their resident memories
    (``rss_sum``, which counts a page they share once per process) and of their proportional sets (``pss_sum``)."""
    rss: Dict[int, int] = {}
    pss_sum = 0
    frames: Optional[set] = set()
    for pid in process_tree(root):
        with contextlib.suppress(OSError, KeyError):  # gone meanwhile
            rss[pid] = harness.proc_status(pid)["VmRSS"]
            pss_sum += harness.private_kb(pid)["pss"]
            held = resident_frames(pid)
            frames = frames | held if frames is not None and held is not None else None
    resident = len(frames) * PAGE // 1024 if frames is not None else None
    return {"daemon_rss": rss.get(root, 0), "resident": resident, "rss_sum": sum(rss.values()), "pss_sum": pss_sum}


IDLE_FIGURES = ("daemon_rss", "resident", "rss_sum", "pss_sum")


def measure_footprint(state: State, args: Any) -> Dict[str, Any]:
    """Idle daemons: before any session of this run, each board's processes together (the daemon and every process
    it started: its spawner, watchdog and the standby session process)."""
    idle = {"%s_idle_%s_kib" % (name, figure): value for name, side in state.sides.items()
            for figure, value in idle_footprint(side.board.pid).items()}  # fmt: skip
    state.with_standby = {name for name, side in state.sides.items() if has_standby(side.board.pid)}
    start = {name.replace(" ", "_") + "_start_s": round(side.start_s, 3) for name, side in state.boards.items()}
    figures: Dict[str, Any] = dict(idle, **start)
    if state.native_server:
        figures["native_binary_bytes"] = os.path.getsize(state.native_server)
    return figures


def measure_idle_after(state: State, args: Any) -> Dict[str, Any]:
    """Idle daemons again, after this run's sessions (``--only footprint,sessions,idle_after``): what serving them
    left resident, read once each board that had a standby session process when idle before has one again, and
    then 1.5 s later: an idle native board drops its code pages a second after its last session."""
    for name, side in state.sides.items():
        if name in state.with_standby:
            standing_by = functools.partial(has_standby, side.board.pid)
            harness.wait_until(standing_by, 10, "the %s board has a standby session process" % name, 0.02)
    time.sleep(1.5)
    return {"%s_idle_after_%s_kib" % (name, figure): value for name, side in state.sides.items()
            for figure, value in idle_footprint(side.board.pid).items()}  # fmt: skip


def measure_sessions(state: State, args: Any) -> Dict[str, Any]:
    for board in state.boards.values():
        board.open_and_close(2)  # warm-up
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in state.boards}
    for number in range(args.rounds):
        for name in harness.rotated(list(state.boards), number):
            times[name] += state.boards[name].open_and_close(args.sessions)
    return {
        name: {"open_ms": spread([t[0] for t in values], 1e3), "open_close_ms": spread([t[1] for t in values], 1e3)}
        for name, values in times.items()
    }


def ensure_open(state: State) -> None:
    """Open the session the calls and transfers use on each board (after the sessions scenario: one at a time)."""
    for side in state.sides.values():
        if side.session is None:
            side.open(state.library)


def measure_calls(state: State, args: Any) -> Dict[str, Any]:
    ensure_open(state)
    calls = {name + "_noop_signature": side.calls["noop_signature"] for name, side in state.sides.items()}
    calls["farm_noop_no_signature"] = state.sides["farm"].calls["noop_no_signature"]
    for name in ("farm", "native"):
        named = [*CALLS, *(call + "_python_client" for call in PYTHON_CLIENT_CALLS)]
        calls.update({name + "_" + call: state.sides[name].calls[call] for call in named if name in state.sides})
    calls.update({"tvm_vadd_n1": state.tvm_call} if state.tvm_call else {})
    calls["farm_ping"] = (state.sides["farm"].session.ping, [])
    batches: Dict[str, Callable[[int], Any]] = {"raw_pingpong": state.raw.ping_pong}
    batches.update({name: lambda count, f=f, a=a: [f(*a) for _ in range(count)] for name, (f, a) in calls.items()})
    size = max(1, args.calls // args.batches)
    for batch in batches.values():
        batch(min(size, 1000))  # warm-up
    seconds = interleaved({name: (lambda batch=batch: batch(size)) for name, batch in batches.items()}, args.batches)
    return {name: spread([value / size for value in values], 1e6) for name, values in seconds.items()}


def measure_transfers(state: State, args: Any) -> Dict[str, Any]:
    ensure_open(state)
    data, raw, view = state.data, state.raw, memoryview(state.data).cast("B")
    for name, side in state.sides.items():  # warm-up, checking the bytes
        state.resident[name] = side.session.array(data)
        if not np.array_equal(state.resident[name].numpy(), data):
            raise RuntimeError("the array read back from the %s board differs from the one sent" % name)
    raw.transfer(b"U", view)
    if not np.array_equal(np.frombuffer(raw.transfer(b"D", view), np.float32), data):
        raise RuntimeError("the raw peer sent back different bytes")
    actions: Dict[str, Any] = {
        "raw_upload": lambda: raw.transfer(b"U", view),
        "raw_download": lambda: raw.transfer(b"D", view),
    }
    for name, side in state.sides.items():
        actions[name + "_upload"] = lambda s=side.session: s.array(data)
        actions[name + "_download"] = lambda n=name: state.resident[n].numpy()
    actions["farm_copyfrom"] = lambda: state.resident["farm"].copyfrom(data)
    # ping() sends pending releases, so that the board frees the last upload before the clock starts
    seconds = interleaved(actions, args.repeats, lambda name: [s.session.ping() for s in state.sides.values()])
    return {name: spread([len(view) / value / MB for value in values]) for name, values in seconds.items()}


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    calls, transfers = results["scenarios"].get("calls", {}), results["scenarios"].get("transfers", {})
    out: Dict[str, Any] = {}
    for direction in ("upload", "download"):
        if "farm_" + direction in transfers:
            value = transfers["farm_" + direction]["median"] / transfers["raw_" + direction]["median"]
            out[direction + "_vs_raw"] = judged(value, THROUGHPUT_TARGET, ">=")
    for name in ("farm_noop_signature", "farm_noop_no_signature"):
        if name in calls:
            value = calls[name]["median"] / calls["raw_pingpong"]["median"]
            out[name + "_vs_raw_pingpong"] = judged(value, CALL_TARGET, "<=")
    return out


OTHERS = [("tls", "TLS"), ("before", "code before"), ("native", "native board")]
#: Each other board beside ours: (scenario, figure suffix, field, unit, what).
COMPARED = [
    ("sessions", "", "open_close_ms", "ms", "open + close"),
    ("calls", "_noop_signature", "", "us", "no-op call"),
    ("transfers", "_upload", "", "MB/s", "upload"),
    ("transfers", "_download", "", "MB/s", "download"),
]


def headline(results: Dict[str, Any]) -> List[Headline]:
    scenarios, judged_ratios, rows = results["scenarios"], results["ratios"], []
    calls, transfers, footprint = (scenarios.get(name, {}) for name in ("calls", "transfers", "footprint"))
    raw = "%.1f us (raw ping-pong)" % calls["raw_pingpong"]["median"] if calls else "-"
    if "farm_noop_signature" in calls:
        ratio = judged_ratios["farm_noop_signature_vs_raw_pingpong"]
        rows.append(Headline("no-op call round trip", "%.1f us" % calls["farm_noop_signature"]["median"], limit=raw,
                             ratio="%.2f" % ratio["ratio"], target="<= %g x limit" % CALL_TARGET,
                             met=ratio["pass"]))  # fmt: skip
    tvm = calls.get("tvm_vadd_n1", {}).get("median")
    for side in ("farm", "native"):
        ours, held = calls.get(side + "_vadd_n1", {}).get("median"), bool(tvm) and side == "native"
        if ours:  # the native board is held to TVM's call
            rows.append(Headline("call of vadd (3 arrays, n=1) round trip" + ", native board" * (side == "native"),
                                 "%.1f us" % ours, anchor="%.1f us (TVM)" % tvm if tvm else "-", limit=raw,
                                 ratio="%.2f x TVM" % (ours / tvm) if tvm else "-", target="<= 1.0 x TVM" if held
                                 else "-", met=ours <= tvm if held else None))  # fmt: skip
    if "native_idle_daemon_rss_kib" in footprint:
        native, python = ({figure: footprint["%s_idle_%s_kib" % (side, figure)] for figure in IDLE_FIGURES}
                          for side in ("native", "farm"))  # fmt: skip
        held = [native["daemon_rss"]] + ([native["resident"]] if native["resident"] is not None else [])
        together = "%s KiB" % native["resident"] if native["resident"] is not None else "unknown (not root)"
        rows.append(Headline("idle daemon, resident memory",
                             "%d KiB the native daemon; %s its processes together, each page once (their RSS "
                             "summed %d, PSS %d)" % (native["daemon_rss"], together, native["rss_sum"],
                                                     native["pss_sum"]),
                             target="< 2048 KiB", limit="%d KiB (Python board, RSS summed)" % python["rss_sum"],
                             met=max(held) < 2048, ratio="%.3f (native / Python, RSS summed)"
                             % (native["rss_sum"] / python["rss_sum"])))  # fmt: skip
        rows.append(Headline("native daemon, binary size", "%d KiB" % (footprint["native_binary_bytes"] // 1024)))
    for direction in ("upload", "download"):
        if "farm_" + direction in transfers:
            ratio = judged_ratios[direction + "_vs_raw"]
            rows.append(Headline("%s, %g MiB" % (direction, results["config"]["size_mib"]),
                                 "%.0f MB/s" % transfers["farm_" + direction]["median"],
                                 limit="%.0f MB/s (raw socket)" % transfers["raw_" + direction]["median"],
                                 ratio="%.2f" % ratio["ratio"], target=">= %g x limit" % THROUGHPUT_TARGET,
                                 met=ratio["pass"]))  # fmt: skip
    if "farm" in scenarios.get("sessions", {}):
        ours = scenarios["sessions"]["farm"]["open_close_ms"]["median"]
        rows.append(Headline("open + close a session", "%.2f ms" % ours))
    for (other, label), (scenario, suffix, field, unit, what) in itertools.product(OTHERS, COMPARED):
        if other + suffix in scenarios.get(scenario, {}):
            mine, ours = (scenarios[scenario][side + suffix] for side in (other, "farm"))
            mine, ours = (mine[field], ours[field]) if field else (mine, ours)
            rows.append(Headline("%s: %s" % (what, label), "%.2f %s" % (ours["median"], unit),
                                 anchor="%.2f %s (%s)" % (mine["median"], unit, label),
                                 ratio="%.2f (%s / ours)" % (mine["median"] / ours["median"], label)))  # fmt: skip
    return rows


# fmt: off
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
        "tls": Option(False, help="add a board with TLS", type=bool),
        "native": Option(False, help="add a board of the native board server (C)", type=bool),
        "before": Option("", "", "a checkout (a directory holding farm/) whose board is measured too", str),
        "emulated": Option([], [], "comma-separated architectures of emulated boards (start-up and sessions only)",
                           lambda text: [arch for arch in text.split(",") if arch]),
    },
    setup=setup,
    scenarios=[
        Scenario("footprint", measure_footprint, figures_report("### Footprint", "figure", "value")),
        Scenario("sessions", measure_sessions, figures_report("### Sessions, ms", "board", "open", "open + close",
                                                            "sessions")),
        Scenario("idle_after", measure_idle_after, figures_report("### Footprint after the sessions", "figure",
                                                                  "value")),
        Scenario("calls", measure_calls, figures_report("### Calls, us per round trip", "variant", "batches: median "
                 "(min-max)", "batches"), limit="raw TCP ping-pong", target="<= %g x" % CALL_TARGET),
        Scenario("transfers", measure_transfers, figures_report("### Transfers of %(size_mib)g MiB, MB/s", "variant",
                 "repeats: median (min-max)", "repeats"), limit="raw TCP socket",
                 target=">= %g x" % THROUGHPUT_TARGET),
    ],
    ratios=ratios,
    headline=headline,
    machine_extra=lambda: {"numpy": np.__version__},
    tvm=True,
)
# fmt: on

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
