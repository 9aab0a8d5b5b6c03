"""The attacks of a hostile tenant on the tracker, performed against a real tracker process on loopback.

Each attack runs against the tracker of this checkout and, with ``--before DIR``, against the
tracker of another source tree (for instance the code before the fix:
``git worktree add ../before COMMIT``), side by side in one run::

    python reliability/tracker_abuse.py [--before DIR] [--only NAME,...] [--json out.json]

* **starvation**: one real board; an attacker REQUESTs with priority 1,000,000, never connects
  to the board it is handed, and asks again at once each time; a request of priority 0 waits.
  Reports how long until it gets the board (or that it did not within ``--starve-limit``).
  This checkout's tracker runs with ``--fair-after 5``.
* **summary_flood**: 200 fake boards registered; one peer sends 1,000 SUMMARY requests
  (7 KB) and never reads. Reports the tracker's RSS before and 3 s after.
* **long_keys**: two PUTs with 600,000-character keys; reports whether ``farm query`` still works.
* **queue**: N = 1,000 / 8,000 / 32,000 requests queued on one connection at once; reports how
  long until the tracker has them all (its event loop is blocked meanwhile: the longest wait
  for a SUMMARY on another connection), and how long until they are gone once that connection closes.
* **departed**: three rounds of 100 peers that each PUT 64 keys of 4,000 characters and leave;
  reports the tracker's RSS after each round.
"""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # the shared harness

import harness  # noqa: E402
from harness import PROJECT, Option, Scenario, Tool, child_env  # noqa: E402

from farm.client.tracker import connect_tracker  # noqa: E402
from farm.ops.processes import DaemonProcess, start_board  # noqa: E402
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message  # noqa: E402

logger = logging.getLogger("tracker_abuse")
Address = Tuple[str, int]
#: Seconds a tracker may take to answer while a queue attack blocks it.
BLOCKED = 1800.0


def rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS for %d" % pid)


