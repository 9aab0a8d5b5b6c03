"""Tracker: requests, concurrency and summaries beside Apache TVM's; how the tracker's and a board's costs grow.

On loopback, in one run; the TVM side runs when the ``tvm`` extra imports (``--no-tvm`` leaves it out):

* **requests**: from ``connect_tracker(...)`` to the first remote call answered on a free board (``request(key)``,
  then ``ping()`` on ours, ``rpc.test.addone(1)`` on TVM's), also with the tracker connection kept. Each repeat
  closes the session and waits until the board is offered again; the variants take turns. ``--before DIR`` adds a
  tracker and a board of the checkout in DIR, ``--native`` a tracker and a native board.
* **concurrency**: client threads cycling request -> ping -> close over a few boards of one key, each with a random
  priority; once plain, once with progress reports. Cycles per second; every board free again and nothing pending;
  from the tracker's log of hand-outs, requests served in priority order, then arrival order.
* **summary** of a tracker with many registered boards: ours with our client, TVM's with TVM's and with ours.
* **scale**: a tracker grown along plans (more boards, more waiting requests, both), with a steady stream of
  releases at each size: request to assignment p50 and p99, memory per board and per waiting request, SUMMARY
  time, CPU per 1,000 hand-outs, and how each grows.
* **board**: sessions one after the other on a local board and emulated ones: sessions per second, time to open
  one, the memory of a session and of the daemon as sessions go by.

Registered boards and waiting requests are light peers (:class:`Crowd`). Scale and board measure this checkout
alone (they do not run with ``--before``) and, with matplotlib (the ``bench`` extra), draw their curves into
``--figures DIR`` as SVG. Times are milliseconds. A failed check of the concurrency run makes the exit status 1.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import math
import os
import random
import re
import resource
import selectors
import socket
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import harness
import numpy as np
from bench_dataplane import Side, board_env, pack
from harness import Headline, Option, Scenario, Tool, judged, logger, mmm, spread, table, wait_until

from farm.client.tracker import TrackerClient, connect_tracker  # noqa: E402
from farm.net.tls import TlsConfig  # noqa: E402
from farm.ops.native import host_server  # noqa: E402
from farm.ops.processes import DaemonProcess, board_command  # noqa: E402
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message  # noqa: E402

HOST = "127.0.0.1"
KEY_REQUEST, KEY_LOAD, KEY_FAKE, KEY_SCALE = "bench-request", "bench-load", "bench-fake", "scale"
SESSION_TIMEOUT = 60
DEADLINE = 60.0  # a daemon to start, a board to be offered again, a batch of light peers to be answered
REQUEST_TARGET = 10.0  # a request to a ready session at least this many times faster than TVM's (medians)
LATENCY_TARGET_MS = 10.0  # request to assignment, p99, at the largest size
#: A per-event cost is taken as flat or logarithmic when, from the second largest size to the largest (ten
#: times more), it grows by at most 10**0.25 = 1.8 times (a cost of log n grows 1.33 times from 1,000 to 10,000).
FLAT_EXPONENT = 0.25
#: Light peers connected at once: within a tracker's backlog of connections not yet accepted (128; a connection
#: beyond it waits a second for its SYN to be sent again) and its bound on connections that have proven nothing (512).
BATCH = 100
RESERVED_FDS = 64  # descriptors left for everything but the light peers' connections

Address = Tuple[str, int]
# The tracker's line for each board it hands out (farm/tracker/state.py, TrackerState._schedule).
_ASSIGNED = re.compile(r"board \S+:\d+ of key '([^']*)' to \S+ \(([^)]*)\) after [\d.]+ s")


def key_state(summary: Dict[str, Any], key: str) -> Tuple[int, int, int]:
    """``(total, free, pending)`` of ``key``, counted as TVM's query tool counts them."""
    queue_info = summary.get("queue_info", {}).get(key, {})
    total = sum(1 for server in summary.get("server_info", []) if server.get("key") == "server:" + key)
    return total, queue_info.get("free", 0), queue_info.get("pending", 0)


def wait_free(client: TrackerClient, key: str, boards: int) -> None:
    """Wait until the tracker offers all ``boards`` of ``key`` and has nothing pending for it."""
    what = "%d board(s) of key %r are free" % (boards, key)
    wait_until(lambda: key_state(client.summary(), key) == (boards, boards, 0), DEADLINE, what)


def raise_fd_limit(needed: int) -> Dict[str, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit if ``needed`` descriptors do not fit; the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = {"soft_before": soft, "soft": soft, "hard": hard, "needed": needed}
    if soft != resource.RLIM_INFINITY and soft < needed:
        limits["soft"] = hard if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["soft"], hard))
    return limits


class Processes:
    """Every daemon a run starts (trackers and boards: ours, TVM's, an older checkout's), the last started first."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.running: List[DaemonProcess] = []

    def start(self, name: str, argv: List[str], checkout: Optional[str] = None) -> Tuple[DaemonProcess, Address]:
        log = os.path.join(self.workdir, "%02d-%s.log" % (len(self.running), name))
        daemon = DaemonProcess(argv, log, env=harness.child_env(checkout), cwd=checkout or str(harness.PROJECT))
        self.running.append(daemon)  # before waiting, so that a failed start is stopped too
        return daemon, daemon.wait_for_bind(DEADLINE)

    def tracker(self, checkout: Optional[str] = None) -> Tuple[DaemonProcess, Address]:
        return self.start("tracker", [sys.executable, "-m", "farm.tracker", "--host", HOST, "--port", "0"], checkout)

    def board(
        self, key: str, tracker: Address, checkout: Optional[str] = None, server: Optional[List[str]] = None
    ) -> None:
        """A board of ``key`` registered with ``tracker``: ``checkout``'s Python board, or the program ``server``."""
        argv = board_command(key, HOST, 0, extra=["--tracker", "%s:%d" % tracker], server=server)
        self.start("board", argv, checkout)

    def tvm(self, module: str, *extra: str) -> Address:
        """TVM's ``rpc_tracker`` or ``rpc_server`` (which take no port 0, but a range)."""
        first, end = harness.port_range(HOST)
        argv = [sys.executable, "-m", "tvm.exec." + module, "--host", HOST, "--port", str(first)]
        return self.start(module, [*argv, "--port-end", str(end), *extra])[1]

    def stop(self, keep: int = 0) -> None:
        """Stop every daemon but the first ``keep``."""
        while len(self.running) > keep:
            self.running.pop().stop()


