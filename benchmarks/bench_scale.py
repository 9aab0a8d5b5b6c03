"""Scale: how the tracker's and a board's costs grow with the work, drawn as curves.

* **tracker**: a tracker process of this checkout and light peers in this process (one selector loop over raw
  sockets speaking TVM's tracker protocol, each peer from a loopback address of its own in 127.0.0.0/8): boards
  registered under one key and requests waiting for it. For each size, a steady stream of releases: a busy board
  offers itself again (PUT), the tracker hands it to the first waiting request, and that client asks again at
  once. Measured: from the offer (or the request, if it came later) to the assignment's arrival, p50 and p99; the
  tracker's resident memory per board and per waiting request; the time of a SUMMARY; the tracker's CPU time per
  1,000 hand-outs. Sizes: the two axes (more boards, with as few requests; more requests, with as few boards) and
  the diagonal (as many of each), each on a tracker of its own, grown in steps. ``--before DIR`` runs an older
  checkout's tracker through the same plans; ``--profile`` runs each tracker under cProfile.
* **board**: sessions one after the other on one board (connect, ``ping()``, close): sessions per second and the
  time to open one, as sessions go by; the resident and private memory of a session process; the daemon's
  memory as sessions go by. On a board of this checkout, and on emulated boards (``--emulated aarch64``: the
  packed server under qemu-user).

With matplotlib (the ``bench`` extra) each scenario draws its curves into ``--figures DIR`` as SVG.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import selectors
import socket
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import harness
from bench_dataplane import Side, board_env, pack
from bench_tracker import raise_fd_limit
from harness import Headline, Option, Scenario, Tool, table

from farm.net.tls import TlsConfig  # noqa: E402
from farm.ops.processes import DaemonProcess  # noqa: E402
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message  # noqa: E402

logger = logging.getLogger("bench_scale")

HOST = "127.0.0.1"
KEY = "scale"
DEADLINE = 60.0  # a tracker or board to start, a batch of peers to be answered, a SUMMARY
#: Peers connected at once: within the tracker's backlog of connections not yet accepted (128; a connection beyond
#: it waits a second for its SYN to be sent again) and its bound on connections that have proven nothing (512).
BATCH = 100
#: Descriptors left for everything but the peers' connections (listener, logs, the query connection...).
RESERVED_FDS = 64
LATENCY_TARGET_MS = 10.0  # request to assignment, p99, at the largest size
#: A per-event cost is taken as flat or logarithmic when, from the second largest size to the largest (ten
#: times more), it grows by at most 10**0.25 = 1.8 times (a cost of log n grows 1.33 times from 1,000 to 10,000).
FLAT_EXPONENT = 0.25
#: The plans: how many boards and waiting requests each step of a tracker's growth has, given the size and the
#: smallest size.
PLANS: Dict[str, Callable[[int, int], Tuple[int, int]]] = {
    "boards": lambda size, small: (size, small),
    "waiters": lambda size, small: (small, size),
    "diagonal": lambda size, small: (size, size),
}
Address = Tuple[str, int]


def loopback(number: int) -> str:
    """The ``number``-th address from 127.1.0.1 on (none ending in .0 or .255): a source address per peer."""
    high, low = divmod(number, 254)
    return "127.%d.%d.%d" % (1 + high // 256, high % 256, low + 1)


def sizes_arg(text: str) -> List[int]:
    return sorted({int(part) for part in text.split(",") if part})


# --- light peers -----------------------------------------------------------------------------------------


class Peer:
    """One connection to the tracker: a board (one offer at a time) or a client with queued requests."""

    __slots__ = ("sock", "reader", "port", "acks", "asked")

    def __init__(self, sock: socket.socket, port: int = 0) -> None:
        self.sock = sock
        self.reader = MessageReader(expect_magic=True)
        self.port = port  # a board's: where it says it serves (nobody listens there)
        self.acks = 0  # plain replies (SUCCESS) received
        self.asked: Deque[float] = deque()  # a client's: when each of its queued requests was sent, oldest first

    @property
    def board(self) -> bool:
        return self.port > 0


def acked(peers: List[Peer], count: int) -> bool:
    """Whether each of ``peers`` has had ``count`` plain replies."""
    return all(peer.acks >= count for peer in peers)


class Crowd:
    """Boards and clients on one selector loop, as light as a peer can be: see the module docstring.

    A client that is handed a board asks again at once; a board handed out stays busy until :meth:`release`.
    All requests have the same priority, so a connection's requests are served oldest first.
    """

    def __init__(self, tracker: Address, fd_budget: int) -> None:
        self.tracker = tracker
        self.fd_budget = fd_budget  # connections this process and the tracker may hold
        self.selector = selectors.DefaultSelector()
        self.boards: List[Peer] = []
        self.clients: List[Peer] = []
        self.requests = 0  # queued or served, counted once per client's request slot
        self.busy: Deque[Peer] = deque()  # boards handed out, the longest busy first
        self.offered: Dict[str, Tuple[Peer, float]] = {}  # match key -> its board, when it was offered
        self.latencies: Optional[List[float]] = None  # seconds, while a stream is measured
        self.handouts = 0
        self._addresses = itertools.count()
        self._offers = itertools.count()
        self._request = encode_message([Code.REQUEST, KEY, "scale", 1])

    @property
    def connections(self) -> int:
        return len(self.boards) + len(self.clients)

    def _connect(self, port: int = 0) -> Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((loopback(next(self._addresses)), 0))
            sock.settimeout(DEADLINE)
            sock.connect(self.tracker)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        peer = Peer(sock, port)
        self.selector.register(sock, selectors.EVENT_READ, peer)
        return peer

    def _offer(self, board: Peer) -> bytes:
        matchkey = "%s:%d" % (KEY, next(self._offers))
        self.offered[matchkey] = (board, time.perf_counter())
        return encode_message([Code.PUT, KEY, [board.port, matchkey]])

    def add_boards(self, count: int) -> None:
        """Register ``count`` more boards, free (UPDATE_INFO, PUT), in batches; return once the tracker has
        answered each (clients waiting take them meanwhile)."""
        for first in range(0, count, BATCH):
            batch = []
            for _ in range(min(BATCH, count - first)):
                board = self._connect(port=20000 + len(self.boards) % 40000)
                self.boards.append(board)
                batch.append(board)
                info = encode_message([Code.UPDATE_INFO, {"key": "server:" + KEY, "addr": [None, board.port]}])
                board.sock.sendall(encode_magic() + info + self._offer(board) + encode_message([Code.PING]))
            self.pump(functools.partial(acked, batch, 3), "%d boards are registered" % len(batch))

    def add_requests(self, count: int) -> int:
        """Queue ``count`` more requests, one per client connection unless descriptors run short (then as few
        per connection as fit); return once the tracker has taken each. The requests per connection."""
        room = self.fd_budget - self.connections
        if room < 1:
            raise RuntimeError("no descriptors left for clients (%d connections)" % self.connections)
        each = max(1, math.ceil(count / room))
        for first in range(0, count, BATCH * each):
            batch = []
            for number in range(min(BATCH, math.ceil((count - first) / each))):
                client = self._connect()
                self.clients.append(client)
                batch.append(client)
                asks = min(each, count - first - number * each)
                client.asked.extend([time.perf_counter()] * asks)
                client.sock.sendall(encode_magic() + self._request * asks + encode_message([Code.PING]))
                self.requests += asks
            self.pump(functools.partial(acked, batch, 1), "%d clients are queued" % len(batch))
        return each

    def settle(self) -> None:
        """Wait until every board offered is handed out (the clients take them, asking again each time)."""
        self.pump(lambda: not self.offered, "every board is handed out (%d offered)" % len(self.offered))

    def release(self) -> None:
        """The board busy for longest offers itself again."""
        board = self.busy.popleft()
        board.sock.sendall(self._offer(board))

    def _assigned(self, client: Peer, matchkey: str, now: float) -> None:
        board, offered = self.offered.pop(matchkey)
        asked = client.asked.popleft()
        if self.latencies is not None:
            self.latencies.append(now - max(offered, asked))
        self.handouts += 1
        self.busy.append(board)
        client.asked.append(time.perf_counter())
        client.sock.sendall(self._request)

    def poll(self, timeout: float) -> None:
        """Read whatever arrived within ``timeout`` seconds and act on it."""
        for key, _ in self.selector.select(timeout):
            peer: Peer = key.data
            data = peer.sock.recv(65536)
            now = time.perf_counter()
            if not data:
                raise RuntimeError("the tracker closed a %s's connection" % ("board" if peer.board else "client"))
            for message in peer.reader.feed(data):
                if message == Code.SUCCESS:
                    peer.acks += 1
                elif not peer.board and isinstance(message, list) and message[0] == Code.SUCCESS:
                    self._assigned(peer, message[1][2], now)
                else:
                    what = "board" if peer.board else "client"
                    raise RuntimeError("the tracker answered a %s with %.200r" % (what, message))

    def pump(self, done: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
        """Poll until ``done()``; RuntimeError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out after %g s waiting until %s" % (timeout, what))
            self.poll(0.05)

    def stream(self, count: int, rate: float, in_flight: int) -> Tuple[List[float], float]:
        """``count`` releases at ``rate`` per second (fewer if the tracker falls behind: at most ``in_flight``
        unanswered); the seconds from offer or request to each assignment, and the seconds it all took."""
        latencies: List[float] = []
        self.latencies = latencies
        start, sent, interval = self.handouts, 0, 1.0 / rate
        began = next_at = time.perf_counter()
        deadline = time.monotonic() + count / rate * 3 + DEADLINE
        try:
            while self.handouts - start < count:
                now = time.perf_counter()
                while sent < count and next_at <= now and self.busy and sent - (self.handouts - start) < in_flight:
                    self.release()
                    sent += 1
                    next_at = max(next_at + interval, now)  # behind: no burst to catch up
                can_send = sent < count and self.busy and sent - (self.handouts - start) < in_flight
                self.poll(max(0.0, next_at - now) if can_send else 0.05)
                if time.monotonic() > deadline:
                    raise RuntimeError("%d of %d hand-outs after %.0f s" % (self.handouts - start, count, now - began))
            return latencies, time.perf_counter() - began
        finally:
            self.latencies = None

    def close(self) -> None:
        for peer in self.boards + self.clients:
            peer.sock.close()
        self.selector.close()


