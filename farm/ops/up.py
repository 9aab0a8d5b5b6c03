"""``farm up INVENTORY``: run a whole farm in the foreground until Ctrl-C or SIGTERM.

Starts the tracker, proxy and boards the inventory declares, waits until every
board has registered, prints what runs where, then watches the daemons and
restarts, with backoff, any that dies. On SIGINT or SIGTERM it stops them all,
each with its whole process group, and exits 0.

The farm secret (``--secret-file``) and TLS (``--tls-*``, field by field over
the inventory's ``tls`` block) are checked before any daemon starts and reach
every daemon through the environment (``REMOTEDEV_SECRET_FILE``,
``REMOTEDEV_TLS_*``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from ..net.secret import SECRET_ENV, add_secret_argument, load_secret
from ..net.tls import TlsConfig, add_tls_arguments
from .inventory import Inventory, inventory_path, load_inventory
from .launcher import FarmStack, StartInterrupted, external_board_command
from .processes import DaemonError

logger = logging.getLogger("farm.up")

#: How often the daemons are looked at.
WATCH_PERIOD = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", nargs="?", default="local",
                        help="an inventory file, or a built-in one: local (default), emulated")  # fmt: skip
    parser.add_argument("--logs", metavar="DIR", help="where the daemons' logs go (default: a new temporary dir)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for every board to register (default: 60)")  # fmt: skip
    parser.add_argument("--json-file", metavar="PATH", help="also write what runs where to this JSON file once up")
    add_secret_argument(parser)
    add_tls_arguments(parser)  # each overrides the inventory's tls block's field
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        inventory = _configure(args)
    except ValueError as exc:  # InventoryError among them
        print("farm up: %s" % exc, file=sys.stderr)
        return 2
    stack = FarmStack(inventory, args.logs or tempfile.mkdtemp(prefix="farm-up-"))
    stop = _StopRequest()
    previous = {number: signal.signal(number, stop.set) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            stack.start(args.timeout, stop)  # Ctrl-C while the boards register stops at once, not at --timeout
        except StartInterrupted:
            logger.info("stopped before every board had registered")
            print("farm up: stopped", flush=True)
            return 0
        except (DaemonError, OSError, RuntimeError) as exc:
            print("farm up: the farm of %s did not come up: %s" % (inventory.path, exc), file=sys.stderr)
            return 1
        try:
            described = stack.describe()
            print(format_description(described, stack.log_dir), flush=True)
            if args.json_file:
                _write_json(args.json_file, dict(described, logs=stack.log_dir))
            while True:
                time.sleep(WATCH_PERIOD)  # a signal's handler runs, then the sleep ends by its deadline
                if stop():
                    break
                stack.supervise()
            logger.info("stopping the farm")
        finally:
            stack.stop()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print("farm up: stopped", flush=True)
    return 0


def _configure(args: argparse.Namespace) -> Inventory:
    """The inventory with the options' TLS, its secret and TLS files checked and put in the environment of every
    daemon started here; InventoryError or ValueError saying what is wrong."""
    inventory = load_inventory(inventory_path(args.inventory))
    if args.timeout <= 0:
        raise ValueError("--timeout must be positive, got %g" % args.timeout)
    if args.secret_file:
        load_secret(args.secret_file)
        os.environ[SECRET_ENV] = os.path.abspath(args.secret_file)  # every daemon started here, and our own checks
    inventory = inventory.with_tls(TlsConfig.from_args(args))
    if inventory.tls is not None:
        inventory.tls.check(listens=True, dials=True)  # what the proxy and the boards load when they start
        os.environ.update(inventory.tls.as_env())  # likewise; the paths are absolute
    return inventory


class _StopRequest:
    """Set by SIGINT and SIGTERM, asked by the loops. A plain flag, not a threading.Event: the handler runs in
    the main thread between two bytecodes, and Event.set() there deadlocks when the signal came while the main
    thread was inside Event.wait() holding the event's lock (farm up then ignored every later signal too)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self, *_: object) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def format_description(described: Dict[str, Any], log_dir: str) -> str:
    """What runs where, for people: the tracker, the proxy, each board, the boards only expected, how to use it."""
    tracker = "%s:%d" % tuple(described["tracker"])
    lines = ["farm of %s is up" % described["inventory"], "  tracker  %s" % tracker]
    if described["proxy"]:
        lines.append("  proxy    %s:%d" % tuple(described["proxy"]))
    rows: List[Sequence[str]] = [("board", "key", "arch", "start", "pid")]
    for board in described["boards"]:
        start = board["start"] + (", via the proxy" if board["proxy"] else "")
        rows.append((board["name"], board["key"], str(board["arch"]), start, str(board["pid"])))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    tls = described.get("tls")
    for key, count in sorted(described["expected"].items()):
        command = external_board_command(tracker, key, tls is not None)
        lines.append("  expected: %d external board(s) of key %s (%s)" % (count, key, command))
    client = "--tracker %s" % tracker + "".join(
        " --tls-%s %s" % (name.replace("_", "-"), value) for name, value in sorted((tls or {}).items())
    )
    lines += [
        "  logs     %s" % log_dir,
        "use it:   pytest %s   |   farm status %s" % (client, client),
        "Ctrl-C stops the farm.",
    ]
    return "\n".join(lines)


def _write_json(path: str, data: Dict[str, Any]) -> None:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(partial, path)  # readers never see half a file


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="farm up", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
