"""A hostile tenant against a real tracker process: each attack is performed, and its outcome asserted.

Every peer here holds what any tenant holds (the tracker's address); the tracker runs with small
limits so that each attack takes a second or two. See docs/tracker.md ("Limits") and
RELIABILITY.md ("Tenants against the tracker") for the figures before and after.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest
from test_tracker import KEY, Pool, RawPeer

from conftest import python_env, rss, wait_for
from farm.protocol.tracker import OMITTED, Code, encode_magic, encode_message

FAIR_AFTER = 1.0
PORT = 9999


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    """A tracker process with small limits, and whatever the test starts with it; all stopped at teardown."""
    setup = Pool(tmp_path)
    try:
        setup.start_tracker(options=["--fair-after", str(FAIR_AFTER), "--max-peer-output", str(1 << 20)])
        yield setup
    finally:
        setup.close()


class ImpatientBoard(threading.Thread):
    """A board whose match keys expire at once: as soon as one is handed out, it offers a fresh one.

    It stands for a real board whose handed-out key an attacker never presents (a real board waits
    5 s before it offers itself again; this one waits for nothing, so the attack runs fast)."""

    def __init__(self, address: Any) -> None:
        super().__init__(daemon=True)
        self.peer = RawPeer(address)
        assert self.peer.call([Code.UPDATE_INFO, {"key": "server:" + KEY, "addr": [None, PORT]}]) == Code.SUCCESS
        self.offered = 0
        self.stop = threading.Event()

    def offer(self) -> None:
        self.offered += 1
        matchkey = "%s:%d" % (KEY, self.offered)
        assert self.peer.call([Code.PUT, KEY, [PORT, matchkey], None]) == Code.SUCCESS
        self.matchkey = matchkey

    def run(self) -> None:
        self.offer()
        while not self.stop.wait(0.01):
            if self.matchkey not in self.peer.call([Code.GET_PENDING_MATCHKEYS]):
                self.offer()


class Attacker(threading.Thread):
    """Asks for a board of KEY at priority 1,000,000 again and again, never uses it; counts its hand-outs.

    ``reconnect``: each request on a new connection. ``source``: the local address it connects from."""

    def __init__(self, address: Any, reconnect: bool, source: str = "") -> None:
        super().__init__(daemon=True)
        self.address, self.reconnect, self.source = address, reconnect, source
        self.handouts: List[float] = []
        self.stop = threading.Event()
        self.peer = RawPeer(address, source=source)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peer.send([Code.REQUEST, KEY, "attacker", 1_000_000])
            try:
                reply = self.peer.receive(30)
            except (OSError, ConnectionError):
                return  # the tracker stopped
            assert reply[0] == Code.SUCCESS, reply
            self.handouts.append(time.monotonic())
            if self.reconnect:
                self.peer.close()
                self.peer = RawPeer(self.address, source=self.source)


def served_first(peers: List[RawPeer], served: List[RawPeer]) -> Optional[RawPeer]:
    """The first of ``peers`` not in ``served`` that has a reply waiting (which is read)."""
    for peer in peers:
        if peer not in served and select.select([peer.sock], [], [], 0)[0]:
            assert peer.receive()[0] == Code.SUCCESS
            return peer
    return None


@pytest.fixture
def board(pool: Pool) -> Iterator[ImpatientBoard]:
    board = ImpatientBoard(pool.address)
    board.start()
    pool.wait_state(pending=0, free=1)
    yield board
    board.stop.set()
    board.join(timeout=10)  # before the tracker stops: a call cut short by its end raises in the thread
    assert not board.is_alive()


# --- no starvation ----------------------------------------------------------------------------


@pytest.mark.parametrize("reconnect", [False, True], ids=["one-connection", "reconnecting"])
def test_a_request_outwaits_a_top_priority_attacker_that_never_uses_its_boards(
    pool: Pool, board: ImpatientBoard, reconnect: bool
) -> None:
    attacker = Attacker(pool.address, reconnect)
    attacker.start()
    try:
        wait_for(lambda: len(attacker.handouts) >= 3, 5, "the attacker takes the board again and again")
        started = time.monotonic()
        victim = pool.client().request_board(KEY, priority=0, user="victim", wait=10, protocols=("tvm",))
        waited = time.monotonic() - started
        # the bound of docs/tracker.md: fair_after, then at most 2A - 1 = 1 hand-out (one address) before it
        assert waited < FAIR_AFTER + 4.0, "the request waited %.1f s" % waited
        assert victim.matchkey.startswith(KEY + ":")
        assert len([t for t in attacker.handouts if t > started]) >= 2  # the attacker kept at it meanwhile
    finally:
        attacker.stop.set()
    summary = pool.summary()["queue_info"][KEY]
    assert [w["priority"] for w in summary["waiters"]] in ([], [100])  # clamped to --max-priority's default


def test_overdue_requests_take_turns_by_address(pool: Pool) -> None:
    """An attacker at another address queued many requests first: once overdue, the victim's comes second."""
    board = RawPeer(pool.address)
    assert board.call([Code.UPDATE_INFO, {"key": "server:" + KEY, "addr": [None, PORT]}]) == Code.SUCCESS
    early = [RawPeer(pool.address, source="127.0.0.2") for _ in range(8)]
    for number, peer in enumerate(early, 1):  # one at a time: they arrive in this order, early[0] the oldest
        peer.send([Code.REQUEST, KEY, "attacker", 1_000_000])
        pool.wait_pending(number)
    victim = RawPeer(pool.address)
    victim.send([Code.REQUEST, KEY, "victim", 0])
    pool.wait_pending(9)
    wait_for(lambda: pool.summary()["queue_info"][KEY]["waiters"][-1]["waited"] > FAIR_AFTER, 5, "all are overdue")
    served: List[RawPeer] = []
    for number in range(3):
        assert board.call([Code.PUT, KEY, [PORT, "%s:%d" % (KEY, number)], None]) == Code.SUCCESS
        served.append(wait_for(lambda: served_first(early + [victim], served), 5, "someone gets the board"))
    position = served.index(victim) if victim in served else "not among the first 3"
    assert served[:2] == [early[0], victim], "the victim was served at position %s" % position


