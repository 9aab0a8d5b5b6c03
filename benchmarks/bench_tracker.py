"""Tracker benchmark: the farm's tracker and client against Apache TVM's, on loopback, in one run.

Three measurements, each side by side with TVM's tracker, board server and client when
``import tvm`` works (the TVM side is skipped, with the reason logged, when it does not):

* **(a) request to a ready session** on a free board: from calling ``connect_tracker(...)``
  to the first remote call answered (``request(key)``, then ``session.ping()`` on ours and
  ``rpc.test.addone(1)`` on TVM's); also with a tracker connection kept from request to
  request. Each repeat closes the session and waits, polling the tracker's summary against a
  deadline, until the board is offered again; the variants take turns. Then a few requests
  from a fresh client process, where the clock starts after the client library's import
  and whatever ``request()`` imports by itself counts.
* **(b) concurrency**: many clients (threads, our client) cycling request -> one ping -> close
  over a few boards of one key for a bounded time, each client with a random priority; once
  with plain requests, once with progress reports (``on_progress``). Reports cycles per
  second, then checks that every board is free again with nothing pending and, from the
  tracker's log of hand-outs, that requests were served in priority order and, within a
  priority, in arrival order (see ``order_check``).
* **(c) summary** of a tracker with many registered boards (fake ones: raw tracker
  connections that send UPDATE_INFO and PUT and never serve), timed on our tracker with our
  client and on TVM's tracker with TVM's client (and with ours, to tell tracker from client).

Then prints a table and the ratios::

    python benchmarks/bench_tracker.py [--repeats 40] [--clients 100] [--duration 20] [--fake-boards 1000]
                                       [--json out.json]

Times are milliseconds. Exit status 1 means a correctness check of the concurrency run failed.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from common import PROJECT, child_env, exit_on_signal, machine_info, machine_line, publish  # noqa: E402  (puts this checkout's farm on the path)

from farm.client.tracker import TrackerClient, connect_tracker  # noqa: E402
from farm.ops.processes import DaemonProcess, board_command  # noqa: E402
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message  # noqa: E402

logger = logging.getLogger("bench_tracker")

HOST = "127.0.0.1"
KEY_REQUEST = "bench-request"
KEY_LOAD = "bench-load"
KEY_FAKE = "bench-fake"
SESSION_TIMEOUT = 60
#: Target: a request to a ready session at least this many times faster than TVM's (on medians).
REQUEST_TARGET = 10.0
#: How long a board may take to be offered again, the daemons to start, and so on.
DEADLINE = 30.0

Address = Tuple[str, int]
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

# The tracker's line for each board it hands out (farm/tracker/server.py, Tracker._schedule).
_ASSIGNED = re.compile(r"board \S+:\d+ of key '([^']*)' to \S+ \(([^)]*)\) after [\d.]+ s")

# A client in a fresh process: the clock starts once the client library is imported (TVM's side
# imports tvm.rpc before its clock too), before request().
_COLD_FARM = """
import json, sys, time
import farm
import farm.client.session, farm.client.tracker
host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
before = "tvm" in sys.modules
start = time.perf_counter()
client = farm.connect_tracker(host, port)
session = client.request(key, session_timeout=%d)
session.ping()
elapsed = time.perf_counter() - start
client.close()
session.close()
print(json.dumps({"seconds": elapsed, "tvm_imported_by_request": not before and "tvm" in sys.modules}))
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


# --- helpers -----------------------------------------------------------------------


def load_tvm(skip: bool) -> Tuple[Any, str]:
    """``tvm.rpc`` and TVM's version, or None and why the TVM side is skipped."""
    if skip:
        return None, "--skip-tvm was given"
    try:
        import tvm
        from tvm import rpc
    except Exception as exc:  # ImportError, or a broken install failing in its own way
        return None, "import tvm failed: %s: %s" % (type(exc).__name__, exc)
    return rpc, str(getattr(tvm, "__version__", "?"))


