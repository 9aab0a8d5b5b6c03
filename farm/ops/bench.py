"""``farm bench``: print a saved benchmark run, or compare two."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .benchruns import DEFAULT_STORAGE, BenchRunError, format_run, load_run
from .regression import FailSpec, FailSpecError, compare, format_comparison, regressions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = _action(actions, "show", "print a saved run: each result's median, spread, repeats and noise")
    show.add_argument("name", nargs="?", metavar="NAME", help="a run's name or file (default: the latest run)")
    diff = _action(actions, "compare", "compare run B with the baseline run A, result by result (test and key)")
    diff.add_argument("baseline", metavar="A", help="the baseline run's name or file")
    diff.add_argument("candidate", metavar="B", help="the run to judge, by name or file")
    diff.add_argument(
        "--fail",
        type=_fail_spec,
        metavar="STAT:THRESHOLD",
        help="exit with status 1 on a regression beyond this threshold: median:10%%, mean:5%%, min:0.002 (seconds)",
    )
    for sub in (show, diff):
        sub.add_argument(
            "--storage", default=DEFAULT_STORAGE, metavar="DIR", help="where runs are saved (%(default)s)"
        )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.action == "show":
            sys.stdout.write(format_run(load_run(args.storage, args.name)))
            return 0
        return _compare(args)
    except BenchRunError as exc:
        print("farm bench: error: %s" % exc, file=sys.stderr)
        return 2


def _compare(args: argparse.Namespace) -> int:
    baseline = load_run(args.storage, args.baseline)
    candidate = load_run(args.storage, args.candidate)
    comparisons = compare(baseline, candidate, args.fail, include_gone=True)
    print("baseline %s (%s), candidate %s (%s)" % (baseline.name, baseline.path, candidate.name, candidate.path))
    sys.stdout.write(format_comparison(comparisons))
    found = regressions(comparisons)
    if args.fail is None:
        return 0
    print("%d regression(s) beyond %s" % (len(found), args.fail))
    return 1 if found else 0


def _fail_spec(text: str) -> FailSpec:
    try:
        return FailSpec.parse(text)
    except FailSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return actions.add_parser(name, help=help_text, description=help_text)
