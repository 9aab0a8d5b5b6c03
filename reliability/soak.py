"""Soak: many clients cycling through a farm on loopback for minutes while its boards are killed and restarted.

A :class:`farm.ops.launcher.FarmStack` of an inventory written here (``--keys`` keys of ``--boards-per-key``
boards, one behind the proxy in ``--proxied-keys`` of them) and ``--clients`` client processes (this script with
``--worker PLAN INDEX``), each cycling for ``--duration`` s: draw a key and a priority (seeded), request a board
(the request-to-ready latency runs from ``connect_tracker`` to the open session), upload, load and call ``vadd``
and compare with numpy, upload a data file and download it back, close. Meanwhile the tool supervises the stack
every ``--tick`` s, SIGKILLs one board daemon every ``--kill-every`` s (never the last registered board of its
key, not in the last 2 s) and samples the tracker's memory and descriptors. Then it waits until every board is
back and free, stops the stack, looks for any process left and scans the daemons' logs. Errors a killed board
explains are *expected* (``SessionLostError`` once a session is open, ``TrackerError`` and ``NoBoardError``
while requesting); any other error, a wrong result or a failed client is *unexpected*. RELIABILITY.md ("Load")
has the details and the figures::

    python reliability/soak.py [--duration 180] [--clients 12] [--kill-every 10] [--seed 1] [--tls] [--json out.json]

A check that fails (a board lost, an unexpected error, a daemon that died unkilled, a process left, nothing
served) makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # the shared harness

import harness  # noqa: E402
from harness import PROJECT, Headline, Option, Scenario, Tool, child_env, tls_files  # noqa: E402

from farm.client.session import RemoteSession  # noqa: E402
from farm.client.tracker import TrackerError, connect_tracker  # noqa: E402
from farm.lifetime import PARENT_ENV  # noqa: E402
from farm.ops.inventory import load_inventory  # noqa: E402
from farm.ops.launcher import FarmStack, Supervised  # noqa: E402
from farm.ops.toolchain import compile_shared  # noqa: E402

logger = logging.getLogger("soak")

HOST = "127.0.0.1"
VADD = PROJECT / "farm" / "ops" / "kernels" / "vadd.c"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
LIBRARY = "libvadd.so"
#: Elements of each vadd call and bytes of each data file.
ELEMENTS, BLOB_BYTES = 4096, 16 << 10
#: Seconds a session may last before its board ends it (a stuck session cannot hold a board for the whole soak).
SESSION_TIMEOUT = 60.0
#: Seconds before the clients stop that the kills stop: every kill is followed by load, not only by the settling.
QUIET_END = 2.0
#: Seconds the stack may take to start, and the clients to start up and end after their duration.
START_DEADLINE, CLIENT_GRACE = 60.0, 30.0
#: The tool's options: the load, the farm, the chaos and the harness.
OPTIONS = {
    "duration": Option(180.0, 8.0, "seconds the clients cycle", float),
    "clients": Option(12, 6, "client processes"),
    "priorities": Option(4, 4, "priorities drawn from 0..N-1"),
    "wait": Option(30.0, 30.0, "seconds a request waits for a board at most", float),
    "max_cycles": Option(100000, 100000, "most cycles per client"),
    "keys": Option(3, 3, "keys of the farm (at most 26)"),
    "boards_per_key": Option(2, 2, "boards of each key"),
    "proxied_keys": Option(2, 2, "keys with one board behind the proxy"),
    "kill_every": Option(10.0, 3.0, "seconds between board kills, 0: none", float),
    "seed": Option(1, 1, "seed of the draws and the kills"),
    "tick": Option(0.2, 0.2, "seconds between two supervise() calls", float),
    "settle": Option(90.0, 90.0, "seconds the farm may take to settle at the end", float),
    "tls": Option(False, help="TLS on every connection (certificates made for the run)", type=bool),
    "keep_logs": Option("", "", "write the daemons' logs to this directory and keep them", str),
    "cycles_json": Option("", "", "write every cycle (key, priority, times, error) to this file", str),
}


def check_args(args: Any) -> Optional[str]:
    positive = ("duration", "wait", "tick", "clients", "priorities", "max_cycles", "keys", "boards_per_key")
    if any(getattr(args, name) <= 0 for name in positive):
        return "--%s must be positive" % ", --".join(name.replace("_", "-") for name in positive)
    if min(args.kill_every, args.seed, args.settle, args.proxied_keys) < 0:
        return "--kill-every, --seed, --settle and --proxied-keys must not be negative"
    if args.keys > 26 or args.proxied_keys > args.keys:
        return "--keys must be at most 26 (soak-a to soak-z), --proxied-keys at most --keys"
    return None


# --- errors ---------------------------------------------------------------------------------------------------


class ResultMismatch(Exception):
    """A board returned a wrong vadd result or a file that differs from the one uploaded."""


#: Message categories, first match wins (the messages of the tracker, its client and the client session).
_CATEGORIES = [
    ("no board freed in time", re.compile(r"freed within|handed out within")),
    ("no board serves the key", re.compile(r"no board serves key")),
    ("handed-out board unreachable", re.compile(r"could not be reached")),
    ("session process killed", re.compile(r"killed by signal")),
    ("connection to the board lost", re.compile(r"connection to board .* lost|closed the connection|reset", re.I)),
    ("tracker lost", re.compile(r"tracker", re.I)),
]
#: The error classes a client may see while boards are killed, by the step that raises them.
EXPECTED = {"request": ("TrackerError", "NoBoardError"), "session": ("SessionLostError",)}


def category(message: str) -> str:
    """A short name for what an error message says (``other`` when no pattern matches)."""
    for name, pattern in _CATEGORIES:
        if pattern.search(message):
            return name
    return "other"


def is_expected(class_name: str, stage: str) -> bool:
    """Whether an error of ``class_name`` raised in ``stage`` is one that killing boards explains."""
    return class_name in EXPECTED["request" if stage == "request" else "session"]


# --- the client processes -------------------------------------------------------------------------------------


@dataclass
class ClientPlan:
    """What a client process does, as the harness wrote it to the plan file."""

    tracker: Tuple[str, int]
    keys: List[str]
    priorities: int
    duration: float
    wait: float
    max_cycles: int
    seed: int
    library: str
    out_dir: str


class Cycle:
    """One request -> upload -> call -> download -> release, and where it stopped."""

    def __init__(self, plan: ClientPlan, index: int, rng: random.Random, data: np.random.Generator) -> None:
        self.plan = plan
        self.user = "soak-%d" % index
        self.key = rng.choice(plan.keys)
        self.priority = rng.randrange(plan.priorities)
        self.data = data
        self.stage = "request"
        self.began = time.monotonic()
        self.ready: Optional[float] = None
        self.board = ""  # where the session ran (the proxy's address for a board behind it)

    def run(self, library: bytes) -> None:
        """The cycle's steps; raises what the first failing one raised."""
        with connect_tracker(*self.plan.tracker) as tracker:
            session = tracker.request(
                self.key, priority=self.priority, session_timeout=SESSION_TIMEOUT, wait=self.plan.wait, user=self.user
            )
        self.ready = time.monotonic()
        self.board = "%s:%d" % (session.host, session.port)
        try:
            self.use(session, library)
        except BaseException:
            with contextlib.suppress(Exception):  # what went wrong first is what the cycle reports
                session.close()
            raise
        self.stage = "close"
        session.close()

    def use(self, session: RemoteSession, library: bytes) -> None:
        """Upload and call vadd, upload and download a file; ResultMismatch if the board gets either wrong."""
        self.stage = "upload"
        session.upload(library, LIBRARY)
        self.stage = "load"
        vadd = session.load_module(LIBRARY).get_function("vadd", VADD_SIG)
        self.stage = "call"
        x, y = (self.data.standard_normal(ELEMENTS).astype(np.float32) for _ in range(2))
        out = session.empty(x.shape, "float32")
        vadd(session.array(x), session.array(y), out, x.size)
        if not np.array_equal(out.numpy(), x + y):
            raise ResultMismatch("vadd on board %s:%d returned a wrong result" % (session.host, session.port))
        self.stage = "download"
        blob = self.data.bytes(BLOB_BYTES)
        session.upload(blob, "blob.bin")
        if session.download("blob.bin") != blob:
            raise ResultMismatch("board %s:%d returned another file" % (session.host, session.port))

    def record(self, error: Optional[BaseException]) -> Dict[str, Any]:
        """The cycle as one JSON-friendly row."""
        row: Dict[str, Any] = {
            "began": self.began,
            "key": self.key,
            "priority": self.priority,
            "ready_s": None if self.ready is None else self.ready - self.began,
            "board": self.board,
            "total_s": time.monotonic() - self.began,
            "error": None,
        }
        if error is not None:
            message = str(error).split("\n", 1)[0]
            row["error"] = {"class": type(error).__name__, "stage": self.stage, "message": message[:300]}
        return row