class Raw:
    """A bare tracker connection."""

    def __init__(self, address: Address) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.reader = MessageReader(expect_magic=True)
        self.messages: List[Any] = []
        self.sock.sendall(encode_magic())
        while not self.reader.magic_seen:
            self._more()

    def _more(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the tracker closed the connection")
        self.messages += self.reader.feed(data)

    def send(self, *messages: Any) -> None:
        self.sock.sendall(b"".join(encode_message(message) for message in messages))

    def receive(self, timeout: float = 30.0) -> Any:
        self.sock.settimeout(timeout)
        while not self.messages:
            self._more()
        return self.messages.pop(0)

    def call(self, message: Any, timeout: float = 30.0) -> Any:
        self.send(message)
        return self.receive(timeout)

    def close(self) -> None:
        self.sock.close()


class Tracker:
    """A tracker process from ``sources``, with ``options`` (only those its ``--help`` knows)."""

    def __init__(self, sources: Path, directory: str, options: Sequence[str] = ()) -> None:
        env = child_env()
        env["PYTHONPATH"] = str(sources)
        self.env = env
        known = subprocess.run(
            [sys.executable, "-m", "farm.tracker", "--help"], env=env, capture_output=True, text=True
        )
        argv = [sys.executable, "-m", "farm.tracker", "--port", "0"]
        for option in options:
            name, _, value = option.partition("=")
            if name in known.stdout:
                argv += [name, value]
        self.log = str(Path(directory) / ("tracker-%s.log" % time.monotonic_ns()))
        self.daemon = DaemonProcess(argv, self.log, env=env)
        self.address = self.daemon.wait_for_bind()

    def stop(self) -> None:
        self.daemon.stop()


def attack_starvation(tracker: Tracker, directory: str, limit: float) -> Dict[str, Any]:
    board = start_board(str(Path(directory) / "board.log"), key="s", extra=["--tracker", "%s:%d" % tracker.address],
                        env=tracker.env)  # fmt: skip
    attacker = None
    try:
        client = connect_tracker(*tracker.address)
        deadline = time.monotonic() + 15
        while client.summary()["queue_info"].get("s", {}).get("free") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        attacker = Raw(tracker.address)
        attacker.send([Code.REQUEST, "s", "attacker", 1_000_000, {"protocols": ["farm"]}])
        assert attacker.receive()[0] == Code.SUCCESS
        attacker.send([Code.REQUEST, "s", "attacker", 1_000_000, {"protocols": ["farm"]}])
        victim = Raw(tracker.address)
        victim.send([Code.REQUEST, "s", "victim", 0, {"protocols": ["farm"]}])
        started = time.monotonic()
        handouts, served = 0, None
        while time.monotonic() - started < limit and served is None:
            ready, _, _ = select.select([attacker.sock, victim.sock], [], [], 0.5)
            if attacker.sock in ready:
                attacker.receive()
                handouts += 1
                attacker.send([Code.REQUEST, "s", "attacker", 1_000_000, {"protocols": ["farm"]}])
            if victim.sock in ready:
                served = round(time.monotonic() - started, 2)
        victim.close()
        return {"victim_served_after_s": served, "attacker_handouts": handouts, "limit_s": limit}
    finally:
        if attacker is not None:
            attacker.close()
        board.stop()


def attack_summary_flood(tracker: Tracker) -> Dict[str, Any]:
    boards = [Raw(tracker.address) for _ in range(200)]
    for number, board in enumerate(boards):
        board.call(
            [Code.UPDATE_INFO, {"key": "server:flood", "addr": [None, 9000 + number], "name": "b%03d" % number}]
        )
        board.call([Code.PUT, "flood", [9000 + number, "flood:%d" % number], None])
    size = len(encode_message(boards[0].call([Code.SUMMARY])))
    before = rss_mb(tracker.daemon.pid)
    flooder = socket.create_connection(tracker.address)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.sendall(encode_magic() + encode_message([Code.SUMMARY]) * 1000)
    time.sleep(3.0)  # the measurement's window, not a synchronisation
    after = rss_mb(tracker.daemon.pid)
    dropped = "does not read" in Path(tracker.log).read_text()
    flooder.close()
    for board in boards:
        board.close()
    return {
        "summary_bytes": size,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "dropped": dropped,
    }


def attack_long_keys(tracker: Tracker) -> Dict[str, Any]:
    peer = Raw(tracker.address)
    replies = [peer.call([Code.PUT, letter * 600_000, [9000, "m:%s" % letter], None]) for letter in "ab"]
    query = subprocess.run(
        [sys.executable, "-m", "farm.query", "--port", str(tracker.address[1])],
        env=tracker.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    peer.close()
    return {
        "put_replies": [reply if reply in (0, -1) else str(reply)[:80] for reply in replies],
        "query_exit": query.returncode,
        "query_error": query.stderr.strip()[-200:],
    }


def attack_queue(tracker: Tracker, count: int) -> Dict[str, Any]:
    board = Raw(tracker.address)
    board.call([Code.UPDATE_INFO, {"key": "server:q", "addr": [None, 9000]}])
    watcher = Raw(tracker.address)
    client = Raw(tracker.address)
    client.send(*([Code.REQUEST, "q", "", number % 7] for number in range(count)))
    started = time.monotonic()
    longest_ping = 0.0
    while True:
        sent = time.monotonic()
        pending = watcher.call([Code.SUMMARY], timeout=BLOCKED)[1]["queue_info"]["q"]["pending"]
        longest_ping = max(longest_ping, time.monotonic() - sent)
        if pending == count:
            break
    queued = time.monotonic() - started
    client.close()
    started = time.monotonic()
    while pending and time.monotonic() - started < 60:  # until the tracker has dropped them (or a minute passed)
        pending = watcher.call([Code.SUMMARY], timeout=BLOCKED)[1]["queue_info"]["q"]["pending"]
    dropped = time.monotonic() - started
    watcher.close()
    board.close()
    return {
        "queued_s": round(queued, 3),
        "longest_reply_s": round(longest_ping, 3),
        "dropped_s": round(dropped, 3),
        "left_behind": pending,  # requests of the closed connection still queued
    }


def attack_departed(tracker: Tracker, rounds: int = 3, peers: int = 100, keys: int = 64) -> Dict[str, Any]:
    sizes = [rss_mb(tracker.daemon.pid)]
    for round_number in range(rounds):
        connections = [Raw(tracker.address) for _ in range(peers)]
        for number, peer in enumerate(connections):
            prefix = "r%dp%d-" % (round_number, number)
            peer.send(*([Code.PUT, prefix + ("%02d" % key) * 2000, [9000, "%s:%d" % (prefix, key)], None]
                        for key in range(keys)))  # fmt: skip
            for _ in range(keys):
                peer.receive()
        for peer in connections:
            peer.close()
        watcher = connect_tracker(*tracker.address)
        while watcher.summary()["queue_info"]:  # every peer's leaving is handled
            time.sleep(0.05)
        watcher.close()
        sizes.append(rss_mb(tracker.daemon.pid))
    return {"rss_mb": [round(size, 1) for size in sizes]}


OPTIONS = ["--fair-after=5", "--max-waiters-per-peer=40000"]


def scenario(name: str, attack: Callable[..., Any]) -> Scenario:
    """``attack(fresh, workdir, args)`` on this checkout's tracker and, with ``--before``, the older one's."""

    def measure(workdir: str, args: Any) -> Dict[str, Any]:
        result = {}
        for side, sources in (("after", PROJECT), ("before", args.before)):
            if not sources:
                continue

            def fresh(attack: Callable[..., Dict[str, Any]], *more: Any, sources: Any = sources) -> Dict[str, Any]:
                tracker = Tracker(Path(sources).resolve(), workdir, OPTIONS)
                try:
                    return attack(tracker, *more)
                finally:
                    tracker.stop()

            result[side] = attack(fresh, workdir, args)
        return result

    def report(figures: Dict[str, Any], args: Any) -> List[str]:
        return ["- %s, %s: %s" % (name, side, figures[side]) for side in ("before", "after") if side in figures]

    return Scenario(name, measure, report)


TOOL = Tool(
    name="tracker_abuse",
    description=__doc__.split("\n\n")[0],
    rounds=None,
    pin="none",
    options={
        "before": Option("", "", "a source tree whose tracker is attacked too, for comparison", str),
        "starve_limit": Option(60.0, 60.0, "seconds the starved request waits at most", float),
    },
    scenarios=[
        scenario("starvation", lambda fresh, workdir, args: fresh(attack_starvation, workdir, args.starve_limit)),
        scenario("summary_flood", lambda fresh, *_: fresh(attack_summary_flood)),
        scenario("long_keys", lambda fresh, *_: fresh(attack_long_keys)),
        scenario("queue", lambda fresh, *_: {str(n): fresh(attack_queue, n) for n in (1000, 8000, 32000)}),
        scenario("departed", lambda fresh, *_: fresh(attack_departed)),
    ],
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
