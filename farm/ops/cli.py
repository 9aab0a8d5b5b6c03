"""The ``farm`` command: one subcommand per daemon or task."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from ..board import daemon as server
from ..client import query
from ..proxy import server as proxy
from ..tracker import server as tracker
from . import bench, build, demo, emulators, fuzz, native, pack, up

# Subcommands: each module offers add_arguments(parser) and run(args), and imports
# host-only packages (numpy) inside run, so `farm server` works on a bare board Python.
COMMANDS = (
    ("server", server, "run a board server (same as python -m farm.server)"),
    ("tracker", tracker, "run a tracker (same as python -m farm.tracker)"),
    ("proxy", proxy, "run a proxy for boards behind NAT (same as python -m farm.proxy)"),
    ("up", up, "run the farm an inventory declares, in the foreground, until Ctrl-C"),
    ("status", query, "show a farm's boards, who holds them, and the queues"),
    ("query", query, "the same as status (python -m farm.query)"),
    ("demo", demo, "start a board, run a compiled kernel on it and check it against numpy"),
    ("build", build, "compile C sources into a cached shared library for a target or a board key"),
    ("build-server", native, "build the native board server (C, no Python on the board) for a target"),
    ("fuzz", fuzz, "run the native board server's input parsers under clang's libFuzzer"),
    ("emulators", emulators, "install and inspect qemu-user, the cross compilers and the target Pythons"),
    ("bench", bench, "print a saved benchmark run, or compare two and flag the regressions"),
    ("pack-server", pack, "pack the board server (and cloudpickle) into one zipapp for a bare board Python"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="Run and use a farm of remote boards.")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
