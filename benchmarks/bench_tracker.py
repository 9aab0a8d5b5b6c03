"""Tracker: requests, concurrency and summaries, side by side with Apache TVM's tracker, board and client.

On loopback, in one run; the TVM side runs when the ``tvm`` extra imports (``--no-tvm`` leaves it out):

* **requests**: from ``connect_tracker(...)`` to the first remote call answered on a free board (``request(key)``,
  then ``ping()`` on ours, ``rpc.test.addone(1)`` on TVM's); also with the tracker connection kept, and from a
  fresh client process (the clock starts after the client library's import). Each repeat closes the session and
  waits until the board is offered again; the variants take turns. ``--before DIR`` adds a tracker and a board of
  the checkout in DIR (the fresh process uses that checkout's client too).
* **concurrency**: many client threads cycling request -> ping -> close over a few boards of one key, each with a
  random priority; once plain, once with progress reports. Cycles per second; every board free again and nothing
  pending; from the tracker's log of hand-outs, requests served in priority order, then arrival order.
* **summary** of a tracker with many registered (fake) boards: ours with our client, TVM's with TVM's and ours.

Times are milliseconds. A failed check of the concurrency run makes the exit status 1.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import harness
import numpy as np
from harness import Headline, Option, Scenario, Tool, judged, mmm, spread, table, wait_until

from farm.client.tracker import TrackerClient, connect_tracker  # noqa: E402
from farm.ops.processes import DaemonProcess, board_command  # noqa: E402
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message  # noqa: E402

logger = logging.getLogger("bench_tracker")

HOST = "127.0.0.1"
KEY_REQUEST = "bench-request"
KEY_LOAD = "bench-load"
KEY_FAKE = "bench-fake"
SESSION_TIMEOUT = 60
REQUEST_TARGET = 10.0  # a request to a ready session at least this many times faster than TVM's (medians)
DEADLINE = 30.0  # how long a board may take to be offered again, the daemons to start, and so on

Address = Tuple[str, int]
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
# The tracker's line for each board it hands out (farm/tracker/state.py, TrackerState._schedule).
_ASSIGNED = re.compile(r"board \S+:\d+ of key '([^']*)' to \S+ \(([^)]*)\) after [\d.]+ s")
# A client in a fresh process, of whichever checkout is on its path: the clock starts once the client
# library is imported (TVM's side imports tvm.rpc before its clock too).
_COLD_FARM = """
import json, sys, time
import farm
farm.connect_tracker, farm.connect
host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
client = farm.connect_tracker(host, port)
session = client.request(key, session_timeout=%d)
session.ping()
elapsed = time.perf_counter() - start
client.close()
session.close()
print(json.dumps({"seconds": elapsed}))
""" % (SESSION_TIMEOUT,)
_COLD_TVM = """
import json, sys, time
from tvm import rpc
host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
client = rpc.connect_tracker(host, port)
session = client.request(key, priority=1, session_timeout=%d)
assert session.get_function("rpc.test.addone")(1) == 2
elapsed = time.perf_counter() - start
client.close()
print(json.dumps({"seconds": elapsed}))
""" % (SESSION_TIMEOUT,)


def key_state(summary: Dict[str, Any], key: str) -> Tuple[int, int, int]:
    """``(total, free, pending)`` of ``key``, counted as TVM's query tool counts them."""
    queue_info = summary.get("queue_info", {}).get(key, {})
    total = sum(1 for server in summary.get("server_info", []) if server.get("key") == "server:" + key)
    return total, queue_info.get("free", 0), queue_info.get("pending", 0)