def client_main(plan_path: str, index: int) -> int:
    """A client process: cycle until the plan's duration or cycle count is used up; write the rows as JSON."""
    with open(plan_path, encoding="utf-8") as handle:
        raw = json.load(handle)
    plan = ClientPlan(**dict(raw, tracker=tuple(raw["tracker"])))
    with open(plan.library, "rb") as handle:
        library = handle.read()
    rng = random.Random("%d/%d" % (plan.seed, index))
    data = np.random.default_rng([plan.seed, index])
    rows = []
    end = time.monotonic() + plan.duration
    while time.monotonic() < end and len(rows) < plan.max_cycles:
        cycle = Cycle(plan, index, rng, data)
        try:
            cycle.run(library)
            rows.append(cycle.record(None))
        except Exception as exc:  # every failure is recorded and classified; the soak goes on
            rows.append(cycle.record(exc))
    out = os.path.join(plan.out_dir, "client-%02d.json" % index)
    with open(out + ".part", "w", encoding="utf-8") as handle:
        json.dump(rows, handle)
    os.replace(out + ".part", out)
    return 0


# --- the farm -----------------------------------------------------------------------------------------------


def write_inventory(path: str, keys: int, boards_per_key: int, proxied_keys: int) -> str:
    """An inventory of ``keys`` keys of ``boards_per_key`` local boards; one board of each of the last
    ``proxied_keys`` keys is behind the proxy."""
    lines = ["tracker: {host: %s, port: 0}" % HOST, "proxy: {host: %s, port: 0}" % HOST, "boards:"]
    for number in range(keys):
        key = "soak-%s" % chr(ord("a") + number)
        proxied = 1 if number >= keys - proxied_keys and boards_per_key > 1 else 0
        lines.append("  - {key: %s, count: %d}" % (key, boards_per_key - proxied))
        if proxied:
            lines.append("  - {key: %s, count: 1, proxy: true}" % key)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def tracker_summary(stack: FarmStack) -> Dict[str, Any]:
    """The tracker's summary, over a fresh connection."""
    with connect_tracker(*stack.tracker_address) as tracker:
        return tracker.summary()


