"""Pipelined calls over a slow link: 1,000 no-op calls through a relay that delays each direction.

Side by side in each round, on two local boards (one reached directly, one through the relay): the calls
sent one after the other (each waits its round trip), the same calls pipelined (``submit``), one round trip
through the relay, and the calls pipelined on the direct connection (their own work, without the link). The
target: pipelined over the link within 2x of one round trip plus the calls' own work. TVM has no pipelined
calls; its calls are sequential, like ours one after the other.

    python benchmarks/bench_pipeline.py [--quick] [--delay-ms 1] [--calls 1000] [--json PATH]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import harness
from delay_relay import DelayRelay
from harness import Headline, Option, Scenario, Tool, interleaved, spread

import farm
from farm.ops.processes import start_board
from farm.ops.toolchain import compile_shared

NOOP_SOURCE = "int noop(void)\n{\n    return 0;\n}\n"
NOOP_SIGNATURE = "int noop(void)"
PINGS = 20  # round trips per round, their mean the round's figure
TARGET = 2.0  # pipelined over the link at most this multiple of one round trip plus the calls' own work


class State:
    """Two local boards, a session on one directly and on the other through the delay relay, each with its no-op."""

    def __init__(self) -> None:
        self.sessions: Dict[str, farm.RemoteSession] = {}
        self.noop: Dict[str, farm.RemoteFunction] = {}


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    source = Path(workdir, "noop.c")
    source.write_text(NOOP_SOURCE)
    library = compile_shared([str(source)], os.path.join(workdir, "libnoop.so"))
    boards = [
        start_board(os.path.join(workdir, "board-%d.log" % n), key="bench", env=harness.child_env()) for n in (1, 2)
    ]
    relay = DelayRelay(boards[1].address, args.delay_ms / 1e3)
    state = State()
    try:
        for name, address in (("direct", boards[0].address), ("link", relay.address)):
            session = state.sessions[name] = farm.connect(*address, key="bench")
            session.upload(library)
            state.noop[name] = session.load_module("libnoop.so").get_function("noop", NOOP_SIGNATURE)
        yield state
    finally:
        for session in state.sessions.values():
            session.close()
        relay.close()
        for board in boards:
            board.stop()


def pipelined(noop: farm.RemoteFunction, count: int) -> None:
    futures = [noop.submit() for _ in range(count)]
    futures[-1].result()


def measure(state: State, args: Any) -> Dict[str, Any]:
    link, direct = state.noop["link"], state.noop["direct"]
    actions = {
        "link_sequential": lambda: [link() for _ in range(args.calls)],
        "link_pipelined": lambda: pipelined(link, args.calls),
        "direct_pipelined": lambda: pipelined(direct, args.calls),
        "link_round_trip": lambda: [state.sessions["link"].ping() for _ in range(PINGS)],
    }
    for action in actions.values():
        action()  # warm-up
    seconds = interleaved(actions, args.rounds)
    seconds["link_round_trip"] = [value / PINGS for value in seconds["link_round_trip"]]
    floor = [trip + own for trip, own in zip(seconds["link_round_trip"], seconds["direct_pipelined"])]
    ratios = [piped / low for piped, low in zip(seconds["link_pipelined"], floor)]
    figures = {name: spread(values, 1e3) for name, values in seconds.items()}
    figures["floor"] = spread(floor, 1e3)
    figures["pipelined_vs_floor"] = spread(ratios)
    figures["met"] = statistics.median(ratios) <= TARGET
    return figures


def report(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [
        ("%d calls one after the other, over the link" % args.calls, "link_sequential"),
        ("%d calls pipelined, over the link" % args.calls, "link_pipelined"),
        ("one round trip over the link (the mean of %d pings)" % PINGS, "link_round_trip"),
        ("%d calls pipelined, direct (their own work)" % args.calls, "direct_pipelined"),
        ("floor: one round trip + their own work", "floor"),
    ]
    lines = harness.table(["", "median ms", "min", "max"],
                          [(label, "%.2f" % figures[key]["median"], "%.2f" % figures[key]["min"],
                            "%.2f" % figures[key]["max"]) for label, key in rows])  # fmt: skip
    ratio = figures["pipelined_vs_floor"]
    lines.append("")
    lines.append("Pipelined over the link / floor, per round: median %.2f (min %.2f, max %.2f); target <= %g."
                 % (ratio["median"], ratio["min"], ratio["max"], TARGET))  # fmt: skip
    return lines


def headline(results: Dict[str, Any]) -> List[Headline]:
    figures = results["scenarios"].get("pipeline")
    if not figures:
        return []
    config = results["config"]
    return [
        Headline(
            "%d no-op calls, %g ms added each way: pipelined" % (config["calls"], config["delay_ms"]),
            "%.1f ms" % figures["link_pipelined"]["median"],
            anchor="%.0f ms (one after the other)" % figures["link_sequential"]["median"],
            limit="%.1f ms (one round trip + the calls' work)" % figures["floor"]["median"],
            ratio="%.2f" % figures["pipelined_vs_floor"]["median"],
            target="<= %g x limit" % TARGET,
            met=figures["met"],
        )
    ]


TOOL = Tool(
    name="bench_pipeline",
    description=__doc__.split("\n\n")[0],
    options={
        "calls": Option(1000, 100, "no-op calls per round"),
        "delay_ms": Option(1.0, 1.0, "milliseconds the relay adds in each direction", float),
    },
    rounds=Option(5, 2, "timed rounds"),
    setup=setup,
    scenarios=[
        Scenario(
            "pipeline",
            measure,
            report,
            anchor="the same calls one after the other",
            limit="one round trip plus the calls' own work",
            target="<= %g x" % TARGET,
        )
    ],  # fmt: skip
    headline=headline,
    pin="none",
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