class Query:
    """A connection of its own that asks for SUMMARY and times the answer."""

    def __init__(self, tracker: Address) -> None:
        self.sock = socket.create_connection(tracker, timeout=DEADLINE, source_address=(loopback(60000), 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = MessageReader(expect_magic=True)
        self.sock.sendall(encode_magic())

    def summary(self) -> Tuple[float, int, Dict[str, Any]]:
        """Seconds to the whole answer, its size in bytes, and the summary."""
        began = time.perf_counter()
        self.sock.sendall(encode_message([Code.SUMMARY]))
        size = 0
        replies: List[Any] = []
        deadline = time.monotonic() + DEADLINE
        while not replies:
            if time.monotonic() > deadline:
                raise RuntimeError("no whole answer to SUMMARY within %g s (%d bytes)" % (DEADLINE, size))
            data = self.sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the tracker closed the query connection")
            size += len(data)
            replies = self.reader.feed(data)
        elapsed = time.perf_counter() - began
        if replies[0][0] != Code.SUCCESS:
            raise RuntimeError("the tracker answered SUMMARY with %.200r" % (replies[0],))
        return elapsed, size - 4, replies[0][1]

    def close(self) -> None:
        self.sock.close()


# --- the tracker scenario ------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def pending(query: Query) -> int:
    return query.summary()[2]["queue_info"].get(KEY, {}).get("pending", 0)


def measure_cell(crowd: Crowd, query: Query, pid: int, args: Any) -> Dict[str, Any]:
    """One size: a stream of releases (latency, CPU) and SUMMARY times."""
    in_flight = max(1, min(32, crowd.requests // 2))
    cpu = harness.cpu_seconds(pid)
    latencies, elapsed = crowd.stream(args.releases, args.rate, in_flight)
    cpu = harness.cpu_seconds(pid) - cpu
    # the last clients' requests again, on connections of their own, may reach the tracker after a SUMMARY
    harness.wait_until(lambda: pending(query) == crowd.requests, DEADLINE,
                       "the tracker counts the %d requests queued as pending" % crowd.requests)  # fmt: skip
    timed = [query.summary() for _ in range(args.summary_repeats)]
    return {
        "latency_ms": {"p50": percentile(latencies, 0.5) * 1e3, "p99": percentile(latencies, 0.99) * 1e3,
                       "max": max(latencies) * 1e3, "count": len(latencies)},
        "handouts_per_s": len(latencies) / elapsed,
        "load_average": os.getloadavg()[0],
        "in_flight": in_flight,
        "cpu_ms_per_1000": cpu / len(latencies) * 1e6,
        "summary_ms": statistics.median(seconds for seconds, _, _ in timed) * 1e3,
        "summary_bytes": timed[-1][1],
        "summary_omitted": timed[-1][2].get("omitted", {}),
    }  # fmt: skip


def grow_plan(plan: str, tracker: DaemonProcess, args: Any, fd_budget: int) -> List[Dict[str, Any]]:
    """One tracker grown through the plan's sizes; a row per size."""
    address = tracker.address
    assert address is not None  # (it listens)
    crowd = Crowd(address, fd_budget)
    query = Query(address)
    rows = []
    try:
        for size in args.sizes:
            boards, requests = PLANS[plan](size, args.sizes[0])
            row: Dict[str, Any] = {"plan": plan, "size": size, "boards": boards, "requests": requests}
            before, began = harness.proc_status(tracker.pid)["VmRSS"], time.perf_counter()
            added = boards - len(crowd.boards)
            crowd.add_boards(added)
            middle, registered = harness.proc_status(tracker.pid)["VmRSS"], time.perf_counter()
            queued = requests - crowd.requests
            row["requests_per_connection"] = crowd.add_requests(queued) if queued > 0 else None
            after, queued_at = harness.proc_status(tracker.pid)["VmRSS"], time.perf_counter()
            crowd.settle()
            row["setup_s"] = {"boards": registered - began, "requests": queued_at - registered,
                              "settle": time.perf_counter() - queued_at}  # fmt: skip
            row["kb_per_board"] = (middle - before) / added if added > 0 else None
            row["kb_per_request"] = (after - middle) / queued if queued > 0 else None
            row["connections"] = crowd.connections
            row["rss_kb"] = after
            row.update(measure_cell(crowd, query, tracker.pid, args))
            logger.info("%s %d: %d boards, %d requests: p99 %.2f ms; set up in %s", plan, size, boards, requests,
                        row["latency_ms"]["p99"], row["setup_s"])  # fmt: skip
            rows.append(row)
        return rows
    finally:
        query.close()
        crowd.close()


def exponent(rows: List[Dict[str, Any]], pick: Callable[[Dict[str, Any]], Optional[float]]) -> Optional[float]:
    """How a figure grows over the last two sizes: ``log(figure ratio) / log(size ratio)`` (1: in proportion)."""
    points = [(row["size"], pick(row)) for row in rows[-2:]]
    if len(points) < 2 or any(value is None or value <= 0 for _, value in points):
        return None
    (small, low), (large, high) = points
    return math.log(high / low) / math.log(large / small)  # type: ignore[operator]


#: The per-event figures judged flat or logarithmic, and how to read each from a row.
PER_EVENT: Dict[str, Callable[[Dict[str, Any]], Optional[float]]] = {
    "latency_p50": lambda row: row["latency_ms"]["p50"],
    "cpu_per_handout": lambda row: row["cpu_ms_per_1000"],
    "kb_per_board": lambda row: row["kb_per_board"],
    "kb_per_request": lambda row: row["kb_per_request"],
}


def grow_plans(state: State, args: Any, budget: int, checkout: Optional[str]) -> Dict[str, Any]:
    """Each plan on a tracker of its own, of this checkout or ``checkout``; their rows and exponents of growth."""
    result: Dict[str, Any] = {"plans": {}, "growth": {}}
    for plan in args.plans:
        tracker = state.start_tracker(plan, args.profile, checkout)
        try:
            rows = result["plans"][plan] = grow_plan(plan, tracker, args, budget)
        finally:
            state.stop(tracker)
        result["growth"][plan] = {name: exponent(rows, pick) for name, pick in PER_EVENT.items()}
        result["growth"][plan]["summary"] = exponent(rows, lambda row: row["summary_ms"])
    return result


def measure_tracker(state: State, args: Any) -> Dict[str, Any]:
    """Each plan on a tracker of its own (and of the older checkout's, with ``--before``); the verdicts."""
    largest = args.sizes[-1]
    limits = raise_fd_limit(2 * largest + RESERVED_FDS + 16)
    budget = int(limits["soft"]) - RESERVED_FDS if limits["soft"] != -1 else 2 * largest
    result: Dict[str, Any] = {"sizes": args.sizes, "fd_limits": limits}
    result.update(grow_plans(state, args, budget, None))
    if args.before:
        result["before"] = grow_plans(state, args, budget, os.path.abspath(args.before))
    corner = result["plans"].get("diagonal", [{}])[-1]
    growth = [value for plan in result["growth"].values() for name, value in plan.items()
              if name != "summary" and value is not None]  # fmt: skip
    result["flat"] = all(value <= FLAT_EXPONENT for value in growth) if growth else None
    if corner:
        p99 = corner["latency_ms"]["p99"]
        result["corner"] = {"boards": corner["boards"], "requests": corner["requests"], "p99_ms": p99,
                            "met": p99 < LATENCY_TARGET_MS}  # fmt: skip
    if args.profile:
        result["profiles"] = state.profiles
    result["figures"] = draw(args.figures, "scale-tracker.svg", lambda plt: plot_tracker(plt, result))
    return result


def tracker_table(figures: Dict[str, Any]) -> List[str]:
    header = ("plan", "boards", "requests (per connection)", "p50 / p99 ms", "hand-outs/s", "CPU ms / 1,000",
              "kB / board", "kB / request", "SUMMARY ms (kB)", "tracker RSS MB")  # fmt: skip
    rows = []
    for plan, cells in figures["plans"].items():
        for row in cells:
            per = row["requests_per_connection"]
            rows.append((plan, row["boards"], "%d (%s)" % (row["requests"], per or "-"),
                         "%.2f / %.2f" % (row["latency_ms"]["p50"], row["latency_ms"]["p99"]),
                         "%.0f" % row["handouts_per_s"], "%.0f" % row["cpu_ms_per_1000"],
                         number(row["kb_per_board"]), number(row["kb_per_request"]),
                         "%.2f (%.0f)" % (row["summary_ms"], row["summary_bytes"] / 1e3),
                         "%.1f" % (row["rss_kb"] / 1024)))  # fmt: skip
    growth = "growth from the second largest size to the largest, as an exponent (0: flat, 1: in proportion; "
    lines = table(header, rows) + ["", growth + "flat or logarithmic: <= %g):" % FLAT_EXPONENT, ""]
    names = list(PER_EVENT) + ["summary"]
    rows = [(plan, *(number(growth[name], "%.2f") for name in names)) for plan, growth in figures["growth"].items()]
    return lines + table(("plan", *names), rows) + [""]


def report_tracker(figures: Dict[str, Any], args: Any) -> List[str]:
    lines = ["### Tracker: light peers, %d releases per size at %g per second" % (args.releases, args.rate), ""]
    lines += tracker_table(figures)
    if "before" in figures:
        lines += ["#### The older checkout's tracker (%s)" % args.before, ""] + tracker_table(figures["before"])
    for plan, text in figures.get("profiles", {}).items():
        lines += ["profile of the %s tracker (cProfile, by own time):" % plan, "", "```", text, "```", ""]
    return lines + [figures["figures"], ""]


def number(value: Optional[float], form: str = "%.1f") -> str:
    return "-" if value is None else form % value


# --- the board scenario ----------------------------------------------------------------------------------


def daemon_kb(side: Side, forked: List[int]) -> Dict[str, int]:
    """Resident and proportional kB (PSS: a page shared by N processes counts 1/N) of a board's daemon and the
    long-lived processes forked from it (the session spawner, the watchdog). Their PSS moves as pages they share
    stop being shared (copy on write); their RSS is what grows if they keep something per session."""
    pids = [side.board.pid, *forked]
    return {"rss": sum(harness.proc_status(pid)["VmRSS"] for pid in pids),
            "pss": sum(harness.private_kb(pid)["pss"] for pid in pids)}  # fmt: skip


def children(pid: int) -> List[int]:
    with open("/proc/%d/task/%d/children" % (pid, pid), encoding="ascii") as handle:
        return [int(word) for word in handle.read().split()]


def session_memory(side: Side) -> Dict[str, int]:
    """Resident, proportional and private kB of the process of one session, opened for the purpose."""
    session = side.connect()
    try:
        pid = int(session.system_info()["pid"])
        return {"rss": harness.proc_status(pid)["VmRSS"], **harness.private_kb(pid)}
    finally:
        session.close()


def measure_one_board(side: Side, count: int, chunk: int, samples: int) -> Dict[str, Any]:
    """``count`` sessions back to back in chunks of ``chunk`` (the daemon's memory read between chunks); then the
    memory of ``samples`` sessions."""
    side.open_and_close(2)  # warm-up
    forked = children(side.board.pid)
    opens: List[float] = []
    curve: List[Dict[str, Any]] = []
    served = 0
    while served < count:
        began = time.perf_counter()
        times = side.open_and_close(min(chunk, count - served))
        elapsed = time.perf_counter() - began
        served += len(times)
        opens += [opened for opened, _ in times]
        curve.append({"served": served, "seconds": elapsed, "sessions_per_s": len(times) / elapsed,
                      "daemon_kb": daemon_kb(side, forked),
                      "open_ms": statistics.median(opened for opened, _ in times) * 1e3})  # fmt: skip
    memory = [session_memory(side) for _ in range(samples)]
    return {
        "sessions": count,
        "sessions_per_s": count / sum(point["seconds"] for point in curve),
        "open_ms": harness.spread(opens, 1e3),
        "curve": curve,
        "session_kb": {name: statistics.median(row[name] for row in memory) for name in ("rss", "pss", "private")},
        "forked": len(forked),
    }


def measure_board(state: State, args: Any) -> Dict[str, Any]:
    result: Dict[str, Any] = {"boards": {}}
    for name, side in state.boards(args).items():
        emulated = name != "local"
        count = args.emulated_sessions if emulated else args.sessions
        chunk = max(1, count // 20)
        result["boards"][name] = measure_one_board(side, count, chunk, args.memory_samples)
    result["figures"] = draw(args.figures, "scale-board.svg", lambda plt: plot_board(plt, result))
    return result


def report_board(figures: Dict[str, Any], args: Any) -> List[str]:
    header = ("board", "sessions", "sessions/s", "open ms, median (p99)", "session RSS / PSS / private MB",
              "daemon and its children RSS MB, first -> last")  # fmt: skip
    rows = []
    for name, row in figures["boards"].items():
        first, last = row["curve"][0]["daemon_kb"]["rss"], row["curve"][-1]["daemon_kb"]["rss"]
        memory = row["session_kb"]
        rows.append((name, row["sessions"], "%.1f" % row["sessions_per_s"],
                     "%.2f (%.2f)" % (row["open_ms"]["median"], row["open_ms"]["p99"]),
                     "%.1f / %.1f / %.1f" % (memory["rss"] / 1024, memory["pss"] / 1024, memory["private"] / 1024),
                     "%.1f -> %.1f" % (first / 1024, last / 1024)))  # fmt: skip
    return ["### Board: sessions one after the other", ""] + table(header, rows) + ["", figures["figures"], ""]


# --- plots ---------------------------------------------------------------------------------------------


def draw(directory: str, name: str, plot: Callable[[Any], Any]) -> str:
    """Draw with ``plot(pyplot)`` into ``directory/name``; a line saying where, or why nothing was drawn."""
    if not directory:
        return "plots: not drawn (no --figures directory)"
    try:
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return "plots: not drawn, matplotlib is not installed (the bench extra: pip install -e .[bench]): %s" % exc
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "bench-scale", "font.size": 9})
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    figure = plot(plt)
    figure.savefig(path, metadata={"Date": None, "Creator": None})
    plt.close(figure)
    inside = os.path.commonpath([path, str(harness.PROJECT)]) == str(harness.PROJECT)
    return "plots: %s" % (os.path.relpath(path, str(harness.PROJECT)) if inside else path)


def plot_tracker(plt: Any, figures: Dict[str, Any]) -> Any:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    figure, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    colors = {"boards": "C0", "waiters": "C1", "diagonal": "C2"}
    small = figures["sizes"][0]
    labels = {"boards": "boards, %d requests" % small, "waiters": "requests, %d boards" % small,
              "diagonal": "boards = requests"}  # fmt: skip
    panels = (
        (axes[0][0], "offer or request to assignment, ms", (("p99", lambda r: r["latency_ms"]["p99"]),
                                                            ("p50", lambda r: r["latency_ms"]["p50"]))),
        (axes[0][1], "tracker CPU, ms per 1,000 hand-outs", (("", lambda r: r["cpu_ms_per_1000"]),)),
        (axes[1][0], "tracker RSS, kB per board / per request", (("board", lambda r: r["kb_per_board"]),
                                                                 ("request", lambda r: r["kb_per_request"]))),
        (axes[1][1], "SUMMARY, ms", (("", lambda r: r["summary_ms"]),)),
    )  # fmt: skip
    axes[0][0].axhline(LATENCY_TARGET_MS, color="red", linestyle=":", label="target for p99")
    for axis, title, series in panels:
        for plan, rows in figures["plans"].items():
            for (what, pick), style in zip(series, ("o-", "s--")):
                points = [(row["size"], pick(row)) for row in rows if (pick(row) or 0) > 0]
                if points:
                    axis.plot(*zip(*points), style, color=colors[plan], label=" ".join([labels[plan], what]).strip())
        axis.set_xscale("log")
        axis.set_yscale("log")
        plain = FuncFormatter(lambda value, _: "%g" % value)
        low, high = axis.get_ylim()
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(plain if high / low < 20 else NullFormatter())  # labels when few decades
        axis.set_xlabel("size: boards, requests, or both")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    return figure


def plot_board(plt: Any, figures: Dict[str, Any]) -> Any:
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for name, row in figures["boards"].items():
        served = [point["served"] for point in row["curve"]]
        axes[0].plot(served, [point["open_ms"] for point in row["curve"]], "o-", label=name)
        axes[1].plot(served, [point["sessions_per_s"] for point in row["curve"]], "o-", label=name)
        axes[2].plot(served, [point["daemon_kb"]["rss"] / 1024 for point in row["curve"]], "o-", label=name)
    titles = ("open a session (median of each step), ms", "sessions per second", "daemon and its children, RSS MB")
    for axis, title in zip(axes, titles):
        axis.set_title(title)
        axis.set_xlabel("sessions served")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    return figure


# --- set-up, headline, tool ------------------------------------------------------------------------------


class State:
    """The run's daemons: trackers one at a time, boards started on first use."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.daemons: List[DaemonProcess] = []
        self.sides: Dict[str, Side] = {}
        self.profiles: Dict[str, str] = {}

    def start_tracker(self, name: str, profile: bool, checkout: Optional[str] = None) -> DaemonProcess:
        """A tracker of this checkout or ``checkout`` (under cProfile with ``profile``)."""
        name += "-before" if checkout else ""
        output = os.path.join(self.workdir, "%s.prof" % name)
        runner = ["-m", "cProfile", "-s", "tottime", "-o", output] if profile else []
        argv = [sys.executable, *runner, "-m", "farm.tracker", "--host", HOST, "--port", "0"]
        log = os.path.join(self.workdir, "tracker-%s.log" % name)
        env = harness.child_env(Path(checkout) if checkout else None)
        daemon = DaemonProcess(argv, log, env=env, cwd=checkout or str(harness.PROJECT))
        self.daemons.append(daemon)
        daemon.wait_for_bind(DEADLINE)
        return daemon

    def stop(self, daemon: DaemonProcess) -> None:
        daemon.stop(timeout=30)
        self.daemons.remove(daemon)
        profile = [word for word in daemon.argv if word.endswith(".prof")]
        if profile and os.path.exists(profile[0]):
            import io
            import pstats

            out = io.StringIO()
            pstats.Stats(profile[0], stream=out).sort_stats("tottime").print_stats(15)
            self.profiles[os.path.basename(profile[0])[: -len(".prof")]] = out.getvalue().strip()

    def boards(self, args: Any) -> Dict[str, Side]:
        if not self.sides:
            server = [sys.executable, "-m", "farm.server"]
            self.sides["local"] = Side("local", server, board_env(str(harness.PROJECT)), self.workdir, TlsConfig())
            for arch in args.emulated:
                from farm.ops.emulators import python_command

                archive = pack(str(harness.PROJECT), os.path.join(self.workdir, "server.pyz"))
                self.sides[arch] = Side("emulated-" + arch, [*python_command(arch), archive], board_env(None),
                                        self.workdir, TlsConfig())  # fmt: skip
        return self.sides

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        for side in self.sides.values():
            side.stop()


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[State]:
    state = State(workdir)
    try:
        yield state
    finally:
        state.close()


def headline(results: Dict[str, Any]) -> List[Headline]:
    tracker, board = results["scenarios"].get("tracker", {}), results["scenarios"].get("board", {})
    rows = []
    corner = tracker.get("corner")
    if corner:
        rows.append(Headline("request to assignment p99, {:,} boards and {:,} waiting requests".format(
                             corner["boards"], corner["requests"]), "%.2f ms" % corner["p99_ms"],
                             target="< %g ms" % LATENCY_TARGET_MS, met=corner["met"]))  # fmt: skip
    if tracker.get("flat") is not None:
        worst = max(value for plan in tracker["growth"].values() for name, value in plan.items()
                    if name != "summary" and value is not None)  # fmt: skip
        rows.append(Headline("per-event costs, growth exponent at the largest size (worst)", "%.2f" % worst,
                             target="<= %g (flat or logarithmic)" % FLAT_EXPONENT, met=tracker["flat"]))  # fmt: skip
    for name, row in board.get("boards", {}).items():
        rows.append(Headline("sessions per second, %s board" % name, "%.1f" % row["sessions_per_s"]))
    return rows


def check_args(args: Any) -> Optional[str]:
    if not args.sizes or args.sizes[0] < 1:
        return "--sizes must name at least one size >= 1"
    if min(args.releases, args.summary_repeats, args.sessions, args.memory_samples) < 1 or args.rate <= 0:
        return "--releases, --summary-repeats, --sessions, --memory-samples and --rate must be positive"
    unknown = set(args.plans) - set(PLANS)
    return "unknown plan(s): %s" % ", ".join(sorted(unknown)) if unknown else None


def names(text: str) -> List[str]:
    return [word for word in text.split(",") if word]


TOOL = Tool(
    name="bench_scale",
    description=__doc__.split("\n\n")[0],
    rounds=None,
    options={
        "sizes": Option([10, 100, 1000, 10000], [10, 100], "sizes of the steps (boards, requests or both)", sizes_arg),
        "plans": Option(list(PLANS), None, "which plans to grow: %s" % ", ".join(PLANS), names),
        "releases": Option(2000, 100, "releases (hand-outs) measured at each size"),
        "rate": Option(500.0, 500.0, "releases per second", float),
        "summary_repeats": Option(5, 2, "timed SUMMARY requests at each size"),
        "before": Option("", "", "a checkout (a directory holding farm/) whose tracker is measured too", str),
        "profile": Option(False, help="run each tracker under cProfile and report where its time goes", type=bool),
        "sessions": Option(400, 10, "sessions one after the other on the local board"),
        "emulated_sessions": Option(60, 4, "the same on each emulated board"),
        "memory_samples": Option(5, 2, "sessions whose process memory is read, per board"),
        "emulated": Option(["aarch64"], [], "comma-separated architectures of emulated boards", names),
        "figures": Option(
            str(harness.PROJECT / "docs" / "figures"),
            "",
            "directory of the SVG plots (empty: none; default: the checkout's docs/figures)",
            str,
        ),  # fmt: skip
    },
    setup=setup,
    scenarios=[
        Scenario("tracker", measure_tracker, report_tracker, target="p99 < %g ms, costs flat" % LATENCY_TARGET_MS),
        Scenario("board", measure_board, report_board),
    ],
    headline=headline,
    check_args=check_args,
    pin="none",
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