def queue_state(stack: FarmStack, summary: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, int]]:
    """Per key of the inventory: the tracker's ``total``, ``free`` and ``pending``, and the boards ``registered``.

    ``registered`` counts the boards themselves: one per board registered directly, plus what the proxy says
    it holds. The tracker's ``total`` may say more: it counts a proxy that once offered a key as one board of
    it even once the proxy has none left, and ``free`` counts offers the proxy made for boards that died.
    """
    summary = summary if summary is not None else tracker_summary(stack)
    queues, registered = summary.get("queue_info", {}), registered_boards(summary)
    state = {}
    for key in stack.inventory.board_counts():
        state[key] = {name: int(queues.get(key, {}).get(name, 0)) for name in ("total", "free", "pending")}
        state[key]["registered"] = registered.get(key, 0)
    return state


def registered_boards(summary: Dict[str, Any]) -> Dict[str, int]:
    """Boards per key from the summary's ``server_info``: a board's own entry, or the proxy's ``boards`` counts."""
    counts: Dict[str, int] = {}
    for server in summary.get("server_info", []):
        held = server.get("boards")
        if not isinstance(held, dict):
            held = {str(server.get("key", "")).partition(":")[2]: 1}
        for key, count in held.items():
            counts[key] = counts.get(key, 0) + int(count)
    return counts


def board_state(summary: Dict[str, Any], name: str) -> str:
    """What the tracker says of the board called ``name``: free, held...; ``proxied`` for the proxy's boards,
    which it lists under the proxy; ``absent`` if it is not registered."""
    for server in summary.get("server_info", []):
        if server.get("name") == name:
            return str(server.get("state", "?"))
    return "absent"


