"""Pipelined calls over a slow link: 1,000 no-op calls through a relay that delays each direction.

Side by side in each round, on two local boards (one reached directly, one through the relay): the calls sent one
after the other over the link (each waits its round trip), the same calls pipelined (``submit``), one round trip
over the link (the mean of 20 pings), and the calls pipelined on the direct connection (their own work). Target:
pipelined over the link within 2x of the floor, one round trip plus the calls' own work. TVM has no pipelined calls.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import harness
from bench_regression import KEY, load_function, local_board
from harness import Headline, Option, Scenario, Tool, interleaved, spread

import farm

NOOP_SOURCE = "int noop(void)\n{\n    return 0;\n}\n"
PINGS = 20  # round trips per round, their mean the round's figure
TARGET = 2.0  # pipelined over the link at most this multiple of one round trip plus the calls' own work


class DelayRelay:
    """A TCP relay on 127.0.0.1 to ``target`` that holds every chunk ``delay`` seconds in each direction: a slow link
    where the kernel has no netem. Order is kept; bandwidth is not limited. Two threads per direction."""

    def __init__(self, target: Tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: Tuple[str, int] = self.listener.getsockname()[:2]
        self.sockets = [self.listener]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return  # closed
            far = socket.create_connection(self.target)
            for sock in (near, far):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [near, far]
            self.pump(near, far)
            self.pump(far, near)

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        """One thread receives and stamps each chunk, the other sends it when its time has come (b"": the end)."""
        chunks: queue.Queue[Tuple[float, bytes]] = queue.Queue()

        def receive() -> None:
            data = b"start"
            while data:
                try:
                    data = source.recv(1 << 16)
                except OSError:
                    data = b""
                chunks.put((time.monotonic() + self.delay, data))

        def send() -> None:
            data = b"start"
            with contextlib.suppress(OSError):
                while data:
                    due, data = chunks.get()
                    time.sleep(max(0.0, due - time.monotonic()))
                    if data:
                        sink.sendall(data)
                    else:
                        sink.shutdown(socket.SHUT_WR)

        for work in (receive, send):
            threading.Thread(target=work, daemon=True).start()

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[Dict[str, farm.RemoteFunction]]:
    """The no-op on two local boards, one reached directly and the other through the delay relay."""
    source = Path(workdir, "noop.c")
    source.write_text(NOOP_SOURCE)
    with contextlib.ExitStack() as stack:
        relay = DelayRelay(local_board(stack, workdir, "board-link"), args.delay_ms / 1e3)
        stack.callback(relay.close)
        noop = {}
        for name, address in (("direct", local_board(stack, workdir, "board-direct")), ("link", relay.address)):
            session = stack.enter_context(farm.connect(*address, key=KEY))
            library = os.path.join(workdir, "libnoop-%s.so" % name)
            noop[name] = load_function(session, library, str(source), "noop", "int noop(void)")
        yield noop


def pipelined(noop: farm.RemoteFunction, count: int) -> None:
    futures = [noop.submit() for _ in range(count)]
    futures[-1].result()


def measure(noop: Dict[str, farm.RemoteFunction], args: Any) -> Dict[str, Any]:
    link, direct = noop["link"], noop["direct"]
    actions = {
        "link_sequential": lambda: [link() for _ in range(args.calls)],
        "link_pipelined": lambda: pipelined(link, args.calls),
        "direct_pipelined": lambda: pipelined(direct, args.calls),
        "link_round_trip": lambda: [link.session.ping() for _ in range(PINGS)],
    }
    for action in actions.values():
        action()  # warm-up
    seconds = interleaved(actions, args.rounds)
    seconds["link_round_trip"] = [value / PINGS for value in seconds["link_round_trip"]]
    floor = [trip + own for trip, own in zip(seconds["link_round_trip"], seconds["direct_pipelined"])]
    ratios = [piped / low for piped, low in zip(seconds["link_pipelined"], floor)]
    figures = {name: spread(values, 1e3) for name, values in dict(seconds, floor=floor).items()}
    return dict(figures, pipelined_vs_floor=spread(ratios), met=statistics.median(ratios) <= TARGET)


def report(figures: Dict[str, Any], args: Any) -> List[str]:
    """A row per figure, in ms (the last, pipelined over the link / the floor, a ratio)."""
    rows = [(name, *("%.2f" % row[k] for k in ("median", "min", "max")))
            for name, row in figures.items() if isinstance(row, dict)]  # fmt: skip
    title = "### %d no-op calls a round, %g ms added each way, %d rounds" % (args.calls, args.delay_ms, args.rounds)
    return [title, ""] + harness.table(["ms", "median", "min", "max"], rows) + ["", "target: ratio <= %g" % TARGET]


def headline(results: Dict[str, Any]) -> List[Headline]:
    figures, config = results["scenarios"].get("pipeline"), results["config"]
    if not figures:
        return []
    medians = {name: row["median"] for name, row in figures.items() if isinstance(row, dict)}
    label = "%d no-op calls, %g ms added each way: pipelined" % (config["calls"], config["delay_ms"])
    return [Headline(label, "%.1f ms" % medians["link_pipelined"],
                     anchor="%.0f ms (one after the other)" % medians["link_sequential"],
                     limit="%.1f ms (one round trip + the calls' work)" % medians["floor"],
                     ratio="%.2f" % medians["pipelined_vs_floor"], target="<= %g x limit" % TARGET,
                     met=figures["met"])]  # fmt: skip


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
        Scenario("pipeline", measure, report, anchor="the same calls one after the other",
                 limit="one round trip plus the calls' own work", target="<= %g x" % TARGET),
    ],
    headline=headline,
    pin="none",
)  # fmt: skip

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