@contextlib.contextmanager
def setup(args: Any, workdir: str) -> Iterator[Processes]:
    import farm.client.session  # noqa: F401  (imported before any clock starts, as TVM's is)

    procs = Processes(workdir)
    try:
        yield procs
    except BaseException:
        for daemon in procs.running:
            with contextlib.suppress(OSError):
                logger.error("%s (end of its log):\n%s", " ".join(daemon.argv[1:4]), daemon.log_text()[-2000:])
        raise
    finally:
        procs.stop()


# --- light peers ------------------------------------------------------------------------------------------


def loopback(number: int) -> str:
    """The ``number``-th address from 127.1.0.1 on (none ending in .0 or .255): a source address per peer."""
    high, low = divmod(number, 254)
    return "127.%d.%d.%d" % (1 + high // 256, high % 256, low + 1)


class Peer:
    """One connection to the tracker: a board (one offer at a time) or a client with queued requests."""

    __slots__ = ("sock", "reader", "port", "acks", "asked")

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock = sock
        self.reader = MessageReader(expect_magic=True)
        self.port = port  # a board's: where it says it serves (nobody listens there); 0 for a client
        self.acks = 0  # plain replies (SUCCESS) received
        self.asked: Deque[float] = deque()  # a client's: when each of its queued requests was sent, oldest first


def answered(peers: List[Peer], replies: int) -> bool:
    """Whether each of ``peers`` has had its magic echoed and ``replies`` plain replies."""
    return all(peer.reader.magic_seen and peer.acks >= replies for peer in peers)


class Crowd:
    """Boards and clients of one key, each on a connection of its own from a loopback address of its own (so that
    no per-address bound of the tracker is approached), all on one selector loop.

    A client that is handed a board asks again at once; a board handed out stays busy until :meth:`stream`
    releases it. All requests have the same priority, so a connection's requests are served oldest first.
    """

    def __init__(self, tracker: Address, key: str, fd_budget: int = 1 << 30, tvm: bool = False) -> None:
        self.tracker, self.key, self.fd_budget = tracker, key, fd_budget  # connections this process may hold
        # TVM's tracker listens with a backlog of 1, and writes a reply in two pieces (length, then JSON): its
        # second is held by Nagle's algorithm until the first is acknowledged, which a delayed ACK puts off by
        # some 40 ms. So to TVM's, peers connect one at a time and acknowledge every segment at once (Linux).
        self.batch, self.quickack = (1, getattr(socket, "TCP_QUICKACK", None)) if tvm else (BATCH, None)
        self.selector = selectors.DefaultSelector()
        self.boards: List[Peer] = []
        self.clients: List[Peer] = []
        self.requests = 0  # queued or served, counted once per client's request slot
        self.busy: Deque[Peer] = deque()  # boards handed out, the longest busy first
        self.offered: Dict[str, Tuple[Peer, float]] = {}  # match key -> its board, when it was offered
        self.latencies: List[float] = []  # seconds from offer or request to assignment
        self._addresses, self._offers = itertools.count(), itertools.count()
        self._request = encode_message([Code.REQUEST, key, "crowd", 1])

    def _join(self, count: int, port: Callable[[], int], message: Callable[[Peer], bytes], replies: int) -> None:
        """``count`` new peers, in batches: each sends the magic alone (TVM's tracker wants it in a segment of its
        own), then ``message(peer)`` and a PING; return once each has had ``replies`` plain replies."""
        for first in range(0, count, self.batch):
            batch = []
            for _ in range(min(self.batch, count - first)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                batch.append(Peer(sock, port()))
                self.selector.register(sock, selectors.EVENT_READ, batch[-1])
                (self.boards if batch[-1].port else self.clients).append(batch[-1])
                sock.bind((loopback(next(self._addresses)), 0))
                sock.settimeout(DEADLINE)
                sock.connect(self.tracker)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(encode_magic())
            self.pump(functools.partial(answered, batch, 0), "%d new peers are answered" % len(batch))
            for peer in batch:
                peer.sock.sendall(message(peer) + encode_message([Code.PING]))
            self.pump(functools.partial(answered, batch, replies), "%d new peers are answered" % len(batch))

    def _offer(self, board: Peer) -> bytes:
        matchkey = "%s:%d" % (self.key, next(self._offers))
        self.offered[matchkey] = (board, time.perf_counter())
        return encode_message([Code.PUT, self.key, [board.port, matchkey]])

    def add_boards(self, count: int) -> None:
        """Register ``count`` more boards, free (UPDATE_INFO, PUT); clients waiting take them meanwhile."""

        def register(board: Peer) -> bytes:
            info = {"key": "server:" + self.key, "addr": [None, board.port]}
            return encode_message([Code.UPDATE_INFO, info]) + self._offer(board)

        self._join(count, lambda: 20000 + len(self.boards) % 40000, register, 3)

    def add_requests(self, count: int) -> int:
        """Queue ``count`` more requests, one per client connection unless descriptors run short (then as few per
        connection as fit). The requests per connection."""
        room = self.fd_budget - len(self.boards) - len(self.clients)
        if room < 1:
            raise RuntimeError("no descriptors left for clients")
        each = max(1, math.ceil(count / room))
        shares = iter([min(each, count - first) for first in range(0, count, each)])  # one per new connection

        def ask(client: Peer) -> bytes:
            asks = next(shares)
            self.requests += asks
            client.asked.extend([time.perf_counter()] * asks)
            return self._request * asks

        self._join(math.ceil(count / each), lambda: 0, ask, 1)
        return each

    def poll(self, timeout: float) -> None:
        """Read whatever arrived within ``timeout`` seconds; a client handed a board asks again at once."""
        for key, _ in self.selector.select(timeout):
            peer: Peer = key.data
            if self.quickack is not None:
                peer.sock.setsockopt(socket.IPPROTO_TCP, self.quickack, 1)
            data = peer.sock.recv(65536)
            now = time.perf_counter()
            if not data:
                raise RuntimeError("the tracker closed a light peer's connection")
            for message in peer.reader.feed(data):
                if message == Code.SUCCESS:
                    peer.acks += 1
                    continue
                if peer.port or not isinstance(message, list) or message[0] != Code.SUCCESS:
                    raise RuntimeError("the tracker answered a light peer with %.200r" % (message,))
                board, offered = self.offered.pop(message[1][2])
                self.latencies.append(now - max(offered, peer.asked.popleft()))
                self.busy.append(board)
                peer.asked.append(time.perf_counter())
                peer.sock.sendall(self._request)

    def pump(self, done: Callable[[], bool], what: str) -> None:
        """Poll until ``done()``; RuntimeError after DEADLINE."""
        deadline = time.monotonic() + DEADLINE
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out after %g s waiting until %s" % (DEADLINE, what))
            self.poll(0.05)

    def stream(self, count: int, rate: float, in_flight: int) -> Tuple[List[float], float]:
        """``count`` releases (the board busy for longest offers itself again) at ``rate`` per second, fewer if the
        tracker falls behind (at most ``in_flight`` unanswered); the latencies and the seconds it all took."""
        self.pump(lambda: not self.offered, "every board offered is handed out")
        self.latencies, sent, interval = [], 0, 1.0 / rate
        began = next_at = time.perf_counter()
        deadline = time.monotonic() + count / rate * 3 + DEADLINE
        while len(self.latencies) < count:
            now = time.perf_counter()
            while sent < count and next_at <= now and self.busy and sent - len(self.latencies) < in_flight:
                board = self.busy.popleft()
                board.sock.sendall(self._offer(board))
                sent += 1
                next_at = max(next_at + interval, now)  # behind: no burst to catch up
            can_send = sent < count and self.busy and sent - len(self.latencies) < in_flight
            self.poll(max(0.0, next_at - now) if can_send else 0.05)
            if time.monotonic() > deadline:
                raise RuntimeError("%d of %d hand-outs after %.0f s" % (len(self.latencies), count, now - began))
        return self.latencies, time.perf_counter() - began

    def close(self) -> None:
        for peer in self.boards + self.clients:
            peer.sock.close()
        self.selector.close()


# --- requests ------------------------------------------------------------------------------------


def addone(session: Any) -> None:
    if session.get_function("rpc.test.addone")(1) != 2:
        raise RuntimeError("TVM's rpc.test.addone(1) did not return 2")


def cycle(call: Callable[[Any], Any], connect: Callable[..., Any], tracker: Address, watch: TrackerClient,
          kept: Any = None) -> Tuple[float, float]:  # fmt: skip
    """Seconds of a request to a ready session (``call`` its first remote call); then from closing it until the
    board is offered again (TVM's session closes when its last reference goes)."""
    start = time.perf_counter()
    client = kept or connect(*tracker)
    session = client.request(KEY_REQUEST, priority=1, session_timeout=SESSION_TIMEOUT)
    call(session)
    ready = time.perf_counter()
    if kept is None:
        client.close()
    closing = time.perf_counter()
    close = getattr(session, "close", gc.collect)
    del session
    close()
    wait_free(watch, KEY_REQUEST, 1)
    return ready - start, time.perf_counter() - closing


def turns(actions: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, List[Any]]:
    """What each action returns in each round; the actions take turns in rotating order, a gc before each."""
    returned: Dict[str, List[Any]] = {name: [] for name in actions}
    for number in range(rounds):
        for name in harness.rotated(list(actions), number):
            gc.collect()
            returned[name].append(actions[name]())
    return returned


def measure_requests(procs: Processes, args: Any) -> Dict[str, Any]:
    """Each side's request to a ready session, with a new tracker connection and with one kept."""
    keep, closing = len(procs.running), []
    cycles: Dict[str, Callable[[], Tuple[float, float]]] = {}
    sides: List[Tuple[str, Optional[str]]] = [("farm", None)]
    sides += [("before", os.path.abspath(args.before))] if args.before else []
    sides += [("native", None)] if args.native else []
    sides += [("tvm", None)] if args.tvm_rpc is not None else []
    try:
        for name, checkout in sides:
            if name == "tvm":
                address = procs.tvm("rpc_tracker")
                procs.tvm("rpc_server", "--tracker", "%s:%d" % address, "--key", KEY_REQUEST)
                connect, call = args.tvm_rpc.connect_tracker, addone
            else:
                address = procs.tracker(checkout)[1]
                procs.board(KEY_REQUEST, address, checkout, server=[host_server()] if name == "native" else None)
                connect, call = connect_tracker, lambda session: session.ping()
            watch = connect_tracker(*address, timeout=DEADLINE)
            kept = connect(*address)
            closing += [watch, kept]
            wait_free(watch, KEY_REQUEST, 1)
            cycles[name] = functools.partial(cycle, call, connect, address, watch)
            cycles[name + "_kept"] = functools.partial(cycle, call, connect, address, watch, kept)
        result: Dict[str, Any] = {}
        for name, pairs in turns(cycles, args.rounds).items():  # the first round starts with a new connection
            ready, free = zip(*pairs)
            result[name] = dict(spread(ready, 1e3), free_again_ms=spread(free, 1e3))
        return result
    finally:
        for closable in closing:
            closable.close()
        procs.stop(keep)


# --- concurrency -----------------------------------------------------------------------------------------


@dataclass
class Cycle:
    """One client's request -> session -> close, on the monotonic clock."""

    tag: str
    priority: int
    sent: float  # just before request() was called
    queued: Optional[float] = None  # when the first WAITING message arrived, if any
    served: Optional[float] = None  # when request() returned the session
    done: Optional[float] = None  # when the session was closed


class LoadClient(threading.Thread):
    """A client on a tracker connection of its own: request -> ping -> close until told to halt, or an error."""

    def __init__(self, index: int, priority: int, tracker: Address, phase: str, go: threading.Event,
                 halt: threading.Event, patience: float) -> None:  # fmt: skip
        super().__init__(name="client-%d" % index, daemon=True)
        self.index, self.priority, self.phase, self.go, self.halt = index, priority, phase, go, halt
        self.patience = patience  # how long a request may wait: bounded, whatever happens
        self.client = connect_tracker(*tracker, timeout=DEADLINE)
        self.cycles: List[Cycle] = []
        self.error = ""
        self.reports = 0  # WAITING messages received

    def _on_progress(self, _state: Dict[str, Any]) -> None:
        self.reports += 1
        if self.cycles[-1].queued is None:
            self.cycles[-1].queued = time.monotonic()

    def run(self) -> None:
        self.go.wait()
        on_progress = self._on_progress if self.phase == "progress" else None
        while not self.halt.is_set():
            cycle = Cycle("%s.c%03d.%d" % (self.phase, self.index, len(self.cycles)), self.priority, time.monotonic())
            self.cycles.append(cycle)
            try:
                session = self.client.request(KEY_LOAD, priority=self.priority, session_timeout=SESSION_TIMEOUT,
                                              wait=self.patience, user=cycle.tag, on_progress=on_progress)  # fmt: skip
                cycle.served = time.monotonic()
                try:
                    session.ping()
                finally:
                    session.close()
                cycle.done = time.monotonic()
            except Exception as exc:  # noted and checked
                self.error = "%s: %s: %s" % (cycle.tag, type(exc).__name__, exc)
                return


def order_check(cycles: List[Cycle], order: List[str]) -> Dict[str, int]:
    """Check the order in which the tracker handed out boards (``order``: its log's tags) against priority, then
    arrival.

    For two served requests A and B, A was surely queued before B arrived when A's first WAITING message reached
    its client before B's client called request(): the tracker had queued A before B's request was even sent.
    Every such pair with A's priority higher than B's, or equal, obliges the tracker to serve A first (a
    constraint); B served first (an earlier line in the tracker's log) is a priority, or arrival-order, violation.
    """
    position = {tag: index for index, tag in enumerate(order)}
    rows = np.array([(position[c.tag], c.priority, c.sent, np.nan if c.queued is None else c.queued)
                     for c in cycles if c.tag in position], dtype=np.float64).reshape(-1, 4)  # fmt: skip
    earlier = rows[~np.isnan(rows[:, 3])]  # the A side: requests that waited
    counts = np.zeros(4, dtype=np.int64)
    chunk = max(1, 4_000_000 // max(1, len(earlier)))
    for start in range(0, len(rows), chunk):
        later = rows[None, start : start + chunk]
        before = earlier[:, None, 3] < later[..., 2]  # A was queued before B's request was sent
        overtaken = before & (earlier[:, None, 0] > later[..., 0])
        higher = before & (earlier[:, None, 1] > later[..., 1])
        same = before & (earlier[:, None, 1] == later[..., 1])
        counts += [higher.sum(), same.sum(), (higher & overtaken).sum(), (same & overtaken).sum()]
    names = ("priority_constraints", "arrival_constraints", "priority_violations", "arrival_order_violations")
    return dict(zip(names, counts.tolist()), cycles_checked=len(rows), cycles_that_waited=len(earlier))


def load_phase(args: Any, tracker: DaemonProcess, watch: TrackerClient, phase: str) -> Dict[str, Any]:
    """``args.clients`` threads cycling over the boards of KEY_LOAD for ``args.duration`` seconds, then checks."""
    go, halt, rng = threading.Event(), threading.Event(), random.Random(args.seed)
    clients: List[LoadClient] = []
    try:
        patience = args.duration + 2 * DEADLINE
        for index in range(args.clients):
            priority = rng.randrange(args.priorities)
            clients.append(LoadClient(index, priority, tracker.address, phase, go, halt, patience))
            clients[-1].start()
        start = time.monotonic()
        go.set()
        time.sleep(args.duration)
        end = time.monotonic()
        halt.set()
        for client in clients:
            client.join(max(0.0, end + 2 * DEADLINE - time.monotonic()))
        with contextlib.suppress(RuntimeError):  # the end state below says what is left
            wait_free(watch, KEY_LOAD, args.boards)
    finally:
        halt.set()
        go.set()  # a thread still waiting to start sees the halt at once
        for client in clients:
            if not client.is_alive():
                client.client.close()  # a thread still blocked ends when the tracker is stopped
    summary = watch.summary()
    total, free, pending = key_state(summary, KEY_LOAD)
    states = sorted(row.get("state", "?") for row in summary["server_info"] if row["key"] == "server:" + KEY_LOAD)
    cycles = [cycle for client in clients for cycle in client.cycles]
    errors = [client.error for client in clients if client.error]
    in_window = [c for c in cycles if c.done is not None and c.done <= end]
    waits = [(c.served - c.sent) * 1e3 for c in cycles if c.served is not None]
    served = [match.group(2) for match in _ASSIGNED.finditer(tracker.log_text())
              if match.group(1) == KEY_LOAD and match.group(2).startswith(phase + ".")]  # fmt: skip
    order = order_check(cycles, served)
    checks: Dict[str, Any] = {
        "final_total": total, "final_free": free, "final_pending": pending, "final_board_states": states,
        "boards_all_free": total == free == args.boards and pending == 0 and states == ["free"] * args.boards,
        "errors": errors[:20], "error_count": len(errors),
        "stuck_clients": [client.index for client in clients if client.is_alive()],
        # each session a client got is one hand-out in the tracker's log, and no request got two
        "every_request_logged": sorted(served) == sorted(c.tag for c in cycles if c.served is not None),
        "order_ok": order["priority_violations"] == order["arrival_order_violations"] == 0,
        "order_checked": order["priority_constraints"] + order["arrival_constraints"] > 0 or phase == "plain",
    }  # fmt: skip
    by_priority = {}
    for level in range(args.priorities):
        mine = [(c.served - c.sent) * 1e3 for c in cycles if c.priority == level and c.served is not None]
        by_priority[str(level)] = {"clients": sum(c.priority == level for c in clients), "cycles": len(mine),
                                   "median_wait_ms": statistics.median(mine) if mine else None,
                                   "max_wait_ms": max(mine, default=None)}  # fmt: skip
    passed = ("boards_all_free", "every_request_logged", "order_ok", "order_checked")
    checks["pass"] = all(checks[name] for name in passed) and not errors and not checks["stuck_clients"]
    return {"duration_s": end - start, "cycles_in_window": len(in_window), "cycles_total": len(cycles),
            "cycles_per_s": len(in_window) / (end - start), "waiting_messages": sum(c.reports for c in clients),
            "request_wait_median_ms": statistics.median(waits) if waits else None,
            "request_wait_p99_ms": float(np.percentile(waits, 99)) if waits else None,
            "by_priority": by_priority, "order": order, "checks": checks}  # fmt: skip


def measure_concurrency(procs: Processes, args: Any) -> Dict[str, Any]:
    """Two load phases on one tracker and set of boards: plain requests, then requests with progress reports."""
    keep = len(procs.running)
    tracker, address = procs.tracker()
    for _ in range(args.boards):
        procs.board(KEY_LOAD, address)
    watch = connect_tracker(*address, timeout=DEADLINE)
    try:
        wait_free(watch, KEY_LOAD, args.boards)
        result: Dict[str, Any] = {"clients": args.clients, "boards": args.boards}
        for phase in ("plain", "progress"):
            result[phase] = load_phase(args, tracker, watch, phase)
        result["pass"] = all(result[phase]["checks"]["pass"] for phase in ("plain", "progress"))
        return result
    finally:
        watch.close()
        procs.stop(keep)


# --- summary ------------------------------------------------------------------------------------------------


def measure_summaries(procs: Processes, args: Any) -> Dict[str, Any]:
    """Summaries of trackers with ``args.fake_boards`` registered boards each (light peers), interleaved."""
    keep, crowds, clients = len(procs.running), [], []
    sides = ["farm"] + (["tvm"] if args.tvm_rpc is not None else [])
    limits = raise_fd_limit(len(sides) * args.fake_boards + 256)
    if limits["soft"] != resource.RLIM_INFINITY and limits["soft"] < limits["needed"]:
        raise RuntimeError("%(needed)d descriptors needed, %(soft)d allowed: give fewer --fake-boards" % limits)
    result: Dict[str, Any] = {"boards": args.fake_boards, "fd_limits": limits}
    calls: Dict[str, Callable[[], Any]] = {}
    try:
        for side in sides:
            address = procs.tracker()[1] if side == "farm" else procs.tvm("rpc_tracker")
            crowds.append(Crowd(address, KEY_FAKE, tvm=side == "tvm"))
            began = time.perf_counter()
            crowds[-1].add_boards(args.fake_boards)
            registered = time.perf_counter() - began
            ours = connect_tracker(*address, timeout=DEADLINE)
            clients.append(ours)
            summary = ours.summary()
            if key_state(summary, KEY_FAKE) != (args.fake_boards, args.fake_boards, 0):
                raise RuntimeError("%s's tracker shows %r" % (side, key_state(summary, KEY_FAKE)))
            size = len(encode_message([Code.SUCCESS, summary])) - 4
            result[side + "_tracker"] = {"register_s": registered, "summary_bytes": size}
            if side == "farm":
                calls["farm"] = ours.summary
                continue
            clients.append(args.tvm_rpc.connect_tracker(*address))
            calls.update(tvm=clients[-1].summary, farm_client_tvm_tracker=ours.summary)
        for call in calls.values():
            call()  # warm-up
        for name, seconds in harness.interleaved(calls, args.summary_repeats).items():
            result[name] = spread(seconds, 1e3)
        return result
    finally:
        for closable in clients + crowds:
            closable.close()
        procs.stop(keep)


# --- scale ------------------------------------------------------------------------------------------------

#: How many boards and waiting requests each step of a tracker's growth has, given the size and the smallest size.
PLANS: Dict[str, Callable[[int, int], Tuple[int, int]]] = {
    "boards": lambda size, small: (size, small),
    "waiters": lambda size, small: (small, size),
    "diagonal": lambda size, small: (size, size),
}
#: The per-event figures judged flat or logarithmic (and the SUMMARY, reported), and how to read each from a row.
PER_EVENT: Dict[str, Callable[[Dict[str, Any]], Optional[float]]] = {
    "latency_p50": lambda row: row["latency_ms"]["p50"],
    "cpu_per_handout": lambda row: row["cpu_ms_per_1000"],
    "kb_per_board": lambda row: row["kb_per_board"],
    "kb_per_request": lambda row: row["kb_per_request"],
    "summary": lambda row: row["summary_ms"],
}


def grow(plan: str, procs: Processes, args: Any, fd_budget: int) -> List[Dict[str, Any]]:
    """A tracker of its own grown through the plan's sizes; at each, a stream of releases and SUMMARY times."""
    keep = len(procs.running)
    tracker, address = procs.tracker()
    crowd, query = Crowd(address, KEY_SCALE, fd_budget), connect_tracker(*address, timeout=DEADLINE)
    rows = []
    try:
        for size in args.sizes:
            boards, requests = PLANS[plan](size, args.sizes[0])
            added, queued = boards - len(crowd.boards), requests - crowd.requests
            before = harness.proc_status(tracker.pid)["VmRSS"]
            crowd.add_boards(added)
            middle = harness.proc_status(tracker.pid)["VmRSS"]
            per = crowd.add_requests(queued) if queued > 0 else None
            after = harness.proc_status(tracker.pid)["VmRSS"]
            in_flight = max(1, min(32, crowd.requests // 2))
            cpu = harness.cpu_seconds(tracker.pid)
            latencies, elapsed = crowd.stream(args.releases, args.rate, in_flight)
            cpu = harness.cpu_seconds(tracker.pid) - cpu
            # the last clients' requests again, on connections of their own, may reach the tracker after a SUMMARY
            wait_until(lambda: key_state(query.summary(), KEY_SCALE)[2] == crowd.requests, DEADLINE,
                       "the tracker counts the %d requests queued as pending" % crowd.requests)  # fmt: skip
            summaries = [harness.timed(query.summary) for _ in range(args.summary_repeats)]
            latency = spread(latencies, 1e3)
            rows.append({
                "plan": plan, "size": size, "boards": boards, "requests": requests, "requests_per_connection": per,
                "kb_per_board": (middle - before) / added if added > 0 else None,
                "kb_per_request": (after - middle) / queued if queued > 0 else None,
                "connections": len(crowd.boards) + len(crowd.clients), "rss_kb": after, "in_flight": in_flight,
                "latency_ms": {"p50": latency["median"], "p99": latency["p99"], "max": latency["max"],
                               "count": len(latencies)},
                "handouts_per_s": len(latencies) / elapsed, "cpu_ms_per_1000": cpu / len(latencies) * 1e6,
                "summary_ms": statistics.median(summaries) * 1e3, "load_average": os.getloadavg()[0],
                "summary_bytes": len(encode_message([Code.SUCCESS, query.summary()])) - 4,
            })  # fmt: skip
            logger.info("%s %d: %d boards, %d requests: p99 %.2f ms", plan, size, boards, requests, latency["p99"])
        return rows
    finally:
        query.close()
        crowd.close()
        procs.stop(keep)


def exponent(rows: List[Dict[str, Any]], pick: Callable[[Dict[str, Any]], Optional[float]]) -> Optional[float]:
    """How a figure grows over the last two sizes: ``log(figure ratio) / log(size ratio)`` (1: in proportion)."""
    points = [(row["size"], pick(row)) for row in rows[-2:]]
    if len(points) < 2 or any(value is None or value <= 0 for _, value in points):
        return None
    (small, low), (large, high) = points
    return math.log(high / low) / math.log(large / small)  # type: ignore[operator]


def measure_scale(procs: Processes, args: Any) -> Dict[str, Any]:
    """Each plan on a tracker of its own; its growth exponents; the verdicts."""
    limits = raise_fd_limit(2 * args.sizes[-1] + RESERVED_FDS + 16)
    budget = int(limits["soft"]) - RESERVED_FDS if limits["soft"] != resource.RLIM_INFINITY else 2 * args.sizes[-1]
    result: Dict[str, Any] = {"sizes": args.sizes, "fd_limits": limits, "plans": {}, "growth": {}}
    for plan in args.plans:
        rows = result["plans"][plan] = grow(plan, procs, args, budget)
        result["growth"][plan] = {name: exponent(rows, pick) for name, pick in PER_EVENT.items()}
    growth = [value for plan in result["growth"].values() for name, value in plan.items()
              if name != "summary" and value is not None]  # fmt: skip
    result["flat"] = all(value <= FLAT_EXPONENT for value in growth) if growth else None
    result["worst_exponent"] = max(growth, default=None)
    if "diagonal" in result["plans"]:
        corner = result["plans"]["diagonal"][-1]
        p99 = corner["latency_ms"]["p99"]
        result["corner"] = {"boards": corner["boards"], "requests": corner["requests"], "p99_ms": p99,
                            "met": p99 < LATENCY_TARGET_MS}  # fmt: skip
    result["figures"] = draw(args.figures, "scale-tracker.svg", (2, 2), scale_panels(result))
    return result


# --- board ------------------------------------------------------------------------------------------------


def memory_kb(pids: Sequence[int]) -> Dict[str, int]:
    """Resident, proportional (PSS: a page shared by N processes counts 1/N) and private kB of processes."""
    sizes = [dict(harness.private_kb(pid), rss=harness.proc_status(pid)["VmRSS"]) for pid in pids]
    return {name: sum(size[name] for size in sizes) for name in ("rss", "pss", "private")}


def session_kb(side: Side) -> Dict[str, int]:
    """The memory of the process of one session, opened for the purpose."""
    session = side.connect()
    try:
        return memory_kb([int(session.system_info()["pid"])])
    finally:
        session.close()


def measure_one_board(side: Side, count: int, samples: int) -> Dict[str, Any]:
    """``count`` sessions back to back in 20 steps, and after each the memory of the daemon and the long-lived
    processes forked from it (the session spawner, the watchdog: their PSS moves as pages they share stop being
    shared, their RSS grows if they keep something per session); then the memory of ``samples`` sessions."""
    side.open_and_close(2)  # warm-up
    with open("/proc/%d/task/%d/children" % (side.board.pid, side.board.pid), encoding="ascii") as handle:
        forked = [int(word) for word in handle.read().split()]
    opens: List[float] = []
    curve: List[Dict[str, Any]] = []
    while len(opens) < count:
        began = time.perf_counter()
        times = [opened for opened, _ in side.open_and_close(min(max(1, count // 20), count - len(opens)))]
        elapsed = time.perf_counter() - began
        opens += times
        daemon = memory_kb([side.board.pid, *forked])
        curve.append({"served": len(opens), "seconds": elapsed, "sessions_per_s": len(times) / elapsed,
                      "open_ms": statistics.median(times) * 1e3, "daemon_kb": daemon})  # fmt: skip
    memory = [session_kb(side) for _ in range(samples)]
    return {"sessions": count, "sessions_per_s": count / sum(point["seconds"] for point in curve),
            "open_ms": spread(opens, 1e3), "curve": curve, "forked": len(forked),
            "session_kb": {name: statistics.median(row[name] for row in memory) for name in memory[0]}}  # fmt: skip


def measure_board(procs: Processes, args: Any) -> Dict[str, Any]:
    """A board of this checkout, then each emulated one (the packed server under qemu-user), one at a time."""
    result: Dict[str, Any] = {"boards": {}}
    for arch in ["local", *args.emulated]:
        if arch == "local":
            server, env = [sys.executable, "-m", "farm.server"], board_env(str(harness.PROJECT))
        else:
            from farm.ops.emulators import python_command

            archive = pack(str(harness.PROJECT), os.path.join(procs.workdir, "server.pyz"))
            server, env = [*python_command(arch), archive], board_env(None)
        side = Side(arch if arch == "local" else "emulated-" + arch, server, env, procs.workdir, TlsConfig())
        try:
            count = args.sessions if arch == "local" else args.emulated_sessions
            result["boards"][arch] = measure_one_board(side, count, args.memory_samples)
        finally:
            side.stop()
    result["figures"] = draw(args.figures, "scale-board.svg", (1, 3), board_panels(result))
    return result


# --- plots ---------------------------------------------------------------------------------------------

#: A panel of a figure: its title, its x label, whether its axes are logarithmic (x, y), and its lines, each
#: (label, style, colour or None, points).
Panel = Tuple[str, str, Tuple[bool, bool], List[Tuple[str, str, Optional[str], List[Tuple[float, Any]]]]]


def scale_panels(figures: Dict[str, Any]) -> List[Panel]:
    small, sizes = figures["sizes"][0], figures["sizes"]
    labels = {"boards": "boards, %d requests" % small, "waiters": "requests, %d boards" % small,
              "diagonal": "boards = requests"}  # fmt: skip
    kinds = (
        ("offer or request to assignment, ms", (("p99", lambda r: r["latency_ms"]["p99"]),
                                                ("p50", PER_EVENT["latency_p50"]))),
        ("tracker CPU, ms per 1,000 hand-outs", (("", PER_EVENT["cpu_per_handout"]),)),
        ("tracker RSS, kB per board / per request", (("board", PER_EVENT["kb_per_board"]),
                                                     ("request", PER_EVENT["kb_per_request"]))),
        ("SUMMARY, ms", (("", PER_EVENT["summary"]),)),
    )  # fmt: skip
    panels: List[Panel] = []
    for title, series in kinds:
        lines = [(("%s %s" % (labels[plan], what)).strip(), style, "C%d" % list(PLANS).index(plan),
                  [(row["size"], pick(row)) for row in rows if (pick(row) or 0) > 0])
                 for plan, rows in figures["plans"].items()
                 for (what, pick), style in zip(series, ("o-", "s--"))]  # fmt: skip
        panels.append((title, "size: boards, requests, or both", (True, True), lines))
    panels[0][3].insert(0, ("target for p99", ":", "red", [(size, LATENCY_TARGET_MS) for size in sizes]))
    return panels


def board_panels(figures: Dict[str, Any]) -> List[Panel]:
    picks = (("open a session (median of each step), ms", True, lambda point: point["open_ms"]),
             ("sessions per second", True, lambda point: point["sessions_per_s"]),
             ("daemon and its children, RSS MB", False, lambda point: point["daemon_kb"]["rss"] / 1024))  # fmt: skip
    return [(title, "sessions served", (False, log),
             [(name, "o-", None, [(point["served"], pick(point)) for point in row["curve"]])
              for name, row in figures["boards"].items()]) for title, log, pick in picks]  # fmt: skip


def draw(directory: str, name: str, shape: Tuple[int, int], panels: List[Panel]) -> str:
    """Draw ``panels`` (``shape``: rows, columns) into ``directory/name``; a line saying where, or why not."""
    if not directory:
        return "plots: not drawn (no --figures directory)"
    try:
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError as exc:
        return "plots: not drawn, matplotlib is not installed (the bench extra: pip install -e .[bench]): %s" % exc
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "bench-scale", "font.size": 9})
    figure, axes = plt.subplots(*shape, figsize=(10, 7) if shape == (2, 2) else (12, 3.6), constrained_layout=True,
                                squeeze=False)  # fmt: skip
    plain = FuncFormatter(lambda value, _: "%g" % value)
    for axis, (title, xlabel, (log_x, log_y), lines) in zip(axes.flat, panels):
        for label, style, color, points in lines:
            if points:
                axis.plot(*zip(*points), style, color=color, label=label)
        axis.set(title=title, xlabel=xlabel, xscale="log" if log_x else "linear", yscale="log" if log_y else "linear")
        if log_x:  # plain numbers on the y axis; the minor ticks labelled too when it spans few decades
            low, high = axis.get_ylim()
            axis.yaxis.set_major_formatter(plain)
            axis.yaxis.set_minor_formatter(plain if high / low < 20 else NullFormatter())
        axis.grid(True, which="both" if log_x else "major", alpha=0.3)
        axis.legend(fontsize=7)
    path = os.path.join(os.path.abspath(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, metadata={"Date": None, "Creator": None})
    plt.close(figure)
    inside = os.path.commonpath([path, str(harness.PROJECT)]) == str(harness.PROJECT)
    return "plots: %s" % (os.path.relpath(path, str(harness.PROJECT)) if inside else path)


# --- reports, headline, tool ---------------------------------------------------------------------------------


def number(value: Optional[float], form: str = "%.2f") -> str:
    return "-" if value is None else form % value


def section(title: str, header: Sequence[str], rows: List[Sequence[Any]]) -> List[str]:
    return ["### " + title, ""] + table(header, rows) + [""]


def report_requests(figures: Dict[str, Any], args: Any) -> List[str]:
    header = ("request to a ready session, ms", "first", "median (min-max)", "p99", "free again after close", "n")
    rows = [(name, "%.2f" % row["first"], mmm(row), "%.2f" % row["p99"], mmm(row["free_again_ms"]), row["rounds"])
            for name, row in figures.items()]  # fmt: skip
    return section("Requests", header, rows)


def report_concurrency(load: Dict[str, Any], args: Any) -> List[str]:
    header = ("phase", "cycles/s", "cycles", "wait median / p99, ms", "WAITING messages",
              "priority violations / constraints", "arrival violations / constraints", "end: free of total, pending",
              "errors", "checks pass")  # fmt: skip
    rows = []
    for phase in ("plain", "progress"):
        row, order, checks = load[phase], load[phase]["order"], load[phase]["checks"]
        rows.append((phase, "%.1f" % row["cycles_per_s"], row["cycles_in_window"],
                     "%s / %s" % (number(row["request_wait_median_ms"]), number(row["request_wait_p99_ms"])),
                     row["waiting_messages"], "%(priority_violations)d / %(priority_constraints)d" % order,
                     "%(arrival_order_violations)d / %(arrival_constraints)d" % order,
                     "%(final_free)d of %(final_total)d, %(final_pending)d" % checks, checks["error_count"],
                     "yes" if checks["pass"] else "NO"))  # fmt: skip
    title = "Concurrency: %d clients cycling request -> ping -> close over %d boards of one key"
    return section(title % (load["clients"], load["boards"]), header, rows)


def report_summary(summary: Dict[str, Any], args: Any) -> List[str]:
    sides = (("farm", "farm tracker, farm client"), ("tvm", "TVM tracker, TVM client"),
             ("farm_client_tvm_tracker", "TVM tracker, farm client"))  # fmt: skip
    rows = []
    for name, label in sides:
        if name in summary:
            tracker = summary["farm_tracker" if name == "farm" else "tvm_tracker"]
            rows.append((label, mmm(summary[name]), tracker["summary_bytes"], "%.2f" % tracker["register_s"]))
    header = ("", "median (min-max)", "bytes", "registering them, s")
    return section("summary() of a tracker with %d boards, ms" % summary["boards"], header, rows)


def report_scale(scale: Dict[str, Any], args: Any) -> List[str]:
    header = ("plan", "boards", "requests (per connection)", "p50 / p99 ms", "hand-outs/s", "CPU ms / 1,000",
              "kB / board", "kB / request", "SUMMARY ms (kB)", "tracker RSS MB")  # fmt: skip
    rows = [(plan, row["boards"], "%d (%s)" % (row["requests"], row["requests_per_connection"] or "-"),
             "%.2f / %.2f" % (row["latency_ms"]["p50"], row["latency_ms"]["p99"]), "%.0f" % row["handouts_per_s"],
             "%.0f" % row["cpu_ms_per_1000"], number(row["kb_per_board"], "%.1f"),
             number(row["kb_per_request"], "%.1f"), "%.2f (%.0f)" % (row["summary_ms"], row["summary_bytes"] / 1e3),
             "%.1f" % (row["rss_kb"] / 1024))
            for plan, plan_rows in scale["plans"].items() for row in plan_rows]  # fmt: skip
    title = "Scale: light peers, %d releases per size at %g per second" % (args.releases, args.rate)
    growth = [(plan, *map(number, row.values())) for plan, row in scale["growth"].items()]
    title_growth = "Growth from the second largest size to the largest, as an exponent (0: flat, 1: in proportion; "
    title_growth += "flat or logarithmic: <= %g)" % FLAT_EXPONENT
    return section(title, header, rows) + section(title_growth, ("plan", *PER_EVENT), growth) + [scale["figures"], ""]


def report_board(board: Dict[str, Any], args: Any) -> List[str]:
    header = ("board", "sessions", "sessions/s", "open ms, median (p99)", "session RSS / PSS / private MB",
              "daemon and its children RSS MB, first -> last")  # fmt: skip
    rows = []
    for name, row in board["boards"].items():
        first, last = (row["curve"][at]["daemon_kb"]["rss"] / 1024 for at in (0, -1))
        rows.append((name, row["sessions"], "%.1f" % row["sessions_per_s"],
                     "%.2f (%.2f)" % (row["open_ms"]["median"], row["open_ms"]["p99"]),
                     " / ".join("%.1f" % (kb / 1024) for kb in row["session_kb"].values()),
                     "%.1f -> %.1f" % (first, last)))  # fmt: skip
    return section("Board: sessions one after the other", header, rows) + [board["figures"], ""]


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    """TVM (or the older checkout) over farm: how many times faster ours is; requests against their target."""
    request, summary = results["scenarios"].get("requests", {}), results["scenarios"].get("summary", {})
    out: Dict[str, Any] = {}
    for other, variant in itertools.product(("tvm", "before"), ("", "_kept")):
        if other + variant in request:
            value = request[other + variant]["median"] / request["farm" + variant]["median"]
            judge = other == "tvm"
            out["request%s_%s_over_farm" % (variant, other)] = (
                judged(value, REQUEST_TARGET, ">=") if judge else {"ratio": value}
            )
    for variant in ("", "_kept"):
        if "tvm" + variant in request and "native" + variant in request:
            value = request["tvm" + variant]["median"] / request["native" + variant]["median"]
            out["request%s_tvm_over_native" % variant] = judged(value, REQUEST_TARGET, ">=")
    if "tvm" in request:
        value = request["tvm"]["first"] / request["farm"]["first"]
        out["request_first_tvm_over_farm"] = judged(value, REQUEST_TARGET, ">=")
    if "tvm" in summary:
        out["summary_tvm_over_farm"] = {"ratio": summary["tvm"]["median"] / summary["farm"]["median"]}
        out["summary_tvm_tracker_farm_client_over_farm"] = {
            "ratio": summary["farm_client_tvm_tracker"]["median"] / summary["farm"]["median"]
        }
    return out


def headline(results: Dict[str, Any]) -> List[Headline]:
    request, load, summary, scale, board = (results["scenarios"].get(name, {}) for name in
                                            ("requests", "concurrency", "summary", "scale", "board"))  # fmt: skip
    ratio, rows = results["ratios"], []
    for variant, label in (("", "request to a ready session"), ("_kept", "same, tracker connection kept")):
        for side, which in (("farm", ""), ("native", ", native board")):
            if side + variant not in request:
                continue
            ours, tvm = request[side + variant]["median"], ratio.get("request%s_tvm_over_%s" % (variant, side))
            anchor = "%.2f ms" % request["tvm" + variant]["median"] if tvm else "-"
            rows.append(Headline(label + which, "%.2f ms" % ours, anchor=anchor,
                                 target=">= %g x faster" % REQUEST_TARGET,
                                 ratio="%.1f x faster" % tvm["ratio"] if tvm else "-",
                                 met=tvm["pass"] if tvm else None))  # fmt: skip
        before = ratio.get("request%s_before_over_farm" % variant)
        if before:
            ours = "%.2f ms" % request["farm" + variant]["median"]
            rows.append(Headline(label + ": code before", ours, ratio="%.2f (before / ours)" % before["ratio"],
                                 anchor="%.2f ms (before)" % request["before" + variant]["median"]))  # fmt: skip
    for phase in ("plain", "progress") if load else ():
        rows.append(Headline("%d clients on %d boards, %s" % (load["clients"], load["boards"], phase),
                             "%.0f cycles/s" % load[phase]["cycles_per_s"], target="order and end state",
                             met=load[phase]["checks"]["pass"]))  # fmt: skip
    if summary:
        tvm = ratio.get("summary_tvm_over_farm")
        rows.append(Headline("summary() of %d boards" % summary["boards"], "%.2f ms" % summary["farm"]["median"],
                             anchor="%.2f ms" % summary["tvm"]["median"] if tvm else "-",
                             ratio="%.1f x faster" % tvm["ratio"] if tvm else "-"))  # fmt: skip
    if "corner" in scale:
        corner = scale["corner"]
        figure = "request to assignment p99, {boards:,} boards and {requests:,} waiting requests".format(**corner)
        rows.append(Headline(figure, "%.2f ms" % corner["p99_ms"], target="< %g ms" % LATENCY_TARGET_MS,
                             met=corner["met"]))  # fmt: skip
    if scale.get("flat") is not None:
        rows.append(Headline("per-event costs, growth exponent at the largest size (worst)",
                             "%.2f" % scale["worst_exponent"], target="<= %g (flat or logarithmic)" % FLAT_EXPONENT,
                             met=scale["flat"]))  # fmt: skip
    for name, row in board.get("boards", {}).items():
        rows.append(Headline("sessions per second, %s board" % name, "%.1f" % row["sessions_per_s"]))
    return rows


def check_args(args: Any) -> Optional[str]:
    counts = (args.clients, args.boards, args.priorities, args.fake_boards, args.summary_repeats, args.releases,
              args.sessions, args.emulated_sessions, args.memory_samples)  # fmt: skip
    if min(counts) < 1 or args.duration <= 0 or args.rate <= 0 or not args.sizes:
        return "every count, --duration and --rate must be positive, and --sizes name at least one size"
    unknown = set(args.plans) - set(PLANS)
    return "unknown plan(s): %s" % ", ".join(sorted(unknown)) if unknown else None


def names(text: str) -> List[str]:
    return [word for word in text.split(",") if word]


def sizes(text: str) -> List[int]:
    return sorted({int(word) for word in names(text)})


TOOL = Tool(
    name="bench_tracker",
    description=__doc__.split("\n\n")[0],
    tvm=True,
    rounds=Option(40, 3, "timed requests per variant"),
    options={
        "before": Option("", "", "a checkout (a directory holding farm/) whose tracker and board are measured", str),
        "native": Option(False, help="requests: add a tracker with a board of the native board server (C)", type=bool),
        "clients": Option(100, 10, "concurrent clients"),
        "boards": Option(4, 2, "boards under the one key of the concurrency run"),
        "duration": Option(20.0, 2.0, "seconds of cycling per phase", float),
        "priorities": Option(4, 4, "each client draws a priority in 0..N-1"),
        "seed": Option(1, 1, "seed of the priority draws"),
        "fake_boards": Option(1000, 50, "registered boards of the summary"),
        "summary_repeats": Option(50, 3, "timed summaries per variant, and at each size of scale"),
        "sizes": Option([10, 100, 1000, 10000], [10, 100], "sizes of scale's steps (boards, requests or both)", sizes),
        "plans": Option(list(PLANS), None, "which plans to grow: %s" % ", ".join(PLANS), names),
        "releases": Option(2000, 100, "releases (hand-outs) measured at each size"),
        "rate": Option(500.0, 500.0, "releases per second", float),
        "sessions": Option(400, 10, "sessions one after the other on the local board"),
        "emulated_sessions": Option(60, 4, "the same on each emulated board"),
        "memory_samples": Option(5, 2, "sessions whose process memory is read, per board"),
        "emulated": Option([], [], "comma-separated architectures of emulated boards (aarch64, armhf)", names),
        "figures": Option("", "", "directory of the SVG plots of scale and board (docs/figures for the docs)", str),
    },
    setup=setup,
    scenarios=[
        Scenario("requests", measure_requests, report_requests, anchor="TVM", target=">= %g x" % REQUEST_TARGET),
        Scenario("concurrency", measure_concurrency, report_concurrency, target="priority, then arrival order"),
        Scenario("summary", measure_summaries, report_summary, anchor="TVM"),
        # scale and board measure this checkout alone: an older one (--before) is compared on the requests
        Scenario(
            "scale",
            measure_scale,
            report_scale,
            target="p99 < %g ms, flat" % LATENCY_TARGET_MS,
            enabled=lambda args: not args.before,
        ),
        Scenario("board", measure_board, report_board, enabled=lambda args: not args.before),
    ],  # fmt: skip
    ratios=ratios,
    headline=headline,
    passed=lambda results: results["scenarios"].get("concurrency", {}).get("pass", True),  # with --only, what ran
    check_args=check_args,
    pin="none",
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
