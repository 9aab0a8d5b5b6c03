"""Data-plane benchmark: the farm client and board against a raw socket, on loopback, in one run.

Measures, side by side and interleaved so that machine noise hits both alike:

* the round trip of a call to a no-op native function (``int noop(void)``), with
  and without a signature, against an 8-byte ping-pong over a raw TCP socket
  between two processes; also a bare farm ``ping`` for reference;
* upload (``session.array(x)``) and download (``remote_array.numpy()``) of a
  float32 array (64 MiB by default), against ``sendall`` / ``recv_into`` of the
  same number of bytes between preallocated buffers over a raw TCP socket.

Then prints a table and the ratios against their targets::

    python benchmarks/bench_dataplane.py [--size-mib 64] [--calls 20000] [--repeats 5] [--json out.json]

MB/s means 10**6 bytes per second. Call times are microseconds per round trip.

By default this process, the board and the raw peer share one CPU (``--pin same``):
left to the scheduler, one pair of processes may share a CPU while the other is
split over two, and on virtual machines a wakeup across CPUs can cost more than
the whole round trip, which would make the comparison meaningless.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import multiprocessing
import os
import pstats
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from common import PROJECT, child_env, exit_on_signal, machine_info, machine_line, publish  # noqa: E402  (puts this checkout's farm on the path)

import farm  # noqa: E402
from farm.ops.processes import DaemonProcess, start_board  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

logger = logging.getLogger("bench_dataplane")

HOST = "127.0.0.1"
KEY = "bench"
NOOP_SOURCE = "int noop(void)\n{\n    return 0;\n}\n"
NOOP_SIGNATURE = "int noop(void)"
MB = 1e6

#: Targets: farm throughput at least this fraction of the raw socket's ...
THROUGHPUT_TARGET = 0.7
#: ... and a no-op call at most this multiple of the raw ping-pong.
CALL_TARGET = 1.5

# Commands to the raw peer: one byte, then a count (ping-pongs) or a byte length.
_COMMAND = struct.Struct("<cQ")
_PING_BYTES = 8


# --- the raw socket peer (a separate process) ------------------------------------


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False if the peer closed before the first byte."""
    got = 0
    size = len(view)
    while got < size:
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
    buffer = bytearray(b"\x01") * max(nbytes, 1)  # preallocated and touched, so no page faults later
    view = memoryview(buffer)
    command = bytearray(_COMMAND.size)
    command_view = memoryview(command)
    ping = bytearray(_PING_BYTES)
    ping_view = memoryview(ping)
    try:
        while _recv_exact(sock, command_view):
            op, count = _COMMAND.unpack(command)
            if op == b"P":
                for _ in range(count):
                    _recv_exact(sock, ping_view)
                    sock.sendall(ping)
            elif op == b"U":
                _recv_exact(sock, view[:count])
                sock.sendall(b"k")
            elif op == b"D":
                sock.sendall(view[:count])
            else:
                return
    finally:
        sock.close()