# --- per-peer bounds ----------------------------------------------------------------------------


def test_each_peer_is_bounded_in_offers_waiters_keys_and_key_length(tmp_path: Path) -> None:
    setup = Pool(tmp_path)
    try:
        setup.start_tracker(options=["--max-offers-per-peer", "3", "--max-waiters-per-peer", "2",
                                     "--max-keys-per-peer", "2", "--max-priority", "10"])  # fmt: skip
        greedy, other = RawPeer(setup.address), RawPeer(setup.address)
        for number in range(3):
            assert greedy.call([Code.PUT, "k%d" % (number % 2), [PORT, "k:%d" % number], None]) == Code.SUCCESS
        reply = greedy.call([Code.PUT, "k0", [PORT, "k:9"], None])
        assert reply[0] == Code.FAIL and "--max-offers-per-peer" in reply[1], reply
        reply = RawPeer(setup.address).call([Code.PUT, "k0", [PORT, "k:a"], None])
        assert reply == Code.SUCCESS  # another peer is not affected
        keys = RawPeer(setup.address)
        assert [keys.call([Code.PUT, key, [PORT, key + ":1"], None]) for key in ("a", "b")] == [0, 0]
        reply = keys.call([Code.PUT, "c", [PORT, "c:1"], None])
        assert reply[0] == Code.FAIL and "--max-keys-per-peer" in reply[1], reply
        reply = keys.call([Code.PUT, "x" * 600_000, [PORT, "x:1"], None])
        assert reply == [Code.FAIL, "PUT's key is 600000 bytes long, more than 4096"]
        reply = other.call([Code.REQUEST, "y" * 5000, "", 0])
        assert reply == [Code.FAIL, "REQUEST's key is 5000 bytes long, more than 4096"]

        waiter = RawPeer(setup.address)
        for _ in range(2):
            waiter.send([Code.REQUEST, "busy", "w", 1_000_000, {"wait_for_key": True}])
        setup.wait_pending(2, key="busy")
        reply = waiter.call([Code.REQUEST, "busy", "w", 0, {"wait_for_key": True}])
        assert reply[0] == Code.FAIL and "--max-waiters-per-peer" in reply[1], reply
        other.send([Code.REQUEST, "busy", "o", -1_000_000, {"wait_for_key": True}])
        setup.wait_pending(3, key="busy")
        listed = setup.summary()["queue_info"]["busy"]["waiters"]
        assert [(w["user"], w["priority"]) for w in listed] == [("w", 10), ("w", 10), ("o", -10)]
        assert "asked for priority 1000000; it gets 10 (--max-priority 10)" in setup.tracker_log()
        assert waiter.call([Code.PING]) == Code.SUCCESS  # refused, still connected
    finally:
        setup.close()