def raise_fd_limit(needed: int) -> Dict[str, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit if ``needed`` descriptors do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return {"soft_before": before, "soft": soft, "hard": hard, "needed": needed}


class Processes:
    """Every daemon this run starts: trackers and boards, ours, TVM's and an older checkout's."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.running: List[DaemonProcess] = []

    def start(self, name: str, argv: List[str], checkout: Optional[str] = None) -> DaemonProcess:
        log = os.path.join(self.workdir, "%02d-%s.log" % (len(self.running), name))
        env = harness.child_env(checkout)
        daemon = DaemonProcess(argv, log, env=env, cwd=checkout or str(harness.PROJECT))
        self.running.append(daemon)  # before waiting, so that a failed start is stopped too
        daemon.wait_for_bind(DEADLINE)
        return daemon

    def tracker(self, checkout: Optional[str] = None) -> Address:
        argv = [sys.executable, "-m", "farm.tracker", "--host", HOST, "--port", "0"]
        return self.start("tracker", argv, checkout).address  # type: ignore[return-value]

    def board(self, key: str, tracker: Address, checkout: Optional[str] = None) -> None:
        self.start("board", board_command(key, HOST, 0, extra=["--tracker", "%s:%d" % tracker]), checkout)

    def tvm_tracker(self) -> Address:
        first, end = harness.port_range(HOST)
        argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(first)]
        return self.start("tvm-tracker", [*argv, "--port-end", str(end)]).address  # type: ignore[return-value]

    def tvm_board(self, key: str, tracker: Address) -> None:
        first, end = harness.port_range(HOST)
        argv = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", HOST, "--port", str(first)]
        self.start("tvm-board", [*argv, "--port-end", str(end), "--tracker", "%s:%d" % tracker, "--key", key])

    def stop(self, keep: int = 0) -> None:
        """Stop every daemon but the first ``keep``, the last started first."""
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


class Watch:
    """A standing connection to a tracker (ours or TVM's) for polling its summary."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.client = connect_tracker(*address, timeout=DEADLINE)

    def state(self, key: str) -> Tuple[int, int, int]:
        return key_state(self.client.summary(), key)

    def wait_free(self, key: str, boards: int, timeout: float = DEADLINE) -> float:
        """Wait until all ``boards`` of ``key`` are offered and nothing is pending; seconds waited."""
        start = time.perf_counter()
        what = "%d board(s) of key %r are free at the tracker at %s:%d" % ((boards, key) + self.address)
        wait_until(lambda: self.state(key) == (boards, boards, 0), timeout, what)
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.close()


# --- requests ------------------------------------------------------------------------------------


def farm_cycle(tracker: Address, watch: Watch, kept: Optional[TrackerClient] = None) -> Tuple[float, float]:
    """Our request to a ready session; then seconds from closing it until the board is offered again."""
    start = time.perf_counter()
    client = kept or connect_tracker(*tracker)
    session = client.request(KEY_REQUEST, session_timeout=SESSION_TIMEOUT)
    session.ping()
    ready = time.perf_counter()
    if kept is None:
        client.close()
    closing = time.perf_counter()
    session.close()
    return ready - start, watch.wait_free(KEY_REQUEST, 1) + (time.perf_counter() - closing)


def tvm_cycle(tvm_rpc: Any, tracker: Address, watch: Watch, kept: Any = None) -> Tuple[float, float]:
    """TVM's request to a ready session; a session closes when its last reference goes."""
    start = time.perf_counter()
    client = kept or tvm_rpc.connect_tracker(*tracker)
    session = client.request(KEY_REQUEST, priority=1, session_timeout=SESSION_TIMEOUT)
    answer = session.get_function("rpc.test.addone")(1)
    ready = time.perf_counter()
    if kept is None:
        client.close()
    if answer != 2:
        raise RuntimeError("TVM's rpc.test.addone(1) returned %r" % (answer,))
    closing = time.perf_counter()
    del session
    gc.collect()
    return ready - start, watch.wait_free(KEY_REQUEST, 1) + (time.perf_counter() - closing)


def cold_request(code: str, tracker: Address, watch: Watch, checkout: Optional[str]) -> float:
    """Seconds of a request from a fresh client process (of ``checkout``); waits until the board is free again."""
    argv = [sys.executable, "-c", code, tracker[0], str(tracker[1]), KEY_REQUEST]
    env, cwd = harness.child_env(checkout), checkout or str(harness.PROJECT)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE * 2, env=env, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError("the fresh client process failed:\n%s%s" % (done.stdout, done.stderr[-4000:]))
    watch.wait_free(KEY_REQUEST, 1)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def measure_requests(procs: Processes, args: Any) -> Dict[str, Any]:
    """Each side's request to a ready session, with a new tracker connection and with one kept."""
    keep = len(procs.running)
    closing: List[Any] = []
    cycles: Dict[str, Callable[[], Tuple[float, float]]] = {}
    cold: Dict[str, Callable[[], float]] = {}
    checkouts = {"farm": None, **({"before": os.path.abspath(args.before)} if args.before else {})}
    try:
        for name, checkout in checkouts.items():
            address = procs.tracker(checkout)
            procs.board(KEY_REQUEST, address, checkout)
            watch = Watch(address)
            kept = connect_tracker(*address, timeout=DEADLINE)
            closing += [watch, kept]
            cycles[name] = functools.partial(farm_cycle, address, watch)
            cycles[name + "_kept"] = functools.partial(farm_cycle, address, watch, kept)
            cold[name] = functools.partial(cold_request, _COLD_FARM, address, watch, checkout)
        if args.tvm_rpc is not None:
            address = procs.tvm_tracker()
            procs.tvm_board(KEY_REQUEST, address)
            watch = Watch(address)
            kept = args.tvm_rpc.connect_tracker(*address)
            closing += [watch, kept]
            cycles["tvm"] = functools.partial(tvm_cycle, args.tvm_rpc, address, watch)
            cycles["tvm_kept"] = functools.partial(tvm_cycle, args.tvm_rpc, address, watch, kept)
            cold["tvm"] = functools.partial(cold_request, _COLD_TVM, address, watch, None)
        for watcher in closing[::2]:
            watcher.wait_free(KEY_REQUEST, 1)
        times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in cycles}
        for repeat in range(args.rounds):  # the first repeat starts with a new connection on each side
            for name in harness.rotated(list(cycles), repeat):
                gc.collect()
                times[name].append(cycles[name]())
        result: Dict[str, Any] = {}
        for name, pairs in times.items():
            result[name] = spread([pair[0] for pair in pairs], 1e3)
            result[name]["free_again_ms"] = spread([pair[1] for pair in pairs], 1e3)
        fresh: Dict[str, List[float]] = {name: [] for name in cold}
        for repeat in range(args.cold_repeats):
            for name in harness.rotated(list(cold), repeat):
                fresh[name].append(cold[name]())
        for name, seconds in fresh.items():
            if seconds:
                result[name + "_fresh"] = spread(seconds, 1e3)
        return result
    finally:
        for closable in closing:
            closable.close()
        procs.stop(keep)


def report_requests(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [(name, "%.2f" % row["first"] if "first" in row else "-", mmm(row), "%.2f" % row["p99"],
             mmm(row.get("free_again_ms")), row["rounds"])
            for name, row in figures.items()]  # fmt: skip
    header = ("request to a ready session, ms", "first", "median (min-max)", "p99", "free again after close", "n")
    return ["### Requests", ""] + table(header, rows) + [""]


class Cycle:
    """One client's request -> session -> close, on the monotonic clock."""

    __slots__ = ("tag", "client", "priority", "sent", "queued", "served", "done")

    def __init__(self, tag: str, client: int, priority: int) -> None:
        self.tag = tag
        self.client = client
        self.priority = priority
        self.sent = 0.0  # just before request() was called
        self.queued: Optional[float] = None  # when the first WAITING message arrived, if any
        self.served: Optional[float] = None  # when request() returned the session
        self.done: Optional[float] = None  # when the session was closed


class LoadClient:
    """A client thread: request -> ping -> close until told to stop; stops at its first error."""

    def __init__(
        self,
        index: int,
        priority: int,
        client: TrackerClient,
        phase: str,
        progress: bool,
        wait: float,
        go: threading.Event,
        stop: threading.Event,
        draw: Optional[Callable[[], int]] = None,
    ) -> None:
        self.index = index
        self.priority = priority
        self.draw = draw  # a new priority for each request, if given
        self.client = client
        self.phase = phase
        self.progress = progress
        self.wait = wait
        self.go = go
        self.stop = stop
        self.cycles: List[Cycle] = []
        self.errors: List[str] = []
        self.failed: List[Cycle] = []  # the cycle an error ended
        self.reports = 0  # WAITING messages received
        self._current: Optional[Cycle] = None
        self.thread = threading.Thread(target=self._run, name="client-%d" % index, daemon=True)

    def _on_progress(self, _state: Dict[str, Any]) -> None:
        self.reports += 1
        current = self._current
        if current is not None and current.queued is None:
            current.queued = time.monotonic()

    def _run(self) -> None:
        self.go.wait()
        on_progress = self._on_progress if self.progress else None
        number = 0
        while not self.stop.is_set():
            priority = self.priority if self.draw is None else self.draw()
            cycle = Cycle("%s.c%03d.%d" % (self.phase, self.index, number), self.index, priority)
            number += 1
            self._current = cycle
            cycle.sent = time.monotonic()
            try:
                session = self.client.request(
                    KEY_LOAD,
                    priority=priority,
                    session_timeout=SESSION_TIMEOUT,
                    wait=self.wait,
                    user=cycle.tag,
                    on_progress=on_progress,
                )
                cycle.served = time.monotonic()
                try:
                    session.ping()
                finally:
                    session.close()
                cycle.done = time.monotonic()
            except Exception as exc:  # noted and checked
                self.errors.append("%s: %s: %s" % (cycle.tag, type(exc).__name__, exc))
                self.failed.append(cycle)
                return
            finally:
                self._current = None
            self.cycles.append(cycle)


def served_order(log_text: str, key: str, phase: str) -> List[str]:
    """The user tags of the requests of ``phase`` the tracker handed a board of ``key`` to, in its order."""
    tags = (match.group(2) for match in _ASSIGNED.finditer(log_text) if match.group(1) == key)
    return [tag for tag in tags if tag.startswith(phase + ".")]


def order_check(cycles: List[Cycle], order: List[str]) -> Dict[str, Any]:
    """Check the order in which the tracker handed out boards against priority and arrival.

    For two served requests A and B, A was surely queued before B arrived when A's first WAITING
    message reached its client before B's client called request(): the tracker had queued A before
    B's request was even sent. Every such pair with A's priority higher than B's, or equal, obliges the
    tracker to serve A first (an ordering constraint); B served first is a priority violation or an
    arrival-order violation. Served first means an earlier line in the tracker's log of hand-outs.
    """
    position = {}
    repeated = set()
    for index, tag in enumerate(order):
        if tag in position:
            repeated.add(tag)  # handed out twice: the client retried with another board
        position[tag] = index
    usable = [c for c in cycles if c.tag in position and c.tag not in repeated]
    served = np.array([position[c.tag] for c in usable], dtype=np.int64)
    priority = np.array([c.priority for c in usable], dtype=np.int64)
    sent = np.array([c.sent for c in usable], dtype=np.float64)
    queued = np.array([np.nan if c.queued is None else c.queued for c in usable], dtype=np.float64)
    waited = ~np.isnan(queued)
    a_served, a_priority, a_queued = served[waited, None], priority[waited, None], queued[waited, None]
    counts = dict.fromkeys(
        (
            "priority_constraints",
            "arrival_constraints",
            "priority_violations",
            "arrival_order_violations",
            "overtaken_by_higher_priority",
        ),
        0,
    )
    chunk = max(1, 4_000_000 // max(1, len(a_served)))
    for start in range(0, len(usable), chunk):
        b_served = served[None, start : start + chunk]
        b_priority = priority[None, start : start + chunk]
        b_sent = sent[None, start : start + chunk]
        before = a_queued < b_sent  # A was queued before B's request was sent
        overtaken = before & (a_served > b_served)
        higher = before & (a_priority > b_priority)
        same = before & (a_priority == b_priority)
        counts["priority_constraints"] += int(higher.sum())
        counts["arrival_constraints"] += int(same.sum())
        counts["priority_violations"] += int((higher & overtaken).sum())
        counts["arrival_order_violations"] += int((same & overtaken).sum())
        counts["overtaken_by_higher_priority"] += int((overtaken & (a_priority < b_priority)).sum())
    return {
        "served_in_log": len(order),
        "handed_out_twice": len(repeated),
        "cycles_checked": len(usable),
        "cycles_that_waited": int(waited.sum()),
        **counts,
    }


def load_phase(args: Any, tracker: DaemonProcess, watch: Watch, phase: str, progress: bool) -> Dict[str, Any]:
    """``args.clients`` threads cycling over the boards of KEY_LOAD for ``args.duration`` seconds, then checks."""
    address = tracker.address
    assert address is not None
    go, stop = threading.Event(), threading.Event()
    clients: List[LoadClient] = []
    rng = random.Random(args.seed)
    wait = args.duration + 2 * DEADLINE  # bounded, whatever happens
    try:
        for index in range(args.clients):
            client = connect_tracker(*address, timeout=DEADLINE)
            priority = rng.randrange(args.priorities)
            draw = None
            if args.priority_draw == "request":
                draw = functools.partial(random.Random(args.seed * 1000 + index).randrange, args.priorities)
            clients.append(LoadClient(index, priority, client, phase, progress, wait, go, stop, draw))
        for client in clients:
            client.thread.start()
        logger.info(
            "concurrency (%s): %d clients, %d boards, priorities 0..%d drawn per %s, %g s",
            phase,
            args.clients,
            args.boards,
            args.priorities - 1,
            args.priority_draw,
            args.duration,
        )
        start = time.monotonic()
        go.set()
        time.sleep(args.duration)
        end = time.monotonic()
        stop.set()
        deadline = time.monotonic() + DEADLINE * 2
        for client in clients:
            client.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [client.index for client in clients if client.thread.is_alive()]
        drained = time.monotonic()
        settle_s = None
        try:
            settle_s = watch.wait_free(KEY_LOAD, args.boards, DEADLINE)
        except RuntimeError as exc:
            logger.error("%s", exc)
        final_summary = watch.client.summary()
        total, free, pending = key_state(final_summary, KEY_LOAD)
        states = sorted(
            server.get("state", "?")
            for server in final_summary["server_info"]
            if server.get("key") == "server:" + KEY_LOAD
        )
        cycles = [cycle for client in clients for cycle in client.cycles]
        failed = [cycle for client in clients for cycle in client.failed]
        errors = [error for client in clients for error in client.errors]
        in_window = [c for c in cycles if c.done is not None and c.done <= end]
        wait_ms = [(c.served - c.sent) * 1e3 for c in cycles if c.served is not None]
        by_priority: Dict[str, Dict[str, Any]] = {}
        per_client = [client.priority for client in clients]
        for level in range(args.priorities):
            mine = [c for c in cycles if c.priority == level]
            waits = [(c.served - c.sent) * 1e3 for c in mine if c.served is not None]
            by_priority[str(level)] = {
                "clients": per_client.count(level) if args.priority_draw == "client" else None,
                "cycles_in_window": sum(1 for c in in_window if c.priority == level),
                "cycles": len(mine),
                "median_wait_ms": statistics.median(waits) if waits else None,
                "max_wait_ms": max(waits) if waits else None,
            }
        served = served_order(tracker.log_text(), KEY_LOAD, phase)
        order = order_check(cycles, served)
        handed_out = {cycle.tag for cycle in cycles + failed if cycle.served is not None}
        checks: Dict[str, Any] = {
            "final_total": total,
            "final_free": free,
            "final_pending": pending,
            "final_board_states": states,
            "boards_all_free": total == free == args.boards and pending == 0 and states == ["free"] * args.boards,
            "settle_ms": None if settle_s is None else settle_s * 1e3,
            "errors": errors[:20],
            "error_count": len(errors),
            "stuck_clients": stuck,
            # each session a client got is one hand-out in the tracker's log, and no request got two
            "every_request_logged": set(served) == handed_out and len(served) == len(handed_out),
            "order_ok": order["priority_violations"] == 0 and order["arrival_order_violations"] == 0,
        }
        checks["pass"] = bool(
            checks["boards_all_free"]
            and not errors
            and not stuck
            and checks["every_request_logged"]
            and checks["order_ok"]
            and (order["priority_constraints"] + order["arrival_constraints"] > 0 or not progress)
        )
        return {
            "progress_reports": progress,
            "duration_s": end - start,
            "cycles_in_window": len(in_window),
            "cycles_per_s": len(in_window) / (end - start),
            "cycles_total": len(cycles),
            "waiting_messages": sum(client.reports for client in clients),
            "drain_s": drained - end,
            "request_wait_median_ms": statistics.median(wait_ms) if wait_ms else None,
            "request_wait_p99_ms": float(np.percentile(wait_ms, 99)) if wait_ms else None,
            "by_priority": by_priority,
            "order": order,
            "checks": checks,
        }
    finally:
        stop.set()
        go.set()  # a thread still waiting to start sees the stop at once
        deadline = time.monotonic() + 5
        for client in clients:
            if client.thread.ident is not None:  # started
                client.thread.join(max(0.0, deadline - time.monotonic()))
            if not client.thread.is_alive():
                client.client.close()  # a thread still blocked ends when the tracker is stopped


class FakeBoards:
    """Boards that only register: one raw tracker connection each, UPDATE_INFO and PUT, never serving."""

    def __init__(self) -> None:
        self.socks: List[socket.socket] = []

    def register(self, tracker: Address, count: int, key: str) -> float:
        """Register ``count`` boards with the tracker, one after the other; seconds it took."""
        start = time.perf_counter()
        for index in range(count):
            sock = socket.create_connection(tracker, timeout=DEADLINE)
            self.socks.append(sock)
            reader = MessageReader(expect_magic=True)
            sock.sendall(encode_magic())  # alone: TVM's tracker wants the magic in a segment of its own
            replies = self._receive(sock, reader, 0)
            port = 20000 + index  # nobody listens there: a client handed this board could not use it
            info = {"key": "server:" + key, "addr": [None, port]}
            matchkey = "%s:fake%d" % (key, index)
            # One message at a time, each answered before the next, and every segment acknowledged at once
            # (TCP_QUICKACK, Linux): a tracker that writes a reply in two pieces (TVM's writes the length,
            # then the JSON) or two replies back to back (ours, to two messages in one segment) has its
            # second write held by Nagle's algorithm until the first is acknowledged, which a delayed ACK
            # puts off by about 40 ms. This is setup, not what is measured.
            sock.sendall(encode_message([Code.UPDATE_INFO, info]))
            replies = self._receive(sock, reader, 1, replies)
            sock.sendall(encode_message([Code.PUT, key, [port, matchkey]]))
            replies = self._receive(sock, reader, 2, replies)
            if replies != [Code.SUCCESS, Code.SUCCESS]:
                raise RuntimeError("the tracker answered a fake board's UPDATE_INFO and PUT with %r" % (replies,))
        return time.perf_counter() - start

    @staticmethod
    def _receive(sock: socket.socket, reader: MessageReader, count: int, replies: Optional[list] = None) -> list:
        replies = [] if replies is None else replies
        while not reader.magic_seen or len(replies) < count:
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # see FakeBoards.register
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the tracker closed a fake board's connection")
            replies += reader.feed(data)
        return replies

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


def measure_concurrency(procs: Processes, args: Any) -> Dict[str, Any]:
    """Two load phases on one tracker and set of boards: plain requests, then requests with progress reports."""
    keep = len(procs.running)
    watch: Optional[Watch] = None
    try:
        address = procs.tracker()
        tracker = procs.running[-1]
        for _ in range(args.boards):
            procs.board(KEY_LOAD, address)
        watch = Watch(address)
        watch.wait_free(KEY_LOAD, args.boards)
        result: Dict[str, Any] = {"clients": args.clients, "boards": args.boards}
        for phase, progress in (("plain", False), ("progress", True)):
            result[phase] = load_phase(args, tracker, watch, phase, progress)
        result["pass"] = all(result[phase]["checks"]["pass"] for phase in ("plain", "progress"))
        return result
    finally:
        if watch is not None:
            watch.close()
        procs.stop(keep)


def report_concurrency(load: Dict[str, Any], args: Any) -> List[str]:
    lines = ["### Concurrency: %d clients cycling request -> ping -> close over %d boards of one key"
             % (load["clients"], load["boards"]), ""]  # fmt: skip
    rows = []
    for phase in ("plain", "progress"):
        row, checks, order = load[phase], load[phase]["checks"], load[phase]["order"]
        rows.append((phase, "%.1f" % row["cycles_per_s"], row["cycles_in_window"],
                     "%.1f / %.1f" % (row["request_wait_median_ms"] or 0, row["request_wait_p99_ms"] or 0),
                     row["waiting_messages"], "%d/%d" % (order["priority_violations"], order["priority_constraints"]),
                     "%d/%d" % (order["arrival_order_violations"], order["arrival_constraints"]),
                     "%d free of %d, %d pending" % (checks["final_free"], checks["final_total"],
                                                    checks["final_pending"]),
                     checks["error_count"], "yes" if checks["pass"] else "NO"))  # fmt: skip
    header = ("phase", "cycles/s", "cycles", "wait median / p99, ms", "WAITING messages",
              "priority violations / constraints", "arrival violations / constraints", "end state", "errors",
              "checks pass")  # fmt: skip
    lines += table(header, rows) + ["", "wait for a board by priority, median / max ms:", ""]
    rows = []
    for phase in ("plain", "progress"):
        for level, row in sorted(load[phase]["by_priority"].items(), key=lambda item: -int(item[0])):
            waits = "-" if row["median_wait_ms"] is None else "%.1f / %.1f" % (row["median_wait_ms"],
                                                                              row["max_wait_ms"])  # fmt: skip
            rows.append((phase, level, "-" if row["clients"] is None else row["clients"], row["cycles_in_window"],
                         waits))  # fmt: skip
    return lines + table(("phase", "priority", "clients", "cycles", "wait"), rows) + [""]


def measure_summaries(procs: Processes, args: Any) -> Dict[str, Any]:
    """Summaries of trackers with ``args.fake_boards`` registered boards each, interleaved if descriptors allow."""
    keep = len(procs.running)
    sides = ["farm"] + (["tvm"] if args.tvm_rpc is not None else [])
    limits = raise_fd_limit(len(sides) * args.fake_boards + 256)
    interleave = limits["soft"] == resource.RLIM_INFINITY or limits["soft"] >= limits["needed"]
    fakes: List[FakeBoards] = []
    clients: List[Any] = []
    result: Dict[str, Any] = {"boards": args.fake_boards, "fd_limits": limits, "interleaved": interleave}
    calls: Dict[str, Callable[[], Any]] = {}

    def prepare(which: str) -> Dict[str, Callable[[], Any]]:
        address = procs.tracker() if which == "farm" else procs.tvm_tracker()
        fake = FakeBoards()
        fakes.append(fake)
        seconds = fake.register(address, args.fake_boards, KEY_FAKE)
        ours = connect_tracker(*address, timeout=DEADLINE)
        clients.append(ours)
        summary = ours.summary()
        if key_state(summary, KEY_FAKE) != (args.fake_boards, args.fake_boards, 0):
            raise RuntimeError("%s's tracker shows %r" % (which, key_state(summary, KEY_FAKE)))
        size = len(encode_message([Code.SUCCESS, summary])) - 4
        result[which + "_tracker"] = {"register_s": seconds, "summary_bytes": size}
        if which == "farm":
            return {"farm": ours.summary}
        theirs = args.tvm_rpc.connect_tracker(*address)
        clients.append(theirs)
        return {"tvm": theirs.summary, "farm_client_tvm_tracker": ours.summary}

    def rounds(variants: Dict[str, Callable[[], Any]]) -> None:
        for call in variants.values():
            call()  # warm-up
        for name, seconds in harness.interleaved(variants, args.summary_repeats).items():
            result[name] = spread(seconds, 1e3)

    try:
        for which in sides:
            variants = prepare(which)
            if interleave:
                calls.update(variants)
                continue
            rounds(variants)  # one tracker after the other: too few descriptors for both
            fakes[-1].close()
        if interleave:
            rounds(calls)
        return result
    finally:
        for closable in clients + fakes:
            closable.close()
        procs.stop(keep)


def report_summaries(summary: Dict[str, Any], args: Any) -> List[str]:
    labels = {"farm": "farm tracker, farm client", "tvm": "TVM tracker, TVM client",
              "farm_client_tvm_tracker": "TVM tracker, farm client"}  # fmt: skip
    rows = []
    for name, label in labels.items():
        if name in summary:
            tracker = summary[("farm" if name == "farm" else "tvm") + "_tracker"]
            rows.append((label, mmm(summary[name]), tracker["summary_bytes"], "%.2f" % tracker["register_s"]))
    title = "### summary() of a tracker with %d boards, ms" % summary["boards"]
    return [title, ""] + table(("", "median (min-max)", "bytes", "registering them, s"), rows) + [""]


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    """TVM (or the older checkout) over farm: how many times faster ours is; requests against their target."""
    request, summary = results["scenarios"].get("requests", {}), results["scenarios"].get("summary", {})
    out: Dict[str, Any] = {}
    for other in ("tvm", "before"):
        for variant in ("", "_kept", "_fresh"):
            if other + variant in request and "farm" + variant in request:
                value = request[other + variant]["median"] / request["farm" + variant]["median"]
                out["request%s_%s_over_farm" % (variant, other)] = (
                    judged(value, REQUEST_TARGET, ">=") if other == "tvm" else {"ratio": value}
                )
        if other == "tvm" and "tvm" in request:
            out["request_first_tvm_over_farm"] = judged(request["tvm"]["first"] / request["farm"]["first"],
                                                        REQUEST_TARGET, ">=")  # fmt: skip
    if "tvm" in summary:
        out["summary_tvm_over_farm"] = {"ratio": summary["tvm"]["median"] / summary["farm"]["median"]}
        out["summary_tvm_tracker_farm_client_over_farm"] = {
            "ratio": summary["farm_client_tvm_tracker"]["median"] / summary["farm"]["median"]
        }
    return out


def headline(results: Dict[str, Any]) -> List[Headline]:
    request = results["scenarios"].get("requests", {})
    summary = results["scenarios"].get("summary", {})
    load = results["scenarios"].get("concurrency", {})
    ratio = results["ratios"]
    rows = []
    labels = (("", "request to a ready session"), ("_kept", "same, tracker connection kept"),
              ("_fresh", "same, fresh client process"))  # fmt: skip
    for variant, label in labels:
        if "farm" + variant not in request:
            continue
        row = ratio.get("request%s_tvm_over_farm" % variant)
        anchor = "%.2f ms" % request["tvm" + variant]["median"] if row else "-"
        rows.append(Headline(label, "%.2f ms" % request["farm" + variant]["median"], anchor=anchor,
                             ratio="%.1f x faster" % row["ratio"] if row else "-",
                             target=">= %g x faster" % REQUEST_TARGET, met=row["pass"] if row else None))  # fmt: skip
        before = ratio.get("request%s_before_over_farm" % variant)
        if before:
            rows.append(Headline(label + ": code before", "%.2f ms" % request["farm" + variant]["median"],
                                 anchor="%.2f ms (before)" % request["before" + variant]["median"],
                                 ratio="%.2f (before / ours)" % before["ratio"]))  # fmt: skip
    for phase in ("plain", "progress"):
        if phase in load:
            rows.append(Headline("%d clients on %d boards, %s" % (load["clients"], load["boards"], phase),
                                 "%.0f cycles/s" % load[phase]["cycles_per_s"], target="order and end state",
                                 met=load[phase]["checks"]["pass"]))  # fmt: skip
    if "farm" in summary:
        row = ratio.get("summary_tvm_over_farm")
        rows.append(Headline("summary() of %d boards" % summary["boards"], "%.2f ms" % summary["farm"]["median"],
                             anchor="%.2f ms" % summary["tvm"]["median"] if row else "-",
                             ratio="%.1f x faster" % row["ratio"] if row else "-"))  # fmt: skip
    return rows


def check_args(args: Any) -> Optional[str]:
    if min(args.clients, args.boards, args.priorities, args.fake_boards, args.summary_repeats) < 1:
        return "--clients, --boards, --priorities, --fake-boards and --summary-repeats must be >= 1"
    if args.duration <= 0 or args.cold_repeats < 0:
        return "--duration must be positive and --cold-repeats not negative"
    return None


TOOL = Tool(
    name="bench_tracker",
    description=__doc__.split("\n\n")[0],
    tvm=True,
    rounds=Option(40, 3, "timed requests per variant"),
    options={
        "cold_repeats": Option(3, 1, "requests from a fresh client process per side"),
        "before": Option(
            "", "", "a checkout (a directory holding farm/) whose tracker and board are measured too", str
        ),  # fmt: skip
        "clients": Option(100, 10, "concurrent clients"),
        "boards": Option(4, 2, "boards under the one key of the concurrency run"),
        "duration": Option(20.0, 2.0, "seconds of cycling per phase", float),
        "priorities": Option(4, 4, "each client draws a priority in 0..N-1"),
        "priority_draw": Option("client", "client", "draw a priority once per client, or anew per request", str),
        "seed": Option(1, 1, "seed of the priority draws"),
        "fake_boards": Option(1000, 50, "registered boards of the summary"),
        "summary_repeats": Option(50, 3, "timed summaries per variant"),
    },
    setup=setup,
    scenarios=[
        Scenario("requests", measure_requests, report_requests, anchor="TVM", target=">= %g x" % REQUEST_TARGET),
        Scenario("concurrency", measure_concurrency, report_concurrency, target="priority, then arrival order"),
        Scenario("summary", measure_summaries, report_summaries, anchor="TVM"),
    ],
    ratios=ratios,
    headline=headline,
    passed=lambda results: results["scenarios"].get("concurrency", {}).get("pass", True),  # with --only, what ran
    check_args=check_args,
    pin="none",
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