def settled(state: Dict[str, Dict[str, int]], expected: Dict[str, int]) -> bool:
    """Every board registered and free (no offer more, no offer less), nothing pending."""
    return all(
        state[key] == {"total": count, "free": count, "pending": 0, "registered": count}
        for key, count in expected.items()
    )


def wait_settled(stack: FarmStack, timeout: float, tick: float) -> Dict[str, Any]:
    """Supervise until every board is back and free, or ``timeout``; the last state and how long it took."""
    expected = stack.inventory.board_counts()
    began = time.monotonic()
    while True:
        stack.supervise()
        try:
            state: Optional[Dict[str, Dict[str, int]]] = queue_state(stack)
        except TrackerError as exc:
            logger.warning("no summary from the tracker: %s", exc)
            state = None
        waited = time.monotonic() - began
        if state is not None and settled(state, expected):
            return {"settled": True, "waited_s": waited, "state": state}
        if waited >= timeout:
            logger.error("the farm did not settle within %g s: %s", timeout, state)
            return {"settled": False, "waited_s": waited, "state": state}
        time.sleep(tick)


def processes_left(launcher_pid: int) -> List[Dict[str, Any]]:
    """Live processes whose environment carries the stack's ``FARM_PARENT_PID=launcher_pid`` (daemons, sessions)."""
    marker = ("%s=%d" % (PARENT_ENV, launcher_pid)).encode()
    left = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == launcher_pid:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as handle:
                if marker not in handle.read().split(b"\0"):
                    continue
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        left.append({"pid": int(name), "command": command})
    return left


#: Lines of a daemon's log worth a look after a soak; numbers (ports, match keys, pids) in warnings.
_NOTABLE, _NUMBER = re.compile(r"Traceback|\bERROR\b|CRITICAL"), re.compile(r"\d+(?:\.\d+)*")