class RawPeer:
    """The host end of the raw socket, connected to a :func:`_raw_peer` process."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.sock: Optional[socket.socket] = None
        self.process: Optional[Any] = None
        self._recv_buffer = bytearray(b"\x01") * max(nbytes, 1)
        self._recv_view = memoryview(self._recv_buffer)
        self._ack = bytearray(1)
        self._pong = bytearray(_PING_BYTES)

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((HOST, 0))
            listener.listen(1)
            listener.settimeout(0.2)
            context = multiprocessing.get_context("spawn")
            process = context.Process(
                target=_raw_peer, args=(listener.getsockname()[1], self.nbytes), name="raw-peer", daemon=True
            )
            process.start()
            self.process = process
            deadline = time.monotonic() + 60
            while self.sock is None:
                try:
                    self.sock, _ = listener.accept()
                except socket.timeout:
                    if not process.is_alive():
                        raise RuntimeError("the raw peer exited with code %s" % process.exitcode) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("the raw peer did not connect within 60 s") from None
        finally:
            listener.close()
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(_COMMAND.pack(b"Q", 0))
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self.process is not None:
            self.process.join(10)
            if self.process.is_alive():
                logger.warning("raw peer did not exit; terminating it")
                self.process.terminate()
                self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.process = None

    def ping_pong(self, count: int) -> None:
        sock = self.sock
        assert sock is not None
        sock.sendall(_COMMAND.pack(b"P", count))
        ping = b"p" * _PING_BYTES
        pong = self._pong
        view = memoryview(pong)
        for _ in range(count):
            sock.sendall(ping)
            got = sock.recv_into(pong)
            while got < _PING_BYTES:
                more = sock.recv_into(view[got:])
                if not more:
                    raise ConnectionError("raw peer closed the connection")
                got += more

    def upload(self, data: memoryview) -> None:
        sock = self.sock
        assert sock is not None
        sock.sendall(_COMMAND.pack(b"U", len(data)))
        sock.sendall(data)
        if not _recv_exact(sock, memoryview(self._ack)):
            raise ConnectionError("raw peer closed the connection")

    def download(self, nbytes: int) -> memoryview:
        sock = self.sock
        assert sock is not None
        sock.sendall(_COMMAND.pack(b"D", nbytes))
        view = self._recv_view[:nbytes]
        if not _recv_exact(sock, view):
            raise ConnectionError("raw peer closed the connection")
        return view


# --- helpers -----------------------------------------------------------------------


def placement(pin: str) -> Tuple[Optional[Set[int]], Optional[Set[int]]]:
    """CPUs for (this process, the board and the raw peer) under ``--pin``; None leaves them alone."""
    if pin == "none":
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "same":
        return {cpus[0]}, None
    if len(cpus) < 2:
        raise SystemExit("--pin split needs two CPUs; this process may use only %s" % cpus)
    return {cpus[0]}, {cpus[1]}


def timed(action: Callable[[], Any]) -> float:
    """Seconds ``action()`` took; what it returns is dropped after the clock stops."""
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def call_stats(per_call_seconds: Sequence[float]) -> Dict[str, float]:
    micro = [value * 1e6 for value in per_call_seconds]
    return {
        "mean_us": statistics.fmean(micro),
        "median_us": statistics.median(micro),
        "min_us": min(micro),
        "batches": len(micro),
    }


def throughput_stats(nbytes: int, seconds: Sequence[float]) -> Dict[str, float]:
    rates = [nbytes / value / MB for value in seconds]
    return {"best_mbps": max(rates), "median_mbps": statistics.median(rates), "repeats": len(rates)}


# --- the benchmark -----------------------------------------------------------------


class Bench:
    """Holds the board, the session and the raw peer of one run."""

    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args = args
        self.workdir = workdir
        self.nbytes = int(args.size_mib * (1 << 20)) // 4 * 4
        self.board: Optional[DaemonProcess] = None
        self.session: Optional[farm.RemoteSession] = None
        self.raw = RawPeer(self.nbytes)
        self.data = np.random.default_rng(0).random(self.nbytes // 4, dtype=np.float32)
        self.data_view = memoryview(self.data).cast("B")
        self.noop_signature: Any = None
        self.noop_plain: Any = None

    # set up and tear down

    def start(self) -> None:
        source = os.path.join(self.workdir, "noop.c")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(NOOP_SOURCE)
        library = compile_shared([source], os.path.join(self.workdir, "libnoop.so"))
        logger.info("starting the board and the raw socket peer")
        client_cpus, far_cpus = placement(self.args.pin)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)  # the board and the peer inherit it unless moved below
        self.board = start_board(
            os.path.join(self.workdir, "board.log"), key=KEY, host=HOST, port=0, env=child_env(), cwd=str(PROJECT)
        )  # in PROJECT, so that ``python -m farm.server`` imports this checkout's farm whatever the caller's directory
        self.raw.start()
        if far_cpus:
            # Before connecting: the board forks the session process, which inherits the daemon's CPUs.
            os.sched_setaffinity(self.board.pid, far_cpus)
            os.sched_setaffinity(self.raw.process.pid, far_cpus)  # type: ignore[union-attr]
        host, port = self.board.address  # type: ignore[misc]
        self.session = farm.connect(host, port, key=KEY)
        module = self.session.load_module(self.session.upload(library))
        self.noop_signature = module.get_function("noop", signature=NOOP_SIGNATURE)
        self.noop_plain = module.get_function("noop")
        if self.noop_signature() != 0 or self.noop_plain() != 0:
            raise RuntimeError("noop() did not return 0")

    def stop(self) -> bool:
        """Close the session, stop the raw peer and the board; False (and logged) if a step failed."""
        ok = True
        interrupted: Optional[BaseException] = None
        for step in (self._close_session, self.raw.stop, self._stop_board):
            try:
                step()
            except Exception:  # keep stopping the rest
                logger.exception("cleanup step %s failed", step.__name__)
                ok = False
            except BaseException as exc:  # an interrupt: finish stopping first
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        return ok

    def _close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close()

    def _stop_board(self) -> None:
        if self.board is not None:
            board, self.board = self.board, None
            board.stop()

    def board_log_tail(self, chars: int = 4000) -> str:
        if self.board is None:
            return ""
        try:
            return self.board.log_text()[-chars:]
        except OSError:
            return ""

    # the measurements

    def call_variants(self) -> Dict[str, Callable[[int], None]]:
        session, with_signature, plain, raw = self.session, self.noop_signature, self.noop_plain, self.raw
        assert session is not None

        def farm_noop_signature(count: int) -> None:
            for _ in range(count):
                with_signature()

        def farm_noop_plain(count: int) -> None:
            for _ in range(count):
                plain()

        def farm_ping(count: int) -> None:
            for _ in range(count):
                session.ping()

        return {
            "raw_pingpong": raw.ping_pong,
            "farm_noop_signature": farm_noop_signature,
            "farm_noop_no_signature": farm_noop_plain,
            "farm_ping": farm_ping,
        }

    def measure_calls(self) -> Dict[str, Dict[str, float]]:
        args = self.args
        variants = self.call_variants()
        batches = max(1, min(args.batches, args.calls))
        size = max(1, args.calls // batches)
        warm = max(1, min(size, 1000))
        logger.info("calls: warm-up, then %d interleaved batches of %d per variant", batches, size)
        for run in variants.values():
            run(warm)
        names = list(variants)
        per_call: Dict[str, List[float]] = {name: [] for name in names}
        for batch in range(batches):
            shift = batch % len(names)  # rotate the order so no variant always runs first
            for name in names[shift:] + names[:shift]:
                run = variants[name]
                gc.collect()
                per_call[name].append(timed(lambda run=run: run(size)) / size)
        return {name: call_stats(values) for name, values in per_call.items()}

    def measure_transfers(self) -> Dict[str, Dict[str, float]]:
        session, raw, nbytes, data = self.session, self.raw, self.nbytes, self.data
        assert session is not None
        repeats = self.args.repeats
        logger.info("transfers: %.1f MB each way, warm-up, then %d interleaved repeats", nbytes / MB, repeats)
        # Warm-up: one of each, checking that the bytes arrive intact.
        resident = session.array(data)
        if not np.array_equal(resident.numpy(), data):
            raise RuntimeError("the array read back from the board differs from the one sent")
        raw.upload(self.data_view)
        if not np.array_equal(np.frombuffer(raw.download(nbytes), np.float32), data):
            raise RuntimeError("the raw peer sent back different bytes")

        def farm_upload() -> Any:
            return session.array(data)  # once dropped, freed on the board with the next request

        def farm_download() -> Any:
            return resident.numpy()

        def farm_copyfrom() -> Any:
            return resident.copyfrom(data)

        uploads: List[Tuple[str, Callable[[], Any]]] = [
            ("raw_upload", lambda: raw.upload(self.data_view)),
            ("farm_upload", farm_upload),
            ("farm_copyfrom", farm_copyfrom),
        ]
        downloads: List[Tuple[str, Callable[[], Any]]] = [
            ("raw_download", lambda: raw.download(nbytes)),
            ("farm_download", farm_download),
        ]
        seconds: Dict[str, List[float]] = {name: [] for name, _ in uploads + downloads}
        for repeat in range(repeats):
            step = 1 if repeat % 2 == 0 else -1  # alternate which side goes first
            for name, action in uploads[::step] + downloads[::step]:
                gc.collect()
                session.ping()  # sends pending releases, so the board frees the last upload outside the timing
                seconds[name].append(timed(action))
        return {name: throughput_stats(nbytes, values) for name, values in seconds.items()}

    def profile_calls(self, count: int) -> str:
        """cProfile of the client side of ``count`` no-op calls with a signature."""
        profiler = cProfile.Profile()
        call = self.noop_signature
        profiler.enable()
        for _ in range(count):
            call()
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        return out.getvalue()


def ratios(calls: Dict[str, Dict[str, float]], transfers: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
    """Farm against raw: on medians (judged against the targets), with the best batches or repeats alongside."""
    result: Dict[str, Dict[str, Any]] = {}
    for direction in ("upload", "download"):
        farm_side, raw_side = transfers["farm_" + direction], transfers["raw_" + direction]
        value = farm_side["median_mbps"] / raw_side["median_mbps"]
        result[direction + "_vs_raw"] = {
            "ratio": value,
            "ratio_best": farm_side["best_mbps"] / raw_side["best_mbps"],
            "target": THROUGHPUT_TARGET,
            "target_kind": ">=",
            "pass": value >= THROUGHPUT_TARGET,
        }
    raw_call = calls["raw_pingpong"]
    for name in ("farm_noop_signature", "farm_noop_no_signature"):
        value = calls[name]["median_us"] / raw_call["median_us"]
        result[name + "_vs_raw_pingpong"] = {
            "ratio": value,
            "ratio_mean": calls[name]["mean_us"] / raw_call["mean_us"],
            "ratio_best": calls[name]["min_us"] / raw_call["min_us"],
            "target": CALL_TARGET,
            "target_kind": "<=",
            "pass": value <= CALL_TARGET,
        }
    return result


def report(results: Dict[str, Any]) -> str:
    calls, transfers, ratio = results["calls"], results["transfers"], results["ratios"]
    machine, config = results["machine"], results["config"]
    lines = [
        "",
        "machine: " + machine_line(machine),
        "config:  %.1f MB arrays (%g MiB), %d repeats; %d calls per variant in %d batches; CPU pinning: %s"
        % (
            config["bytes"] / MB,
            config["size_mib"],
            config["repeats"],
            config["calls"],
            config["batches"],
            config["pin"],
        ),
        "",
        "%-46s %12s %12s %12s" % ("round trip (us per call)", "mean", "median", "min"),
    ]
    labels = {
        "raw_pingpong": "raw socket 8-byte ping-pong",
        "farm_ping": "farm session.ping()",
        "farm_noop_signature": "farm noop() with signature",
        "farm_noop_no_signature": "farm noop() without signature",
    }
    for name, label in labels.items():
        row = calls[name]
        lines.append("%-46s %12.1f %12.1f %12.1f" % (label, row["mean_us"], row["median_us"], row["min_us"]))
    lines += ["", "%-46s %12s %12s" % ("throughput (MB/s)", "best", "median")]
    labels = {
        "raw_upload": "raw socket, host -> peer",
        "farm_upload": "farm session.array(x) (upload)",
        "farm_copyfrom": "farm remote_array.copyfrom(x) (for reference)",
        "raw_download": "raw socket, peer -> host",
        "farm_download": "farm remote_array.numpy() (download)",
    }
    for name, label in labels.items():
        row = transfers[name]
        lines.append("%-46s %12.1f %12.1f" % (label, row["best_mbps"], row["median_mbps"]))
    lines += ["", "%-46s %12s %12s %12s %8s" % ("ratio farm / raw", "median", "best", "target", "median")]
    labels = {
        "upload_vs_raw": "upload / raw",
        "download_vs_raw": "download / raw",
        "farm_noop_signature_vs_raw_pingpong": "noop call (signature) / raw ping-pong",
        "farm_noop_no_signature_vs_raw_pingpong": "noop call (no signature) / raw ping-pong",
    }
    for name, label in labels.items():
        row = ratio[name]
        lines.append(
            "%-46s %12.2f %12.2f %12s %8s"
            % (
                label,
                row["ratio"],
                row["ratio_best"],
                "%s %.1f" % (row["target_kind"], row["target"]),
                "PASS" if row["pass"] else "MISS",
            )
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as workdir:
        bench = Bench(args, workdir)
        profile = ""
        try:
            bench.start()
            calls = bench.measure_calls()
            transfers = bench.measure_transfers()
            if args.profile:
                profile = bench.profile_calls(args.profile)
        except BaseException:
            tail = bench.board_log_tail()
            if tail:
                logger.error("board log (end):\n%s", tail)
            raise
        finally:
            stopped = bench.stop()
        if not stopped:
            raise RuntimeError("could not stop the board or the raw peer cleanly (see the log)")
    results: Dict[str, Any] = {
        "machine": machine_info(numpy=np.__version__),
        "config": {
            "size_mib": args.size_mib,
            "bytes": bench.nbytes,
            "calls": args.calls,
            "batches": max(1, min(args.batches, args.calls)),
            "repeats": args.repeats,
            "pin": args.pin,
        },
        "calls": calls,
        "transfers": transfers,
        "elapsed_s": time.monotonic() - started,
    }
    results["ratios"] = ratios(calls, transfers)
    if profile:
        results["client_profile"] = profile
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=64, help="array size for the transfers (default: 64)")
    parser.add_argument("--calls", type=int, default=20000, help="calls per call variant (default: 20000)")
    parser.add_argument(
        "--batches", type=int, default=100, help="timed batches the calls are split into (default: 100)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed transfers per direction and side (default: 5)")
    parser.add_argument(
        "--pin",
        choices=["same", "none", "split"],
        default="same",
        help="CPU placement: same (default) puts this process, the board and the raw peer on one CPU, so that "
        "both sides run alike; none leaves placement to the scheduler, which may put the raw pair on one CPU and "
        "the farm pair on two; split puts this process on one CPU and the board and the raw peer on another",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also cProfile N no-op calls on the client and print it"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.size_mib <= 0 or args.calls < 1 or args.batches < 1 or args.repeats < 1 or args.profile < 0:
        parser.error("--size-mib, --calls, --batches and --repeats must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that the board and the peer are stopped on SIGTERM too
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(args)
    text = report(results)
    if results.get("client_profile"):
        text += "\nclient-side profile of %d no-op calls:\n%s" % (args.profile, results["client_profile"])
    publish(results, text, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