def test_a_proxy_stops_serving_the_keys_it_no_longer_has_boards_of(tmp_path: Path) -> None:
    """Boards of many keys come and go behind a long-lived proxy: only the keys it has now count to its bound."""
    setup = Pool(tmp_path)
    try:
        setup.start_tracker(options=["--max-keys-per-peer", "2"])
        proxy = RawPeer(setup.address)
        for number in range(5):
            key = "passing%d" % number
            assert proxy.call([Code.PUT, key, [PORT, key + ":1"], None, {"protocol": "farm"}]) == Code.SUCCESS
            info = {"key": "server:proxy[%s]" % key, "addr": [None, PORT], "boards": {key: 1}, "offers": [key + ":1"]}
            assert proxy.call([Code.UPDATE_INFO, info]) == Code.SUCCESS
            assert setup.state(key)["free"] == 1
            gone = dict(info, key="server:proxy[]", boards={}, offers=[])  # the board left before a client came
            assert proxy.call([Code.UPDATE_INFO, gone]) == Code.SUCCESS
            assert key not in setup.summary()["queue_info"]
    finally:
        setup.close()


# --- replies and the summary ----------------------------------------------------------------------


def register_fake_boards(pool: Pool, count: int, key: str = "fake", **info: Any) -> List[RawPeer]:
    boards = []
    for number in range(count):
        peer = RawPeer(pool.address)
        assert peer.call([Code.UPDATE_INFO, dict(info, key="server:" + key, addr=[None, 9000 + number])]) == 0
        assert peer.call([Code.PUT, key, [9000 + number, "%s:%d" % (key, number)], None]) == Code.SUCCESS
        boards.append(peer)
    return boards


def test_a_peer_that_floods_summary_requests_and_never_reads_is_dropped(pool: Pool) -> None:
    boards = register_fake_boards(pool, 100)
    tracker = pool.tracker
    assert tracker is not None
    before = rss(tracker.pid)
    flooder = socket.socket()
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.connect(pool.address)
    try:
        flooder.sendall(encode_magic() + encode_message([Code.SUMMARY]) * 1000)  # 7 KB; replies: 13 MB
        wait_for(lambda: "it does not read its replies" in pool.tracker_log(), 10, "the tracker drops the flooder")
        grown = rss(tracker.pid) - before
        assert grown < 8 << 20, "the tracker grew by %.1f MB" % (grown / 1e6)
        assert pool.state("fake") == {"total": 100, "free": 100, "pending": 0}  # everyone else is served
    finally:
        flooder.close()
        for board in boards:
            board.close()


