"""Session start-up benchmark: what opening a session costs on a board, two checkouts of ``farm`` side by side.

For each checkout (``--before`` and ``--after``, directories that hold a ``farm`` package) it starts a board
server on loopback with that checkout first on the board's PYTHONPATH, and, for each architecture given
with ``--emulated``, that checkout's packed server under qemu-user. The client is this checkout's (the
protocol is the same). Rounds take turns between the boards; each round opens ``--per-round`` sessions
on a board one after the other and times, for each, from ``connect()`` to the answer of the first
``ping()`` ("open") and to the return of ``close()``, once the board is free again ("open + close")::

    python benchmarks/bench_sessions.py --before ../main --after . [--rounds 20] [--per-round 10]
                                        [--emulated aarch64] [--json out.json]

Started as root, each board's daemon runs sessions the way its code does (with the session spawner and
``--session-user``: as ``nobody``). Times are medians in milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from common import exit_on_signal, machine_info, machine_line, publish

import farm  # noqa: E402  (common puts this checkout first on the path)
from farm.ops.processes import DaemonProcess, board_command  # noqa: E402

logger = logging.getLogger("bench_sessions")

HOST = "127.0.0.1"
KEY = "bench"


def board_env(checkout: Optional[str]) -> Dict[str, str]:
    """A board's environment: ``checkout`` alone on its path (None: none, for a packed server)."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    if checkout is not None:
        env["PYTHONPATH"] = checkout
    return env


def pack(checkout: str, output: str) -> str:
    """``checkout``'s packed server, made by that checkout's own ``farm.pack``."""
    code = "import sys; from farm.pack import pack_server; pack_server(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, output], env=board_env(checkout), check=True, timeout=300)
    return output


def start(name: str, server: Sequence[str], env: Dict[str, str], workdir: str) -> DaemonProcess:
    argv = board_command(KEY, HOST, 0, extra=["--name", name], server=server)
    board = DaemonProcess(argv, os.path.join(workdir, name + ".log"), env, cwd=workdir)
    try:
        board.wait_for_bind(timeout=120)
    except BaseException:
        board.stop()
        raise
    return board


def open_sessions(board: DaemonProcess, count: int) -> List[Tuple[float, float]]:
    """Seconds to the first answer, and to the end of close(), of ``count`` sessions in a row."""
    host, port = board.address  # type: ignore[misc]
    times = []
    for _ in range(count):
        began = time.perf_counter()
        session = farm.connect(host, port, key=KEY, connect_timeout=60)
        session.ping()
        answered = time.perf_counter()
        session.close()
        times.append((answered - began, time.perf_counter() - began))
    return times


def measure(boards: Dict[str, DaemonProcess], rounds: int, per_round: int) -> Dict[str, Dict[str, float]]:
    names = list(boards)
    for name in names:
        open_sessions(boards[name], 2)  # warm-up
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            times[name] += open_sessions(boards[name], per_round)
    return {
        name: {
            "open_ms": statistics.median(t[0] for t in values) * 1e3,
            "open_close_ms": statistics.median(t[1] for t in values) * 1e3,
            "sessions": len(values),
        }
        for name, values in times.items()
    }


def report(results: Dict[str, Any]) -> str:
    measured = results["measured"]
    lines = [machine_line(results["machine"]), "medians of %d sessions per board, ms" % results["config"]["sessions"]]
    header = ("board", "open: before / after", "open+close: before / after", "after / before")
    lines += ["", "%-10s %25s %25s %18s" % header]
    for where in results["config"]["boards"]:
        before, after = measured["before " + where], measured["after " + where]
        lines.append(
            "%-10s %25s %25s %18.2f"
            % (
                where,
                "%.2f / %.2f" % (before["open_ms"], after["open_ms"]),
                "%.2f / %.2f" % (before["open_close_ms"], after["open_close_ms"]),
                after["open_close_ms"] / before["open_close_ms"],
            )  # fmt: skip
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    began = time.monotonic()
    where = ["local", *args.emulated]
    boards: Dict[str, DaemonProcess] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as workdir:
        os.chmod(workdir, 0o755)  # the boards' sessions, as nobody, need not enter it; their work dirs are in TMPDIR
        try:
            for side, checkout in (("before", args.before), ("after", args.after)):
                boards[side + " local"] = start(side + "-local", [sys.executable, "-m", "farm.server"],
                                                board_env(checkout), workdir)  # fmt: skip
                for arch in args.emulated:
                    from farm.ops.emulators import python_command

                    archive = pack(checkout, os.path.join(workdir, "%s-server.pyz" % side))
                    boards["%s %s" % (side, arch)] = start(
                        "%s-%s" % (side, arch), [*python_command(arch), archive], board_env(None), workdir
                    )
            measured = measure(boards, args.rounds, args.per_round)
        finally:
            for board in boards.values():
                board.stop()
    return {
        "machine": machine_info(),
        "config": {
            "before": args.before,
            "after": args.after,
            "boards": where,
            "sessions": args.rounds * args.per_round,
        },
        "measured": measured,
        "elapsed_s": time.monotonic() - began,
    }


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the checkout measured first (a directory holding farm/)")
    parser.add_argument("--after", required=True, help="the checkout compared with it")
    parser.add_argument("--emulated", action="append", default=[], metavar="ARCH", help="also on this emulated board")
    parser.add_argument("--rounds", type=int, default=20, help="rounds, taking turns between boards (default: 20)")
    parser.add_argument("--per-round", type=int, default=10, help="sessions per board and round (default: 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if min(args.rounds, args.per_round) < 1:
        parser.error("--rounds and --per-round must be positive")
    args.before, args.after = os.path.abspath(args.before), os.path.abspath(args.after)
    for checkout in (args.before, args.after):
        if not os.path.isdir(os.path.join(checkout, "farm")):
            parser.error("%s holds no farm package" % checkout)
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
