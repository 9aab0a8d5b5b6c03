"""TLS benchmark: what TLS costs a session, against a plain board, side by side in one run.

Two boards run on loopback, one plain and one with TLS (certificates made for
the run), and one client session is open on each. Interleaved, so that machine
noise hits both alike, it measures:

* opening and closing a session (TCP connect, TLS handshake, hello, close);
* the round trip of a call to a no-op native function with a signature;
* upload (``session.array(x)``) and download (``remote.numpy()``) of a float32
  array (64 MiB by default): under TLS the board's daemon relays the bytes.

Then prints a table with the ratios TLS / plain::

    python benchmarks/bench_tls.py [--size-mib 64] [--calls 5000] [--sessions 100] [--repeats 5] [--json out.json]

All processes share one CPU (as ``bench_dataplane.py --pin same``). Certificates
are made with the test suite's helper (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from bench_dataplane import NOOP_SIGNATURE, NOOP_SOURCE, call_stats, throughput_stats, timed
from common import PROJECT, child_env, exit_on_signal, machine_info, machine_line, publish, tls_files  # noqa: E402

import farm  # noqa: E402
from farm.net.tls import TlsConfig  # noqa: E402
from farm.ops.processes import DaemonProcess, start_board  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

logger = logging.getLogger("bench_tls")

HOST = "127.0.0.1"
KEY = "bench"
SIDES = ("plain", "tls")


class Side:
    """One board and the client's TLS configuration for it; then an open session with a loaded no-op."""

    def __init__(self, name: str, board: DaemonProcess, tls: TlsConfig) -> None:
        self.name = name
        self.board = board
        self.tls = tls
        self.session: Optional[farm.RemoteSession] = None
        self.noop: Any = None

    def open_session(self, library: str) -> farm.RemoteSession:
        """The session the calls and transfers use (the board serves nobody else meanwhile)."""
        self.session = self.connect()
        self.noop = self.session.load_module(self.session.upload(library)).get_function("noop", NOOP_SIGNATURE)
        if self.noop() != 0:
            raise RuntimeError("noop() did not return 0 on the %s board" % self.name)
        return self.session

    def connect(self) -> farm.RemoteSession:
        host, port = self.board.address  # type: ignore[misc]
        return farm.connect(host, port, key=KEY, tls=self.tls)

    def open_and_close(self, count: int) -> None:
        for _ in range(count):
            self.connect().close()

    def calls(self, count: int) -> None:
        for _ in range(count):
            self.noop()

    def stop(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
        finally:
            self.board.stop()


def interleaved(
    actions: Dict[str, Callable[[], Any]], rounds: int, before: Optional[Dict[str, Callable[[], Any]]] = None
) -> Dict[str, List[float]]:
    """Seconds each action took in each round, alternating which goes first; ``before[name]()`` runs untimed
    ahead of each."""
    seconds: Dict[str, List[float]] = {name: [] for name in actions}
    names = list(actions)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            gc.collect()
            if before is not None:
                before[name]()
            seconds[name].append(timed(actions[name]))
    return seconds


def measure(sides: Dict[str, Side], library: str, args: argparse.Namespace) -> Dict[str, Dict[str, Dict[str, float]]]:
    nbytes = int(args.size_mib * (1 << 20)) // 4 * 4
    data = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    batches = max(1, min(args.batches, args.calls))
    per_batch = max(1, args.calls // batches)
    session_rounds = max(1, min(args.batches, args.sessions))
    per_round = max(1, args.sessions // session_rounds)
    logger.info("sessions: %d rounds of %d open+close per side", session_rounds, per_round)
    opened = interleaved({n: (lambda s=s: s.open_and_close(per_round)) for n, s in sides.items()}, session_rounds)
    sessions = {name: side.open_session(library) for name, side in sides.items()}
    logger.info("calls: %d batches of %d per side", batches, per_batch)
    for side in sides.values():
        side.calls(min(per_batch, 500))  # warm-up
    called = interleaved({n: (lambda s=s: s.calls(per_batch)) for n, s in sides.items()}, batches)
    logger.info("transfers: %.1f MB each way, %d repeats per side", nbytes / 1e6, args.repeats)
    resident = {}
    for name, session in sessions.items():
        resident[name] = session.array(data)
        if not np.array_equal(resident[name].numpy(), data):
            raise RuntimeError("the array read back from the %s board differs from the one sent" % name)
    # ping() sends pending releases, so the board frees the last upload before the clock starts
    pings = {name: session.ping for name, session in sessions.items()}
    uploads = interleaved({n: (lambda s=s: s.array(data)) for n, s in sessions.items()}, args.repeats, pings)
    downloads = interleaved({n: (lambda n=n: resident[n].numpy()) for n in sides}, args.repeats)
    return {
        "sessions": {n: session_stats([t / per_round for t in opened[n]]) for n in sides},
        "calls": {n: call_stats([t / per_batch for t in called[n]]) for n in sides},
        "upload": {n: throughput_stats(nbytes, uploads[n]) for n in sides},
        "download": {n: throughput_stats(nbytes, downloads[n]) for n in sides},
    }


def session_stats(per_session_seconds: Sequence[float]) -> Dict[str, float]:
    milli = [value * 1e3 for value in per_session_seconds]
    return {"median_ms": statistics.median(milli), "min_ms": min(milli), "rounds": len(milli)}


def ratios(measured: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, float]:
    """TLS / plain: times for sessions and calls (above 1: slower), rates for transfers (below 1: slower)."""
    return {
        "session_time": measured["sessions"]["tls"]["median_ms"] / measured["sessions"]["plain"]["median_ms"],
        "call_time": measured["calls"]["tls"]["median_us"] / measured["calls"]["plain"]["median_us"],
        "upload_rate": measured["upload"]["tls"]["median_mbps"] / measured["upload"]["plain"]["median_mbps"],
        "download_rate": measured["download"]["tls"]["median_mbps"] / measured["download"]["plain"]["median_mbps"],
    }


def report(results: Dict[str, Any]) -> str:
    measured, ratio = results["measured"], results["ratios"]
    rows = [
        ("open + close a session", "%.2f ms" % measured["sessions"]["plain"]["median_ms"],
         "%.2f ms" % measured["sessions"]["tls"]["median_ms"], "%.2f" % ratio["session_time"]),
        ("no-op call round trip", "%.1f us" % measured["calls"]["plain"]["median_us"],
         "%.1f us" % measured["calls"]["tls"]["median_us"], "%.2f" % ratio["call_time"]),
        ("upload", "%.0f MB/s" % measured["upload"]["plain"]["median_mbps"],
         "%.0f MB/s" % measured["upload"]["tls"]["median_mbps"], "%.2f" % ratio["upload_rate"]),
        ("download", "%.0f MB/s" % measured["download"]["plain"]["median_mbps"],
         "%.0f MB/s" % measured["download"]["tls"]["median_mbps"], "%.2f" % ratio["download_rate"]),
    ]  # fmt: skip
    lines = [machine_line(results["machine"]), "medians; %(size_mib)g MiB arrays" % results["config"], ""]
    lines.append("%-24s %12s %12s %12s" % ("", "plain", "TLS", "TLS / plain"))
    lines += ["%-24s %12s %12s %12s" % row for row in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.monotonic()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the boards inherit it
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as workdir:
        files = tls_files(workdir)
        source = os.path.join(workdir, "noop.c")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(NOOP_SOURCE)
        library = compile_shared([source], os.path.join(workdir, "libnoop.so"))
        daemon_tls = files.daemon()
        sides: Dict[str, Side] = {}
        try:
            for name in SIDES:
                env = dict(child_env(), **(daemon_tls.as_env() if name == "tls" else {}))
                log = os.path.join(workdir, name + ".log")
                board = start_board(log, key=KEY, host=HOST, port=0, env=env, cwd=str(PROJECT))
                sides[name] = Side(name, board, files.client() if name == "tls" else TlsConfig())
            measured = measure(sides, library, args)
        finally:
            for side in sides.values():
                side.stop()
    results: Dict[str, Any] = {
        "machine": machine_info(numpy=np.__version__),
        "config": {k: getattr(args, k) for k in ("size_mib", "calls", "sessions", "batches", "repeats")},
        "measured": measured,
        "elapsed_s": time.monotonic() - started,
    }
    results["ratios"] = ratios(measured)
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=64, help="array size for the transfers (default: 64)")
    parser.add_argument("--calls", type=int, default=5000, help="no-op calls per side (default: 5000)")
    parser.add_argument("--sessions", type=int, default=100, help="sessions opened and closed per side (default: 100)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches of calls and sessions (default: 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed transfers per direction and side (default: 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.size_mib <= 0 or min(args.calls, args.sessions, args.batches, args.repeats) < 1:
        parser.error("--size-mib, --calls, --sessions, --batches and --repeats must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that the boards are stopped on SIGTERM too
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(args)
    publish(results, report(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
