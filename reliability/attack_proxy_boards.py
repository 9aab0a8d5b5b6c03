"""Boards with long keys crowd the proxy: does the tracker keep the proxy, and the boards behind it?

    python reliability/attack_proxy_boards.py --boards 20 --key-length 4000

Starts a tracker and a proxy registered with it on 127.0.0.1, and one board of key ``near`` waiting at the proxy
(a data-plane hello, as ``farm.server --through-proxy`` sends). Then ``--boards`` more say hello with keys of
``--key-length`` characters. After ``--settle`` seconds it reports whether the
tracker still lists the proxy and offers ``near``, how many of the long boards the proxy refused and with what
reply, and what the tracker logged about the proxy.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # the shared harness

import harness  # noqa: E402
from harness import Headline, Option, Scenario, Tool, child_env  # noqa: E402

import farm
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import ReplyReader, encode_hello

HOST = "127.0.0.1"


def board_hello(port: int, key: str) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(encode_hello("server", key))
    return sock


def reply_within(sock: socket.socket, seconds: float) -> Optional[str]:
    """The proxy's reply (code and text) if one came within ``seconds``, else None (the board waits)."""
    sock.settimeout(seconds)
    replies = ReplyReader()
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return "closed without a reply"
            reply = replies.feed(data)
            if reply is not None:
                return "0x%X %s" % (reply.code, reply.text)
    except socket.timeout:
        return None


def attack(workdir: str, args: Any) -> Dict[str, Any]:
    directory = Path(workdir)
    base = [sys.executable, "-m"]
    tracker = DaemonProcess([*base, "farm.tracker", "--port", "0"], str(directory / "tracker.log"), env=child_env())
    daemons = [tracker]
    socks: List[socket.socket] = []
    try:
        where = "%s:%d" % tracker.wait_for_bind()
        proxy = DaemonProcess([*base, "farm.proxy", "--port", "0", "--tracker", where],
                              str(directory / "proxy.log"), env=child_env())  # fmt: skip
        daemons.append(proxy)
        port = proxy.wait_for_bind()[1]
        with farm.connect_tracker(*tracker.address) as observer:  # type: ignore[misc]
            socks.append(board_hello(port, "near"))
            deadline = time.monotonic() + 10
            while _free(observer, "near") != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            long_keys = ["k%03d-" % index + "x" * (args.key_length - 5) for index in range(args.boards)]
            socks += [board_hello(port, key) for key in long_keys]
            time.sleep(args.settle)  # the measurement's window, not a synchronisation
            replies = [reply_within(sock, 0.2) for sock in socks[1:]]
            summary = observer.summary()
        registered = any(str(e.get("key", "")).startswith("server:proxy") for e in summary["server_info"])
        dropped = [line.split(": ", 1)[1] for line in tracker.log_text().splitlines() if "UPDATE_INFO grows" in line]
        return {
            "boards": args.boards,
            "key_length": args.key_length,
            "proxy_registered": registered,
            "near_free": summary["queue_info"].get("near", {}).get("free", 0),
            "long_boards_refused": sum(1 for reply in replies if reply is not None),
            "replies": sorted({reply for reply in replies if reply is not None}),
            "tracker_dropped_the_proxy": dropped[:1],
        }
    finally:
        for sock in socks:
            sock.close()
        for daemon in reversed(daemons):
            daemon.stop()


def _free(observer: farm.TrackerClient, key: str) -> int:
    return observer.summary()["queue_info"].get(key, {}).get("free", 0)


def report(figures: Dict[str, Any], args: Any) -> List[str]:
    rows = [(name, figures[name]) for name in ("proxy_registered", "near_free", "long_boards_refused", "replies",
                                               "tracker_dropped_the_proxy")]  # fmt: skip
    return harness.table(("%d boards, keys of %d characters" % (args.boards, args.key_length), ""), rows) + [""]


def headline(results: Dict[str, Any]) -> List[Headline]:
    figures = results["scenarios"]["attack"]
    outcome = "proxy %s, %d of %d refused" % ("registered" if figures["proxy_registered"] else "DROPPED",
                                               figures["long_boards_refused"], figures["boards"])  # fmt: skip
    return [Headline("%d boards with %d-character keys at the proxy" % (figures["boards"], figures["key_length"]),
                     outcome, target="the proxy stays registered", met=figures["proxy_registered"])]  # fmt: skip


TOOL = Tool(
    name="attack_proxy_boards",
    description=__doc__.split("\n\n")[0],
    rounds=None,
    pin="none",
    options={
        "boards": Option(20, 3, "boards with long keys"),
        "key_length": Option(4000, 4000, "characters in each of their keys"),
        "settle": Option(3.0, 1.0, "seconds the tracker has to act", float),
    },
    scenarios=[Scenario("attack", attack, report, target="the proxy stays registered")],
    headline=headline,
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