def scan_logs(log_dir: str, examples: int = 5) -> Dict[str, Any]:
    """Tracebacks and ERROR lines in the daemons' logs (how many per log, the first few), and their warnings
    counted by message (numbers replaced by N)."""
    counts: Dict[str, int] = {}
    warnings: Dict[str, int] = {}
    found: List[str] = []
    for name in sorted(os.listdir(log_dir)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(log_dir, name), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if " WARNING " in line:
                    message = _NUMBER.sub("N", line.split(" WARNING ", 1)[1].strip())[:200]
                    warnings[message] = warnings.get(message, 0) + 1
                if _NOTABLE.search(line):
                    counts[name] = counts.get(name, 0) + 1
                    if len(found) < examples:
                        found.append("%s: %s" % (name, line.strip()[:300]))
    return {"notable_lines": counts, "examples": found, "warnings": warnings}


# --- what the harness watches -------------------------------------------------------------------------------


def proc_status(pid: int) -> Optional[Dict[str, int]]:
    """VmRSS and VmHWM (kB) and open descriptors of ``pid``; None if it is gone."""
    values: Dict[str, int] = {}
    try:
        with open("/proc/%d/status" % pid, encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0])
        values["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except (OSError, ValueError, IndexError):
        return None
    return values if "VmRSS" in values else None


@dataclass
class MemoryWatch:
    """The tracker's memory and descriptors, sampled now and then."""

    period: float
    samples: List[Tuple[float, int, int, int]] = field(default_factory=list)  # (s since start, rss, hwm, fds)
    next_at: float = 0.0

    def sample(self, pid: int, began: float, now: float, force: bool = False) -> None:
        if now < self.next_at and not force:
            return
        self.next_at = now + self.period
        status = proc_status(pid)
        if status is not None:
            self.samples.append((round(now - began, 2), status["VmRSS"], status["VmHWM"], status["fds"]))

    def summary(self) -> Dict[str, Any]:
        if not self.samples:
            return {"samples": 0}
        rss = [sample[1] for sample in self.samples]
        return {
            "samples": len(self.samples),
            "rss_kb_start": rss[0],
            "rss_kb_peak": max(rss),
            "rss_kb_end": rss[-1],
            "hwm_kb_end": self.samples[-1][2],
            "fds_start": self.samples[0][3],
            "fds_peak": max(sample[3] for sample in self.samples),
            "fds_end": self.samples[-1][3],
            "series": self.samples[:: max(1, len(self.samples) // 60)] + self.samples[-1:],
        }


class Chaos:
    """Kills a board daemon every ``period`` seconds: a random one, never the last registered board of its key."""

    def __init__(self, stack: FarmStack, period: float, seed: int) -> None:
        self.stack = stack
        self.period = period
        self.rng = random.Random("chaos/%d" % seed)
        self.kills: Dict[str, int] = {}
        self.states: Dict[str, int] = {}  # what the tracker said of each board killed, just before
        self.skipped = 0  # turns with no board that could be killed
        self.log: List[Tuple[float, str, str]] = []  # (time.monotonic(), board, state at the tracker) of each kill
        self.next_at = time.monotonic() + period

    def due(self, now: float) -> bool:
        return self.period > 0 and now >= self.next_at

    def strike(self, now: float) -> Optional[str]:
        """SIGKILL one board daemon (not its process group: as if it crashed); its name, or None."""
        self.next_at = now + self.period
        try:
            summary = tracker_summary(self.stack)
        except TrackerError as exc:
            logger.warning("chaos: no summary from the tracker (%s); no kill this turn", exc)
            self.skipped += 1
            return None
        state = queue_state(self.stack, summary)
        candidates = [board for board in self.stack.boards if self._may_kill(board, state)]
        if not candidates:
            self.skipped += 1
            return None
        board = self.rng.choice(candidates)
        assert board.group is not None
        seen = "proxied" if board.group.proxy else board_state(summary, board.name)
        try:
            os.kill(board.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            self.skipped += 1
            return None
        self.kills[board.name] = self.kills.get(board.name, 0) + 1
        self.log.append((now, board.name, seen))
        self.states[seen] = self.states.get(seen, 0) + 1
        logger.info("chaos: killed %s (pid %d, %s at the tracker)", board.label, board.process.pid, seen)
        return board.name

    @staticmethod
    def _may_kill(board: Supervised, state: Dict[str, Dict[str, int]]) -> bool:
        """Running, and its key keeps a registered board without it (two registered: it and another, at least)."""
        assert board.group is not None
        return board.exited() is None and state.get(board.group.key, {}).get("registered", 0) >= 2

    def figures(self, restarts: Dict[str, int]) -> Dict[str, Any]:
        """Kills (by board, and by what the tracker said of the board just before), restarts, turns skipped."""
        kills = sum(self.kills.values())
        return {
            "kills": kills,
            "kills_by_board": self.kills,
            "kills_by_state": self.states,
            "kill_log": self.log,
            "turns_skipped": self.skipped,
            "restarts": sum(restarts.values()),
            "restarts_by_daemon": restarts,
            "unplanned_restarts": sum(restarts.values()) - kills,
        }


# --- the results --------------------------------------------------------------------------------------------


def latency(seconds: Sequence[float]) -> Dict[str, Any]:
    """Count, p50, p90, p99 and max in milliseconds (None without values)."""
    if not seconds:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    values = np.asarray(seconds) * 1e3
    p50, p90, p99 = (float(value) for value in np.percentile(values, [50, 90, 99]))
    return {"count": len(values), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": float(values.max())}


def tally_errors(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Errors by kind (class at stage: category), each with a count, whether it is expected and an example."""
    kinds: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        error = row["error"]
        if error is None:
            continue
        kind = "%s at %s: %s" % (error["class"], error["stage"], category(error["message"]))
        entry = kinds.setdefault(
            kind, {"count": 0, "expected": is_expected(error["class"], error["stage"]), "example": error["message"]}
        )
        entry["count"] += 1
    expected = sum(entry["count"] for entry in kinds.values() if entry["expected"])
    unexpected = sum(entry["count"] for entry in kinds.values() if not entry["expected"])
    return {"by_kind": kinds, "expected": expected, "unexpected": unexpected}


def served_figures(rows: Sequence[Dict[str, Any]], window: float, keys: Sequence[str]) -> Dict[str, Any]:
    """Requests served (a session opened) and cycles completed, in total, per key and per second."""
    served = [row for row in rows if row["ready_s"] is not None]
    complete = [row for row in rows if row["error"] is None]
    return {
        "requests": len(rows),
        "served": len(served),
        "cycles_completed": len(complete),
        "served_per_key": {key: sum(1 for row in served if row["key"] == key) for key in keys},
        "served_per_s": len(served) / window,
        "cycles_completed_per_s": len(complete) / window,
    }


def latency_figures(rows: Sequence[Dict[str, Any]], priorities: int, keys: Sequence[str]) -> Dict[str, Any]:
    """Request-to-ready latency of the served requests: overall, per priority and per key."""
    served = [row for row in rows if row["ready_s"] is not None]
    return {
        "overall": latency([row["ready_s"] for row in served]),
        "by_priority": {
            str(level): latency([row["ready_s"] for row in served if row["priority"] == level])
            for level in range(priorities)
        },
        "by_key": {key: latency([row["ready_s"] for row in served if row["key"] == key]) for key in keys},
    }


def checks(results: Dict[str, Any]) -> Dict[str, bool]:
    """The soak's pass/fail checks."""
    chaos = results["chaos"]
    return {
        "no_board_lost": results["boards"]["lost"] == 0,
        "farm_settled": results["boards"]["settled"],
        "no_unexpected_error": results["errors"]["unexpected"] == 0,
        "clients_all_reported": results["clients"]["reported"] == results["clients"]["started"],
        "no_unplanned_death": chaos["unplanned_restarts"] == 0,
        "no_process_left": not results["processes_left"],
        "requests_served": results["served"]["served"] > 0,
    }


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class Soak:
    """A running soak: the stack, the client processes, the chaos and the memory watch."""

    args: argparse.Namespace
    workdir: str
    stack: FarmStack
    clients: List[subprocess.Popen] = field(default_factory=list)

    def start_clients(self, library: str) -> None:
        plan = ClientPlan(
            tracker=self.stack.tracker_address,
            keys=sorted(self.stack.inventory.board_counts()),
            priorities=self.args.priorities,
            duration=self.args.duration,
            wait=self.args.wait,
            max_cycles=self.args.max_cycles,
            seed=self.args.seed,
            library=library,
            out_dir=self.workdir,
        )
        plan_path = os.path.join(self.workdir, "plan.json")
        with open(plan_path, "w", encoding="utf-8") as handle:
            json.dump(plan.__dict__, handle)
        for index in range(self.args.clients):
            argv = [sys.executable, os.path.abspath(__file__), "--worker", plan_path, str(index)]
            log = open(os.path.join(self.workdir, "client-%02d.log" % index), "wb")
            try:
                self.clients.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env()))
            finally:
                log.close()

    def run(self, library: str) -> Dict[str, Any]:
        """Start the farm and the clients, watch them, settle the farm; stop everything (whatever happens)."""
        try:
            self.stack.start(timeout=START_DEADLINE)
            memory = MemoryWatch(period=1.0)
            chaos = Chaos(self.stack, self.args.kill_every, self.args.seed)
            self.start_clients(library)
            began = time.monotonic()
            memory.sample(self.tracker_pid(), began, began, force=True)
            self.watch(chaos, memory, began)
            window = time.monotonic() - began
            settle = wait_settled(self.stack, self.args.settle, self.args.tick)
            memory.sample(self.tracker_pid(), began, time.monotonic(), force=True)
            restarts = {daemon.name: daemon.restarts for daemon in self.stack.daemons}
        finally:
            self.kill_clients()
            self.stack.stop()
        return {
            "window_s": window,
            "settle": settle,
            "chaos": chaos.figures(restarts),
            "tracker_memory": memory.summary(),
        }

    def tracker_pid(self) -> int:
        assert self.stack.tracker is not None
        return self.stack.tracker.process.pid

    def watch(self, chaos: Chaos, memory: MemoryWatch, began: float) -> None:
        """Supervise, strike and sample until the clients end (or overrun their bound: then kill them)."""
        chaos_end = began + self.args.duration - QUIET_END
        hard_end = began + self.args.duration + self.args.wait + SESSION_TIMEOUT + CLIENT_GRACE
        while any(client.poll() is None for client in self.clients):
            now = time.monotonic()
            if now >= hard_end:
                logger.error("client processes still running %.0f s after the soak's end: killing them", now - began)
                self.kill_clients()
                break
            self.stack.supervise()
            if now < chaos_end and chaos.due(now):
                chaos.strike(now)
            memory.sample(self.tracker_pid(), began, now)
            time.sleep(self.args.tick)

    def kill_clients(self) -> None:
        for client in self.clients:
            if client.poll() is None:
                client.kill()
            client.wait()

    def client_rows(self) -> Tuple[List[Dict[str, Any]], int]:
        """Every client's rows and how many clients wrote theirs."""
        rows: List[Dict[str, Any]] = []
        reported = 0
        for index in range(len(self.clients)):
            path = os.path.join(self.workdir, "client-%02d.json" % index)
            if not os.path.exists(path):
                with open(os.path.join(self.workdir, "client-%02d.log" % index), errors="replace") as handle:
                    logger.error("client %d wrote no results; its output:\n%s", index, handle.read()[-4000:])
                continue
            with open(path, encoding="utf-8") as handle:
                rows += json.load(handle)
            reported += 1
        return rows, reported


def board_figures(expected: Dict[str, int], settle: Dict[str, Any]) -> Dict[str, Any]:
    """Boards expected and registered per key once the farm settled (or gave up), and how many are lost."""
    state = settle["state"] or {}
    registered = {key: state.get(key, {}).get("registered", 0) for key in sorted(expected)}
    return {
        "expected": expected,
        "registered": registered,
        "lost": sum(max(0, count - registered[key]) for key, count in expected.items()),
        "settled": settle["settled"],
        "settle_s": settle["waited_s"],
        "final_state": settle["state"],
    }


def run(workdir: str, args: Any) -> Dict[str, Any]:
    """Start the farm, soak it, settle it, stop it; the results."""
    started = time.monotonic()
    load_before = os.getloadavg()
    os.environ.update(child_env())  # the daemons FarmStack starts import this checkout's farm
    logging.getLogger("farm.toolchain").setLevel(logging.WARNING)
    if args.tls:  # every daemon and client of the soak takes it from the environment
        os.environ.update(tls_files(workdir).daemon().as_env())
    library = compile_shared([VADD], os.path.join(workdir, LIBRARY))
    path = write_inventory(os.path.join(workdir, "inventory.yaml"), args.keys, args.boards_per_key, args.proxied_keys)
    inventory = load_inventory(path)
    log_dir = args.keep_logs or os.path.join(workdir, "logs")
    soak = Soak(args, workdir, FarmStack(inventory, log_dir))
    measured = soak.run(library)
    left = processes_left(os.getpid())
    findings = scan_logs(log_dir)
    rows, reported = soak.client_rows()
    if args.cycles_json:
        with open(args.cycles_json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle)
    keys = sorted(inventory.board_counts())
    results: Dict[str, Any] = {
        "inventory": [[group.key, group.count, group.proxy] for group in inventory.boards],
        "window_s": measured["window_s"],
        "served": served_figures(rows, measured["window_s"], keys),
        "errors": tally_errors(rows),
        "latency": latency_figures(rows, args.priorities, keys),
        "chaos": measured["chaos"],
        "boards": board_figures(inventory.board_counts(), measured["settle"]),
        "tracker_memory": measured["tracker_memory"],
        "clients": {"started": args.clients, "reported": reported},
        "processes_left": left,
        "daemon_logs": findings,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "elapsed_s": time.monotonic() - started,
    }
    results["checks"] = checks(results)
    results["pass"] = all(results["checks"].values())
    return results


# --- the report ---------------------------------------------------------------------------------------------


def report(results: Dict[str, Any], config: Any) -> List[str]:
    """The results as markdown: the load, the chaos, the farm at the end, the latency and the errors."""
    served, chaos, boards, memory = results["served"], results["chaos"], results["boards"], results["tracker_memory"]
    farm = ", ".join("%s %d%s" % (key, count, " behind the proxy" if proxy else "")
                     for key, count, proxy in results["inventory"])  # fmt: skip
    notable = results["daemon_logs"]["notable_lines"]
    rows = [
        ("farm (key and boards)", farm + (", TLS on every connection" if config.tls else "")),
        ("load average before / after", " / ".join("%.2f" % v[0] for v in results["load_average"].values())),
        ("requests, served (per s), cycles completed", "%d, %d (%.1f/s), %d" % (
            served["requests"], served["served"], served["served_per_s"], served["cycles_completed"])),
        ("served per key", ", ".join("%s %d" % item for item in sorted(served["served_per_key"].items()))),
        ("errors expected / unexpected", "%d / %d" % (results["errors"]["expected"], results["errors"]["unexpected"])),
        ("boards killed (state just before), restarts (unplanned)", "%d (%s), %d (%d)" % (
            chaos["kills"], ", ".join("%s %d" % item for item in sorted(chaos["kills_by_state"].items())) or "-",
            chaos["restarts"], chaos["unplanned_restarts"])),
        ("boards lost, settled after", "%d, %.1f s" % (boards["lost"], boards["settle_s"])),
        ("tracker RSS start / peak / end, MB", "/".join("%.1f" % (memory.get("rss_kb_" + at, 0) / 1024)
                                                        for at in ("start", "peak", "end"))),
        ("tracker descriptors start / peak / end", "/".join(str(memory.get("fds_" + at, "-"))
                                                            for at in ("start", "peak", "end"))),
        ("processes left after stop", len(results["processes_left"])),
        ("tracebacks and ERROR lines in the daemons' logs", ", ".join("%s %d" % i for i in sorted(notable.items()))
         or "none"),
        ("warnings in the daemons' logs", "; ".join("%d x %s" % (count, message) for message, count in sorted(
            results["daemon_logs"]["warnings"].items(), key=lambda item: -item[1])[:8]) or "none"),
    ]  # fmt: skip
    title = "### Soak: %d clients, %.0f s, a board killed every %g s (seed %d)"
    lines = [title % (config.clients, results["window_s"], config.kill_every, config.seed), ""]
    lines += harness.table(("", ""), rows) + [""] + ["- `%s`" % line for line in results["daemon_logs"]["examples"]]
    latencies = results["latency"]
    rows = [("all", latencies["overall"])] + [("priority %s" % level, row) for level, row in
                                              sorted(latencies["by_priority"].items(), reverse=True)]  # fmt: skip
    rows += [("key %s" % key, row) for key, row in sorted(latencies["by_key"].items())]
    fields = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
    cells = [[name, row["count"]] + ["-" if row[f] is None else "%.1f" % row[f] for f in fields] for name, row in rows]
    lines += ["", "Request-to-ready latency (connect to the tracker, queue, session open):", ""]
    lines += harness.table(("requests", "served", "p50 ms", "p90 ms", "p99 ms", "max ms"), cells)
    kinds = sorted(results["errors"]["by_kind"].items(), key=lambda item: -item[1]["count"])
    cells = [[kind, entry["count"], "yes" if entry["expected"] else "**no**", entry["example"].replace("|", "/")[:140]]
             for kind, entry in kinds] or [["(none)", 0, "", ""]]  # fmt: skip
    lines += ["", "Errors:", ""] + harness.table(
        ("error (class at step: category)", "count", "expected", "example"), cells
    )
    failed = [name for name, ok in results["checks"].items() if not ok]
    return lines + ["", "Checks: %s" % ("all passed" if not failed else "FAILED: " + ", ".join(failed))]


def headline(results: Dict[str, Any]) -> List[Headline]:
    soak, config = results["scenarios"]["soak"], results["config"]
    boards = sum(soak["boards"]["expected"].values())
    label = "%d clients x %.0f s on %d boards, one killed every %g s" % (
        config["clients"], soak["window_s"], boards, config["kill_every"])  # fmt: skip
    outcome = "%d served (%.0f/s), %d unexpected errors, %d boards lost, %d processes left" % (
        soak["served"]["served"], soak["served"]["served_per_s"], soak["errors"]["unexpected"], soak["boards"]["lost"],
        len(soak["processes_left"]))  # fmt: skip
    return [Headline(label, outcome, target="every check", met=soak["pass"])]


TOOL = Tool(
    name="soak",
    description=__doc__.split("\n\n")[0],
    rounds=None,
    pin="none",
    options=OPTIONS,
    scenarios=[Scenario("soak", run, report, target="every check passes")],
    headline=headline,
    passed=lambda results: results["scenarios"]["soak"]["pass"],
    check_args=check_args,
)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # one client of a running soak
        sys.exit(client_main(sys.argv[2], int(sys.argv[3])))
    sys.exit(harness.main(TOOL))