def port_range(span: int = 200) -> Tuple[int, int]:
    """A port the system calls free now and the end of a range after it (TVM's daemons take no port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return port, min(port + span, 65536)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.001) -> Any:
    """Poll ``condition`` until it returns something true; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise RuntimeError("timed out after %g s waiting until %s" % (timeout, what))
        time.sleep(interval)


def key_state(summary: Dict[str, Any], key: str) -> Tuple[int, int, int]:
    """``(total, free, pending)`` of ``key``, counted as TVM's query tool counts them."""
    queue_info = summary.get("queue_info", {}).get(key, {})
    total = sum(1 for server in summary.get("server_info", []) if server.get("key") == "server:" + key)
    return total, queue_info.get("free", 0), queue_info.get("pending", 0)


def ms_stats(seconds: Sequence[float]) -> Dict[str, Any]:
    values = [value * 1e3 for value in seconds]
    return {
        "first_ms": values[0],
        "median_ms": statistics.median(values),
        "mean_ms": statistics.fmean(values),
        "min_ms": min(values),
        "max_ms": max(values),
        "repeats": len(values),
    }


def raise_fd_limit(needed: int) -> Dict[str, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit if ``needed`` descriptors do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
        logger.info("raised the soft limit on open files from %d to %d (hard limit %d)", before, soft, hard)
    return {"soft_before": before, "soft": soft, "hard": hard, "needed": needed}


# --- processes ---------------------------------------------------------------------


class Processes:
    """Every daemon this run starts: trackers and boards, ours and TVM's; each one stopped at the end."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.running: List[DaemonProcess] = []
        self._count = 0

    def start(self, name: str, argv: List[str]) -> DaemonProcess:
        self._count += 1
        log = os.path.join(self.workdir, "%02d-%s.log" % (self._count, name))
        daemon = DaemonProcess(argv, log, env=child_env(), cwd=str(PROJECT))
        self.running.append(daemon)  # registered before waiting, so that a failed start is stopped too
        daemon.wait_for_bind(DEADLINE)
        return daemon

    def our_tracker(self) -> DaemonProcess:
        return self.start("tracker", [sys.executable, "-m", "farm.tracker", "--host", HOST, "--port", "0"])

    def tvm_tracker(self) -> DaemonProcess:
        first, end = port_range()
        argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST]
        return self.start("tvm-tracker", [*argv, "--port", str(first), "--port-end", str(end)])

    def our_board(self, key: str, tracker: Address) -> DaemonProcess:
        argv = board_command(key, HOST, 0, extra=["--tracker", "%s:%d" % tracker])
        return self.start("board", argv)

    def tvm_board(self, key: str, tracker: Address) -> DaemonProcess:
        first, end = port_range()
        argv = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", HOST, "--port", str(first)]
        argv += ["--port-end", str(end), "--tracker", "%s:%d" % tracker, "--key", key]
        return self.start("tvm-board", argv)

    def stop(self, daemons: Optional[Sequence[DaemonProcess]] = None) -> bool:
        """Stop ``daemons`` (default: all still running), the last started first; False if one failed."""
        ok = True
        interrupted: Optional[BaseException] = None
        for daemon in reversed(list(self.running if daemons is None else daemons)):
            try:
                daemon.stop()
            except Exception:  # keep stopping the rest
                logger.exception("could not stop %s", " ".join(daemon.argv))
                ok = False
            except BaseException as exc:  # an interrupt: finish stopping first
                interrupted = interrupted or exc
            if daemon in self.running:
                self.running.remove(daemon)
        if interrupted is not None:
            raise interrupted
        return ok

    def log_tails(self, chars: int = 2000) -> str:
        parts = []
        for daemon in self.running:
            try:
                parts.append("--- %s\n%s" % (" ".join(daemon.argv[1:4]), daemon.log_text()[-chars:]))
            except OSError:
                pass
        return "\n".join(parts)


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
        wait_until(
            lambda: self.state(key) == (boards, boards, 0),
            timeout,
            "%d board(s) of key %r are free at the tracker at %s:%d" % ((boards, key) + self.address),
        )
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.close()


# --- (a) request to a ready session -------------------------------------------------


class RequestSide:
    """One side of the request measurement: a tracker, one board of KEY_REQUEST and a client library."""

    def __init__(self, name: str, tracker: Address, cycle: Callable[[], Tuple[float, float]]) -> None:
        self.name = name
        self.tracker = tracker
        self.cycle = cycle
        self.request_s: List[float] = []
        self.recycle_s: List[float] = []


def farm_cycle(tracker: Address, watch: Watch, kept: Optional[TrackerClient] = None) -> Tuple[float, float]:
    """Our request to a ready session; then seconds from closing it until the board is offered again.

    ``kept``: a tracker connection to reuse; else one is made inside the timing (and closed after it).
    """
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


def cold_request(code: str, tracker: Address, watch: Watch) -> Dict[str, Any]:
    """A request from a fresh client process; waits until the board is offered again."""
    argv = [sys.executable, "-c", code, tracker[0], str(tracker[1]), KEY_REQUEST]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=DEADLINE * 2, env=child_env(), cwd=str(PROJECT)
    )
    if done.returncode != 0:
        raise RuntimeError("the fresh client process failed:\n%s%s" % (done.stdout, done.stderr[-4000:]))
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    watch.wait_free(KEY_REQUEST, 1)
    return outcome


def measure_requests(args: argparse.Namespace, procs: Processes, tvm_rpc: Any) -> Dict[str, Any]:
    """(a): each library's request to a ready session, with a new tracker connection and with one kept."""
    started = list(procs.running)
    watches: Dict[str, Watch] = {}
    kept: List[Any] = []  # tracker connections reused from request to request
    try:
        ours = procs.our_tracker().address
        assert ours is not None
        procs.our_board(KEY_REQUEST, ours)
        farm_watch = watches["farm"] = Watch(ours)
        farm_kept = connect_tracker(*ours, timeout=DEADLINE)
        kept.append(farm_kept)
        sides = [RequestSide("farm", ours, lambda: farm_cycle(ours, farm_watch))]
        kept_sides = [RequestSide("farm_kept", ours, lambda: farm_cycle(ours, farm_watch, farm_kept))]
        if tvm_rpc is not None:
            theirs = procs.tvm_tracker().address
            assert theirs is not None
            procs.tvm_board(KEY_REQUEST, theirs)
            tvm_watch = watches["tvm"] = Watch(theirs)
            tvm_kept = tvm_rpc.connect_tracker(*theirs)
            kept.append(tvm_kept)
            sides.append(RequestSide("tvm", theirs, lambda: tvm_cycle(tvm_rpc, theirs, tvm_watch)))
            kept_sides.append(RequestSide("tvm_kept", theirs, lambda: tvm_cycle(tvm_rpc, theirs, tvm_watch, tvm_kept)))
        for watch in watches.values():
            watch.wait_free(KEY_REQUEST, 1)
        variants = sides + kept_sides  # the first repeat starts with a new connection on each side
        names = ", ".join(side.name for side in variants)
        logger.info("requests: %d interleaved repeats per variant (%s)", args.repeats, names)
        for repeat in range(args.repeats):
            shift = repeat % len(variants)  # rotate the order so no variant always runs first
            for side in variants[shift:] + variants[:shift]:
                gc.collect()
                request_s, recycle_s = side.cycle()
                side.request_s.append(request_s)
                side.recycle_s.append(recycle_s)
        result: Dict[str, Any] = {}
        for side in variants:
            entry = ms_stats(side.request_s)
            entry["board_free_again_median_ms"] = ms_stats(side.recycle_s)["median_ms"]
            result[side.name] = entry
        codes = {"farm": _COLD_FARM, "tvm": _COLD_TVM}
        cold: Dict[str, List[Dict[str, Any]]] = {side.name: [] for side in sides}
        logger.info("requests from a fresh client process: %d per side", args.cold_repeats)
        for repeat in range(args.cold_repeats):
            for side in sides[:: 1 if repeat % 2 == 0 else -1]:
                cold[side.name].append(cold_request(codes[side.name], side.tracker, watches[side.name]))
        for name, outcomes in cold.items():
            if outcomes:
                seconds = [outcome["seconds"] for outcome in outcomes]
                result[name]["fresh_process_median_ms"] = statistics.median(seconds) * 1e3
                result[name]["fresh_process_ms"] = [value * 1e3 for value in seconds]
                if name == "farm":
                    result[name]["fresh_process_tvm_imported_by_request"] = any(
                        outcome["tvm_imported_by_request"] for outcome in outcomes
                    )
        return result
    finally:
        for client in kept:
            client.close()
        for watch in watches.values():
            watch.close()
        procs.stop([daemon for daemon in procs.running if daemon not in started])


# --- (b) many clients cycling over a few boards --------------------------------------


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


def load_phase(
    args: argparse.Namespace, tracker: DaemonProcess, watch: Watch, phase: str, progress: bool
) -> Dict[str, Any]:
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


def measure_concurrency(args: argparse.Namespace, procs: Processes) -> Dict[str, Any]:
    """Two load phases on one tracker and set of boards: plain requests, then requests with progress reports."""
    started = list(procs.running)
    watch: Optional[Watch] = None
    try:
        tracker = procs.our_tracker()
        address = tracker.address
        assert address is not None
        for _ in range(args.boards):
            procs.our_board(KEY_LOAD, address)
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
        procs.stop([daemon for daemon in procs.running if daemon not in started])


# --- (c) summary with many registered boards ------------------------------------------


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


def measure_summaries(args: argparse.Namespace, procs: Processes, tvm_rpc: Any) -> Dict[str, Any]:
    """(c): summaries of trackers with ``args.fake_boards`` registered boards each."""
    started = list(procs.running)
    trackers = 2 if tvm_rpc is not None else 1
    limits = raise_fd_limit(trackers * args.fake_boards + 256)
    interleave = limits["soft"] == resource.RLIM_INFINITY or limits["soft"] >= limits["needed"]
    if not interleave:
        logger.warning(
            "only %d open files allowed (hard limit %d); measuring the trackers one after the other",
            limits["soft"],
            limits["hard"],
        )
    fakes: List[FakeBoards] = []
    clients: List[Any] = []
    result: Dict[str, Any] = {"boards": args.fake_boards, "fd_limits": limits, "interleaved": interleave}
    try:
        variants: List[Tuple[str, Callable[[], Dict[str, Any]]]] = []  # (name, summary call)

        def prepare(which: str) -> None:
            daemon = procs.our_tracker() if which == "farm" else procs.tvm_tracker()
            address = daemon.address
            assert address is not None
            fake = FakeBoards()
            fakes.append(fake)
            seconds = fake.register(address, args.fake_boards, KEY_FAKE)
            ours = connect_tracker(*address, timeout=DEADLINE)
            clients.append(ours)
            summary = ours.summary()
            if key_state(summary, KEY_FAKE) != (args.fake_boards, args.fake_boards, 0):
                state = key_state(summary, KEY_FAKE)
                raise RuntimeError("%s's tracker shows %r, not %d free boards" % (which, state, args.fake_boards))
            result[which + "_tracker"] = {
                "register_s": seconds,
                "summary_bytes": len(encode_message([Code.SUCCESS, summary])) - 4,
            }
            if which == "farm":
                variants.append(("farm", ours.summary))
            else:
                theirs = tvm_rpc.connect_tracker(*address)
                clients.append(theirs)
                variants.append(("tvm", theirs.summary))
                variants.append(("farm_client_tvm_tracker", ours.summary))

        def timed_rounds(names: List[str]) -> Dict[str, List[float]]:
            seconds: Dict[str, List[float]] = {name: [] for name in names}
            calls = {name: call for name, call in variants if name in names}
            for name in names:
                calls[name]()  # warm-up
            for repeat in range(args.summary_repeats):
                shift = repeat % len(names)
                for name in names[shift:] + names[:shift]:
                    gc.collect()
                    start = time.perf_counter()
                    calls[name]()
                    seconds[name].append(time.perf_counter() - start)
            return seconds

        which_list = ["farm"] + (["tvm"] if tvm_rpc is not None else [])
        logger.info(
            "summary: %d fake boards per tracker, %d repeats (%s)",
            args.fake_boards,
            args.summary_repeats,
            ", ".join(which_list),
        )
        timings: Dict[str, List[float]] = {}
        if interleave:
            for which in which_list:
                prepare(which)
            timings = timed_rounds([name for name, _ in variants])
        else:
            for which in which_list:
                before = len(variants)
                prepare(which)
                timings.update(timed_rounds([name for name, _ in variants[before:]]))
                fakes[-1].close()
                for client in clients:
                    client.close()
                clients.clear()
        for name, values in timings.items():
            stats = ms_stats(values)
            stats.pop("first_ms")
            result[name] = stats
        return result
    finally:
        for client in clients:
            client.close()
        for fake in fakes:
            fake.close()
        procs.stop([daemon for daemon in procs.running if daemon not in started])


# --- the run -------------------------------------------------------------------------------


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    """TVM over farm (how many times faster ours is); the request ratios against their target."""
    request, summary = results["request"], results["summary"]
    out: Dict[str, Any] = {}

    def judged(value: float) -> Dict[str, Any]:
        return {"ratio": value, "target": REQUEST_TARGET, "target_kind": ">=", "pass": value >= REQUEST_TARGET}

    if "tvm" in request:
        out["request_median_tvm_over_farm"] = judged(request["tvm"]["median_ms"] / request["farm"]["median_ms"])
        out["request_first_tvm_over_farm"] = judged(request["tvm"]["first_ms"] / request["farm"]["first_ms"])
        kept = request["tvm_kept"]["median_ms"] / request["farm_kept"]["median_ms"]
        out["request_kept_connection_median_tvm_over_farm"] = judged(kept)
        if "fresh_process_median_ms" in request["farm"] and "fresh_process_median_ms" in request["tvm"]:
            fresh = request["tvm"]["fresh_process_median_ms"] / request["farm"]["fresh_process_median_ms"]
            out["request_fresh_process_tvm_over_farm"] = judged(fresh)
    if "tvm" in summary:
        out["summary_median_tvm_over_farm"] = {"ratio": summary["tvm"]["median_ms"] / summary["farm"]["median_ms"]}
        out["summary_median_tvm_tracker_farm_client_over_farm"] = {
            "ratio": summary["farm_client_tvm_tracker"]["median_ms"] / summary["farm"]["median_ms"]
        }
    return out


def load_report(load: Dict[str, Any], title: str) -> List[str]:
    """The lines of one load phase of (b)."""
    checks, order = load["checks"], load["order"]
    lines = [
        "  %s, %.1f s: %.1f cycles/s (%d cycles); wait for a board: median %.1f ms, p99 %.1f ms"
        % (
            title,
            load["duration_s"],
            load["cycles_per_s"],
            load["cycles_in_window"],
            load["request_wait_median_ms"] or 0.0,
            load["request_wait_p99_ms"] or 0.0,
        ),
        "    %-10s %8s %10s %14s %14s" % ("priority", "clients", "cycles", "median wait", "max wait"),
    ]
    for level, row in sorted(load["by_priority"].items(), key=lambda item: -int(item[0])):
        lines.append(
            "    %-10s %8s %10d %14s %14s"
            % (
                level,
                "-" if row["clients"] is None else row["clients"],
                row["cycles_in_window"],
                "-" if row["median_wait_ms"] is None else "%.1f ms" % row["median_wait_ms"],
                "-" if row["max_wait_ms"] is None else "%.1f ms" % row["max_wait_ms"],
            )
        )
    lines += [
        "    end state: total %d, free %d, pending %d (boards %s) -> %s"
        % (
            checks["final_total"],
            checks["final_free"],
            checks["final_pending"],
            "/".join(checks["final_board_states"]),
            "OK" if checks["boards_all_free"] else "BOARD LOST OR HELD",
        ),
        "    errors: %d; clients stuck: %d; each session handed out once in the tracker's log: %s"
        % (checks["error_count"], len(checks["stuck_clients"]), checks["every_request_logged"]),
    ]
    if load["progress_reports"]:
        lines.append(
            "    WAITING messages received: %d, %.1f per session handed out"
            % (load["waiting_messages"], load["waiting_messages"] / max(1, load["order"]["served_in_log"]))
        )
        lines.append(
            "    order: %d served requests, %d of them queued; pairs where one was queued before the other was "
            "sent: %d with a higher priority (%d violated), %d with the same (%d violated); %d overtakes by a "
            "higher priority -> %s"
            % (
                order["cycles_checked"],
                order["cycles_that_waited"],
                order["priority_constraints"],
                order["priority_violations"],
                order["arrival_constraints"],
                order["arrival_order_violations"],
                order["overtaken_by_higher_priority"],
                "OK" if checks["order_ok"] else "VIOLATED",
            )
        )
    return lines


def report(results: Dict[str, Any]) -> str:
    machine, config = results["machine"], results["config"]
    request, load, summary, ratio = results["request"], results["concurrency"], results["summary"], results["ratios"]
    lines = [
        "",
        "machine: %s, TVM %s"
        % (machine_line(machine), machine["tvm"] or "not measured (%s)" % results["tvm_skipped"]),
        "",
        "%-52s %9s %9s %9s %9s %11s %9s"
        % ("(a) request to ready session, ms", "first", "median", "min", "max", "free again", "fresh"),
    ]
    labels = {
        "farm": "farm: connect_tracker, request(), ping()",
        "tvm": "TVM: connect_tracker, request(), addone(1)",
        "farm_kept": "farm: tracker connection kept: request(), ping()",
        "tvm_kept": "TVM: tracker connection kept: request(), addone(1)",
    }
    for name, label in labels.items():
        if name in request:
            row = request[name]
            lines.append(
                "%-52s %9.2f %9.2f %9.2f %9.2f %11.2f %9s"
                % (
                    label,
                    row["first_ms"],
                    row["median_ms"],
                    row["min_ms"],
                    row["max_ms"],
                    row["board_free_again_median_ms"],
                    "%.1f" % row["fresh_process_median_ms"] if "fresh_process_median_ms" in row else "-",
                )
            )
    lines.append(
        "  (%d repeats; 'free again': from close to the board offered again, median; 'fresh': first request of a "
        "fresh client process, median of %d)" % (config["repeats"], config["cold_repeats"])
    )
    title = "(b) %d clients cycling request -> ping -> close over %d boards of one key"
    lines += ["", title % (load["clients"], load["boards"])]
    for phase, title in (("plain", "plain requests"), ("progress", "requests with progress reports (on_progress)")):
        lines += load_report(load[phase], title)
    lines += [
        "",
        "%-52s %9s %9s %9s %9s"
        % ("(c) summary() with %d boards, ms" % summary["boards"], "median", "min", "max", "bytes"),
    ]
    labels = {
        "farm": "farm tracker, farm client",
        "tvm": "TVM tracker, TVM client",
        "farm_client_tvm_tracker": "TVM tracker, farm client",
    }
    for name, label in labels.items():
        if name in summary:
            row = summary[name]
            size = summary[("farm" if name == "farm" else "tvm") + "_tracker"]["summary_bytes"]
            lines.append("%-52s %9.2f %9.2f %9.2f %9d" % (label, row["median_ms"], row["min_ms"], row["max_ms"], size))
    for which in ("farm", "tvm"):
        if which + "_tracker" in summary:
            lines.append(
                "  registering %d boards with the %s tracker took %.2f s"
                % (summary["boards"], which, summary[which + "_tracker"]["register_s"])
            )
    if ratio:
        lines += ["", "%-52s %9s %9s %8s" % ("ratio TVM / farm", "value", "target", "")]
        names = {
            "request_median_tvm_over_farm": "(a) request to ready session, median",
            "request_first_tvm_over_farm": "(a) request to ready session, first",
            "request_kept_connection_median_tvm_over_farm": "(a) same, tracker connection kept, median",
            "request_fresh_process_tvm_over_farm": "(a) same, fresh client process, median",
            "summary_median_tvm_over_farm": "(c) summary, median",
            "summary_median_tvm_tracker_farm_client_over_farm": "(c) summary, median, both with farm client",
        }
        for name, label in names.items():
            if name in ratio:
                row = ratio[name]
                target = "%s %g" % (row["target_kind"], row["target"]) if "target" in row else "-"
                verdict = ("PASS" if row["pass"] else "MISS") if "pass" in row else ""
                lines.append("%-52s %9.1f %9s %8s" % (label, row["ratio"], target, verdict))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.monotonic()
    tvm_rpc, text = load_tvm(args.skip_tvm)
    tvm_version, why = (text, "") if tvm_rpc is not None else (None, text)
    if tvm_rpc is None:
        logger.warning("the TVM side is skipped: %s", why)
    import farm.client.session  # noqa: F401  (imported before any clock starts, as TVM's is)

    with tempfile.TemporaryDirectory(prefix="bench-tracker-") as workdir:
        procs = Processes(workdir)
        try:
            request = measure_requests(args, procs, tvm_rpc)
            concurrency = measure_concurrency(args, procs)
            summary = measure_summaries(args, procs, tvm_rpc)
        except BaseException:
            tails = procs.log_tails()
            if tails:
                logger.error("daemon logs (end):\n%s", tails)
            raise
        finally:
            stopped = procs.stop()
        if not stopped:
            raise RuntimeError("could not stop every daemon cleanly (see the log)")
    results: Dict[str, Any] = {
        "machine": machine_info(tvm=tvm_version),
        "tvm_skipped": why,
        "config": {
            "repeats": args.repeats,
            "cold_repeats": args.cold_repeats,
            "clients": args.clients,
            "boards": args.boards,
            "duration_s": args.duration,
            "priorities": args.priorities,
            "priority_draw": args.priority_draw,
            "seed": args.seed,
            "fake_boards": args.fake_boards,
            "summary_repeats": args.summary_repeats,
        },
        "request": request,
        "concurrency": concurrency,
        "summary": summary,
        "elapsed_s": time.monotonic() - started,
    }
    results["ratios"] = ratios(results)
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="(a) timed requests per side (default: 40)")
    parser.add_argument(
        "--cold-repeats", type=int, default=3, help="(a) requests from a fresh client process per side (default: 3)"
    )
    parser.add_argument("--clients", type=int, default=100, help="(b) concurrent clients (default: 100)")
    parser.add_argument("--boards", type=int, default=4, help="(b) boards under the one key (default: 4)")
    parser.add_argument("--duration", type=float, default=20.0, help="(b) seconds of cycling (default: 20)")
    parser.add_argument(
        "--priorities", type=int, default=4, help="(b) each client draws a priority in 0..N-1 (default: 4)"
    )
    parser.add_argument(
        "--priority-draw",
        choices=["client", "request"],
        default="client",
        help="(b) draw a random priority once per client (default) or anew for each request",
    )
    parser.add_argument("--seed", type=int, default=1, help="(b) seed of the priority draws (default: 1)")
    parser.add_argument("--fake-boards", type=int, default=1000, help="(c) registered boards (default: 1000)")
    parser.add_argument("--summary-repeats", type=int, default=50, help="(c) timed summaries per side (default: 50)")
    parser.add_argument("--skip-tvm", action="store_true", help="measure our side only")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if min(args.repeats, args.clients, args.boards, args.priorities, args.fake_boards, args.summary_repeats) < 1:
        parser.error("--repeats, --clients, --boards, --priorities, --fake-boards and --summary-repeats must be >= 1")
    if args.duration <= 0 or args.cold_repeats < 0:
        parser.error("--duration must be positive and --cold-repeats not negative")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that the daemons are stopped on SIGTERM too
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(args)
    publish(results, report(results), args.json)
    load = results["concurrency"]
    if not load["pass"]:
        for phase in ("plain", "progress"):
            if not load[phase]["checks"]["pass"]:
                checks = json.dumps(load[phase]["checks"])
                logger.error("a check of the concurrency run (%s) failed: %s", phase, checks)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