def test_no_peer_can_make_the_summary_too_large_for_anyone(pool: Pool) -> None:
    """Peers within every bound, together far more than a message holds: the summary leaves some out, says so."""
    boards = []
    for number in range(24):  # 24 peers x 64 keys x 4 KB = 6 MB of keys
        peer = RawPeer(pool.address)
        messages = [[Code.PUT, "%02d-%02d-" % (number, key) + "k" * 4000, [PORT, "m:%d" % key], None]
                    for key in range(64)]  # fmt: skip
        peer.sock.sendall(b"".join(encode_message(message) for message in messages))
        assert [peer.receive() for _ in messages] == [Code.SUCCESS] * 64
        boards.append(peer)
    boards += register_fake_boards(pool, 40, pad="p" * 60_000)  # 40 x 60 KB of info
    try:
        summary = pool.summary()
        assert summary[OMITTED]["queue_info"] > 0
        assert len(summary["server_info"]) == 40
        assert all(entry["truncated"] and "pad" not in entry for entry in summary["server_info"])
        assert sorted(entry["addr"][1] for entry in summary["server_info"]) == list(range(9000, 9040))
        query = subprocess.run(
            [sys.executable, "-m", "farm.query", "--port", str(pool.address[1])],
            capture_output=True,
            text=True,
            env=python_env(),
            timeout=30,
        )
        assert query.returncode == 0, query.stderr
        assert "not shown: the summary reached the tracker's size limit" in query.stderr  # the tables stay TVM's
    finally:
        for peer in boards:
            peer.close()


# --- cost of the queue ---------------------------------------------------------------------------


def test_twenty_thousand_requests_on_one_connection_do_not_block_the_tracker(tmp_path: Path) -> None:
    count = 20_000
    setup = Pool(tmp_path)
    try:
        setup.start_tracker(options=["--max-waiters-per-peer", str(count)])
        board = RawPeer(setup.address)
        assert board.call([Code.UPDATE_INFO, {"key": "server:" + KEY, "addr": [None, PORT]}]) == Code.SUCCESS
        client, watcher = RawPeer(setup.address), RawPeer(setup.address)
        client.sock.sendall(b"".join(encode_message([Code.REQUEST, KEY, "", n % 7]) for n in range(count)))
        started = time.monotonic()
        setup.wait_pending(count, timeout=20)
        queued = time.monotonic() - started
        assert queued < 10.0, "the tracker took %.1f s to queue %d requests (quadratic?)" % (queued, count)
        client.close()
        started = time.monotonic()
        setup.wait_pending(0, timeout=20)  # every request of the closed connection leaves, none stays behind
        assert time.monotonic() - started < 10.0
        assert watcher.call([Code.PING]) == Code.SUCCESS
    finally:
        setup.close()


# --- memory of departed peers ---------------------------------------------------------------------


def test_the_memory_of_peers_that_left_is_released(pool: Pool) -> None:
    tracker = pool.tracker
    assert tracker is not None
    sizes = []
    for round_number in range(5):
        peers = []
        for number in range(40):  # 40 peers x 64 keys x 4 KB: 10 MB of keys per round
            peer = RawPeer(pool.address)
            prefix = "r%dp%d-" % (round_number, number)
            messages = [[Code.PUT, prefix + "%02d" % key + "k" * 4000, [PORT, "%s:%d" % (prefix, key)], None]
                        for key in range(64)]  # fmt: skip
            peer.sock.sendall(b"".join(encode_message(message) for message in messages))
            assert [peer.receive() for _ in messages] == [Code.SUCCESS] * 64
            peers.append(peer)
        for peer in peers:
            peer.close()
        wait_for(lambda: not pool.summary()["queue_info"], 10, "the tracker sees every peer of the round leave")
        sizes.append(rss(tracker.pid))
    growth = sizes[-1] - sizes[1]
    assert growth < 10 << 20, "RSS after each round: %s MB" % [round(size / 1e6, 1) for size in sizes]
