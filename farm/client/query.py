"""``farm status --tracker HOST:PORT`` (or ``farm query``): the tracker's boards and queues.

By default it prints, byte for byte, what TVM's ``python -m tvm.exec.query_rpc_tracker`` prints for
the same tracker (Server List, Queue Status), so scripts and eyes used to TVM's tool read it as they
are. ``--wide`` adds what TVM's layout cannot show: who holds each board and for how long, and a
key's boards as the tracker counts them (held ones and a proxy's too). ``--json`` prints the raw
summary for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from ..logs import escape_control
from ..net.secret import add_secret_argument, secret_from
from ..net.sockets import parse_address
from ..net.tls import TlsConfig, add_tls_arguments
from ..protocol.tracker import OMITTED
from .tracker import TrackerError, connect_tracker

#: The environment variable the pytest plugin also reads for the farm's tracker.
TRACKER_ENV = "REMOTEDEV_TRACKER"


def format_summary(summary: Dict[str, Any], now: Optional[float] = None, wide: bool = False) -> str:
    """The Server List and Queue Status tables of a tracker summary, as TVM's ``text_summary`` lays them out.

    A key's ``total`` is, as in TVM, the boards listed under it in the Server List. With ``wide``,
    each held board's row names its holder, and ``total`` is the tracker's own count. Text that peers
    supplied (keys, addresses, user names) is shown with its control characters escaped, so no key
    can forge a row or send the terminal codes.
    """
    now = time.time() if now is None else now
    lines = ["Server List", "-" * 30, "server-address           key", "-" * 30]
    listed: Dict[str, int] = {}  # key -> boards in the Server List
    for server in sorted(summary.get("server_info", []), key=lambda item: _shown(item.get("key", ""))):
        key = _shown(server.get("key", ""))
        board_key = key.split(":")[1] if ":" in key else key  # "server:rasp4" -> "rasp4"
        listed[board_key] = listed.get(board_key, 0) + 1
        address = server.get("addr")
        address = ":".join(_shown(part) for part in address) if isinstance(address, list) else _shown(address or "")
        line = "%-21s    %s" % (address, key)
        if wide and server.get("state") == "held":
            since = server.get("since")
            held_for = " for %.0f s" % (now - since) if _is_number(since) else ""
            line += "    held by %s%s" % (_shown(server.get("held_by") or "a client"), held_for)
        lines.append(line)
    lines += ["-" * 30, ""]
    queues = {_shown(key): queue for key, queue in summary.get("queue_info", {}).items()}
    width = max([len(key) for key in queues] + [0])
    title = "%-*s   total  free  pending" % (width, "key")
    rule = "-" * (len(title) + 1)  # TVM measures the title with its line end
    lines += ["Queue Status", rule, title, rule]
    for key in sorted(queues):
        free, pending = queues[key].get("free", 0), queues[key].get("pending", 0)
        total = queues[key].get("total", free) if wide else listed.get(key, 0)
        if total or pending:
            lines.append("%-*s   %-5d  %-4d  %-7d" % (width, key, total, free, pending))
    lines.append(rule)
    return "\n".join(lines) + "\n"


def omitted_note(summary: Dict[str, Any]) -> str:
    """What the summary left out to stay within the tracker's message limit ("" if nothing)."""
    omitted = summary.get(OMITTED) or {}
    if not omitted:
        return ""
    return "%s key(s) and %s board(s) not shown: the summary reached the tracker's size limit" % (
        omitted.get("queue_info", 0),
        omitted.get("server_info", 0),
    )


def _shown(value: Any) -> str:
    """A peer's value as one line of text."""
    return escape_control(str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracker", metavar="HOST:PORT", default=os.environ.get(TRACKER_ENV),
                        help="the tracker (default: $%s, else --host and --port)" % TRACKER_ENV)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="the tracker's address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9190, help="the tracker's port (default: 9190)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "-w", "--wide", action="store_true", help="also who holds each board, and the tracker's counts"
    )
    add_secret_argument(parser)
    add_tls_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.tracker:
        try:
            args.host, args.port = parse_address(args.tracker)
        except ValueError as exc:
            print("farm query: --tracker: %s" % exc, file=sys.stderr)
            return 2
    try:
        secret = secret_from(args.secret_file)
        with connect_tracker(args.host, args.port, secret=secret, tls=TlsConfig.from_args(args)) as tracker:
            summary = tracker.summary()
    except (TrackerError, ValueError) as exc:  # ValueError: an unusable secret file
        print("farm query: %s" % exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    note = omitted_note(summary)
    if note:  # on stderr: the tables stay TVM's
        print("farm query: %s" % note, file=sys.stderr)
    print("Tracker address %s:%d\n" % (args.host, args.port))
    print(format_summary(summary, wide=args.wide))  # with TVM's blank line after the tables
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.query", description="Show a tracker's boards and queues.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
